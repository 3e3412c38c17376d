"""JobTracker: callbacks on a Job's end, pods by Job, and deletions found by listing again.

The watches are driven here by a scripted API (list, then a watch that returns events,
then 410 Gone and a new listing), the one boundary these rules need; the cluster tier
runs the same tracker against a real API server (tests/cluster/test_service_k8s.py).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from controller.adapters.kube import Gone
from controller.executors.kube_tracking import JobEnd, JobTracker
from tests.support.waiting import wait_for

NS = "runs"


def job(name: str, *, done: str | None = None) -> dict[str, Any]:
    conditions = [{"type": done, "status": "True"}] if done else []
    return {
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "resourceVersion": "1"},
        "status": {"conditions": conditions, "startTime": "x" * 1000},
        "spec": {"template": {"spec": {"containers": [{"name": "runner"}]}}},
    }


def pod(name: str, job_name: str, phase: str = "Running") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"job-name": job_name, "mlexp.io/run-id": f"run-{job_name}"},
            "resourceVersion": "1",
        },
        "status": {"phase": phase, "conditions": []},
    }


class ScriptedApi:
    """Lists what ``listing`` holds; each watch yields queued events until a ``None``
    (the server ends the watch) or ``"gone"`` (410: list again)."""

    def __init__(self) -> None:
        self.listing: dict[str, list[dict[str, Any]]] = {"Job": [], "Pod": []}
        self.events: dict[str, queue.Queue[Any]] = {"Job": queue.Queue(), "Pod": queue.Queue()}
        self.lists: dict[str, int] = {"Job": 0, "Pod": 0}

    def select(self, kind: str, namespace: str, selector: str) -> tuple[list[Any], str]:
        self.lists[kind] += 1
        return list(self.listing[kind]), "1"

    def watch(
        self, kind: str, namespace: str, selector: str, version: str, timeout: int = 60
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        while True:
            try:
                item = self.events[kind].get(timeout=0.05)
            except queue.Empty:
                return
            if item == "gone":
                raise Gone("too old")
            yield item


def test_a_jobs_end_is_called_back_once_and_memory_is_slim() -> None:
    api = ScriptedApi()
    api.listing["Job"] = [job("a")]
    tracker = JobTracker(api, on_stuck=lambda run_id, why: None)  # type: ignore[arg-type]
    ends: list[JobEnd] = []
    try:
        tracker.on_end(NS, "a", ends.append)
        assert ends == []
        stored = tracker.current(NS, "a")
        assert stored is not None
        assert "spec" not in stored  # slim: only what is read
        api.events["Job"].put(("MODIFIED", job("a", done="Complete")))
        api.events["Job"].put(("MODIFIED", job("a", done="Complete")))
        wait_for(lambda: ends, 5, what="the tracker to see it")
        threading.Event().wait(0.2)
        assert ends == [("Complete", "")]
        # Registered after it ended: called at once.
        late: list[JobEnd] = []
        tracker.on_end(NS, "a", late.append)
        assert late == [("Complete", "")]
        assert api.lists == {"Job": 1, "Pod": 1}  # one listing per kind, however many asks
    finally:
        tracker.stop()


def test_a_job_deleted_while_the_watch_was_down_is_seen_gone_on_the_new_listing() -> None:
    api = ScriptedApi()
    api.listing["Job"] = [job("a"), job("b")]
    api.listing["Pod"] = [pod("a-1", "a"), pod("b-1", "b")]
    tracker = JobTracker(api, on_stuck=lambda run_id, why: None)  # type: ignore[arg-type]
    ends: list[JobEnd] = []
    started: list[str] = []
    try:
        tracker.on_end(NS, "a", ends.append)
        tracker.on_pod_started(NS, "a", started.append)
        assert started == ["a-1"]
        assert tracker.pods_of(NS, "a") == ["a-1"]
        api.listing["Job"] = [job("b")]
        api.listing["Pod"] = [pod("b-1", "b")]
        api.events["Job"].put("gone")
        api.events["Pod"].put("gone")
        wait_for(lambda: ends and not tracker.pods_of(NS, "a"), 5, what="the tracker to see it")
        assert ends == [("Deleted", "Job a was deleted before it finished")]
        assert tracker.current(NS, "a") is None
        assert tracker.current(NS, "b") is not None
        assert tracker.pods_of(NS, "b") == ["b-1"]
    finally:
        tracker.stop()


def test_a_failing_callback_does_not_end_the_watch() -> None:
    api = ScriptedApi()
    tracker = JobTracker(api, on_stuck=lambda run_id, why: None)  # type: ignore[arg-type]
    ends: list[JobEnd] = []

    def broken(end: JobEnd) -> None:
        raise RuntimeError("a bug")

    try:
        tracker.on_end(NS, "x", broken)
        tracker.on_end(NS, "y", ends.append)
        api.events["Job"].put(("ADDED", job("x", done="Failed")))
        api.events["Job"].put(("ADDED", job("y", done="Complete")))
        wait_for(lambda: ends, 5, what="the tracker to see it")
        assert ends == [("Complete", "")]
    finally:
        tracker.stop()


def test_a_deleted_jobs_end_waits_for_its_pods_to_be_gone_or_stopping() -> None:
    api = ScriptedApi()
    api.listing["Job"] = [job("a")]
    api.listing["Pod"] = [pod("a-1", "a"), pod("a-2", "a")]
    tracker = JobTracker(api, on_stuck=lambda run_id, why: None)  # type: ignore[arg-type]
    ends: list[JobEnd] = []
    try:
        tracker.on_end(NS, "a", ends.append)
        api.events["Job"].put(("DELETED", job("a")))  # deleted in the background
        wait_for(lambda: tracker.current(NS, "a") is None, 5, what="the tracker to see it")
        api.events["Pod"].put(("DELETED", pod("a-1", "a")))
        wait_for(lambda: tracker.pods_of(NS, "a") == ["a-2"], 5, what="the tracker to see it")
        assert ends == []  # a pod of it may still run
        api.events["Pod"].put(("MODIFIED", pod("a-2", "a")))
        threading.Event().wait(0.2)
        assert ends == []
        stopping = pod("a-2", "a")
        stopping["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
        api.events["Pod"].put(("MODIFIED", stopping))  # its containers are being stopped
        wait_for(lambda: ends, 5, what="the tracker to see it")
        assert ends == [("Deleted", "Job a was deleted before it finished")]
    finally:
        tracker.stop()
