"""Status from watches: one watch of run Jobs and one of run Pods per namespace.

Each watch lists once (label-selected), then watches from the list's
resourceVersion, resuming from the last version seen when the server ends the
watch, and listing again only when the version has expired (410 Gone); what a
new listing no longer holds was deleted meanwhile. The watches keep a slim copy
of each run Job and Pod (the fields read here), so however many runs are in
flight, asking after one costs no API call and no thread waits per run: a Job's
end is a callback, made by the watch thread that saw it (callbacks hand real
work to a pool). A pod that cannot make progress (Unschedulable,
ImagePullBackOff, CrashLoopBackOff, …) is reported through ``on_stuck`` with
the reason, so a run says why it is not moving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

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
MAX_TERMINATION_MESSAGE = 1024  # of a container's termination message, kept per pod


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


def slim_job(job: Obj) -> Obj:
    """What the tracker reads of a Job: a fraction of its memory, a thousand times over."""
    meta = job.get("metadata") or {}
    status = job.get("status") or {}
    return {
        "metadata": {
            key: meta[key]
            for key in ("name", "namespace", "uid", "labels", "deletionTimestamp")
            if key in meta
        },
        "status": {
            "conditions": [
                {key: c.get(key) for key in ("type", "status", "reason", "message")}
                for c in status.get("conditions") or []
            ]
        },
    }


def slim_pod(pod: Obj) -> Obj:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    return {
        "metadata": {
            key: meta[key]
            for key in ("name", "namespace", "labels", "deletionTimestamp")
            if key in meta
        },
        "status": {
            "phase": status.get("phase"),
            "conditions": [
                c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"
            ],
            "containerStatuses": [
                {"state": {"waiting": (c.get("state") or {}).get("waiting")}}
                for c in status.get("containerStatuses") or []
                if (c.get("state") or {}).get("waiting")
            ]
            + [
                {"state": {"terminated": _slim_terminated(c["state"]["terminated"])}}
                for c in status.get("containerStatuses") or []
                if isinstance((c.get("state") or {}).get("terminated"), dict)
            ],
        },
    }


def _slim_terminated(terminated: Obj) -> Obj:
    message = terminated.get("message")
    return {
        "exitCode": terminated.get("exitCode"),
        "reason": terminated.get("reason"),
        "message": str(message)[:MAX_TERMINATION_MESSAGE] if message else None,
    }


def failure_detail(pod: Obj) -> str | None:
    """Why a pod's container failed, as its runtime reported it: the termination message
    (the runner's own reason, or its log's tail) and the exit code; None if none failed."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        ended = (status.get("state") or {}).get("terminated") or {}
        code = ended.get("exitCode")
        if not isinstance(code, int) or code == 0:
            continue
        message = " ".join(str(ended.get("message") or "").split())  # one line
        what = f"exit code {code}" + (f", {ended['reason']}" if ended.get("reason") else "")
        return f"{message} ({what})" if message else what
    return None


def _name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name"))


class _Watch(threading.Thread):
    """Keeps the caller in step with the API server for one kind in one namespace."""

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
        self._names: set[str] = set()  # what it has reported and not yet as deleted

    def run(self) -> None:
        version = ""
        while not self.stop_event.is_set():
            try:
                if not version:
                    items, version = self.kube.select(self.kind, self.namespace, RUN_SELECTOR)
                    self._listed(items)
                    self.synced.set()
                for kind, obj in self.kube.watch(
                    self.kind, self.namespace, RUN_SELECTOR, version, timeout=60
                ):
                    version = str(obj.get("metadata", {}).get("resourceVersion") or version)
                    if kind != "BOOKMARK":
                        self._report(kind, obj)
                    if self.stop_event.is_set():
                        return
            except Gone:
                version = ""  # too old: list again
            except MlexpError as exc:
                log.warning("watch failed", extra={"kind": self.kind, "error": exc.detail})
                self.stop_event.wait(RETRY_SECONDS)

    def _listed(self, items: Iterable[Obj]) -> None:
        listed = {_name(item): item for item in items}
        for name in self._names - listed.keys():  # deleted while nobody watched
            self._report("DELETED", {"metadata": {"name": name, "namespace": self.namespace}})
        for item in listed.values():
            self._report("ADDED", item)

    def _report(self, kind: str, obj: Obj) -> None:
        if kind == "DELETED":
            self._names.discard(_name(obj))
        else:
            self._names.add(_name(obj))
        try:
            self.changed(kind, obj)
        except Exception:  # a bug in a callback must not end the watch of every run
            log.exception("handling a watch event failed", extra={"kind": self.kind})


JobEnd = tuple[str, str]
"""("Complete" | "Failed" | "Deleted", reason text)."""


class JobTracker:
    """Every run Job and Pod, by (namespace, name), fed by watches; callbacks on changes."""

    def __init__(self, kube: KubeApi, on_stuck: Callable[[str, str], None]) -> None:
        self.kube = kube
        self.on_stuck = on_stuck
        self._jobs: dict[tuple[str, str], Obj] = {}
        self._pods: dict[tuple[str, str], Obj] = {}
        self._pods_of_job: dict[tuple[str, str], set[str]] = {}
        self._lock = threading.Lock()
        # Per awaited Job: what to call once it has ended, and events of blocking waiters.
        self._on_end: dict[tuple[str, str], Callable[[JobEnd], None]] = {}
        # Deleted Jobs whose pods are still there: their end is called once the last goes.
        self._orphaned: dict[tuple[str, str], tuple[Callable[[JobEnd], None], JobEnd]] = {}
        self._events: dict[tuple[str, str], threading.Event] = {}
        self._namespaces: dict[str, list[_Watch]] = {}
        self._stop = threading.Event()
        # Job -> what to call, once per pod, when one of its pods has started.
        self._pod_started: dict[tuple[str, str], Callable[[str], None]] = {}
        self._started_pods: set[tuple[str, str]] = set()
        self._stuck: dict[tuple[str, str], str] = {}  # Job -> the reason last reported

    def ensure(self, namespace: str) -> None:
        """Start watching ``namespace`` (once) and wait for its first listing."""
        with self._lock:
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

    def synced(self, namespace: str) -> bool:
        with self._lock:
            watches = self._namespaces.get(namespace) or []
        return bool(watches) and all(watch.synced.is_set() for watch in watches)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._on_end.clear()
            self._orphaned.clear()
            for event in self._events.values():
                event.set()

    def _job_changed(self, kind: str, job: Obj) -> None:
        meta = job.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        ended: JobEnd | None
        with self._lock:
            if kind == "DELETED":
                # Forget it (so memory stays bounded); whoever awaits it learns it is gone,
                # once its pods are gone too (deleted in the background, they may outlive it).
                self._jobs.pop(key, None)
                event = self._events.pop(key, None)
                ended = ("Deleted", f"Job {key[1]} was deleted before it finished")
                if not self._pods_stopping(key) and key in self._on_end:
                    self._orphaned[key] = (self._on_end.pop(key), ended)
            else:
                self._jobs[key] = slim_job(job)
                event = self._events.get(key)
                ended = job_finished(job)
            callback = self._on_end.pop(key, None) if ended is not None else None
        if event is not None:
            event.set()
        if callback is not None and ended is not None and not self._stop.is_set():
            callback(ended)

    def _pod_changed(self, kind: str, pod: Obj) -> None:
        meta = pod.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        labels = meta.get("labels") or {}
        job = (key[0], str(labels.get("job-name")))
        if kind == "DELETED":
            with self._lock:
                known = self._pods.pop(key, None)
                if known is not None:  # a deletion found by listing again carries no labels
                    job = (key[0], str((known["metadata"].get("labels") or {}).get("job-name")))
                self._started_pods.discard(key)
                siblings = self._pods_of_job.get(job)
                if siblings is not None:
                    siblings.discard(key[1])
                    if not siblings:
                        del self._pods_of_job[job]
                orphaned = self._orphaned.pop(job, None) if self._pods_stopping(job) else None
            if orphaned is not None and not self._stop.is_set():
                callback, ended = orphaned
                callback(ended)
            return
        slim = slim_pod(pod)
        with self._lock:
            self._pods[key] = slim
            self._pods_of_job.setdefault(job, set()).add(key[1])
            orphaned = self._orphaned.pop(job, None) if self._pods_stopping(job) else None
        if orphaned is not None and not self._stop.is_set():
            callback, ended = orphaned
            callback(ended)
        run_id = labels.get(LABEL_RUN)
        reason = pod_stuck_reason(slim)
        if run_id and reason and self._stuck.get(job) != reason:
            self._stuck[job] = reason
            self.on_stuck(str(run_id), reason)
        self._maybe_started(key[0], labels.get("job-name"), slim)

    def _maybe_started(self, namespace: str, job: object, pod: Obj) -> None:
        if (pod.get("status") or {}).get("phase") not in ("Running", "Succeeded", "Failed"):
            return
        name = _name(pod)
        with self._lock:
            callback = self._pod_started.get((namespace, str(job)))
            if callback is None or (namespace, name) in self._started_pods:
                return
            self._started_pods.add((namespace, name))
        callback(name)

    def _pods_stopping(self, job: tuple[str, str]) -> bool:
        """Every pod of ``job`` is gone or being deleted (its containers are being stopped).

        Called with the lock held."""
        return all(
            self._pods[(job[0], name)]["metadata"].get("deletionTimestamp")
            for name in self._pods_of_job.get(job) or ()
        )

    def on_pod_started(self, namespace: str, job: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(pod_name)`` once for each pod of ``job`` that starts (or has).

        It is called from a watch thread: it must hand any slow work on.
        """
        self.ensure(namespace)
        with self._lock:
            self._pod_started[(namespace, job)] = callback
            names = self._pods_of_job.get((namespace, job)) or set()
            pods = [self._pods[(namespace, name)] for name in names]
        for pod in pods:
            self._maybe_started(namespace, job, pod)

    def on_end(self, namespace: str, name: str, callback: Callable[[JobEnd], None]) -> None:
        """Call ``callback`` once, when the Job finishes or is deleted (or now, if it has).

        From a watch thread, or this one: it must hand any slow work on. A Job that is
        not known yet is awaited (it was just created, and its event is on its way).
        """
        self.ensure(namespace)
        key = (namespace, name)
        with self._lock:
            job = self._jobs.get(key)
            ended = job_finished(job) if job is not None else None
            if ended is None:
                self._on_end[key] = callback
        if ended is not None:
            callback(ended)

    def forget_job(self, namespace: str, job: str) -> None:
        with self._lock:
            self._pod_started.pop((namespace, job), None)
            self._on_end.pop((namespace, job), None)
            self._orphaned.pop((namespace, job), None)
            self._stuck.pop((namespace, job), None)

    def current(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self._jobs.get((namespace, name))

    def failure_of(self, namespace: str, job: str) -> str | None:
        """Why the Job's last failed pod failed (:func:`failure_detail`), if one did."""
        with self._lock:
            pods = [
                self._pods.get((namespace, name))
                for name in self._pods_of_job.get((namespace, job)) or ()
            ]
        for pod in pods:
            detail = failure_detail(pod) if pod is not None else None
            if detail:
                return detail
        return None

    def pods_of(self, namespace: str, job: str) -> list[str]:
        with self._lock:
            return sorted(self._pods_of_job.get((namespace, job)) or ())

    def _event(self, key: tuple[str, str]) -> threading.Event:
        with self._lock:
            return self._events.setdefault(key, threading.Event())

    def wait_gone(self, namespace: str, name: str, timeout: float) -> bool:
        self.ensure(namespace)
        key = (namespace, name)
        event = self._event(key)
        deadline = time.monotonic() + timeout
        while True:
            event.clear()
            with self._lock:
                if self._jobs.get(key) is None:
                    return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stop.is_set():
                return False
            event.wait(timeout=remaining)
