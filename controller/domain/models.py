"""Records the service keeps: experiments, runs, their states and results."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, JsonValue

__all__ = [
    "ArtifactSpec",
    "CreatedExperiment",
    "Experiment",
    "JsonValue",
    "PlotSpec",
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


class PlotSpec(Record):
    """A plot ``dvc.yaml`` declares (top-level ``plots`` or a stage's plot output)."""

    id: str = Field(description="The plot's name: its id in top-level `plots`, else its file.")
    files: list[str] = Field(description="Data files, repo-relative.")
    x: str | None = Field(default=None, description="Field for the x axis (None: the row index).")
    y: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Fields for the y axis, per data file (an empty list: every other field).",
    )
    template: str | None = None
    title: str | None = None


class ArtifactSpec(Record):
    """An artifact of ``dvc.yaml``'s ``artifacts`` section (DVC 3)."""

    path: str
    type: str | None = None
    desc: str | None = None
    labels: list[str] = Field(default_factory=list)


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
    plots: list[PlotSpec] = Field(default_factory=list, description="Plots dvc.yaml declares.")
    artifacts: dict[str, ArtifactSpec] = Field(
        default_factory=dict, description="The `artifacts` section of dvc.yaml, by name."
    )
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
    flat_metrics: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="The metrics flattened to dotted keys (`accuracy`, `train.loss`); with "
        "several metrics files each key starts with its file (`eval.json:accuracy`). Numbers "
        "stay numbers; anything else is kept as it is.",
    )
    params: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Every parameter the run used (params.yaml with its overrides), flattened "
        "to dotted keys.",
    )
    stages: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Per stage of the run's dvc.lock: the hashes of its deps and outs and the "
        "params it read (`{deps: {path: md5}, params: {key: value}, outs: {path: md5}}`).",
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
    sweep_id: str | None = Field(default=None, description="The sweep the run is a trial of.")
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
