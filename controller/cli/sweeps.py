"""``mlexp sweep``: start a sweep, follow it, show, list and cancel sweeps.

    mlexp sweep start EXP --grid train.C=0.1,0.3,1 [--grid KEY=V1,V2 ...]
                      | --random-trials N [--seed S] --space KEY=SPEC ...
                      | --adaptive-trials N [--seed S] --space KEY=SPEC ...
                      [--set KEY=VALUE ...] [--max-parallel N] [--metric M --goal max|min]
                      [--stop-at THRESHOLD] [--resource R] [--namespace NS] [--follow]
    mlexp sweep show ID | cancel ID
    mlexp sweep list [--experiment ID]

A ``--space`` SPEC is ``uniform:LOW:HIGH``, ``loguniform:LOW:HIGH``, ``int:LOW:HIGH`` or
``choice:V1,V2,...``. Values (``--grid``, ``choice``, ``--set``) are read as YAML scalars,
as ``mlexp run start --set`` reads them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from controller.cli import common, parse_set
from controller.client import JsonObject, MlexpClient

FOLLOW_INTERVAL_SECONDS = 1.0
PARAMS_WIDTH = 48


def add_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this noun's commands to the ``mlexp`` parser."""
    sweep = sub.add_parser("sweep", help="sweeps: many runs over a search space").add_subparsers(
        required=True, metavar="ACTION"
    )
    start = sweep.add_parser("start", help="start a sweep")
    start.add_argument("experiment_id")
    start.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...")
    start.add_argument("--random-trials", type=int, metavar="N")
    start.add_argument("--adaptive-trials", type=int, metavar="N", help="Optuna TPE trials")
    start.add_argument("--seed", type=int, default=0)
    start.add_argument("--space", action="append", default=[], metavar="KEY=SPEC")
    start.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    start.add_argument("--max-parallel", type=int, default=1)
    start.add_argument("--metric", help="the objective: a flat metric key")
    start.add_argument("--goal", default="max", choices=["max", "min", "maximize", "minimize"])
    start.add_argument("--stop-at", type=float, metavar="THRESHOLD", help="stop when reached")
    start.add_argument("--resource", default="local")
    start.add_argument("--namespace")
    start.add_argument("--follow", action="store_true", help="a live table until it ends")
    start.set_defaults(func=cmd_sweep_start)
    show = sweep.add_parser("show")
    show.add_argument("sweep_id")
    show.set_defaults(func=cmd_sweep_show)
    listing = sweep.add_parser("list")
    listing.add_argument("--experiment")
    listing.set_defaults(func=cmd_sweep_list)
    cancel = sweep.add_parser("cancel")
    cancel.add_argument("sweep_id")
    cancel.set_defaults(func=cmd_sweep_cancel)


def sweep_body(args: argparse.Namespace) -> JsonObject:
    """The ``POST /experiment/sweep`` body of ``mlexp sweep start``'s options."""
    searches = [bool(args.grid), args.random_trials is not None, args.adaptive_trials is not None]
    if sum(searches) != 1:
        raise ValueError("give one search: --grid, --random-trials or --adaptive-trials")
    body: JsonObject = {
        "experiment_id": args.experiment_id,
        "resource": args.resource,
        "namespace": args.namespace,
        "params": parse_set(args.set),
        "max_parallel": args.max_parallel,
    }
    if args.grid:
        grid: dict[str, list[object]] = {}
        for item in args.grid:
            key, sep, raw = item.partition("=")
            if not sep or not key or not raw:
                raise ValueError(f"--grid {item!r}: expected key=v1,v2,...")
            grid[key] = [parse_set([f"{key}={value}"])[key] for value in raw.split(",")]
        body["grid"] = grid
    else:
        if args.space and not (args.random_trials or args.adaptive_trials):
            raise ValueError("--space needs --random-trials or --adaptive-trials")
        space = dict(parse_space(item) for item in args.space)
        trials = args.random_trials if args.random_trials is not None else args.adaptive_trials
        search = {"trials": trials, "seed": args.seed, "space": space}
        body["random" if args.random_trials is not None else "adaptive"] = search
    if args.metric:
        body["objective"] = {"metric": args.metric, "goal": args.goal}
    if args.stop_at is not None:
        body["stop"] = {"threshold": args.stop_at}
    return body


def parse_space(item: str) -> tuple[str, JsonObject]:
    """``train.C=loguniform:0.01:10`` -> ("train.C", {"type": "loguniform", ...})."""
    key, sep, spec = item.partition("=")
    kind, _, rest = spec.partition(":")
    if not sep or not key or not rest:
        raise ValueError(f"--space {item!r}: expected key=TYPE:... (uniform:0.1:1, choice:a,b)")
    if kind == "choice":
        return key, {
            "type": "choice",
            "values": [parse_set([f"{key}={v}"])[key] for v in rest.split(",")],
        }
    low, colon, high = rest.partition(":")
    if kind not in ("uniform", "loguniform", "int") or not colon:
        raise ValueError(f"--space {item!r}: TYPE is uniform, loguniform or int with LOW:HIGH")
    cast = int if kind == "int" else float
    return key, {"type": kind, "low": cast(low), "high": cast(high)}


def cmd_sweep_start(args: argparse.Namespace) -> int:
    client = common.client(args)
    created = client.post("/experiment/sweep", sweep_body(args))
    sweep_id = str(created["sweep_id"])
    if not args.follow:
        runs = ", ".join(created.get("run_ids") or [])
        common.show(args, created, f"started {sweep_id}: {created['total_trials']} trials ({runs})")
        return 0
    return follow(client, sweep_id)


def follow(client: MlexpClient, sweep_id: str) -> int:
    """Redraw the sweep's table in place (a terminal) or print it when it changes, until
    the sweep ends; exit status 0 if it completed or stopped."""
    live = sys.stdout.isatty()
    drawn = 0
    last = ""
    while True:
        sweep = client.get(f"/sweeps/{sweep_id}")
        lines = table(sweep)
        text = "\n".join(lines)
        if text != last:
            if live and drawn:
                sys.stdout.write(f"\x1b[{drawn}F\x1b[J")  # up to the table's start, clear below
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
            drawn, last = len(lines), text
        if sweep["state"] != "running":
            return 0 if sweep["state"] in ("completed", "stopped") else 1
        time.sleep(FOLLOW_INTERVAL_SECONDS)


def table(sweep: JsonObject) -> list[str]:
    """The sweep as aligned plain-text lines: a header, one line per trial, the best."""
    searched = _searched_keys(sweep)
    counts = ", ".join(f"{n} {state}" for state, n in sorted(dict(sweep["counts"]).items()))
    objective = sweep["request"].get("objective") or {}
    head = f"sweep {sweep['sweep_id']}: {sweep['state']}"
    head += f" ({sweep['reason']})" if sweep.get("reason") else ""
    head += f"  {len(sweep['trials'])}/{sweep['total_trials']} trials"
    head += f"  [{counts}]" if counts else ""
    rows = [["#", "run", "state", "params", str(objective.get("metric") or "metric")]]
    for trial in sweep["trials"]:
        params = " ".join(f"{k}={json.dumps(trial['params'].get(k))}" for k in searched)
        if len(params) > PARAMS_WIDTH:
            params = params[: PARAMS_WIDTH - 1] + "…"
        value = trial.get("value")
        shown = "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
        rows.append([str(trial["number"]), trial["run_id"], trial["state"], params, shown])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [head]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]  # fmt: skip
    best = sweep.get("best")
    if best:
        lines.append(f"best so far: {best['run_id']} {best['metric']} = {best['value']:.6g}")
    return lines


def _searched_keys(sweep: JsonObject) -> list[str]:
    request = sweep["request"]
    if request.get("grid"):
        return list(request["grid"])
    search = request.get("random") or request.get("adaptive") or {}
    return list(search.get("space") or {})


def cmd_sweep_show(args: argparse.Namespace) -> int:
    sweep = common.client(args).get(f"/sweeps/{args.sweep_id}")
    common.show(args, sweep, "\n".join(table(sweep)))
    return 0


def cmd_sweep_list(args: argparse.Namespace) -> int:
    client = common.client(args)
    query = {"experiment_id": args.experiment} if args.experiment else {}
    sweeps = client._check(client.http.get("/sweeps", params=query)).json()
    if args.json:
        common.dump(sweeps)
        return 0
    for sweep in sweeps:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(sweep["counts"].items()))
        print(
            f"{sweep['sweep_id']}  {sweep['state']:<9}  {sweep['experiment_id']}  "
            f"{sweep['total_trials']} trials  [{counts}]  {sweep['created_at']}"
        )
    return 0


def cmd_sweep_cancel(args: argparse.Namespace) -> int:
    sweep = common.client(args).post(f"/sweeps/{args.sweep_id}/cancel")
    common.show(args, sweep, f"sweep {sweep['sweep_id']}: {sweep['state']}")
    return 0
