"""The state store: experiments and runs in SQLite (WAL) under the data dir.

One connection guarded by a lock for writes: SQLite serialises writers anyway, and
the service's write rate (a few per run) is far below what one connection does.
Look-ups by key (a run, an experiment) go through a second, read-only connection
with a lock of its own: in WAL mode a reader never waits for a writer's transaction
(nor its commit or checkpoint), so a look-up takes tens of microseconds whatever the
writers do, and the API answers ``GET /runs/{id}`` on its event loop without a hop
to a worker thread. Both see every committed transaction. Checkpoints (the WAL copied
into the database, with fsyncs) run in a thread of the store's, on a third connection,
every 200 commits: neither writers nor the request that committed wait for them.
Executor bookkeeping (a local run's pid, a Job's name) lives in the run's
``handle`` column and never leaves the service.
Idempotency keys (:mod:`controller.services.idempotency`) keep, per principal and
key, the first request's fingerprint and, once it succeeded, its answer.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from controller.domain.models import Experiment, Run, RunResult, RunState, utcnow
from controller.domain.sweeps import Sweep, SweepState

log = logging.getLogger("mlexp.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    experiment_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    experiment_id TEXT NOT NULL REFERENCES experiments(experiment_id),
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    body TEXT NOT NULL,
    handle TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_experiment ON runs(experiment_id, created_at);
CREATE INDEX IF NOT EXISTS runs_by_state ON runs(state, created_at);
CREATE INDEX IF NOT EXISTS runs_by_owner ON runs(owner, state);
CREATE TABLE IF NOT EXISTS resources (
    namespace TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_at TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (namespace, kind, name)
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at REAL NOT NULL,
    status INTEGER,
    response BLOB,
    PRIMARY KEY (owner, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_by_age ON idempotency_keys(created_at);
CREATE TABLE IF NOT EXISTS run_data (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (run_id, kind)
);
"""
# Columns added after a table was first made: (table, column, declaration). A database of
# an earlier version gets them at start.
ADDED_COLUMNS = (("runs", "sweep_id", "TEXT"),)
LATE_INDEXES = "CREATE INDEX IF NOT EXISTS runs_by_sweep ON runs(sweep_id, created_at);"
# Sweeps (controller.domain.sweeps.Sweep); their trials are runs with their sweep_id.
SWEEPS_SCHEMA = """
CREATE TABLE IF NOT EXISTS sweeps (
    sweep_id TEXT PRIMARY KEY,
    experiment_id TEXT NOT NULL REFERENCES experiments(experiment_id),
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sweeps_by_experiment ON sweeps(experiment_id, created_at);
CREATE INDEX IF NOT EXISTS sweeps_by_state ON sweeps(state, created_at);
"""
# The outbox (controller.services.outbox): what is to be sent to an outside system, kept
# before it is sent. ``seq`` orders a target's deliveries; times are Unix seconds.
DELIVERIES_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY,
    delivery_id TEXT NOT NULL UNIQUE,
    target TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS deliveries_by_target ON deliveries(target, seq);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries(status, target, seq);
"""
# Webhook subscriptions (controller.services.notifications); their signing secrets are
# kept in files (controller.adapters.secrets), never in this database.
WEBHOOKS_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhooks (
    webhook_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS webhooks_by_owner ON webhooks(owner, created_at);
"""


# A run's insert writes 5 or 6 pages to the WAL (the table and its indexes): a checkpoint
# every 200 commits keeps the WAL near SQLite's default of 1,000 pages.
CHECKPOINT_EVERY_COMMITS = 200
BACKSTOP_CHECKPOINT_PAGES = 20_000

IdempotentAnswer = tuple[str, str, int, bytes]
"""(owner, Idempotency-Key, HTTP status, response body) of a request's answer."""


class IdempotencyRecord(NamedTuple):
    """A claimed key: the request's fingerprint, and its answer once it has one."""

    fingerprint: str
    status: int | None
    response: bytes | None


class DeliveryRow(NamedTuple):
    """A row of the outbox (times are Unix seconds)."""

    delivery_id: str
    target: str
    event_id: str
    event_type: str
    payload: str
    status: str  # pending, delivered, failed
    attempts: int
    next_attempt_at: float
    last_status: int | None
    last_error: str | None
    created_at: float
    finished_at: float | None


_DELIVERY_COLUMNS = (
    "delivery_id, target, event_id, event_type, payload, status, attempts, next_attempt_at,"
    " last_status, last_error, created_at, finished_at"
)


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        # Checkpoints are ours (below); SQLite's own is only a backstop for a WAL far larger.
        self._db.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_CHECKPOINT_PAGES}")
        self._db.executescript(SCHEMA)
        for table, column, declaration in ADDED_COLUMNS:
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        self._db.executescript(LATE_INDEXES)
        self._db.executescript(SWEEPS_SCHEMA)
        self._db.executescript(DELIVERIES_SCHEMA)
        self._db.executescript(WEBHOOKS_SCHEMA)
        self._lock = threading.Lock()
        # After the schema exists: the reader opens the same file (WAL is persistent).
        self._reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._reader.execute("PRAGMA query_only=ON")
        self._read_lock = threading.Lock()
        self._checkpointer = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._commits = 0
        self._checkpoint_due = threading.Event()
        self._checkpoints: threading.Thread | None = None  # started at the first one due
        self._closing = False

    def close(self) -> None:
        with self._lock:
            self._closing = True
            checkpoints = self._checkpoints
        self._checkpoint_due.set()
        if checkpoints is not None:
            checkpoints.join(timeout=30)
        self._checkpointer.close()
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._db.close()

    def _committed(self) -> bool:
        """Count a commit (the write lock held); True when a checkpoint is due."""
        self._commits += 1
        if self._commits < CHECKPOINT_EVERY_COMMITS:
            return False
        self._commits = 0
        return True

    def _checkpoint(self) -> None:
        """Have the WAL copied into the database, by a thread of the store's own.

        SQLite's automatic checkpoint would run inside the committing transaction, with
        its fsyncs (milliseconds, tens under I/O load), while every other writer waits
        for the lock, and the request that committed waits too. A passive checkpoint on
        a connection of its own lets writers and readers go on meanwhile.
        """
        with self._lock:
            if self._closing:
                return
            if self._checkpoints is None:
                self._checkpoints = threading.Thread(
                    target=self._checkpoint_loop, name="mlexp-store-checkpoint", daemon=True
                )
                self._checkpoints.start()
        self._checkpoint_due.set()

    def _checkpoint_loop(self) -> None:
        while True:
            self._checkpoint_due.wait()
            self._checkpoint_due.clear()
            if self._closing:
                return
            try:
                self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                # The WAL starts over only once a checkpoint has copied all of it, and
                # commits may have come meanwhile: the frames they added are copied with
                # writers held off (a short wait; without it the WAL would only grow).
                with self._lock:
                    self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:
                # The backstop checkpoint still bounds the WAL; the next one may succeed.
                log.warning("checkpoint failed", exc_info=True)

    def _lookup(self, query: str, key: tuple[object, ...]) -> tuple[object, ...] | None:
        """One row by key on the reader. ``fetchall`` steps the statement to its end, which
        ends its read transaction at once (an open one would pin the WAL)."""
        with self._read_lock:
            rows = self._reader.execute(query, key).fetchall()
        return tuple(rows[0]) if rows else None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            due = self._committed()
        if due:
            self._checkpoint()

    # -- experiments -------------------------------------------------------

    def add_experiment(self, exp: Experiment) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO experiments VALUES (?, ?, ?, ?)",
                (exp.experiment_id, exp.owner, exp.created_at.isoformat(), exp.model_dump_json()),
            )

    def get_experiment(self, experiment_id: str) -> Experiment | None:
        row = self._lookup("SELECT body FROM experiments WHERE experiment_id = ?", (experiment_id,))
        return Experiment.model_validate_json(str(row[0])) if row else None

    def list_experiments(
        self, *, owner: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Experiment]:
        query = "SELECT body FROM experiments"
        args: list[object] = []
        if owner is not None:
            query += " WHERE owner = ?"
            args.append(owner)
        query += " ORDER BY created_at DESC, experiment_id LIMIT ? OFFSET ?"
        args += [limit, offset]
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [Experiment.model_validate_json(r[0]) for r in rows]

    # -- runs --------------------------------------------------------------

    def add_run(self, run: Run, *, answer: IdempotentAnswer | None = None) -> None:
        """Record ``run``; with ``answer`` (owner, Idempotency-Key, status, body), record the
        key's answer in the same transaction."""
        if answer is None:
            # One statement is a transaction of its own: no BEGIN and COMMIT round trips
            # (each a wait for the GIL under load, with the lock held).
            with self._lock:
                self._insert_run(self._db, run, None)
                due = self._committed()
            if due:
                self._checkpoint()
            return
        with self._tx() as db:
            self._insert_run(db, run, answer)

    @staticmethod
    def _insert_run(db: sqlite3.Connection, run: Run, answer: IdempotentAnswer | None) -> None:
        if answer is not None:
            owner, key, status, body = answer
            db.execute(
                "UPDATE idempotency_keys SET status = ?, response = ?"
                " WHERE owner = ? AND key = ? AND status IS NULL",
                (status, body, owner, key),
            )
        db.execute(
            "INSERT INTO runs (run_id, experiment_id, owner, state, created_at, body, sweep_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                run.run_id,
                run.experiment_id,
                run.owner,
                run.state.value,
                run.created_at.isoformat(),
                run.model_dump_json(),
                run.sweep_id,
            ),
        )

    def add_run_within(
        self, run: Run, *, max_active: int, answer: IdempotentAnswer | None = None
    ) -> int:
        """Add ``run`` unless its owner already has ``max_active`` queued or running runs.

        Returns how many they had before; the run was added if that is below the limit.
        Count and insert are one transaction, so concurrent submits cannot overshoot.
        """
        active = (RunState.QUEUED.value, RunState.RUNNING.value)
        with self._tx() as db:
            (count,) = db.execute(
                "SELECT COUNT(*) FROM runs WHERE owner = ? AND state IN (?, ?)",
                (run.owner, *active),
            ).fetchone()
            if count < max_active:
                self._insert_run(db, run, answer)
        return int(count)

    def get_run(self, run_id: str) -> Run | None:
        row = self._lookup("SELECT body FROM runs WHERE run_id = ?", (run_id,))
        return Run.model_validate_json(str(row[0])) if row else None

    def list_runs(
        self,
        *,
        experiment_id: str | None = None,
        states: list[RunState] | None = None,
        owner: str | None = None,
        sweep_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Run]:
        clauses: list[str] = []
        args: list[object] = []
        if experiment_id is not None:
            clauses.append("experiment_id = ?")
            args.append(experiment_id)
        if sweep_id is not None:
            clauses.append("sweep_id = ?")
            args.append(sweep_id)
        if states:
            clauses.append(f"state IN ({', '.join('?' * len(states))})")
            args += [s.value for s in states]
        if owner is not None:
            clauses.append("owner = ?")
            args.append(owner)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT body FROM runs{where} ORDER BY created_at DESC, run_id LIMIT ? OFFSET ?"  # noqa: S608 - clauses are fixed strings
        with self._lock:
            rows = self._db.execute(query, [*args, limit, offset]).fetchall()
        return [Run.model_validate_json(r[0]) for r in rows]

    def count_runs_by_state_and_resource(self) -> dict[tuple[str, str], int]:
        """How many runs there are per (state, resource kind): ``local``, ``job``, ``sts``,
        ``deploy`` (a workload's name is left out). One grouped scan, for metrics scrapes."""
        query = (
            "SELECT state, CASE WHEN instr(r, '/') > 0 THEN substr(r, 1, instr(r, '/') - 1)"
            " ELSE r END AS kind, COUNT(*)"
            " FROM (SELECT state, json_extract(body, '$.resource') AS r FROM runs)"
            " GROUP BY state, kind"
        )
        with self._read_lock:
            rows = self._reader.execute(query).fetchall()
        return {(str(state), str(kind)): int(count) for state, kind, count in rows}

    def transition(
        self,
        run_id: str,
        state: RunState,
        *,
        reason: str | None = None,
        result: RunResult | None = None,
        only_from: tuple[RunState, ...] | None = None,
    ) -> Run | None:
        """Move a run to ``state``; returns the new record, or None if ``only_from`` refused it.

        A terminal state is final: no transition leaves it.
        """
        changed = self.change_state(
            run_id, state, reason=reason, result=result, only_from=only_from
        )
        return changed[0] if changed else None

    def change_state(
        self,
        run_id: str,
        state: RunState,
        *,
        reason: str | None = None,
        result: RunResult | None = None,
        only_from: tuple[RunState, ...] | None = None,
    ) -> tuple[Run, RunState] | None:
        """:meth:`transition`, also returning the state the run had before (read in the
        same transaction, so no other change can come between)."""
        with self._tx() as db:
            row = db.execute("SELECT body FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                return None
            run = Run.model_validate_json(row[0])
            if run.state.terminal or (only_from is not None and run.state not in only_from):
                return None
            now = utcnow()
            changes: dict[str, object] = {"state": state, "reason": reason}
            if state is RunState.RUNNING and run.started_at is None:
                changes["started_at"] = now
            if state.terminal:
                changes["finished_at"] = now
            if result is not None:
                changes["result"] = result
            updated = run.model_copy(update=changes)
            db.execute(
                "UPDATE runs SET state = ?, body = ? WHERE run_id = ?",
                (state.value, updated.model_dump_json(), run_id),
            )
        return updated, run.state

    def request_cancel(self, run_id: str) -> Run | None:
        """Mark an active run ``cancel_requested``; None if it has ended (or does not exist)."""
        with self._tx() as db:
            row = db.execute("SELECT body FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                return None
            run = Run.model_validate_json(row[0])
            if run.state.terminal:
                return None
            if run.cancel_requested:
                return run
            updated = run.model_copy(update={"cancel_requested": True})
            db.execute(
                "UPDATE runs SET body = ? WHERE run_id = ?", (updated.model_dump_json(), run_id)
            )
        return updated

    def put_run_data(self, run_id: str, kind: str, body: str) -> None:
        """Keep a document of a run's (its plots' rows…), replacing one of the same kind."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO run_data VALUES (?, ?, ?) ON CONFLICT(run_id, kind)"
                " DO UPDATE SET body = excluded.body",
                (run_id, kind, body),
            )

    def get_run_data(self, run_id: str, kind: str) -> str | None:
        row = self._lookup(
            "SELECT body FROM run_data WHERE run_id = ? AND kind = ?", (run_id, kind)
        )
        return str(row[0]) if row else None

    # -- provisioned resources -----------------------------------------------

    def put_resource(self, namespace: str, kind: str, name: str, owner: str, body: str) -> None:
        """Insert or replace (posting the same spec again is an update, not a duplicate)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO resources VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(namespace, kind, name)"
                " DO UPDATE SET body = excluded.body",
                (namespace, kind, name, owner, utcnow().isoformat(), body),
            )

    def get_resource(self, namespace: str, kind: str, name: str) -> tuple[str, str] | None:
        """(owner, body) of a recorded resource."""
        with self._lock:
            row = self._db.execute(
                "SELECT owner, body FROM resources WHERE namespace = ? AND kind = ? AND name = ?",
                (namespace, kind, name),
            ).fetchone()
        return (row[0], row[1]) if row else None

    def list_resources(self, *, owner: str | None, namespace: str | None) -> list[str]:
        clauses, args = [], []
        if owner is not None:
            clauses.append("owner = ?")
            args.append(owner)
        if namespace is not None:
            clauses.append("namespace = ?")
            args.append(namespace)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT body FROM resources{where} ORDER BY created_at DESC"  # noqa: S608 - fixed clauses
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [r[0] for r in rows]

    def delete_resource(self, namespace: str, kind: str, name: str) -> None:
        with self._tx() as db:
            db.execute(
                "DELETE FROM resources WHERE namespace = ? AND kind = ? AND name = ?",
                (namespace, kind, name),
            )

    def set_handle(self, run_id: str, handle: dict[str, object]) -> None:
        with self._tx() as db:
            db.execute("UPDATE runs SET handle = ? WHERE run_id = ?", (json.dumps(handle), run_id))

    def get_handle(self, run_id: str) -> dict[str, object] | None:
        with self._lock:
            row = self._db.execute("SELECT handle FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None or row[0] is None:
            return None
        handle = json.loads(row[0])
        return handle if isinstance(handle, dict) else None

    # -- idempotency keys ----------------------------------------------------

    def claim_idempotency_key(
        self, owner: str, key: str, fingerprint: str, *, now: float, expired_before: float
    ) -> IdempotencyRecord | None:
        """Claim ``key`` for ``owner`` (None), or return the live record that holds it.

        A record created before ``expired_before`` no longer counts: it is replaced. Look-up
        and insert are one transaction, so of concurrent claims exactly one gets None.
        """
        with self._tx() as db:
            db.execute(
                "DELETE FROM idempotency_keys WHERE owner = ? AND key = ? AND created_at < ?",
                (owner, key, expired_before),
            )
            row = db.execute(
                "SELECT fingerprint, status, response FROM idempotency_keys"
                " WHERE owner = ? AND key = ?",
                (owner, key),
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO idempotency_keys (owner, key, fingerprint, created_at)"
                    " VALUES (?, ?, ?, ?)",
                    (owner, key, fingerprint, now),
                )
                return None
        return IdempotencyRecord(str(row[0]), row[1], None if row[2] is None else bytes(row[2]))

    def record_idempotent_answer(self, owner: str, key: str, status: int, body: bytes) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE idempotency_keys SET status = ?, response = ?"
                " WHERE owner = ? AND key = ? AND status IS NULL",
                (status, body, owner, key),
            )

    def release_idempotency_key(self, owner: str, key: str) -> None:
        """Forget a claim that has no answer (its request failed)."""
        with self._tx() as db:
            db.execute(
                "DELETE FROM idempotency_keys WHERE owner = ? AND key = ? AND status IS NULL",
                (owner, key),
            )

    def purge_idempotency_keys(self, *, expired_before: float, unanswered: bool = False) -> int:
        """Delete records created before ``expired_before`` (and, with ``unanswered``, every
        claim without an answer); returns how many."""
        query = "DELETE FROM idempotency_keys WHERE created_at < ?"
        if unanswered:
            query += " OR status IS NULL"
        with self._tx() as db:
            deleted = db.execute(query, (expired_before,)).rowcount
        return int(deleted)

    # -- sweeps ----------------------------------------------------------------
    # A sweep's record (controller.domain.sweeps.Sweep) in its own table; its trials are
    # runs with its sweep_id (runs.sweep_id), so they are counted from the runs table.

    def add_sweep(self, sweep: Sweep) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO sweeps (sweep_id, experiment_id, owner, state, created_at, body)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    sweep.sweep_id,
                    sweep.experiment_id,
                    sweep.owner,
                    sweep.state.value,
                    sweep.created_at.isoformat(),
                    sweep.model_dump_json(),
                ),
            )

    def delete_sweep(self, sweep_id: str) -> None:
        """Forget a sweep that never started a trial (its first one was refused)."""
        with self._tx() as db:
            db.execute("DELETE FROM sweeps WHERE sweep_id = ?", (sweep_id,))

    def get_sweep(self, sweep_id: str) -> Sweep | None:
        row = self._lookup("SELECT body FROM sweeps WHERE sweep_id = ?", (sweep_id,))
        return Sweep.model_validate_json(str(row[0])) if row else None

    def list_sweeps(
        self,
        *,
        experiment_id: str | None = None,
        owner: str | None = None,
        states: list[SweepState] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Sweep]:
        clauses: list[str] = []
        args: list[object] = []
        if experiment_id is not None:
            clauses.append("experiment_id = ?")
            args.append(experiment_id)
        if owner is not None:
            clauses.append("owner = ?")
            args.append(owner)
        if states:
            clauses.append(f"state IN ({', '.join('?' * len(states))})")
            args += [s.value for s in states]
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        query = (
            f"SELECT body FROM sweeps{where} ORDER BY created_at DESC, sweep_id LIMIT ? OFFSET ?"  # noqa: S608 - clauses are fixed strings
        )
        with self._lock:
            rows = self._db.execute(query, [*args, limit, offset]).fetchall()
        return [Sweep.model_validate_json(r[0]) for r in rows]

    def end_sweep(self, sweep_id: str, state: SweepState, reason: str | None) -> Sweep | None:
        """Move a running sweep to a terminal ``state``; None if it had already ended."""
        with self._tx() as db:
            row = db.execute("SELECT body FROM sweeps WHERE sweep_id = ?", (sweep_id,)).fetchone()
            if row is None:
                return None
            sweep = Sweep.model_validate_json(row[0])
            if sweep.state.terminal:
                return None
            updated = sweep.model_copy(
                update={"state": state, "reason": reason, "finished_at": utcnow()}
            )
            db.execute(
                "UPDATE sweeps SET state = ?, body = ? WHERE sweep_id = ?",
                (state.value, updated.model_dump_json(), sweep_id),
            )
        return updated

    def sweep_run_states(self, sweep_id: str) -> list[tuple[str, RunState]]:
        """(run id, state) of each of the sweep's runs, in the order they were made; no
        record is parsed (a sweep looks at them after every change of one of its runs)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT run_id, state FROM runs WHERE sweep_id = ? ORDER BY created_at, run_id",
                (sweep_id,),
            ).fetchall()
        return [(str(run_id), RunState(state)) for run_id, state in rows]

    def sweep_run_counts(self, sweep_ids: list[str]) -> dict[str, dict[str, int]]:
        """Per sweep, its runs by state (one query for a page of sweeps)."""
        if not sweep_ids:
            return {}
        marks = ", ".join("?" * len(sweep_ids))
        where = f" WHERE sweep_id IN ({marks})"
        query = f"SELECT sweep_id, state, COUNT(*) FROM runs{where}"  # noqa: S608 - placeholders
        query += " GROUP BY sweep_id, state"
        with self._lock:
            rows = self._db.execute(query, sweep_ids).fetchall()
        counts: dict[str, dict[str, int]] = {sweep_id: {} for sweep_id in sweep_ids}
        for sweep_id, state, count in rows:
            counts[str(sweep_id)][str(state)] = int(count)
        return counts

    # -- deliveries (the outbox) -----------------------------------------------
    # One row per message to an outside system ("<kind>:<id>" targets), recorded before it
    # is sent; a target's pending rows are sent in ``seq`` order.

    def add_delivery(self, row: DeliveryRow) -> None:
        with self._tx() as db:
            db.execute(
                f"INSERT INTO deliveries ({_DELIVERY_COLUMNS}) VALUES ({', '.join('?' * 12)})",  # noqa: S608 - fixed columns
                tuple(row),
            )

    def pending_heads(self) -> list[DeliveryRow]:
        """The first pending delivery of each target that has one."""
        query = (
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE seq IN"  # noqa: S608 - fixed columns
            " (SELECT MIN(seq) FROM deliveries WHERE status = 'pending' GROUP BY target)"
        )
        with self._read_lock:
            rows = self._reader.execute(query).fetchall()
        return [_delivery(row) for row in rows]

    def record_attempt(
        self,
        delivery_id: str,
        *,
        status: str,
        attempts: int,
        next_attempt_at: float,
        last_status: int | None,
        last_error: str | None,
        finished_at: float | None,
    ) -> bool:
        """An attempt's outcome, for a delivery still pending; False if it no longer is
        (dropped meanwhile)."""
        with self._tx() as db:
            changed = db.execute(
                "UPDATE deliveries SET status = ?, attempts = ?, next_attempt_at = ?,"
                " last_status = ?, last_error = ?, finished_at = ?"
                " WHERE delivery_id = ? AND status = 'pending'",
                (
                    status,
                    attempts,
                    next_attempt_at,
                    last_status,
                    last_error,
                    finished_at,
                    delivery_id,
                ),
            ).rowcount
        return bool(changed)

    def get_delivery(self, delivery_id: str) -> DeliveryRow | None:
        row = self._lookup(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE delivery_id = ?",  # noqa: S608 - fixed columns
            (delivery_id,),
        )
        return _delivery(row) if row else None

    def list_deliveries(
        self, target: str, *, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[DeliveryRow]:
        """A target's deliveries, newest first."""
        query = f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE target = ?"  # noqa: S608 - fixed columns
        args: list[object] = [target]
        if status is not None:
            query += " AND status = ?"
            args.append(status)
        query += " ORDER BY seq DESC LIMIT ? OFFSET ?"
        with self._read_lock:
            rows = self._reader.execute(query, [*args, limit, offset]).fetchall()
        return [_delivery(row) for row in rows]

    def delete_deliveries(self, target: str) -> int:
        """Forget every delivery of ``target`` (its subscription is gone); returns how many."""
        with self._tx() as db:
            deleted = db.execute("DELETE FROM deliveries WHERE target = ?", (target,)).rowcount
        return int(deleted)

    def purge_deliveries(self, *, finished_before: float) -> int:
        """Delete delivered and failed rows that ended before ``finished_before``."""
        with self._tx() as db:
            deleted = db.execute(
                "DELETE FROM deliveries WHERE status != 'pending' AND finished_at < ?",
                (finished_before,),
            ).rowcount
        return int(deleted)

    # -- webhooks ---------------------------------------------------------------
    # A subscription's public record (JSON body: url, events, experiment id); its secret
    # lives elsewhere.

    def add_webhook(self, webhook_id: str, owner: str, created_at: str, body: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO webhooks VALUES (?, ?, ?, ?)", (webhook_id, owner, created_at, body)
            )

    def get_webhook(self, webhook_id: str) -> tuple[str, str] | None:
        """(owner, body) of a webhook."""
        row = self._lookup("SELECT owner, body FROM webhooks WHERE webhook_id = ?", (webhook_id,))
        return (str(row[0]), str(row[1])) if row else None

    def list_webhooks(
        self, *, owner: str | None = None, limit: int = 1000, offset: int = 0
    ) -> list[str]:
        """Bodies, oldest first."""
        query = "SELECT body FROM webhooks"
        args: list[object] = []
        if owner is not None:
            query += " WHERE owner = ?"
            args.append(owner)
        query += " ORDER BY created_at, webhook_id LIMIT ? OFFSET ?"
        with self._read_lock:
            rows = self._reader.execute(query, [*args, limit, offset]).fetchall()
        return [str(r[0]) for r in rows]

    def count_webhooks(self, owner: str) -> int:
        row = self._lookup("SELECT COUNT(*) FROM webhooks WHERE owner = ?", (owner,))
        return int(str(row[0])) if row else 0

    def delete_webhook(self, webhook_id: str, target: str) -> bool:
        """Forget a webhook and its deliveries (one transaction); False if it was gone."""
        with self._tx() as db:
            deleted = db.execute("DELETE FROM webhooks WHERE webhook_id = ?", (webhook_id,))
            db.execute("DELETE FROM deliveries WHERE target = ?", (target,))
        return bool(deleted.rowcount)


def _delivery(row: tuple[object, ...] | sqlite3.Row) -> DeliveryRow:
    values = tuple(row)
    return DeliveryRow(
        delivery_id=str(values[0]),
        target=str(values[1]),
        event_id=str(values[2]),
        event_type=str(values[3]),
        payload=str(values[4]),
        status=str(values[5]),
        attempts=int(str(values[6])),
        next_attempt_at=float(str(values[7])),
        last_status=None if values[8] is None else int(str(values[8])),
        last_error=None if values[9] is None else str(values[9]),
        created_at=float(str(values[10])),
        finished_at=None if values[11] is None else float(str(values[11])),
    )
