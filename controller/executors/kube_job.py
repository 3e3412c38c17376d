"""``resource: job``: one Kubernetes Job per run, running the runner from a ConfigMap.

Launching is idempotent: the Job's name comes from the run id, so a second
launch (a restart between create and record) finds the first Job and adopts
it. The credentials Secret is applied server-side (one per experiment and
namespace, again only when its content changed or a while has passed); the
Job and ConfigMap reference it and hold no credential. The Job is created
first and the ConfigMap after it, owned by it, so deleting the Job removes
both: two writes per run. A pod never runs without its runner: the kubelet
does not start a container whose ConfigMap volume does not exist yet.

Nothing waits in a thread per run. :class:`JobTracker`'s watches call back when
a Job ends; a small pool then saves what is left of its pods' logs and reports
the end. Pod logs are followed as they are written by at most
``jobs.log_followers`` workers (runs whose log someone follows go first); the
other pods' logs are read once their Job ends, so every log outlives its pod.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from controller import runner
from controller.adapters.kube import KubeApi, Obj
from controller.adapters.liveplots import ReportedPlots, reported_dir
from controller.domain.errors import Conflict, InvalidInput, MlexpError
from controller.domain.k8sconfig import K8sConfig
from controller.domain.liveplots import MarkerFilter
from controller.executors import Handle, Launch, Outcome
from controller.executors.kube_tracking import JobEnd, JobTracker, job_finished
from controller.planning import manifests as m

log = logging.getLogger("mlexp.kube")

CANCEL_TIMEOUT = 120.0
LOG_DRAIN_SECONDS = 10.0
LOG_RETRY_SECONDS = 1.0
LOG_RETRY_MAX_SECONDS = 30.0
LOG_FOLLOW_TRIES = 8
# Workers that save the last of a Job's logs and report its end (reading the run's
# published result happens there too).
ENDING_WORKERS = 4
# A Secret applied this recently with the same content is not applied again: a burst
# of runs of one experiment costs one apply, and a Secret removed by hand comes back
# within this long.
SECRET_REAPPLY_SECONDS = 60.0

JobKey = tuple[str, str]


@dataclass
class _JobLogs:
    """The pods of one followed Job, and for each the worker following its log (or None)."""

    path: Path
    pods: dict[str, Future[None] | None] = field(default_factory=dict)
    ended: bool = False


class JobExecutor:
    def __init__(self, kube: KubeApi, config: K8sConfig, tracker: JobTracker) -> None:
        self.kube = kube
        self.config = config
        self.tracker = tracker
        self.runner_source = Path(runner.__file__).read_text()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._logs: dict[JobKey, _JobLogs] = {}
        self._pending: deque[tuple[JobKey, str]] = deque()  # pods waiting for a follower
        self._following = 0
        self._max_following = config.jobs.log_followers
        self._followers = ThreadPoolExecutor(self._max_following, thread_name_prefix="mlexp-log")
        self._ending = ThreadPoolExecutor(ENDING_WORKERS, thread_name_prefix="mlexp-job-end")
        self._applied: dict[tuple[str, str], tuple[str, float]] = {}

    def image_for(self, request: Launch) -> str:
        registry = request.repo.registry
        image = (registry.image if registry else None) or self.config.defaults.image
        if not image:
            raise InvalidInput(
                "no image for the run: set registry.image in repo_json or defaults.image in "
                "k8s-config.yaml"
            )
        return image

    def launch(self, request: Launch) -> Handle:
        run = request.run
        namespace = str(run.namespace)
        experiment_id = run.experiment_id
        self.tracker.ensure(namespace)
        self._apply_secret(
            m.credentials_secret(experiment_id=experiment_id, namespace=namespace, env=request.env)
        )
        pull_secret = self._apply_pull_secret(request, namespace)
        job_name = m.run_job_name(run.run_id)
        job = m.run_job(
            run_id=run.run_id,
            experiment_id=experiment_id,
            namespace=namespace,
            image=self.image_for(request),
            image_pull_policy=self.config.defaults.image_pull_policy,
            secret_name=m.credentials_secret_name(experiment_id),
            pull_secret_name=pull_secret,
            configmap_name=m.run_configmap_name(run.run_id),
            resources=self.config.defaults.resources,
            service_account=self.config.defaults.service_account,
            backoff_limit=self.config.jobs.backoff_limit,
            active_deadline_seconds=run.deadline_seconds
            or self.config.jobs.active_deadline_seconds,
            ttl_seconds_after_finished=self.config.jobs.ttl_seconds_after_finished,
            node_selector=self.config.defaults.node_selector,
            tolerations=self.config.defaults.tolerations,
            pod_labels=self.config.jobs.pod_labels,
            host_network=self.config.defaults.host_network,
        )

        def configmap(owners: tuple[Obj, ...] = ()) -> Obj:
            return m.runner_configmap(
                run_id=run.run_id,
                experiment_id=experiment_id,
                namespace=namespace,
                runner_source=self.runner_source,
                spec=request.spec,
                files=request.files,
                owner_references=owners,
            )

        configmap()  # a spec too large for a ConfigMap is refused before anything is created
        try:
            created = self.kube.create(job)
        except Conflict:
            # Launched before (the service restarted in between): adopt, never duplicate.
            existing = self.kube.get("Job", namespace, job_name)
            if existing is None:
                raise
            created = existing
        uid = str(created["metadata"]["uid"])
        # The Job's pods wait for this volume; owned by the Job, it goes when the Job goes.
        owner = m.owner_reference(api_version="batch/v1", kind="Job", name=job_name, uid=uid)
        with contextlib.suppress(Conflict):  # an earlier launch made it; immutable, so the same
            self.kube.create(configmap((owner,)))
        handle: Handle = {
            "kind": "job",
            "namespace": namespace,
            "job": job_name,
            "uid": uid,
            "log": str(request.log_path),
        }
        log.info(
            "job created", extra={"run_id": run.run_id, "job": job_name, "namespace": namespace}
        )
        return handle

    def _apply_secret(self, secret: Obj) -> None:
        meta = secret["metadata"]
        key = (str(meta["namespace"]), str(meta["name"]))
        digest = hashlib.sha256(json.dumps(secret, sort_keys=True).encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            applied = self._applied.get(key)
        if (
            applied is not None
            and applied[0] == digest
            and now - applied[1] < SECRET_REAPPLY_SECONDS
        ):
            return
        self.kube.apply(secret)
        with self._lock:
            self._applied[key] = (digest, now)

    def _apply_pull_secret(self, request: Launch, namespace: str) -> str | None:
        registry = request.repo.registry
        if registry is None or registry.password is None or not registry.server:
            return None
        secret = m.registry_pull_secret(
            experiment_id=request.run.experiment_id,
            namespace=namespace,
            server=registry.server,
            username=registry.username or "",
            password=registry.password.get_secret_value(),
        )
        self._apply_secret(secret)
        return m.pull_secret_name(request.run.experiment_id)

    # -- following ---------------------------------------------------------

    def follow(self, handle: Handle, done: Callable[[Outcome], None]) -> None:
        """Call ``done`` once, from a worker, when the Job has ended and its logs are saved."""
        key = (str(handle["namespace"]), str(handle["job"]))
        with self._lock:
            self._logs[key] = _JobLogs(Path(str(handle["log"])))
        self.tracker.on_pod_started(*key, lambda pod: self._pod_started(key, pod))
        self.tracker.on_end(
            *key, lambda end: self._submit(self._ending, self._ended, key, end, done)
        )

    def wait(self, handle: Handle) -> Outcome:
        """Block until the Job ends (for callers that want to; the service uses ``follow``)."""
        ended = threading.Event()
        outcomes: list[Outcome] = []

        def done(outcome: Outcome) -> None:
            outcomes.append(outcome)
            ended.set()

        self.follow(handle, done)
        while not ended.wait(1.0):
            if self._closed.is_set():
                return Outcome("failed", reason="the service stopped following the Job")
        return outcomes[0]

    def _submit(self, pool: ThreadPoolExecutor, fn: Callable[..., None], *args: object) -> None:
        if not self._closed.is_set():
            with contextlib.suppress(RuntimeError):  # the pool is shut down: we are stopping
                pool.submit(_logged(fn), *args)

    def want_log(self, handle: Handle) -> None:
        """Someone follows this run's log: its pods are next in line for a follower."""
        key = (str(handle["namespace"]), str(handle["job"]))
        with self._lock:
            waiting = [item for item in self._pending if item[0] == key]
            for item in waiting:
                self._pending.remove(item)
            self._pending.extendleft(reversed(waiting))

    def _pod_started(self, key: JobKey, pod: str) -> None:
        with self._lock:
            logs = self._logs.get(key)
            if logs is None or logs.ended or pod in logs.pods:
                return
            logs.pods[pod] = None
            if self._following >= self._max_following:
                self._pending.append((key, pod))  # read once at the end, unless a slot frees
                return
            self._following += 1
            logs.pods[pod] = self._followers.submit(self._follow_slot, key, pod, logs.path)

    def _follow_slot(self, key: JobKey, pod: str, path: Path) -> None:
        try:
            self._follow_log(key[0], key[1], pod, path)
        except Exception:
            log.exception("following a pod log failed", extra={"pod": pod})
        finally:
            with self._lock:
                self._following -= 1
                while self._pending and not self._closed.is_set():
                    next_key, next_pod = self._pending.popleft()
                    logs = self._logs.get(next_key)
                    if logs is None or logs.ended or logs.pods.get(next_pod) is not None:
                        continue
                    self._following += 1
                    logs.pods[next_pod] = self._followers.submit(
                        self._follow_slot, next_key, next_pod, logs.path
                    )
                    break

    def _ended(self, key: JobKey, end: JobEnd, done: Callable[[Outcome], None]) -> None:
        namespace, name = key
        with self._lock:
            logs = self._logs.get(key)
            if logs is not None:
                logs.ended = True
            if any(item[0] == key for item in self._pending):  # no longer waiting for a slot
                self._pending = deque(item for item in self._pending if item[0] != key)
        self.tracker.forget_job(namespace, name)
        # What the pod's runtime says of the failure: the runner's reason and its exit code.
        failure = self.tracker.failure_of(namespace, name) if end[0] == "Failed" else None
        if logs is not None:
            for pod in self.tracker.pods_of(namespace, name):
                logs.pods.setdefault(pod, None)
            unfollowed: list[str] = []
            deleted = end[0] == "Deleted"  # (cancelled): its pods are stopping or gone
            for pod, follower in logs.pods.items():
                if follower is not None and not deleted:
                    wait_for([follower], timeout=LOG_DRAIN_SECONDS)  # ends with the container
                elif follower is None and not deleted:
                    unfollowed.append(pod)
            if unfollowed:
                with logs.path.open("ab") as out:
                    for pod in unfollowed:
                        self._read_log_once(namespace, pod, out)
            with self._lock:
                self._logs.pop(key, None)
        result, reason = end
        if failure:
            reason = f"{failure}; {reason}"
        done(Outcome("succeeded") if result == "Complete" else Outcome("failed", reason=reason))

    # -- questions and stopping --------------------------------------------

    def _job(self, handle: Handle) -> Obj | None:
        """The Job as the watch has it (no API call), or from the API server if not there."""
        namespace, name = str(handle["namespace"]), str(handle["job"])
        self.tracker.ensure(namespace)
        job = self.tracker.current(namespace, name)
        return job if job is not None else self.kube.get("Job", namespace, name)

    def is_active(self, handle: Handle) -> bool:
        job = self._job(handle)
        return job is not None and job_finished(job) is None

    def outcome(self, handle: Handle) -> Outcome:
        job = self._job(handle)
        if job is None:
            return Outcome("failed", reason=f"Job {handle['job']} no longer exists")
        finished = job_finished(job)
        if finished is None:
            return Outcome("failed", reason="the Job has not finished")
        if finished[0] == "Complete":
            return Outcome("succeeded")
        return Outcome("failed", reason=finished[1])

    def stop(self, handle: Handle) -> bool:
        """Delete the Job and return: the end comes through ``follow`` once it and its
        pods are gone.

        False if there was nothing left to delete (then no end will come).
        """
        namespace, name = str(handle["namespace"]), str(handle["job"])
        # The Job goes at once (in the background), and its pods are deleted with it here
        # rather than by the garbage collector, whose pace is the controller manager's:
        # the end comes once the Job is gone and each of its pods is gone or stopping
        # (JobTracker), without the round trips of a foreground deletion.
        if self.kube.delete("Job", namespace, name, foreground=False):
            for pod in self.tracker.pods_of(namespace, name):  # by name: no listing
                self.kube.delete("Pod", namespace, pod, foreground=False)
            return True
        self.tracker.forget_job(namespace, name)
        return False

    def cancel(self, handle: Handle) -> bool:
        namespace, name = str(handle["namespace"]), str(handle["job"])
        self.kube.delete("Job", namespace, name, foreground=True)
        deadline = time.monotonic() + CANCEL_TIMEOUT
        if not self.tracker.wait_gone(namespace, name, CANCEL_TIMEOUT):
            return False
        # The watch may not have delivered the Job yet: the API server has the last word.
        while self.kube.get("Job", namespace, name) is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True

    def close(self) -> None:
        self._closed.set()
        self.tracker.stop()
        self._followers.shutdown(wait=False, cancel_futures=True)
        self._ending.shutdown(wait=False, cancel_futures=True)

    def cleanup(self, handle: Handle) -> None:
        """Nothing: ttlSecondsAfterFinished removes the Job (and, through it, the ConfigMap)."""

    def _follow_log(self, namespace: str, job: str, pod: str, log_path: Path) -> None:
        """Append the pod's log to the run's log in the data dir as it is written.

        A log can be unavailable for a moment after the pod starts (the container is
        being created): retry with a growing pause, a bounded number of times, while
        the Job runs; if it never comes, the log is read once when the Job has ended.
        """
        pause = LOG_RETRY_SECONDS
        # The runner's plot reports (marker lines) go to the run's live plots, not its log.
        plots = ReportedPlots(reported_dir(log_path))
        with log_path.open("ab") as out:
            for _ in range(LOG_FOLLOW_TRIES):
                received = False
                markers = MarkerFilter()
                try:
                    for chunk in self.kube.follow_pod_log(namespace, pod):
                        if not received:
                            out.write(f"[mlexp] log of pod {pod}:\n".encode())
                            received = True
                        kept, reported = markers.feed(chunk)
                        plots.apply(reported)
                        out.write(kept)
                        out.flush()
                    if received:
                        out.write(markers.flush())
                        return
                except MlexpError as exc:
                    if received:
                        out.write(markers.flush())
                        log.warning("pod log interrupted", extra={"pod": pod, "error": exc.detail})
                        return
                job_obj = self.tracker.current(namespace, job)
                if job_obj is None or job_finished(job_obj) is not None:
                    break
                if self._closed.wait(pause):
                    return
                pause = min(pause * 2, LOG_RETRY_MAX_SECONDS)
            self._read_log_once(namespace, pod, out)

    def _read_log_once(self, namespace: str, pod: str, out: BinaryIO) -> None:
        try:
            text = self.kube.pod_log(namespace, pod)
        except MlexpError as exc:
            log.warning("pod log not read", extra={"pod": pod, "error": exc.detail})
            return
        if text:
            markers = MarkerFilter()  # the plots it reports are recorded from its commit
            kept = markers.feed(text.encode())[0] + markers.flush()
            out.write(f"[mlexp] log of pod {pod}:\n".encode() + kept)
            if not kept.endswith(b"\n"):
                out.write(b"\n")


def _logged(fn: Callable[..., None]) -> Callable[..., None]:
    """A pool task whose failure is logged (a pool would keep it in a Future nobody reads)."""

    def task(*args: object) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("a Job's end was not handled", extra={"task": fn.__name__})

    return task
