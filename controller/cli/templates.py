"""``mlexp`` commands for project templates (being written)."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this noun's commands to the ``mlexp`` parser."""
