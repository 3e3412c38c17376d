"""Status from watches: one watch of run Jobs and one of run Pods per namespace.

Each watch lists once (label-selected), then watches from the list's
resourceVersion, resuming from the last version seen when the server ends the
watch, and listing again only when the version has expired (410 Gone). Waiters
block on a condition instead of polling the API. A pod that cannot make
progress (Unschedulable, ImagePullBackOff, CrashLoopBackOff, …) is reported
through ``on_stuck`` with the reason, so a run says why it is not moving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from controller.adapters.kube import Gone, KubeApi, Obj
from controller.domain.errors import MlexpError
from controller.planning.manifests import LABEL_COMPONENT, LABEL_RUN, MANAGED_BY, label_selector

log = logging.getLogger("mlexp.kube")

RUN_SELECTOR = label_selector({MANAGED_BY: "mlexp-ctrl", LABEL_COMPONENT: "run"})
STUCK_WAITING = {
    "ImagePullBackOff", "ErrImagePull", "CrashLoopBackOff", "CreateContainerConfigError",
    "InvalidImageName", "CreateContainerError",
}  # fmt: skip
RETRY_SECONDS = 1.0


def job_finished(job: Obj) -> tuple[str, str] | None:
    """("Complete" | "Failed", reason text) once the Job has finished."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") != "True":
            continue
        kind = condition.get("type")
        if kind in ("Complete", "SuccessCriteriaMet"):
            return "Complete", ""
        if kind in ("Failed", "FailureTarget"):
            return "Failed", _failure_reason(condition)
    return None


def _failure_reason(condition: Obj) -> str:
    reason = str(condition.get("reason") or "Failed")
    message = str(condition.get("message") or "").strip()
    if reason == "DeadlineExceeded":
        return f"deadline exceeded: {message or 'the Job ran longer than activeDeadlineSeconds'}"
    if reason == "BackoffLimitExceeded":
        return f"the runner failed on every attempt ({message or reason}); see the run's log"
    return f"{reason}: {message}" if message else reason


def pod_stuck_reason(pod: Obj) -> str | None:
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            return f"Unschedulable: {condition.get('message') or 'no node fits'}"
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_WAITING:
            detail = str(waiting.get("message") or "").strip()
            return f"{waiting['reason']}: {detail}" if detail else str(waiting["reason"])
    return None


class _Watch(threading.Thread):
    """Keeps ``objects`` in step with the API server for one kind in one namespace."""

    def __init__(
        self,
        kube: KubeApi,
        kind: str,
        namespace: str,
        changed: Callable[[str, Obj], None],
        stop: threading.Event,
    ) -> None:
        super().__init__(name=f"mlexp-watch-{kind}-{namespace}", daemon=True)
        self.kube, self.kind, self.namespace = kube, kind, namespace
        self.changed, self.stop_event = changed, stop
        self.synced = threading.Event()

    def run(self) -> None:
        version = ""
        while not self.stop_event.is_set():
            try:
                if not version:
                    items, version = self.kube.select(self.kind, self.namespace, RUN_SELECTOR)
                    for item in items:
                        self.changed("ADDED", item)
                    self.synced.set()
                for kind, obj in self.kube.watch(
                    self.kind, self.namespace, RUN_SELECTOR, version, timeout=60
                ):
                    version = str(obj.get("metadata", {}).get("resourceVersion") or version)
                    if kind != "BOOKMARK":
                        self.changed(kind, obj)
                    if self.stop_event.is_set():
                        return
            except Gone:
                version = ""  # too old: list again
            except MlexpError as exc:
                log.warning("watch failed", extra={"kind": self.kind, "error": exc.detail})
                self.stop_event.wait(RETRY_SECONDS)


class JobTracker:
    """Finished-or-not of every run Job, by (namespace, name), fed by watches."""

    def __init__(self, kube: KubeApi, on_stuck: Callable[[str, str], None]) -> None:
        self.kube = kube
        self.on_stuck = on_stuck
        self._jobs: dict[tuple[str, str], Obj] = {}
        self._cond = threading.Lock()
        # One event per awaited Job: a change wakes its own waiters only, not all of them.
        self._events: dict[tuple[str, str], threading.Event] = {}
        self._namespaces: dict[str, list[_Watch]] = {}
        self._stop = threading.Event()
        # Job name -> what to call, once per pod, when one of its pods has started.
        self._pod_started: dict[tuple[str, str], Callable[[str], None]] = {}
        self._started_pods: set[tuple[str, str]] = set()

    def ensure(self, namespace: str) -> None:
        """Start watching ``namespace`` (once) and wait for its first listing."""
        with self._cond:
            watches = self._namespaces.get(namespace)
            if watches is None:
                watches = [
                    _Watch(self.kube, "Job", namespace, self._job_changed, self._stop),
                    _Watch(self.kube, "Pod", namespace, self._pod_changed, self._stop),
                ]
                self._namespaces[namespace] = watches
                for watch in watches:
                    watch.start()
        for watch in watches:
            watch.synced.wait(timeout=30)

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            for event in self._events.values():
                event.set()

    def _job_changed(self, kind: str, job: Obj) -> None:
        meta = job.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        with self._cond:
            if kind == "DELETED":
                # Forget it (so memory stays bounded); its waiters see it gone.
                self._jobs.pop(key, None)
                event = self._events.pop(key, None)
            else:
                self._jobs[key] = job
                event = self._events.get(key)
        if event is not None:
            event.set()

    def _pod_changed(self, kind: str, pod: Obj) -> None:
        if kind == "DELETED":
            return
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        run_id = labels.get(LABEL_RUN)
        reason = pod_stuck_reason(pod)
        if run_id and reason:
            self.on_stuck(str(run_id), reason)
        self._maybe_started(str(meta.get("namespace")), labels.get("job-name"), pod)

    def _maybe_started(self, namespace: str, job: object, pod: Obj) -> None:
        if (pod.get("status") or {}).get("phase") not in ("Running", "Succeeded", "Failed"):
            return
        name = str((pod.get("metadata") or {}).get("name"))
        with self._cond:
            callback = self._pod_started.get((namespace, str(job)))
            if callback is None or (namespace, name) in self._started_pods:
                return
            self._started_pods.add((namespace, name))
        threading.Thread(
            target=callback, args=(name,), daemon=True, name=f"mlexp-log-{name}"
        ).start()

    def on_pod_started(self, namespace: str, job: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(pod_name)`` once for each pod of ``job`` that starts (or has)."""
        self.ensure(namespace)
        with self._cond:
            self._pod_started[(namespace, job)] = callback
        pods, _ = self.kube.select("Pod", namespace, f"job-name={job}")
        for pod in pods:
            self._maybe_started(namespace, job, pod)

    def forget_job(self, namespace: str, job: str) -> None:
        with self._cond:
            self._pod_started.pop((namespace, job), None)

    def current(self, namespace: str, name: str) -> Obj | None:
        with self._cond:
            return self._jobs.get((namespace, name))

    def _event(self, key: tuple[str, str]) -> threading.Event:
        with self._cond:
            return self._events.setdefault(key, threading.Event())

    def wait_finished(self, namespace: str, name: str) -> tuple[str, str]:
        """Block until the Job finishes (or is deleted: ("Deleted", ...))."""
        self.ensure(namespace)
        key = (namespace, name)
        event = self._event(key)
        seen = False
        while not self._stop.is_set():
            event.clear()  # before looking, so a change made meanwhile is not missed
            with self._cond:
                job = self._jobs.get(key)
            if job is None and seen:
                return "Deleted", f"Job {name} was deleted before it finished"
            if job is not None:
                seen = True
                finished = job_finished(job)
                if finished is not None:
                    return finished
            event.wait(timeout=5)
        return "Stopped", "the service stopped following the Job"

    def wait_gone(self, namespace: str, name: str, timeout: float) -> bool:
        self.ensure(namespace)
        key = (namespace, name)
        event = self._event(key)
        deadline = time.monotonic() + timeout
        while True:
            event.clear()
            with self._cond:
                if self._jobs.get(key) is None:
                    return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stop.is_set():
                return False
            event.wait(timeout=remaining)
