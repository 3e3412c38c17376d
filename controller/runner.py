#!/usr/bin/env python3
"""The runner: runs one experiment run where the work happens, and publishes it.

The same program runs as a local subprocess, in a Kubernetes Job's container and
inside a pod reached by ``exec``. It needs only python3 (stdlib), ``git`` and
``dvc`` on PATH, so any workload image can run it. Steps, each idempotent:

1. clone the experiment repo and check out the experiment's commit;
2. write the run's parameter files (overrides already applied by the service);
3. ``dvc pull`` what exists, run-cache included (missing data is fine);
4. ``dvc repro``;
5. commit ``dvc.lock``, params and metrics to the run branch;
6. ``dvc push`` (outputs and run-cache), then ``git push`` of the branch — data
   first, so a branch never points at data the remote lacks;
7. write ``status.json`` (state, branch, commit, metrics files) in the work dir.

The runner's output (its own lines and its children's, stdout and stderr) is its
log: written through as it comes, so it can be followed live. With a cap
(``log_max_bytes`` in the spec) the log keeps its head (up to half the cap) and
its tail: past the head only the most recent bytes are held, in memory, and
written at the end of the run after a marker line that says how many were left
out. The runner never holds more than the cap of output, however much a stage prints.

If the run branch already exists in the remote, an earlier attempt published the
run: the runner reports that commit instead of running again.

The repository is the caller's: its tree may hold symlinks. Every file the runner
writes or reads in it is opened component by component without following
symlinks (:func:`open_beneath`), so nothing in the tree can redirect a write or a
read outside the clone. Pipeline stages (``dvc repro``) get an environment without
any credential, and the runner makes itself non-dumpable, so stage code cannot read
the credentials from ``/proc/<runner>/environ`` or its memory either.

Credentials come only from the environment: ``MLEXP_GIT_USERNAME`` and
``MLEXP_GIT_TOKEN`` become an HTTP ``Authorization`` header passed to git through
``GIT_CONFIG_*`` variables (never a URL, never ``.git/config``); S3 keys are the
standard ``AWS_*`` variables DVC reads. Nothing here prints them.

In exec mode the service follows a detached runner with ``--follow``: one long exec
session in which this program, beside the runner, sends the runner's log and status as
they change, and a last line once the runner has ended (:func:`follow`).

Usage: ``python3 runner.py --spec SPEC.json --workdir DIR [--detach] [--env-stdin]``, or
``python3 runner.py --follow --workdir DIR [--offset N] [--limit N] [--pid P] [--pgid G]``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import errno
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

STATUS_FILE = "status.json"
LOG_FILE = "runner.log"
PID_FILE = "runner.pid"
MAX_METRICS_BYTES = 1024 * 1024
NOT_STARTED = 75  # exit code: no start signal came, nothing was done (EX_TEMPFAIL)
READ_CHUNK = 64 * 1024
MAX_CAPTURE = 64 * 1024  # output a step reads back (a commit id, a ref line)
STOP_GRACE_SECONDS = 5.0
FOLLOW_TICK_SECONDS = 0.2  # how often --follow looks at the files (locally, in the pod)
FOLLOW_GROUP_SECONDS = 1.0  # how often it scans /proc for the group, once the runner is gone
FOLLOW_HEARTBEAT_SECONDS = 10.0  # a line at least this often, so a dead session shows
FOLLOW_CHUNK = 48 * 1024  # log bytes per line (64 KiB of base64)
MAX_STATUS_BYTES = 16 * 1024 * 1024
TAIL_BYTES = (
    8 * 1024
)  # of a step's output, kept to say why it failed  # status.json with its metrics files
# Live plots (Kubernetes): the plot files the spec lists, reported through the log as they
# grow, one marker line per chunk (controller.domain.liveplots reads them; same values).
PLOT_MARKER = b"\x1e@mlexp-plot "
PLOT_CHUNK = 48 * 1024  # file bytes per marker line (64 KiB of base64)
PLOT_FILE_BYTES = 8 * 1024 * 1024  # the most of one file reported
PLOT_REPORT_BUDGET = 16 * 1024 * 1024  # marker bytes one run writes, all files together
PLOT_MAX_FILES = 64
PLOT_CHECK_BYTES = 64  # the end of what was sent, read again to notice a rewritten file


# What carries a credential in the runner's environment; stages get none of it.
CREDENTIAL_PREFIXES = ("MLEXP_GIT_", "GIT_CONFIG_", "AWS_")
CREDENTIAL_NAMES = frozenset({"AWS_DEFAULT_REGION"})  # not secret; stages may use it
PR_SET_DUMPABLE = 4
_DIR_NOFOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


class StepFailed(Exception):
    """A step failed; the message is safe to show (no credentials)."""


class Terminated(Exception):
    """The runner was told to stop (SIGTERM): cancel, pod deletion, shutdown."""


class CappedLog:
    """The runner's log on a file descriptor, kept under ``limit`` bytes (None: no cap).

    Output goes through until the head holds about half the limit; after that only the
    last ``limit - head`` bytes are kept (in a deque of the chunks, so memory stays under
    the limit), and :meth:`close` writes them after a marker line naming how many bytes
    were left out. The head ends at a line end when one fits, the tail starts after one,
    so the marker stands on a line of its own. Within the limit, nothing is left out.
    """

    def __init__(self, fd: int, limit: int | None) -> None:
        self.fd = fd
        self.limit = limit
        self.head_left = limit // 2 if limit is not None else 0
        self.tail_limit = limit - limit // 2 if limit is not None else 0
        self.cut = False
        self.at_line_start = True
        self.tail: deque[bytes] = deque()
        self.tail_bytes = 0
        self.omitted = 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self.limit is None:
            self._emit(data)
            return
        if not self.cut:
            if len(data) <= self.head_left:
                self.head_left -= len(data)
                self._emit(data)
                return
            piece = data[: self.head_left]
            line_end = piece.rfind(b"\n")
            if line_end >= 0:
                piece = piece[: line_end + 1]
            self._emit(piece)
            self.cut = True
            # What the head left unused (it ended at a line end) goes to the tail.
            self.tail_limit += self.head_left - len(piece)
            data = data[len(piece) :]
        self.tail.append(data)
        self.tail_bytes += len(data)
        while self.tail_bytes - len(self.tail[0]) >= self.tail_limit:
            dropped = self.tail.popleft()
            self.tail_bytes -= len(dropped)
            self.omitted += len(dropped)

    def close(self) -> None:
        """Write the kept tail, after the marker if anything was left out (once)."""
        if not self.tail:
            return
        excess = max(0, self.tail_bytes - self.tail_limit)
        first = self.tail.popleft()[excess:]
        self.omitted += excess
        if self.omitted and b"\n" in first[:-1]:
            skip = first.index(b"\n") + 1  # start the tail on a line of its own
            first = first[skip:]
            self.omitted += skip
        self.tail.appendleft(first)
        if self.omitted:
            newline = "" if self.at_line_start else "\n"
            self._emit(
                f"{newline}[mlexp] ... {self.omitted} bytes of log omitted "
                f"(log_max_bytes is {self.limit}) ...\n".encode()
            )
        while self.tail:
            self._emit(self.tail.popleft())
        self.tail_bytes = 0

    def report(self, line: bytes) -> None:
        """A marker line (live plots), beside the log: not counted against its cap (the
        reports have a budget of their own) and taken out again by the service, wherever
        in a line of the log it lands."""
        at_line_start = self.at_line_start
        self._emit(line)
        self.at_line_start = at_line_start

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        self.at_line_start = data.endswith(b"\n")


# Where log() and the steps' output go; main() sets the cap from the spec.
OUTPUT = CappedLog(1, None)


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(f"the runner was stopped ({signal.Signals(signum).name})")


def open_beneath(root: Path, rel: str, flags: int, mode: int = 0o644) -> int:
    """Open ``root/rel`` without following a symlink in any component of ``rel``.

    With ``os.O_CREAT`` in ``flags`` missing parent directories are created. A
    symlink (or a non-directory) on the way is refused with :class:`StepFailed`.
    """
    parts = [p for p in rel.split("/") if p]
    if not parts or rel.startswith("/") or any(p in (".", "..") for p in parts):
        raise StepFailed(f"refusing the path {rel!r}: not a plain relative path")
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            try:
                child = os.open(part, _DIR_NOFOLLOW, dir_fd=directory)
            except FileNotFoundError:
                if not flags & os.O_CREAT:
                    raise
                os.mkdir(part, 0o755, dir_fd=directory)
                child = os.open(part, _DIR_NOFOLLOW, dir_fd=directory)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise StepFailed(
                        f"refusing {rel!r}: {part!r} in it is a symlink or not a directory"
                    ) from None
                raise
            os.close(directory)
            directory = child
        try:
            return os.open(parts[-1], flags | os.O_NOFOLLOW, mode, dir_fd=directory)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StepFailed(f"refusing {rel!r}: it is a symlink") from None
            raise
    finally:
        os.close(directory)


def write_beneath(root: Path, rel: str, data: bytes) -> None:
    fd = open_beneath(root, rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def read_beneath(root: Path, rel: str, limit: int) -> bytes | None:
    """The file's bytes, or None if it is missing, not a regular file, or over ``limit``."""
    try:
        fd = open_beneath(root, rel, os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, StepFailed):
        return None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
        os.close(fd)
        return None
    with os.fdopen(fd, "rb") as src:
        return src.read(limit + 1)[:limit]


class PlotReporter:
    """Reports the plot files a run's ``dvc.yaml`` declares as they grow (Kubernetes).

    Each :meth:`poll` reads what each file gained since the last one (opened beneath the
    clone without following a symlink, regular files only) and returns it as marker lines:
    ``PLOT_MARKER`` + ``{"path", "offset", "b64"}`` + newline. A file that shrank, was
    replaced, or whose last sent bytes changed (a JSON document rewritten whole) is sent
    again from offset 0. Bounded: :data:`PLOT_FILE_BYTES` of a file, :data:`PLOT_CHUNK` per
    line, :data:`PLOT_REPORT_BUDGET` for the run.
    """

    def __init__(self, repo: Path, paths: Sequence[str], budget: int = PLOT_REPORT_BUDGET):
        self.repo = repo
        self.paths = [p for p in dict.fromkeys(paths) if isinstance(p, str)][:PLOT_MAX_FILES]
        self.budget = budget
        self.sent: dict[str, tuple[int, bytes, int]] = {}  # offset, its last bytes, inode

    def poll(self) -> list[bytes]:
        lines: list[bytes] = []
        for path in self.paths:
            lines += self._poll(path)
        return lines

    def _poll(self, path: str) -> list[bytes]:
        try:
            fd = open_beneath(self.repo, path, os.O_RDONLY | os.O_NONBLOCK)
        except (OSError, StepFailed):
            return []
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return []
            offset, tail, inode = self.sent.get(path, (0, b"", -1))
            rewritten = inode not in (-1, info.st_ino) or info.st_size < offset
            if not rewritten and tail:
                rewritten = os.pread(fd, len(tail), offset - len(tail)) != tail
            lines: list[bytes] = []
            if rewritten:
                offset, tail = 0, b""
                if info.st_size == 0:
                    lines.append(self._line(path, 0, b""))  # start it anew, empty
            end = min(info.st_size, PLOT_FILE_BYTES)
            while offset < end:
                data = os.pread(fd, min(PLOT_CHUNK, end - offset), offset)
                if not data:
                    break
                lines.append(self._line(path, offset, data))
                offset += len(data)
                tail = (tail + data)[-PLOT_CHECK_BYTES:]
            kept: list[bytes] = []
            for line in lines:
                if len(line) > self.budget:
                    self.budget = 0
                    break
                self.budget -= len(line)
                kept.append(line)
            if len(kept) == len(lines):
                self.sent[path] = (offset, tail, info.st_ino)
            return kept
        except OSError:
            return []
        finally:
            os.close(fd)

    @staticmethod
    def _line(path: str, offset: int, data: bytes) -> bytes:
        body = {"path": path, "offset": offset, "b64": base64.b64encode(data).decode()}
        return PLOT_MARKER + json.dumps(body, separators=(",", ":")).encode() + b"\n"


def without_credentials(env: Mapping[str, str]) -> dict[str, str]:
    """The environment for pipeline stages: no token, no S3 key, no git auth header."""
    return {
        k: v
        for k, v in env.items()
        if k in CREDENTIAL_NAMES or not k.startswith(CREDENTIAL_PREFIXES)
    }


def make_undumpable() -> None:
    """Keep same-user processes (stage code) out of our ``/proc/<pid>/environ`` and memory.

    Without CAP_SYS_PTRACE nobody may then read them; children become dumpable again
    when they exec, which is why stages also get an environment without credentials.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        log("warning: could not make the runner non-dumpable")


def git_environment(base: Mapping[str, str]) -> dict[str, str]:
    """Environment for git: auth header from MLEXP_GIT_* env, no hooks, no prompts.

    The header travels in ``GIT_CONFIG_*`` variables, which git reads as
    command-line config: nothing is written to ``.git/config`` or a URL.
    """
    env = dict(base)
    config = [
        ("core.hooksPath", os.devnull),
        ("credential.helper", ""),
        ("protocol.ext.allow", "never"),
        ("protocol.fd.allow", "never"),
        ("submodule.recurse", "false"),
        # A redirect could send git past the egress check of the URL it was given.
        ("http.followRedirects", "false"),
        ("advice.detachedHead", "false"),
        ("init.defaultBranch", "main"),
    ]
    username = env.get("MLEXP_GIT_USERNAME", "")
    token = env.get("MLEXP_GIT_TOKEN", "")
    if token:
        basic = base64.b64encode(f"{username or 'git'}:{token}".encode()).decode()
        config.append(("http.extraHeader", f"Authorization: Basic {basic}"))
    ca_bundle = env.get("MLEXP_GIT_CA_BUNDLE")
    if ca_bundle:
        # The variable, not http.sslCAInfo: a GIT_SSL_CAINFO in the environment would win.
        env["GIT_SSL_CAINFO"] = ca_bundle
    offset = int(env.get("GIT_CONFIG_COUNT", "0") or "0")
    for index, (key, value) in enumerate(config, start=offset):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    env["GIT_CONFIG_COUNT"] = str(offset + len(config))
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    return env


class Runner:
    def __init__(self, spec: Mapping[str, object], workdir: Path) -> None:
        self.spec = spec
        self.workdir = workdir
        self.repo = workdir / "repo"
        self.branch = str(spec["branch"])
        self.env = git_environment(os.environ)
        author = spec.get("author") or {}
        assert isinstance(author, dict)
        name = str(author.get("name") or "mlexp")
        email = str(author.get("email") or "mlexp@example.com")
        self.env.update(
            GIT_AUTHOR_NAME=name,
            GIT_AUTHOR_EMAIL=email,
            GIT_COMMITTER_NAME=name,
            GIT_COMMITTER_EMAIL=email,
            DVC_NO_ANALYTICS="1",
        )
        self.step_no = 0

    # -- plumbing ----------------------------------------------------------

    def step(self, title: str) -> None:
        self.step_no += 1
        log(f"step {self.step_no}: {title}")
        self.write_status("running", step=title)

    def run(
        self,
        *argv: str,
        cwd: Path | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        capture: bool = False,
        tick: Callable[[], None] | None = None,
        every: float = 2.0,
    ) -> str:
        """Run a step, its output streamed into the log as it comes.

        With ``capture`` the start of the output (up to :data:`MAX_CAPTURE`) is also
        returned, for the few steps whose answer the runner reads (a ref, a commit).
        ``tick`` is called about ``every`` seconds while the step runs, between reads of
        its output (no thread: the log has one writer).
        """
        log("$ " + " ".join(argv))
        proc = subprocess.Popen(
            argv,
            cwd=cwd or self.repo,
            env=self.env if env is None else env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        kept = bytearray()
        tail = b""  # the end of the output, for the error a failing tool ends with
        assert proc.stdout is not None
        try:
            with proc.stdout:
                fd = proc.stdout.fileno()
                due = time.monotonic() + every
                while True:
                    if tick is not None:
                        ready = select.select([fd], [], [], max(0.0, due - time.monotonic()))[0]
                        if time.monotonic() >= due:
                            tick()
                            due = time.monotonic() + every
                        if not ready:
                            continue
                    chunk = os.read(fd, READ_CHUNK)
                    if not chunk:
                        break
                    OUTPUT.write(chunk)
                    tail = (tail + chunk)[-TAIL_BYTES:]
                    if capture and len(kept) < MAX_CAPTURE:
                        kept += chunk[: MAX_CAPTURE - len(kept)]
            code = proc.wait()
        except BaseException:
            _stop(proc)
            raise
        if check and code != 0:
            said = last_error(tail)  # dvc says which stage failed, and how
            raise StepFailed(
                f"{argv[0]} {argv[1]} exited with {code}" + (f": {said}" if said else "")
            )
        return kept.decode(errors="replace")

    def write_status(self, state: str, **fields: object) -> None:
        status = {"state": state, "run_id": self.spec.get("run_id"), "pid": os.getpid()}
        status.update(fields)
        tmp = self.workdir / (STATUS_FILE + ".tmp")
        # The work dir is writable by stage code: never write through what it left there.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(status, indent=2))
        tmp.replace(self.workdir / STATUS_FILE)

    # -- steps -------------------------------------------------------------

    def main(self) -> int:
        started = time.monotonic()
        try:
            commit = self.published_commit()
            if commit is None:
                commit = self.execute()
            else:
                log(f"run branch {self.branch} already published at {commit}; reporting it")
            self.write_status(
                "succeeded",
                branch=self.branch,
                commit=commit,
                metrics_files=self.read_metrics(),
                seconds=round(time.monotonic() - started, 3),
            )
            log(f"succeeded: {self.branch} at {commit}")
            return 0
        except (StepFailed, Terminated) as exc:
            log(f"failed: {exc}")
            self.write_status("failed", error=str(exc), step_no=self.step_no)
            termination_message(str(exc))
            return 1 if isinstance(exc, StepFailed) else 128 + signal.SIGTERM

    def published_commit(self) -> str | None:
        """Clone, and return the run branch's commit if an earlier attempt pushed it."""
        self.step("clone experiment repository")
        if self.repo.exists():
            shutil.rmtree(self.repo)
        url = str(self.spec["repo_url"])
        base_branch = str(self.spec["base_branch"])
        self.run(
            "git", "clone", "--quiet", "--no-checkout", "--no-recurse-submodules",
            "--branch", base_branch, "--", url, str(self.repo),
            cwd=self.workdir,
        )  # fmt: skip
        remote = self.run(
            "git", "ls-remote", "--heads", "origin", self.branch, capture=True
        ).split()
        if remote:
            self.run("git", "fetch", "--quiet", "origin", self.branch)
            self.run("git", "checkout", "--quiet", "-B", self.branch, remote[0])
            return remote[0]
        self.run("git", "checkout", "--quiet", "-b", self.branch, str(self.spec["base_commit"]))
        return None

    def execute(self) -> str:
        self.step("apply parameters")
        files = self.spec.get("files") or {}
        assert isinstance(files, dict)
        for rel, text in files.items():
            write_beneath(self.repo, str(rel), str(text).encode())
            log(f"wrote {rel}")
        self.configure_cache()

        self.step("dvc pull")
        self.run("dvc", "pull", "--run-cache", "--allow-missing")

        self.step("dvc repro")
        # Stage code is the caller's: it runs without any credential in its environment.
        reporter = self.plot_reporter()
        tick = None if reporter is None else lambda: _report(reporter)
        every = self.spec.get("plot_report_seconds")
        self.run(
            "dvc", "repro", env=without_credentials(self.env), tick=tick,
            every=float(every) if isinstance(every, (int, float)) and every > 0 else 2.0,
        )  # fmt: skip
        if reporter is not None:
            _report(reporter)  # the last rows, before the run's end is reported

        self.step("commit results")
        self.run("git", "add", "--all")
        message = str(self.spec.get("message") or f"mlexp run {self.spec.get('run_id')}")
        self.run("git", "commit", "--quiet", "--allow-empty", "-m", message)
        commit = self.run("git", "rev-parse", "HEAD", capture=True).strip()

        self.step("dvc push")
        self.run("dvc", "push", "--run-cache")

        self.step("git push")
        # A rejected push is not fatal yet: a twin attempt may have published first.
        self.run("git", "push", "--quiet", "origin", f"HEAD:refs/heads/{self.branch}", check=False)
        remote = self.run(
            "git", "ls-remote", "--heads", "origin", self.branch, capture=True
        ).split()
        if not remote:
            raise StepFailed(f"git push of {self.branch} failed")
        if remote[0] != commit:
            # A twin attempt published first; its commit is the run's result.
            log(f"{self.branch} was published by another attempt at {remote[0]}")
            self.run("git", "fetch", "--quiet", "origin", self.branch)
            self.run("git", "checkout", "--quiet", "-B", self.branch, remote[0])
            return remote[0]
        return commit

    def plot_reporter(self) -> PlotReporter | None:
        """A reporter of the spec's ``plot_files`` if the spec asks for reports (Kubernetes:
        the service cannot read the work dir there)."""
        every = self.spec.get("plot_report_seconds")
        files = self.spec.get("plot_files") or []
        if not every or not isinstance(files, list) or not files:
            return None
        return PlotReporter(self.repo, [str(f) for f in files])

    def configure_cache(self) -> None:
        """Point DVC at a shared cache (local profile) through the uncommitted config.local."""
        cache_dir = self.spec.get("cache_dir")
        if not cache_dir:
            return
        write_beneath(self.repo, ".dvc/config.local", f"[cache]\n    dir = {cache_dir}\n".encode())

    def read_metrics(self) -> dict[str, str]:
        metrics: dict[str, str] = {}
        names = self.spec.get("metrics_files") or []
        assert isinstance(names, list)
        for rel in names:
            data = read_beneath(self.repo, str(rel), MAX_METRICS_BYTES)
            if data is not None:
                metrics[str(rel)] = data.decode(errors="replace")
        return metrics


def log(message: str) -> None:
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    OUTPUT.write(f"[mlexp {stamp}] {message}\n".encode())


def last_error(output: bytes) -> str:
    """The last line of ``output`` that reports an error (``ERROR: ...``, as dvc ends a
    failed stage with its command and exit code), at most 500 characters; else ''."""
    for line in reversed(output.decode(errors="replace").splitlines()):
        text = line.strip()
        if text.startswith(("ERROR", "error:", "fatal:")):
            return text[:500]
    return ""


def termination_message(text: str) -> None:
    """Where the container runtime looks for why a container ended (a Job's pod: the
    service reads it from the pod's status as the run's reason); nowhere else."""
    path = os.environ.get("MLEXP_TERMINATION_LOG")
    if not path:
        return
    try:
        with open(path, "w", encoding="utf-8") as out:
            out.write(text[:4000])
    except OSError:
        pass


def _report(reporter: PlotReporter) -> None:
    for line in reporter.poll():
        OUTPUT.report(line)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End a step the runner is leaving (it was stopped): TERM, then KILL after a grace."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def log_limit(spec: Mapping[str, object]) -> int | None:
    """The spec's ``log_max_bytes``: a positive int, or None (no cap)."""
    value = spec.get("log_max_bytes")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def detach(workdir: Path) -> None:
    """Become a daemon in ``workdir``: survives the exec session that started it.

    The caller returns only once ``runner.pid`` names the daemon, so it can be read
    right away.
    """
    middle = os.fork()
    if middle > 0:
        os.waitpid(middle, 0)
        os._exit(0)
    os.setsid()
    daemon = os.fork()
    if daemon > 0:
        (workdir / PID_FILE).write_text(str(daemon))
        os._exit(0)
    log_fd = os.open(workdir / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)


# -- following a detached runner (exec mode) ------------------------------------------------
#
# ``--follow`` writes one line per event on stdout, in order, ASCII only:
#
#     P <pid> <pgid|->        the runner followed (first line)
#     L <offset> <base64>     runner.log bytes from that offset (exact: the channel is text)
#     S <json>                status.json changed: its state, step and error
#     H                       nothing happened for a while (the session is alive)
#     E <json|null>           the end: the runner is gone and its status is final, or
#                             nothing of its process group lives; its status as in S


def _proc_state(pid: int) -> tuple[str, int] | None:
    """State and process group of ``pid``, or None if there is no such process.

    Read after the last ``") "`` of /proc/<pid>/stat: comm, before it, may hold anything.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b") ")[2].split()
        return fields[0].decode(), int(fields[2])
    except (OSError, IndexError, ValueError):
        return None


def _live(pid: int, group: int | None) -> bool:
    """``pid`` runs (a zombie has ended), in ``group`` when one is given."""
    state = _proc_state(pid)
    return state is not None and state[0] not in "ZXx" and group in (None, state[1])


def _group_live(group: int) -> bool:
    return any(_live(int(n), group) for n in os.listdir("/proc") if n.isdigit())


def _open_regular(path: Path) -> int | None:
    """A read descriptor on a regular file, not through a symlink (stage code can write
    the work dir: a FIFO or a link there must not block or redirect the reader)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def _status_summary(workdir: Path) -> dict[str, object] | None:
    """What the service needs of status.json (state, step, error), or None."""
    fd = _open_regular(workdir / STATUS_FILE)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as src:
        data = src.read(MAX_STATUS_BYTES + 1)
    try:
        status = json.loads(data) if len(data) <= MAX_STATUS_BYTES else None
    except ValueError:
        return None
    if not isinstance(status, dict):
        return None
    return {
        k: v[:2000] if isinstance(v, str) else v
        for k, v in status.items()
        if k in ("state", "step", "step_no", "error") and isinstance(v, (str, int))
    }


class _Lines:
    """Writes ``--follow``'s lines to stdout; raises OSError once nobody reads them."""

    def __init__(self) -> None:
        self.written = time.monotonic()

    def put(self, *parts: object) -> None:
        data = (" ".join(str(p) for p in parts) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[os.write(1, view) :]
        self.written = time.monotonic()


def follow(
    workdir: Path, offset: int, limit: int | None, pid: int | None, group: int | None
) -> int:
    """Send the runner's log and status as they change, then its end (see the lines above).

    Runs beside the runner in its pod: files are looked at every
    :data:`FOLLOW_TICK_SECONDS`, locally. The end comes once the runner has exited with
    a final status written (its log is then complete; stragglers of its group are the
    service's to end), or once no process of its group lives.
    """
    if pid is None:
        with contextlib.suppress(OSError, ValueError):
            pid = int((workdir / PID_FILE).read_text())
    if group is None and pid is not None:
        state = _proc_state(pid)
        group = state[1] if state is not None and state[1] > 1 else None
    out = _Lines()
    log_fd: int | None = None
    status: dict[str, object] | None = None
    seen: tuple[int, int, int] | None = None
    runner_gone = pid is None
    group_checked = 0.0
    try:
        out.put("P", pid if pid is not None else "-", group if group is not None else "-")
        while True:
            if not runner_gone:
                runner_gone = not _live(pid, group) if pid is not None else True
            ended = False
            if runner_gone:
                now = time.monotonic()
                final = status is not None and status.get("state") in ("succeeded", "failed")
                if final or group is None or now - group_checked >= FOLLOW_GROUP_SECONDS:
                    group_checked = now
                    ended = final or group is None or not _group_live(group)
            if log_fd is None:
                log_fd = _open_regular(workdir / LOG_FILE)
            while log_fd is not None and (limit is None or offset < limit):
                want = FOLLOW_CHUNK if limit is None else min(FOLLOW_CHUNK, limit - offset)
                data = os.pread(log_fd, want, offset)
                if data:
                    out.put("L", offset, base64.b64encode(data).decode())
                    offset += len(data)
                if len(data) < want:
                    break
            try:
                info = os.stat(workdir / STATUS_FILE, follow_symlinks=False)
                key: tuple[int, int, int] | None = (info.st_ino, info.st_mtime_ns, info.st_size)
            except OSError:
                key = None
            if key != seen or ended:
                seen = key
                now_status = _status_summary(workdir)
                if now_status != status:
                    status = now_status
                    out.put("S", json.dumps(status, separators=(",", ":")))
            if ended:
                out.put("E", json.dumps(status, separators=(",", ":")))
                return 0
            if time.monotonic() - out.written >= FOLLOW_HEARTBEAT_SECONDS:
                out.put("H")
            time.sleep(FOLLOW_TICK_SECONDS)
    except OSError:  # the session is gone (EPIPE), or the files are
        return 1
    finally:
        if log_fd is not None:
            os.close(log_fd)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run and publish one mlexp run.")
    parser.add_argument("--spec", type=Path, help="runner spec (JSON); required unless --follow")
    parser.add_argument("--workdir", type=Path, required=True, help="this run's work dir")
    parser.add_argument("--detach", action="store_true", help="run as a daemon (exec mode)")
    parser.add_argument(
        "--env-stdin",
        action="store_true",
        help="read one line of JSON, environment variables (credentials), from stdin",
    )
    parser.add_argument("--follow", action="store_true", help="follow a detached runner")
    parser.add_argument("--offset", type=int, default=0, help="--follow: runner.log from here")
    parser.add_argument("--limit", type=int, help="--follow: send no runner.log past this byte")
    parser.add_argument("--pid", type=int, help="--follow: the runner (default: runner.pid)")
    parser.add_argument("--pgid", type=int, help="--follow: its process group (default: read)")
    args = parser.parse_args(argv)
    if args.spec is None and not args.follow:
        parser.error("--spec is required")
    return args


# Which variable points git and S3 (botocore, under DVC) at a CA file beside the spec.
CA_VARIABLES = {"git": "MLEXP_GIT_CA_BUNDLE", "s3": "AWS_CA_BUNDLE"}


def use_ca_files(spec: Mapping[str, object], spec_dir: Path) -> None:
    """Point git and S3 at the private CA files the spec names, which came with it (on
    Kubernetes: keys of the run's ConfigMap mounted beside it, or copied in with it)."""
    files = spec.get("ca_files") or {}
    if not isinstance(files, dict):
        return
    for use, name in files.items():
        variable = CA_VARIABLES.get(str(use))
        if variable and isinstance(name, str) and "/" not in name:
            os.environ[variable] = str(spec_dir / name)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.follow:
        return follow(args.workdir, args.offset, args.limit, args.pid, args.pgid)
    args.workdir.mkdir(parents=True, exist_ok=True)
    spec = json.loads(args.spec.read_text())
    if args.env_stdin:
        # Credentials arrive on stdin (one JSON line): never on a command line or in a file.
        # The service writes them only once it has recorded this runner; end of input
        # instead means it stopped before that, and it will start the run again itself.
        line = sys.stdin.readline()
        if not line.strip():
            log("no start signal on stdin (the service stopped first); exiting untouched")
            return NOT_STARTED
        os.environ.update({str(k): str(v) for k, v in json.loads(line).items()})
    use_ca_files(spec, args.spec.resolve().parent)
    make_undumpable()
    if args.detach:
        detach(args.workdir)
    global OUTPUT  # one log per runner process
    OUTPUT = CappedLog(1, log_limit(spec))
    # As PID 1 of a container the runner gets no default action for SIGTERM: without a
    # handler a pod's deletion would wait for SIGKILL and the log would lose its tail.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return Runner(spec, args.workdir.resolve()).main()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the run is over: let the tail out
        OUTPUT.close()


if __name__ == "__main__":
    sys.exit(main())
