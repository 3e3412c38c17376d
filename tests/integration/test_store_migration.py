"""A state database made by an earlier version opens and works.

The database is written by hand with the schema the service had before runs carried a
``sweep_id`` (no ``runs.sweep_id`` column, no ``run_data`` or ``sweeps`` tables), holding
an experiment and runs recorded in the old format (bodies without the new fields). The
store must add what is missing, keep what is there, and work as usual -- twice (opening
an already migrated database changes nothing).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from controller.adapters.store import Store
from controller.domain.models import Run, RunResult, RunState, utcnow

pytestmark = pytest.mark.integration

# The schema of the last version before sweeps (commit 0fcc345), as it was.
OLD_SCHEMA = """
CREATE TABLE experiments (
    experiment_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    experiment_id TEXT NOT NULL REFERENCES experiments(experiment_id),
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    body TEXT NOT NULL,
    handle TEXT
);
CREATE INDEX runs_by_experiment ON runs(experiment_id, created_at);
CREATE INDEX runs_by_state ON runs(state, created_at);
CREATE INDEX runs_by_owner ON runs(owner, state);
CREATE TABLE resources (
    namespace TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_at TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (namespace, kind, name)
);
CREATE TABLE idempotency_keys (
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at REAL NOT NULL,
    status INTEGER,
    response BLOB,
    PRIMARY KEY (owner, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys(created_at);
"""

CREATED = "2025-06-01T10:00:00+00:00"
OLD_EXPERIMENT = {
    "experiment_id": "exp-old",
    "owner": "alice",
    "git_url": "/repos/exp-old.git",
    "branch": "main",
    "commit": "0" * 40,
    "dvc_remote": "storage",
    "dvc_url": "/remotes/exp-old",
    "stages": ["train"],
    "metrics_files": ["m.json"],
    "params": {"x": 1},
    "created_at": CREATED,
}
# A succeeded run as the old version wrote it: metrics per file, no flat_metrics,
# params, stages or sweep_id.
OLD_SUCCEEDED = {
    "run_id": "run-old-1",
    "experiment_id": "exp-old",
    "owner": "alice",
    "resource": "local",
    "namespace": None,
    "params": {"x": 2},
    "state": "succeeded",
    "reason": None,
    "created_at": CREATED,
    "started_at": CREATED,
    "finished_at": CREATED,
    "result": {
        "git_url": "/repos/exp-old.git",
        "branch": "runs/run-old-1",
        "commit": "1" * 40,
        "metrics": {"m.json": {"x": 2}},
        "clone_command": "git clone -b runs/run-old-1 /repos/exp-old.git run-old-1",
        "warnings": [],
    },
}
OLD_QUEUED = {
    **OLD_SUCCEEDED,
    "run_id": "run-old-2",
    "state": "queued",
    "started_at": None,
    "finished_at": None,
    "result": None,
}


def make_old_database(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.execute(
        "INSERT INTO experiments VALUES (?, ?, ?, ?)",
        ("exp-old", "alice", CREATED, json.dumps(OLD_EXPERIMENT)),
    )
    for run in (OLD_SUCCEEDED, OLD_QUEUED):
        db.execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)",
            (run["run_id"], "exp-old", "alice", run["state"], CREATED, json.dumps(run), None),
        )
    db.execute(
        "INSERT INTO resources VALUES (?, ?, ?, ?, ?, ?)",
        ("team-a", "sts", "pool", "alice", CREATED, '{"kind": "StatefulSet"}'),
    )
    db.commit()
    db.close()


def columns(path: Path, table: str) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    finally:
        db.close()


def test_a_database_without_sweep_id_opens_and_works(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    make_old_database(path)
    assert "sweep_id" not in columns(path, "runs")

    store = Store(path)
    try:
        assert "sweep_id" in columns(path, "runs")
        # What was there is still there, read with the new models' defaults.
        experiment = store.get_experiment("exp-old")
        assert experiment is not None
        assert (experiment.plots, experiment.artifacts) == ([], {})
        old = store.get_run("run-old-1")
        assert old is not None
        assert old.state is RunState.SUCCEEDED
        assert old.sweep_id is None
        assert old.result is not None
        assert old.result.metrics == {"m.json": {"x": 2}}
        assert old.result.flat_metrics == {}
        listed = store.list_runs(experiment_id="exp-old", owner="alice")
        assert sorted(r.run_id for r in listed) == ["run-old-1", "run-old-2"]
        assert store.get_resource("team-a", "sts", "pool") == ("alice", '{"kind": "StatefulSet"}')

        # New runs carry a sweep; the listing filters by it; old runs belong to none.
        trial = Run(
            run_id="run-new-1",
            experiment_id="exp-old",
            owner="alice",
            resource="local",
            namespace=None,
            params={"x": 3},
            sweep_id="swp-1",
            state=RunState.QUEUED,
            created_at=utcnow(),
        )
        store.add_run(trial)
        assert [r.run_id for r in store.list_runs(sweep_id="swp-1")] == ["run-new-1"]
        assert store.list_runs(sweep_id="swp-none") == []
        assert len(store.list_runs(experiment_id="exp-old", limit=10)) == 3

        # Old runs move on as before; run data (plots) can be kept for them.
        moved = store.transition("run-old-2", RunState.RUNNING)
        assert moved is not None
        assert moved.state is RunState.RUNNING
        assert store.get_run_data("run-old-1", "plots") is None
        store.put_run_data("run-old-1", "plots", "[]")
        assert store.get_run_data("run-old-1", "plots") == "[]"
        done = store.transition(
            "run-new-1",
            RunState.SUCCEEDED,
            result=RunResult(
                git_url="g",
                branch="runs/run-new-1",
                commit="2" * 40,
                metrics={"m.json": {"x": 3}},
                flat_metrics={"x": 3},
                clone_command="git clone",
            ),
        )
        assert done is not None
        assert done.sweep_id == "swp-1"
    finally:
        store.close()

    # Opening the migrated database again changes nothing and loses nothing.
    again = Store(path)
    try:
        reread = again.get_run("run-new-1")
        assert reread is not None
        assert reread.sweep_id == "swp-1"
        assert reread.result is not None
        assert reread.result.flat_metrics == {"x": 3}
        assert again.get_run_data("run-old-1", "plots") == "[]"
        assert [r.run_id for r in again.list_runs(sweep_id="swp-1")] == ["run-new-1"]
    finally:
        again.close()
