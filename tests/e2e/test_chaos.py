"""Crash safety: the service is SIGKILLed at random moments while local runs are queued,
launching, running and publishing, and restarted each time (issue 8).

The checks live in tests/support/chaos.py: every accepted run reached a final state and
succeeded, its outcome matches its publication, and no run was executed or pushed twice.
CI-sized here; ``bench/chaos.py --kills 200`` is the long version.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.chaos import run_chaos
from tests.support.prereqs import require_tools

pytestmark = pytest.mark.e2e

KILLS = int(os.environ.get("MLEXP_CHAOS_KILLS", "20"))


def test_random_kills_lose_nothing_and_run_nothing_twice(tmp_path: Path) -> None:
    require_tools("git", "bwrap")
    report = run_chaos(tmp_path, kills=KILLS, seed=7)
    print(report.summary())
    assert report.kills == KILLS
    assert len(report.runs) >= 2 * KILLS
    assert report.problems == [], report.summary()
    assert report.states == {"succeeded": len(report.runs)}
