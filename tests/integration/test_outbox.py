"""The outbox (controller.services.outbox) on a real SQLite store, with senders that fail
on purpose: order per target, retries, giving up, other targets never waiting, a new
outbox on the same store picking up what was pending, the payload cap and the purge."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.adapters.store import Store
from controller.services.outbox import Attempt, Delivery, Outbox, PayloadTooLarge, RetryPolicy
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

QUICK = RetryPolicy(max_attempts=3, first_seconds=0.05, cap_seconds=0.1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "state.db")
    yield opened
    opened.close()


def statuses(store: Store, target: str) -> list[tuple[str, str, int]]:
    return [(r.payload, r.status, r.attempts) for r in reversed(store.list_deliveries(target))]


def test_order_retries_and_giving_up(store: Store) -> None:
    seen: list[tuple[str, int]] = []
    outcomes: list[tuple[str, str, int]] = []

    def send(delivery: Delivery) -> Attempt:
        seen.append((delivery.payload, delivery.attempts))
        if delivery.payload == "flaky" and delivery.attempts < 1:
            return Attempt(ok=False, status=500, error="x" * 5000)
        if delivery.payload == "doomed":
            return Attempt(ok=False, error="no")
        if delivery.payload == "refused":
            return Attempt(ok=False, error="not allowed", retry=False)
        if delivery.payload == "buggy":
            raise RuntimeError("a bug")
        return Attempt(ok=True, status=200)

    outbox = Outbox(store, QUICK, workers=2)
    outbox.register("t", send, lambda d, o: outcomes.append((d.payload, o, d.attempts)))
    ids = [outbox.enqueue("t:1", f"e{i}", "kind", p)
           for i, p in enumerate(["flaky", "doomed", "refused", "buggy", "last"])]  # fmt: skip
    assert len(set(ids)) == 5
    assert [r.status for r in store.list_deliveries("t:1")] == ["pending"] * 5  # before start
    outbox.start()
    try:
        wait_for(lambda: ("last", "delivered", 1) in outcomes, 10, what="the last delivery")
    finally:
        outbox.stop()
    # Head of line: each delivery ended before the next was tried.
    assert [p for p, _ in seen] == ["flaky", "flaky", "doomed", "doomed", "doomed", "refused",
                                    "buggy", "buggy", "buggy", "last"]  # fmt: skip
    assert statuses(store, "t:1") == [
        ("flaky", "delivered", 2),
        ("doomed", "failed", 3),
        ("refused", "failed", 1),
        ("buggy", "failed", 3),
        ("last", "delivered", 1),
    ]
    first = store.list_deliveries("t:1")[-1]
    assert first.last_error is None  # delivered at last
    assert first.last_status == 200
    buggy = store.get_delivery(ids[3])
    assert buggy is not None
    assert buggy.last_error == "sender error: RuntimeError"
    assert [o for _, o, _ in outcomes].count("retried") == 1 + 2 + 2


def test_a_stuck_target_holds_up_no_other(store: Store) -> None:
    release = threading.Event()
    done: dict[str, float] = {}

    def send(delivery: Delivery) -> Attempt:
        if delivery.target == "t:stuck":
            release.wait(10)
        done.setdefault(delivery.payload, time.monotonic())
        return Attempt(ok=True)

    outbox = Outbox(store, QUICK, workers=2)
    outbox.register("t", send)
    outbox.start()
    try:
        outbox.enqueue("t:stuck", "e1", "k", "stuck-1")
        outbox.enqueue("t:stuck", "e2", "k", "stuck-2")
        asked = time.monotonic()
        for n in range(5):
            outbox.enqueue(f"t:free-{n}", "e", "k", f"free-{n}")
        wait_for(lambda: len(done) == 5, 5, what="the free targets")
        assert max(done.values()) - asked < 2
        assert "stuck-2" not in done
        release.set()
        wait_for(lambda: "stuck-2" in done, 5, what="the stuck target to go on")
    finally:
        release.set()
        outbox.stop()


def test_a_new_outbox_sends_what_was_pending(store: Store) -> None:
    first = Outbox(store, QUICK)
    first.register("t", lambda d: Attempt(ok=False, error="down"))
    for n in range(3):
        first.enqueue("t:1", f"e{n}", "k", f"p{n}")
    first.enqueue("u:1", "e", "k", "no sender yet")  # waits for one
    first.stop()  # never started: nothing was sent

    sent: list[str] = []
    second = Outbox(store, QUICK)
    second.register("t", lambda d: sent.append(d.payload) or Attempt(ok=True))
    second.start()
    try:
        wait_for(lambda: len(sent) == 3, 5, what="the pending deliveries")
    finally:
        second.stop()
    assert sent == ["p0", "p1", "p2"]
    assert [r.status for r in store.list_deliveries("u:1")] == ["pending"]


def test_bounds_drop_and_purge(store: Store) -> None:
    outbox = Outbox(store, QUICK, max_payload_bytes=1024, retention_days=1)
    with pytest.raises(PayloadTooLarge):
        outbox.enqueue("t:1", "e", "k", "é" * 600)
    with pytest.raises(ValueError, match="target"):
        outbox.enqueue("no-kind", "e", "k", "{}")
    assert store.list_deliveries("t:1") == []
    outbox.enqueue("t:1", "e", "k", "{}")
    assert outbox.drop("t:1") == 1
    assert store.list_deliveries("t:1") == []

    outbox.register("t", lambda d: Attempt(ok=True))
    outbox.start()
    outbox.enqueue("t:2", "e", "k", "{}")
    wait_for(lambda: statuses(store, "t:2") == [("{}", "delivered", 1)], 5, what="delivery")
    outbox.stop()
    assert store.purge_deliveries(finished_before=time.time() - 3600) == 0
    assert store.purge_deliveries(finished_before=time.time() + 1) == 1
