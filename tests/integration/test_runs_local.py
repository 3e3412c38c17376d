"""Runs on the local executor, through the API over HTTP, with real git and DVC.

Covers: a full run of the sample bundle and its retrieval with git clone + dvc pull;
parameter overrides; failure with a reason; logs (plain and followed); cancel of a
running pipeline (the whole process tree); concurrency limit; listing filters.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.bundles import (
    FAILING_DVC,
    QUICK_DVC,
    SLEEPY_DVC,
    create,
    sample_parts,
    small_parts,
    start,
)
from tests.support.service import RunningService
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def test_sample_bundle_runs_and_is_retrievable(service: RunningService, tmp_path: Path) -> None:
    experiment = create(service.http, sample_parts())
    assert experiment["stages"] == ["prepare", "train", "evaluate"]
    run_id = start(service.http, experiment["experiment_id"], **{"train.C": 0.5})

    run = service.wait_run(run_id)
    assert run["state"] == "succeeded", service.http.get(f"/runs/{run_id}/logs").text
    result = run["result"]
    assert isinstance(result, dict)
    assert result["branch"] == f"runs/{run_id}"
    accuracy = result["metrics"]["metrics.json"]["accuracy"]
    assert 0.8 < accuracy <= 1.0

    # The client's way: clone the run branch, dvc pull, and find outputs + metrics.
    subprocess.run(
        result["clone_command"], shell=True, cwd=tmp_path, check=True, capture_output=True
    )
    clone = tmp_path / run_id
    assert (clone / "models" / "model.pkl").stat().st_size > 0
    assert (clone / "data" / "prepared" / "train.csv").is_file()
    assert json.loads((clone / "metrics.json").read_text())["accuracy"] == accuracy
    assert "C: 0.5" in (clone / "params.yaml").read_text()
    assert (clone / "dvc.lock").is_file()
    assert git("rev-parse", "HEAD", cwd=clone).strip() == result["commit"]
    assert git("log", "-1", "--format=%s", cwd=clone).strip() == f"mlexp run {run_id}"


def test_runs_of_one_experiment_get_their_own_branches(service: RunningService) -> None:
    experiment = create(service.http, small_parts(QUICK_DVC, "x: 1\n"))
    first = start(service.http, experiment["experiment_id"], x=5)
    second = start(service.http, experiment["experiment_id"])
    results = [service.wait_run(r)["result"] for r in (first, second)]
    assert [r["metrics"]["m.json"]["x"] for r in results] == [5, 1]  # type: ignore[index]
    repo = str(experiment["git_url"])
    heads = git("ls-remote", "--heads", repo)
    assert f"refs/heads/runs/{first}" in heads
    assert f"refs/heads/runs/{second}" in heads


def test_failing_stage_fails_the_run_with_a_reason(service: RunningService) -> None:
    experiment = create(service.http, small_parts(FAILING_DVC))
    run_id = start(service.http, experiment["experiment_id"])
    run = service.wait_run(run_id)
    assert run["state"] == "failed"
    assert "dvc repro" in str(run["reason"])
    log = service.http.get(f"/runs/{run_id}/logs").text
    assert "stage is failing on purpose" in log
    assert "run failed" in log
    heads = git("ls-remote", "--heads", str(experiment["git_url"]))
    assert run_id not in heads  # nothing published


def test_cancel_stops_the_whole_process_tree(service: RunningService) -> None:
    experiment = create(service.http, small_parts(SLEEPY_DVC))
    run_id = start(service.http, experiment["experiment_id"])
    workdir = service.settings.work_dir / run_id
    wait_for(lambda: (workdir / "repo" / "started").exists(), 120, what="the stage to start")
    stage_pids = _pids_with_cwd(workdir / "repo")
    assert stage_pids, "the stage's process should be visible"

    response = service.http.post(f"/runs/{run_id}/cancel", params={"wait": "true"})
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    assert response.json()["cancel_requested"] is True
    assert not any(Path(f"/proc/{pid}").exists() and _not_zombie(pid) for pid in stage_pids)
    assert service.http.post(f"/runs/{run_id}/cancel").status_code == 409


def test_cancel_answers_at_once_and_the_run_is_cancelled_when_its_tree_is_gone(
    service: RunningService,
) -> None:
    experiment = create(service.http, small_parts(SLEEPY_DVC))
    run_id = start(service.http, experiment["experiment_id"])
    workdir = service.settings.work_dir / run_id
    wait_for(lambda: (workdir / "repo" / "started").exists(), 120, what="the stage to start")
    stage_pids = _pids_with_cwd(workdir / "repo")
    assert stage_pids, "the stage's process should be visible"

    response = service.http.post(f"/runs/{run_id}/cancel")
    assert response.status_code == 202, response.text
    assert response.json()["cancel_requested"] is True
    again = service.http.post(f"/runs/{run_id}/cancel")
    assert again.status_code in (202, 409), again.text
    done = wait_for(
        lambda: (r := service.http.get(f"/runs/{run_id}").json())["state"] == "cancelled" and r,
        60,
        what="the run to be cancelled",
    )
    assert done["reason"] == "cancelled by local"
    assert not any(Path(f"/proc/{pid}").exists() and _not_zombie(pid) for pid in stage_pids)
    log = service.http.get(f"/runs/{run_id}/logs").text
    assert log.count("cancel requested by local") == 1


def test_follow_streams_until_the_run_ends(service: RunningService) -> None:
    experiment = create(service.http, small_parts(QUICK_DVC))
    run_id = start(service.http, experiment["experiment_id"])
    with service.http.stream("GET", f"/runs/{run_id}/logs", params={"follow": "true"}) as response:
        assert response.status_code == 200
        text = "".join(response.iter_text())
    assert "run queued" in text
    assert "step 4: dvc repro" in text
    assert "run succeeded" in text
    assert service.http.get(f"/runs/{run_id}").json()["state"] == "succeeded"


def test_queue_respects_the_concurrency_limit(service: RunningService) -> None:
    limit = service.settings.max_concurrent_runs
    experiment = create(service.http, small_parts(SLEEPY_DVC))
    run_ids = [start(service.http, experiment["experiment_id"]) for _ in range(limit + 1)]
    wait_for(
        lambda: len(service.http.get("/runs", params={"state": "running"}).json()) == limit,
        60,
        what=f"{limit} runs running",
    )
    queued = service.http.get("/runs", params={"state": "queued"}).json()
    assert [r["run_id"] for r in queued] == [run_ids[-1]]
    listed = service.http.get("/runs", params={"experiment_id": experiment["experiment_id"]}).json()
    assert {r["run_id"] for r in listed} == set(run_ids)
    for run_id in run_ids:
        cancelled = service.http.post(f"/runs/{run_id}/cancel", params={"wait": "true"})
        assert cancelled.json()["state"] == "cancelled"


def _pids_with_cwd(directory: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(entry / "cwd").resolve() == directory.resolve():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _not_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
