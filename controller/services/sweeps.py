"""Use cases for sweeps: start one, follow its trials, stop, cancel, resume after a restart.

Each trial is an ordinary run submitted through :meth:`RunService.submit` with the
sweep's id (same publication: a branch of its own). The service reacts to run state
changes (:meth:`RunService.subscribe`): the subscriber only queues the sweep's id, and
one thread of this service (``mlexp-sweeps``) does the work — launch trials while fewer
than ``max_parallel`` of the sweep's runs are queued or running, tell an adaptive study
how a trial ended, check ``stop``, end the sweep once every trial has ended. Nothing
polls: a sweep moves only when one of its runs changes state (or, for a sweep waiting on
its owner's ``max_active_runs`` quota, when any run of that owner ends).

The state that matters is in the store: the sweep's record, and its trials as runs
tagged with its id. The next grid or random trial is the one whose index is the number
of runs the sweep has; ``max_parallel`` counts the sweep's queued and running runs. So
after a restart (:meth:`SweepService.start`) the sweep goes on where it was, with the
same bound, and no trial is started twice.

Adaptive sweeps keep an Optuna study in memory (TPE, ask-and-tell). After a restart
it is rebuilt from the recorded trials: finished ones are added with their values (or
as failed), queued and running ones are enqueued and asked again, so they are told
when they end. The sampler is re-seeded before each ask with ``seed + trial number``:
the params asked for trial *n* depend only on the seed and the trials told so far, so
with ``max_parallel: 1`` an adaptive sweep asks the same params with or without a
restart; with more in parallel, the order in which trials end (timing) matters.

After a restart, trials are submitted as the sweep's owner, looked up by name among the
principals the service knows now (a sweep whose owner is gone fails at its next trial).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from controller.adapters.store import Store
from controller.domain.errors import Conflict, MlexpError, NotFound, TooManyRequests
from controller.domain.models import JsonValue, Run, RunState, utcnow
from controller.domain.naming import new_id
from controller.domain.params import apply_overrides
from controller.domain.resources import parse_resource
from controller.domain.results import Goal, metric_number
from controller.domain.sweeps import (
    AdaptiveSearch,
    Choice,
    IntRange,
    Sweep,
    SweepCreated,
    SweepRequest,
    SweepState,
    SweepSummary,
    SweepView,
    check_size,
    probe_trials,
    random_trials,
    stop_reached,
    sweep_view,
    trial_params,
)
from controller.services.auth import Principal, TokenRegistry
from controller.services.events import Event, EventBus
from controller.services.runs import RunRequest, RunService
from controller.settings import Settings

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("mlexp.sweeps")

ACTIVE = [RunState.QUEUED, RunState.RUNNING]


class AdaptiveStudy:
    """An Optuna TPE study driven by ask-and-tell, with the run each asked trial became."""

    def __init__(self, search: AdaptiveSearch, goal: Goal) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.search = search
        self.distributions = _distributions(search)
        self.study = optuna.create_study(
            direction="maximize" if goal == "max" else "minimize", sampler=self._sampler(0)
        )
        self.asked: dict[str, optuna.trial.Trial] = {}  # run id -> its trial, not yet told
        self.told: set[str] = set()
        self.spare: optuna.trial.Trial | None = None  # asked, but its run was not admitted

    def _sampler(self, number: int) -> optuna.samplers.BaseSampler:
        import optuna

        return optuna.samplers.TPESampler(seed=(self.search.seed + number) % 2**32)

    def ask(self) -> tuple[optuna.trial.Trial, dict[str, JsonValue]]:
        if self.spare is None:
            self.study.sampler = self._sampler(len(self.study.trials))
            self.spare = self.study.ask(self.distributions)
        trial = self.spare
        return trial, {key: trial.params[key] for key in self.search.space}

    def bind(self, run_id: str, trial: optuna.trial.Trial) -> None:
        self.asked[run_id] = trial
        if trial is self.spare:
            self.spare = None

    def tell(self, run: Run, metric: str) -> None:
        """Tell the study how ``run`` (a trial of it) ended; once."""
        import optuna

        trial = self.asked.pop(run.run_id, None)
        if trial is None or run.run_id in self.told:
            return
        self.told.add(run.run_id)
        value = _value(run, metric)
        if value is None:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, value)

    @classmethod
    def rebuild(
        cls, search: AdaptiveSearch, goal: Goal, metric: str, runs: list[Run]
    ) -> AdaptiveStudy:
        """The study of a sweep's recorded trials (in the order they were made)."""
        import optuna

        study = cls(search, goal)
        for run in runs:
            params = {key: run.params.get(key) for key in search.space}
            try:
                if run.state.terminal:
                    value = _value(run, metric)
                    state = optuna.trial.TrialState.COMPLETE
                    if value is None:
                        state = optuna.trial.TrialState.FAIL
                    study.study.add_trial(
                        optuna.trial.create_trial(
                            params=params,
                            distributions=study.distributions,
                            value=value,
                            state=state,
                        )
                    )
                    study.told.add(run.run_id)
                else:
                    study.study.enqueue_trial(params, skip_if_exists=False)
                    study.study.sampler = study._sampler(len(study.study.trials))
                    study.asked[run.run_id] = study.study.ask(study.distributions)
            except ValueError:  # params outside the space (cannot happen unless edited)
                log.warning("trial not added to the study", extra={"run_id": run.run_id})
        return study


def _distributions(search: AdaptiveSearch) -> dict[str, Any]:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    distributions: dict[str, Any] = {}
    for key, space in search.space.items():
        if isinstance(space, Choice):
            distributions[key] = CategoricalDistribution(space.values)  # type: ignore[arg-type]
        elif isinstance(space, IntRange):
            distributions[key] = IntDistribution(space.low, space.high)
        else:
            log_scale = space.type == "loguniform"
            distributions[key] = FloatDistribution(space.low, space.high, log=log_scale)
    return distributions


def _value(run: Run, metric: str) -> float | None:
    if run.state is not RunState.SUCCEEDED or run.result is None:
        return None
    return metric_number(run.result.flat_metrics.get(metric))


@dataclass
class _Live:
    """What the service keeps in memory of a running sweep (rebuilt from the store)."""

    sweep: Sweep
    principal: Principal | None
    randoms: list[dict[str, JsonValue]] | None = None
    study: AdaptiveStudy | None = None
    # Trials whose end has been looked at (told to the study, checked against `stop`).
    seen: set[str] = field(default_factory=set)


class SweepService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        runs: RunService,
        principals: Callable[[str], Principal | None],
        events: EventBus | None = None,
    ) -> None:
        self.settings = settings
        self.events = events
        self.store = store
        self.runs = runs
        self._principals = principals
        self._live: dict[str, _Live] = {}
        self._lock = threading.RLock()  # one sweep decision at a time
        self._events: queue.Queue[str | None] = queue.Queue()
        self._pending: set[str] = set()
        # Sweeps waiting for their owner's quota, by owner: any run of theirs that ends
        # wakes them. Guarded by _guard (the subscriber reads it in the recording thread).
        self._waiting: dict[str, set[str]] = {}
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None
        runs.subscribe(self._on_run)

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Resume the running sweeps (after the run service has reconciled its runs)."""
        for sweep in self.store.list_sweeps(states=[SweepState.RUNNING], limit=100_000):
            self._notify(sweep.sweep_id)
        self._thread = threading.Thread(target=self._loop, name="mlexp-sweeps", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._events.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _on_run(self, run: Run, previous: RunState | None) -> None:
        """Run subscriber (in the recording thread): only queue what to look at."""
        if run.sweep_id is not None:
            self._notify(run.sweep_id)
        if run.state.terminal:
            with self._guard:
                waiting = list(self._waiting.get(run.owner, ()))
            for sweep_id in waiting:
                self._notify(sweep_id)

    def _notify(self, sweep_id: str) -> None:
        with self._guard:
            if sweep_id in self._pending:
                return
            self._pending.add(sweep_id)
        self._events.put(sweep_id)

    def _loop(self) -> None:
        while True:
            sweep_id = self._events.get()
            if sweep_id is None:
                return
            with self._guard:
                self._pending.discard(sweep_id)
            try:
                with self._lock:
                    self._advance(sweep_id)
            except Exception:
                log.exception("sweep step failed", extra={"sweep_id": sweep_id})

    # -- use cases -----------------------------------------------------------

    def create(self, principal: Principal, request: SweepRequest) -> SweepCreated:
        """Check the request, record the sweep and start its first trials.

        Nothing is recorded for a request that cannot work: unknown experiment (404),
        too many trials or a key the experiment's params lack (422), a resource or
        namespace the first trial is refused (as a run would be).
        """
        experiment = self.runs.experiments.get(principal, request.experiment_id)
        total = check_size(request, self.settings.max_sweep_runs)
        parse_resource(request.resource)
        for overrides in probe_trials(request):
            apply_overrides(experiment.params, overrides)
        sweep = Sweep(
            sweep_id=new_id("sweep"),
            experiment_id=experiment.experiment_id,
            owner=principal.name,
            state=SweepState.RUNNING,
            request=request,
            total_trials=total,
            created_at=utcnow(),
        )
        self.store.add_sweep(sweep)
        log.info(
            "sweep started",
            extra={"sweep_id": sweep.sweep_id, "experiment_id": sweep.experiment_id},
        )
        with self._lock:
            self._live[sweep.sweep_id] = self._revive(sweep, principal)
            try:
                self._advance(sweep.sweep_id, first=True)
            except MlexpError:
                self._live.pop(sweep.sweep_id, None)
                self.store.delete_sweep(sweep.sweep_id)
                raise
        view = self.get(principal, sweep.sweep_id)
        return SweepCreated(**view.model_dump(), run_ids=[t.run_id for t in view.trials])

    def get(self, principal: Principal, sweep_id: str) -> SweepView:
        sweep = self._sweep(principal, sweep_id)
        return sweep_view(sweep, self._trials(sweep))

    def list_sweeps(
        self, principal: Principal, *, experiment_id: str | None, limit: int, offset: int
    ) -> list[SweepSummary]:
        owner = None if principal.admin else principal.name
        sweeps = self.store.list_sweeps(
            experiment_id=experiment_id, owner=owner, limit=limit, offset=offset
        )
        counts = self.store.sweep_run_counts([s.sweep_id for s in sweeps])
        return [SweepSummary(**s.model_dump(), counts=counts[s.sweep_id]) for s in sweeps]

    def cancel(self, principal: Principal, sweep_id: str) -> SweepView:
        """End the sweep: its queued and running trials are cancelled, finished ones stay."""
        sweep = self._sweep(principal, sweep_id)
        with self._lock:
            ended = self.store.end_sweep(
                sweep_id, SweepState.CANCELLED, f"cancelled by {principal.name}"
            )
            if ended is None:
                current = self.store.get_sweep(sweep_id)
                state = current.state.value if current else sweep.state.value
                raise Conflict(f"sweep {sweep_id!r} has already ended ({state})")
            self._cancel_trials(ended, f"sweep {sweep_id} cancelled by {principal.name}")
            self._forget(sweep_id)
            self._finished(ended)
        log.info("sweep cancelled", extra={"sweep_id": sweep_id})
        return self.get(principal, sweep_id)

    def _sweep(self, principal: Principal, sweep_id: str) -> Sweep:
        sweep = self.store.get_sweep(sweep_id)
        if sweep is None or not principal.may_see(sweep.owner):
            raise NotFound(f"sweep {sweep_id!r} does not exist")
        return sweep

    def _trials(self, sweep: Sweep) -> list[Run]:
        """The sweep's runs in the order they were made."""
        runs = self.store.list_runs(sweep_id=sweep.sweep_id, limit=sweep.total_trials + 1)
        return sorted(runs, key=lambda run: (run.created_at, run.run_id))

    # -- machinery -----------------------------------------------------------

    def _revive(self, sweep: Sweep, principal: Principal | None) -> _Live:
        request = sweep.request
        live = _Live(sweep, principal)
        if request.random is not None:
            live.randoms = [{**request.params, **t} for t in random_trials(request.random)]
        if request.adaptive is not None:
            assert request.objective is not None
            objective = request.objective
            live.study = AdaptiveStudy.rebuild(
                request.adaptive, objective.goal, objective.metric, self._trials(sweep)
            )
        return live

    def _forget(self, sweep_id: str) -> None:
        live = self._live.pop(sweep_id, None)
        if live is not None:
            with self._guard:
                self._waiting.get(live.sweep.owner, set()).discard(sweep_id)

    def _advance(self, sweep_id: str, *, first: bool = False) -> None:
        """Look at the sweep's trials and do what is due (the lock held)."""
        sweep = self.store.get_sweep(sweep_id)
        if sweep is None or sweep.state.terminal:
            self._forget(sweep_id)
            return
        live = self._live.get(sweep_id)
        if live is None:  # after a restart: rebuilt from the store
            live = self._live[sweep_id] = self._revive(sweep, self._principals(sweep.owner))
        request = sweep.request
        # States only (no record parsed); the records of trials that ended since the last
        # look are read once each: a sweep of n trials costs O(n) per change, not O(n) parses.
        states = self.store.sweep_run_states(sweep_id)
        ended = []
        for run_id, state in states:
            if state.terminal and run_id not in live.seen:
                run = self.store.get_run(run_id)
                if run is not None:
                    ended.append(run)
                live.seen.add(run_id)
        if live.study is not None and request.objective is not None:
            for run in ended:
                live.study.tell(run, request.objective.metric)
        if self._stopped(sweep, ended):
            return
        active = sum(1 for _, state in states if not state.terminal)
        made = len(states)
        with self._guard:
            self._waiting.get(sweep.owner, set()).discard(sweep_id)
        while active < request.max_parallel and made < sweep.total_trials:
            if live.principal is None:
                self._end(sweep, SweepState.FAILED, f"its owner {sweep.owner!r} is not known")
                return
            trial = None
            if live.study is not None:
                trial, searched = live.study.ask()
                overrides = {**request.params, **searched}
            elif live.randoms is not None:
                overrides = live.randoms[made]
            else:
                overrides = trial_params(request, made)
            try:
                run = self.runs.submit(
                    live.principal,
                    RunRequest(
                        sweep.experiment_id,
                        request.resource,
                        request.namespace,
                        overrides,
                        request.deadline_seconds,
                        sweep_id=sweep_id,
                    ),
                )
            except TooManyRequests:
                # The owner's max_active_runs is used up: the trial waits for one of their
                # runs to end (the subscriber wakes this sweep then).
                with self._guard:
                    self._waiting.setdefault(sweep.owner, set()).add(sweep_id)
                log.info("sweep waits for its owner's quota", extra={"sweep_id": sweep_id})
                return
            except MlexpError as exc:
                if first and made == 0:
                    raise
                self._end(sweep, SweepState.FAILED, f"trial {made} was refused: {exc.detail}")
                return
            if live.study is not None and trial is not None:
                live.study.bind(run.run_id, trial)
            active += 1
            made += 1
        if made >= sweep.total_trials and active == 0:
            self._end(sweep, SweepState.COMPLETED, None)

    def _stopped(self, sweep: Sweep, trials: list[Run]) -> bool:
        """End the sweep if a succeeded trial reached the stop threshold."""
        request = sweep.request
        metric, goal = request.stop_metric, request.stop_goal
        if request.stop is None or metric is None or goal is None:
            return False
        for run in trials:
            value = _value(run, metric)
            if stop_reached(value, request.stop.threshold, goal):
                reason = f"run {run.run_id} reached {metric} = {value:g}"
                reason += f" ({'>=' if goal == 'max' else '<='} {request.stop.threshold:g})"
                ended = self._end(sweep, SweepState.STOPPED, reason)
                if ended is not None:
                    self._cancel_trials(ended, f"sweep {sweep.sweep_id} stopped: {reason}")
                return True
        return False

    def _end(self, sweep: Sweep, state: SweepState, reason: str | None) -> Sweep | None:
        ended = self.store.end_sweep(sweep.sweep_id, state, reason)
        self._forget(sweep.sweep_id)
        if ended is not None:
            log.info(
                "sweep ended",
                extra={"sweep_id": sweep.sweep_id, "state": state.value, "reason": reason},
            )
            self._finished(ended)
        return ended

    def _finished(self, sweep: Sweep) -> None:
        """Publish ``sweep.finished``: the sweep's view without its list of trials."""
        if self.events is None:
            return
        view = sweep_view(sweep, self._trials(sweep)).model_dump(mode="json", exclude={"trials"})
        self.events.publish(
            Event(
                type="sweep.finished",
                subject=sweep.sweep_id,
                owner=sweep.owner,
                experiment_id=sweep.experiment_id,
                data=view,
            )
        )

    def _cancel_trials(self, sweep: Sweep, note: str) -> None:
        owner = Principal(name=sweep.owner)
        for run in self.store.list_runs(sweep_id=sweep.sweep_id, states=ACTIVE, limit=100_000):
            with contextlib.suppress(Conflict, NotFound):  # it ended meanwhile
                self.runs.cancel(owner, run.run_id, reason=note)


def principal_lookup(tokens: TokenRegistry | None) -> Callable[[str], Principal | None]:
    """Who owns a sweep, by name, after a restart: the tokens file's principal of that
    name (None: no longer there); without a tokens file, the local administrator."""
    from controller.services.auth import LOCAL_ADMIN

    def lookup(name: str) -> Principal | None:
        if tokens is None:
            return LOCAL_ADMIN if name == LOCAL_ADMIN.name else None
        return tokens.principal(name)

    return lookup
