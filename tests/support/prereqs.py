"""Tier prerequisites: skipped with a reason on a laptop, a failure under ``CI=true``."""

from __future__ import annotations

import os
import shutil

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require(condition: bool, reason: str) -> None:
    if condition:
        return
    if under_ci():
        pytest.fail(f"prerequisite missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_tools(*names: str) -> None:
    for name in names:
        require(shutil.which(name) is not None, f"{name} is not on PATH")
