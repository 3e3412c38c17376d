"""What every command module shares: the client from the global options, and output."""

from __future__ import annotations

import argparse
import json

from controller.client import MlexpClient


def client(args: argparse.Namespace) -> MlexpClient:
    return MlexpClient(args.url, token=args.token)


def show(args: argparse.Namespace, data: object, line: str) -> None:
    """``data`` as JSON with ``--json``, else the human ``line``."""
    if args.json:
        dump(data)
    else:
        print(line)


def dump(data: object) -> None:
    print(json.dumps(data, indent=2))
