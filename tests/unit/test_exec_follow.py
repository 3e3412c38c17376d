"""How the exec executor reads a ``runner.py --follow`` stream
(:mod:`controller.executors.kube_exec`), over a fake Kubernetes adapter.

Covers: lines cut anywhere between chunks are put back together; silence past the stall
limit, an overlong or garbled line, or a session that ends before the runner's end is a
broken stream; log lines are appended once each (an overlap is cut, a gap refused) and
never past the cap; the runner's plot reports are taken out of the log and kept as the
run's live plots; the end line gives the outcome; a launch whose session breaks finds a
started runner from its pid file, and fails plainly when there is none; ``close()`` ends
a wait at once.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from controller import runner
from controller.adapters.kube import ExecResult, KubeApi
from controller.adapters.liveplots import ReportedPlots, reported_dir
from controller.domain.bundle import RepoSpec
from controller.domain.errors import ExternalError
from controller.executors import Handle, Launch, kube_exec
from controller.executors.kube_exec import LOG_CAP_SLACK, ExecExecutor, StreamBroke, _Follower
from tests.support.records import run_record


def chunks(*parts: str) -> Iterator[str]:
    yield from parts


def lines(follower: _Follower) -> list[str | None]:
    found: list[str | None] = []
    with pytest.raises(StreamBroke, match="ended before the runner did"):
        found.extend(follower.lines)
    return found


def L(offset: int, data: bytes) -> str:
    return f"L {offset} {base64.b64encode(data).decode()}\n"


class FakeKube:
    """Streams the given text; short execs answer ``answer``."""

    def __init__(self, *streams: list[str], answer: ExecResult | None = None) -> None:
        self.streams = list(streams)
        self.answer = answer or ExecResult("", "", 1)
        self.execs: list[str] = []

    def exec_stream(
        self, namespace: str, pod: str, command: list[str], *, stdin: bytes | None = None
    ) -> Iterator[str]:
        if not self.streams:
            raise ExternalError("exec in pod ns/p-0: the session broke (ConnectionRefused)")
        for chunk in self.streams.pop(0):
            if not chunk:
                time.sleep(0.01)  # a quiet moment
            yield chunk

    def exec(
        self, namespace: str, pod: str, command: list[str], *, stdin: bytes | None = None
    ) -> ExecResult:
        self.execs.append(command[-1])
        return self.answer


def executor_for(kube: FakeKube) -> ExecExecutor:
    return ExecExecutor(cast(KubeApi, kube), work_root="/work", poll_seconds=0.05)


def handle_in(tmp_path: Path, **more: object) -> Handle:
    handle: Handle = {"kind": "exec", "namespace": "ns", "pod": "p-0", "workdir": "/work/r"}
    handle.update(log=str(tmp_path / "run.log"), pid=4242, pgid=4240, **more)
    return handle


def test_lines_cut_between_chunks_are_put_back_together() -> None:
    follower = _Follower(chunks("P 12", " 10\nL 0 aG", "k=\n", "", "H\nE nu", "ll\n"))
    assert lines(follower) == ["P 12 10", "L 0 aGk=", None, "H", "E null"]
    assert follower.lines_seen == 4


def test_silence_past_the_stall_limit_breaks_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube_exec, "STREAM_STALL_SECONDS", 0.05)
    follower = _Follower(chunks("P 1 -\n", *[""] * 3))
    assert next(follower.lines) == "P 1 -"
    time.sleep(0.1)
    with pytest.raises(StreamBroke, match="no word from the follower"):
        list(follower.lines)


def test_an_overlong_line_breaks_the_stream() -> None:
    follower = _Follower(chunks("P 1 -\n", "x" * (kube_exec.MAX_LINE + 1)))
    with pytest.raises(StreamBroke, match="too long"):
        list(follower.lines)


def test_log_lines_are_appended_once_and_the_end_gives_the_outcome(tmp_path: Path) -> None:
    executor = executor_for(FakeKube())
    handle = handle_in(tmp_path)
    text = [L(0, b"abc"), L(1, b"bcdef"), "S {}\n", "H\n", L(6, b"\xff\n")]
    text.append('E {"state":"failed","error":"dvc repro exited with 1"}\n')
    outcome = executor._read(handle, _Follower(chunks(*text)))
    assert outcome is not None
    assert (outcome.state, outcome.reason) == ("failed", "dvc repro exited with 1")
    assert (tmp_path / "run.log").read_bytes() == b"abcdef\xff\n"
    assert (tmp_path / "run.log.offset").read_text() == "8"


def test_a_gap_or_a_garbled_line_breaks_the_stream(tmp_path: Path) -> None:
    executor = executor_for(FakeKube())
    handle = handle_in(tmp_path)
    with pytest.raises(StreamBroke, match="skipped the log from 0 to 5"):
        executor._read(handle, _Follower(chunks(L(5, b"late"))))
    with pytest.raises(StreamBroke, match="garbled"):
        executor._read(handle, _Follower(chunks("L 0 not*base64\n")))
    assert not (tmp_path / "run.log").exists()


def test_nothing_past_the_cap_is_appended(tmp_path: Path) -> None:
    executor = executor_for(FakeKube())
    handle = handle_in(tmp_path, log_max_bytes=10)
    limit = 10 + LOG_CAP_SLACK
    big = b"y" * (limit + 100)
    outcome = executor._read(handle, _Follower(chunks(L(0, big), L(len(big), b"z"), "E null\n")))
    assert outcome is not None
    assert outcome.reason == "the runner ended without reporting a status"
    assert (tmp_path / "run.log").read_bytes() == b"y" * limit


def _launch(tmp_path: Path) -> Launch:
    run = run_record().model_copy(update={"resource": "sts/w", "namespace": "ns"})
    return Launch(run, {"run_id": run.run_id}, {"MLEXP_GIT_TOKEN": "t"}, RepoSpec(), tmp_path)


def test_a_launch_whose_session_breaks_finds_the_runner_it_started(tmp_path: Path) -> None:
    kube = FakeKube(answer=ExecResult("4242 4240\n", "", 0))  # no stream: the session fails
    handle = executor_for(kube).launch_in(_launch(tmp_path), "p-0")
    assert (handle["pid"], handle["pgid"], handle["pod"]) == (4242, 4240, "p-0")
    assert "runner.pid" in kube.execs[0]


def test_a_launch_that_started_nothing_fails_plainly(tmp_path: Path) -> None:
    kube = FakeKube(["sh: 1: python3: not found\n"])  # no P line, then the session ends
    with pytest.raises(ExternalError, match="could not start the runner in the pod: the fo"):
        executor_for(kube).launch_in(_launch(tmp_path), "p-0")


def test_close_ends_a_wait_at_once(tmp_path: Path) -> None:
    kube = FakeKube(["P 4242 4240\n", *[""] * 1000])
    executor = executor_for(kube)
    threading.Timer(0.2, executor.close).start()
    started = time.monotonic()
    outcome = executor.wait(handle_in(tmp_path))
    assert outcome.reason == "the service stopped following the run"
    assert time.monotonic() - started < 2


def test_plot_reports_go_to_the_live_plots_not_the_log(tmp_path: Path) -> None:
    """The runner's marker lines (live plots) are taken out of the copied log, even cut
    between two stream lines, kept beside it, and do not count against the log's cap."""
    executor = executor_for(FakeKube())
    handle = handle_in(tmp_path, log_max_bytes=10)
    limit = 10 + LOG_CAP_SLACK
    report = runner.PlotReporter._line("curve.tsv", 0, b"step\tloss\n0\t1.0\n")
    data = b"epoch 1" + report + b"\n" + b"y" * (limit + 50)
    cut = len(b"epoch 1") + 20  # inside the marker
    outcome = executor._read(
        handle, _Follower(chunks(L(0, data[:cut]), L(cut, data[cut:]), "E null\n"))
    )
    assert outcome is not None
    assert (tmp_path / "run.log").read_bytes() == (b"epoch 1\n" + b"y" * limit)[:limit]
    kept = ReportedPlots(reported_dir(tmp_path / "run.log"))
    assert kept.read(["curve.tsv"]) == {"curve.tsv": b"step\tloss\n0\t1.0\n"}


def test_a_report_cut_by_a_restart_is_kept_whole(tmp_path: Path) -> None:
    """A service that stops inside a marker line keeps its start beside the mark; the one
    that resumes finishes it: no base64 in the log, no chunk lost."""
    handle = handle_in(tmp_path)
    report = runner.PlotReporter._line("curve.tsv", 0, b"step\tloss\n0\t1.0\n")
    data = b"epoch 1\n" + report + b"epoch 2\n"
    cut = len(b"epoch 1\n") + 30
    first = executor_for(FakeKube())
    with pytest.raises(StreamBroke):
        first._read(handle, _Follower(chunks(L(0, data[:cut]))))
    assert (tmp_path / "run.log").read_bytes() == b"epoch 1\n"
    second = executor_for(FakeKube())  # the restarted service: a new executor
    outcome = second._read(handle, _Follower(chunks(L(cut, data[cut:]), "E null\n")))
    assert outcome is not None
    assert (tmp_path / "run.log").read_bytes() == b"epoch 1\nepoch 2\n"
    kept = ReportedPlots(reported_dir(tmp_path / "run.log"))
    assert kept.read(["curve.tsv"]) == {"curve.tsv": b"step\tloss\n0\t1.0\n"}
    assert not (tmp_path / "run.log.held").exists()
