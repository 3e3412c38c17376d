"""The SQLite store's concurrency contract: look-ups by key never wait for a writer (its
lock, its open transaction or its checkpoint), yet see every committed write at once, from
any thread; a run recorded without an Idempotency-Key is one statement; checkpoints keep
the WAL bounded though SQLite's own (inside a commit, under the write lock) rarely runs.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.adapters.store import CHECKPOINT_EVERY_COMMITS, Store
from controller.domain.models import Experiment, Run, RunState, utcnow

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "state.db")
    opened.add_experiment(
        Experiment(
            experiment_id="exp-1",
            owner="alice",
            git_url="/repos/exp-1.git",
            branch="main",
            commit="0" * 40,
            dvc_remote="storage",
            dvc_url="/remotes/exp-1",
            stages=["train"],
            metrics_files=[],
            params={"x": 1},
            created_at=utcnow(),
        )
    )
    yield opened
    opened.close()


def queued(run_id: str) -> Run:
    return Run(
        run_id=run_id,
        experiment_id="exp-1",
        owner="alice",
        resource="local",
        namespace=None,
        params={"x": 2},
        state=RunState.QUEUED,
        created_at=utcnow(),
    )


def test_look_ups_see_each_commit_at_once_from_any_thread(store: Store) -> None:
    seen: list[tuple[RunState | None, RunState | None]] = []

    def write_then_read(n: int) -> None:
        run_id = f"run-{n}"
        store.add_run(queued(run_id))
        first = store.get_run(run_id)
        store.transition(run_id, RunState.RUNNING)
        second = store.get_run(run_id)
        seen.append((first.state if first else None, second.state if second else None))

    threads = [threading.Thread(target=write_then_read, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert seen == [(RunState.QUEUED, RunState.RUNNING)] * 8
    experiment = store.get_experiment("exp-1")
    assert experiment is not None
    assert experiment.params == {"x": 1}
    assert store.get_run("run-none") is None
    assert store.get_experiment("exp-none") is None


def test_a_look_up_does_not_wait_for_an_open_write_transaction(
    store: Store, tmp_path: Path
) -> None:
    """Neither the store's own (its write lock held by a thread mid-transaction) nor
    another connection's: the look-up answers at once, with the last committed state."""
    store.add_run(queued("run-1"))
    inside = threading.Event()
    release = threading.Event()

    def hold_the_write_lock() -> None:
        with store._tx() as db:  # a write transaction of the store's, held open
            db.execute("UPDATE runs SET state = 'running' WHERE run_id = 'run-1'")
            inside.set()
            release.wait(timeout=30)

    holder = threading.Thread(target=hold_the_write_lock)
    holder.start()
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    try:
        assert inside.wait(timeout=30)
        began = time.monotonic()
        run = store.get_run("run-1")
        assert time.monotonic() - began < 1.0
        assert run is not None
        assert run.state is RunState.QUEUED
        release.set()
        holder.join(timeout=30)

        other.execute("BEGIN IMMEDIATE")
        other.execute("DELETE FROM runs WHERE run_id = 'run-1'")
        began = time.monotonic()
        assert store.get_run("run-1") is not None
        assert time.monotonic() - began < 1.0
        other.execute("ROLLBACK")
    finally:
        release.set()
        holder.join(timeout=30)
        other.close()


def test_checkpoints_keep_the_wal_bounded(store: Store, tmp_path: Path) -> None:
    """SQLite's own checkpoint is only a backstop (20,000 pages, some 80 MB); ours, every
    200 commits, keep the WAL at a few megabytes. These 2,400 commits leave a WAL of about
    68 MB without our checkpoints and about 11 MB with them on an idle machine; the bound
    is half the former, since a checkpoint thread that lags on a loaded machine lets the
    WAL grow past the latter (13.5 MB was seen) -- the WAL file never shrinks."""
    wal = tmp_path / "state.db-wal"
    for n in range(CHECKPOINT_EVERY_COMMITS * 12):
        store.add_run(queued(f"run-{n}"))
    assert wal.stat().st_size < 34 * 2**20
    assert store.get_run(f"run-{CHECKPOINT_EVERY_COMMITS * 12 - 1}") is not None
    checked = sqlite3.connect(tmp_path / "state.db")
    try:
        assert checked.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (count,) = checked.execute("SELECT COUNT(*) FROM runs").fetchone()
        assert count == CHECKPOINT_EVERY_COMMITS * 12
    finally:
        checked.close()


def test_a_run_with_an_idempotent_answer_is_recorded_with_it(store: Store) -> None:
    assert store.claim_idempotency_key("alice", "k", "fp", now=1.0, expired_before=0.0) is None
    store.add_run(queued("run-1"), answer=("alice", "k", 202, b'{"run_id": "run-1"}'))
    record = store.claim_idempotency_key("alice", "k", "fp", now=2.0, expired_before=0.0)
    assert record is not None
    assert (record.status, record.response) == (202, b'{"run_id": "run-1"}')
    with pytest.raises(sqlite3.IntegrityError):
        store.add_run(queued("run-1"))  # one statement, refused whole
    assert store.get_run("run-1") is not None
