"""Exec runs: the pod's runner.log is copied into the run's log exactly and within bounds.

Covers: bytes that are not UTF-8 and a log of several slices arrive byte for byte; a
restarted copy resumes where it was; no more than the run's ``log_max_bytes`` (and the
marker's slack) is copied, whatever the run's code appends to runner.log. The pod is
this host, as under kwok (whose exec runs the command here): the commands are real
``sh``; only the Kubernetes API call around them is left out.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import cast

import pytest

from controller import runner
from controller.adapters.kube import ExecResult, KubeApi
from controller.executors import Handle
from controller.executors.kube_exec import LOG_CAP_SLACK, LOG_COPY_BYTES, ExecExecutor

pytestmark = pytest.mark.integration


class HostExec:
    """``KubeApi.exec`` as kwok does it: the command runs on this host; output comes back
    decoded as text, as the exec channel delivers it."""

    def __init__(self) -> None:
        self.calls = 0

    def exec(
        self, namespace: str, pod: str, command: list[str], *, stdin: bytes | None = None
    ) -> ExecResult:
        self.calls += 1
        done = subprocess.run(command, input=stdin, capture_output=True, check=False)
        return ExecResult(
            done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"), 0
        )


def _run(tmp_path: Path, cap: int | None) -> tuple[ExecExecutor, HostExec, Handle, Path]:
    workdir = tmp_path / "pod-work" / "run-1"
    workdir.mkdir(parents=True)
    (workdir / runner.STATUS_FILE).write_text(json.dumps({"state": "succeeded"}))
    log = tmp_path / "logs" / "run-1.log"
    log.parent.mkdir()
    host = HostExec()
    executor = ExecExecutor(cast(KubeApi, host), work_root=str(tmp_path / "pod-work"))
    handle: Handle = {"kind": "exec", "namespace": "ns", "pod": "p-0", "workdir": str(workdir)}
    handle.update({"log": str(log), "pid": os.getpid()})
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
    assert host.calls >= 4  # three slices, and the status

    more = b"\xff\xfe more after a restart \xc3\n"
    with pod_log.open("ab") as out:
        out.write(more)
    assert executor.outcome(handle).state == "succeeded"
    executor.wait(handle)  # a second follower (after a restart) copies only what is new
    assert log.read_bytes() == first + more


def test_no_more_than_the_cap_is_copied(tmp_path: Path) -> None:
    cap = 100_000
    executor, _, handle, pod_log = _run(tmp_path, cap=cap)
    pod_log.write_bytes(b"x" * (3 * LOG_COPY_BYTES))  # as if the run's code wrote into it
    executor.wait(handle)
    copied = Path(str(handle["log"])).read_bytes()
    assert copied == b"x" * (cap + LOG_CAP_SLACK)
    executor.wait(handle)
    assert len(Path(str(handle["log"])).read_bytes()) == cap + LOG_CAP_SLACK
