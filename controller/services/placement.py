"""Exec runs in provisioned workloads: who may run there, which pod a run gets, who waits.

Only the principal that provisioned a StatefulSet or Deployment through the
service (or an admin) runs in its pods; anyone else is told it does not exist
(:func:`check_access`, before any Kubernetes call), and so is everyone for a
workload the service did not provision.

A workload with ``shared: false`` (the default) runs at most one exec run per pod
at a time: processes of one user inside one container can read each other's
``/proc/<pid>/environ``, so only a pod of its own keeps a run's environment from
other runs. A run that finds every ready pod busy waits, queued, and is woken
when a run on that workload ends -- never by polling. With ``shared: true`` runs
go to the least busy ready pod.

:func:`choose_pod` is the rule, pure. :class:`PodGate` is the bookkeeping the
run service keeps in memory: which run occupies which pod (filled again after a
restart from the handles of runs still alive, which name their pod) and which
runs wait, oldest first. It does no I/O and never blocks on anything but its lock.
:class:`ExecPlacement` puts them together for the run service.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from controller.adapters.store import Store
from controller.domain.errors import Conflict, NotFound
from controller.domain.models import Run, RunState
from controller.domain.resources import ResourceRef
from controller.executors import Handle, Launch
from controller.services.auth import Principal
from controller.services.resources import provisioned

__all__ = [
    "ExecPlacement",
    "Placement",
    "PodExecutor",
    "PodGate",
    "WorkloadKey",
    "check_access",
    "choose_pod",
    "workload_of",
]

log = logging.getLogger("mlexp.runs")


@dataclass(frozen=True, order=True)
class WorkloadKey:
    """One provisioned StatefulSet or Deployment, as a run names it (``sts/<name>``)."""

    namespace: str
    kind: str  # "sts" or "deploy"
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


def workload_of(run: Run) -> WorkloadKey | None:
    """The workload an exec run runs in; None for local and Job runs."""
    kind, _, name = run.resource.partition("/")
    if kind not in ("sts", "deploy") or not name or run.namespace is None:
        return None
    return WorkloadKey(run.namespace, kind, name)


def check_access(store: Store, principal: Principal, resource: ResourceRef, namespace: str) -> None:
    """Refuse (404) a run in a workload the caller did not provision; reads the store only.

    One answer whether the workload is another principal's, was not provisioned by
    the service, or does not exist: tenants are strangers, so it tells nothing.
    """
    if resource.name is None:
        return
    found = provisioned(store, namespace, resource.kind, resource.name)
    if found is None or not principal.may_see(found.owner):
        raise NotFound(
            f"{resource} in namespace {namespace} is not a workload you provisioned"
            " (POST /resource/k8s/create provisions one)"
        )


def choose_pod(
    ready: Iterable[str], load: Mapping[str, int], *, shared: bool, ahead: int = 0
) -> str | None:
    """The pod a run should start in, or None if it has to wait.

    ``load`` counts our runs in each pod; ``ahead`` is how many older runs wait for a
    pod of the same workload. Exclusive: a free pod, but only if enough are free that
    every older waiter still gets one (first come, first served). Shared: the least
    loaded pod; nobody waits. Ties go to the first name, so the choice is stable.
    """
    pods = sorted(set(ready))
    if not pods:
        return None
    if shared:
        return min(pods, key=lambda pod: load.get(pod, 0))
    free = [pod for pod in pods if load.get(pod, 0) <= 0]
    return free[0] if ahead < len(free) else None


@dataclass(frozen=True)
class Placement:
    pod: str | None  # None: the run waits
    newly_waiting: bool = False  # it started waiting just now (say so in its log once)
    wake_others: bool = False  # pods are left free while older runs wait: wake them


class PodGate:
    """Pod occupancy and waiting runs, per workload; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._occupied: dict[str, tuple[WorkloadKey, str]] = {}  # run_id -> (workload, pod)
        self._waiting: dict[WorkloadKey, dict[str, str]] = {}  # workload -> run_id -> order

    def occupy(self, run_id: str, workload: WorkloadKey, pod: str) -> None:
        """Record a run found in a pod (a run adopted after a restart)."""
        with self._lock:
            self._drop_waiter(run_id)
            self._occupied[run_id] = (workload, pod)

    def place(
        self, run_id: str, workload: WorkloadKey, *, order: str, ready: Iterable[str], shared: bool
    ) -> Placement:
        """Give the run a pod among ``ready`` (it occupies it from now on) or make it wait.

        ``order`` sorts waiting runs, oldest first (the run's creation time). A run
        that already occupies a pod gets that pod again.
        """
        with self._lock:
            held = self._occupied.get(run_id)
            if held is not None:
                return Placement(held[1])
            waiting = self._waiting.get(workload) or {}
            ahead = sum(1 for other, key in waiting.items() if other != run_id and key < order)
            load = self._load(workload)
            pod = choose_pod(ready, load, shared=shared, ahead=ahead)
            if pod is None:
                newly = run_id not in waiting
                self._waiting.setdefault(workload, {})[run_id] = order
                return Placement(None, newly_waiting=newly)
            self._drop_waiter(run_id)
            self._occupied[run_id] = (workload, pod)
            free_left = sum(1 for p in set(ready) if p != pod and load.get(p, 0) <= 0)
            return Placement(pod, wake_others=bool(free_left and self._waiting.get(workload)))

    def release(self, run_id: str) -> WorkloadKey | None:
        """The run left its pod (ended, or never started in it): whose waiters to wake."""
        with self._lock:
            held = self._occupied.pop(run_id, None)
            return held[0] if held is not None else None

    def withdraw(self, run_id: str) -> WorkloadKey | None:
        """A waiting run will not start (cancelled, failed): the runs behind it move up."""
        with self._lock:
            return self._drop_waiter(run_id)

    def waiting(self, workload: WorkloadKey) -> list[str]:
        """The runs waiting for a pod of ``workload``, oldest first."""
        with self._lock:
            queue = self._waiting.get(workload) or {}
            return [run_id for run_id, _ in sorted(queue.items(), key=lambda item: item[1])]

    def occupants(self, workload: WorkloadKey) -> dict[str, str]:
        """run_id -> pod for the runs in the workload's pods."""
        with self._lock:
            return {run: pod for run, (w, pod) in self._occupied.items() if w == workload}

    def _load(self, workload: WorkloadKey) -> dict[str, int]:
        load: dict[str, int] = {}
        for held_workload, pod in self._occupied.values():
            if held_workload == workload:
                load[pod] = load.get(pod, 0) + 1
        return load

    def _drop_waiter(self, run_id: str) -> WorkloadKey | None:
        for workload, queue in list(self._waiting.items()):
            if queue.pop(run_id, None) is not None:
                if not queue:
                    del self._waiting[workload]
                return workload
        return None


@runtime_checkable
class PodExecutor(Protocol):
    """What placement needs from the exec executor."""

    def ready_pods(self, namespace: str, kind: str, name: str) -> list[str]: ...

    def launch_in(self, request: Launch, pod: str) -> Handle: ...


class ExecPlacement:
    """The run service's side of exec runs: a pod for each, waiting and waking.

    ``note`` writes a line in a run's log; ``wake`` asks the run service to try to
    launch a queued run again (it calls :meth:`place` from there).
    """

    def __init__(
        self,
        store: Store,
        executor: PodExecutor,
        *,
        note: Callable[[str, str], None],
        wake: Callable[[str], None],
    ) -> None:
        self.store = store
        self.executor = executor
        self.note = note
        self.wake = wake
        self.gate = PodGate()

    def place(self, run_id: str) -> str | None:
        """The pod the queued run starts in now, or None: it waits (or is not queued).

        The workload must still be the one the run was accepted for: deleted, or
        deleted and provisioned again (maybe by someone else) since, fails the run.
        """
        run = self.store.get_run(run_id)
        workload = workload_of(run) if run is not None else None
        if run is None or workload is None or run.state is not RunState.QUEUED:
            return None
        record = provisioned(self.store, workload.namespace, workload.kind, workload.name)
        if record is None or record.created_at > run.created_at:
            raise NotFound(
                f"{workload} in namespace {workload.namespace} was deleted or replaced"
                " after the run was submitted"
            )
        ready = self.executor.ready_pods(workload.namespace, workload.kind, workload.name)
        if not ready:
            raise Conflict(f"{workload} in {workload.namespace} has no ready pod to run in")
        placed = self.gate.place(
            run_id,
            workload,
            order=f"{run.created_at.isoformat()} {run_id}",
            ready=ready,
            shared=record.spec.shared,
        )
        if placed.newly_waiting:
            self.note(
                run_id,
                f"waiting for a free pod of {workload}: each of its pods runs one run at a"
                " time (shared: false)",
            )
            log.info("run waits for a pod", extra={"run_id": run_id, "workload": str(workload)})
        if placed.wake_others:
            self._wake_waiters(workload)
        return placed.pod

    def launch(self, request: Launch, pod: str) -> Handle:
        return self.executor.launch_in(request, pod)

    def adopt(self, run: Run, handle: Handle) -> None:
        """A run found alive after a restart still occupies the pod its handle names."""
        workload = workload_of(run)
        if workload is not None and handle.get("pod"):
            self.gate.occupy(run.run_id, workload, str(handle["pod"]))

    def vacate(self, run_id: str) -> None:
        """The run left its pod (ended, or did not start there): the waiters try again."""
        workload = self.gate.release(run_id)
        if workload is not None:
            self._wake_waiters(workload)

    def withdraw(self, run_id: str) -> None:
        """A waiting run will not start: the runs behind it move up."""
        workload = self.gate.withdraw(run_id)
        if workload is not None:
            self._wake_waiters(workload)

    def _wake_waiters(self, workload: WorkloadKey) -> None:
        for run_id in self.gate.waiting(workload):
            self.wake(run_id)
