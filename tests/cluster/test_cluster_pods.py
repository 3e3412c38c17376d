"""Pods on kwok nodes: a StatefulSet's pod runs and is Ready; `exec` into it runs the command
on this host in the pod's work dir and reports stdout and the exit code; a streamed exec
(`KubeApi.exec_stream`) delivers output while the command runs; its logs are served from the
file the harness maps to the container.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.stream import stream
from kubernetes.stream.ws_client import ERROR_CHANNEL

from controller.adapters.kube import KubeApi
from controller.domain.errors import ExternalError
from tests.support.cluster import Cluster
from tests.support.waiting import wait_for

STS = "trainer"
POD = f"{STS}-0"
CONTAINER = "main"


def _statefulset() -> dict[str, Any]:
    labels = {"app": STS}
    return {
        "metadata": {"name": STS},
        "spec": {
            "serviceName": STS,
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": CONTAINER,
                            "image": "registry.invalid/trainer:1",
                            "command": ["sleep", "inf"],
                        }
                    ]
                },
            },
        },
    }


@pytest.fixture
def ready_pod(k8s_api: client.ApiClient, namespace: str) -> str:
    apps = client.AppsV1Api(k8s_api)
    apps.create_namespaced_stateful_set(namespace, _statefulset())

    def all_ready() -> bool:
        status = apps.read_namespaced_stateful_set(STS, namespace).status
        return status.ready_replicas == 1

    wait_for(all_ready, 60, what=f"statefulset {STS} to have a ready replica")
    return POD


def _exec(
    core: client.CoreV1Api, namespace: str, pod: str, command: list[str]
) -> tuple[str, str, dict[str, Any]]:
    """Run `command` in the pod; return stdout, stderr and the Status from the error channel."""
    session = stream(
        core.connect_get_namespaced_pod_exec,
        pod,
        namespace,
        container=CONTAINER,
        command=command,
        stdout=True,
        stderr=True,
        stdin=False,
        tty=False,
        _preload_content=False,
    )
    session.run_forever(timeout=30)
    assert not session.is_open(), "exec did not finish within 30s"
    stdout, stderr = session.read_stdout(), session.read_stderr()
    status = yaml.safe_load(session.read_channel(ERROR_CHANNEL))
    session.close()
    return stdout, stderr, status


def test_statefulset_pod_is_running_and_ready_on_a_kwok_node(
    k8s_cluster: Cluster, core: client.CoreV1Api, namespace: str, ready_pod: str
) -> None:
    pod = core.read_namespaced_pod(ready_pod, namespace)
    assert pod.status.phase == "Running"
    ready = {c.type: c.status for c in pod.status.conditions}["Ready"]
    assert ready == "True"
    assert pod.spec.node_name in k8s_cluster.nodes
    assert pod.status.container_statuses[0].state.running is not None


def test_exec_runs_on_the_host_in_the_pods_work_dir(
    k8s_cluster: Cluster, core: client.CoreV1Api, namespace: str, ready_pod: str
) -> None:
    stdout, _, status = _exec(
        core, namespace, ready_pod, ["sh", "-c", "pwd; echo from-exec > made-by-exec.txt"]
    )

    workdir = k8s_cluster.exec_workdir(namespace, ready_pod)
    assert stdout.strip() == str(workdir)
    assert (workdir / "made-by-exec.txt").read_text() == "from-exec\n"
    assert status["status"] == "Success"


def test_exec_reports_stdout_stderr_and_a_non_zero_exit_code(
    core: client.CoreV1Api, namespace: str, ready_pod: str
) -> None:
    stdout, stderr, status = _exec(
        core, namespace, ready_pod, ["sh", "-c", "echo hi; echo oops >&2; exit 3"]
    )

    assert stdout == "hi\n"
    assert stderr == "oops\n"
    # What a kubelet sends; the kubernetes client's WSClient.returncode parses exactly this.
    assert status["status"] == "Failure"
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]


def test_exec_returncode_property_of_the_client(
    core: client.CoreV1Api, namespace: str, ready_pod: str
) -> None:
    session = stream(
        core.connect_get_namespaced_pod_exec,
        ready_pod,
        namespace,
        container=CONTAINER,
        command=["sh", "-c", "exit 7"],
        stdout=True,
        stderr=True,
        stdin=False,
        tty=False,
        _preload_content=False,
    )
    session.run_forever(timeout=30)
    assert session.returncode == 7


def test_pod_logs_come_from_the_containers_log_file(
    k8s_cluster: Cluster, core: client.CoreV1Api, namespace: str, ready_pod: str
) -> None:
    k8s_cluster.write_log(namespace, ready_pod, CONTAINER, "epoch 1 loss=0.9", "epoch 2 loss=0.4")

    logs = core.read_namespaced_pod_log(ready_pod, namespace, container=CONTAINER)
    tail = core.read_namespaced_pod_log(ready_pod, namespace, container=CONTAINER, tail_lines=1)

    assert logs == "epoch 1 loss=0.9\nepoch 2 loss=0.4\n"
    assert tail == "epoch 2 loss=0.4\n"


def test_exec_stream_yields_output_as_it_comes_and_fails_on_a_non_zero_exit(
    k8s_cluster: Cluster, namespace: str, ready_pod: str
) -> None:
    kube = KubeApi(kubeconfig=k8s_cluster.kubeconfig)
    try:
        started = time.monotonic()
        seen: list[tuple[float, str]] = []
        script = "head -c 5; echo; sleep 2; echo two"
        for chunk in kube.exec_stream(
            namespace, ready_pod, ["sh", "-c", script], stdin=b"hello, and more"
        ):
            if chunk:
                seen.append((time.monotonic() - started, chunk))
        assert "".join(chunk for _, chunk in seen) == "hello\ntwo\n"
        # stdin's first 5 bytes (although stdin stays open), while the command still ran
        early = "".join(chunk for at, chunk in seen if at < seen[-1][0] - 1.5)
        assert early == "hello\n"

        with pytest.raises(ExternalError, match="exit 3: oops"):
            for _ in kube.exec_stream(namespace, ready_pod, ["sh", "-c", "echo oops >&2; exit 3"]):
                pass

        # Closing the stream early closes the session.
        stream = kube.exec_stream(namespace, ready_pod, ["sh", "-c", "echo x; sleep 30"])
        assert next(s for s in stream if s) == "x\n"
        stream.close()  # type: ignore[attr-defined]
        assert kube.call_count()["exec"] == 3  # a stream is one call, however long
    finally:
        kube.close()
