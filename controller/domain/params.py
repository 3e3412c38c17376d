"""Hyperparameters: the bundle's params file and a run's dotted-key overrides."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping

from controller.domain.errors import InvalidParams

MAX_OVERRIDES = 200


def apply_overrides(
    params: Mapping[str, object], overrides: Mapping[str, object]
) -> dict[str, object]:
    """Return a copy of ``params`` with each ``"a.b.c": value`` override applied.

    A key must name an existing leaf or mapping entry: a typo that silently
    added a new key would leave the pipeline running with the old value.
    List items are addressed by index (``layers.0``).
    """
    if len(overrides) > MAX_OVERRIDES:
        raise InvalidParams(f"at most {MAX_OVERRIDES} parameter overrides are accepted")
    result: dict[str, object] = copy.deepcopy(dict(params))
    for dotted, value in overrides.items():
        _check_value(dotted, value)
        _set(result, dotted, value)
    return result


def _check_value(dotted: str, value: object) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise InvalidParams(f"params.{dotted}: value must be JSON-serialisable") from None


def _set(root: dict[str, object], dotted: str, value: object) -> None:
    parts = dotted.split(".")
    if not dotted or any(not part for part in parts):
        raise InvalidParams(f"params: {dotted!r} is not a dotted key such as 'train.C'")
    node: object = root
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        path = ".".join(parts[: depth + 1])
        if isinstance(node, dict):
            if part not in node:
                known = ", ".join(sorted(str(k) for k in node)[:20]) or "none"
                raise InvalidParams(f"params: {path!r} is not in params.yaml (known here: {known})")
            if last:
                node[part] = value
            else:
                node = node[part]
        elif isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise InvalidParams(f"params: {path!r} is not an index of a list of {len(node)}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        else:
            raise InvalidParams(f"params: {path!r} goes inside a value that is not a mapping")
