"""Live plots of runs on Kubernetes (issue 12), in real containers on the real node
(issue 14): the runner's marker lines go through containerd's CRI log (which splits a
long line into partial lines) and come back, rejoined, from the kubelet.

Covers: a ``training-curve`` run as a Job and one exec'd into a StatefulSet pod, each pod
on the real node: while the run runs, ``GET /runs/{id}/plots`` is ``live`` and its curve
gains rows, which the runner reported as marker lines in its log; the run's stored log
carries none of them; once the run has succeeded, the rows are its commit's, one per
epoch, and what was reported is removed. And a Job whose curve is reported in one marker
line longer than a CRI log line: every row arrives while it runs, none of it in the log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.settings import Settings
from tests.cluster.test_real_node_runs import real_settings  # noqa: F401
from tests.cluster.test_service_k8s import remote_repo, run_on
from tests.support.bundles import (
    create,
    plot_row_count,
    provision_ready,
    small_parts,
    template_parts,
)
from tests.support.gitserver import GitHttpServer
from tests.support.s3server import S3Server
from tests.support.service import RunningService, service_in_thread
from tests.support.waiting import wait_for

CURVE = "dvclive/plots/metrics/train/loss.tsv"
# A curve written at once (40 KB), then the stage waits: the report is one marker line of
# about 54 KB (base64), which containerd's CRI log keeps as partial lines of at most
# 16 KiB (max_container_log_line_size) and the kubelet joins again when it serves the log.
LONG_ROWS = 3000
LONG_DVC = f"""\
stages:
  curve:
    cmd: >-
      python -c "import pathlib, time; pathlib.Path('curve.tsv').write_text('step\\tloss\\n'
      + ''.join(f'{{i}}\\t{{1 / (i + 1):.6f}}\\n' for i in range({LONG_ROWS}))); time.sleep(20)"
    outs:
      - curve.tsv: {{cache: false}}
plots:
  - loss:
      x: step
      y:
        curve.tsv: loss
"""
EPOCHS = 16
PARAMS = {"train.epochs": EPOCHS, "train.epoch_pause_seconds": 1.0}


@pytest.fixture
def service(real_settings: Settings) -> Iterator[RunningService]:  # noqa: F811
    with service_in_thread(real_settings) as running:
        yield running


def curve_parts(git: GitHttpServer, s3: S3Server) -> list[tuple[str, tuple[str, bytes]]]:
    parts = template_parts("training-curve")
    repo = json.dumps(remote_repo(git, s3)).encode()
    return [("repo_json", ("repo.json", repo)) if k == "repo_json" else (k, v) for k, v in parts]


def watch_the_curve_grow(service: RunningService, run_id: str) -> None:
    first = wait_for(
        lambda: (seen := plot_row_count(service.http, run_id, CURVE))[0] >= 1 and seen,
        240,
        what="the first reported rows of the curve",
        max_interval=0.3,
    )
    assert first[1] is True
    assert first[0] < EPOCHS
    second = wait_for(
        lambda: (seen := plot_row_count(service.http, run_id, CURVE))[0] > first[0] and seen,
        60,
        what="more reported rows of the curve",
        max_interval=0.3,
    )
    assert second[1] is True
    assert service.http.get(f"/runs/{run_id}").json()["state"] == "running"
    run = service.wait_run(run_id, timeout=300)
    log = service.http.get(f"/runs/{run_id}/logs").text
    assert run["state"] == "succeeded", log
    assert plot_row_count(service.http, run_id, CURVE) == (EPOCHS, False)  # the commit's rows
    assert "@mlexp-plot" not in log
    assert "\x1e" not in log
    assert "dvc repro" in log
    assert not Path(f"{service.settings.logs_dir / run_id}.log.plots").exists()


def test_a_job_runs_curve_is_reported_through_its_log(
    service: RunningService,
    real_node: Any,
    namespace: str,
    k8s_api: client.ApiClient,
    git_server: GitHttpServer,
    s3_server: S3Server,
) -> None:
    experiment = create(service.http, curve_parts(git_server, s3_server))
    run_id = run_on(service, experiment["experiment_id"], "job", namespace, params=PARAMS)
    core = client.CoreV1Api(k8s_api)
    selector = f"mlexp.io/run-id={run_id}"
    (pod,) = wait_for(  # once scheduled: a pod is listed before it is bound to a node
        lambda: [
            p
            for p in core.list_namespaced_pod(namespace, label_selector=selector).items
            if p.spec.node_name
        ],
        120,
        what="the run's pod on a node",
    )
    assert pod.spec.node_name == real_node.name
    watch_the_curve_grow(service, run_id)


def test_an_exec_runs_curve_is_reported_through_its_log(
    service: RunningService,
    real_node: Any,
    namespace: str,
    k8s_api: client.ApiClient,
    git_server: GitHttpServer,
    s3_server: S3Server,
) -> None:
    experiment = create(service.http, curve_parts(git_server, s3_server))
    spec = {"kind": "StatefulSet", "name": "curves", "namespace": namespace,
            "experiment_id": experiment["experiment_id"]}  # fmt: skip
    provision_ready(service.http, spec, timeout=240)
    pod = client.CoreV1Api(k8s_api).read_namespaced_pod("curves-0", namespace)
    assert pod.spec.node_name == real_node.name
    run_id = run_on(service, experiment["experiment_id"], "sts/curves", namespace, params=PARAMS)
    watch_the_curve_grow(service, run_id)


def test_a_report_longer_than_a_cri_log_line_arrives_whole(
    service: RunningService, namespace: str, git_server: GitHttpServer, s3_server: S3Server
) -> None:
    experiment = create(
        service.http, small_parts(LONG_DVC, repo_json=remote_repo(git_server, s3_server))
    )
    run_id = run_on(service, experiment["experiment_id"], "job", namespace)

    def rows() -> tuple[int, bool]:
        body = service.http.get(f"/runs/{run_id}/plots").json()
        found = [len(p["data"]["curve.tsv"]["rows"]) for p in body["plots"]]
        return (found[0] if found else 0), body["live"]

    live = wait_for(lambda: (seen := rows())[0] > 0 and seen, 240, what="the reported curve")
    assert live == (LONG_ROWS, True)  # every row, from one marker line cut in pieces
    assert service.http.get(f"/runs/{run_id}").json()["state"] == "running"
    run = service.wait_run(run_id, timeout=300)
    log = service.http.get(f"/runs/{run_id}/logs").text
    assert run["state"] == "succeeded", log
    assert rows() == (LONG_ROWS, False)
    assert "@mlexp-plot" not in log
    assert "\x1e" not in log
