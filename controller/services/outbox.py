"""The outbox: messages to outside systems (webhooks, MLflow), durable and retried.

``enqueue`` records a delivery in the store before it returns, so nothing is lost to a
crash or a restart; :meth:`Outbox.start` picks up whatever is still pending. A target
(``"<kind>:<id>"``, e.g. ``webhook:wh-1a2b``) gets its deliveries in the order they were
enqueued: the next waits until the one before is delivered or given up (head of line).
Different targets never wait for each other: each head is handed to a small pool of
workers, so a receiver that hangs occupies one worker (until its sender's timeout) and
its own target only.

A sender (one per kind, :meth:`Outbox.register`) makes one attempt and says how it went
(:class:`Attempt`). A failed attempt is tried again after an exponential backoff with
jitter (:class:`RetryPolicy`) unless it says ``retry=False`` or the attempts are used up;
then the delivery is ``failed``. Attempts are at least once: a delivery in flight when
the service stops is attempted again after the restart.

No loop polls: one scheduler thread sleeps until the next head is due, or until an
enqueue or a finished attempt wakes it.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from controller.adapters.store import DeliveryRow, Store

log = logging.getLogger("mlexp.outbox")

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
STATUSES = (PENDING, DELIVERED, FAILED)
# What an attempt's outcome is called for on_outcome and metrics.
OUTCOMES = ("delivered", "retried", "failed")
MAX_ERROR_CHARS = 500
MAX_TARGET_CHARS = 200
MAX_EVENT_FIELD_CHARS = 200


@dataclass(frozen=True)
class Delivery:
    """One recorded delivery. ``attempts``: made so far (before the one a sender is
    asked for; after it, in ``on_outcome``)."""

    delivery_id: str
    target: str
    event_id: str
    event_type: str
    payload: str
    attempts: int
    created_at: datetime


@dataclass(frozen=True)
class Attempt:
    """What a sender reports: ``ok``, or why not and whether trying again may help."""

    ok: bool
    status: int | None = None
    error: str | None = None
    retry: bool = True


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: after the n-th failed attempt the next one
    waits a random time in ``[first, min(cap, first * 2**(n-1))]`` seconds (so the first
    retry waits ``first``); after ``max_attempts`` attempts the delivery is given up."""

    max_attempts: int = 10
    first_seconds: float = 5.0
    cap_seconds: float = 3600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.first_seconds <= 0 or self.cap_seconds <= 0:
            raise ValueError("max_attempts, first_seconds and cap_seconds must be positive")

    def ceiling(self, failed_attempts: int) -> float:
        """The longest wait after ``failed_attempts`` failures (at least 1)."""
        exponent = min(max(failed_attempts, 1) - 1, 64)  # 2**64 s is past any cap
        grown: float = self.first_seconds * 2.0**exponent
        return max(min(self.first_seconds, self.cap_seconds), min(self.cap_seconds, grown))

    def delay(self, failed_attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the attempt after ``failed_attempts`` failures."""
        low = min(self.first_seconds, self.cap_seconds)
        return (rng or _RNG).uniform(low, self.ceiling(failed_attempts))

    def gives_up(self, attempts: int) -> bool:
        return attempts >= self.max_attempts


_RNG = random.SystemRandom()

Sender = Callable[[Delivery], Attempt]
OutcomeHook = Callable[[Delivery, str], None]


class PayloadTooLarge(ValueError):
    """A payload over the outbox's size cap; nothing was recorded."""


class Outbox:
    def __init__(
        self,
        store: Store,
        policy: RetryPolicy,
        *,
        workers: int = 8,
        max_payload_bytes: int = 256 * 1024,
        retention_days: float = 7.0,
    ) -> None:
        self._store = store
        self.policy = policy
        self._workers = max(1, workers)
        self._max_payload_bytes = max_payload_bytes
        self._retention_seconds = retention_days * 86400
        self._senders: dict[str, tuple[Sender, OutcomeHook | None]] = {}
        self._cond = threading.Condition()
        self._busy: set[str] = set()  # targets whose head a worker has
        self._wake = False
        self._stopping = False
        self._unknown_kinds: set[str] = set()
        # Outcomes are written holding this; stop() takes it, so none is written after.
        self._recording = threading.Lock()
        self._stopped = False
        self._queue: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def register(self, kind: str, sender: Sender, on_outcome: OutcomeHook | None = None) -> None:
        """Who sends deliveries to ``"<kind>:..."`` targets (register before :meth:`start`)."""
        with self._cond:
            self._senders[kind] = (sender, on_outcome)
            self._wake = True
            self._cond.notify()

    def enqueue(self, target: str, event_id: str, event_type: str, payload: str) -> str:
        """Record a delivery (durable once this returns) and return its id; never sends."""
        if ":" not in target or len(target) > MAX_TARGET_CHARS:
            raise ValueError("a target is '<kind>:<id>' of at most 200 characters")
        if len(event_id) > MAX_EVENT_FIELD_CHARS or len(event_type) > MAX_EVENT_FIELD_CHARS:
            raise ValueError("event id and type are at most 200 characters")
        if len(payload.encode()) > self._max_payload_bytes:
            raise PayloadTooLarge(
                f"a delivery's payload is at most {self._max_payload_bytes} bytes"
            )
        now = time.time()
        delivery_id = f"dl-{secrets.token_hex(8)}"
        self._store.add_delivery(
            DeliveryRow(
                delivery_id=delivery_id,
                target=target,
                event_id=event_id,
                event_type=event_type,
                payload=payload,
                status=PENDING,
                attempts=0,
                next_attempt_at=now,
                last_status=None,
                last_error=None,
                created_at=now,
                finished_at=None,
            )
        )
        self._poke()
        return delivery_id

    def drop(self, target: str) -> int:
        """Forget every delivery of ``target`` (pending ones are never sent); how many."""
        dropped = self._store.delete_deliveries(target)
        self._poke()
        return dropped

    def start(self) -> None:
        """Purge old finished rows, then send what is pending (after a restart too)."""
        if self._threads:
            return
        if self._retention_seconds > 0:
            purged = self._store.purge_deliveries(
                finished_before=time.time() - self._retention_seconds
            )
            if purged:
                log.info("purged old deliveries", extra={"count": purged})
        for n in range(self._workers):
            worker = threading.Thread(target=self._work_loop, name=f"mlexp-outbox-{n}", daemon=True)
            worker.start()
            self._threads.append(worker)
        scheduler = threading.Thread(
            target=self._schedule_loop, name="mlexp-outbox-scheduler", daemon=True
        )
        scheduler.start()
        self._threads.append(scheduler)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop scheduling; wait up to ``timeout`` for attempts in flight. An attempt still
        going after that is not recorded (its delivery stays pending, tried after a
        restart)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for _ in range(self._workers):
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._recording:
            self._stopped = True
        self._threads = []

    # -- scheduling -------------------------------------------------------------

    def _poke(self) -> None:
        with self._cond:
            self._wake = True
            self._cond.notify()

    def _schedule_loop(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                self._wake = False
            try:
                heads = self._store.pending_heads()
            except Exception:  # the store is closing, or a passing error: try again soon
                log.warning("cannot read pending deliveries", exc_info=True)
                heads = []
                retry_at: float | None = time.time() + 1.0
            else:
                retry_at = None
            now = time.time()
            next_due = retry_at
            with self._cond:
                if self._stopping:
                    return
                for head in heads:
                    if head.target in self._busy or not self._known(head.target):
                        continue
                    if head.next_attempt_at <= now:
                        self._busy.add(head.target)
                        self._queue.put(_as_delivery(head))
                    elif next_due is None or head.next_attempt_at < next_due:
                        next_due = head.next_attempt_at
                if self._wake or self._stopping:
                    continue
                self._cond.wait(None if next_due is None else max(0.0, next_due - time.time()))

    def _known(self, target: str) -> bool:
        kind = target.split(":", 1)[0]
        if kind in self._senders:
            return True
        if kind not in self._unknown_kinds:
            self._unknown_kinds.add(kind)
            log.warning("deliveries wait for a sender that is not set up", extra={"kind": kind})
        return False

    # -- attempts ---------------------------------------------------------------

    def _work_loop(self) -> None:
        while True:
            delivery = self._queue.get()
            if delivery is None:
                return
            try:
                self._attempt(delivery)
            except Exception:
                log.exception("a delivery attempt could not be recorded")
            finally:
                with self._cond:
                    self._busy.discard(delivery.target)
                    self._wake = True
                    self._cond.notify()

    def _attempt(self, delivery: Delivery) -> None:
        sender, on_outcome = self._senders[delivery.target.split(":", 1)[0]]
        try:
            attempt = sender(delivery)
        except Exception as exc:  # a sender's bug must not stop the outbox
            log.exception("a sender failed", extra={"target": delivery.target})
            attempt = Attempt(ok=False, error=f"sender error: {type(exc).__name__}")
        attempts = delivery.attempts + 1
        now = time.time()
        if attempt.ok:
            outcome, status, next_at, finished = "delivered", DELIVERED, now, now
        elif attempt.retry and not self.policy.gives_up(attempts):
            outcome, status, finished = "retried", PENDING, None
            next_at = now + self.policy.delay(attempts)
        else:
            outcome, status, next_at, finished = "failed", FAILED, now, now
        error = None if attempt.ok else (attempt.error or "failed")[:MAX_ERROR_CHARS]
        with self._recording:
            if self._stopped:
                return
            recorded = self._store.record_attempt(
                delivery.delivery_id,
                status=status,
                attempts=attempts,
                next_attempt_at=next_at,
                last_status=attempt.status,
                last_error=error,
                finished_at=finished,
            )
        if not recorded:  # dropped while it was being sent
            return
        log.info(
            "delivery attempt",
            extra={
                "target": delivery.target,
                "delivery_id": delivery.delivery_id,
                "outcome": outcome,
                "attempts": attempts,
                "status_code": attempt.status,
            },
        )
        if on_outcome is not None:
            done = dataclasses.replace(delivery, attempts=attempts)
            try:
                on_outcome(done, outcome)
            except Exception:
                log.exception("an outcome hook failed", extra={"target": delivery.target})


def _as_delivery(row: DeliveryRow) -> Delivery:
    return Delivery(
        delivery_id=row.delivery_id,
        target=row.target,
        event_id=row.event_id,
        event_type=row.event_type,
        payload=row.payload,
        attempts=row.attempts,
        created_at=datetime.fromtimestamp(row.created_at, UTC),
    )
