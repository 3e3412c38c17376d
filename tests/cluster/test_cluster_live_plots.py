"""Live plots of runs on Kubernetes (issue 12), on the real control plane (kwok nodes).

Covers: a ``training-curve`` run as a Job (JobDriver runs its pod, its log served through
the API server) and one exec'd into a StatefulSet pod: while the run runs, ``GET
/runs/{id}/plots`` is ``live`` and its curve gains rows, which the runner reported as
marker lines in its log; the run's stored log carries none of them; once the run has
succeeded, the rows are its commit's, one per epoch, and what was reported is removed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.settings import Settings
from tests.cluster.test_service_k8s import k8s_settings, remote_repo, run_on  # noqa: F401
from tests.support.bundles import create, provision_ready, template_parts
from tests.support.gitserver import GitHttpServer
from tests.support.jobdriver import JobDriver
from tests.support.s3server import S3Server
from tests.support.service import RunningService, service_in_thread
from tests.support.waiting import wait_for

CURVE = "dvclive/plots/metrics/train/loss.tsv"
EPOCHS = 16
PARAMS = {"train.epochs": EPOCHS, "train.epoch_pause_seconds": 1.0}


@pytest.fixture
def service(k8s_settings: Settings) -> Iterator[RunningService]:  # noqa: F811
    with service_in_thread(k8s_settings) as running:
        yield running


def curve_parts(git: GitHttpServer, s3: S3Server) -> list[tuple[str, tuple[str, bytes]]]:
    parts = template_parts("training-curve")
    repo = json.dumps(remote_repo(git, s3)).encode()
    return [("repo_json", ("repo.json", repo)) if k == "repo_json" else (k, v) for k, v in parts]


def curve_rows(service: RunningService, run_id: str) -> tuple[int, bool]:
    response = service.http.get(f"/runs/{run_id}/plots")
    assert response.status_code == 200, response.text
    body = response.json()
    rows = [len(plot["data"][CURVE]["rows"]) for plot in body["plots"] if CURVE in plot["data"]]
    return (rows[0] if rows else 0), body["live"]


def watch_the_curve_grow(service: RunningService, run_id: str) -> None:
    first = wait_for(
        lambda: (seen := curve_rows(service, run_id))[0] >= 1 and seen,
        240,
        what="the first reported rows of the curve",
        max_interval=0.3,
    )
    assert first[1] is True
    assert first[0] < EPOCHS
    second = wait_for(
        lambda: (seen := curve_rows(service, run_id))[0] > first[0] and seen,
        60,
        what="more reported rows of the curve",
        max_interval=0.3,
    )
    assert second[1] is True
    assert service.http.get(f"/runs/{run_id}").json()["state"] == "running"
    run = service.wait_run(run_id, timeout=300)
    log = service.http.get(f"/runs/{run_id}/logs").text
    assert run["state"] == "succeeded", log
    assert curve_rows(service, run_id) == (EPOCHS, False)  # the commit's rows
    assert "@mlexp-plot" not in log
    assert "\x1e" not in log
    assert "dvc repro" in log
    assert not Path(f"{service.settings.logs_dir / run_id}.log.plots").exists()


def test_a_job_runs_curve_is_reported_through_its_log(
    service: RunningService,
    driver: JobDriver,
    namespace: str,
    git_server: GitHttpServer,
    s3_server: S3Server,
) -> None:
    experiment = create(service.http, curve_parts(git_server, s3_server))
    run_id = run_on(service, experiment["experiment_id"], "job", namespace, params=PARAMS)
    watch_the_curve_grow(service, run_id)


def test_an_exec_runs_curve_is_reported_through_its_log(
    service: RunningService, namespace: str, git_server: GitHttpServer, s3_server: S3Server
) -> None:
    experiment = create(service.http, curve_parts(git_server, s3_server))
    spec = {"kind": "StatefulSet", "name": "curves", "namespace": namespace,
            "experiment_id": experiment["experiment_id"]}  # fmt: skip
    provision_ready(service.http, spec)
    run_id = run_on(service, experiment["experiment_id"], "sts/curves", namespace, params=PARAMS)
    watch_the_curve_grow(service, run_id)
