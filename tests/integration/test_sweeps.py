"""Sweeps on the local executor, through the API over HTTP, with real git and DVC.

Covers: a grid sweep of 6 trials with ``max_parallel: 2`` (never more than 2 of its
runs queued or running at once, from the records' times; all 6 branches published);
a random sweep whose trials are the same twice from one seed; an adaptive sweep whose
service (a process) is killed mid-sweep and restarted, and which completes with its
trial count and bound; ``stop`` cancelling the rest; the cancel endpoint; a typo'd key
and an over-cap sweep refused with nothing recorded; a trial over the owner's quota
waiting instead of failing, and another tenant's sweep being 404; ``mlexp sweep start
--follow``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.domain.sweeps import RandomSearch, random_trials
from controller.settings import Settings
from tests.support.bundles import QUICK_DVC, create, small_parts
from tests.support.service import REPO_ROOT, RunningService, service_in_thread, service_process
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

# m.json = {"x": x}; a trial with x > 5 sleeps first (until cancelled).
SLOW_ABOVE_5_DVC = """\
stages:
  write:
    cmd: >-
      python -c "import yaml, json, time; p = yaml.safe_load(open('params.yaml'));
      time.sleep(600 if p['x'] > 5 else 0);
      json.dump({'x': p['x']}, open('m.json', 'w'))"
    params: [x]
    metrics:
      - m.json: {cache: false}
"""
OBJECTIVE = {"metric": "x", "goal": "max"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # More local slots than any sweep's max_parallel: the sweep's bound is what holds.
    return settings.model_copy(update={"max_concurrent_runs": 4, "max_sweep_runs": 8})


def sweep(http: httpx.Client, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    response = http.post("/experiment/sweep", json=body, **kwargs)
    assert response.status_code == 202, response.text
    created: dict[str, Any] = response.json()
    return created


def wait_sweep(http: httpx.Client, sweep_id: str, timeout: float = 300, **kw: Any) -> Any:
    def ended() -> dict[str, Any] | None:
        view: dict[str, Any] = http.get(f"/sweeps/{sweep_id}", **kw).json()
        return view if view["state"] != "running" else None

    return wait_for(ended, timeout, what=f"sweep {sweep_id} to end", max_interval=0.5)


def most_at_once(runs: list[dict[str, Any]]) -> int:
    """The most runs alive (from created to finished: queued or running) at one instant."""
    events: list[tuple[datetime, int]] = []
    for run in runs:
        events.append((datetime.fromisoformat(run["created_at"]), 1))
        if run["finished_at"]:
            events.append((datetime.fromisoformat(run["finished_at"]), -1))
    alive = most = 0
    for _, change in sorted(events):  # an end sorts before a start at the same instant
        alive += change
        most = max(most, alive)
    return most


def sweep_runs(http: httpx.Client, sweep_id: str, **kw: Any) -> list[dict[str, Any]]:
    view = http.get(f"/sweeps/{sweep_id}", **kw).json()
    return [http.get(f"/runs/{t['run_id']}", **kw).json() for t in view["trials"]]


def heads(git_url: str) -> str:
    return subprocess.run(
        ["git", "ls-remote", "--heads", git_url], check=True, capture_output=True, text=True
    ).stdout


def test_grid_sweep_holds_max_parallel_and_publishes_every_trial(
    service: RunningService,
) -> None:
    experiment = create(service.http, small_parts(QUICK_DVC, "x: 0\n"))
    created = sweep(
        service.http,
        {
            "experiment_id": experiment["experiment_id"],
            "grid": {"x": [1, 2, 3, 4, 5, 6]},
            "max_parallel": 2,
            "objective": {"metric": "x", "goal": "maximize"},
        },
    )
    assert len(created["run_ids"]) == 2  # the first two, at once
    assert created["total_trials"] == 6
    done = wait_sweep(service.http, created["sweep_id"])
    assert done["state"] == "completed", done
    assert done["counts"] == {"succeeded": 6}
    assert [t["params"] for t in done["trials"]] == [{"x": x} for x in range(1, 7)]
    assert [t["value"] for t in done["trials"]] == [1, 2, 3, 4, 5, 6]
    assert done["best"] == {"run_id": done["trials"][5]["run_id"], "metric": "x", "value": 6.0}

    runs = sweep_runs(service.http, created["sweep_id"])
    assert {r["sweep_id"] for r in runs} == {created["sweep_id"]}
    assert most_at_once(runs) == 2
    published = heads(str(experiment["git_url"]))
    for run in runs:
        assert f"refs/heads/runs/{run['run_id']}" in published
    listed = service.http.get("/sweeps", params={"experiment_id": experiment["experiment_id"]})
    assert [(s["sweep_id"], s["counts"]) for s in listed.json()] == [
        (created["sweep_id"], {"succeeded": 6})
    ]


def test_random_sweep_is_reproducible_from_its_seed(service: RunningService) -> None:
    experiment = create(service.http, small_parts(QUICK_DVC, "x: 0\n"))
    search = {"trials": 3, "seed": 1234, "space": {"x": {"type": "int", "low": 1, "high": 10**6}}}
    body = {"experiment_id": experiment["experiment_id"], "random": search, "max_parallel": 3,
            "objective": OBJECTIVE}  # fmt: skip
    first = wait_sweep(service.http, sweep(service.http, body)["sweep_id"])
    second = wait_sweep(service.http, sweep(service.http, body)["sweep_id"])
    params = [t["params"] for t in first["trials"]]
    assert params == [t["params"] for t in second["trials"]]
    assert params == list(random_trials(RandomSearch.model_validate(search)))
    assert len({p["x"] for p in params}) == 3
    assert [t["value"] for t in first["trials"]] == [p["x"] for p in params]


def test_adaptive_sweep_survives_a_killed_service(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {
        "MLEXP_MAX_CONCURRENT_RUNS": "4",
        "MLEXP_CONFIG_FILE": str(tmp_path / "none.yaml"),
        "MLEXP_K8S_CONFIG_FILE": str(tmp_path / "none-k8s.yaml"),
        "MLEXP_LOG_LEVEL": "WARNING",
    }
    search = {"trials": 5, "seed": 7, "space": {"x": {"type": "uniform", "low": 0, "high": 5}}}
    with service_process(data_dir, env) as (child, url), httpx.Client(base_url=url) as http:
        experiment = create(http, small_parts(QUICK_DVC, "x: 0\n"))
        body = {"experiment_id": experiment["experiment_id"], "adaptive": search,
                "objective": OBJECTIVE, "max_parallel": 2}  # fmt: skip
        sweep_id = sweep(http, body)["sweep_id"]
        wait_for(
            lambda: len(http.get(f"/sweeps/{sweep_id}").json()["trials"]) >= 3,
            180,
            what="a third trial",
        )
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    with service_process(data_dir, env) as (_, url), httpx.Client(base_url=url) as http:
        done = wait_sweep(http, sweep_id)
        runs = sweep_runs(http, sweep_id)
    assert done["state"] == "completed", done
    assert len(done["trials"]) == 5
    assert done["counts"] == {"succeeded": 5}, done
    assert most_at_once(runs) <= 2
    values = [t["params"]["x"] for t in done["trials"]]
    assert all(0 <= v <= 5 for v in values)
    assert len(set(values)) == 5
    assert done["best"]["value"] == max(values)


def test_stop_threshold_cancels_the_rest(service: RunningService) -> None:
    experiment = create(service.http, small_parts(SLOW_ABOVE_5_DVC, "x: 0\n"))
    created = sweep(
        service.http,
        {
            "experiment_id": experiment["experiment_id"],
            "grid": {"x": [1, 9, 9, 9]},
            "max_parallel": 2,
            "objective": OBJECTIVE,
            "stop": {"threshold": 1},
        },
    )
    done = wait_sweep(service.http, created["sweep_id"])
    assert done["state"] == "stopped", done
    first = done["trials"][0]["run_id"]
    assert done["reason"] == f"run {first} reached x = 1 (>= 1)"
    assert len(done["trials"]) == 2  # the other two were never started
    slow = done["trials"][1]["run_id"]
    cancelled = wait_for(
        lambda: (r := service.http.get(f"/runs/{slow}").json())["state"] == "cancelled" and r,
        60,
        what="the slow trial to be cancelled",
    )
    assert cancelled["reason"] == f"sweep {created['sweep_id']} stopped: {done['reason']}"
    assert f"sweep {created['sweep_id']} stopped" in service.http.get(f"/runs/{slow}/logs").text


def test_cancel_ends_queued_and_running_trials_and_keeps_finished_ones(
    service: RunningService,
) -> None:
    experiment = create(service.http, small_parts(SLOW_ABOVE_5_DVC, "x: 0\n"))
    created = sweep(
        service.http,
        {"experiment_id": experiment["experiment_id"], "grid": {"x": [1, 9, 9, 9]},
         "max_parallel": 2},
    )  # fmt: skip
    sweep_id = created["sweep_id"]
    wait_for(
        lambda: (
            (v := service.http.get(f"/sweeps/{sweep_id}").json())["counts"].get("succeeded")
            and len(v["trials"]) == 3
        ),
        120,
        what="the first trial to succeed and the third to start",
    )
    response = service.http.post(f"/sweeps/{sweep_id}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    assert response.json()["reason"] == "cancelled by local"

    def settled() -> dict[str, Any] | None:
        view: dict[str, Any] = service.http.get(f"/sweeps/{sweep_id}").json()
        return view if view["counts"] == {"succeeded": 1, "cancelled": 2} else None

    view = wait_for(settled, 60, what="the running trials to be cancelled")
    assert len(view["trials"]) == 3
    assert view["trials"][0]["state"] == "succeeded"
    again = service.http.post(f"/sweeps/{sweep_id}/cancel")
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"


def test_bad_sweeps_are_refused_and_nothing_is_recorded(service: RunningService) -> None:
    experiment = create(service.http, small_parts(QUICK_DVC, "x: 0\n"))
    base = {"experiment_id": experiment["experiment_id"]}
    cases = [
        ({**base, "grid": {"x": [1, 2], "y": [1]}}, "'y' is not in params.yaml"),
        ({**base, "grid": {"x": [1]}, "params": {"z": 1}}, "'z' is not in params.yaml"),
        ({**base, "random": {"trials": 2, "space": {"xx": {"type": "int", "low": 1,
                                                           "high": 2}}}}, "'xx'"),
        ({**base, "grid": {"x": [1, 2, 3], "x2": [1, 2, 3]}}, "9 runs"),  # cap is 8
        ({**base, "random": {"trials": 9, "space": {"x": {"type": "int", "low": 1,
                                                          "high": 2}}}}, "max_sweep_runs"),
        ({**base, "grid": {"x": [1]}, "resource": "nonsense/x"}, "resource"),
        ({**base, "grid": {"x": [1]}, "resource": "job"}, "Kubernetes"),
    ]  # fmt: skip
    for body, message in cases:
        response = service.http.post("/experiment/sweep", json=body)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert message in response.json()["detail"], response.json()
    missing = service.http.post(
        "/experiment/sweep", json={"experiment_id": "exp-0000000000", "grid": {"x": [1]}}
    )
    assert missing.status_code == 404
    assert service.http.get("/sweeps").json() == []
    assert service.http.get("/runs").json() == []
    assert service.http.get("/sweeps/sweep-0000000000").status_code == 404


TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab"}


@pytest.fixture
def tenants(settings: Settings, tmp_path: Path) -> Iterator[RunningService]:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "tokens:\n"
        f"  - {{token: {TOKENS['alice']}, name: alice, max_active_runs: 1}}\n"
        f"  - {{token: {TOKENS['bob']}, name: bob}}\n"
    )
    with service_in_thread(settings.model_copy(update={"tokens_file": tokens})) as running:
        yield running


def test_trials_over_the_owners_quota_wait_and_other_tenants_see_nothing(
    tenants: RunningService,
) -> None:
    alice = {"headers": {"Authorization": f"Bearer {TOKENS['alice']}"}}
    bob = {"headers": {"Authorization": f"Bearer {TOKENS['bob']}"}}
    response = tenants.http.post("/experiment/create", files=small_parts(QUICK_DVC), **alice)
    assert response.status_code == 201, response.text
    body = {"experiment_id": response.json()["experiment_id"], "grid": {"x": [1, 2, 3]},
            "max_parallel": 2}  # fmt: skip
    # Bob cannot start a sweep of alice's experiment.
    assert tenants.http.post("/experiment/sweep", json=body, **bob).status_code == 404
    created = sweep(tenants.http, body, **alice)
    assert len(created["run_ids"]) == 1  # the second trial waits for alice's quota (1)
    sweep_id = created["sweep_id"]
    assert tenants.http.get(f"/sweeps/{sweep_id}", **bob).status_code == 404
    assert tenants.http.post(f"/sweeps/{sweep_id}/cancel", **bob).status_code == 404
    assert tenants.http.get("/sweeps", **bob).json() == []

    done = wait_sweep(tenants.http, sweep_id, **alice)
    assert done["state"] == "completed", done
    assert done["counts"] == {"succeeded": 3}
    assert most_at_once(sweep_runs(tenants.http, sweep_id, **alice)) == 1


def test_cli_sweep_start_follow(service: RunningService) -> None:
    experiment = create(service.http, small_parts(QUICK_DVC, "x: 0\n"))
    env = dict(os.environ, MLEXP_URL=service.url)
    args = ["sweep", "start", str(experiment["experiment_id"]), "--grid", "x=1,3,2",
            "--max-parallel", "2", "--metric", "x", "--goal", "max", "--follow"]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "controller.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    final = result.stdout.strip().split("sweep sweep-")[-1]  # the last table drawn
    assert ": completed" in final
    lines = final.splitlines()
    assert lines[1].split() == ["#", "run", "state", "params", "x"]
    assert [line.split()[2:4] for line in lines[2:5]] == [
        ["succeeded", "x=1"],
        ["succeeded", "x=3"],
        ["succeeded", "x=2"],
    ]
    assert lines[-1].startswith("best so far: run-")
    assert lines[-1].endswith("x = 3")
    listed = subprocess.run(
        [sys.executable, "-m", "controller.cli", "sweep", "list"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "completed" in listed.stdout
    assert "3 trials" in listed.stdout
