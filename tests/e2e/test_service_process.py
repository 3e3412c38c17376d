"""The service as a process, driven over HTTP by the ``mlexp`` CLI, and restarted mid-run.

Covers: the sample bundle end to end (CLI create → run → wait, then the client's
``git clone -b … && dvc pull``); a restart while a run is active re-attaches to a
live runner, settles a runner that finished meanwhile, and fails — with a reason —
a runner that died; ``mlexp demo`` (the README's first command, after installing).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from controller.adapters import processes
from controller.adapters.store import Store
from tests.support.bundles import GATED_DVC, REPO_ROOT, create, small_parts, start
from tests.support.service import free_port, service_process
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e


def mlexp(url: str, *args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", "--url", url, *args],
        cwd=cwd, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def test_sample_bundle_through_the_cli(tmp_path: Path) -> None:
    with service_process(tmp_path / "data") as (_, url):
        created = mlexp(url, "--json", "experiment", "create", "client_ref.templ",
                        "--code", "workload_example/src")  # fmt: skip
        assert created.returncode == 0, created.stderr
        experiment = json.loads(created.stdout)
        assert experiment["stages"] == ["prepare", "train", "evaluate"]

        ran = mlexp(url, "run", "start", experiment["experiment_id"], "--set", "train.C=0.25",
                    "--set", "prepare.seed=7", "--wait")  # fmt: skip
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "succeeded" in ran.stdout
        listed = mlexp(url, "--json", "run", "list", "--experiment", experiment["experiment_id"])
        run = json.loads(listed.stdout)[0]
        assert run["params"] == {"train.C": 0.25, "prepare.seed": 7}
        logs = mlexp(url, "run", "logs", run["run_id"])
        assert "step 4: dvc repro" in logs.stdout

    # The service is gone; the results are in git and the DVC remote.
    result = run["result"]
    subprocess.run(
        result["clone_command"], shell=True, cwd=tmp_path, check=True, capture_output=True
    )
    clone = tmp_path / run["run_id"]
    metrics = json.loads((clone / "metrics.json").read_text())
    assert metrics == result["metrics"]["metrics.json"]
    assert (clone / "models" / "model.pkl").stat().st_size > 0
    assert "seed: 7" in (clone / "params.yaml").read_text()
    assert (clone / "plots" / "confusion.csv").read_text().startswith("actual,predicted")


def _gated_run(url: str, data_dir: Path) -> tuple[str, int, Path]:
    """Start a run whose stage waits for its gate file; return its id, its runner's pid and
    the gate (in the run's work dir: the only place of this machine its sandbox sees)."""
    with httpx.Client(base_url=url, timeout=60) as http:
        experiment = create(http, small_parts(GATED_DVC, params="gate: ../gate\n"))
        run_id = start(http, experiment["experiment_id"])
    workdir = data_dir / "work" / run_id
    wait_for(lambda: (workdir / "repo" / "started").exists(), 120, what="the gated stage")
    # The host pid the service tracks (the sandbox's): status.json has the one inside it.
    store = Store(data_dir / "state.db")
    try:
        handle = store.get_handle(run_id)
    finally:
        store.close()
    assert handle is not None
    return run_id, int(str(handle["pid"])), workdir / "gate"


def _state(url: str, run_id: str) -> dict[str, object]:
    run: dict[str, object] = httpx.get(f"{url}/runs/{run_id}").json()
    return run


@pytest.mark.parametrize("meanwhile", ["keeps running", "finishes", "dies"])
def test_restart_mid_run(tmp_path: Path, meanwhile: str) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    with service_process(data_dir, port=port) as (service, url):
        run_id, runner_pid, gate = _gated_run(url, data_dir)
        service.send_signal(signal.SIGKILL)  # no chance to clean up
        service.wait()
    assert processes.is_alive(runner_pid, None), "the runner must outlive the service"

    if meanwhile == "finishes":
        gate.touch()
        wait_for(lambda: not processes.is_alive(runner_pid, None), 120, what="the runner to end")
    elif meanwhile == "dies":
        os.killpg(runner_pid, signal.SIGKILL)
        wait_for(lambda: not processes.is_alive(runner_pid, None), 30, what="the runner to die")

    with service_process(data_dir, port=port) as (_, url):
        if meanwhile == "keeps running":
            assert _state(url, run_id)["state"] == "running"
            log = httpx.get(f"{url}/runs/{run_id}/logs").text
            assert "re-attached" in log
            gate.touch()
        final = wait_for(
            lambda: (run := _state(url, run_id))["state"] in ("succeeded", "failed") and run,
            180,
            what="the run to settle",
        )
        runs = httpx.get(f"{url}/runs").json()
    assert len(runs) == 1
    if meanwhile == "dies":
        assert final["state"] == "failed"
        assert "while the service was down" in str(final["reason"])
    else:
        assert final["state"] == "succeeded", final
        assert final["result"]["branch"] == f"runs/{run_id}"  # type: ignore[index]


def test_demo_command(tmp_path: Path) -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "controller.cli", "demo", "--data-dir", str(tmp_path / "demo")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "metrics metrics.json" in demo.stdout
    clone_line = next(ln for ln in demo.stdout.splitlines() if "get the results:" in ln)
    command = clone_line.split("get the results:", 1)[1].strip()
    subprocess.run(command, shell=True, cwd=tmp_path, check=True, capture_output=True)
    assert any(tmp_path.glob("run-*/models/model.pkl"))
