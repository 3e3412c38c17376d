"""``mlexp compare`` (an experiment's runs as a table) and ``mlexp compare-runs`` (two runs).

    mlexp compare EXP [--metric M] [--goal max|min] [--sweep ID] [--state S ...]
                      [--baseline RUN] [--limit N] [--format table|csv|json]
    mlexp compare-runs A B [--all]

The renderers are plain functions of the API's JSON, so they are tested without a service.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import Any

from controller.cli import common

CELL_WIDTH = 24  # longer values are cut, with an ellipsis
DIGITS = 5  # significant digits of a float in a table


def add_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this noun's commands to the ``mlexp`` parser."""
    compare = sub.add_parser("compare", help="an experiment's runs as a table, best first")
    compare.add_argument("experiment_id")
    compare.add_argument("--metric", help="rank by this metric (e.g. accuracy)")
    compare.add_argument("--goal", choices=("max", "min"), default="max")
    compare.add_argument("--sweep", help="only the runs of this sweep")
    compare.add_argument(
        "--state", action="append", default=[], help="only runs in this state (repeatable)"
    )
    compare.add_argument("--baseline", metavar="RUN", help="add deltas against this run")
    compare.add_argument("--limit", type=int, default=100)
    compare.add_argument("--format", choices=("table", "csv", "json"), default="table")
    compare.set_defaults(func=cmd_compare)

    pair = sub.add_parser("compare-runs", help="two runs side by side, and the stages that changed")
    pair.add_argument("run_a")
    pair.add_argument("run_b")
    pair.add_argument("--all", action="store_true", help="list the params that are the same too")
    pair.set_defaults(func=cmd_compare_runs)


def cmd_compare(args: argparse.Namespace) -> int:
    query: dict[str, object] = {
        "metric": args.metric,
        "goal": args.goal,
        "sweep_id": args.sweep,
        "state": args.state,
        "baseline": args.baseline,
        "limit": args.limit,
    }
    path = f"/experiments/{args.experiment_id}/compare"
    client = common.client(args)
    if args.format == "csv":
        print(client.get_text(path, format="csv", **query), end="")
        return 0
    table = client.get(path, **query)
    if args.format == "json" or args.json:
        common.dump(table)
    else:
        print(render_table(table))
    return 0


def cmd_compare_runs(args: argparse.Namespace) -> int:
    result = common.client(args).get("/runs/compare", run_id=[args.run_a, args.run_b])
    if args.json:
        common.dump(result)
    else:
        print(render_pair(result, show_same=args.all))
    return 0


# -- rendering -----------------------------------------------------------------------------


def render_table(table: Mapping[str, Any]) -> str:
    """The comparison as aligned columns: ``*`` marks the best row; deltas are ``Δ<metric>``."""
    params: list[str] = list(table["param_columns"])
    metrics: list[str] = list(table["metric_columns"])
    deltas: list[str] = list(table.get("delta_columns") or [])
    header = ["  run", "state", *params, *metrics, *(f"Δ{k}" for k in deltas)]
    lines: list[list[str]] = [header]
    for row in table["rows"]:
        lines.append(
            [("* " if row.get("best") else "  ") + str(row["run_id"]), str(row["state"])]
            + [_text(row["params"], k) for k in params]
            + [_text(row["metrics"], k) for k in metrics]
            + [_text(row.get("deltas") or {}, k, signed=True) for k in deltas]
        )
    rows = len(lines) - 1
    title = f"{rows} run{'s' if rows != 1 else ''} of {table['experiment_id']}"
    if table.get("metric"):
        title += f", best first by {table['metric']} ({table['goal']})"
    baseline = table.get("baseline")
    if isinstance(baseline, dict):
        title += f", deltas against {baseline['run_id']}"
    return "\n".join([title, *_aligned(lines)])


def render_pair(result: Mapping[str, Any], *, show_same: bool = False) -> str:
    """Two runs: their params and metrics (``≠`` where they differ), then the stages."""
    a, b = result["runs"]
    out = [f"a: {_describe(a)}", f"b: {_describe(b)}"]
    for title, pairs in (("params", result["params"]), ("metrics", result["metrics"])):
        shown = [p for p in pairs if show_same or not p["same"]]
        same = len(pairs) - len(shown)
        out.append(f"{title}" + (f" ({same} the same, not shown)" if same else "") + ":")
        lines = [["", title[:-1], "a", "b", "b - a" if title == "metrics" else ""]]
        for pair in shown:
            delta = pair.get("delta")
            lines.append(
                [
                    "" if pair["same"] else "≠",
                    _cut(str(pair["key"])),
                    _text(pair, "a"),
                    _text(pair, "b"),
                    _number(delta, signed=True) if delta is not None else "",
                ]
            )
        out += ["  " + line for line in _aligned(lines)] if shown else []
    stages = result["stages"]
    out.append("stages changed: " + (", ".join(_stage_summary(s) for s in stages) or "none"))
    for stage in stages:
        for part in stage["changed"]:
            for key, (left, right) in stage[part].items():
                out.append(f"  {stage['stage']}: {part} {key}: {_short(left)} -> {_short(right)}")
    if result["unchanged_stages"]:
        out.append("stages unchanged: " + ", ".join(result["unchanged_stages"]))
    out += [f"note: {note}" for note in result.get("notes") or []]
    return "\n".join(out)


def _describe(side: Mapping[str, Any]) -> str:
    where = f", {side['branch']} @ {str(side['commit'])[:10]}" if side.get("commit") else ""
    return f"{side['run_id']} ({side['state']}{where}, experiment {side['experiment_id']})"


def _stage_summary(stage: Mapping[str, Any]) -> str:
    if stage.get("only_in"):
        return f"{stage['stage']} (only in {stage['only_in']})"
    return f"{stage['stage']} ({', '.join(stage['changed'])})"


def _short(value: object) -> str:
    """A hash shortened as git does; anything else as a table cell."""
    if isinstance(value, str) and len(value) >= 32 and value.isalnum():
        return value[:10]
    return "(none)" if value is None else _cut(_format(value))


def _aligned(lines: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]


def _text(values: Mapping[str, Any], key: str, *, signed: bool = False) -> str:
    if key not in values or values[key] is None:
        return "-"
    value = values[key]
    return _cut(_number(value, signed=signed) if _is_number(value) else _format(value))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: float, *, signed: bool = False) -> str:
    if isinstance(value, int):
        return f"{value:+d}" if signed else str(value)
    return f"{value:+.{DIGITS}g}" if signed else f"{value:.{DIGITS}g}"


def _format(value: object) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def _cut(text: str) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= CELL_WIDTH else text[: CELL_WIDTH - 1] + "…"
