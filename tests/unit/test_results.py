"""controller.domain.results: a run's results as data.

Covers ``flatten`` (nesting, leaves, the key bound), ``flat_metrics`` (one file, several
files with ``file:key`` prefixes, an unreadable file), ``metric_number``, ``rank``
(goals, missing/string/bool/NaN metrics last, ties by the earliest finish, runs recorded
before ``flat_metrics`` existed), ``lock_stages`` on a real-shaped dvc.lock, and
``differing_keys``.
"""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from controller.domain.models import JsonValue, Run, RunResult, RunState
from controller.domain.results import (
    MAX_KEYS,
    differing_keys,
    flat_metrics,
    flatten,
    lock_stages,
    metric_number,
    rank,
)
from controller.domain.safeyaml import load_yaml
from tests.support.records import NOW, run_record


def test_flatten_nests_to_dotted_keys_and_keeps_leaves_as_they_are() -> None:
    value: JsonValue = {
        "train": {"C": 1.0, "layers": [64, 32], "opt": {"name": "adam", "beta": None}},
        "empty": {},
        "seed": 42,
    }
    assert flatten(value) == {
        "train.C": 1.0,
        "train.layers": [64, 32],
        "train.opt.name": "adam",
        "train.opt.beta": None,
        "empty": {},
        "seed": 42,
    }
    assert list(flatten(value)) == [
        "train.C",
        "train.layers",
        "train.opt.name",
        "train.opt.beta",
        "empty",
        "seed",
    ]
    assert flatten({"a": 1}, prefix="p") == {"p.a": 1}
    assert flatten(3) == {}


def test_flatten_is_bounded() -> None:
    big: JsonValue = {f"k{i}": {"v": i} for i in range(MAX_KEYS * 2)}
    flat = flatten(big)
    assert len(flat) == MAX_KEYS
    assert flat["k0.v"] == 0


def test_flat_metrics_of_one_file_uses_its_own_keys() -> None:
    metrics: dict[str, JsonValue] = {"metrics.json": {"accuracy": 0.9, "per_class": {"a": 1}}}
    assert flat_metrics(metrics) == {"accuracy": 0.9, "per_class.a": 1}


def test_flat_metrics_of_several_files_prefix_each_key_with_its_file() -> None:
    metrics: dict[str, JsonValue] = {
        "metrics.json": {"accuracy": 0.9},
        "eval/scores.yaml": {"f1": {"macro": 0.8}, "label": "good"},
    }
    assert flat_metrics(metrics) == {
        "metrics.json:accuracy": 0.9,
        "eval/scores.yaml:f1.macro": 0.8,
        "eval/scores.yaml:label": "good",
    }


def test_an_unreadable_metrics_file_contributes_nothing_and_keys_stay_stable() -> None:
    metrics: dict[str, JsonValue] = {
        "metrics.json": {"accuracy": 0.9},
        "eval/scores.yaml": {"error": "eval/scores.yaml: not UTF-8"},
    }
    # Still prefixed: the run's keys are the same whether or not the other file was read.
    assert flat_metrics(metrics) == {"metrics.json:accuracy": 0.9}
    assert flat_metrics({"m.json": {"error": "x"}}) == {}


@pytest.mark.parametrize(
    ("value", "number"),
    [(1, 1.0), (0.5, 0.5), (-2, -2.0), (math.inf, math.inf)],
)
def test_metric_number_takes_numbers(value: JsonValue, number: float) -> None:
    assert metric_number(value) == number


@pytest.mark.parametrize("value", [None, "0.9", True, False, float("nan"), [1], {"a": 1}])
def test_metric_number_refuses_the_rest(value: JsonValue) -> None:
    assert metric_number(value) is None


def finished(run_id: str, metrics: dict[str, JsonValue] | None, minutes: int) -> Run:
    run = run_record(state=RunState.SUCCEEDED if metrics is not None else RunState.FAILED)
    result = None
    if metrics is not None:
        result = RunResult(
            git_url="g",
            branch=f"runs/{run_id}",
            commit="c" * 40,
            metrics={"metrics.json": metrics},
            flat_metrics=flat_metrics({"metrics.json": metrics}),
            clone_command="git clone",
        )
    return run.model_copy(
        update={"run_id": run_id, "result": result, "finished_at": NOW + timedelta(minutes=minutes)}
    )


def test_rank_best_first_with_ties_by_earliest_finish_and_unusable_values_last() -> None:
    runs = [
        finished("late-tie", {"acc": 0.9}, minutes=9),
        finished("nan", {"acc": float("nan")}, minutes=1),
        finished("low", {"acc": 0.5}, minutes=2),
        finished("string", {"acc": "high"}, minutes=3),
        finished("early-tie", {"acc": 0.9}, minutes=4),
        finished("failed", None, minutes=0),
        finished("bool", {"acc": True}, minutes=5),
        finished("missing", {"loss": 0.1}, minutes=6),
        finished("int", {"acc": 1}, minutes=7),
    ]
    unusable = ["failed", "nan", "string", "bool", "missing"]  # in the order they finished
    assert [r.run_id for r in rank(runs, "acc", "max")] == [
        "int",
        "early-tie",
        "late-tie",
        "low",
        *unusable,
    ]
    assert [r.run_id for r in rank(runs, "acc", "min")] == [
        "low",
        "early-tie",
        "late-tie",
        "int",
        *unusable,
    ]
    assert rank([], "acc", "max") == []


def test_rank_reads_runs_recorded_before_flat_metrics_existed() -> None:
    old = finished("old", {"acc": 0.99}, minutes=1)
    assert old.result is not None
    old = old.model_copy(update={"result": old.result.model_copy(update={"flat_metrics": {}})})
    new = finished("new", {"acc": 0.5}, minutes=0)
    assert [r.run_id for r in rank([new, old], "acc", "max")] == ["old", "new"]


def test_rank_ties_without_a_finish_use_the_creation_time_then_the_id() -> None:
    a = finished("b-run", {"acc": 1}, minutes=0).model_copy(update={"finished_at": None})
    b = finished("a-run", {"acc": 1}, minutes=0).model_copy(update={"finished_at": None})
    assert [r.run_id for r in rank([a, b], "acc", "max")] == ["a-run", "b-run"]


DVC_LOCK = """\
schema: '2.0'
stages:
  prepare:
    cmd: python src/prepare.py
    deps:
    - path: src/prepare.py
      hash: md5
      md5: '1111'
      size: 10
    params:
      params.yaml:
        prepare.seed: 42
        prepare.test_size: 0.25
    outs:
    - path: data/prepared
      hash: md5
      md5: 2222.dir
      size: 100
      nfiles: 2
  train:
    cmd: python src/train.py
    deps:
    - path: data/prepared
      hash: md5
      md5: 2222.dir
    params:
      params.yaml:
        train:
          C: 0.5
      conf/extra.yaml:
        lr: 0.1
    outs:
    - path: models/model.pkl
      md5: '3333'
  broken: not a mapping
"""


def test_lock_stages_keeps_the_hashes_and_params_of_each_stage() -> None:
    lock = load_yaml(DVC_LOCK, source="dvc.lock")
    assert lock_stages(lock) == {  # type: ignore[arg-type]
        "prepare": {
            "deps": {"src/prepare.py": "1111"},
            "params": {"prepare.seed": 42, "prepare.test_size": 0.25},
            "outs": {"data/prepared": "2222.dir"},
        },
        "train": {
            "deps": {"data/prepared": "2222.dir"},
            "params": {"train.C": 0.5, "conf/extra.yaml:lr": 0.1},
            "outs": {"models/model.pkl": "3333"},
        },
    }


@pytest.mark.parametrize("lock", [None, [], {"stages": []}, {"schema": "2.0"}, "text"])
def test_lock_stages_of_something_else_is_empty(lock: JsonValue) -> None:
    assert lock_stages(lock) == {}


def test_differing_keys() -> None:
    rows: list[dict[str, JsonValue]] = [
        {"train.C": 0.1, "seed": 1, "same": "x", "one": 1, "flag": True, "nan": math.nan},
        {"train.C": 0.3, "seed": 1, "same": "x", "one": 1.0, "flag": 1, "nan": math.nan},
        {"train.C": 0.1, "same": "x", "one": 1, "flag": True, "nan": math.nan},
    ]
    # A key some rows lack differs; 1 and 1.0 are one value, True and 1 are not; NaN is NaN.
    assert differing_keys(rows) == ["flag", "seed", "train.C"]
    assert differing_keys([]) == []
    assert differing_keys([{"a": 1}]) == []
