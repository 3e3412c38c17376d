"""A run's plots as rows: the data files ``dvc.yaml`` declares, read as DVC reads them.

JSON or YAML (a list of objects, or an object holding one such list), CSV and TSV
(a header row, then rows). Values that look like numbers become numbers. Bounded:
at most ``MAX_ROWS`` rows per file are kept, the rest is counted.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence

from controller.domain.models import JsonValue, PlotSpec
from controller.domain.safeyaml import load_yaml

__all__ = ["MAX_ROWS", "plot_rows", "read_rows"]

MAX_ROWS = 10_000


def plot_rows(specs: Sequence[PlotSpec], files: Mapping[str, str]) -> list[dict[str, JsonValue]]:
    """Each plot with its definition and, per data file, its rows (or why there are none)."""
    plots: list[dict[str, JsonValue]] = []
    for spec in specs:
        data: dict[str, JsonValue] = {}
        for path in spec.files:
            text = files.get(path)
            if text is None:
                data[path] = {
                    "rows": [],
                    "error": "not in the run's commit (missing, too large, or cached by DVC: "
                    "declare it with cache: false to have it in git)",
                }
                continue
            try:
                rows, total = read_rows(path, text)
            except Exception as exc:  # the run's own file: unreadable is no failure
                data[path] = {"rows": [], "error": f"not readable: {type(exc).__name__}"}
                continue
            entry: dict[str, JsonValue] = {"rows": list(rows)}
            if total > len(rows):
                entry["truncated_from"] = total
            data[path] = entry
        plots.append({**spec.model_dump(mode="json"), "data": data})
    return plots


def read_rows(path: str, text: str) -> tuple[list[JsonValue], int]:
    """The file's rows (at most ``MAX_ROWS``) and how many it has."""
    suffix = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if suffix in ("csv", "tsv"):
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == "tsv" else ",")
        rows: list[JsonValue] = []
        total = 0
        for record in reader:
            total += 1
            if len(rows) < MAX_ROWS:
                rows.append({str(k): _number(v) for k, v in record.items() if k is not None})
        return rows, total
    document = json.loads(text) if suffix == "json" else load_yaml(text, source=path)
    found = _row_list(document)
    kept: list[JsonValue] = json.loads(json.dumps(found[:MAX_ROWS], default=str))
    return kept, len(found)


def _row_list(document: object) -> list[object]:
    if isinstance(document, list):
        return document
    if isinstance(document, dict):
        for value in document.values():
            if isinstance(value, list):
                return value
    raise ValueError("no list of rows")


def _number(value: str | None) -> JsonValue:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        return value
    return number if math.isfinite(number) else value
