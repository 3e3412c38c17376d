"""Sweeps, the pure part: request validation, grid order and size, random trials from a
seed, the keys checked before anything starts, the stop rule, and the sweep's view."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from controller.domain.errors import InvalidInput, InvalidParams
from controller.domain.models import Run, RunResult, RunState
from controller.domain.params import apply_overrides
from controller.domain.sweeps import (
    Sweep,
    SweepRequest,
    SweepState,
    check_size,
    grid_size,
    grid_trial,
    probe_trials,
    random_trials,
    stop_reached,
    sweep_view,
    trial_params,
)

SPACE: dict[str, Any] = {
    "train.C": {"type": "loguniform", "low": 0.01, "high": 10},
    "train.gamma": {"type": "uniform", "low": -1, "high": 1},
    "train.depth": {"type": "int", "low": 2, "high": 5},
    "train.kernel": {"type": "choice", "values": ["rbf", "linear", 3]},
}


def request(**fields: Any) -> SweepRequest:
    return SweepRequest.model_validate({"experiment_id": "exp-0123456789", **fields})


def test_grid_is_the_product_in_the_order_given_last_key_fastest() -> None:
    grid = {"train.C": [0.1, 0.3, 1.0], "train.max_depth": [3, 5]}
    sweep = request(grid=grid, params={"prepare.seed": 7})
    trials = [trial_params(sweep, i) for i in range(grid_size(grid))]
    expected = [
        {"prepare.seed": 7, "train.C": c, "train.max_depth": d}
        for c, d in itertools.product(grid["train.C"], grid["train.max_depth"])
    ]
    assert trials == expected
    assert [list(t) for t in trials[:1]] == [["prepare.seed", "train.C", "train.max_depth"]]
    with pytest.raises(IndexError):
        grid_trial(grid, 6)


@given(st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=4))
def test_grid_trial_decodes_the_same_element_as_the_product(lengths: list[int]) -> None:
    grid: dict[str, list[Any]] = {f"k{i}": list(range(n)) for i, n in enumerate(lengths)}
    product = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    assert [grid_trial(grid, i) for i in range(len(product))] == product


def test_size_cap_is_computed_without_the_product() -> None:
    # 1000 ** 6 trials: computed from the lengths alone (materialising them would not end).
    huge = request(grid={f"k{i}": list(range(1000)) for i in range(6)})
    with pytest.raises(InvalidInput, match=r"1000000000000000000 runs.*max_sweep_runs.*1000"):
        check_size(huge, 1000)
    assert check_size(request(grid={"a": [1, 2], "b": [1, 2, 3]}), 6) == 6
    with pytest.raises(InvalidInput):
        check_size(request(grid={"a": [1, 2], "b": [1, 2, 3]}), 5)
    with pytest.raises(InvalidInput):
        check_size(request(random={"trials": 11, "space": SPACE}), 10)


def test_random_trials_are_reproducible_from_the_seed_and_within_bounds() -> None:
    sweep = request(random={"trials": 200, "seed": 42, "space": SPACE})
    assert sweep.random is not None
    first = list(random_trials(sweep.random))
    again = list(random_trials(request(random={"trials": 200, "seed": 42, "space": SPACE}).random))  # type: ignore[arg-type]
    other = list(random_trials(request(random={"trials": 200, "seed": 43, "space": SPACE}).random))  # type: ignore[arg-type]
    assert first == again
    assert first != other
    assert len(first) == 200
    for trial in first:
        assert 0.01 <= trial["train.C"] <= 10  # type: ignore[operator]
        assert -1 <= trial["train.gamma"] <= 1  # type: ignore[operator]
        assert trial["train.depth"] in {2, 3, 4, 5}
        assert trial["train.kernel"] in ("rbf", "linear", 3)
    # Every value of the int range and the choice is drawn; log-uniform favours small C.
    assert {t["train.depth"] for t in first} == {2, 3, 4, 5}
    assert {t["train.kernel"] for t in first} == {"rbf", "linear", 3}
    below_one = sum(1 for t in first if t["train.C"] < 1)  # type: ignore[operator]
    assert 70 < below_one < 130  # log-uniform on [0.01, 10]: 2/3 of draws below 1
    # A trial by index is the same as the sequence's.
    assert trial_params(sweep, 17) == first[17]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "exactly one of grid, random or adaptive"),
        ({"grid": {"a": [1]}, "random": {"trials": 1, "space": SPACE}}, "exactly one"),
        ({"adaptive": {"trials": 3, "space": SPACE}}, "needs an objective"),
        ({"grid": {"a": []}}, "at least 1 item"),
        ({"grid": {}}, "at least 1 item"),
        ({"grid": {"a": [1]}, "params": {"a": 2}}, "both a fixed param and searched"),
        ({"grid": {"a": [1]}, "max_parallel": 0}, "greater than or equal to 1"),
        ({"grid": {"a": [1]}, "max_parallel": 65}, "less than or equal to 64"),
        ({"grid": {"a": [1]}, "surprise": 1}, "Extra inputs are not permitted"),
        ({"random": {"trials": 2, "space": {"a": {"type": "uniform", "low": 2, "high": 1}}}},
         "finite low < high"),
        ({"random": {"trials": 2, "space": {"a": {"type": "loguniform", "low": 0, "high": 1}}}},
         "0 < low"),
        ({"random": {"trials": 2, "space": {"a": {"type": "normal", "low": 0, "high": 1}}}},
         "does not match any of the expected tags"),
        ({"random": {"trials": 0, "space": SPACE}}, "greater than or equal to 1"),
        ({"grid": {"a": [1]}, "stop": {"threshold": 0.9}}, "stop needs a metric"),
        ({"grid": {"a": [1]}, "objective": {"metric": "acc", "goal": "up"}}, "'max' or 'min'"),
        ({"adaptive": {"trials": 2, "space": {"a": {"type": "choice", "values": [[1]]}}},
          "objective": {"metric": "acc", "goal": "max"}}, "choices must be scalars"),
    ],
)  # fmt: skip
def test_bad_requests_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        request(**fields)


def test_goal_spellings_and_stop_defaults() -> None:
    sweep = request(
        grid={"a": [1]},
        objective={"metric": "acc", "goal": "maximize"},
        stop={"threshold": 0.9},
    )
    assert sweep.objective is not None
    assert sweep.objective.goal == "max"
    assert (sweep.stop_metric, sweep.stop_goal) == ("acc", "max")
    loss = request(grid={"a": [1]}, stop={"metric": "loss", "threshold": 0.1, "goal": "minimize"})
    assert (loss.stop_metric, loss.stop_goal) == ("loss", "min")
    assert request(grid={"a": [1]}).max_parallel == 1


def test_stop_rule() -> None:
    assert stop_reached(0.9, 0.9, "max")
    assert stop_reached(0.95, 0.9, "max")
    assert not stop_reached(0.89, 0.9, "max")
    assert stop_reached(0.1, 0.1, "min")
    assert not stop_reached(0.2, 0.1, "min")
    assert not stop_reached(None, 0.1, "min")


PARAMS = {"train": {"C": 1.0, "kernel": "rbf", "max_depth": 3}, "prepare": {"seed": 1}}


def test_probes_name_a_typo_in_any_key_before_anything_starts() -> None:
    good = request(
        grid={"train.C": [0.1, 1], "train.max_depth": [3, 5]}, params={"prepare.seed": 2}
    )
    probes = list(probe_trials(good))
    for overrides in probes:
        apply_overrides(PARAMS, overrides)
    # Every grid value appears in some probe, without the whole product.
    assert {p["train.C"] for p in probes} == {0.1, 1}
    assert {p["train.max_depth"] for p in probes} == {3, 5}
    assert len(probes) == 3
    typo = request(grid={"train.C": [0.1], "train.max_dpeth": [3, 5]})
    with pytest.raises(InvalidParams, match=r"'train\.max_dpeth' is not in params\.yaml"):
        check_all(typo)
    fixed_typo = request(random={"trials": 3, "space": {"train.C": SPACE["train.C"]}},
                         params={"prepare.sed": 1})  # fmt: skip
    with pytest.raises(InvalidParams, match=r"'prepare\.sed'"):
        check_all(fixed_typo)


def check_all(sweep: SweepRequest) -> None:
    for overrides in probe_trials(sweep):
        apply_overrides(PARAMS, overrides)


def _run(number: int, state: RunState, value: object = None) -> Run:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    result = None
    if state is RunState.SUCCEEDED:
        metrics = {} if value is None else {"acc": value}
        result = RunResult(
            git_url="file:///r",
            branch=f"runs/run-{number}",
            commit="c" * 40,
            metrics={"m.json": metrics},
            flat_metrics=metrics,  # type: ignore[arg-type]
            clone_command="git clone",
        )
    return Run(
        run_id=f"run-{number:010d}",
        experiment_id="exp-0123456789",
        owner="local",
        resource="local",
        namespace=None,
        params={"train.C": number},
        state=state,
        created_at=start + timedelta(seconds=number),
        finished_at=start + timedelta(seconds=100 - number) if state.terminal else None,
        result=result,
    )


def test_view_counts_trials_and_names_the_best_numeric_result() -> None:
    sweep = Sweep(
        sweep_id="sweep-0123456789",
        experiment_id="exp-0123456789",
        owner="local",
        state=SweepState.RUNNING,
        request=request(grid={"train.C": [0, 1, 2, 3, 4, 5]},
                        objective={"metric": "acc", "goal": "max"}),
        total_trials=6,
        created_at=datetime(2024, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    runs = [
        _run(0, RunState.SUCCEEDED, 0.7),
        _run(1, RunState.SUCCEEDED, "n/a"),  # a string never wins, never breaks
        _run(2, RunState.SUCCEEDED, 0.9),
        _run(3, RunState.FAILED),
        _run(4, RunState.RUNNING),
        _run(5, RunState.SUCCEEDED, math.nan),
    ]
    view = sweep_view(sweep, runs)
    assert view.counts == {"succeeded": 4, "failed": 1, "running": 1}
    assert view.best is not None
    assert (view.best.run_id, view.best.value) == (runs[2].run_id, 0.9)
    assert [t.number for t in view.trials] == [0, 1, 2, 3, 4, 5]
    assert view.trials[1].value == "n/a"
    assert view.trials[3].value is None
    nothing = sweep_view(sweep, [_run(0, RunState.SUCCEEDED, "n/a")])
    assert nothing.best is None
