"""Jobs on kwok nodes: an ordinary Job's pod completes by itself and the Job turns Complete; a
pod labelled MANUAL_DRIVE stays Running until the test has run its command on the host and
set the pod's status, and only then does the Job complete.
"""

from __future__ import annotations

import subprocess
from typing import Any

from kubernetes import client

from tests.support.cluster import MANUAL_DRIVE, Cluster, finished_pod_status
from tests.support.waiting import wait_for

COMMAND = ["sh", "-c", "echo trained > model.txt"]


def _job(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels or {}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {"name": "main", "image": "registry.invalid/runner:1", "command": COMMAND}
                    ],
                },
            },
        },
    }


def _condition(batch: client.BatchV1Api, name: str, namespace: str, kind: str) -> bool:
    conditions = batch.read_namespaced_job_status(name, namespace).status.conditions or []
    return any(c.type == kind and c.status == "True" for c in conditions)


def _only_pod(core: client.CoreV1Api, namespace: str, job: str) -> client.V1Pod | None:
    pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
    return pods[0] if len(pods) == 1 else None


def _running_pod(core: client.CoreV1Api, namespace: str, job: str) -> client.V1Pod | None:
    pod = _only_pod(core, namespace, job)
    return pod if pod is not None and pod.status.phase == "Running" else None


def test_job_pod_completes_and_job_is_complete(
    k8s_api: client.ApiClient, core: client.CoreV1Api, namespace: str
) -> None:
    batch = client.BatchV1Api(k8s_api)
    batch.create_namespaced_job(namespace, _job("auto"))

    wait_for(
        lambda: _condition(batch, "auto", namespace, "Complete"), 60, what="job auto to complete"
    )

    job = batch.read_namespaced_job_status("auto", namespace)
    assert job.status.succeeded == 1
    assert not job.status.failed
    pod = _only_pod(core, namespace, "auto")
    assert pod is not None
    assert pod.status.phase == "Succeeded"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0


def test_manually_driven_job_pod_waits_for_the_test_to_finish_it(
    k8s_cluster: Cluster, k8s_api: client.ApiClient, core: client.CoreV1Api, namespace: str
) -> None:
    batch = client.BatchV1Api(k8s_api)
    batch.create_namespaced_job(namespace, _job("manual", labels=MANUAL_DRIVE))
    running = wait_for(
        lambda: _running_pod(core, namespace, "manual"), 60, what="the manual job's pod to run"
    )
    # A Job created after it completes on its own, which shows that kwok has moved on; the
    # labelled pod must still be Running and its Job not complete.
    batch.create_namespaced_job(namespace, _job("control"))
    wait_for(
        lambda: _condition(batch, "control", namespace, "Complete"),
        60,
        what="job control to complete",
    )
    assert core.read_namespaced_pod(running.metadata.name, namespace).status.phase == "Running"
    assert not _condition(batch, "manual", namespace, "Complete")

    # Run the container's command on the host, then report it the way a kubelet would.
    workdir = k8s_cluster.exec_workdir(namespace, running.metadata.name)
    workdir.mkdir(parents=True, exist_ok=True)
    command = running.spec.containers[0].command
    exit_code = subprocess.run(command, cwd=workdir, check=False).returncode
    containers = {c.name: c.image for c in running.spec.containers}
    started = running.status.start_time.strftime("%Y-%m-%dT%H:%M:%SZ")
    status = finished_pod_status(containers, exit_code, started_at=started)
    core.patch_namespaced_pod_status(running.metadata.name, namespace, status)

    wait_for(
        lambda: _condition(batch, "manual", namespace, "Complete"),
        60,
        what="job manual to complete",
    )
    assert (workdir / "model.txt").read_text() == "trained\n"
    assert batch.read_namespaced_job_status("manual", namespace).status.succeeded == 1
