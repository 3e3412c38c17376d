"""The dispatch fence (a coordination.k8s.io Lease) on the real control plane (issue 13).

Covers: of two fences on one Lease exactly one leads, the other stands by naming the
holder; a leader that dies without releasing is replaced once the Lease has been seen
unchanged for its duration (and not before); one that stops cleanly releases it, and a
successor leads at once. Then two ``mlexp serve`` processes with the same configuration
and data dir: exactly one is ready and dispatches, the standby refuses changes with 503
and reads fine; killed (SIGKILL) mid-run, the leader is replaced within the Lease's
duration (plus the standby's retry period), and the successor adopts the running Job run
-- one Job, one pod, the run succeeds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from kubernetes import client

from controller.adapters.kube import KubeApi
from controller.domain.k8sconfig import LeaseConfig
from controller.services.fence import DispatchFence
from tests.cluster.test_service_k8s import remote_repo
from tests.support.bundles import QUICK_DVC, create, small_parts
from tests.support.cluster import MANUAL_DRIVE, Cluster
from tests.support.gitserver import GitHttpServer
from tests.support.jobdriver import JobDriver
from tests.support.s3server import S3Server
from tests.support.service import service_process
from tests.support.waiting import wait_for

DURATION = 3.0


class Fenced:
    """A fence and what it was told."""

    def __init__(self, kube: KubeApi, namespace: str, holder: str) -> None:
        self.acquired = 0
        self.lost = 0
        self.fence = DispatchFence(
            kube,
            LeaseConfig(namespace=namespace, name="fence-test", duration_seconds=DURATION),
            holder,
            on_acquired=self._acquired,
            on_lost=self._lost,
        )

    def _acquired(self) -> None:
        self.acquired += 1

    def _lost(self) -> None:
        self.lost += 1

    def crash(self) -> None:
        """Stop renewing without releasing, as a killed process would."""
        self.fence._stop.set()
        assert self.fence._thread is not None
        self.fence._thread.join(timeout=10)


@pytest.fixture
def kube(k8s_cluster: Cluster) -> Iterator[KubeApi]:
    api = KubeApi(kubeconfig=k8s_cluster.kubeconfig, qps=100, burst=100)
    yield api
    api.close()


def test_one_fence_leads_and_a_standby_takes_over(kube: KubeApi, namespace: str) -> None:
    first, second = Fenced(kube, namespace, "first"), Fenced(kube, namespace, "second")
    first.fence.start()
    wait_for(lambda: first.fence.leader, 20, what="the first fence to lead")
    second.fence.start()
    wait_for(lambda: second.fence.state == "standby", 20, what="the second to stand by")
    assert second.fence.seen_holder == "first"
    assert "held by first" in second.fence.describe()

    first.crash()
    crashed = time.monotonic()
    time.sleep(DURATION * 0.6)  # well inside the duration: still held
    assert second.fence.state == "standby"
    wait_for(lambda: second.fence.leader, 20, what="the standby to take over")
    handover = time.monotonic() - crashed
    # Expiry is measured from when the standby saw the last renewal: at most one retry
    # period after it was written; the standby then notices within one more retry.
    assert DURATION * 0.6 < handover <= DURATION + 2 * second.fence.retry + 1.0, handover
    lease = kube.get("Lease", namespace, "fence-test")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "second"
    assert lease["spec"]["leaseTransitions"] == 1
    wait_for(lambda: second.acquired == 1, 10, what="the new leader to start dispatching")
    assert (first.acquired, first.lost, second.lost) == (1, 0, 0)

    second.fence.stop()  # a clean stop releases the Lease
    lease = kube.get("Lease", namespace, "fence-test")
    assert lease is not None
    assert lease["spec"].get("holderIdentity") is None
    third = Fenced(kube, namespace, "third")
    began = time.monotonic()
    third.fence.start()
    try:
        wait_for(lambda: third.fence.leader, 10, what="a successor to lead at once")
        assert time.monotonic() - began < DURATION
    finally:
        third.fence.stop()


def test_a_leader_whose_lease_is_taken_stops(kube: KubeApi, namespace: str) -> None:
    """Another holder written into the Lease (e.g. after this leader was partitioned away
    for longer than the duration) makes the leader give up at its next renewal."""
    leader = Fenced(kube, namespace, "leader")
    leader.fence.start()
    try:
        wait_for(lambda: leader.fence.leader, 20, what="the fence to lead")
        lease = kube.get("Lease", namespace, "fence-test")
        assert lease is not None
        lease["spec"]["holderIdentity"] = "usurper"
        kube.replace(lease)
        wait_for(lambda: leader.lost == 1, 10, what="the leader to give up")
        assert leader.fence.state == "standby"
    finally:
        leader.fence.stop()
    lease = kube.get("Lease", namespace, "fence-test")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "usurper"  # not released: it was not ours


def serve_env(
    tmp_path: Path, cluster: Cluster, git: GitHttpServer, lease_namespace: str
) -> dict[str, str]:
    k8s = tmp_path / "k8s-config.yaml"
    k8s.write_text(
        yaml.safe_dump(
            {
                "kubeconfig": str(cluster.kubeconfig),
                "namespaces": {"allowed": ["t-*"]},
                "defaults": {"image": "mlexp/workload:test"},
                "jobs": {"backoff_limit": 0, "pod_labels": MANUAL_DRIVE},
                "lease": {"namespace": lease_namespace, "duration_seconds": 4},
            }
        )
    )
    server = tmp_path / "server.yaml"
    server.write_text(
        yaml.safe_dump(
            {
                "k8s_config_file": str(k8s),
                "git_ca_bundle": str(git.ca_file),
                "egress": {"allowed_networks": ["127.0.0.0/8"]},
            }
        )
    )
    return {"MLEXP_CONFIG_FILE": str(server)}


def ready(url: str) -> bool:
    return httpx.get(f"{url}/readyz", timeout=10).status_code == 200


def test_two_instances_one_dispatches_and_a_kill_hands_over(
    k8s_cluster: Cluster,
    k8s_api: client.ApiClient,
    driver: JobDriver,
    namespace: str,
    git_server: GitHttpServer,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    env = serve_env(tmp_path, k8s_cluster, git_server, namespace)
    data = tmp_path / "data"
    batch, core = client.BatchV1Api(k8s_api), client.CoreV1Api(k8s_api)
    driver.hold_all = True
    with (
        service_process(data, env=env) as (first, first_url),
        service_process(data, env=env) as (second, second_url),
    ):
        urls = {first_url: first, second_url: second}
        wait_for(
            lambda: (
                sum(ready(url) for url in urls) == 1
                and all(
                    httpx.get(f"{u}/readyz", timeout=10).status_code in (200, 503) for u in urls
                )
            ),
            30,
            what="one instance ready",
        )
        leader_url = next(url for url in urls if ready(url))
        standby_url = next(url for url in urls if url != leader_url)
        answer = httpx.get(f"{standby_url}/readyz", timeout=10)
        assert answer.status_code == 503
        assert "standby" in answer.json()["checks"]["dispatch"]

        with httpx.Client(base_url=leader_url, timeout=30) as leader:
            experiment = create(
                leader, small_parts(QUICK_DVC, repo_json=remote_repo(git_server, s3_server))
            )
        body = {"experiment_id": experiment["experiment_id"], "resource": "job",
                "namespace": namespace}  # fmt: skip
        refused = httpx.post(f"{standby_url}/experiment/run", json=body, timeout=30)
        assert refused.status_code == 503
        assert refused.json()["title"] == "Standby"
        accepted = httpx.post(f"{leader_url}/experiment/run", json=body, timeout=30)
        assert accepted.status_code == 202, accepted.text
        run_id = accepted.json()["run_id"]
        # The standby reads the same records.
        assert httpx.get(f"{standby_url}/runs/{run_id}", timeout=10).status_code == 200
        wait_for(lambda: batch.list_namespaced_job(namespace).items, 60, what="the run's Job")
        selector = f"mlexp.io/run-id={run_id}"
        wait_for(
            lambda: core.list_namespaced_pod(namespace, label_selector=selector).items,
            60,
            what="its pod",
        )

        urls[leader_url].kill()  # SIGKILL: no release, no goodbye
        killed = time.monotonic()
        urls[leader_url].wait(timeout=30)
        wait_for(lambda: ready(standby_url), 30, what="the standby to take over")
        handover = time.monotonic() - killed
        print(f"handover after SIGKILL: {handover:.1f} s (lease duration 4 s)")
        assert handover <= 4 + 2 * 0.8 + 2.0, handover

        driver.release(run_id)
        with httpx.Client(base_url=standby_url, timeout=30) as successor:
            final = wait_for(
                lambda: (
                    (run := successor.get(f"/runs/{run_id}").json())["state"]
                    in ("succeeded", "failed", "cancelled")
                    and run
                ),
                240,
                what="the adopted run to end",
            )
            assert final["state"] == "succeeded", successor.get(f"/runs/{run_id}/logs").text
    assert len(batch.list_namespaced_job(namespace).items) == 1
    pods = core.list_namespaced_pod(namespace, label_selector=selector)
    assert len(pods.items) == 1
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("service-*.log"))
    assert "standing by: the dispatch lease is held by another instance" in logs
    assert "dispatch lease expired: taking it over" in logs
