"""Watches on the test cluster deliver a pod's life as ADDED, MODIFIED and DELETED events, in
order, with kwok's status changes (Running) and deletion (the pod is really removed) in them.
"""

from __future__ import annotations

from kubernetes import client, watch

POD = "watched"


def test_watch_delivers_added_modified_deleted(core: client.CoreV1Api, namespace: str) -> None:
    start = core.list_namespaced_pod(namespace).metadata.resource_version
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": POD},
            "spec": {"containers": [{"name": "main", "image": "registry.invalid/idle:1"}]},
        },
    )

    seen: list[tuple[str, str | None]] = []
    deleting = False
    watcher = watch.Watch()
    for event in watcher.stream(
        core.list_namespaced_pod,
        namespace,
        field_selector=f"metadata.name={POD}",
        resource_version=start,
        timeout_seconds=60,
    ):
        pod = event["object"]
        seen.append((event["type"], pod.status.phase))
        if event["type"] == "MODIFIED" and pod.status.phase == "Running" and not deleting:
            core.delete_namespaced_pod(POD, namespace)
            deleting = True
        if event["type"] == "DELETED":
            watcher.stop()

    types = [kind for kind, _ in seen]
    assert types[0] == "ADDED"
    assert types[-1] == "DELETED", f"no DELETED event within 60s: {seen}"
    assert ("MODIFIED", "Running") in seen
    assert set(types[1:-1]) == {"MODIFIED"}
