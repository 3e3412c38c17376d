"""Runs in real containers (issue 14): the service's Job and exec runs on a real kubelet
node (containerd + runc) beside the kwok nodes, with the workload image built from
``workload_example/Dockerfile``.

Covers, end to end on the real node: a Job run (the runner from its ConfigMap, the
credentials from the Secret through ``envFrom`` as the kubelet injects them, the private
git CA from the ConfigMap, the container's user) publishes to the HTTPS git test server
and S3, and a client gets the model with ``git clone`` + ``dvc pull``; the run's log is
the one the kubelet reports; an exec run in a StatefulSet pod the service provisioned does
the same; a failing stage's exit code and output reach the run's reason and log; a
cancel reaches the runner as SIGTERM (its log says so) within the grace period; a service
restart mid-run re-attaches to the running Job, which ends once.

Run pods use ``host_network`` (the test servers listen on the node's loopback) and the
real node's selector and toleration, from ``k8s-config.yaml``'s ``defaults``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from controller.settings import EgressSettings, Settings
from tests.cluster.test_service_k8s import remote_repo, run_on
from tests.support.bundles import (
    FAILING_DVC,
    SLEEPY_DVC,
    clone_run,
    create,
    provision_ready,
    sample_parts,
    small_parts,
    wait_for_stage,
)
from tests.support.cluster import Cluster
from tests.support.gitserver import GitHttpServer
from tests.support.s3server import S3Server
from tests.support.service import RunningService, service_in_thread
from tests.support.waiting import wait_for

TOKEN = "tok-0123456789abcdef"  # the session git server's password (tests/conftest.py)
# Sleeps long enough for a restart of the service in the middle, then writes its output.
SLOW_DVC = """\
stages:
  slow:
    cmd: python -c "import time, pathlib; time.sleep(25); pathlib.Path('out').write_text('x')"
    outs: [out]
"""


@pytest.fixture
def real_settings(
    settings: Settings,
    k8s_cluster: Cluster,
    real_node: Any,
    git_server: GitHttpServer,
    tmp_path: Path,
) -> Settings:
    config = tmp_path / "k8s-config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kubeconfig": str(k8s_cluster.kubeconfig),
                "namespaces": {"allowed": ["t-*"]},
                "defaults": {
                    "image": real_node.workload_image,
                    "image_pull_policy": "Never",
                    "host_network": True,
                    "node_selector": dict(real_node.node_selector),
                    "tolerations": list(real_node.tolerations),
                },
                "jobs": {"backoff_limit": 0},
                "exec": {"poll_seconds": 0.5},
            }
        )
    )
    egress = EgressSettings(allowed_networks=["127.0.0.0/8"])
    return settings.model_copy(
        update={
            "k8s_config_file": config,
            "git_ca_bundle": git_server.ca_file,
            "egress": egress,
            "cancel_grace_seconds": 10.0,
        }
    )


@pytest.fixture
def service(real_settings: Settings) -> Iterator[RunningService]:
    with service_in_thread(real_settings) as running:
        yield running


def pods_of(core: client.CoreV1Api, namespace: str, run_id: str) -> list[Any]:
    return list(
        core.list_namespaced_pod(namespace, label_selector=f"mlexp.io/run-id={run_id}").items
    )


def test_a_job_run_publishes_from_a_real_container(
    service: RunningService,
    real_node: Any,
    namespace: str,
    k8s_api: client.ApiClient,
    git_server: GitHttpServer,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    repo = remote_repo(git_server, s3_server)
    experiment = create(service.http, sample_parts(repo))
    run_id = run_on(service, experiment["experiment_id"], "job", namespace)
    run = service.wait_run(run_id, timeout=600)
    log = service.http.get(f"/runs/{run_id}/logs").text
    assert run["state"] == "succeeded", log
    assert run["result"]["metrics"]["metrics.json"]["accuracy"] > 0.8  # type: ignore[index]
    (pod,) = pods_of(client.CoreV1Api(k8s_api), namespace, run_id)
    assert pod.spec.node_name == real_node.name
    assert pod.spec.host_network is True
    status = pod.status.container_statuses[0]
    assert status.state.terminated.exit_code == 0
    assert status.image_id  # a real runtime reports the image it ran
    # The log is the kubelet's: the runner's steps, as the container wrote them.
    assert f"[mlexp] log of pod {pod.metadata.name}:" in log
    assert "step 7: git push" in log
    clone = clone_run(
        url=str(repo["git"]["url"]),  # type: ignore[index]
        run_id=run_id,
        dest=tmp_path / "clone",
        git=git_server,
        s3=s3_server,
        token=TOKEN,
    )
    assert (clone / "models" / "model.pkl").stat().st_size > 0


def test_an_exec_run_in_a_provisioned_pod_publishes(
    service: RunningService,
    real_node: Any,
    namespace: str,
    k8s_api: client.ApiClient,
    git_server: GitHttpServer,
    s3_server: S3Server,
) -> None:
    experiment = create(
        service.http,
        small_parts(SLOW_DVC.replace("25", "1"), repo_json=remote_repo(git_server, s3_server)),
    )
    name = f"trainer-{uuid.uuid4().hex[:4]}"
    spec = {"kind": "StatefulSet", "name": name, "namespace": namespace,
            "experiment_id": experiment["experiment_id"]}  # fmt: skip
    provision_ready(service.http, spec, timeout=240)
    pod = client.CoreV1Api(k8s_api).read_namespaced_pod(f"{name}-0", namespace)
    assert pod.spec.node_name == real_node.name
    run_id = run_on(service, experiment["experiment_id"], f"sts/{name}", namespace)
    run = service.wait_run(run_id, timeout=300)
    log = service.http.get(f"/runs/{run_id}/logs").text
    assert run["state"] == "succeeded", log
    assert "step 7: git push" in log


def test_a_failing_stage_reports_its_exit_code_and_output(
    service: RunningService, namespace: str, git_server: GitHttpServer, s3_server: S3Server
) -> None:
    experiment = create(
        service.http, small_parts(FAILING_DVC, repo_json=remote_repo(git_server, s3_server))
    )
    run_id = run_on(service, experiment["experiment_id"], "job", namespace)
    run = service.wait_run(run_id, timeout=300)
    log = service.http.get(f"/runs/{run_id}/logs").text
    assert run["state"] == "failed", log
    assert "stage is failing on purpose" in log
    reason = str(run["reason"])
    assert "exited with 3" in reason, reason  # the stage's, as dvc reports it
    assert "(exit code 1, Error)" in reason, reason  # the container's, as the kubelet does


def test_cancel_reaches_the_runner_as_sigterm(
    service: RunningService,
    namespace: str,
    k8s_api: client.ApiClient,
    git_server: GitHttpServer,
    s3_server: S3Server,
) -> None:
    experiment = create(
        service.http, small_parts(SLEEPY_DVC, repo_json=remote_repo(git_server, s3_server))
    )
    run_id = run_on(service, experiment["experiment_id"], "job", namespace)
    wait_for_stage(service.http, run_id, timeout=300)
    cancelled = service.http.post(f"/runs/{run_id}/cancel", params={"wait": "true"}, timeout=120)
    assert cancelled.json()["state"] == "cancelled", cancelled.text
    core = client.CoreV1Api(k8s_api)
    wait_for(lambda: not pods_of(core, namespace, run_id), 120, what="the run's pod to go")
    log = service.http.get(f"/runs/{run_id}/logs").text
    assert "the runner was stopped (SIGTERM)" in log


def test_a_restart_mid_run_reattaches_to_the_running_job(
    real_settings: Settings,
    namespace: str,
    k8s_api: client.ApiClient,
    git_server: GitHttpServer,
    s3_server: S3Server,
) -> None:
    batch = client.BatchV1Api(k8s_api)
    with service_in_thread(real_settings) as first:
        experiment = create(
            first.http, small_parts(SLOW_DVC, repo_json=remote_repo(git_server, s3_server))
        )
        run_id = run_on(first, experiment["experiment_id"], "job", namespace)
        wait_for_stage(first.http, run_id, timeout=300)
    with service_in_thread(real_settings) as second:
        assert second.http.get(f"/runs/{run_id}").json()["state"] == "running"
        final = second.wait_run(run_id, timeout=300)
        log = second.http.get(f"/runs/{run_id}/logs").text
    assert final["state"] == "succeeded", log
    assert "re-attached" in log or "restarted" in log
    assert len(batch.list_namespaced_job(namespace).items) == 1
