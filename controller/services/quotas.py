"""Per-principal request rate: a token bucket each, refilled at ``requests_per_second``.

A bucket holds up to ``burst = max(1, 2 * rate)`` tokens and starts full, so a
client that has been quiet may send a short burst; past it, requests are let
through at ``rate`` per second and the rest are refused with how long to wait.
Refused requests take nothing from the bucket. Time is passed in (a monotonic
clock by default), so the arithmetic is tested without sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from controller.domain.errors import TooManyRequests


class TokenBucket:
    def __init__(self, rate: float, now: float) -> None:
        if rate <= 0:
            raise ValueError("a token bucket needs a positive rate")
        self.rate = rate
        self.burst = max(1.0, 2.0 * rate)
        self._tokens = self.burst
        self._stamp = now

    def take(self, now: float) -> float:
        """Take one token: 0.0 if there was one, else the seconds until there will be."""
        # A clock that went backwards (it should not, being monotonic) refills nothing.
        elapsed = max(0.0, now - self._stamp)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


class RequestRates:
    """One bucket per principal name (bounded by the tokens file); thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def admit(self, name: str, rate: float) -> None:
        """Count one request of ``name``; raises :class:`TooManyRequests` past the rate.

        ``rate`` 0 means unlimited.
        """
        if rate <= 0:
            return
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(name)
            if bucket is None or bucket.rate != rate:
                bucket = self._buckets[name] = TokenBucket(rate, now)
            wait = bucket.take(now)
        if wait > 0:
            raise TooManyRequests(
                f"request rate limit reached: requests_per_second for {name!r} is {rate:g} "
                f"(bursts up to {bucket.burst:g}); retry after the Retry-After header's seconds",
                retry_after=wait,
            )
