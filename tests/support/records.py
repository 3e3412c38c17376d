"""Experiment and run records for unit tests of planning code: fixed ids and times, so
what is built from them is deterministic; each test overrides what it is about."""

from __future__ import annotations

from datetime import UTC, datetime

from controller.domain.models import Experiment, JsonValue, Run, RunState

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def experiment_record(**overrides: object) -> Experiment:
    fields: dict[str, object] = {
        "experiment_id": "exp-0123456789",
        "owner": "local",
        "git_url": "https://git.example.com/ml/wine.git",
        "branch": "main",
        "commit": "a" * 40,
        "dvc_remote": "storage",
        "dvc_url": "s3://b/wine",
        "stages": ["prepare", "train"],
        "metrics_files": ["metrics.json", "eval/scores.yaml"],
        "params": {"train": {"C": 1.0}},
        "created_at": NOW,
    }
    fields.update(overrides)
    return Experiment.model_validate(fields)


def run_record(
    params: dict[str, JsonValue] | None = None, state: RunState = RunState.QUEUED
) -> Run:
    return Run(
        run_id="run-0123456789",
        experiment_id="exp-0123456789",
        owner="local",
        resource="local",
        namespace=None,
        params=params or {},
        state=state,
        created_at=NOW,
    )
