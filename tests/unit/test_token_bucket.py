"""The per-principal request rate (controller/services/quotas.py): a token bucket with
burst max(1, 2 * rate), refilled at rate per second, on a clock the tests move by hand."""

from __future__ import annotations

import pytest

from controller.domain.errors import TooManyRequests
from controller.services.quotas import RequestRates, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_allows_a_burst_of_twice_the_rate() -> None:
    bucket = TokenBucket(5, now=0.0)
    assert [bucket.take(0.0) for _ in range(10)] == [0.0] * 10
    assert bucket.take(0.0) == pytest.approx(0.2)  # one token comes back in 1/rate seconds


def test_the_burst_is_at_least_one_request() -> None:
    bucket = TokenBucket(0.1, now=0.0)
    assert bucket.burst == 1
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(10.0)
    assert bucket.take(5.0) == pytest.approx(5.0)
    assert bucket.take(10.0) == 0.0


def test_refill_is_at_the_rate_and_capped_at_the_burst() -> None:
    bucket = TokenBucket(2, now=0.0)
    for _ in range(4):
        assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) > 0
    assert bucket.take(0.5) == 0.0  # 0.5 s at 2/s is one token
    assert bucket.take(0.5) > 0
    # A long pause refills up to the burst (4), not beyond.
    assert [bucket.take(3600.0) for _ in range(4)] == [0.0] * 4
    assert bucket.take(3600.0) > 0


def test_refused_requests_take_nothing() -> None:
    bucket = TokenBucket(1, now=0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    for _ in range(100):
        assert bucket.take(0.5) == pytest.approx(0.5)
    assert bucket.take(1.0) == 0.0


def test_a_clock_going_backwards_refills_nothing() -> None:
    bucket = TokenBucket(1, now=10.0)
    bucket.take(10.0)
    bucket.take(10.0)
    assert bucket.take(5.0) > 0


def test_rates_are_per_principal_and_refusals_carry_retry_after() -> None:
    clock = Clock()
    rates = RequestRates(clock)
    rates.admit("a", 1)
    rates.admit("a", 1)
    with pytest.raises(TooManyRequests) as raised:
        rates.admit("a", 1)
    assert raised.value.retry_after == 1
    assert "requests_per_second" in raised.value.detail
    assert "'a'" in raised.value.detail
    rates.admit("b", 1)  # b's bucket is its own
    clock.now += 1.0
    rates.admit("a", 1)


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    clock = Clock()
    rates = RequestRates(clock)
    rates.admit("slow", 0.4)
    with pytest.raises(TooManyRequests) as raised:
        rates.admit("slow", 0.4)
    assert raised.value.retry_after == 3  # 2.5 s, rounded up
    assert TooManyRequests("x", retry_after=0.01).retry_after == 1


def test_zero_means_unlimited() -> None:
    rates = RequestRates(Clock())
    for _ in range(10_000):
        rates.admit("ci", 0)
