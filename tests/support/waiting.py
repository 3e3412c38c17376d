"""Polling with a deadline: wait for a condition instead of sleeping for a guessed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold before the deadline (an AssertionError, so tests fail cleanly)."""


def wait_for(
    probe: Callable[[], T | None],
    timeout: float,
    *,
    what: str,
    interval: float = 0.05,
    max_interval: float = 1.0,
) -> T:
    """Call `probe` until it returns something truthy, and return that.

    Exceptions from the probe propagate (a probe that can fail transiently should catch what it
    expects). The interval grows gently up to `max_interval`, so short waits stay fast and long
    ones do not hammer the API server. On timeout the last value seen is part of the message.
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(min(interval, remaining))
        interval = min(interval * 1.5, max_interval)
