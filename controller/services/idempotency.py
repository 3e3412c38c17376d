"""Idempotency keys: a retried request gets the first answer and creates nothing more.

A client sends ``Idempotency-Key: <key>`` with a request that creates something. The
first request with a key *claims* it (a row in the store: principal, key, the request's
fingerprint, the time); when it succeeds, its answer (status and body) is recorded with
the claim. For ``ttl_seconds`` after the claim, a request of the same principal with that
key:

* and the same fingerprint gets the recorded answer, and nothing runs again;
* and another fingerprint is refused (422): a key names one request, not a slot;
* while the first is still in progress, is told so (:attr:`Claim.IN_PROGRESS`; the API
  waits a little and asks again).

Keys are per principal: another principal's identical key is another key. Only
successes are remembered: a request that fails releases its claim, so a retry runs
again. A claim without an answer left by a stopped service is released when the next
one starts — the one window in which a retry may repeat work is a stop between the
work and the recording of its answer.
"""

from __future__ import annotations

import enum
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from controller.adapters.store import Store
from controller.domain.errors import InvalidInput

log = logging.getLogger("mlexp.idempotency")

MAX_KEY_LENGTH = 255
_KEY = re.compile(rf"[\x20-\x7e]{{1,{MAX_KEY_LENGTH}}}")
# Expired records are deleted at most this often (and each key's own on its next use).
PURGE_INTERVAL_SECONDS = 600.0


def check_key(value: str) -> str:
    """The key as sent, if it is 1 to 255 printable ASCII characters (else 422)."""
    if not _KEY.fullmatch(value):
        raise InvalidInput(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters "
            f"(got {len(value)} characters)"
        )
    return value


@dataclass(frozen=True)
class Answer:
    """The first answer given for a key: what every replay returns."""

    status: int
    body: bytes


class Claim(enum.Enum):
    NEW = "new"  # the caller holds the key: do the work, then record or release
    IN_PROGRESS = "in progress"  # another request holds it and has no answer yet


class IdempotencyService:
    def __init__(
        self, store: Store, *, ttl_seconds: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.ttl = ttl_seconds
        self.clock = clock
        now = clock()
        # One service process per data dir: unanswered claims are a previous process's.
        released = store.purge_idempotency_keys(expired_before=now - ttl_seconds, unanswered=True)
        if released:
            log.info("idempotency keys released at start", extra={"count": released})
        self._purged_at = now

    def claim(self, owner: str, key: str, fingerprint: str) -> Claim | Answer:
        now = self.clock()
        if now - self._purged_at >= PURGE_INTERVAL_SECONDS:
            self._purged_at = now
            self.store.purge_idempotency_keys(expired_before=now - self.ttl)
        record = self.store.claim_idempotency_key(
            owner, key, fingerprint, now=now, expired_before=now - self.ttl
        )
        if record is None:
            return Claim.NEW
        if record.fingerprint != fingerprint:
            raise InvalidInput(
                "this Idempotency-Key was already used for a different request (another "
                "endpoint or body); use a new key for a new request"
            )
        if record.status is None or record.response is None:
            return Claim.IN_PROGRESS
        return Answer(record.status, record.response)

    def record(self, owner: str, key: str, answer: Answer) -> None:
        self.store.record_idempotent_answer(owner, key, answer.status, answer.body)

    def release(self, owner: str, key: str) -> None:
        self.store.release_idempotency_key(owner, key)
