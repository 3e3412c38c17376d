"""Executors run the runner somewhere: a local process now, Kubernetes later.

They share one small interface, :class:`Executor`; the run service drives it
and owns the run's state. An executor never touches the state store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from controller.domain.bundle import RepoSpec
from controller.domain.models import Run

Handle = dict[str, object]
"""What an executor needs to find its run again after a restart (JSON-serialisable)."""


@dataclass(frozen=True)
class Outcome:
    """How a runner ended, as it reported in its status file."""

    state: Literal["succeeded", "failed"]
    reason: str | None = None
    commit: str | None = None  # None on success: read the result from the published branch
    metrics_files: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Launch:
    """Everything an executor needs to start one run's runner."""

    run: Run
    spec: Mapping[str, object]  # the runner's spec (no credentials)
    env: Mapping[str, str]  # the credential environment (see planning.runs.credential_env)
    repo: RepoSpec  # for the registry and image, on Kubernetes
    log_path: Path
    # Local runs: paths outside the work dir the runner must write (the experiment's DVC
    # cache, and its repo and DVC remote when they are local paths). Nothing else of the
    # machine is writable from a sandboxed run.
    writable: tuple[Path, ...] = ()
    # Called with the handle once the runner exists and before it may start working, so
    # the service has recorded it first: a runner it does not know about never does work.
    record: Callable[[Handle], None] | None = None
    # Kubernetes runs: files that travel beside the spec (name -> text), e.g. the private
    # CA certificates the spec's ``ca_files`` names -- never a path of the service's host.
    files: Mapping[str, str] = field(default_factory=dict)


class Executor(Protocol):
    def launch(self, request: Launch) -> Handle:
        """Start the runner (idempotent for one run); returns once it is started."""
        ...

    def wait(self, handle: Handle) -> Outcome:
        """Block until the runner ends (works for a runner adopted after a restart)."""
        ...

    def is_active(self, handle: Handle) -> bool: ...

    def outcome(self, handle: Handle) -> Outcome:
        """What a runner that is no longer active reported (or why it reported nothing)."""
        ...

    def cancel(self, handle: Handle) -> bool:
        """Stop the runner and everything it started; True once all of it is gone."""
        ...

    def cleanup(self, handle: Handle) -> None: ...

    def close(self) -> None:
        """The service is stopping: end waits early (runners go on; a restart adopts them)."""
        ...


@runtime_checkable
class EventExecutor(Executor, Protocol):
    """An executor that reports a runner's end by calling back instead of blocking a thread.

    Its runs are followed with ``follow``; ``wait`` is there for callers that want to block.
    """

    def follow(self, handle: Handle, done: Callable[[Outcome], None]) -> None:
        """Call ``done`` once, from a worker of the executor's, when the runner has ended."""
        ...

    def stop(self, handle: Handle) -> bool:
        """Ask the runner to stop and return at once; its end then comes through ``follow``.

        False when nothing was left to stop (then no end will come).
        """
        ...

    def want_log(self, handle: Handle) -> None:
        """Someone follows the run's log: save it as it is written if it is not yet."""
        ...
