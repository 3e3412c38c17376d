"""Export to MLflow: finished runs, sweeps as parent runs, promotions as aliases.

:class:`MlflowExport` subscribes to the event bus and only enqueues in the outbox
(target ``mlflow:default``, payload the event as JSON); the outbox's worker calls
:meth:`MlflowExport.send`, which talks to the tracking server. So MLflow being slow or
down never fails or delays a run: its deliveries wait and are retried, in order.

Every export is idempotent, since an attempt may be repeated (a retry, a restart):

- a run is found by its tag ``mlexp.run_id`` before one is created, then its params,
  metrics and tags are logged (MLflow keeps identical values once) and it is ended;
- a sweep's parent run is found by ``mlexp.sweep_id`` + ``mlexp.kind = sweep``; it is
  created when its first trial is exported (so every trial is nested under it with
  ``mlflow.parentRunId`` when it is created) or at ``sweep.finished``, which ends it;
- a promotion sets the stage as an alias of every MLflow model version made from the
  run (setting an alias again is a no-op), and tags the run
  (``mlexp.model.<artifact>.stage`` / ``.version``) in any case.

The mapping from the service's records to MLflow's params, metrics and tags is pure
(:func:`plan_run`, :func:`plan_sweep`, …) and tested apart from the server.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from controller.adapters.mlflow import (
    FoundRun,
    MlflowClient,
    MlflowError,
    MlflowRejected,
    RunStatus,
    alias_allowed,
)
from controller.adapters.store import Store
from controller.domain.models import JsonValue
from controller.metrics import MLFLOW_EXPORTS
from controller.services.events import Event, EventBus, run_view
from controller.services.outbox import Attempt, Delivery, Outbox, PayloadTooLarge
from controller.settings import MlflowSettings

log = logging.getLogger("mlexp.mlflow")

KIND = "mlflow"
TARGET = "mlflow:default"
RUN_STATUS: dict[str, RunStatus] = {
    "succeeded": "FINISHED",
    "failed": "FAILED",
    "cancelled": "KILLED",
}
SWEEP_STATUS: dict[str, RunStatus] = {
    "completed": "FINISHED",
    "stopped": "FINISHED",  # a trial reached the threshold: the sweep did its job
    "cancelled": "KILLED",
    "failed": "FAILED",
}
RUN_EVENTS = frozenset(f"run.{state}" for state in RUN_STATUS)
EXPORTED = RUN_EVENTS | {"sweep.finished", "model.promoted"}
# Run fields that become tags ``mlexp.<field>``.
RUN_TAG_FIELDS = (
    "run_id",
    "experiment_id",
    "sweep_id",
    "git_url",
    "branch",
    "commit",
    "clone_command",
    "resource",
    "namespace",
    "state",
    "reason",
)


# -- pure mapping -----------------------------------------------------------------------


def experiment_name(template: str, experiment_id: str, owner: str) -> str:
    """The MLflow experiment a service experiment's runs go to (``mlexp/{experiment_id}``)."""
    return template.format(experiment_id=experiment_id, owner=owner)


def millis(value: JsonValue | datetime) -> int | None:
    """An ISO time (or a datetime) as MLflow's milliseconds since the epoch."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        return None
    return int(value.timestamp() * 1000)


def text(value: JsonValue) -> str:
    """A param's or tag's value: strings as they are, anything else as compact JSON."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def param_values(params: Mapping[str, JsonValue]) -> dict[str, str]:
    return {key: text(value) for key, value in params.items()}


def split_metrics(flat: Mapping[str, JsonValue]) -> tuple[dict[str, float], dict[str, str]]:
    """Numbers are MLflow metrics; anything else (a string, a flag, an error object) is
    kept as a tag ``mlexp.metric.<key>``."""
    numbers: dict[str, float] = {}
    others: dict[str, str] = {}
    for key, value in flat.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            numbers[key] = float(value)
        elif value is not None:
            others[f"mlexp.metric.{key}"] = text(value)
    return numbers, others


def flatten(value: Mapping[str, JsonValue], prefix: str = "") -> dict[str, JsonValue]:
    """Nested objects to dotted keys; lists and scalars stay values."""
    out: dict[str, JsonValue] = {}
    for key, item in value.items():
        if isinstance(item, dict):
            out.update(flatten(item, f"{prefix}{key}."))
        elif item is not None:
            out[f"{prefix}{key}"] = item
    return out


@dataclass(frozen=True)
class RunPlan:
    """What one MLflow run should hold."""

    name: str
    find: dict[str, str]  # the tags that identify it
    start_ms: int
    end_ms: int | None
    status: RunStatus | None  # None: leave it running
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def plan_run(
    view: Mapping[str, JsonValue], owner: str, full_params: Mapping[str, JsonValue] | None
) -> RunPlan:
    """A finished run (its :func:`~controller.services.events.run_view`) as an MLflow run.
    ``full_params``: every param the run used (its result's), else its overrides."""
    run_id = str(view["run_id"])
    params = full_params if full_params else _mapping(view.get("params"))
    metrics, metric_tags = split_metrics(_mapping(view.get("metrics")))
    tags = {f"mlexp.{key}": text(view[key]) for key in RUN_TAG_FIELDS if view.get(key)}
    tags |= {"mlexp.kind": "run", "mlflow.runName": run_id, "mlflow.user": owner}
    tags |= metric_tags
    for field_name, mlflow_tag in (
        ("commit", "mlflow.source.git.commit"),
        ("branch", "mlflow.source.git.branch"),
        ("git_url", "mlflow.source.git.repoURL"),
    ):
        if view.get(field_name):
            tags[mlflow_tag] = text(view[field_name])
    state = str(view.get("state"))
    start = millis(view.get("started_at")) or millis(view.get("created_at")) or 0
    return RunPlan(
        name=run_id,
        find={"mlexp.run_id": run_id},
        start_ms=start,
        end_ms=millis(view.get("finished_at")),
        status=RUN_STATUS.get(state),
        params=param_values(params),
        metrics=metrics,
        tags=tags,
    )


def plan_sweep(view: Mapping[str, JsonValue], finished: bool) -> RunPlan:
    """A sweep (its record or its ``sweep.finished`` view) as the parent run of its
    trials; ``finished``: ended with the sweep's outcome, else left running."""
    sweep_id = str(view["sweep_id"])
    request = _mapping(view.get("request"))
    params = {k: v for k, v in request.items() if k != "experiment_id"}
    tags = {
        "mlexp.kind": "sweep",
        "mlexp.sweep_id": sweep_id,
        "mlexp.experiment_id": text(view.get("experiment_id")),
        "mlflow.runName": sweep_id,
        "mlflow.user": text(view.get("owner")),
        "mlexp.total_trials": text(view.get("total_trials")),
    }
    metrics: dict[str, float] = {}
    if finished:
        tags["mlexp.state"] = text(view.get("state"))
        if view.get("reason"):
            tags["mlexp.reason"] = text(view.get("reason"))
        best = _mapping(view.get("best"))
        if best:
            tags["mlexp.best_run_id"] = text(best.get("run_id"))
            value = best.get("value")
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics[f"best.{best.get('metric')}"] = float(value)
        for state, count in _mapping(view.get("counts")).items():
            if isinstance(count, int):
                metrics[f"trials.{state}"] = float(count)
    return RunPlan(
        name=sweep_id,
        find=sweep_identity(sweep_id),
        start_ms=millis(view.get("created_at")) or 0,
        end_ms=millis(view.get("finished_at")) if finished else None,
        status=SWEEP_STATUS.get(str(view.get("state"))) if finished else None,
        params=param_values(flatten(params, "sweep.")),
        metrics=metrics,
        tags=tags,
    )


def sweep_identity(sweep_id: str) -> dict[str, str]:
    """The tags that tell a sweep's parent run from its trials (which have the sweep id)."""
    return {"mlexp.sweep_id": sweep_id, "mlexp.kind": "sweep"}


def promotion_tags(artifact: str, stage: str, version: str) -> dict[str, str]:
    return {f"mlexp.model.{artifact}.stage": stage, f"mlexp.model.{artifact}.version": version}


def _mapping(value: JsonValue | None) -> dict[str, JsonValue]:
    return value if isinstance(value, dict) else {}


# -- the service ------------------------------------------------------------------------


class MlflowExport:
    def __init__(
        self, settings: MlflowSettings, store: Store, outbox: Outbox, client: MlflowClient
    ) -> None:
        self.settings = settings
        self.store = store
        self.outbox = outbox
        self.client = client

    def attach(self, events: EventBus) -> None:
        """Send through the outbox and listen to the bus (before the outbox starts)."""
        self.outbox.register(KIND, self.send, self.counted)
        events.subscribe(self.notice)

    def close(self) -> None:
        self.client.close()

    # Called in the publishing thread: record the delivery, nothing more.
    def notice(self, event: Event) -> None:
        if event.type not in EXPORTED:
            return
        body = {
            "type": event.type,
            "subject": event.subject,
            "owner": event.owner,
            "experiment_id": event.experiment_id,
            "time": event.time.isoformat(),
            "data": event.data,
        }
        event_id = f"{event.type}/{event.subject}"
        try:
            self.outbox.enqueue(TARGET, event_id, event.type, json.dumps(body))
        except PayloadTooLarge:  # the sender reads the record from the store instead
            body["data"] = {}
            self.outbox.enqueue(TARGET, event_id, event.type, json.dumps(body))

    def counted(self, delivery: Delivery, outcome: str) -> None:
        MLFLOW_EXPORTS.labels(outcome=outcome).inc()
        if outcome == "failed":
            log.warning(
                "an MLflow export was given up",
                extra={"event": delivery.event_type, "attempts": delivery.attempts},
            )

    def send(self, delivery: Delivery) -> Attempt:
        """One attempt at one export (the outbox's worker thread)."""
        try:
            body = json.loads(delivery.payload)
            kind, subject = str(body["type"]), str(body["subject"])
            data = _mapping(body.get("data"))
            owner, experiment_id = str(body["owner"]), str(body["experiment_id"])
        except (ValueError, KeyError, TypeError):
            return Attempt(ok=False, error="the delivery's payload is not an event", retry=False)
        try:
            if kind in RUN_EVENTS:
                self.export_run(subject, owner, experiment_id, data)
            elif kind == "sweep.finished":
                self.export_sweep(subject, experiment_id, data)
            elif kind == "model.promoted":
                self.export_promotion(owner, experiment_id, data)
        except MlflowError as exc:
            if not exc.retry:
                self.client.forget_experiments()
            return Attempt(ok=False, status=exc.status, error=str(exc), retry=exc.retry)
        return Attempt(ok=True)

    # -- exports --------------------------------------------------------------------

    def _experiment(self, experiment_id: str, owner: str) -> str:
        name = experiment_name(self.settings.experiment_name, experiment_id, owner)
        return self.client.experiment(name)

    def export_run(
        self, run_id: str, owner: str, experiment_id: str, data: Mapping[str, JsonValue]
    ) -> str:
        """The run as an MLflow run (found or created, logged, ended); its MLflow id."""
        record = self.store.get_run(run_id)
        if record is not None:
            view: Mapping[str, JsonValue] = run_view(record)
            full = record.result.params if record.result else None
            owner = record.owner
        elif data:
            view, full = data, None
        else:
            raise MlflowRejected(f"run {run_id} is gone; there is nothing to export")
        plan = plan_run(view, owner, full)
        mlflow_experiment = self._experiment(experiment_id, owner)
        sweep_id = view.get("sweep_id")
        if isinstance(sweep_id, str) and sweep_id:
            parent = self._sweep_parent(mlflow_experiment, sweep_id)
            if parent is not None:
                plan.tags["mlflow.parentRunId"] = parent
        return self._put(mlflow_experiment, plan)

    def export_sweep(self, sweep_id: str, experiment_id: str, data: Mapping[str, JsonValue]) -> str:
        sweep = self.store.get_sweep(sweep_id)
        view: Mapping[str, JsonValue] = data or (sweep.model_dump(mode="json") if sweep else {})
        if not view:
            raise MlflowRejected(f"sweep {sweep_id} is gone; there is nothing to export")
        plan = plan_sweep(view, finished=True)
        return self._put(self._experiment(experiment_id, str(view.get("owner"))), plan)

    def export_promotion(
        self, owner: str, experiment_id: str, data: Mapping[str, JsonValue]
    ) -> None:
        artifact = str(data.get("artifact"))
        version, stage = _mapping(data.get("version")), _mapping(data.get("stage"))
        run_id, stage_name = version.get("run_id"), str(stage.get("stage"))
        if not isinstance(run_id, str) or not run_id:
            log.info("a promoted version has no run to tag in MLflow", extra={"artifact": artifact})
            return
        mlflow_experiment = self._experiment(experiment_id, owner)
        found = self.client.find_runs(mlflow_experiment, {"mlexp.run_id": run_id}, 1)
        # Not found: the run ended before the export was set up, or its export was given up.
        mlflow_run = found[0].run_id if found else self.export_run(run_id, owner, experiment_id, {})
        tags = promotion_tags(artifact, stage_name, str(version.get("version")))
        self.client.log(mlflow_run, tags=tags)
        latest: dict[str, str] = {}
        for model, number in self.client.model_versions_of(mlflow_run):
            if number.isdigit() and (model not in latest or int(number) > int(latest[model])):
                latest[model] = number
        if latest and not alias_allowed(stage_name):
            log.warning(
                "a stage MLflow refuses as an alias was set as a tag only",
                extra={"artifact": artifact, "stage": stage_name},
            )
            return
        for model, number in latest.items():
            self.client.set_alias(model, stage_name, number)

    def _sweep_parent(self, mlflow_experiment: str, sweep_id: str) -> str | None:
        """The sweep's parent run, created (running) if it does not exist yet."""
        found = self._find(mlflow_experiment, sweep_identity(sweep_id))
        if found is not None:
            return found.run_id
        sweep = self.store.get_sweep(sweep_id)
        if sweep is None:
            return None
        return self._put(mlflow_experiment, plan_sweep(sweep.model_dump(mode="json"), False))

    def _find(self, mlflow_experiment: str, tags: Mapping[str, str]) -> FoundRun | None:
        found = self.client.find_runs(mlflow_experiment, tags, 1)
        return found[0] if found else None

    def _put(self, mlflow_experiment: str, plan: RunPlan) -> str:
        found = self._find(mlflow_experiment, plan.find)
        if found is not None:
            mlflow_run = found.run_id
        else:
            # Created with the identifying tags at once: a retry finds it.
            mlflow_run = self.client.create_run(
                mlflow_experiment, name=plan.name, start_ms=plan.start_ms, tags=plan.tags
            )
        self.client.log(
            mlflow_run,
            params=plan.params,
            metrics=plan.metrics,
            tags=plan.tags,
            timestamp_ms=plan.end_ms or plan.start_ms,
        )
        if plan.status is not None:
            self.client.end_run(mlflow_run, plan.status, plan.end_ms)
        return mlflow_run
