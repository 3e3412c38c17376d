"""A run's results as data: flattened params and metrics, dvc.lock per stage, ranking.

Pure functions over plain values. Keys are dotted paths (``train.C``) as DVC writes
them in ``dvc params diff`` and ``dvc metrics show``; numbers stay numbers, anything
else is kept as it is and never breaks a comparison.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Literal

from controller.domain.models import JsonValue, Run

__all__ = [
    "Goal",
    "differing_keys",
    "flat_metrics",
    "flatten",
    "lock_stages",
    "metric_number",
    "rank",
]

Goal = Literal["max", "min"]
# A flattened document keeps at most this many keys (a metrics file is small; one that is
# not must not make every record of the run huge).
MAX_KEYS = 2_000


def flatten(value: JsonValue, prefix: str = "") -> dict[str, JsonValue]:
    """``{"train": {"C": 1}}`` -> ``{"train.C": 1}``; lists and scalars are leaves."""
    flat: dict[str, JsonValue] = {}
    stack: list[tuple[str, JsonValue]] = [(prefix, value)]
    while stack and len(flat) < MAX_KEYS:
        key, item = stack.pop()
        if isinstance(item, dict) and item:
            stack.extend((f"{key}.{k}" if key else str(k), v) for k, v in reversed(item.items()))
        elif key:
            flat[key] = item
    return flat


def flat_metrics(metrics: Mapping[str, JsonValue]) -> dict[str, JsonValue]:
    """Metrics per file (as ``RunResult.metrics`` holds them) flattened to dotted keys.

    With one file, the keys are the file's own (``accuracy``); with several, each starts
    with its file and a colon (``eval/metrics.json:accuracy``), as DVC names them. A file
    that could not be read (``{"error": ...}``) contributes nothing.
    """
    readable = {
        path: doc
        for path, doc in metrics.items()
        if not (isinstance(doc, dict) and set(doc) == {"error"})
    }
    several = len(metrics) > 1
    flat: dict[str, JsonValue] = {}
    for path, doc in readable.items():
        for key, value in flatten(doc).items():
            flat[f"{path}:{key}" if several else key] = value
    return flat


def metric_number(value: JsonValue | None) -> float | None:
    """The value as a number to compare, or None (missing, a string, a bool, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return None if math.isnan(number) else number


def rank(runs: Iterable[Run], metric: str, goal: Goal) -> list[Run]:
    """Best first by ``metric`` (``result.flat_metrics``); ties: earliest finished first;
    runs without a numeric value of the metric come last, in the order they finished."""

    def key(run: Run) -> tuple[int, float, datetime, str]:
        value = metric_number(_run_metrics(run).get(metric))
        finished = run.finished_at or run.created_at
        if value is None:
            return (1, 0.0, finished, run.run_id)
        return (0, -value if goal == "max" else value, finished, run.run_id)

    return sorted(runs, key=key)


def _run_metrics(run: Run) -> Mapping[str, JsonValue]:
    if run.result is None:
        return {}
    # Runs recorded before flat_metrics existed have only the metrics per file.
    return run.result.flat_metrics or flat_metrics(run.result.metrics)


def lock_stages(lock: JsonValue) -> dict[str, JsonValue]:
    """Per stage of a parsed ``dvc.lock``: ``{deps: {path: hash}, params: {key: value},
    outs: {path: hash}}``, the parts that say whether a stage changed between two runs."""
    if not isinstance(lock, dict) or not isinstance(lock.get("stages"), dict):
        return {}
    stages: dict[str, JsonValue] = {}
    entries = lock["stages"]
    assert isinstance(entries, dict)
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            continue
        params: dict[str, JsonValue] = {}
        by_file = entry.get("params")
        if isinstance(by_file, dict):
            for file, values in by_file.items():
                for key, value in flatten(values).items():
                    params[key if file == "params.yaml" else f"{file}:{key}"] = value
        stages[str(name)] = {
            "deps": _hashes(entry.get("deps")),
            "params": params,
            "outs": _hashes(entry.get("outs")),
        }
    return stages


def _hashes(entries: JsonValue) -> dict[str, JsonValue]:
    if not isinstance(entries, list):
        return {}
    found: dict[str, JsonValue] = {}
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            digest = entry.get("md5") or entry.get("etag") or entry.get("checksum")
            found[str(entry["path"])] = digest if isinstance(digest, str) else None
    return found


def differing_keys(rows: Sequence[Mapping[str, JsonValue]]) -> list[str]:
    """The keys whose value is not the same in every row (a key some rows lack differs)."""
    keys: set[str] = set()
    for row in rows:
        keys.update(row)
    missing = object()
    differ = []
    for key in sorted(keys):
        values = [row.get(key, missing) for row in rows]
        if any(not _same(v, values[0]) for v in values[1:]):
            differ.append(key)
    return differ


def _same(a: object, b: object) -> bool:
    """Equal as values: ``1 == 1.0``, but ``True`` is not ``1``, and NaN is NaN."""
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b
