"""Names and ids the service generates: ids, run branches, DNS-1123 labels."""

from __future__ import annotations

import re
import secrets

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
RUN_BRANCH_PREFIX = "runs/"
_ID = re.compile(r"^(exp|run|res)-[0-9a-f]{10}$")


def new_id(kind: str) -> str:
    """A fresh id such as ``run-3f9a1c2b7d``: short, unique enough, DNS-1123 safe."""
    return f"{kind}-{secrets.token_hex(5)}"


def is_id(value: str, kind: str) -> bool:
    return bool(_ID.match(value)) and value.startswith(f"{kind}-")


def run_branch(run_id: str) -> str:
    return f"{RUN_BRANCH_PREFIX}{run_id}"


def is_dns1123_label(value: str) -> bool:
    return bool(DNS1123_LABEL.match(value))
