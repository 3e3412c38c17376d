"""Records the service keeps: experiments, runs, their states and results."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, JsonValue

__all__ = [
    "CreatedExperiment",
    "Experiment",
    "JsonValue",
    "Run",
    "RunResult",
    "RunState",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class RunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


class Record(BaseModel):
    model_config = ConfigDict(frozen=True)


class Experiment(Record):
    experiment_id: str
    owner: str = Field(description="Name of the token that created it ('local' without tokens).")
    git_url: str = Field(description="Repository URL, never with credentials.")
    branch: str
    commit: str
    dvc_remote: str
    dvc_url: str
    stages: list[str] = Field(description="Stages in execution order.")
    metrics_files: list[str]
    params: dict[str, JsonValue] = Field(description="The values of params.yaml as committed.")
    params_document: str | None = Field(
        default=None,
        description="params.yaml as committed: the uploaded hyperparameters file, unchanged "
        "(JSON that YAML cannot read is rewritten as YAML). Runs write their overrides into it.",
    )
    created_at: datetime


class CreatedExperiment(Experiment):
    """The answer to ``POST /experiment/create``: the experiment, and what its checks noticed."""

    warnings: list[str] = Field(
        default_factory=list,
        description="What the pipeline checks noticed without refusing the bundle: dependencies "
        "that nothing provides, parameters that cannot be checked, options DVC ignores.",
    )


class RunResult(Record):
    git_url: str
    branch: str
    commit: str
    metrics: dict[str, JsonValue] = Field(
        description="Metrics per file, as `dvc metrics show` groups them."
    )
    clone_command: str = Field(description="Shell command that retrieves the run's results.")
    warnings: list[str] = Field(
        default_factory=list,
        description="What went wrong without failing the run (e.g. a metrics file that "
        'could not be read: its entry in `metrics` is `{"error": ...}`).',
    )


class Run(Record):
    run_id: str
    experiment_id: str
    owner: str
    resource: str
    namespace: str | None
    params: dict[str, JsonValue] = Field(description="The run's overrides, by dotted key.")
    deadline_seconds: int | None = Field(
        default=None, description="Kubernetes Jobs: activeDeadlineSeconds of the run's Job."
    )
    state: RunState
    reason: str | None = None
    cancel_requested: bool = Field(
        default=False,
        description="A cancel was asked for; the run is `cancelled` once its runner is gone "
        "(or ends as it would have, if it finished first).",
    )
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: RunResult | None = None
