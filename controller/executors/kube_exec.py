"""``resource: sts/<name>`` or ``deploy/<name>``: the runner, detached, inside a ready pod.

One ``exec`` session launches a run: it writes ``runner.py`` and the spec into the
run's own work dir in the pod (both on stdin, with their byte counts), starts the
runner with ``--detach`` (credentials follow on the same stdin, so they are in no
command line, file or pod spec), and goes on as ``runner.py --follow``: the session
stays open for the whole run and carries, as lines of text, the runner's pid and
process group, its log, its status changes, and its end (see :func:`runner.follow`).
So a run costs a couple of API calls, not a few every ``poll_seconds``, and its end
is seen within a fraction of a second.

If that stream breaks (a dropped connection, a restart of the service, silence past
:data:`STREAM_STALL_SECONDS`), :meth:`ExecExecutor.wait` polls once with short execs
(copy the new part of the log, read ``status.json``, look for a live process of the
run's group), then opens a new stream from where the log copy stands; while streams
keep failing it polls every ``poll_seconds``. The runner outlives the exec session and
the control plane: after a restart the handle (pod, work dir, pid, process group)
finds it again, and the copied log's ``.offset`` mark says where to resume.

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
from collections.abc import Generator, Iterator
from pathlib import Path

from controller import runner
from controller.adapters.kube import ExecResult, KubeApi, Obj
from controller.adapters.liveplots import ReportedPlots, reported_dir
from controller.domain.errors import Conflict, ExternalError, MlexpError
from controller.domain.liveplots import MarkerFilter
from controller.executors import Handle, Launch, Outcome
from controller.planning import manifests as m

log = logging.getLogger("mlexp.kube")

POLL_SECONDS = 1.0
CANCEL_GRACE = 5.0
LOG_COPY_BYTES = 1024 * 1024  # of the pod's runner.log per exec call (polling)
LOG_CAP_SLACK = 4096  # the runner's marker line, beyond its log_max_bytes
LAUNCH_SECONDS = 60.0  # for the launch session to name the runner
# The follower writes a line at least every FOLLOW_HEARTBEAT_SECONDS: this much silence
# means the session is dead without having said so.
STREAM_STALL_SECONDS = 3 * runner.FOLLOW_HEARTBEAT_SECONDS
STREAM_RETRY_MAX_SECONDS = 300.0  # between attempts at a stream, while they keep failing
MAX_LINE = 256 * 1024  # a follower's line (its log lines carry 64 KiB of base64)

# Runs runner.py sent on stdin (its byte count first): a stream re-opened after a restart
# or an upgrade runs the service's own follower, not whatever the work dir holds now.
_FROM_STDIN = (
    "import sys; n = int(sys.argv[1]); source = sys.stdin.buffer.read(n);"
    " sys.argv = ['runner.py'] + sys.argv[2:];"
    " exec(compile(source, 'runner.py', 'exec'), {'__name__': '__main__'})"
)


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


class StreamBroke(Exception):
    """The follower's session ended without the runner's end, or said something wrong."""


class _Follower:
    """The lines of one ``runner.py --follow`` session; ``None`` for each quiet second."""

    def __init__(self, chunks: Iterator[str]) -> None:
        self.chunks = chunks
        self.heard = time.monotonic()
        self.lines_seen = 0
        self.lines = self._lines()

    def _lines(self) -> Generator[str | None, None, None]:
        buffer = ""
        for chunk in self.chunks:
            if not chunk:
                if time.monotonic() - self.heard > STREAM_STALL_SECONDS:
                    raise StreamBroke(f"no word from the follower in {STREAM_STALL_SECONDS} s")
                yield None
                continue
            self.heard = time.monotonic()
            buffer += chunk
            while "\n" in buffer:
                line, _, buffer = buffer.partition("\n")
                self.lines_seen += 1
                yield line
            if len(buffer) > MAX_LINE:
                raise StreamBroke("a line of the follower is too long")
        raise StreamBroke("the follower's session ended before the runner did")

    def close(self) -> None:
        self.lines.close()
        close = getattr(self.chunks, "close", None)
        if callable(close):
            close()


class ExecExecutor:
    def __init__(
        self, kube: KubeApi, *, work_root: str, poll_seconds: float = POLL_SECONDS
    ) -> None:
        self.kube = kube
        self.work_root = work_root.rstrip("/")
        self.poll_seconds = poll_seconds  # between polls, only while no stream is open
        self.runner_source = Path(runner.__file__).read_bytes()
        self._closed = threading.Event()
        # Launch sessions that go on as followers, until wait() takes them (by work dir).
        self._launched: dict[str, _Follower] = {}
        self._lock = threading.Lock()
        # Per run (its log's path): what takes the runner's plot reports out of its log.
        self._markers: dict[str, MarkerFilter] = {}

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            launched, self._launched = list(self._launched.values()), {}
        for follower in launched:
            follower.close()

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
        """Start the runner, detached, in ``pod``: one exec, which goes on following it.

        The handle names the pod, work dir, pid and process group; the session is kept
        for :meth:`wait`.
        """
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
        source = self.runner_source
        spec = json.dumps(dict(request.spec)).encode()
        env = json.dumps(dict(request.env)).encode() + b"\n"
        # The files the spec names (CA certificates) go beside it, as in a Job's ConfigMap.
        files = [(name, text.encode()) for name, text in sorted(request.files.items())]
        copies = "".join(f" && head -c {len(data)} > {shlex.quote(name)}" for name, data in files)
        # Byte counts instead of end-of-input: not every exec server passes stdin's close
        # on. Each `head -c` reads no further than its count, so the runner, then the
        # spec and its files, then (read by the runner itself) the credentials come off
        # one stdin.
        script = (
            f"mkdir -p {quoted} && cd {quoted} && rm -f {runner.PID_FILE}"
            f" && head -c {len(source)} > runner.py && head -c {len(spec)} > spec.json"
            f"{copies}"
            " && python3 runner.py --spec spec.json --workdir . --detach --env-stdin"
            f" && exec python3 runner.py --follow --workdir . {self._follow_args(handle)}"
        )
        follower = _Follower(
            self.kube.exec_stream(
                namespace,
                pod,
                ["sh", "-c", script],
                stdin=source + spec + b"".join(data for _, data in files) + env,
            )
        )
        try:
            pid, pgid = self._first_line(follower)
        except (MlexpError, StreamBroke) as exc:
            follower.close()
            detail = exc.detail if isinstance(exc, MlexpError) else str(exc)
            if not self._recover_pid(handle):
                raise ExternalError(f"could not start the runner in the pod: {detail}") from exc
            log.warning(
                "runner started, its launch session did not name it",
                extra={"run_id": run.run_id, "pod": pod, "error": detail},
            )
        else:
            handle["pid"] = pid
            if pgid is not None:
                handle["pgid"] = pgid
            with self._lock:
                self._launched[workdir] = follower
        log.info(
            "runner started in pod",
            extra={
                "run_id": run.run_id,
                "pod": pod,
                "pid": handle["pid"],
                "pgid": handle.get("pgid"),
            },
        )
        return handle

    def _first_line(self, follower: _Follower) -> tuple[int, int | None]:
        """The follower's first line, ``P <pid> <pgid>``: which runner it follows."""
        deadline = time.monotonic() + LAUNCH_SECONDS
        for line in follower.lines:
            if line is None:
                if time.monotonic() > deadline:
                    raise StreamBroke(f"the runner was not named within {LAUNCH_SECONDS:.0f} s")
                continue
            kind, _, rest = line.partition(" ")
            pid, _, pgid = rest.partition(" ")
            if kind != "P" or not pid.isdigit():
                raise StreamBroke(f"the follower began with {line[:80]!r}")
            # "-" when the runner had ended before the follower looked: it left no group
            # to signal, and then there is nothing to stop either.
            return int(pid), _group(pgid)
        raise StreamBroke("the launch session ended")  # not reached: lines() raises first

    def _recover_pid(self, handle: Handle) -> bool:
        """After a launch session that broke: the runner it may have started, from runner.pid."""
        quoted = shlex.quote(str(handle["workdir"]))
        try:
            found = self._exec(
                handle,
                f'pid=$(cat {quoted}/{runner.PID_FILE} 2>/dev/null) && [ -n "$pid" ]'
                f' && echo "$pid $({_pgid_of("$pid")})"',
            )
        except MlexpError:
            return False
        pid, _, pgid = (found.stdout.strip().splitlines() or [""])[-1].partition(" ")
        if found.exit_code != 0 or not pid.isdigit():
            return False
        handle["pid"] = int(pid)
        group = _group(pgid.strip())
        if group is not None:
            handle["pgid"] = group
        return True

    def _follow_args(self, handle: Handle) -> str:
        """``--offset`` (what the run's log holds already), ``--limit`` (the log cap) and,
        for a runner launched earlier, ``--pid``/``--pgid``."""
        args = ["--offset", str(self._mark(handle))]
        limit = self._limit(handle)
        if limit is not None:
            args += ["--limit", str(limit)]
        if handle.get("pid") is not None:
            args += ["--pid", str(int(str(handle["pid"])))]
        group = _group(handle.get("pgid"))
        if group is not None:
            args += ["--pgid", str(group)]
        return " ".join(args)

    def _open_follower(self, handle: Handle) -> _Follower:
        with self._lock:
            launched = self._launched.pop(str(handle["workdir"]), None)
        if launched is not None:
            return launched
        source = self.runner_source
        command = [
            "python3", "-c", _FROM_STDIN, str(len(source)),
            "--follow", "--workdir", str(handle["workdir"]),
            *self._follow_args(handle).split(),
        ]  # fmt: skip
        chunks = self.kube.exec_stream(
            str(handle["namespace"]), str(handle["pod"]), command, stdin=source
        )
        follower = _Follower(chunks)
        try:
            self._first_line(follower)
        except BaseException:
            follower.close()
            raise
        return follower

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

    # -- the run's log ------------------------------------------------------

    @staticmethod
    def _mark_file(handle: Handle) -> Path:
        # How much of the pod's runner.log is already in ours, kept beside it so that a
        # restarted service resumes where it was instead of copying it twice.
        return Path(f"{handle['log']}.offset")

    def _mark(self, handle: Handle) -> int:
        mark = self._mark_file(handle)
        return int(mark.read_text() or 0) if mark.is_file() else 0

    @staticmethod
    def _limit(handle: Handle) -> int | None:
        """The most of the pod's runner.log copied: the runner keeps it under its cap (and
        its plot reports, taken out of the copy, under their budget); the run's code can
        write to runner.log too, so no more than that is copied whatever it does."""
        cap = handle.get("log_max_bytes")
        return (
            int(str(cap)) + LOG_CAP_SLACK + runner.PLOT_REPORT_BUDGET if cap is not None else None
        )

    def _append(self, handle: Handle, offset: int, data: bytes) -> None:
        """Add the pod log's bytes at ``offset`` to the run's log, and move the mark."""
        mark = self._mark(handle)
        limit = self._limit(handle)
        if limit is not None and mark >= limit:
            return
        if offset > mark:
            raise StreamBroke(f"the follower skipped the log from {mark} to {offset}")
        end = offset + len(data) if limit is None else min(offset + len(data), limit)
        if end <= mark:
            return
        log_path = Path(str(handle["log"]))
        held_file = self._held_file(handle)
        with self._lock:
            markers = self._markers.get(str(log_path))
            if markers is None:  # a restarted service resumes a marker it had begun
                held = held_file.read_bytes() if held_file.is_file() else b""
                markers = self._markers[str(log_path)] = MarkerFilter(held)
        # The runner's plot reports (marker lines) go to the run's live plots, not its log.
        kept, reported = markers.feed(data[mark - offset : end - offset])
        ReportedPlots(reported_dir(log_path)).apply(reported)
        if markers.held:  # kept with the mark: a chunk cut by a restart is not lost
            held_file.write_bytes(markers.held)
        else:
            held_file.unlink(missing_ok=True)
        cap = handle.get("log_max_bytes")
        if cap is not None:  # the log itself stays under the cap, reports or not
            written = self._written(handle, mark)
            kept = kept[: max(0, int(str(cap)) + LOG_CAP_SLACK - written)]
            self._written_file(handle).write_text(str(written + len(kept)))
        if kept:
            with log_path.open("ab") as out:
                out.write(kept)
        self._mark_file(handle).write_text(str(end))

    @staticmethod
    def _held_file(handle: Handle) -> Path:
        # The start of a plot report whose end has not been copied yet.
        return Path(f"{handle['log']}.held")

    @staticmethod
    def _written_file(handle: Handle) -> Path:
        # How much of the copied runner.log went into ours (the rest: plot reports).
        return Path(f"{handle['log']}.written")

    def _written(self, handle: Handle, mark: int) -> int:
        written = self._written_file(handle)
        # None yet: copied before there were reports (or nothing copied): all of it.
        return int(written.read_text() or 0) if written.is_file() else mark

    def _copy_log(self, handle: Handle) -> None:
        """Append what is new in the pod's runner.log to the run's log, a slice per exec.

        Slices are bounded (memory stays flat) and travel as base64, so the byte count
        is exact: the exec channel decodes text, which would drift on bytes that are
        not UTF-8 or on a character cut between two frames.
        """
        offset = self._mark(handle)
        workdir = shlex.quote(str(handle["workdir"]))
        limit = self._limit(handle)
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
            self._append(handle, offset, data)
            offset += len(data)
            if len(data) < wanted:
                return

    # -- following ------------------------------------------------------------

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
        """Follow the run over its stream until the runner's end; poll only without one.

        A stream that breaks is followed by one poll and, after ``poll_seconds``, a new
        stream; streams that break without a word are tried less and less often (up to
        :data:`STREAM_RETRY_MAX_SECONDS`), with a poll every ``poll_seconds`` meanwhile.
        """
        retry_at = 0.0
        silent = 0  # streams in a row that broke without a line
        while not self._closed.is_set():
            if time.monotonic() >= retry_at:
                follower: _Follower | None = None
                try:
                    follower = self._open_follower(handle)
                    outcome = self._read(handle, follower)
                    if outcome is not None:
                        return outcome
                except (MlexpError, StreamBroke) as exc:
                    detail = exc.detail if isinstance(exc, MlexpError) else str(exc)
                    log.info(
                        "runner's stream broke; polling",
                        extra={"pod": handle["pod"], "workdir": handle["workdir"], "error": detail},
                    )
                finally:
                    if follower is not None:
                        follower.close()
                if self._closed.is_set():
                    break
                heard = follower is not None and follower.lines_seen > 0
                silent = 0 if heard else silent + 1
                backoff = self.poll_seconds * 2 ** max(0, silent - 1)
                retry_at = time.monotonic() + min(STREAM_RETRY_MAX_SECONDS, backoff)
            outcome = self._poll(handle)
            if outcome is not None:
                return outcome
            self._closed.wait(self.poll_seconds)
        return Outcome("failed", reason="the service stopped following the run")

    def _read(self, handle: Handle, follower: _Follower) -> Outcome | None:
        """The runner's end as the follower tells it; None once the service stops."""
        for line in follower.lines:
            if self._closed.is_set():
                return None
            if line is None:
                continue
            kind, _, rest = line.partition(" ")
            try:
                if kind == "L":
                    offset, _, data = rest.partition(" ")
                    self._append(handle, int(offset), base64.b64decode(data, validate=True))
                elif kind == "S":
                    log.debug("runner status", extra={"pod": handle["pod"], "status": rest})
                elif kind == "E":
                    status = json.loads(rest)
                    return self._outcome(status if isinstance(status, dict) else None)
            except (ValueError, binascii.Error) as exc:
                raise StreamBroke(f"a line of the follower is garbled ({kind})") from exc
        return None  # not reached: lines raises when the session ends

    def _poll(self, handle: Handle) -> Outcome | None:
        """One look with short execs: the outcome if the runner has ended."""
        self._copy_log(handle)
        status = self._status(handle)
        if status is not None and status.get("state") in ("succeeded", "failed"):
            self._copy_log(handle)
            return self._outcome(status)
        if not self.is_active(handle):
            self._copy_log(handle)
            return self._outcome(self._status(handle))
        return None

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
        with self._lock:
            launched = self._launched.pop(str(handle["workdir"]), None)
            markers = self._markers.pop(str(handle["log"]), None)
        if launched is not None:  # launched, never waited for
            launched.close()
        if markers is not None and (rest := markers.flush()):
            with Path(str(handle["log"])).open("ab") as out:
                out.write(rest)
        workdir = shlex.quote(str(handle["workdir"]))
        group = _group(handle.get("pgid"))
        kill = f"kill -s KILL -- -{group} 2>/dev/null; " if group is not None else ""
        try:
            self._exec(handle, f"{kill}rm -rf {workdir}")
        except MlexpError as exc:
            log.warning("work dir not removed", extra={"pod": handle["pod"], "error": exc.detail})
