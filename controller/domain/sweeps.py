"""Sweeps: the request, its search spaces, and the trials a grid or random search makes.

Pure. A sweep is many runs of one experiment, each with its own parameter overrides
(a *trial*). One search per sweep:

* ``grid`` — ``{"train.C": [0.1, 0.3, 1.0], "train.max_depth": [3, 5]}``: the product,
  keys in the order given, the last key varying fastest (``itertools.product``). Its
  size is computed from the lengths (nothing is materialised to refuse a huge grid) and
  the *i*-th trial is decoded from *i* alone (:func:`grid_trial`).
* ``random`` — ``trials`` draws from a space per key, all from one
  ``random.Random(seed)`` in trial order, keys in the order given: the same request
  gives the same trials, in any process (:func:`random_trials`).
* ``adaptive`` — Optuna's TPE, asked for the next trial when a slot frees and told each
  trial's result (``controller.services.sweeps``); same space syntax.

A space per key::

    {"type": "choice", "values": [0.1, "rbf", true]}   one of the values
    {"type": "uniform", "low": 0.1, "high": 1.0}        a float in [low, high]
    {"type": "loguniform", "low": 1e-4, "high": 1.0}    log-uniform, 0 < low < high
    {"type": "int", "low": 2, "high": 8}                an integer in [low, high]

A trial's overrides are the sweep's fixed ``params`` plus the searched keys (a key may
not be both). ``stop`` ends a sweep once a succeeded trial's metric reaches the
threshold (``>=`` when maximising, ``<=`` when minimising): :func:`stop_reached`.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from controller.domain.errors import InvalidInput
from controller.domain.models import Run, RunState
from controller.domain.results import Goal, metric_number, rank

__all__ = [
    "AdaptiveSearch",
    "Best",
    "Choice",
    "IntRange",
    "Objective",
    "RandomSearch",
    "Space",
    "Stop",
    "Sweep",
    "SweepCreated",
    "SweepRequest",
    "SweepState",
    "SweepSummary",
    "SweepView",
    "Trial",
    "Uniform",
    "check_size",
    "grid_size",
    "grid_trial",
    "probe_trials",
    "random_trials",
    "stop_reached",
    "sweep_view",
    "trial_count",
    "trial_params",
]

MAX_KEYS = 50
MAX_VALUES = 1000
MAX_PARALLEL = 64
MAX_TRIALS = 100_000  # the service's own cap (max_sweep_runs) is the one that bites
MAX_KEY_CHARS = 200


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Choice(_Strict):
    type: Literal["choice"]
    values: list[JsonValue] = Field(min_length=1, max_length=MAX_VALUES)


class Uniform(_Strict):
    type: Literal["uniform", "loguniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _bounds(self) -> Uniform:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError("needs finite low < high")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError("loguniform needs 0 < low")
        return self


class IntRange(_Strict):
    type: Literal["int"]
    low: int = Field(ge=-(2**53), le=2**53)
    high: int = Field(ge=-(2**53), le=2**53)

    @model_validator(mode="after")
    def _bounds(self) -> IntRange:
        if self.low > self.high:
            raise ValueError("needs low <= high")
        return self


Space = Annotated[Choice | Uniform | IntRange, Field(discriminator="type")]
GridValues = Annotated[list[JsonValue], Field(min_length=1, max_length=MAX_VALUES)]
SpaceMap = Annotated[dict[str, Space], Field(min_length=1, max_length=MAX_KEYS)]


class RandomSearch(_Strict):
    trials: int = Field(ge=1, le=MAX_TRIALS)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    space: SpaceMap


class AdaptiveSearch(_Strict):
    """Optuna TPE; ``choice`` values must be scalars (str, number, bool, null)."""

    trials: int = Field(ge=1, le=MAX_TRIALS)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    space: SpaceMap

    @model_validator(mode="after")
    def _scalar_choices(self) -> AdaptiveSearch:
        for key, space in self.space.items():
            if isinstance(space, Choice) and any(isinstance(v, dict | list) for v in space.values):
                raise ValueError(f"space {key!r}: adaptive choices must be scalars")
        return self


def _goal(value: object) -> object:
    aliases = {"maximize": "max", "minimize": "min", "maximise": "max", "minimise": "min"}
    return aliases.get(value, value) if isinstance(value, str) else value


class Objective(_Strict):
    metric: str = Field(min_length=1, max_length=MAX_KEY_CHARS, description="A flat metric key.")
    goal: Goal = Field(description="maximize (max) or minimize (min).")

    _normalise = field_validator("goal", mode="before")(_goal)


class Stop(_Strict):
    """Cancel the rest once a succeeded trial's ``metric`` reaches ``threshold``."""

    metric: str | None = Field(
        default=None, max_length=MAX_KEY_CHARS, description="Default: the objective's metric."
    )
    threshold: float
    goal: Goal | None = Field(default=None, description="Default: the objective's goal.")

    _normalise = field_validator("goal", mode="before")(_goal)

    @field_validator("threshold")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class SweepRequest(_Strict):
    experiment_id: str = Field(max_length=64)
    resource: str = Field(default="local", max_length=128)
    namespace: str | None = Field(default=None, max_length=63)
    params: dict[str, JsonValue] = Field(
        default_factory=dict, max_length=200, description="Overrides every trial shares."
    )
    grid: (
        dict[str, Annotated[list[JsonValue], Field(min_length=1, max_length=MAX_VALUES)]] | None
    ) = Field(default=None, min_length=1, max_length=MAX_KEYS)
    random: RandomSearch | None = None
    adaptive: AdaptiveSearch | None = None
    max_parallel: int = Field(
        default=1, ge=1, le=MAX_PARALLEL, description="Trials queued or running at once."
    )
    objective: Objective | None = None
    stop: Stop | None = None
    deadline_seconds: int | None = Field(default=None, ge=1, le=30 * 86400)

    @model_validator(mode="after")
    def _one_search(self) -> SweepRequest:
        searches = [s for s in (self.grid, self.random, self.adaptive) if s is not None]
        if len(searches) != 1:
            raise ValueError("give exactly one of grid, random or adaptive")
        if self.adaptive is not None and self.objective is None:
            raise ValueError("an adaptive search needs an objective (metric, goal)")
        if self.stop is not None:
            if (self.stop.metric or self.objective) is None:
                raise ValueError("stop needs a metric (or an objective)")
            if (self.stop.goal or self.objective) is None:
                raise ValueError("stop needs a goal (or an objective)")
        both = sorted(set(self.params) & set(self.searched_keys))
        if both:
            raise ValueError(f"{both[0]!r} is both a fixed param and searched")
        for key in [*self.params, *self.searched_keys]:
            if len(key) > MAX_KEY_CHARS:
                raise ValueError(f"a key is longer than {MAX_KEY_CHARS} characters")
        return self

    @property
    def kind(self) -> Literal["grid", "random", "adaptive"]:
        return "grid" if self.grid is not None else "random" if self.random else "adaptive"

    @property
    def searched_keys(self) -> list[str]:
        if self.grid is not None:
            return list(self.grid)
        search = self.random or self.adaptive
        return list(search.space) if search else []

    @property
    def stop_metric(self) -> str | None:
        if self.stop is None:
            return None
        return self.stop.metric or (self.objective.metric if self.objective else None)

    @property
    def stop_goal(self) -> Goal | None:
        if self.stop is None:
            return None
        return self.stop.goal or (self.objective.goal if self.objective else None)


class SweepState(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"  # every trial ended (whatever each one's outcome)
    STOPPED = "stopped"  # the stop threshold was reached; the rest were cancelled
    CANCELLED = "cancelled"  # cancelled by a caller; finished trials stay
    FAILED = "failed"  # a trial could not be submitted (e.g. the experiment is gone)

    @property
    def terminal(self) -> bool:
        return self is not SweepState.RUNNING


class Sweep(BaseModel):
    """The record the service keeps; its trials are the runs tagged with ``sweep_id``."""

    model_config = ConfigDict(frozen=True)

    sweep_id: str
    experiment_id: str
    owner: str
    state: SweepState
    reason: str | None = None
    request: SweepRequest
    total_trials: int = Field(description="Trials the sweep makes unless stopped or cancelled.")
    created_at: datetime
    finished_at: datetime | None = None


# -- trials ----------------------------------------------------------------------------


def grid_size(grid: Mapping[str, list[JsonValue]]) -> int:
    return math.prod(len(values) for values in grid.values())


def grid_trial(grid: Mapping[str, list[JsonValue]], index: int) -> dict[str, JsonValue]:
    """The ``index``-th element of the product (last key fastest), without the others."""
    if not 0 <= index < grid_size(grid):
        raise IndexError(index)
    chosen: dict[str, JsonValue] = {}
    for key, values in reversed(list(grid.items())):
        index, position = divmod(index, len(values))
        chosen[key] = values[position]
    return {key: chosen[key] for key in grid}


def _draw(rng: random.Random, space: Choice | Uniform | IntRange) -> JsonValue:
    if isinstance(space, Choice):
        return space.values[rng.randrange(len(space.values))]
    if isinstance(space, IntRange):
        return rng.randint(space.low, space.high)
    if space.type == "loguniform":
        value = math.exp(rng.uniform(math.log(space.low), math.log(space.high)))
        return min(max(value, space.low), space.high)  # exp(log(x)) may round past a bound
    return rng.uniform(space.low, space.high)


def random_trials(search: RandomSearch) -> Iterator[dict[str, JsonValue]]:
    """The search's trials in order, from ``random.Random(seed)``: the same seed and space
    give the same trials."""
    rng = random.Random(search.seed)  # noqa: S311 - reproducible draws, not secrets
    for _ in range(search.trials):
        yield {key: _draw(rng, space) for key, space in search.space.items()}


def trial_count(request: SweepRequest) -> int:
    if request.grid is not None:
        return grid_size(request.grid)
    search = request.random or request.adaptive
    assert search is not None
    return search.trials


def check_size(request: SweepRequest, cap: int) -> int:
    """The sweep's trial count; InvalidInput above ``cap`` (max_sweep_runs)."""
    count = trial_count(request)
    if count > cap:
        raise InvalidInput(
            f"the sweep would make {count} runs; the limit (max_sweep_runs) is {cap}"
        )
    return count


def trial_params(request: SweepRequest, index: int) -> dict[str, JsonValue]:
    """The overrides of grid or random trial ``index``: the fixed params, then its own."""
    if request.grid is not None:
        own = grid_trial(request.grid, index)
    elif request.random is not None:
        own = next(itertools.islice(random_trials(request.random), index, None))
    else:
        raise ValueError("adaptive trials are asked of the study, not generated")
    return {**request.params, **own}


def probe_trials(request: SweepRequest) -> Iterator[dict[str, JsonValue]]:
    """Overrides that use every key and every kind of value a trial can have: each is
    checked against the experiment's params before anything starts.

    A grid yields each of its values once (in a trial with the other keys at their first
    value); a space yields its bounds or each of its choices. Every value a grid or
    choice can take is thus checked, without walking the whole product.
    """
    spaces: dict[str, list[JsonValue]]
    if request.grid is not None:
        spaces = dict(request.grid)
    else:
        search = request.random or request.adaptive
        assert search is not None
        spaces = {}
        for key, space in search.space.items():
            if isinstance(space, Choice):
                spaces[key] = list(space.values)
            else:
                spaces[key] = [space.low, space.high]
    base = {key: values[0] for key, values in spaces.items()}
    yield {**request.params, **base}
    for key, values in spaces.items():
        for value in values[1:]:
            yield {**request.params, **base, key: value}


def stop_reached(value: float | None, threshold: float, goal: Goal) -> bool:
    """Whether a trial's metric ``value`` reaches ``threshold`` (None never does)."""
    if value is None:
        return False
    return value >= threshold if goal == "max" else value <= threshold


# -- views -----------------------------------------------------------------------------


class Trial(BaseModel):
    number: int = Field(description="The trial's place in the sweep, from 0.")
    run_id: str
    state: RunState
    params: dict[str, JsonValue] = Field(description="The run's overrides (fixed + searched).")
    value: JsonValue | None = Field(
        default=None, description="The objective's metric, once the run succeeded."
    )
    reason: str | None = None


class Best(BaseModel):
    run_id: str
    metric: str
    value: float


class SweepSummary(Sweep):
    counts: dict[str, int] = Field(description="The sweep's runs by state.")


class SweepView(SweepSummary):
    best: Best | None = Field(
        default=None, description="The best succeeded trial so far by the objective."
    )
    trials: list[Trial] = Field(description="Trials started so far, in order.")


class SweepCreated(SweepView):
    run_ids: list[str] = Field(description="The runs started so far.")


def sweep_view(sweep: Sweep, runs: list[Run]) -> SweepView:
    """The sweep with its trials (``runs`` in the order they were made)."""
    metric = sweep.request.objective.metric if sweep.request.objective else None
    counts: dict[str, int] = {}
    trials = []
    for number, run in enumerate(runs):
        counts[run.state.value] = counts.get(run.state.value, 0) + 1
        value = run.result.flat_metrics.get(metric) if run.result and metric else None
        trials.append(
            Trial(
                number=number,
                run_id=run.run_id,
                state=run.state,
                params=run.params,
                value=value,
                reason=run.reason,
            )
        )
    best = None
    objective = sweep.request.objective
    succeeded = [run for run in runs if run.state is RunState.SUCCEEDED]
    if objective is not None and succeeded:
        top = rank(succeeded, objective.metric, objective.goal)[0]
        value = metric_number(top.result.flat_metrics.get(objective.metric) if top.result else None)
        if value is not None:
            best = Best(run_id=top.run_id, metric=objective.metric, value=value)
    return SweepView(**sweep.model_dump(), counts=counts, best=best, trials=trials)
