"""Where a run executes: ``local``, ``job``, ``sts/<name>`` or ``deploy/<name>``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from controller.domain.errors import InvalidInput

ResourceKind = Literal["local", "job", "sts", "deploy"]
_NAMED = re.compile(r"^(sts|deploy)/([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)$")


@dataclass(frozen=True)
class ResourceRef:
    kind: ResourceKind
    name: str | None = None

    def __str__(self) -> str:
        return self.kind if self.name is None else f"{self.kind}/{self.name}"


def parse_resource(value: str) -> ResourceRef:
    if value == "local":
        return ResourceRef("local")
    if value == "job":
        return ResourceRef("job")
    match = _NAMED.match(value)
    if match is None:
        raise InvalidInput(
            f"resource {value[:80]!r} is not one of: local, job, sts/<name>, deploy/<name>"
            " (names are DNS-1123 labels)"
        )
    kind: ResourceKind = "sts" if match.group(1) == "sts" else "deploy"
    return ResourceRef(kind, match.group(2))
