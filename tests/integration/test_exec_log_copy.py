"""Exec runs: the runner is launched in one exec, followed over one stream, its log copied
exactly and within bounds; short execs only while the stream is broken.

Covers: bytes that are not UTF-8 and a log of several slices arrive byte for byte over
the stream; a restarted follower resumes where the copy stands; no more than the run's
``log_max_bytes`` (and the marker's slack) is copied, whatever the run's code appends to
runner.log; a launch is one exec whose session goes on following the runner, with the
credentials on stdin only; a stream that breaks is followed by a poll and a new stream,
and nothing is copied twice or lost; the runner's end is seen within a second;
``runner.py --follow`` ends only once no live process is left in the run's group (a
zombie does not count, a crafted command name does not fool it). The pod is this host,
as under kwok (whose exec runs the command here): the commands are real ``sh`` and
``python3``; only the Kubernetes API call around them is left out.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from controller import runner
from controller.adapters.kube import ExecResult, KubeApi
from controller.domain.bundle import RepoSpec
from controller.domain.errors import ExternalError
from controller.executors import Handle, Launch
from controller.executors.kube_exec import LOG_CAP_SLACK, LOG_COPY_BYTES, ExecExecutor
from tests.support.records import run_record

pytestmark = pytest.mark.integration

RUNNER = Path(runner.__file__)


class HostExec:
    """``KubeApi.exec`` and ``exec_stream`` as kwok does them: the command runs on this
    host; output comes back decoded as text, as the exec channel delivers it; stdin is
    never closed (not every exec server passes its end on)."""

    def __init__(self) -> None:
        self.calls = 0  # short execs
        self.streams = 0
        self.commands: list[list[str]] = []

    def exec(
        self, namespace: str, pod: str, command: list[str], *, stdin: bytes | None = None
    ) -> ExecResult:
        self.calls += 1
        self.commands.append(command)
        done = subprocess.run(command, input=stdin, capture_output=True, check=False)
        return ExecResult(
            done.stdout.decode(errors="replace"),
            done.stderr.decode(errors="replace"),
            done.returncode,
        )

    def exec_stream(
        self, namespace: str, pod: str, command: list[str], *, stdin: bytes | None = None
    ) -> Iterator[str]:
        self.streams += 1
        self.commands.append(command)
        proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            proc.stdin.write(stdin or b"")
            proc.stdin.flush()
            while True:
                ready, _, _ = select.select([proc.stdout], [], [], 1)
                if not ready:
                    yield ""
                    continue
                data = os.read(proc.stdout.fileno(), 65536)
                if not data:
                    break
                yield data.decode(errors="replace")
            if proc.wait() != 0:
                raise ExternalError(f"exit {proc.returncode}: {proc.stderr.read()[-300:]!r}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                pipe.close()


class BreakingExec(HostExec):
    """Its first stream breaks after ``lines`` lines, as a dropped connection would."""

    def __init__(self, lines: int) -> None:
        super().__init__()
        self.lines = lines
        self.opened = 0

    def exec_stream(
        self, namespace: str, pod: str, command: list[str], *, stdin: bytes | None = None
    ) -> Iterator[str]:
        stream = super().exec_stream(namespace, pod, command, stdin=stdin)
        self.opened += 1
        if self.opened > 1:
            yield from stream
            return
        seen = 0
        try:
            for chunk in stream:
                for line in chunk.splitlines(keepends=True):
                    if seen == self.lines:
                        raise ExternalError("the session broke (WebSocketConnectionClosed)")
                    seen += 1
                    yield line
        finally:
            stream.close()  # type: ignore[attr-defined]


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def _run(
    tmp_path: Path, cap: int | None, host: HostExec | None = None
) -> tuple[ExecExecutor, HostExec, Handle, Path]:
    workdir = tmp_path / "pod-work" / "run-1"
    workdir.mkdir(parents=True)
    (workdir / runner.STATUS_FILE).write_text(json.dumps({"state": "succeeded"}))
    shutil.copy(RUNNER, workdir / "runner.py")
    log = tmp_path / "logs" / "run-1.log"
    log.parent.mkdir()
    host = host or HostExec()
    executor = ExecExecutor(
        cast(KubeApi, host), work_root=str(tmp_path / "pod-work"), poll_seconds=0.2
    )
    handle: Handle = {"kind": "exec", "namespace": "ns", "pod": "p-0", "workdir": str(workdir)}
    handle.update({"log": str(log), "pid": dead_pid()})
    if cap is not None:
        handle["log_max_bytes"] = cap
    return executor, host, handle, workdir / runner.LOG_FILE


def test_the_pod_log_is_copied_byte_for_byte_and_resumed(tmp_path: Path) -> None:
    executor, host, handle, pod_log = _run(tmp_path, cap=None)
    first = os.urandom(2 * LOG_COPY_BYTES + 12345) + "é\n".encode()  # not UTF-8; > 2 slices
    pod_log.write_bytes(first)
    assert executor.wait(handle).state == "succeeded"
    log = Path(str(handle["log"]))
    assert log.read_bytes() == first
    assert (host.streams, host.calls) == (1, 0)  # one stream, no polling

    more = b"\xff\xfe more after a restart \xc3\n"
    with pod_log.open("ab") as out:
        out.write(more)
    assert executor.outcome(handle).state == "succeeded"
    executor.wait(handle)  # a second follower (after a restart) copies only what is new
    assert log.read_bytes() == first + more
    follow = host.commands[-1]  # the second stream's
    assert follow[follow.index("--offset") + 1] == str(len(first))


def test_no_more_than_the_cap_is_copied(tmp_path: Path) -> None:
    cap = 100_000
    executor, _, handle, pod_log = _run(tmp_path, cap=cap)
    pod_log.write_bytes(b"x" * (3 * LOG_COPY_BYTES))  # as if the run's code wrote into it
    executor.wait(handle)
    copied = Path(str(handle["log"])).read_bytes()
    assert copied == b"x" * (cap + LOG_CAP_SLACK)
    executor.wait(handle)
    assert len(Path(str(handle["log"])).read_bytes()) == cap + LOG_CAP_SLACK


def _fake_runner(workdir: Path, script: str) -> subprocess.Popen[bytes]:
    """A process group of its own in the work dir, standing in for a detached runner."""
    return subprocess.Popen(["sh", "-c", script], cwd=workdir, start_new_session=True)


def test_a_broken_stream_is_polled_once_then_reopened(tmp_path: Path) -> None:
    executor, host, handle, pod_log = _run(tmp_path, cap=None, host=BreakingExec(lines=3))
    workdir = pod_log.parent
    (workdir / runner.STATUS_FILE).write_text(json.dumps({"state": "running", "step": "x"}))
    fake = _fake_runner(
        workdir,
        "for i in 1 2 3 4 5 6 7 8 9 10; do echo line $i >> runner.log; sleep 0.2; done;"
        ' echo \'{"state": "succeeded"}\' > status.json',
    )
    handle.update({"pid": fake.pid, "pgid": fake.pid})
    try:
        outcome = executor.wait(handle)
    finally:
        fake.wait()
    assert outcome.state == "succeeded"
    expected = "".join(f"line {i}\n" for i in range(1, 11)).encode()
    assert Path(str(handle["log"])).read_bytes() == expected  # nothing twice, nothing lost
    assert host.streams == 2
    assert 3 <= host.calls <= 6  # one poll: the log slice, status.json, the group


def test_the_runners_end_is_seen_within_a_second(tmp_path: Path) -> None:
    executor, host, handle, pod_log = _run(tmp_path, cap=None)
    fake = _fake_runner(pod_log.parent, "sleep 1.5; echo last words >> runner.log")
    handle.update({"pid": fake.pid, "pgid": fake.pid})
    ended: list[float] = []

    def reap() -> None:
        fake.wait()
        ended.append(time.monotonic())

    reaper = threading.Thread(target=reap)
    reaper.start()
    outcome = executor.wait(handle)
    returned = time.monotonic()
    reaper.join()
    assert outcome.state == "succeeded"
    assert Path(str(handle["log"])).read_bytes() == b"last words\n"
    assert returned - ended[0] < 1.0
    assert (host.streams, host.calls) == (1, 0)


def test_a_launch_is_one_exec_that_goes_on_following_the_runner(tmp_path: Path) -> None:
    host = HostExec()
    executor = ExecExecutor(cast(KubeApi, host), work_root=str(tmp_path / "pod-work"))
    run = run_record().model_copy(update={"resource": "sts/w", "namespace": "ns"})
    spec = {
        "run_id": run.run_id,
        "branch": f"runs/{run.run_id}",
        "repo_url": str(tmp_path / "no-such-repo.git"),  # the clone fails: a quick run
        "base_branch": "main",
        "base_commit": "0" * 40,
        "log_max_bytes": 100_000,
    }
    secret = "s3cret-token-0123456789"
    env = {"MLEXP_GIT_TOKEN": secret, "MLEXP_GIT_USERNAME": "bot"}
    log = tmp_path / "logs" / f"{run.run_id}.log"
    log.parent.mkdir()
    handle = executor.launch_in(Launch(run, spec, env, RepoSpec(), log), "p-0")

    assert (host.streams, host.calls) == (1, 0)
    assert isinstance(handle["pid"], int)
    # A process group of its own (unless the runner had already ended when its follower
    # looked: this one fails at once).
    assert handle.get("pgid") != os.getpgid(0)
    workdir = Path(str(handle["workdir"]))
    assert json.loads((workdir / "spec.json").read_text()) == spec
    outcome = executor.wait(handle)
    assert outcome.state == "failed"
    assert "git clone" in str(outcome.reason)
    assert (host.streams, host.calls) == (1, 0)  # the launch session followed it to the end
    copied = log.read_bytes()
    assert copied == (workdir / runner.LOG_FILE).read_bytes()
    assert b"step 1: clone experiment repository" in copied
    for text in (*(" ".join(c) for c in host.commands), copied.decode(errors="replace")):
        assert secret not in text
    assert all(secret not in p.read_text(errors="replace") for p in workdir.glob("*.*"))

    executor.cleanup(handle)
    assert not workdir.exists()


def _follow(workdir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(RUNNER), "--follow", "--workdir", str(workdir), *args],
        stdout=subprocess.PIPE,
        text=True,
    )


def _lines_for(proc: subprocess.Popen[str], seconds: float) -> list[str]:
    """What the follower wrote within ``seconds`` (less if it ended)."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
    return lines


def test_the_follower_ends_when_no_live_process_is_left_in_the_group(tmp_path: Path) -> None:
    # A process of the group named like the fields of a zombie's stat line: still live.
    crafted = tmp_path / "x) Z 0 0 0 0"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", crafted)
    straggler = subprocess.Popen([str(crafted), "30"], start_new_session=True)
    (tmp_path / runner.STATUS_FILE).write_text(json.dumps({"state": "running", "step": "x"}))
    runner_pid = dead_pid()
    follower = _follow(tmp_path, "--pid", str(runner_pid), "--pgid", str(straggler.pid))
    try:
        before = _lines_for(follower, 1.5)
        assert before[0] == f"P {runner_pid} {straggler.pid}"
        assert not any(line.startswith("E") for line in before)
        straggler.kill()  # not reaped: a zombie, which has ended all the same
        after = _lines_for(follower, 3)
        assert after[-1] == 'E {"state":"running","step":"x"}'
        assert follower.wait(timeout=5) == 0
    finally:
        for proc in (straggler, follower):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        assert follower.stdout is not None
        follower.stdout.close()
