"""Cluster tier: one real control plane (etcd, kube-apiserver, controller-manager, scheduler,
kwok nodes) per test session, and a fresh namespace per test.

Every test under tests/cluster/ is marked `cluster`. The binaries are built once into a cache
(scripts/build-k8s). Missing prerequisites (no Go, a failed build, no openssl) skip the tier on
a laptop and fail it under CI=true; a cluster that does not start is always a failure.

`real_node` adds a kubelet node that runs real containers (tests/support/realnode.py) beside
the kwok nodes, with the workload image in its containerd; a machine that cannot run it (not
root, no containerd/runc/podman) skips those tests on a laptop and fails them under CI=true.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from tests.support.cluster import Cluster, ClusterError, build_binaries
from tests.support.images import Images, build_images
from tests.support.jobdriver import JobDriver
from tests.support.prereqs import require, require_tools
from tests.support.realnode import (
    RealNode,
    RealNodeError,
    RealNodeUnavailable,
    ensure_prerequisites,
)

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` selection looks at the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def k8s_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_tools("openssl")
    try:
        bin_dir = build_binaries()
    except ClusterError as exc:
        require(False, f"Kubernetes binaries unavailable: {exc}")
        raise  # require() has already skipped or failed; this only satisfies the type checker
    # Under pytest's basetemp, so the logs of the last few runs stay around for a post-mortem.
    state_dir = tmp_path_factory.mktemp("k8s")
    try:
        cluster = Cluster.start(state_dir, bin_dir=bin_dir)
    except ClusterError as exc:
        pytest.fail(f"the test cluster did not start: {exc}", pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def k8s_api(k8s_cluster: Cluster) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(k8s_cluster.kubeconfig))
    yield api
    api.close()


@pytest.fixture
def core(k8s_api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(k8s_api)


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace, deleted (without waiting) after the test."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


@pytest.fixture
def driver(
    k8s_cluster: Cluster, k8s_api: client.ApiClient, namespace: str, tmp_path: Path
) -> Iterator[JobDriver]:
    """Job pods on kwok nodes executed on the host (tests/support/jobdriver.py)."""
    with JobDriver(k8s_cluster, k8s_api, namespace, tmp_path / "job-pods") as running:
        yield running


def _announce(request: pytest.FixtureRequest, line: str) -> None:
    """A line on the terminal even when output is captured (timings of session fixtures)."""
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)


@pytest.fixture(scope="session")
def real_node_images() -> Images:
    """The project's images (scripts/build-images, built or reused), for the real node."""
    try:
        ensure_prerequisites()  # installs containerd/runc/CNI plugins with apt-get as root
    except RealNodeUnavailable as exc:
        require(False, f"this machine cannot run a real node: {exc}")
    return build_images()


@pytest.fixture(scope="session")
def real_node(
    request: pytest.FixtureRequest, k8s_cluster: Cluster, real_node_images: Images
) -> Iterator[RealNode]:
    """A kubelet node (`realnode`) running real containers, the workload image imported.

    Its pods need `tests.support.realnode.pod_placement()` (nodeSelector, toleration,
    hostNetwork) and `imagePullPolicy: Never`; other images go in with `import_images`.
    Stopping it checks that no shim, mount or container is left (an error at teardown).
    """
    started = time.monotonic()
    try:
        node = RealNode.start(
            k8s_cluster,
            images=[real_node_images.workload],
            containers_conf=real_node_images.containers_conf,
        )
    except RealNodeUnavailable as exc:
        require(False, f"this machine cannot run a real node: {exc}")
        raise
    except RealNodeError as exc:
        pytest.fail(f"the real node did not start: {exc}", pytrace=False)
    steps = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in node.timings.items())
    _announce(request, f"\nreal node Ready in {time.monotonic() - started:.1f}s ({steps})")
    yield node
    started = time.monotonic()
    node.stop()
    _announce(request, f"\nreal node stopped in {time.monotonic() - started:.1f}s")
