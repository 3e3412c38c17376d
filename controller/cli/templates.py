"""``mlexp init`` and ``mlexp template``: start a project from a template.

    mlexp init DIR [--template NAME] [--force]    write a ready-to-post bundle into DIR
    mlexp template list                           each template's name and description

The templates ship inside the package (:mod:`controller.templates`). ``DIR`` must be
missing or empty unless ``--force``; nothing is written outside it.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from controller import templates
from controller.cli import common

DEFAULT_TEMPLATE = "sklearn-basic"


def add_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this noun's commands to the ``mlexp`` parser."""
    init = sub.add_parser("init", help="write a new project (a ready-to-post bundle) into DIR")
    init.add_argument("dir", type=Path, metavar="DIR")
    init.add_argument(
        "--template",
        default=DEFAULT_TEMPLATE,
        metavar="NAME",
        help=f"a template of `mlexp template list` (default: {DEFAULT_TEMPLATE})",
    )
    init.add_argument("--force", action="store_true", help="write into a non-empty DIR")
    init.set_defaults(func=cmd_init)

    template = sub.add_parser("template", help="project templates").add_subparsers(
        required=True, metavar="ACTION"
    )
    template.add_parser("list", help="each template and what it is").set_defaults(
        func=cmd_template_list
    )


def cmd_init(args: argparse.Namespace) -> int:
    files = templates.init(args.dir, args.template, force=args.force)
    if args.json:
        common.dump({"template": args.template, "dir": str(args.dir), "files": files})
        return 0
    print(f"wrote {args.dir} from the template {args.template}: {', '.join(files)}")
    print("next:")
    print(f"  mlexp experiment create {shlex.quote(str(args.dir))}")
    print("  mlexp run start <experiment_id> --follow")
    return 0


def cmd_template_list(args: argparse.Namespace) -> int:
    found = templates.templates()
    if args.json:
        common.dump([{"name": t.name, "description": t.description} for t in found])
        return 0
    width = max((len(t.name) for t in found), default=0)
    for template in found:
        print(f"{template.name:<{width}}  {template.description}")
    return 0
