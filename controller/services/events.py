"""What happened, for whoever listens: runs started and ended, sweeps finished, models
registered and promoted.

Use cases publish :class:`Event` objects on the :class:`EventBus`; subscribers
(notifications, the MLflow export, metrics) are called in the publishing thread, so a
subscriber only records or queues what it needs and returns — it never blocks and never
calls back into an executor. An event's ``data`` is the object's public view: what the
API would answer its owner, never a credential.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from controller.domain.models import JsonValue, Run, RunState, utcnow

log = logging.getLogger("mlexp.events")


@dataclass(frozen=True)
class Event:
    type: str  # one of controller.domain.webhooks.EVENT_TYPES
    subject: str  # the run id, sweep id, or `<artifact>@<version>`
    owner: str  # the principal whose object it is (only their webhooks see it)
    experiment_id: str
    data: dict[str, JsonValue]
    time: datetime = field(default_factory=utcnow)


Subscriber = Callable[[Event], None]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def publish(self, event: Event) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:
                log.exception(
                    "an event subscriber failed",
                    extra={"event": event.type, "subject": event.subject},
                )

    def run_changed(self, run: Run, previous: RunState | None) -> None:
        """A :meth:`RunService.subscribe` callback: a run's change as an event, if it is one
        (started: it became running; ended: it reached a terminal state)."""
        if run.state is RunState.RUNNING and previous is not RunState.RUNNING:
            kind = "run.started"
        elif run.state.terminal and previous is not run.state:
            kind = f"run.{run.state.value}"
        else:
            return
        self.publish(
            Event(
                type=kind,
                subject=run.run_id,
                owner=run.owner,
                experiment_id=run.experiment_id,
                data=run_view(run),
            )
        )


def run_view(run: Run) -> dict[str, JsonValue]:
    """A run as an event carries it: its state and results, nothing of the executor's."""
    result = run.result
    return {
        "run_id": run.run_id,
        "experiment_id": run.experiment_id,
        "sweep_id": run.sweep_id,
        "resource": run.resource,
        "namespace": run.namespace,
        "state": run.state.value,
        "reason": run.reason,
        "params": dict(run.params),
        "created_at": run.created_at.isoformat(),
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "metrics": dict(result.flat_metrics) if result else {},
        "git_url": result.git_url if result else None,
        "branch": result.branch if result else None,
        "commit": result.commit if result else None,
        "clone_command": result.clone_command if result else None,
    }
