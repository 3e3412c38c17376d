"""A run's plots as rows: the data files ``dvc.yaml`` declares, read as DVC reads them.

Formats, by suffix (as DVC's ``plots`` does): ``.json``, ``.yaml``/``.yml`` -- a list of
objects, or an object holding one (the first list of objects, searched depth-first
through nested objects, whose first row has the plot's x/y fields, as DVC's
``_find_first_list``) -- and ``.csv``/``.tsv`` (a header row, then rows). In CSV/TSV,
values that look like numbers become numbers; JSON and YAML keep their own types.
Non-finite numbers (``NaN``, ``inf``) become strings, so every answer is plain JSON.
Images (``.png``, ``.svg``...) have no rows: they are marked ``image``.

Bounded: at most ``MAX_ROWS`` rows per file are kept (``truncated_from`` counts them
all), and at most ``MAX_TOTAL_CHARS`` of rows for one run; a file past that keeps no
rows and says so.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from controller.domain.errors import InvalidInput
from controller.domain.models import JsonValue, PlotSpec
from controller.domain.safeyaml import load_json, load_yaml

__all__ = [
    "IMAGE_SUFFIXES",
    "LIVE_MISSING",
    "MAX_ROWS",
    "MAX_TOTAL_CHARS",
    "PlotFile",
    "PlotRows",
    "plot_rows",
    "read_rows",
]

MAX_ROWS = 10_000
# The rows kept for one run, in characters of JSON: a run's plots are one record.
MAX_TOTAL_CHARS = 16 * 1024 * 1024
# The largest plot file parsed: JSON (fast) as big as a run's commit may hand over,
# YAML (pure-Python parsing) less, as it runs while the run's end is recorded.
MAX_JSON_BYTES = 8 * 1024 * 1024
MAX_YAML_BYTES = 2 * 1024 * 1024
IMAGE_SUFFIXES = frozenset({"png", "jpg", "jpeg", "gif", "svg"})
_TABLES = {"csv": ",", "tsv": "\t"}
_DOCUMENTS = frozenset({"json", "yaml", "yml"})
# ASCII only: int() and float() also take "1_000" and other scripts' digits.
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
MISSING = (
    "not a file in the run's commit (missing, a directory, too large, or cached by DVC: "
    "declare it with cache: false to have it in git)"
)
LIVE_MISSING = "not written yet (or not a regular file in the run's work dir)"


class PlotFile(BaseModel):
    """One data file of a plot, as a run left it."""

    model_config = ConfigDict(frozen=True)

    rows: list[JsonValue] = Field(
        default_factory=list, description="The file's rows (objects), at most 10,000."
    )
    truncated_from: int | None = Field(
        default=None, description="How many rows the file has, when more than were kept."
    )
    image: bool = Field(default=False, description="An image: no rows (get it from the branch).")
    error: str | None = Field(default=None, description="Why there are no rows.")


class PlotRows(PlotSpec):
    """A plot's definition, and per data file its rows."""

    data: dict[str, PlotFile] = Field(description="Per data file (repo-relative), its rows.")


def plot_rows(
    specs: Sequence[PlotSpec], files: Mapping[str, str], *, missing: str = MISSING
) -> list[dict[str, JsonValue]]:
    """Each plot with its definition and, per data file, its rows (or why there are none).

    ``files`` holds the text of the files found in the run's commit (or, while it runs,
    in its work dir), by repo path; ``missing`` says why a file not in it has no rows.
    """
    plots: list[dict[str, JsonValue]] = []
    budget = MAX_TOTAL_CHARS
    for spec in specs:
        data: dict[str, JsonValue] = {}
        for path in spec.files:
            entry = _file_rows(spec, path, files.get(path), missing)
            size = len(json.dumps(entry))
            if size > budget:
                entry = {
                    "rows": [],
                    "error": f"left out: the run's plot rows are over {MAX_TOTAL_CHARS} characters",
                }
            else:
                budget -= size
            data[path] = entry
        plots.append({**spec.model_dump(mode="json"), "data": data})
    return plots


def _file_rows(spec: PlotSpec, path: str, text: str | None, missing: str) -> dict[str, JsonValue]:
    if _suffix(path) in IMAGE_SUFFIXES:
        return {"rows": [], "image": True}
    if text is None:
        return {"rows": [], "error": missing}
    fields = [*([spec.x] if spec.x else []), *spec.y.get(path, [])]
    try:
        rows, total = read_rows(path, text, fields)
    except InvalidInput as exc:  # the run's own file: unreadable is no failure
        return {"rows": [], "error": exc.detail[:500]}
    except (ValueError, csv.Error) as exc:
        return {"rows": [], "error": f"{path}: not readable ({exc})"[:500]}
    entry: dict[str, JsonValue] = {"rows": list(rows)}
    if total > len(rows):
        entry["truncated_from"] = total
    return entry


def read_rows(path: str, text: str, fields: Sequence[str] = ()) -> tuple[list[JsonValue], int]:
    """The file's rows (at most ``MAX_ROWS``) and how many it has.

    ``fields`` (the plot's x and y for this file) choose, in a JSON or YAML document
    holding several lists, the first whose rows have them all. Raises ``ValueError``
    (or :class:`InvalidInput` for a document the safe loaders refuse).
    """
    suffix = _suffix(path)
    if suffix in _TABLES:
        return _table_rows(text, _TABLES[suffix])
    if suffix not in _DOCUMENTS:
        raise ValueError(f"unsupported plot format '.{suffix}' (json, yaml, yml, csv, tsv)")
    document = (
        load_json(text, source=path, max_bytes=MAX_JSON_BYTES)
        if suffix == "json"
        else load_yaml(text, source=path, max_bytes=MAX_YAML_BYTES, json_first=False)
    )
    found = _row_list(document, set(fields))
    kept = [_plain(row) for row in found[:MAX_ROWS]]
    return kept, len(found)


def _suffix(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _table_rows(text: str, delimiter: str) -> tuple[list[JsonValue], int]:
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    rows: list[JsonValue] = []
    total = 0
    for record in reader:
        total += 1
        if len(rows) < MAX_ROWS:
            # A row longer than the header puts the rest under None: DVC drops it too.
            rows.append({str(k): _number(v) for k, v in record.items() if k is not None})
    return rows, total


def _row_list(document: object, fields: set[str]) -> list[object]:
    """The first list of objects (depth-first through nested objects) whose first row
    has ``fields``; else the first list of objects at all."""
    first: list[object] | None = None
    stack: list[object] = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            if not all(isinstance(row, dict) for row in item):
                continue
            if first is None:
                first = item
            head = item[0] if item else None
            if isinstance(head, dict) and fields <= head.keys():
                return item
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
    if first is None:
        raise ValueError("no list of rows (objects) in it")
    return first


def _plain(value: object) -> JsonValue:
    """The value as plain JSON: non-finite floats and dates as strings."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _non_finite(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return str(value)  # YAML timestamps and dates


def _non_finite(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _number(value: str | None) -> JsonValue:
    """A CSV cell: an integer or a finite decimal number as written, else the text."""
    if value is None:
        return None
    text = value.strip()
    if _INTEGER.fullmatch(text) and len(text) <= 100:
        return int(text)
    if _DECIMAL.fullmatch(text):
        number = float(text)
        if math.isfinite(number):
            return number
    return value
