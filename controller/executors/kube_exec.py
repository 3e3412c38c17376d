"""``resource: sts/<name>`` or ``deploy/<name>``: the runner, detached, inside a ready pod.

Short ``exec`` calls do everything: copy ``runner.py`` and the spec into the run's
own work dir in the pod, start the runner with ``--detach`` (credentials go in on
stdin, so they are in no command line, file or pod spec), then poll its
``status.json`` and copy new lines of its log. The runner outlives the exec
session and the control plane: after a restart the handle (pod, work dir, pid,
process group) finds it again.

Which pod a run gets is the run service's decision (one run per pod unless the
workload is ``shared``; see :mod:`controller.services.placement`); this module
lists the ready pods and starts the runner in the one it is given. The runner
detaches with ``setsid``, so each run is a process group of its own: cancel and
clean-up signal that group and nothing else, which matters when runs share a pod.
"""

from __future__ import annotations

import base64
import binascii
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
LOG_COPY_BYTES = 1024 * 1024  # of the pod's runner.log per exec call
LOG_CAP_SLACK = 4096  # the runner's marker line, beyond its log_max_bytes


def _pgid_of(pid: str) -> str:
    """Shell: the process group of ``pid`` (field 5 of /proc/<pid>/stat; comm may hold ") ")."""
    return f"sed 's/^.*) //' /proc/{pid}/stat 2>/dev/null | cut -d' ' -f3"


# A line of /proc/<pid>/stat of a process that has not ended (state not Z or X), in
# process group {group}. Anchored on the numeric fields after the last ") ", so a command
# name (comm) crafted to look like those fields cannot fake it.
_LIVE_IN_GROUP = r") [^ZX] [0-9-]+ {group} ([0-9-]+ ?)*$"
_LIVE = r") [^ZX] ([0-9-]+ ?)*$"


def _group(value: object) -> int | None:
    """A process group worth signalling: never 0 or 1 (ours, or everything)."""
    try:
        group = int(str(value))
    except ValueError:
        return None
    return group if group > 1 else None


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

    def ready_pods(self, namespace: str, kind: str, name: str) -> list[str]:
        """The workload's ready pods, by name."""
        selector = m.label_selector(m.workload_selector(kind, name))
        pods, _ = self.kube.select("Pod", namespace, selector)
        return sorted(str(p["metadata"]["name"]) for p in pods if pod_ready(p))

    def pick_pod(self, namespace: str, kind: str, name: str) -> str:
        ready = self.ready_pods(namespace, kind, name)
        if not ready:
            raise Conflict(f"{kind}/{name} in {namespace} has no ready pod to run in")
        return ready[0]

    def _exec(self, handle: Handle, script: str, stdin: bytes | None = None) -> ExecResult:
        return self.kube.exec(
            str(handle["namespace"]), str(handle["pod"]), ["sh", "-c", script], stdin=stdin
        )

    def launch(self, request: Launch) -> Handle:
        """Start the runner in the workload's first ready pod (the run service picks its own)."""
        kind, _, name = request.run.resource.partition("/")
        return self.launch_in(request, self.pick_pod(str(request.run.namespace), kind, name))

    def launch_in(self, request: Launch, pod: str) -> Handle:
        """Start the runner, detached, in ``pod``; the handle names the pod and process group."""
        run = request.run
        namespace = str(run.namespace)
        workdir = f"{self.work_root}/{run.run_id}"
        handle: Handle = {
            "kind": "exec",
            "namespace": namespace,
            "pod": pod,
            "workdir": workdir,
            "log": str(request.log_path),
        }
        cap = request.spec.get("log_max_bytes")
        if isinstance(cap, int):
            handle["log_max_bytes"] = cap
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
            f' && pid=$(cat {runner.PID_FILE}) && echo "$pid $({_pgid_of("$pid")})"',
            json.dumps(dict(request.env)).encode() + b"\n",
        )
        self._check(started, "start the runner")
        pid, _, pgid = started.stdout.strip().splitlines()[-1].partition(" ")
        handle["pid"] = int(pid)
        # Read now, while the runner surely lives: a runner that is already gone has no
        # group left to signal, and then there is nothing to stop either.
        group = _group(pgid.strip())
        if group is not None:
            handle["pgid"] = group
        log.info(
            "runner started in pod",
            extra={"run_id": run.run_id, "pod": pod, "pid": pid, "pgid": group},
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
        """Append what is new in the pod's runner.log to the run's log, a slice per exec.

        Slices are bounded (memory stays flat) and travel as base64, so the byte count
        is exact: the exec channel decodes text, which would drift on bytes that are
        not UTF-8 or on a character cut between two frames. The runner keeps its log
        under the cap; the run's code can write to runner.log too, so no more than the
        cap is copied whatever it does.
        """
        # How much of the pod's runner.log is already in ours, kept beside it so that a
        # restarted service resumes where it was instead of copying it twice.
        mark = Path(f"{handle['log']}.offset")
        offset = int(mark.read_text() or 0) if mark.is_file() else 0
        workdir = shlex.quote(str(handle["workdir"]))
        cap = handle.get("log_max_bytes")
        limit = int(str(cap)) + LOG_CAP_SLACK if cap is not None else None
        while limit is None or offset < limit:
            wanted = LOG_COPY_BYTES if limit is None else min(LOG_COPY_BYTES, limit - offset)
            result = self._exec(
                handle,
                f"tail -c +{offset + 1} {workdir}/{runner.LOG_FILE} 2>/dev/null"
                f" | head -c {wanted} | base64 || true",
            )
            try:
                data = base64.b64decode(result.stdout)
            except (binascii.Error, ValueError):
                log.warning("pod log slice unreadable", extra={"pod": handle["pod"]})
                return
            if not data:
                return
            with Path(str(handle["log"])).open("ab") as out:
                out.write(data)
            offset += len(data)
            mark.write_text(str(offset))
            if len(data) < wanted:
                return

    def is_active(self, handle: Handle) -> bool:
        """Whether anything of the run lives: a process of its group (older handles: its runner).

        Zombies do not count: in a pod whose first process is ``sleep infinity``
        nobody reaps the runner's orphans, and ``kill -0`` would call them alive.
        """
        group = _group(handle.get("pgid"))
        if group is not None:
            live = shlex.quote(_LIVE_IN_GROUP.format(group=group))
            script = f"cat /proc/[0-9]*/stat 2>/dev/null | grep -Eq {live}"
        else:
            pid = int(str(handle["pid"]))
            script = f"grep -Eq {shlex.quote(_LIVE)} /proc/{pid}/stat 2>/dev/null"
        try:
            result = self._exec(handle, script)
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

    def _group_of(self, handle: Handle) -> int | None:
        """The run's process group: from the handle, or (older handles) from the live runner."""
        group = _group(handle.get("pgid"))
        if group is None:
            pid = int(str(handle["pid"]))
            group = _group(self._exec(handle, _pgid_of(str(pid))).stdout.strip())
            if group is not None:
                handle["pgid"] = group
        return group

    def cancel(self, handle: Handle) -> bool:
        """SIGTERM to the run's process group, SIGKILL after a grace period; nothing else.

        Other runs in the pod are other groups (each runner detached with setsid), so
        they are untouched. True once no process of the group is left.
        """
        group = self._group_of(handle)
        if group is None:  # the runner is gone and left no group behind
            return not self.is_active(handle)
        self._exec(handle, f"kill -s TERM -- -{group} 2>/dev/null || true")
        deadline = time.monotonic() + CANCEL_GRACE
        while time.monotonic() < deadline:
            if not self.is_active(handle):
                return True
            time.sleep(0.2)
        self._exec(handle, f"kill -s KILL -- -{group} 2>/dev/null || true")
        time.sleep(0.2)
        return not self.is_active(handle)

    def cleanup(self, handle: Handle) -> None:
        """End whatever the run left running in its group, then remove its work dir.

        Before the pod takes another run: a stage's background process must not
        outlive its run and watch the next one.
        """
        workdir = shlex.quote(str(handle["workdir"]))
        group = _group(handle.get("pgid"))
        kill = f"kill -s KILL -- -{group} 2>/dev/null; " if group is not None else ""
        try:
            self._exec(handle, f"{kill}rm -rf {workdir}")
        except MlexpError as exc:
            log.warning("work dir not removed", extra={"pod": handle["pod"], "error": exc.detail})
