"""Run logs are bounded: the runner streams its steps' output live and caps it (head and
tail, a marker between), and the service streams a log from disk with flat memory.

Covers: a stage printing ~200 MB leaves a log within ``log_max_bytes`` that has its head,
its tail and the marker; output shows in the log while the stage still runs; reading a
~100 MB log (plain and followed) through the API keeps the service's peak RSS flat; a
``follow`` whose offset is past the end waits and ends cleanly when the run ends.
"""

from __future__ import annotations

import gc
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from controller.settings import Settings, load_settings
from tests.support.bundles import QUICK_DVC, create, small_parts, start
from tests.support.prereqs import require_tools
from tests.support.service import RunningService, service_in_thread
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

CAP = 1024 * 1024
LOUD_BYTES = 200_000_000
LOUD_DVC = f"""\
stages:
  loud:
    cmd: >-
      echo FIRST-LINE-OF-THE-STAGE &&
      yes 0123456789abcdef | head -c {LOUD_BYTES} &&
      echo && echo LAST-LINE-OF-THE-STAGE
"""
# Prints a line, then waits for ../gate (in the run's work dir, which its sandbox sees).
# The lines it prints are not in its command, which DVC echoes into the log.
CHATTY_GATED_DVC = """\
stages:
  chatty:
    cmd: >-
      python -c "import pathlib, time;
      print('stage says', 'hello', flush=True);
      [time.sleep(0.05) for _ in iter(pathlib.Path('../gate').exists, True)];
      print('stage says', 'goodbye', flush=True)"
"""
HELLO, GOODBYE = "stage says hello", "stage says goodbye"
MARKER = re.compile(rb"\[mlexp\] \.\.\. (\d+) bytes of log omitted \(log_max_bytes is (\d+)\)")
MIB = 1024 * 1024


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[RunningService]:
    require_tools("git")
    settings: Settings = load_settings(
        data_dir=tmp_path / "data",
        config_file=tmp_path / "no-config.yaml",
        k8s_config_file=tmp_path / "no-k8s-config.yaml",
        log_max_bytes=CAP,
    )
    with service_in_thread(settings) as running:
        yield running


def test_a_stage_printing_200_mb_leaves_a_capped_log_with_head_and_tail(
    capped: RunningService,
) -> None:
    experiment = create(capped.http, small_parts(LOUD_DVC))
    run_id = start(capped.http, experiment["experiment_id"])
    run = capped.wait_run(run_id, timeout=300)
    log = capped.http.get(f"/runs/{run_id}/logs").content
    assert run["state"] == "succeeded", log[-3000:]

    # The cap, plus the marker line and the service's own few notes.
    assert len(log) <= CAP + 4096, len(log)
    marker = MARKER.search(log)
    assert marker is not None, log[-3000:]
    assert int(marker[2]) == CAP
    omitted = int(marker[1])
    assert LOUD_BYTES - CAP <= omitted <= LOUD_BYTES
    head, tail = log[: marker.start()], log[marker.end() :]
    assert b"step 4: dvc repro" in head
    assert b"FIRST-LINE-OF-THE-STAGE" in head
    assert head.count(b"0123456789abcdef\n") > CAP // 2 // 17 // 2  # the head is used
    assert b"LAST-LINE-OF-THE-STAGE" in tail
    assert b"step 7: git push" in tail
    assert tail.index(b"LAST-LINE-OF-THE-STAGE") < tail.index(b"run succeeded")
    # The marker stands on a line of its own; the tail starts with a whole line.
    assert log[marker.start() - 1 : marker.start()] == b"\n"
    assert tail.startswith(b" ...\n0123456789abcdef\n")


@contextmanager
def gated_run(service: RunningService) -> Iterator[tuple[str, Path]]:
    """A run of CHATTY_GATED_DVC once its stage has said hello; the gate opens at the end
    whatever happens, so no runner outlives the test."""
    experiment = create(service.http, small_parts(CHATTY_GATED_DVC))
    run_id = start(service.http, experiment["experiment_id"])
    gate = service.settings.work_dir / run_id / "gate"
    try:
        wait_for(
            lambda: HELLO in service.http.get(f"/runs/{run_id}/logs").text,
            120,
            what="the stage's first line in the log, while the stage waits",
        )
        yield run_id, gate
    finally:
        if gate.parent.is_dir():
            gate.touch()
        service.wait_run(run_id)


def test_a_stage_output_shows_in_the_log_while_it_runs(service: RunningService) -> None:
    with gated_run(service) as (run_id, gate):
        assert service.http.get(f"/runs/{run_id}").json()["state"] == "running"
        assert GOODBYE not in service.http.get(f"/runs/{run_id}/logs").text
        gate.touch()
        assert service.wait_run(run_id)["state"] == "succeeded"
    assert GOODBYE in service.http.get(f"/runs/{run_id}/logs").text


def _vm(field: str) -> int:
    """A /proc/self/status memory figure of this process (the in-thread service's), bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


def test_reading_a_100_mb_log_keeps_the_service_rss_flat(service: RunningService) -> None:
    experiment = create(service.http, small_parts(QUICK_DVC))
    run_id = start(service.http, experiment["experiment_id"])
    assert service.wait_run(run_id)["state"] == "succeeded"
    log_path = service.settings.logs_dir / f"{run_id}.log"
    line = b"x" * 99 + b"\n"
    with log_path.open("ab") as out:
        for _ in range(100):
            out.write(line * 10_000)  # 1 MB at a time: 100 MB in all
    size = log_path.stat().st_size
    assert size > 100_000_000

    gc.collect()
    before = _vm("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: measure the peak from here
    for params in ({}, {"follow": "true"}):
        received = 0
        with service.http.stream("GET", f"/runs/{run_id}/logs", params=params) as response:
            assert response.status_code == 200
            for chunk in response.iter_bytes():
                received += len(chunk)
        assert received == size, params
    peak = _vm("VmHWM")
    print(f"service RSS before {before / MIB:.0f} MiB, peak while reading {peak / MIB:.0f} MiB")
    assert peak - before < 50 * MIB


def test_follow_from_past_the_end_waits_then_ends_cleanly(service: RunningService) -> None:
    outcome: dict[str, object] = {}

    def follow(run_id: str, offset: int, key: str) -> None:
        try:
            with httpx.stream(
                "GET",
                f"{service.url}/runs/{run_id}/logs",
                params={"follow": "true", "offset": offset},
                timeout=120,
            ) as response:
                outcome[f"{key} status"] = response.status_code
                outcome[key] = response.read()
        except httpx.HTTPError as exc:  # an aborted stream
            outcome[key] = exc

    far = 2**50  # past the end of the log, and past what a file may hold here (ext4)
    with gated_run(service) as (run_id, gate):
        plain = service.http.get(f"/runs/{run_id}/logs", params={"offset": far})
        assert (plain.status_code, plain.content) == (200, b"")
        at_end = len(service.http.get(f"/runs/{run_id}/logs").content)
        followers = [
            threading.Thread(target=follow, args=(run_id, far, "far")),
            threading.Thread(target=follow, args=(run_id, at_end, "end")),
        ]
        for thread in followers:
            thread.start()
        wait_for(
            lambda: {"far status", "end status"} <= outcome.keys(),
            30,
            what="both follows answered",
        )
        assert all(thread.is_alive() for thread in followers), "a follow must wait for the run"
        gate.touch()
        for thread in followers:
            thread.join(timeout=180)
    assert not any(thread.is_alive() for thread in followers)
    assert service.http.get(f"/runs/{run_id}").json()["state"] == "succeeded"
    assert outcome["far status"] == 200
    assert outcome["far"] == b""
    assert outcome["end status"] == 200
    rest = outcome["end"]
    assert isinstance(rest, bytes), rest
    assert GOODBYE.encode() in rest
    assert b"run succeeded" in rest
