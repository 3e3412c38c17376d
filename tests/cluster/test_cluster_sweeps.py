"""A sweep of Job runs on the real control plane (kwok nodes; JobDriver runs the pods).

Covers: a grid sweep on ``resource: job`` with ``max_parallel: 2`` never has more than
two unfinished Jobs on the API server (watched from the test, events in resourceVersion
order), uses both slots, and completes with every trial published.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, watch

from controller.settings import EgressSettings, Settings
from tests.cluster.test_service_k8s import remote_repo
from tests.support.bundles import QUICK_DVC, create, small_parts
from tests.support.cluster import MANUAL_DRIVE, Cluster
from tests.support.gitserver import GitHttpServer
from tests.support.jobdriver import JobDriver
from tests.support.s3server import S3Server
from tests.support.service import RunningService, service_in_thread
from tests.support.waiting import wait_for


@pytest.fixture
def service(
    settings: Settings, k8s_cluster: Cluster, git_server: GitHttpServer, tmp_path: Path
) -> Iterator[RunningService]:
    config = tmp_path / "k8s-config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kubeconfig": str(k8s_cluster.kubeconfig),
                "namespaces": {"allowed": ["t-*"]},
                "defaults": {"image": "mlexp/workload:test"},
                "jobs": {"backoff_limit": 0, "pod_labels": MANUAL_DRIVE},
                "api": {"qps": 50, "burst": 100},
            }
        )
    )
    egress = EgressSettings(allowed_networks=["127.0.0.0/8"])  # the test git and S3 servers
    k8s = settings.model_copy(
        update={"k8s_config_file": config, "git_ca_bundle": git_server.ca_file, "egress": egress}
    )
    with service_in_thread(k8s) as running:
        yield running


class JobWatch:
    """Watches the namespace's Jobs; keeps the most that were unfinished at once."""

    def __init__(self, batch: client.BatchV1Api, namespace: str) -> None:
        self.batch = batch
        self.namespace = namespace
        self.unfinished: set[str] = set()
        self.seen: set[str] = set()
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="job-watch")

    def __enter__(self) -> JobWatch:
        listed = self.batch.list_namespaced_job(self.namespace)
        assert listed.items == []
        self._version = listed.metadata.resource_version
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        while not self._stop.is_set():
            stream = watch.Watch()
            for event in stream.stream(
                self.batch.list_namespaced_job,
                self.namespace,
                resource_version=self._version,
                timeout_seconds=2,
            ):
                self._seen(event["type"], event["object"])
            stream.stop()

    def _seen(self, kind: str, job: Any) -> None:
        self._version = job.metadata.resource_version
        name = job.metadata.name
        self.seen.add(name)
        conditions = job.status.conditions if job.status else None
        finished = any(
            c.status == "True" and c.type in ("Complete", "Failed", "SuccessCriteriaMet")
            for c in conditions or []
        )
        if kind == "DELETED" or finished:
            self.unfinished.discard(name)
        else:
            self.unfinished.add(name)
        self.most = max(self.most, len(self.unfinished))


def test_a_job_sweep_never_has_more_jobs_than_max_parallel(
    service: RunningService,
    driver: JobDriver,
    namespace: str,
    k8s_api: client.ApiClient,
    git_server: GitHttpServer,
    s3_server: S3Server,
) -> None:
    experiment = create(
        service.http, small_parts(QUICK_DVC, "x: 0\n", repo_json=remote_repo(git_server, s3_server))
    )
    body = {
        "experiment_id": experiment["experiment_id"],
        "resource": "job",
        "namespace": namespace,
        "grid": {"x": [1, 2, 3, 4, 5]},
        "max_parallel": 2,
        "objective": {"metric": "x", "goal": "max"},
    }
    with JobWatch(client.BatchV1Api(k8s_api), namespace) as jobs:
        response = service.http.post("/experiment/sweep", json=body)
        assert response.status_code == 202, response.text
        sweep_id = response.json()["sweep_id"]
        done = wait_for(
            lambda: (
                (v := service.http.get(f"/sweeps/{sweep_id}").json())["state"] != "running" and v
            ),
            600,
            what="the sweep to end",
            max_interval=1.0,
        )
    assert done["state"] == "completed", done
    assert done["counts"] == {"succeeded": 5}, done
    assert [t["value"] for t in done["trials"]] == [1, 2, 3, 4, 5]
    assert done["best"]["value"] == 5
    assert len(jobs.seen) == 5
    assert jobs.most == 2
