"""The Helm chart with the project's own image, serving from a real node (issues 13 and 14).

Covers, for real: `helm install` of deploy/helm/mlexp-ctrl with the service image
(`localhost/mlexp-ctrl:<hash>`, imported into the real node's containerd, pull policy
Never) on the real kubelet node -- hostNetwork (the node's CNI is loopback-only), the API
server's real address through `extraEnv` (no kube-proxy: 10.96.0.1 leads nowhere), a free
`containerPort`, tokens from `auth.tokens`, local runs off (the chart's default: no
bubblewrap needed, which containerd's RuntimeDefault seccomp profile refuses), the git test
server's CA through `gitCA`, no volume (`persistence.enabled: false`). The pod becomes
Ready (its /readyz: store, API server, the dispatch Lease); it runs as uid 10001 on a
read-only root filesystem; it holds the Lease in the release namespace; and, through its
port on 127.0.0.1 with the bearer token, an experiment with a remote repo is created and a
Job run on the real node succeeds (git push over HTTPS with the private CA, DVC to S3).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from tests.cluster.test_service_k8s import remote_repo
from tests.support.bundles import create, sample_parts
from tests.support.cluster import Cluster, ClusterError
from tests.support.gitserver import GitHttpServer
from tests.support.helm import HelmError, Release, helm_binary, installed_chart, kubectl
from tests.support.images import Images
from tests.support.prereqs import require
from tests.support.realnode import RealNode
from tests.support.s3server import S3Server
from tests.support.service import free_port
from tests.support.waiting import wait_for

TOKEN = "chart-on-real-node-0123456789abcdef"
READY_TIMEOUT = 240.0
RUN_TIMEOUT = 600.0


@dataclass
class Served:
    """The installed chart's pod, and how to reach it."""

    release: Release
    namespace: str  # where runs go (the chart's one allowed namespace)
    pod: str
    http: httpx.Client
    timings: dict[str, float] = field(default_factory=dict)


def _api_server(cluster: Cluster) -> tuple[str, int]:
    """The API server's real address (its serving certificate names 127.0.0.1)."""
    server = urlsplit(yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]
                      ["server"])  # fmt: skip
    assert server.hostname is not None
    assert server.port is not None
    return server.hostname, server.port


def _pods(cluster: Cluster, release: Release) -> list[dict[str, Any]]:
    out = kubectl(cluster, "get", "pods", "-n", release.namespace, "-o", "json", "-l",
                  f"app.kubernetes.io/instance={release.name}")  # fmt: skip
    pods: list[dict[str, Any]] = json.loads(out)["items"]
    return pods


def _ready_pod(cluster: Cluster, release: Release) -> str | None:
    """The Ready pod's name; an AssertionError as soon as the container crash-loops."""
    for pod in _pods(cluster, release):
        for status in pod.get("status", {}).get("containerStatuses", []):
            assert status["restartCount"] < 2, f"the service restarted {status['restartCount']}x"
        conditions = pod.get("status", {}).get("conditions", [])
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            return str(pod["metadata"]["name"])
    return None


def _why_not_ready(cluster: Cluster, release: Release) -> str:
    """The pods' status and the service's log, for a failure message."""
    lines = []
    for pod in _pods(cluster, release):
        name = pod["metadata"]["name"]
        statuses = pod.get("status", {}).get("containerStatuses", [])
        lines.append(f"pod {name}: {json.dumps(statuses, indent=1)[-2000:]}")
        try:
            log = kubectl(cluster, "logs", "-n", release.namespace, name, "--tail=40")
        except HelmError as exc:
            log = str(exc)
        lines.append(f"log of {name}:\n{log}")
    return "\n".join(lines)


def _exec(cluster: Cluster, served: Served, script: str) -> str:
    return kubectl(cluster, "exec", "-n", served.release.namespace, served.pod, "-c",
                   "mlexp-ctrl", "--", "sh", "-c", script)  # fmt: skip


@pytest.fixture(scope="module")
def served(
    k8s_cluster: Cluster,
    real_node: RealNode,
    real_node_images: Images,
    git_server: GitHttpServer,
) -> Iterator[Served]:
    try:
        helm = helm_binary()
    except ClusterError as exc:
        require(False, f"helm unavailable: {exc}")
        raise
    timings: dict[str, float] = {}
    started = time.monotonic()
    real_node.import_images(real_node_images.service)
    timings["import service image"] = time.monotonic() - started

    repository, _, tag = real_node_images.service.rpartition(":")
    api_host, api_port = _api_server(k8s_cluster)
    port = free_port()
    runs_namespace = f"t-chart-{uuid.uuid4().hex[:8]}"
    placement = {
        "node_selector": dict(real_node.node_selector),
        "tolerations": list(real_node.tolerations),
    }
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "hostNetwork": True,
        "containerPort": port,
        "nodeSelector": placement["node_selector"],
        "tolerations": placement["tolerations"],
        "extraEnv": [
            {"name": "KUBERNETES_SERVICE_HOST", "value": api_host},
            {"name": "KUBERNETES_SERVICE_PORT", "value": str(api_port)},
        ],
        "auth": {
            "existingSecret": "",
            "tokens": [{"token": TOKEN, "name": "chart-tester", "namespaces": [runs_namespace]}],
        },
        "server": {
            "log_format": "text",
            "egress": {"allowed_networks": ["127.0.0.0/8"]},
            "local": {"enabled": False},  # the chart's default, kept when server is set
        },
        "gitCA": git_server.ca_file.read_text(),
        "kubernetes": {
            "defaults": {
                "image": real_node.workload_image,
                "image_pull_policy": "Never",
                "host_network": True,
                **placement,
            },
            "jobs": {"backoff_limit": 0},
        },
        "persistence": {"enabled": False},
    }
    started = time.monotonic()
    with installed_chart(k8s_cluster, helm, namespaces=[runs_namespace], values=values) as release:
        timings["helm install"] = time.monotonic() - started
        started = time.monotonic()
        try:
            pod = wait_for(
                lambda: _ready_pod(k8s_cluster, release),
                READY_TIMEOUT,
                what="the chart's pod to be Ready",
                max_interval=2.0,
            )
        except (TimeoutError, AssertionError) as exc:
            pytest.fail(f"{exc}\n{_why_not_ready(k8s_cluster, release)}", pytrace=False)
        timings["pod Ready"] = time.monotonic() - started
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as http:
            yield Served(release, runs_namespace, pod, http, timings)
        started = time.monotonic()
    timings["uninstall"] = time.monotonic() - started
    print("\nchart on the real node, timings: "
          + ", ".join(f"{step} {seconds:.1f}s" for step, seconds in timings.items()))  # fmt: skip


def test_the_pod_serves_from_the_real_node_with_the_charts_settings(
    k8s_cluster: Cluster, real_node: RealNode, served: Served
) -> None:
    (pod,) = _pods(k8s_cluster, served.release)
    spec = pod["spec"]
    assert spec["nodeName"] == real_node.name
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    (status,) = pod["status"]["containerStatuses"]
    assert status["ready"] is True
    assert status["imageID"]  # a real runtime reports the image it ran
    assert served.http.get("/healthz").status_code == 200
    ready = served.http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert (
        served.http.get("/runs", headers={"Authorization": "Bearer wrong-token-000000"}).status_code
        == 401
    )


def test_the_container_runs_as_10001_on_a_read_only_root(
    k8s_cluster: Cluster, served: Served
) -> None:
    identity = _exec(k8s_cluster, served, "id").strip()
    print(f"\nid in the pod: {identity}")
    assert identity.startswith("uid=10001(mlexp) gid=10001(mlexp)"), identity
    root = _exec(k8s_cluster, served, "touch /probe-root 2>&1; echo rc=$?")
    assert "Read-only file system" in root, root
    assert "rc=1" in root, root
    data = _exec(k8s_cluster, served, "touch /data/probe 2>&1 && rm /data/probe; echo rc=$?")
    assert data.strip() == "rc=0", data  # the data dir (an emptyDir here) is writable
    ca = _exec(k8s_cluster, served, "head -1 /etc/mlexp/ca/git-ca.pem")
    assert ca.strip() == "-----BEGIN CERTIFICATE-----"


def test_the_pod_holds_the_dispatch_lease(k8s_cluster: Cluster, served: Served) -> None:
    release = served.release
    holder = kubectl(k8s_cluster, "get", "lease", release.fullname, "-n", release.namespace,
                     "-o", "jsonpath={.spec.holderIdentity}")  # fmt: skip
    # The pod's name (MLEXP_POD_NAME from the downward API), though with hostNetwork its
    # host name is the node's.
    hostname = _exec(k8s_cluster, served, "cat /proc/sys/kernel/hostname").strip()
    print(f"\nLease {release.namespace}/{release.fullname} held by {holder!r} "
          f"(pod {served.pod}, hostname in the pod {hostname!r})")  # fmt: skip
    assert holder.rpartition("_")[0] == served.pod, holder


def test_a_job_run_through_the_charts_pod_succeeds_on_the_real_node(
    k8s_cluster: Cluster,
    real_node: RealNode,
    served: Served,
    git_server: GitHttpServer,
    s3_server: S3Server,
) -> None:
    started = time.monotonic()
    experiment = create(served.http, sample_parts(remote_repo(git_server, s3_server)))
    created = time.monotonic() - started
    body = {"experiment_id": experiment["experiment_id"], "resource": "job",
            "namespace": served.namespace}  # fmt: skip
    # Nothing runs on the service's own machine in the cluster (local.enabled: false).
    local = served.http.post("/experiment/run", json={**body, "resource": "local"})
    assert local.status_code == 422, local.text
    assert "local runs are disabled" in local.json()["detail"]
    response = served.http.post("/experiment/run", json=body)
    assert response.status_code == 202, response.text
    run_id = str(response.json()["run_id"])

    def finished() -> dict[str, Any] | None:
        run: dict[str, Any] = served.http.get(f"/runs/{run_id}").json()
        return run if run["state"] in ("succeeded", "failed", "cancelled") else None

    run = wait_for(finished, RUN_TIMEOUT, what=f"run {run_id} to finish", max_interval=1.0)
    ran = time.monotonic() - started - created
    print(f"\nexperiment created through the pod in {created:.1f}s; Job run {run_id} "
          f"{run['state']} in {ran:.1f}s")  # fmt: skip
    log = served.http.get(f"/runs/{run_id}/logs").text
    assert run["state"] == "succeeded", log
    assert run["result"]["metrics"]["metrics.json"]["accuracy"] > 0.8
    assert "step 7: git push" in log
    pods = json.loads(kubectl(k8s_cluster, "get", "pods", "-n", served.namespace, "-o", "json",
                              "-l", f"mlexp.io/run-id={run_id}"))["items"]  # fmt: skip
    assert [p["spec"]["nodeName"] for p in pods] == [real_node.name]
    assert pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
