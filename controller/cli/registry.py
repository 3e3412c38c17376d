"""``mlexp register``, ``mlexp promote`` and ``mlexp registry`` (the model registry).

    mlexp register RUN_ID --artifact NAME [--version v1.2.0] [--path P]
    mlexp promote EXP ARTIFACT --version v1.2.0 --stage prod
    mlexp promote EXP ARTIFACT --best --metric accuracy [--goal max|min] [--sweep ID] --stage prod
    mlexp registry EXP [--json]

The renderers are plain functions of the API's JSON, so they are tested without a service.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from controller.cli import common

CELL_WIDTH = 40


def add_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this noun's commands to the ``mlexp`` parser."""
    register = sub.add_parser("register", help="register a succeeded run's model as a version")
    register.add_argument("run_id")
    register.add_argument("--artifact", required=True, help="e.g. wine-model")
    register.add_argument("--version", help="e.g. v1.2.0 (default: the next patch version)")
    register.add_argument("--path", help="the artifact's path (default: from dvc.yaml)")
    _json_option(register)
    register.set_defaults(func=cmd_register)

    promote = sub.add_parser("promote", help="assign a stage to a version, or to the best run")
    promote.add_argument("experiment_id")
    promote.add_argument("artifact")
    promote.add_argument("--stage", required=True, help="e.g. prod")
    which = promote.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", help="a registered version, e.g. v1.2.0")
    which.add_argument("--best", action="store_true", help="the best succeeded run by --metric")
    promote.add_argument("--metric", help="with --best: the metric to rank by (e.g. accuracy)")
    promote.add_argument("--goal", choices=("max", "min"), default="max")
    promote.add_argument("--sweep", help="with --best: only the runs of this sweep")
    _json_option(promote)
    promote.set_defaults(func=cmd_promote)

    show = sub.add_parser("registry", help="an experiment's artifacts, versions and stages")
    show.add_argument("experiment_id")
    _json_option(show)
    show.set_defaults(func=cmd_registry)


def _json_option(parser: argparse.ArgumentParser) -> None:
    # After the command too (``mlexp registry EXP --json``); SUPPRESS keeps the global one.
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")


def cmd_register(args: argparse.Namespace) -> int:
    body: dict[str, object] = {"artifact": args.artifact}
    if args.version:
        body["version"] = args.version
    if args.path:
        body["path"] = args.path
    version = common.client(args).post(f"/runs/{args.run_id}/register", body)
    common.show(
        args,
        version,
        f"registered {args.artifact} {version['version']} ({version['tag']}) "
        f"on {str(version['commit'])[:12]}",
    )
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    client = common.client(args)
    if args.best:
        if not args.metric:
            raise ValueError("--best needs --metric")
        body: dict[str, object] = {
            "artifact": args.artifact,
            "metric": args.metric,
            "goal": args.goal,
            "stage": args.stage,
        }
        if args.sweep:
            body["sweep_id"] = args.sweep
        promotion = client.post(f"/experiments/{args.experiment_id}/promote-best", body)
    else:
        body = {"version": args.version, "stage": args.stage}
        promotion = client.post(
            f"/experiments/{args.experiment_id}/registry/{args.artifact}/promote", body
        )
    common.show(args, promotion, render_promotion(promotion))
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    view = common.client(args).get(f"/experiments/{args.experiment_id}/registry")
    common.show(args, view, render_registry(view))
    return 0


# -- rendering -----------------------------------------------------------------------------


def render_promotion(promotion: Mapping[str, Any]) -> str:
    stage, version = promotion["stage"], promotion["version"]
    lines = []
    if promotion.get("registered"):
        lines.append(f"registered {promotion['artifact']} {version['version']} ({version['tag']})")
    if promotion.get("metric"):
        lines.append(
            f"best run {version.get('run_id')}: {promotion['metric']} = {promotion['value']}"
        )
    verb = "promoted" if promotion.get("assigned") else "already"
    lines.append(
        f"{verb} {promotion['artifact']} {stage['version']} -> {stage['stage']} ({stage['tag']})"
    )
    if stage.get("get_command"):
        lines.append(f"fetch it: {stage['get_command']}")
    return "\n".join(lines)


def render_registry(view: Mapping[str, Any]) -> str:
    """Per artifact: a line of its stages, then its versions as an aligned table."""
    artifacts: Sequence[Mapping[str, Any]] = view.get("artifacts", [])
    if not artifacts:
        return f"no artifacts registered in {view.get('experiment_id')}"
    out: list[str] = []
    for artifact in artifacts:
        stages = artifact.get("stages", {})
        summary = ", ".join(f"{name}={s['version']}" for name, s in sorted(stages.items()))
        flag = " (deprecated)" if artifact.get("deprecated") else ""
        out.append(f"{artifact['name']}{flag}  latest={artifact.get('latest') or '-'}"
                   f"  {summary or 'no stages'}")  # fmt: skip
        rows = [("version", "stages", "run", "commit", "created", "metrics")]
        for version in artifact.get("versions", []):
            metrics = ", ".join(f"{k}={_number(v)}" for k, v in version.get("metrics", {}).items())
            rows.append(
                (
                    version["version"] + ("" if version.get("active", True) else " (deregistered)"),
                    ",".join(version.get("stages", [])) or "-",
                    version.get("run_id") or "-",
                    str(version["commit"])[:12],
                    str(version["created_at"])[:19].replace("T", " "),
                    metrics or "-",
                )
            )
        out.append(_table(rows))
        for name, stage in sorted(stages.items()):
            if stage.get("get_command"):
                out.append(f"  {name}: {stage['get_command']}")
        out.append("")
    return "\n".join(out).rstrip("\n")


def _number(value: object) -> str:
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def _table(rows: Sequence[Sequence[str]]) -> str:
    cut = [[c if len(c) <= CELL_WIDTH else c[: CELL_WIDTH - 1] + "…" for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cut) for i in range(len(cut[0]))]
    return "\n".join(
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cut
    )
