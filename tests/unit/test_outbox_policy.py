"""The outbox's retry policy (controller.services.outbox.RetryPolicy): exponential
backoff, jitter inside its window, and when a delivery is given up."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.services.outbox import RetryPolicy

DEFAULT = RetryPolicy()


def test_defaults_are_ten_tries_from_five_seconds_to_an_hour() -> None:
    assert (DEFAULT.max_attempts, DEFAULT.first_seconds, DEFAULT.cap_seconds) == (10, 5.0, 3600.0)


def test_the_window_doubles_until_the_cap() -> None:
    assert [DEFAULT.ceiling(n) for n in range(1, 12)] == [
        5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600,
    ]  # fmt: skip
    assert DEFAULT.ceiling(1000) == 3600


def test_the_first_retry_waits_the_first_delay() -> None:
    assert {DEFAULT.delay(1) for _ in range(20)} == {5.0}


@given(failed=st.integers(min_value=1, max_value=200), seed=st.integers())
def test_every_delay_is_inside_its_window(failed: int, seed: int) -> None:
    delay = DEFAULT.delay(failed, random.Random(seed))
    assert 5.0 <= delay <= min(3600.0, 5.0 * 2 ** (failed - 1))


def test_delays_are_spread_over_the_window() -> None:
    """Jitter: retries of many deliveries failing at once do not land together."""
    rng = random.Random(7)
    delays = [DEFAULT.delay(6, rng) for _ in range(2000)]
    assert min(delays) < 20  # the window is [5, 160]
    assert max(delays) > 145
    assert len({round(d, 3) for d in delays}) > 1900
    low = sum(d < 82.5 for d in delays)
    assert 850 < low < 1150  # uniform: about half below the middle


def test_a_small_policy_for_tests() -> None:
    quick = RetryPolicy(max_attempts=4, first_seconds=0.2, cap_seconds=0.5)
    assert [quick.ceiling(n) for n in (1, 2, 3, 4)] == [0.2, 0.4, 0.5, 0.5]
    assert all(0.2 <= quick.delay(3) <= 0.5 for _ in range(100))


def test_a_delivery_is_given_up_after_its_attempts() -> None:
    assert [DEFAULT.gives_up(n) for n in (1, 9, 10, 11)] == [False, False, True, True]
    assert RetryPolicy(max_attempts=1).gives_up(1)


@pytest.mark.parametrize("bad", [{"max_attempts": 0}, {"first_seconds": 0}, {"cap_seconds": -1}])
def test_nonsense_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**bad)  # type: ignore[arg-type]
