"""Comparing runs: an experiment's runs as a table, and two runs side by side.

Pure functions over records. A run is seen as an :class:`Entry`: the run, every
parameter it used (flattened, dotted keys) and its flattened metrics. A run that did
not succeed has no result; its parameters are then the experiment's with the run's
overrides, and it has no metrics (it sorts last, never errors).

    comparison(entries, ...) -> Comparison     rows best first, columns that differ
    to_csv(comparison)       -> str            the same table for spreadsheets
    diff(a, b)               -> RunDiff        params, metrics and dvc.lock stages
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import Field

from controller.domain.errors import InvalidInput
from controller.domain.models import JsonValue, Record, Run, RunState
from controller.domain.params import apply_overrides
from controller.domain.results import Goal, differing_keys, flatten, metric_number, rank

__all__ = [
    "CompareRow",
    "Comparison",
    "Entry",
    "MetricPair",
    "ParamPair",
    "RunDiff",
    "RunSide",
    "StageChange",
    "comparison",
    "diff",
    "entry",
    "to_csv",
]

Part = Literal["deps", "params", "outs"]
PARTS: tuple[Part, ...] = ("deps", "params", "outs")
# Spreadsheets run a cell that starts with one of these as a formula (CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# Deltas are rounded so that 0.9 - 0.95 reads -0.05, not -0.050000000000000044.
DELTA_DIGITS = 12


@dataclass(frozen=True)
class Entry:
    """A run as a comparison sees it."""

    run: Run
    params: dict[str, JsonValue]
    metrics: dict[str, JsonValue]


def entry(run: Run, experiment_params: Mapping[str, JsonValue]) -> Entry:
    """The run with the parameters it used: its result's, or (no result, or one recorded
    before results kept params) the experiment's params with the run's overrides."""
    result = run.result
    if result is not None and result.params:
        params = dict(result.params)
    else:
        try:
            merged = apply_overrides(experiment_params, run.params)
            params = flatten(merged)  # type: ignore[arg-type]  # params hold JSON values
        except InvalidInput:  # overrides were checked at submission; never fail a view
            params = {**flatten(dict(experiment_params)), **run.params}
    return Entry(run, params, dict(result.flat_metrics) if result is not None else {})


# -- the table ---------------------------------------------------------------------------


class CompareRow(Record):
    run_id: str
    state: RunState
    sweep_id: str | None = None
    created_at: datetime
    finished_at: datetime | None = None
    best: bool = Field(
        default=False, description="The best run by `metric` (only if it has a numeric value)."
    )
    params: dict[str, JsonValue] = Field(
        description="The run's value of each param column (absent: the run has no such param)."
    )
    metrics: dict[str, JsonValue] = Field(description="The run's metrics, flattened.")
    deltas: dict[str, float] = Field(
        default_factory=dict,
        description="With a baseline: row minus baseline, per metric numeric in both.",
    )
    changed: list[str] = Field(
        default_factory=list,
        description="With a baseline: every param whose value differs from the baseline's.",
    )


class Comparison(Record):
    experiment_id: str
    metric: str | None = Field(description="The metric rows are ranked by (None: newest first).")
    goal: Goal
    param_columns: list[str] = Field(
        description="The params whose values differ between the rows (and the baseline)."
    )
    metric_columns: list[str] = Field(
        description="Every metric of the rows; the ranking metric first."
    )
    delta_columns: list[str] = Field(
        default_factory=list, description="The metrics some row has a delta for."
    )
    rows: list[CompareRow] = Field(description="Best first (missing or non-numeric: last).")
    baseline: CompareRow | None = Field(
        default=None, description="The baseline run's own row (it may also be among `rows`)."
    )


def comparison(
    experiment_id: str,
    entries: Sequence[Entry],
    *,
    metric: str | None = None,
    goal: Goal = "max",
    limit: int | None = None,
    baseline: Entry | None = None,
) -> Comparison:
    """Rows best first by ``metric`` (ties: earliest finished), or newest first without one;
    at most ``limit`` of them. Columns: the params that differ, then the metrics."""
    by_id = {e.run.run_id: e for e in entries}
    if metric:
        ordered = [by_id[r.run_id] for r in rank([e.run for e in entries], metric, goal)]
    else:
        ordered = sorted(entries, key=lambda e: e.run.created_at, reverse=True)
    shown = ordered[:limit] if limit is not None else ordered
    compared = [e.params for e in shown] + ([baseline.params] if baseline else [])
    param_columns = differing_keys(compared) if len(compared) > 1 else []
    metric_keys = {k for e in shown for k in e.metrics}
    metric_columns = ([metric] if metric else []) + sorted(metric_keys - {metric or ""})
    rows = [_row(e, param_columns, metric_columns, baseline) for e in shown]
    if metric and rows and metric_number(rows[0].metrics.get(metric)) is not None:
        rows[0] = rows[0].model_copy(update={"best": True})
    return Comparison(
        experiment_id=experiment_id,
        metric=metric or None,
        goal=goal,
        param_columns=param_columns,
        metric_columns=metric_columns,
        delta_columns=[k for k in metric_columns if any(k in r.deltas for r in rows)],
        rows=rows,
        baseline=_row(baseline, param_columns, metric_columns, None) if baseline else None,
    )


def _row(
    item: Entry, param_columns: list[str], metric_columns: list[str], baseline: Entry | None
) -> CompareRow:
    run = item.run
    deltas: dict[str, float] = {}
    changed: list[str] = []
    if baseline is not None:
        for key in metric_columns:
            mine = metric_number(item.metrics.get(key))
            theirs = metric_number(baseline.metrics.get(key))
            if mine is not None and theirs is not None:
                deltas[key] = round(mine - theirs, DELTA_DIGITS)
        changed = differing_keys([item.params, baseline.params])
    return CompareRow(
        run_id=run.run_id,
        state=run.state,
        sweep_id=run.sweep_id,
        created_at=run.created_at,
        finished_at=run.finished_at,
        params={k: item.params[k] for k in param_columns if k in item.params},
        metrics=item.metrics,
        deltas=deltas,
        changed=changed,
    )


def to_csv(table: Comparison) -> str:
    """``run_id, state, best, param:<key>..., metric:<key>..., delta:<key>...``; values
    that are not scalars JSON-encoded, text that a spreadsheet would run made inert."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["run_id", "state", "best"]
        + [f"param:{k}" for k in table.param_columns]
        + [f"metric:{k}" for k in table.metric_columns]
        + [f"delta:{k}" for k in table.delta_columns]
    )
    for row in table.rows:
        writer.writerow(
            [row.run_id, row.state.value, "true" if row.best else "false"]
            + [_cell(row.params, k) for k in table.param_columns]
            + [_cell(row.metrics, k) for k in table.metric_columns]
            + [_cell(row.deltas, k) for k in table.delta_columns]
        )
    return out.getvalue()


def _cell(values: Mapping[str, JsonValue], key: str) -> str:
    if key not in values or values[key] is None:
        return ""
    value = values[key]
    if isinstance(value, str):
        return "'" + value if value.startswith(FORMULA_START) else value
    if isinstance(value, bool | dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


# -- two runs ------------------------------------------------------------------------------


class RunSide(Record):
    run_id: str
    experiment_id: str
    state: RunState
    branch: str | None = None
    commit: str | None = None
    sweep_id: str | None = None


class ParamPair(Record):
    key: str
    a: JsonValue = Field(description="The first run's value (null: it has none).")
    b: JsonValue = Field(description="The second run's value (null: it has none).")
    same: bool


class MetricPair(ParamPair):
    delta: float | None = Field(default=None, description="b - a, when both are numbers.")


class StageChange(Record):
    stage: str
    changed: list[Part] = Field(description="Which parts of the stage differ.")
    only_in: str | None = Field(
        default=None, description="The run whose dvc.lock alone has this stage."
    )
    deps: dict[str, list[JsonValue]] = Field(
        default_factory=dict, description="Dependency path -> [hash in a, hash in b]."
    )
    params: dict[str, list[JsonValue]] = Field(
        default_factory=dict, description="Param -> [value in a, value in b]."
    )
    outs: dict[str, list[JsonValue]] = Field(
        default_factory=dict, description="Output path -> [hash in a, hash in b]."
    )


class RunDiff(Record):
    runs: list[RunSide] = Field(description="a, then b.")
    params: list[ParamPair]
    metrics: list[MetricPair]
    stages: list[StageChange] = Field(
        description="Stages of the two dvc.lock files that changed, or that only one has."
    )
    unchanged_stages: list[str]
    notes: list[str] = Field(default_factory=list, description="What could not be compared.")


def diff(a: Entry, b: Entry) -> RunDiff:
    """``a`` and ``b`` side by side, and the pipeline stages that changed from a to b."""
    differ = set(differing_keys([a.params, b.params]))
    params = [
        ParamPair(key=k, a=a.params.get(k), b=b.params.get(k), same=k not in differ)
        for k in sorted(set(a.params) | set(b.params))
    ]
    metrics = []
    for key in sorted(set(a.metrics) | set(b.metrics)):
        left, right = metric_number(a.metrics.get(key)), metric_number(b.metrics.get(key))
        delta = None if left is None or right is None else round(right - left, DELTA_DIGITS)
        metrics.append(
            MetricPair(
                key=key,
                a=a.metrics.get(key),
                b=b.metrics.get(key),
                same=key in a.metrics and key in b.metrics and a.metrics[key] == b.metrics[key],
                delta=delta,
            )
        )
    locks = [e.run.result.stages if e.run.result else {} for e in (a, b)]
    notes = [
        f"run {e.run.run_id} has no dvc.lock ({e.run.state.value}): its stages are not compared"
        for e, lock in zip((a, b), locks, strict=True)
        if not lock
    ]
    stages: list[StageChange] = []
    unchanged: list[str] = []
    if not notes:
        stages, unchanged = _stage_changes((a.run.run_id, locks[0]), (b.run.run_id, locks[1]))
    return RunDiff(
        runs=[_side(a.run), _side(b.run)],
        params=params,
        metrics=metrics,
        stages=stages,
        unchanged_stages=unchanged,
        notes=notes,
    )


def _stage_changes(
    a: tuple[str, dict[str, JsonValue]], b: tuple[str, dict[str, JsonValue]]
) -> tuple[list[StageChange], list[str]]:
    """Per stage (in a's dvc.lock order, then b's new ones): changed, only in one, or not."""
    (a_id, left), (b_id, right) = a, b
    changes: list[StageChange] = []
    unchanged: list[str] = []
    for name in [*left, *(n for n in right if n not in left)]:
        if name not in left or name not in right:
            owner = a_id if name in left else b_id
            changes.append(StageChange(stage=name, changed=[], only_in=owner))
            continue
        parts = {part: _part_diff(left[name], right[name], part) for part in PARTS}
        changed = [part for part in PARTS if parts[part]]
        if changed:
            changes.append(StageChange(stage=name, changed=changed, **parts))
        else:
            unchanged.append(name)
    return changes, unchanged


def _part_diff(left: JsonValue, right: JsonValue, part: Part) -> dict[str, list[JsonValue]]:
    mine = _mapping(left, part)
    theirs = _mapping(right, part)
    return {
        key: [mine.get(key), theirs.get(key)]
        for key in differing_keys([mine, theirs])  # sorted, and a key one side lacks differs
    }


def _mapping(stage: JsonValue, part: Part) -> dict[str, JsonValue]:
    value = stage.get(part) if isinstance(stage, dict) else None
    return value if isinstance(value, dict) else {}


def _side(run: Run) -> RunSide:
    result = run.result
    return RunSide(
        run_id=run.run_id,
        experiment_id=run.experiment_id,
        state=run.state,
        branch=result.branch if result else None,
        commit=result.commit if result else None,
        sweep_id=run.sweep_id,
    )
