"""Use cases for runs: submit, track, cancel, and re-attach after a restart.

The service owns each run's state; executors only start, wait for and stop
runners. A dispatcher thread starts queued local runs while fewer than
``max_concurrent_runs`` are active; Kubernetes runs are launched by a small
pool, as fast as the API budget (``api.qps``/``burst``) lets them. Threads do
not grow with the runs in flight: a Job's end is a callback from the
executor's watches (:class:`~controller.executors.EventExecutor`); only local
and exec runs, bounded by the concurrency limit and the provisioned pods, have
a thread waiting for their runner. Cancelling answers at once: the run carries
``cancel_requested`` until its runner is gone, then is ``cancelled`` (with
``wait`` the call returns only then). Runners outlive the service: on start,
:meth:`RunService.start` adopts those still alive and settles those that ended
meanwhile.

Exec runs (``sts/<name>``, ``deploy/<name>``) go only into workloads the caller
provisioned, and get a pod of their own unless the workload is ``shared``; one
that finds every pod busy stays queued until a run on that workload ends
(:mod:`controller.services.placement`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from controller.adapters import gitrepo, liveplots
from controller.adapters.store import IdempotentAnswer, Store
from controller.domain.bundle import is_local_url
from controller.domain.errors import (
    Conflict,
    ExternalError,
    InvalidInput,
    MlexpError,
    NotFound,
    TooManyRequests,
)
from controller.domain.k8sconfig import NamespacePolicy
from controller.domain.liveplots import live_text
from controller.domain.models import JsonValue, Run, RunResult, RunState, utcnow
from controller.domain.naming import new_id, run_branch
from controller.domain.params import apply_overrides
from controller.domain.plots import IMAGE_SUFFIXES, LIVE_MISSING, PlotRows, plot_rows
from controller.domain.resources import ResourceRef, parse_resource
from controller.executors import EventExecutor, Executor, Handle, Launch, Outcome
from controller.planning.runs import (
    CA_FILES,
    credential_env,
    run_result,
    runner_spec,
)
from controller.services.auth import Principal
from controller.services.experiments import ExperimentService
from controller.services.placement import ExecPlacement, PodExecutor, check_access
from controller.settings import Settings

log = logging.getLogger("mlexp.runs")


@dataclass(frozen=True)
class RunRequest:
    experiment_id: str
    resource: str = "local"
    namespace: str | None = None
    params: Mapping[str, JsonValue] | None = None
    deadline_seconds: int | None = None
    # Set by the sweep service for its trials (never by a caller of POST /experiment/run).
    sweep_id: str | None = None
    # The request's Idempotency-Key: its answer is recorded in the transaction that records
    # the run, so a crash in between cannot make a retry queue the run a second time.
    idempotency_key: str | None = None


@dataclass(frozen=True)
class KubernetesSide:
    """What runs on Kubernetes need beyond their executors."""

    policy: NamespacePolicy
    default_image: str | None


# Which executor runs a resource kind; handles carry the same key.
EXECUTOR_OF = {"local": "local", "job": "job", "sts": "exec", "deploy": "exec"}
# What a caller at its max_active_runs is told to wait (runs take minutes, not seconds).
ACTIVE_RUNS_RETRY_SECONDS = 30
# Following a runner: a wait that fails (an API call, not the runner) is tried again,
# pausing 1, 2, 4, 8 s; then the runner is stopped rather than left unaccounted for.
WAIT_ATTEMPTS = 5
WAIT_RETRY_SECONDS = 1.0
NOTE_MAX_CHARS = 2000
# Kubernetes launches in parallel (each a few API calls, paced by the token bucket), and
# the workers that stop runners and settle their ends.
LAUNCH_WORKERS = 16
RUN_WORKERS = 8
RESTARTED_CANCEL = "cancelled (requested before the service restarted)"
LOCK_FILE = "dvc.lock"
PLOT_REPORT_SECONDS = 2.0  # how often a runner on Kubernetes reports its plot files


class RunService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        experiments: ExperimentService,
        executors: Mapping[str, Executor],
        kubernetes: KubernetesSide | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.experiments = experiments
        self.executors = executors
        self.kubernetes = kubernetes
        self._queue: queue.Queue[str] = queue.Queue()
        self._slots = threading.Semaphore(settings.max_concurrent_runs)
        # Per run: launch and cancel of one run exclude each other; different runs launch
        # in parallel.
        self._run_locks: dict[str, threading.Lock] = {}
        self._run_locks_guard = threading.Lock()
        # Runs being cancelled, with the reason their record will carry.
        self._cancelling: dict[str, str] = {}
        self._launcher = ThreadPoolExecutor(LAUNCH_WORKERS, thread_name_prefix="mlexp-launch")
        self._workers = ThreadPoolExecutor(RUN_WORKERS, thread_name_prefix="mlexp-run")
        self._stopping = threading.Event()
        self._dispatcher: threading.Thread | None = None
        self._subscribers: list[Callable[[Run, RunState | None], None]] = []
        pods = executors.get("exec")
        self._placement = (
            ExecPlacement(store, pods, note=self.note, wake=self._wake)
            if isinstance(pods, PodExecutor)
            else None
        )

    # -- state changes -------------------------------------------------------

    def subscribe(self, subscriber: Callable[[Run, RunState | None], None]) -> None:
        """Have ``subscriber`` called with the new record and the state it had before (None
        for a new run) after every recorded change (a new run included), in the thread
        that recorded it: it must not block, and it never calls back into an executor.
        Its errors are logged and go no further."""
        self._subscribers.append(subscriber)

    def _changed(self, run: Run, previous: RunState | None) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(run, previous)
            except Exception:
                log.exception("a run subscriber failed", extra={"run_id": run.run_id})

    def _transition(
        self,
        run_id: str,
        state: RunState,
        *,
        reason: str | None = None,
        result: RunResult | None = None,
        only_from: tuple[RunState, ...] | None = None,
    ) -> Run | None:
        """Record a change of state (see :meth:`Store.transition`) and tell subscribers."""
        changed = self.store.change_state(
            run_id, state, reason=reason, result=result, only_from=only_from
        )
        if changed is None:
            return None
        updated, previous = changed
        self._changed(updated, previous)
        return updated

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        self.reconcile()
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="mlexp-dispatch", daemon=True
        )
        self._dispatcher.start()

    def stop(self) -> None:
        """Stop dispatching; running runners go on and are adopted at the next start."""
        self._stopping.set()
        for executor in self.executors.values():
            executor.close()
        self._launcher.shutdown(wait=False, cancel_futures=True)
        self._workers.shutdown(wait=False, cancel_futures=True)
        if self._dispatcher is not None:
            self._dispatcher.join(timeout=5)

    def reconcile(self) -> None:
        started = time.monotonic()
        running = self.store.list_runs(states=[RunState.RUNNING], limit=100_000)
        for run in reversed(running):
            try:
                self._adopt(run)
            except Exception as exc:
                log.exception("re-attaching failed", extra={"run_id": run.run_id})
                detail = exc.detail if isinstance(exc, MlexpError) else type(exc).__name__
                reason = f"could not re-attach: {detail}"
                self._finish(run.run_id, Outcome("failed", reason=reason), check_publication=True)
        queued = self.store.list_runs(states=[RunState.QUEUED], limit=100_000)
        for run in reversed(queued):
            self._enqueue(run)
        log.info(
            "runs reconciled",
            extra={
                "running": len(running),
                "queued": len(queued),
                "seconds": round(time.monotonic() - started, 3),
            },
        )

    def _adopt(self, run: Run) -> None:
        executor = self._executor_for(run)
        handle = self.store.get_handle(run.run_id)
        if handle is None and run.resource == "job":
            # Launched, but the service stopped before recording it: launching again
            # finds the Job by its name and adopts it.
            self._submit(self._launcher, self._launch, run.run_id, False)
            return
        if handle is None and run.resource == "local":
            # A local runner waits for its start signal until its handle is recorded: with
            # none recorded, nothing ran (a runner started meanwhile got end of input and
            # exited untouched). The run goes back to the queue.
            self.note(run.run_id, "service restarted before the runner started; starting it")
            self._queue.put(run.run_id)
            return
        if handle is None:
            reason = "the service stopped before the runner started"
            self._finish(run.run_id, Outcome("failed", reason=reason))
            return
        if executor.is_active(handle):
            if self._placement is not None:
                self._placement.adopt(run, handle)  # it still occupies its pod
            self.note(run.run_id, "service restarted; re-attached to the running runner")
            log.info("run adopted", extra={"run_id": run.run_id})
            local = run.resource == "local"
            # Adopted local runs count against the limit when a slot is free; they run anyway.
            self._spawn_follower(run.run_id, handle, local and self._slots.acquire(blocking=False))
            if run.cancel_requested:  # asked for before the restart: ask again
                self._cancelling.setdefault(run.run_id, RESTARTED_CANCEL)
                self._submit(self._workers, self._stop_runner, run.run_id, False)
            return
        try:
            outcome = executor.outcome(handle)
            if outcome.state == "failed":
                reason = f"runner ended while the service was down: {outcome.reason}"
                outcome = Outcome("failed", reason=reason)
            self._finish(run.run_id, outcome, check_publication=True)
        finally:
            self._cleanup(executor, handle)

    def _executor_for(self, run: Run) -> Executor:
        kind = EXECUTOR_OF[run.resource.split("/", 1)[0]]
        if kind not in self.executors:  # recorded before local runs were disabled
            raise InvalidInput(f"{kind} runs are disabled on this service")
        return self.executors[kind]

    # -- use cases ---------------------------------------------------------

    def submit(self, principal: Principal, request: RunRequest) -> Run:
        experiment = self.experiments.get(principal, request.experiment_id)
        resource = parse_resource(request.resource)
        namespace = request.namespace
        if resource.kind == "local" and "local" not in self.executors:
            raise InvalidInput(
                "local runs are disabled on this service (local.enabled: false): run on "
                "Kubernetes with resource job, sts/<name> or deploy/<name>"
            )
        if resource.kind != "local":
            namespace = self._check_kubernetes(
                principal, experiment.experiment_id, namespace, resource
            )
        params = dict(request.params or {})
        apply_overrides(experiment.params, params)  # refuse bad overrides before recording
        self.experiments.check_locations(experiment.experiment_id)  # egress, as of now
        run = Run(
            run_id=new_id("run"),
            experiment_id=experiment.experiment_id,
            owner=principal.name,
            resource=str(resource),
            namespace=namespace,
            params=params,
            sweep_id=request.sweep_id,
            deadline_seconds=request.deadline_seconds,
            state=RunState.QUEUED,
            created_at=utcnow(),
        )
        answer = None
        if request.idempotency_key is not None:
            answer = (principal.name, request.idempotency_key, 202, run.model_dump_json().encode())
        self._admit(principal, run, answer)
        self._changed(run, None)
        self.note(
            run.run_id, f"run queued: experiment {experiment.experiment_id}, resource {resource}"
        )
        log.info(
            "run queued", extra={"run_id": run.run_id, "experiment_id": experiment.experiment_id}
        )
        self._enqueue(run)
        return run

    def _admit(self, principal: Principal, run: Run, answer: IdempotentAnswer | None) -> None:
        """Record the run, within the principal's ``max_active_runs`` (429 at the limit).

        The quota shares the service fairly between tenants; without a tokens file there
        is one tenant (this machine's users), and runs are only bounded by the queue.
        """
        if self.settings.tokens_file is None:
            self.store.add_run(run, answer=answer)
            return
        limit = principal.max_active_runs or self.settings.max_active_runs
        active = self.store.add_run_within(run, max_active=limit, answer=answer)
        if active >= limit:
            log.info("run refused: quota", extra={"principal": principal.name, "limit": limit})
            raise TooManyRequests(
                f"{principal.name!r} already has {active} queued or running runs, the limit "
                f"(max_active_runs) is {limit}; wait for one to finish or cancel one",
                retry_after=ACTIVE_RUNS_RETRY_SECONDS,
            )

    def _check_kubernetes(
        self,
        principal: Principal,
        experiment_id: str,
        namespace: str | None,
        resource: ResourceRef | None = None,
    ) -> str:
        """Refuse before any Kubernetes call: not configured (422), namespace (403), a
        workload the caller did not provision (404), image (422)."""
        if self.kubernetes is None:
            raise InvalidInput(
                "this resource runs on Kubernetes, which this service is not configured for "
                "(config/k8s-config.yaml); use resource 'local'"
            )
        checked = self.kubernetes.policy.check(
            namespace, caller_namespaces=principal.namespaces, caller_admin=principal.admin
        )
        if resource is not None:
            check_access(self.store, principal, resource, checked)
        registry = self.experiments.credentials(experiment_id).registry
        if not ((registry.image if registry else None) or self.kubernetes.default_image):
            raise InvalidInput(
                "no image for the run: set registry.image in repo_json or defaults.image "
                "in k8s-config.yaml"
            )
        return checked

    def _enqueue(self, run: Run) -> None:
        if run.resource == "local":
            self._queue.put(run.run_id)
        else:
            # Kubernetes schedules these; the local concurrency limit is not theirs.
            self._submit(self._launcher, self._launch, run.run_id, False)

    def _submit(self, pool: ThreadPoolExecutor, target: Callable[..., None], *args: object) -> None:
        def task() -> None:
            try:
                target(*args)
            except Exception:
                log.exception("run task failed", extra={"run_id": args[0], "task": target.__name__})

        if not self._stopping.is_set():
            with contextlib.suppress(RuntimeError):  # shut down: the service is stopping
                pool.submit(task)

    def get(self, principal: Principal, run_id: str) -> Run:
        run = self.store.get_run(run_id)
        if run is None or not principal.may_see(run.owner):
            raise NotFound(f"run {run_id!r} does not exist")
        return run

    def plots(self, principal: Principal, run_id: str) -> tuple[list[PlotRows], bool]:
        """The run's plots with their rows, and whether they are live.

        Succeeded: as recorded from its commit. Running: as its plot files stand now (live)
        -- read from its work dir (local runs) or from what its runner reported through
        its log (Kubernetes). Otherwise none.
        """
        run = self.get(principal, run_id)
        if run.state is RunState.RUNNING:
            return self._live_plots(run), True
        body = self.store.get_run_data(run_id, "plots") if run.state is RunState.SUCCEEDED else None
        if body is None:
            return [], False
        return [PlotRows.model_validate(plot) for plot in json.loads(body)], False

    def _live_plots(self, run: Run) -> list[PlotRows]:
        experiment = self.store.get_experiment(run.experiment_id)
        if experiment is None or not experiment.plots:
            return []
        paths = [
            path
            for plot in experiment.plots
            for path in plot.files
            if path.rsplit(".", 1)[-1].lower() not in IMAGE_SUFFIXES
        ]
        handle = self.store.get_handle(run.run_id)
        found: dict[str, bytes] = {}
        if handle is not None and handle.get("kind") == "local":
            found = liveplots.read_workdir(Path(str(handle["workdir"])) / "repo", paths)
        elif handle is not None:
            found = liveplots.ReportedPlots(liveplots.reported_dir(self.log_path(run.run_id))).read(
                paths
            )
        files = {path: live_text(path, data) for path, data in found.items()}
        rows = plot_rows(experiment.plots, files, missing=LIVE_MISSING)
        return [PlotRows.model_validate(plot) for plot in rows]

    def list(
        self,
        principal: Principal,
        *,
        experiment_id: str | None,
        states: list[RunState] | None,
        limit: int,
        offset: int,
    ) -> list[Run]:
        owner = None if principal.admin else principal.name
        return self.store.list_runs(
            experiment_id=experiment_id, states=states, owner=owner, limit=limit, offset=offset
        )

    def cancel(
        self, principal: Principal, run_id: str, *, wait: bool = False, reason: str | None = None
    ) -> Run:
        """Stop a run. A queued run is cancelled at once; a running one is marked
        ``cancel_requested`` and its runner told to stop, and the answer comes without
        waiting for it to be gone (with ``wait``: once it and everything it started are)."""
        run = self.get(principal, run_id)
        if run.state.terminal:
            raise Conflict(f"run {run_id!r} has already {run.state.value}")
        reason = reason or f"cancelled by {principal.name}"
        cancelled = self._transition(
            run_id, RunState.CANCELLED, reason=reason, only_from=(RunState.QUEUED,)
        )
        if cancelled is not None:
            self.note(run_id, f"{reason} (the run had not started)")
            if self._placement is not None:
                self._placement.withdraw(run_id)  # it may have been waiting for a pod
            return cancelled
        first = run_id not in self._cancelling
        self._cancelling.setdefault(run_id, reason)
        marked = self.store.request_cancel(run_id)
        if first:
            self.note(run_id, f"cancel requested by {principal.name}")
        if wait:
            self._stop_runner(run_id, True)
            return self.get(principal, run_id)
        if first:
            self._submit(self._workers, self._stop_runner, run_id, False)
        return marked if marked is not None else self.get(principal, run_id)

    def _stop_runner(self, run_id: str, wait: bool) -> None:
        """Stop a run's runner; record it cancelled once it is gone.

        Runs of an :class:`EventExecutor` (Jobs), without ``wait``, are only told to stop:
        their end comes through ``follow`` and is recorded as the cancel (:meth:`_settle`).
        """
        with self._run_lock(run_id):  # a launch in progress finishes (and records) first
            handle = self.store.get_handle(run_id)
        run = self.store.get_run(run_id)
        if run is None or run.state.terminal:
            self._cancelling.pop(run_id, None)
            return
        executor = self._executor_for(run)
        if handle is None:
            self._record_cancel(run_id, None, None)
            return
        if not wait and isinstance(executor, EventExecutor):
            if not executor.stop(handle):  # already gone: no end will come to settle it
                self._record_cancel(run_id, executor, handle)
            return
        try:
            stopped = executor.cancel(handle)
        except Exception:
            self._cancelling.pop(run_id, None)
            raise
        if not stopped:
            self._cancelling.pop(run_id, None)
            message = f"run {run_id!r} could not be stopped; it may still be running"
            self.note(run_id, message)
            raise ExternalError(message)
        self._record_cancel(run_id, executor, handle)

    def _record_cancel(self, run_id: str, executor: Executor | None, handle: Handle | None) -> None:
        reason = self._cancelling.pop(run_id, None) or RESTARTED_CANCEL
        if self._transition(run_id, RunState.CANCELLED, reason=reason) is not None:
            self.note(run_id, reason)
            log.info("run cancelled", extra={"run_id": run_id, "reason": reason})
            # Its follower left the work dir to us: now nothing of the run can write there.
            if executor is not None and handle is not None:
                self._cleanup(executor, handle)

    def want_log(self, run_id: str) -> None:
        """Someone follows the run's log: the executor saves it as it is written, first."""
        handle = self.store.get_handle(run_id)
        if handle is not None:
            executor = self.executors.get(str(handle.get("kind")))
            if isinstance(executor, EventExecutor):
                executor.want_log(handle)

    def _run_lock(self, run_id: str) -> threading.Lock:
        with self._run_locks_guard:
            return self._run_locks.setdefault(run_id, threading.Lock())

    def _forget_lock(self, run_id: str) -> None:
        with self._run_locks_guard:
            self._run_locks.pop(run_id, None)

    def log_path(self, run_id: str) -> Path:
        return self.settings.logs_dir / f"{run_id}.log"

    def note(self, run_id: str, message: str) -> None:
        """A line of the service's own in the run's log, beside the runner's output.

        Three system calls (open, write, close): on the submission path each one hands
        the GIL over under load, and a buffered file makes ten (bench/api_floor.py).
        """
        path = self.log_path(run_id)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        if len(message) > NOTE_MAX_CHARS:  # reasons may quote a runner's (untrusted) words
            message = message[:NOTE_MAX_CHARS] + " …"
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        try:
            fd = os.open(path, flags, 0o666)
        except FileNotFoundError:  # the logs dir is made at start; removed meanwhile?
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, flags, 0o666)
        try:
            os.write(fd, f"[mlexp {stamp}] {message}\n".encode())
        finally:
            os.close(fd)

    # -- machinery ---------------------------------------------------------

    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            try:
                run_id = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            while not self._slots.acquire(timeout=0.2):
                if self._stopping.is_set():
                    return
            try:
                self._launch(run_id, True)
            except Exception:
                log.exception("run launch failed", extra={"run_id": run_id})
                self._slots.release()

    def _launch(self, run_id: str, holds_slot: bool) -> None:
        def release() -> None:
            if holds_slot:
                self._slots.release()

        run = self.store.get_run(run_id)
        if run is None or run.state.terminal:
            release()
            if self._placement is not None:
                self._placement.withdraw(run_id)  # woken after it was cancelled
            return
        experiment = self.store.get_experiment(run.experiment_id)
        assert experiment is not None
        executor = self._executor_for(run)
        placement = (
            self._placement if EXECUTOR_OF.get(run.resource.split("/")[0]) == "exec" else None
        )
        with self._run_lock(run_id):
            pod: str | None = None
            if placement is not None:
                try:
                    pod = placement.place(run_id)
                except Exception as exc:
                    log.exception("no pod for the run", extra={"run_id": run_id})
                    detail = exc.detail if isinstance(exc, MlexpError) else type(exc).__name__
                    placement.withdraw(run_id)
                    self._finish(
                        run_id, Outcome("failed", reason=f"the runner did not start: {detail}")
                    )
                    return
                if pod is None:
                    return  # it waits for a free pod (or a twin of this call launched it)
            if (
                run.state is RunState.QUEUED
                and self._transition(run_id, RunState.RUNNING, only_from=(RunState.QUEUED,)) is None
            ):
                release()
                self._vacate(run_id)
                return
            try:
                local = run.resource == "local"
                # One DVC cache (and run-cache) per experiment: runs of one experiment share
                # it, nothing computed for one experiment is reused by another.
                cache = self.settings.cache_dir / experiment.experiment_id if local else None
                spec = runner_spec(
                    run=run,
                    experiment=experiment,
                    cache_dir=str(cache) if cache else None,
                    # Local runs' plot files are read in their work dir; elsewhere reported.
                    plot_report_seconds=None if local else PLOT_REPORT_SECONDS,
                )
                spec["log_max_bytes"] = self.settings.log_max_bytes  # the runner caps its log
                repo = self.experiments.credentials(experiment.experiment_id)
                files: dict[str, str] = {}
                if local:  # the runner runs on this host: it reads the CA files where they are
                    env = credential_env(
                        repo,
                        git_ca_bundle=_path(self.settings.git_ca_bundle),
                        s3_ca_bundle=_path(self.settings.storage.ca_bundle),
                    )
                else:  # they travel with the spec: no path of this host means anything there
                    env = credential_env(repo)
                    files = _ca_files(self.settings)
                    spec["ca_files"] = {
                        use: name for use, name in CA_FILES.items() if name in files
                    }
                writable = _local_paths(experiment.git_url, experiment.dvc_url, cache)
                launch = Launch(
                    run, spec, env, repo, self.log_path(run_id), writable,
                    record=lambda handle: self.store.set_handle(run_id, handle), files=files,
                )  # fmt: skip
                if placement is not None and pod is not None:
                    handle = placement.launch(launch, pod)
                else:
                    handle = executor.launch(launch)
                self.store.set_handle(run_id, handle)
            except Exception as exc:
                log.exception("runner did not start", extra={"run_id": run_id})
                detail = exc.detail if isinstance(exc, MlexpError) else type(exc).__name__
                self._finish(
                    run_id, Outcome("failed", reason=f"the runner did not start: {detail}")
                )
                release()
                self._vacate(run_id)
                return
        self.note(run_id, f"run started on {run.resource}" + (f", pod {pod}" if pod else ""))
        self._spawn_follower(run_id, handle, holds_slot=holds_slot)

    def _published(self, run: Run) -> Outcome:
        """The run's result as published: its branch and metrics, read back from git."""
        experiment = self.store.get_experiment(run.experiment_id)
        assert experiment is not None
        ca = self.settings.git_ca_bundle
        try:
            repo = self.experiments.credentials(run.experiment_id)
            access = gitrepo.GitAccess(
                url=experiment.git_url,
                username=repo.git.username,
                token=repo.git.token.get_secret_value() if repo.git.token else None,
                ca_bundle=str(ca) if ca else None,
            )
            plot_files = [
                path
                for plot in experiment.plots
                for path in plot.files
                if path.rsplit(".", 1)[-1].lower() not in IMAGE_SUFFIXES  # no rows to read
            ]
            found = gitrepo.read_published(
                access,
                branch=run_branch(run.run_id),
                paths=[*experiment.metrics_files, LOCK_FILE, *plot_files],
                base_env=os.environ,
            )
        except MlexpError as exc:
            return Outcome("failed", reason=f"could not read the published result: {exc.detail}")
        except Exception as exc:  # e.g. a metrics file that is not text
            log.exception("reading the published result failed", extra={"run_id": run.run_id})
            reason = f"could not read the published result: {type(exc).__name__}"
            return Outcome("failed", reason=reason)
        if found is None:
            reason = f"the runner reported success but {run_branch(run.run_id)} was not published"
            return Outcome("failed", reason=reason)
        commit, files = found
        return Outcome("succeeded", commit=commit, metrics_files=files)

    def stuck(self, run_id: str, reason: str) -> None:
        """A running run that cannot make progress says why (Unschedulable, ImagePullBackOff…)."""
        run = self.store.get_run(run_id)
        if run is None or run.state is not RunState.RUNNING or run.reason == reason:
            return
        if self._transition(run_id, RunState.RUNNING, reason=reason, only_from=(RunState.RUNNING,)):
            self.note(run_id, f"waiting: {reason}")

    def _spawn_follower(self, run_id: str, handle: Handle, holds_slot: bool) -> None:
        executor = self.executors[str(handle["kind"])]
        if isinstance(executor, EventExecutor):
            executor.follow(
                handle, lambda outcome: self._settle(run_id, executor, handle, holds_slot, outcome)
            )
            return
        thread = threading.Thread(
            target=self._follow,
            args=(run_id, executor, handle, holds_slot),
            name=f"mlexp-{run_id}",
            daemon=True,
        )
        thread.start()

    def _follow(self, run_id: str, executor: Executor, handle: Handle, holds_slot: bool) -> None:
        try:
            outcome = self._wait(run_id, executor, handle)
        except Exception:  # a bug or the disk: the run must end all the same
            log.exception("following run failed", extra={"run_id": run_id})
            outcome = Outcome("failed", reason="the service lost track of the runner")
        self._settle(run_id, executor, handle, holds_slot, outcome)

    def _settle(
        self,
        run_id: str,
        executor: Executor,
        handle: Handle,
        holds_slot: bool,
        outcome: Outcome | None,
    ) -> None:
        """The runner has ended (None: the service stops first): record how, and free its
        slot and pod."""
        settled = False
        try:
            if outcome is None or self._stopping.is_set():
                return  # the service is stopping: the next start settles this run
            if run_id in self._cancelling and outcome.state != "succeeded":
                # A run being cancelled is recorded so once its processes are gone: for a
                # Job, that is this end; for the others, cancel() waits for their group.
                if isinstance(executor, EventExecutor):
                    self._record_cancel(run_id, None, None)
                    settled = True
            else:
                self._finish(run_id, outcome, check_publication=True)
                settled = True
        finally:
            if settled:
                self._cleanup(executor, handle)
            self._forget_lock(run_id)
            if holds_slot:
                self._slots.release()
            self._vacate(run_id)

    def _wait(self, run_id: str, executor: Executor, handle: Handle) -> Outcome | None:
        """How the runner ended; None if the service stops first.

        A wait that fails (an API call failed, not necessarily the runner) is tried
        again; a runner that ended meanwhile is asked how. One that still runs but
        cannot be followed is stopped, so no run goes on unaccounted for.
        """
        pause = WAIT_RETRY_SECONDS
        for attempt in range(1, WAIT_ATTEMPTS + 1):
            try:
                outcome = executor.wait(handle)
                return None if self._stopping.is_set() else outcome
            except Exception:
                if self._stopping.is_set():
                    return None
                log.exception("waiting for the runner failed", extra={"run_id": run_id})
            try:
                if not executor.is_active(handle):
                    return executor.outcome(handle)
            except Exception:
                log.exception("asking after the runner failed", extra={"run_id": run_id})
            if attempt < WAIT_ATTEMPTS and self._stopping.wait(pause):
                return None
            pause *= 2
        self.note(run_id, "the service lost track of the runner; stopping it")
        try:
            stopped = executor.cancel(handle)
        except Exception:
            log.exception("stopping a runner it lost track of failed", extra={"run_id": run_id})
            stopped = False
        return Outcome(
            "failed",
            reason="the service lost track of the runner"
            + ("; it was stopped" if stopped else ", and could not stop it"),
        )

    def _cleanup(self, executor: Executor, handle: Handle) -> None:
        """Remove what the run left where it ran (the executor keeps it if configured to),
        and the plot files its runner reported (the run's record has them now)."""
        if "log" in handle:
            liveplots.ReportedPlots(liveplots.reported_dir(Path(str(handle["log"])))).remove()
        try:
            executor.cleanup(handle)
        except Exception:
            log.exception("cleaning up after a run failed", extra={"handle_kind": handle["kind"]})

    def _vacate(self, run_id: str) -> None:
        """The run no longer occupies a pod: runs waiting for one try again."""
        if self._placement is not None:
            self._placement.vacate(run_id)

    def _wake(self, run_id: str) -> None:
        self._submit(self._launcher, self._launch, run_id, False)

    def _finish(self, run_id: str, outcome: Outcome, *, check_publication: bool = False) -> None:
        """Record how a run ended; never raises (followers and start-up call it).

        A run's outcome is its publication: with ``check_publication`` a runner that
        reported a failure (or none) but whose branch was pushed has succeeded.
        """
        try:
            self._record(run_id, outcome, check_publication)
        except Exception:
            log.exception("recording how a run ended failed", extra={"run_id": run_id})
            with contextlib.suppress(Exception):
                reason = "the service could not record how the run ended; see its log"
                if self._transition(run_id, RunState.FAILED, reason=reason):
                    self.note(run_id, f"run failed: {reason}")

    def _record(self, run_id: str, outcome: Outcome, check_publication: bool) -> None:
        run = self.store.get_run(run_id)
        if run is None or run.state.terminal:
            return
        if outcome.state == "succeeded":
            # Always the branch as published (metrics, dvc.lock, plots), whatever the
            # runner read in its work dir.
            outcome = self._published(run)
        elif outcome.state == "failed" and check_publication:
            published = self._published(run)
            if published.state == "succeeded":
                self.note(
                    run_id,
                    f"the runner reported a failure ({outcome.reason}), but "
                    f"{run_branch(run_id)} was published: the run succeeded",
                )
                outcome = published
        if outcome.state == "succeeded" and outcome.commit:
            experiment = self.store.get_experiment(run.experiment_id)
            assert experiment is not None
            warnings: list[str] = []
            files = outcome.metrics_files
            result = run_result(
                run=run,
                experiment=experiment,
                commit=outcome.commit,
                metrics_files={p: files[p] for p in experiment.metrics_files if p in files},
                warnings=warnings,
                lock_text=files.get(LOCK_FILE),
            )
            if experiment.plots:  # before the state: whoever sees `succeeded` finds them
                rows = plot_rows(experiment.plots, files)
                self.store.put_run_data(run_id, "plots", json.dumps(rows))
            if self._transition(run_id, RunState.SUCCEEDED, result=result):
                for warning in warnings:
                    self.note(run_id, f"warning: {warning}")
                self.note(run_id, f"run succeeded: {result.branch} at {result.commit}")
                log.info("run succeeded", extra={"run_id": run_id, "commit": result.commit})
            return
        reason = outcome.reason or "the runner failed"
        if self._transition(run_id, RunState.FAILED, reason=reason):
            self.note(run_id, f"run failed: {reason}")
            log.info("run failed", extra={"run_id": run_id, "reason": reason})


def _local_paths(git_url: str, dvc_url: str, cache: Path | None) -> tuple[Path, ...]:
    """What a local run writes outside its work dir: its cache, and local repo and remote."""
    if cache is None:
        return ()
    paths = [cache]
    paths += [Path(url.removeprefix("file://")) for url in (git_url, dvc_url) if is_local_url(url)]
    return tuple(paths)


def _path(path: Path | None) -> str | None:
    return str(path) if path else None


MAX_CA_BYTES = 256 * 1024


def _ca_files(settings: Settings) -> dict[str, str]:
    """The private CA certificates' text by file name (``CA_FILES``), read from the
    settings' paths, for a run on Kubernetes: its pod gets their content (in its
    ConfigMap, or copied in with the runner), never a path of this host.

    Raises ``ExternalError`` when a configured file cannot be read or is not PEM text.
    """
    found: dict[str, str] = {}
    for use, path in (("git", settings.git_ca_bundle), ("s3", settings.storage.ca_bundle)):
        if path is None:
            continue
        try:
            data = path.read_bytes()[: MAX_CA_BYTES + 1]
        except OSError as exc:
            raise ExternalError(f"the {use} CA bundle cannot be read: {exc.strerror}") from None
        if len(data) > MAX_CA_BYTES or b"-----BEGIN CERTIFICATE-----" not in data:
            raise ExternalError(
                f"the {use} CA bundle is not PEM certificates of at most {MAX_CA_BYTES} bytes"
            )
        found[CA_FILES[use]] = data.decode("ascii", errors="replace")
    return found
