"""Use case: compare runs (an experiment's runs as a table; two runs side by side).

Reads only: the caller's experiment and runs from the store, shaped by
``controller.domain.compare``. Another tenant's experiment or run is NotFound.
"""

from __future__ import annotations

from controller.adapters.store import Store
from controller.domain.compare import Comparison, Entry, RunDiff, comparison, diff, entry
from controller.domain.models import JsonValue, Run, RunState
from controller.domain.results import Goal
from controller.services.auth import Principal
from controller.services.experiments import ExperimentService
from controller.services.runs import RunService

# Runs read for one table: the newest this many that match the filters are ranked
# (a sweep holds at most 1,000 runs by default), so memory stays bounded.
MAX_SCANNED_RUNS = 5_000
MAX_ROWS = 1_000


class CompareService:
    def __init__(self, store: Store, experiments: ExperimentService, runs: RunService) -> None:
        self.store = store
        self.experiments = experiments
        self.runs = runs

    def table(
        self,
        principal: Principal,
        experiment_id: str,
        *,
        metric: str | None = None,
        goal: Goal = "max",
        states: list[RunState] | None = None,
        sweep_id: str | None = None,
        limit: int = 100,
        baseline: str | None = None,
    ) -> Comparison:
        """The caller's runs of the experiment, best first by ``metric``: the best
        ``limit`` of the newest MAX_SCANNED_RUNS that match ``states`` and ``sweep_id``."""
        experiment = self.experiments.get(principal, experiment_id)
        base = self._entry(self.runs.get(principal, baseline)) if baseline else None
        found = self.store.list_runs(
            experiment_id=experiment_id,
            states=states,
            owner=None if principal.admin else principal.name,
            sweep_id=sweep_id,
            limit=MAX_SCANNED_RUNS,
        )
        return comparison(
            experiment_id,
            [entry(run, experiment.params) for run in found],
            metric=metric,
            goal=goal,
            limit=min(max(limit, 1), MAX_ROWS),
            baseline=base,
        )

    def pair(self, principal: Principal, run_a: str, run_b: str) -> RunDiff:
        """Two runs the caller can see (of one experiment or of two)."""
        a = self.runs.get(principal, run_a)
        b = self.runs.get(principal, run_b)
        return diff(self._entry(a), self._entry(b))

    def _entry(self, run: Run) -> Entry:
        experiment = self.store.get_experiment(run.experiment_id)
        params: dict[str, JsonValue] = experiment.params if experiment is not None else {}
        return entry(run, params)
