"""``resource: job``: one Kubernetes Job per run, running the runner from a ConfigMap.

Launching is idempotent: the Job's name comes from the run id, so a second
launch (a restart between create and record) finds the first Job and adopts
it. The credentials Secret is applied server-side (one per experiment and
namespace); the Job and ConfigMap reference it and hold no credential. The
ConfigMap is owned by the Job, so deleting the Job removes it. Status comes
from :class:`JobTracker`'s watches; each pod's log is followed into the run's
log in the data dir as it is written, so it can be streamed and outlives the pod.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import BinaryIO

from controller import runner
from controller.adapters.kube import KubeApi
from controller.domain.errors import Conflict, InvalidInput, MlexpError
from controller.domain.k8sconfig import K8sConfig
from controller.executors import Handle, Launch, Outcome
from controller.executors.kube_tracking import JobTracker, job_finished
from controller.planning import manifests as m

log = logging.getLogger("mlexp.kube")

CANCEL_TIMEOUT = 120.0
LOG_DRAIN_SECONDS = 10.0
LOG_RETRY_SECONDS = 1.0
LOG_RETRY_MAX_SECONDS = 30.0
LOG_FOLLOW_TRIES = 8


class JobExecutor:
    def __init__(self, kube: KubeApi, config: K8sConfig, tracker: JobTracker) -> None:
        self.kube = kube
        self.config = config
        self.tracker = tracker
        self.runner_source = Path(runner.__file__).read_text()

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
        secret = m.credentials_secret(
            experiment_id=experiment_id, namespace=namespace, env=request.env
        )
        self.kube.apply(secret)
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
            node_selector={},
            tolerations=(),
            pod_labels=self.config.jobs.pod_labels,
        )
        # The ConfigMap first, so the pod never starts without its runner; then the Job;
        # then the Job becomes the ConfigMap's owner, so deleting it removes both.
        configmap = m.runner_configmap(
            run_id=run.run_id,
            experiment_id=experiment_id,
            namespace=namespace,
            runner_source=self.runner_source,
            spec=request.spec,
        )
        with contextlib.suppress(Conflict):  # an earlier launch made it; immutable, so the same
            self.kube.create(configmap)
        try:
            created = self.kube.create(job)
        except Conflict:
            # Launched before (the service restarted in between): adopt, never duplicate.
            existing = self.kube.get("Job", namespace, job_name)
            if existing is None:
                raise
            created = existing
        uid = str(created["metadata"]["uid"])
        self.kube.set_owner(
            "ConfigMap",
            namespace,
            m.run_configmap_name(run.run_id),
            m.owner_reference(api_version="batch/v1", kind="Job", name=job_name, uid=uid),
        )
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
        self.kube.apply(secret)
        return m.pull_secret_name(request.run.experiment_id)

    def wait(self, handle: Handle) -> Outcome:
        namespace, name = str(handle["namespace"]), str(handle["job"])
        followers: list[threading.Thread] = []

        def follow(pod: str) -> None:
            followers.append(threading.current_thread())
            self._follow_log(namespace, name, pod, Path(str(handle["log"])))

        self.tracker.on_pod_started(namespace, name, follow)
        result, reason = self.tracker.wait_finished(namespace, name)
        self.tracker.forget_job(namespace, name)
        for thread in list(followers):
            thread.join(timeout=LOG_DRAIN_SECONDS)  # the stream ends with the container
        if result == "Complete":
            return Outcome("succeeded")  # the result is read from what was published
        return Outcome("failed", reason=reason)

    def is_active(self, handle: Handle) -> bool:
        job = self.kube.get("Job", str(handle["namespace"]), str(handle["job"]))
        return job is not None and job_finished(job) is None

    def outcome(self, handle: Handle) -> Outcome:
        job = self.kube.get("Job", str(handle["namespace"]), str(handle["job"]))
        if job is None:
            return Outcome("failed", reason=f"Job {handle['job']} no longer exists")
        finished = job_finished(job)
        if finished is None:
            return Outcome("failed", reason="the Job has not finished")
        if finished[0] == "Complete":
            return Outcome("succeeded")
        return Outcome("failed", reason=finished[1])

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
        self.tracker.stop()

    def cleanup(self, handle: Handle) -> None:
        """Nothing: ttlSecondsAfterFinished removes the Job (and, through it, the ConfigMap)."""

    def _follow_log(self, namespace: str, job: str, pod: str, log_path: Path) -> None:
        """Append the pod's log to the run's log in the data dir as it is written.

        A log can be unavailable for a moment after the pod starts (the container is
        being created): retry with a growing pause, a bounded number of times, while
        the Job runs; if it never comes, the log is read once when the Job has ended.
        """
        pause = LOG_RETRY_SECONDS
        with log_path.open("ab") as out:
            for _ in range(LOG_FOLLOW_TRIES):
                received = False
                try:
                    for chunk in self.kube.follow_pod_log(namespace, pod):
                        if not received:
                            out.write(f"[mlexp] log of pod {pod}:\n".encode())
                            received = True
                        out.write(chunk)
                        out.flush()
                    if received:
                        return
                except MlexpError as exc:
                    if received:
                        log.warning("pod log interrupted", extra={"pod": pod, "error": exc.detail})
                        return
                job_obj = self.tracker.current(namespace, job)
                if job_obj is None or job_finished(job_obj) is not None:
                    break
                time.sleep(pause)
                pause = min(pause * 2, LOG_RETRY_MAX_SECONDS)
            self._read_log_once(namespace, pod, out)

    def _read_log_once(self, namespace: str, pod: str, out: BinaryIO) -> None:
        try:
            text = self.kube.pod_log(namespace, pod)
        except MlexpError as exc:
            log.warning("pod log not read", extra={"pod": pod, "error": exc.detail})
            return
        if text:
            out.write(f"[mlexp] log of pod {pod}:\n{text}".encode())
            if not text.endswith("\n"):
                out.write(b"\n")
