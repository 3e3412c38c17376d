"""The real node (tests/support/realnode.py): a kubelet with containerd and runc beside kwok.

Covers what kwok cannot: the workload image runs in a real container (python3, git, dvc, as
the image's user) and a Job reaches Complete from the container's exit; its log comes from the
kubelet through the API server; `exec` into a StatefulSet's pod runs inside the container and
its exit code comes back; the node is fenced off (taint, label) so kwok-tier pods never land
on it; the kubelet's log symlinks point into the node's own state dir.
"""

from __future__ import annotations

import re
import subprocess
import time
from typing import Any

from kubernetes import client
from kubernetes.stream import stream

from tests.support.cluster import Cluster
from tests.support.images import Images
from tests.support.realnode import NODE_SELECTOR, TAINT, RealNode, pod_placement
from tests.support.waiting import wait_for

WORKLOAD_UID = 1000  # workload_example/Dockerfile
CONTAINER = "main"
POD_TIMEOUT = 120.0


def _pod_spec(image: str, command: list[str], **extra: Any) -> dict[str, Any]:
    return {
        **pod_placement(),
        "terminationGracePeriodSeconds": 5,
        "containers": [
            {"name": CONTAINER, "image": image, "imagePullPolicy": "Never", "command": command}
        ],
        **extra,
    }


def _say(line: str) -> None:
    print(f"\n[real node] {line}")


def test_the_node_is_ready_real_and_fenced_off(
    real_node: RealNode, real_node_images: Images, core: client.CoreV1Api
) -> None:
    def reported_images() -> set[str]:  # in the node's status, updated every 10 s or so
        images = core.read_node(real_node.name).status.images or []
        return {name for image in images for name in image.names or []}

    assert real_node.workload_image == real_node_images.workload
    wait_for(lambda: real_node.workload_image in reported_images(), 60, what="the image listed")
    node = core.read_node(real_node.name)

    assert node.status.node_info.container_runtime_version.startswith("containerd://")
    assert node.status.node_info.kubelet_version == "v1.36.4"
    assert {(a.type, a.address) for a in node.status.addresses} == {
        ("InternalIP", "127.0.0.1"),
        ("Hostname", real_node.name),
    }
    assert node.metadata.labels.items() >= NODE_SELECTOR.items()
    assert real_node.node_selector == NODE_SELECTOR
    assert {"key": TAINT["key"], "value": TAINT["value"], "effect": TAINT["effect"]} in [
        {"key": t.key, "value": t.value, "effect": t.effect} for t in node.spec.taints or []
    ]
    ready = {c.type: c.status for c in node.status.conditions}
    assert ready["Ready"] == "True"


def test_a_pod_without_the_toleration_never_lands_on_the_real_node(
    k8s_cluster: Cluster, real_node: RealNode, core: client.CoreV1Api, namespace: str
) -> None:
    pods = [f"plain-{i}" for i in range(4)]
    for name in pods:
        body = {
            "metadata": {"name": name},
            "spec": {"containers": [{"name": CONTAINER, "image": "registry.invalid/x:1"}]},
        }
        core.create_namespaced_pod(namespace, body)

    def scheduled() -> list[str] | None:
        nodes = [core.read_namespaced_pod(name, namespace).spec.node_name for name in pods]
        return nodes if all(nodes) else None

    nodes = wait_for(scheduled, 60, what="the pods to be scheduled")
    assert set(nodes) <= set(k8s_cluster.nodes)


def test_job_runs_the_workload_image_to_complete_and_its_log_comes_from_the_kubelet(
    real_node: RealNode,
    real_node_images: Images,
    k8s_api: client.ApiClient,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    script = (
        "python3 -c 'import sys; print(\"python\", sys.version.split()[0])'; "
        "git --version; echo dvc $(dvc --version); echo uid $(id -u); echo cwd $(pwd)"
    )
    job = {
        "metadata": {"name": "smoke"},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": int(POD_TIMEOUT),
            "template": {
                "spec": _pod_spec(
                    real_node_images.workload, ["sh", "-c", script], restartPolicy="Never"
                )
            },
        },
    }
    batch = client.BatchV1Api(k8s_api)
    started = time.monotonic()
    batch.create_namespaced_job(namespace, job)

    def finished() -> str | None:
        conditions = batch.read_namespaced_job("smoke", namespace).status.conditions or []
        done = [c.type for c in conditions if c.status == "True"]
        return next((c for c in done if c in ("Complete", "Failed")), None)

    outcome = wait_for(finished, POD_TIMEOUT, what="the Job to finish")
    _say(f"Job pod ran to {outcome} in {time.monotonic() - started:.1f}s")
    pod = core.list_namespaced_pod(namespace, label_selector="job-name=smoke").items[0]
    log = core.read_namespaced_pod_log(pod.metadata.name, namespace, container=CONTAINER)

    assert outcome == "Complete", log
    assert pod.spec.node_name == real_node.name
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    assert re.search(r"^python 3\.11\.\d+$", log, re.M), log
    assert re.search(r"^git version \d+\.", log, re.M), log
    assert re.search(r"^dvc 3\.\d+\.\d+$", log, re.M), log
    assert f"uid {WORKLOAD_UID}\n" in log
    assert "cwd /home/mlexp/work\n" in log  # the image's WORKDIR
    # The kubelet's log lives in the node's own dir (a /var/log/containers symlink points there).
    logs = list(real_node.pod_logs_dir.glob(f"{namespace}_{pod.metadata.name}_*/main/*.log"))
    assert len(logs) == 1
    assert "git version" in logs[0].read_text()


def test_exec_into_a_statefulset_pod_runs_in_the_container_and_returns_its_exit_code(
    k8s_cluster: Cluster,
    real_node: RealNode,
    real_node_images: Images,
    k8s_api: client.ApiClient,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    labels = {"app": "trainer"}
    sts = {
        "metadata": {"name": "trainer"},
        "spec": {
            "serviceName": "trainer",
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": _pod_spec(real_node_images.workload, ["sleep", "infinity"]),
            },
        },
    }
    apps = client.AppsV1Api(k8s_api)
    started = time.monotonic()
    apps.create_namespaced_stateful_set(namespace, sts)
    wait_for(
        lambda: apps.read_namespaced_stateful_set("trainer", namespace).status.ready_replicas,
        POD_TIMEOUT,
        what="the StatefulSet's pod to be Ready",
    )
    _say(f"StatefulSet pod Ready in {time.monotonic() - started:.1f}s")

    kubectl = [str(k8s_cluster.kubectl), f"--kubeconfig={k8s_cluster.kubeconfig}"]
    done = subprocess.run(
        [*kubectl, "exec", "-n", namespace, "trainer-0", "--", "sh", "-c", "echo in; exit 3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (3, "in\n"), done.stderr

    session = stream(
        core.connect_get_namespaced_pod_exec,
        "trainer-0",
        namespace,
        container=CONTAINER,
        command=["sh", "-c", "id -u; cat /proc/1/cmdline | tr '\\0' ' '; exit 3"],
        stdout=True,
        stderr=True,
        stdin=False,
        tty=False,
        _preload_content=False,
    )
    session.run_forever(timeout=60)
    stdout = session.read_stdout()
    assert session.returncode == 3
    assert stdout == f"{WORKLOAD_UID}\nsleep infinity "  # inside the container, not the host
    pod = core.read_namespaced_pod("trainer-0", namespace)
    assert pod.spec.node_name == real_node.name


def test_an_image_that_was_not_imported_is_never_pulled(
    real_node: RealNode, core: client.CoreV1Api, namespace: str
) -> None:
    image = "registry.invalid/not-imported:1"
    body = {"metadata": {"name": "nopull"}, "spec": _pod_spec(image, ["true"])}
    core.create_namespaced_pod(namespace, body)

    def waiting_reason() -> str | None:
        statuses = core.read_namespaced_pod("nopull", namespace).status.container_statuses
        waiting = statuses[0].state.waiting if statuses else None
        return waiting.reason if waiting and waiting.reason != "ContainerCreating" else None

    assert wait_for(waiting_reason, 60, what="the pod's waiting reason") == "ErrImageNeverPull"
