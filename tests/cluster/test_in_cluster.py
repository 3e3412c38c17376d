"""In-cluster mode for real (issue 13): the service with exactly what a pod of the Helm
chart would have, on the real control plane (kwok nodes; JobDriver runs Job pods).

The chart is installed with two allowed namespaces; the service gets a TokenRequest token
of the chart's ServiceAccount, the cluster's CA and its release namespace in a directory
laid out as the kubelet mounts them (``service_account_dir``), and
``KUBERNETES_SERVICE_HOST``/``PORT`` -- no kubeconfig. With only the chart's RBAC it holds
its Lease, runs a Job run and an exec run (a StatefulSet it provisions) end to end, and
refuses a namespace outside the chart's list itself (403), where the API server would
have refused it too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes import client

from controller.settings import Settings
from tests.cluster.test_service_k8s import k8s_settings, remote_repo, run_on  # noqa: F401
from tests.support.bundles import QUICK_DVC, create, provision_ready, small_parts
from tests.support.cluster import MANUAL_DRIVE, Cluster
from tests.support.gitserver import GitHttpServer
from tests.support.helm import Release, helm_binary, installed_chart, kubectl
from tests.support.jobdriver import JobDriver
from tests.support.s3server import S3Server
from tests.support.service import RunningService, service_in_thread


@pytest.fixture
def release(k8s_cluster: Cluster, namespace: str) -> Iterator[Release]:
    other = f"t-other-{uuid.uuid4().hex[:8]}"
    with installed_chart(k8s_cluster, helm_binary(), namespaces=[namespace, other]) as installed:
        yield installed


def pod_identity(cluster: Cluster, release: Release, root: Path) -> Path:
    """What the kubelet mounts into a pod of the chart: token, cluster CA, namespace."""
    account = root / "serviceaccount"
    account.mkdir(parents=True)
    token = kubectl(
        cluster, "create", "token", release.service_account, "-n", release.namespace
    ).strip()
    (account / "token").write_text(token)
    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
    ca = Path(kubeconfig["clusters"][0]["cluster"]["certificate-authority"])
    (account / "ca.crt").write_bytes(ca.read_bytes())
    (account / "namespace").write_text(release.namespace)
    return account


@pytest.fixture
def in_cluster(
    k8s_settings: Settings,  # noqa: F811
    k8s_cluster: Cluster,
    release: Release,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[RunningService]:
    server = urlsplit(yaml.safe_load(k8s_cluster.kubeconfig.read_text())["clusters"][0]
                      ["cluster"]["server"])  # fmt: skip
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", str(server.hostname))
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
    config = tmp_path / "in-cluster.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "in_cluster": True,
                "service_account_dir": str(pod_identity(k8s_cluster, release, tmp_path)),
                "namespaces": {"allowed": list(release.namespaces)},
                "defaults": {"image": "mlexp/workload:test"},
                "jobs": {"backoff_limit": 0, "pod_labels": MANUAL_DRIVE},
                "exec": {"work_root": str(tmp_path / "exec-runs"), "poll_seconds": 0.2},
                "lease": {"name": release.fullname},  # in the release's namespace
            }
        )
    )
    with service_in_thread(k8s_settings.model_copy(update={"k8s_config_file": config})) as svc:
        yield svc


def test_in_cluster_with_only_the_charts_rights(
    in_cluster: RunningService,
    release: Release,
    driver: JobDriver,
    namespace: str,
    k8s_cluster: Cluster,
    k8s_api: client.ApiClient,
    git_server: GitHttpServer,
    s3_server: S3Server,
) -> None:
    service = in_cluster
    ready = service.http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert "holds the dispatch lease" in ready.json()["checks"]["dispatch"]
    lease = kubectl(k8s_cluster, "get", "lease", release.fullname, "-n", release.namespace,
                    "-o", "jsonpath={.spec.holderIdentity}")  # fmt: skip
    assert lease.strip()

    experiment = create(
        service.http, small_parts(QUICK_DVC, repo_json=remote_repo(git_server, s3_server))
    )
    experiment_id = experiment["experiment_id"]
    job_run = run_on(service, experiment_id, "job", namespace)
    spec = {"kind": "StatefulSet", "name": "trainer", "namespace": namespace,
            "experiment_id": experiment_id}  # fmt: skip
    provision_ready(service.http, spec)
    exec_run = run_on(service, experiment_id, "sts/trainer", namespace)
    for run_id in (job_run, exec_run):
        final = service.wait_run(run_id, timeout=300)
        assert final["state"] == "succeeded", service.http.get(f"/runs/{run_id}/logs").text

    # Outside the chart's list: the service refuses before any call; the API server would too.
    outside = f"t-outside-{uuid.uuid4().hex[:6]}"
    body = {"experiment_id": experiment_id, "resource": "job", "namespace": outside}
    refused = service.http.post("/experiment/run", json=body)
    assert refused.status_code == 403, refused.text
    assert "not allowed" in refused.json()["detail"]
    review = client.AuthorizationV1Api(k8s_api).create_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": release.user,
                "groups": list(release.groups),
                "resourceAttributes": {
                    "namespace": outside,
                    "verb": "create",
                    "group": "batch",
                    "resource": "jobs",
                },
            },
        }
    )
    assert review.status.allowed is False
