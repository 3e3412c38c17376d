"""Crash safety on Kubernetes: the service (``mlexp serve``) is SIGKILLed at random moments
while Job runs are queued, launching, running and publishing, and restarted each time.

At the end every accepted run succeeded and published its branch exactly once (the
git server's repo keeps a reflog), and each run had exactly one Job (a watch records
every Job created in the namespace, by uid). Job pods run on this host through the
job driver, as in the other cluster tests.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from kubernetes import client, watch

from tests.support.chaos import run_chaos
from tests.support.cluster import MANUAL_DRIVE, Cluster
from tests.support.gitserver import GitHttpServer
from tests.support.jobdriver import JobDriver
from tests.support.s3server import S3Server

pytestmark = pytest.mark.cluster

KILLS = 8
TOKEN = "tok-0123456789abcdef"  # the session git server's password (tests/conftest.py)


def test_random_kills_leave_one_job_and_one_push_per_run(
    k8s_cluster: Cluster,
    k8s_api: client.ApiClient,
    namespace: str,
    git_server: GitHttpServer,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
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
    name, bucket = f"chaos-{uuid.uuid4().hex[:8]}", f"chaos-{uuid.uuid4().hex[:8]}"
    s3_server.create_bucket(bucket)
    repo_json = {
        "git": {"url": git_server.create_bare(name), "username": "mlexp-bot", "token": TOKEN},
        "dvc": {"url": f"s3://{bucket}/data"},
        "storage": {
            "endpoint_url": s3_server.endpoint_url,
            "access_key_id": s3_server.access_key_id,
            "secret_access_key": s3_server.secret_access_key,
            "region": s3_server.region,
        },
    }
    env = {
        "MLEXP_K8S_CONFIG_FILE": str(config),
        "MLEXP_GIT_CA_BUNDLE": str(git_server.ca_file),
        # The test git and S3 servers are on loopback (see test_service_k8s.py).
        "MLEXP_EGRESS__ALLOWED_NETWORKS": json.dumps(["127.0.0.0/8"]),
    }
    jobs: dict[str, set[str]] = defaultdict(set)
    stop = threading.Event()

    def record_jobs() -> None:
        batch = client.BatchV1Api(k8s_api)
        while not stop.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(batch.list_namespaced_job, namespace, timeout_seconds=2):
                    job = event["object"]
                    jobs[job.metadata.name].add(job.metadata.uid)
            except Exception:  # the namespace goes away at the end
                stop.wait(0.2)
            finally:
                stream.stop()

    recorder = threading.Thread(target=record_jobs, daemon=True)
    recorder.start()
    with JobDriver(k8s_cluster, k8s_api, namespace, tmp_path / "job-pods"):
        report = run_chaos(
            tmp_path,
            kills=KILLS,
            seed=11,
            env=env,
            run_body={"resource": "job", "namespace": namespace},
            repo_json=repo_json,
            bare=git_server.repo_path(name),
            settle_timeout=600,
        )
    stop.set()
    recorder.join(timeout=10)
    print(report.summary())
    assert report.problems == [], report.summary()
    assert report.states == {"succeeded": len(report.runs)}
    assert len(report.runs) >= 2 * KILLS
    for run_id in report.runs:
        assert len(jobs[f"mlexp-{run_id}"]) == 1, (run_id, jobs.get(f"mlexp-{run_id}"))
