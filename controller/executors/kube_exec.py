"""``resource: sts/<name>`` or ``deploy/<name>``: the runner, detached, inside a ready pod.

Short ``exec`` calls do everything: copy ``runner.py`` and the spec into the run's
own work dir in the pod, start the runner with ``--detach`` (credentials go in on
stdin, so they are in no command line, file or pod spec), then poll its
``status.json`` and copy new lines of its log. Several runs share a pod, each
in its own work dir. The runner outlives the exec session and the control
plane: after a restart the handle (pod, work dir, pid) finds it again.
"""

from __future__ import annotations

import json
import logging
import shlex
import threading
import time
from pathlib import Path

from controller import runner
from controller.adapters.kube import ExecResult, KubeApi, Obj
from controller.domain.errors import Conflict, ExternalError, MlexpError
from controller.executors import Handle, Launch, Outcome
from controller.planning import manifests as m

log = logging.getLogger("mlexp.kube")

POLL_SECONDS = 1.0
CANCEL_GRACE = 5.0


def pod_ready(pod: Obj) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


class ExecExecutor:
    def __init__(
        self, kube: KubeApi, *, work_root: str, poll_seconds: float = POLL_SECONDS
    ) -> None:
        self.kube = kube
        self.work_root = work_root.rstrip("/")
        self.poll_seconds = poll_seconds
        self.runner_source = Path(runner.__file__).read_bytes()
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()

    def pick_pod(self, namespace: str, kind: str, name: str) -> str:
        selector = m.label_selector(m.workload_selector(kind, name))
        pods, _ = self.kube.select("Pod", namespace, selector)
        ready = sorted(str(p["metadata"]["name"]) for p in pods if pod_ready(p))
        if not ready:
            raise Conflict(f"{kind}/{name} in {namespace} has no ready pod to run in")
        return ready[0]

    def _exec(self, handle: Handle, script: str, stdin: bytes | None = None) -> ExecResult:
        return self.kube.exec(
            str(handle["namespace"]), str(handle["pod"]), ["sh", "-c", script], stdin=stdin
        )

    def launch(self, request: Launch) -> Handle:
        run = request.run
        kind, _, name = run.resource.partition("/")
        namespace = str(run.namespace)
        pod = self.pick_pod(namespace, kind, name)
        workdir = f"{self.work_root}/{run.run_id}"
        handle: Handle = {
            "kind": "exec",
            "namespace": namespace,
            "pod": pod,
            "workdir": workdir,
            "log": str(request.log_path),
        }
        quoted = shlex.quote(workdir)
        # Byte counts instead of end-of-input: not every exec server passes stdin's close on.
        source = self.runner_source
        copy = f"mkdir -p {quoted} && head -c {len(source)} > {quoted}/runner.py"
        self._check(self._exec(handle, copy, source), "copy the runner")
        spec = json.dumps(dict(request.spec)).encode()
        copy = f"head -c {len(spec)} > {quoted}/spec.json"
        self._check(self._exec(handle, copy, spec), "copy the spec")
        started = self._exec(
            handle,
            f"cd {quoted} && python3 runner.py --spec spec.json --workdir . --detach --env-stdin"
            " && cat runner.pid",
            json.dumps(dict(request.env)).encode() + b"\n",
        )
        self._check(started, "start the runner")
        handle["pid"] = int(started.stdout.strip().splitlines()[-1])
        log.info(
            "runner started in pod", extra={"run_id": run.run_id, "pod": pod, "pid": handle["pid"]}
        )
        return handle

    def _check(self, result: ExecResult, what: str) -> None:
        if result.exit_code != 0:
            detail = (result.stderr or result.stdout).strip()[-300:]
            raise ExternalError(f"could not {what} in the pod (exit {result.exit_code}): {detail}")

    def _status(self, handle: Handle) -> dict[str, object] | None:
        workdir = shlex.quote(str(handle["workdir"]))
        result = self._exec(handle, f"cat {workdir}/{runner.STATUS_FILE} 2>/dev/null || true")
        try:
            status = json.loads(result.stdout)
        except ValueError:
            return None
        return status if isinstance(status, dict) else None

    def _copy_log(self, handle: Handle) -> None:
        # How much of the pod's runner.log is already in ours, kept beside it so that a
        # restarted service resumes where it was instead of copying it twice.
        mark = Path(f"{handle['log']}.offset")
        offset = int(mark.read_text() or 0) if mark.is_file() else 0
        workdir = shlex.quote(str(handle["workdir"]))
        result = self._exec(
            handle, f"tail -c +{offset + 1} {workdir}/{runner.LOG_FILE} 2>/dev/null || true"
        )
        if result.stdout:
            with Path(str(handle["log"])).open("a") as out:
                out.write(result.stdout)
            mark.write_text(str(offset + len(result.stdout.encode())))

    def is_active(self, handle: Handle) -> bool:
        try:
            result = self._exec(handle, f"kill -0 {int(str(handle['pid']))}")
        except MlexpError:
            return False
        return result.exit_code == 0

    def wait(self, handle: Handle) -> Outcome:
        while not self._closed.is_set():
            self._copy_log(handle)
            status = self._status(handle)
            if status is not None and status.get("state") in ("succeeded", "failed"):
                self._copy_log(handle)
                return self._outcome(status)
            if not self.is_active(handle):
                self._copy_log(handle)
                return self._outcome(self._status(handle))
            self._closed.wait(self.poll_seconds)
        return Outcome("failed", reason="the service stopped following the run")

    def outcome(self, handle: Handle) -> Outcome:
        return self._outcome(self._status(handle))

    def _outcome(self, status: dict[str, object] | None) -> Outcome:
        if status is None:
            return Outcome("failed", reason="the runner ended without reporting a status")
        if status.get("state") == "succeeded":
            return Outcome("succeeded")  # the result is read from what was published
        if status.get("state") == "failed":
            return Outcome("failed", reason=str(status.get("error") or "the runner failed"))
        return Outcome("failed", reason=f"the runner stopped during {status.get('step')}")

    def cancel(self, handle: Handle) -> bool:
        pid = int(str(handle["pid"]))
        self._exec(handle, f"kill -TERM -{pid} 2>/dev/null || kill -TERM {pid} 2>/dev/null || true")
        deadline = time.monotonic() + CANCEL_GRACE
        while time.monotonic() < deadline:
            if not self.is_active(handle):
                return True
            time.sleep(0.2)
        self._exec(handle, f"kill -KILL -{pid} 2>/dev/null || kill -KILL {pid} 2>/dev/null || true")
        time.sleep(0.2)
        return not self.is_active(handle)

    def cleanup(self, handle: Handle) -> None:
        workdir = shlex.quote(str(handle["workdir"]))
        try:
            self._exec(handle, f"rm -rf {workdir}")
        except MlexpError as exc:
            log.warning("work dir not removed", extra={"pod": handle["pod"], "error": exc.detail})
