"""Kubernetes API calls in ``/metrics``, counted on the real control plane (kwok nodes).

A Job run goes through the service; the scrape after it shows the calls the Job
executor made, by verb and outcome: creates (``POST``) that succeeded, the watch,
and a ``job`` run in the runs gauge and the duration histogram.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from controller.settings import EgressSettings, Settings
from tests.support.bundles import QUICK_DVC, create, small_parts
from tests.support.cluster import MANUAL_DRIVE, Cluster
from tests.support.gitserver import GitHttpServer
from tests.support.jobdriver import JobDriver
from tests.support.s3server import S3Server
from tests.support.service import RunningService, service_in_thread

TOKEN = "tok-0123456789abcdef"  # the session git server's password (tests/conftest.py)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def k8s_service(
    settings: Settings, k8s_cluster: Cluster, git_server: GitHttpServer, tmp_path: Path
) -> Iterator[RunningService]:
    config = tmp_path / "k8s-config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kubeconfig": str(k8s_cluster.kubeconfig),
                "namespaces": {"allowed": ["t-*"], "prohibited": ["kube-*"]},
                "defaults": {"image": "mlexp/workload:test"},
                "jobs": {"backoff_limit": 0, "pod_labels": MANUAL_DRIVE},
                "api": {"qps": 50, "burst": 100},
            }
        )
    )
    configured = settings.model_copy(
        update={
            "k8s_config_file": config,
            "git_ca_bundle": git_server.ca_file,
            "egress": EgressSettings(allowed_networks=["127.0.0.0/8"]),
        }
    )
    with service_in_thread(configured) as running:
        yield running


def scrape(service: RunningService) -> Samples:
    response = service.http.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_a_job_run_counts_kubernetes_calls(
    k8s_service: RunningService,
    driver: JobDriver,
    namespace: str,
    git_server: GitHttpServer,
    s3_server: S3Server,
) -> None:
    bucket = f"m-{uuid.uuid4().hex[:8]}"
    s3_server.create_bucket(bucket)
    repo = {
        "git": {
            "url": git_server.create_bare(f"m-{uuid.uuid4().hex[:8]}"),
            "username": "mlexp-bot",
            "token": TOKEN,
        },
        "dvc": {"url": f"s3://{bucket}/data"},
        "storage": {
            "endpoint_url": s3_server.endpoint_url,
            "access_key_id": s3_server.access_key_id,
            "secret_access_key": s3_server.secret_access_key,
            "region": s3_server.region,
        },
    }
    calls = "mlexp_kubernetes_api_calls_total"
    before = scrape(k8s_service)
    experiment = create(k8s_service.http, small_parts(QUICK_DVC, "x: 5\n", repo_json=repo))
    response = k8s_service.http.post(
        "/experiment/run",
        json={"experiment_id": experiment["experiment_id"], "resource": "job",
              "namespace": namespace},
    )  # fmt: skip
    assert response.status_code == 202, response.text
    run_id = response.json()["run_id"]
    run = k8s_service.wait_run(run_id, timeout=240)
    assert run["state"] == "succeeded", k8s_service.http.get(f"/runs/{run_id}/logs").text

    after = scrape(k8s_service)
    created = value(after, calls, verb="POST", outcome="ok") - value(
        before, calls, verb="POST", outcome="ok"
    )
    assert created > 0  # the Job, its Secret and ConfigMap
    assert value(after, calls, verb="WATCH", outcome="ok") > 0
    verbs = {dict(labels)["verb"] for name, labels in after if name == calls}
    outcomes = {dict(labels)["outcome"] for name, labels in after if name == calls}
    assert verbs <= {"GET", "POST", "PATCH", "DELETE", "WATCH", "LOG", "EXEC"}, verbs
    assert outcomes <= {"ok", "4xx", "5xx", "timeout", "connection", "error"}, outcomes
    assert value(after, "mlexp_runs", state="succeeded", resource="job") >= 1
    ended = value(
        after, "mlexp_run_duration_seconds_count", resource="job", outcome="succeeded"
    ) - value(before, "mlexp_run_duration_seconds_count", resource="job", outcome="succeeded")
    assert ended == 1
