"""The local executor: the runner as a child process group on this machine.

Each run gets its own work dir (``<data_dir>/work/<run_id>``) holding the
spec, the clone and the runner's ``status.json``. With ``isolation: sandbox``
(the default) the runner runs in a bubblewrap sandbox of its own
(:mod:`controller.adapters.sandbox`); with ``none`` it sees the machine as the
service's user does. Credentials reach the runner on its stdin, so they are in
no file, command line or ``/proc/<pid>/environ`` of the sandbox's processes.
The runner (or the sandbox) leads its own process group, so cancelling kills
the pipeline's processes too. After a service restart the (pid, start time)
pair tells whether a runner is still the one we started; its status file tells
how it ended.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from controller import runner
from controller.adapters import processes, sandbox
from controller.executors import Handle, Launch, Outcome

# Variables a pipeline may legitimately need from the service's environment.
# Everything else (notably MLEXP_* settings and tokens) stays in the service.
PASSTHROUGH_ENV = (
    "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "GIT_SSL_CAINFO",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
)  # fmt: skip
POLL_SECONDS = 0.1
REASON_MAX_CHARS = 1000  # status.json is in reach of the run's code


class LocalExecutor:
    def __init__(
        self,
        work_root: Path,
        *,
        cancel_grace: float = 5.0,
        keep_workdirs: bool = False,
        bwrap: str | None = None,
        readable: Sequence[Path] = (),
        hidden: Sequence[Path] = (),
    ):
        """``bwrap`` set: runs are sandboxed (``readable`` is mounted read-only into each
        sandbox, ``hidden`` masked if a mount would expose it); None: not sandboxed."""
        self.work_root = work_root
        self.cancel_grace = cancel_grace
        self.keep_workdirs = keep_workdirs
        self.bwrap = bwrap
        self.readable = tuple(readable)
        self.hidden = tuple(hidden)
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def launch(self, request: Launch) -> Handle:
        workdir = self.work_root / request.run.run_id
        log_path = request.log_path
        workdir.mkdir(parents=True, exist_ok=True)
        for path in request.writable:
            path.mkdir(parents=True, exist_ok=True)
        spec_path = workdir / "spec.json"
        spec_path.write_text(json.dumps(request.spec, indent=2))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, runner.__file__,
            "--spec", str(spec_path), "--workdir", str(workdir), "--env-stdin",
        ]  # fmt: skip
        if self.bwrap is not None:
            plan = sandbox.SandboxPlan(
                workdir=workdir,
                writable=request.writable,
                readable=self.readable,
                hidden=self.hidden,
            )
            command = sandbox.bwrap_argv(plan, command, bwrap=self.bwrap)
        try:
            with log_path.open("ab") as log:
                child = subprocess.Popen(
                    command,
                    cwd=workdir,
                    env=self._environment(),
                    stdin=subprocess.PIPE,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError:
            self.cleanup({"workdir": str(workdir)})
            raise
        assert child.stdin is not None
        handle: Handle = {
            "kind": "local",
            "pid": child.pid,
            "ticks": processes.start_ticks(child.pid),
            "workdir": str(workdir),
        }
        try:
            if request.record is not None:
                request.record(handle)  # recorded before the runner may do anything
            # One line of JSON on stdin: credentials are in no file, argv or environ block,
            # and the runner waits for it before its first step.
            with child.stdin:
                child.stdin.write(json.dumps(dict(request.env)).encode() + b"\n")
        except BaseException:
            # It died at once (nothing read its stdin), or it could not be recorded: nothing
            # of it may outlive the launch.
            processes.kill_group(child.pid, signal.SIGKILL)
            child.wait()
            self.cleanup({"workdir": str(workdir)})
            raise
        with self._lock:
            self._children[child.pid] = child
        return handle

    def _environment(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
        # The service's interpreter (with dvc and the workload's packages) comes first.
        bin_dir = str(Path(sys.executable).parent)
        if self.bwrap is not None:
            env["PATH"] = sandbox.sandbox_path(bin_dir)
        else:
            env["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", os.defpath)])
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def wait(self, handle: Handle) -> Outcome:
        pid = _int(handle["pid"])
        with self._lock:
            child = self._children.get(pid)
        if child is not None:
            child.wait()
            with self._lock:
                self._children.pop(pid, None)
        else:
            while self.is_active(handle):
                time.sleep(POLL_SECONDS)
        return self.outcome(handle)

    def is_active(self, handle: Handle) -> bool:
        ticks = handle.get("ticks")
        return processes.is_alive(_int(handle["pid"]), _int(ticks) if ticks is not None else None)

    def outcome(self, handle: Handle) -> Outcome:
        # The work dir is writable by the run's code: read no symlink it may have left there.
        data = runner.read_beneath(
            Path(str(handle["workdir"])), runner.STATUS_FILE, runner.MAX_METRICS_BYTES * 64
        )
        try:
            status = json.loads(data) if data is not None else None
        except ValueError:
            status = None
        if not isinstance(status, dict):
            return Outcome("failed", reason="the runner ended without reporting a status")
        if status.get("state") == "succeeded":
            return Outcome(
                "succeeded",
                commit=str(status.get("commit")),
                metrics_files=dict(status.get("metrics_files") or {}),
            )
        if status.get("state") == "failed":
            reason = str(status.get("error") or "the runner failed")[:REASON_MAX_CHARS]
            return Outcome("failed", reason=reason)
        step = str(status.get("step") or "an unknown step")[:REASON_MAX_CHARS]
        return Outcome("failed", reason=f"the runner stopped during {step} without finishing")

    def cancel(self, handle: Handle) -> bool:
        pgid = _int(handle["pid"])
        if not self.is_active(handle) and not processes.group_alive(pgid):
            return True
        processes.kill_group(pgid, signal.SIGTERM)
        if processes.wait_group_gone(pgid, self.cancel_grace):
            return True
        processes.kill_group(pgid, signal.SIGKILL)
        return processes.wait_group_gone(pgid, 10.0)

    def close(self) -> None:
        """Nothing to end: waits on child processes return when the process exits."""

    def cleanup(self, handle: Handle) -> None:
        if not self.keep_workdirs:
            shutil.rmtree(str(handle["workdir"]), ignore_errors=True)


def _int(value: object) -> int:
    if isinstance(value, int):
        return value
    return int(str(value))
