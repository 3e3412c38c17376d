"""``${...}`` interpolation with DVC 3's rules (``dvc/parsing/interpolate.py``).

* ``${a.b}``, ``${a[0]}`` and ``${a.0}`` select from the variables; list
  indices are integers, mapping keys are strings.
* A string that is exactly one ``${...}`` takes the selected value with its
  type (``${lr}`` -> ``0.1``); inside a longer string the value is rendered
  (booleans as ``true``/``false``).
* Only scalars may be interpolated into stage fields; a mapping may be
  interpolated into ``cmd``, where it renders as ``--key value`` arguments.
  ``foreach``/``matrix`` data and top-level sections may select anything.
* ``\\${`` escapes an interpolation.

Errors are :class:`InterpolationError`; callers add the stage that failed.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

__all__ = [
    "MAX_STRING_CHARS",
    "Budget",
    "InterpolationError",
    "UndefinedName",
    "check_syntax",
    "has_interpolation",
    "is_whole_reference",
    "resolve",
    "to_str",
]

_KEYCRE = re.compile(r"(?<!\\)\$\{(?P<inner>.*?)\}")
# DVC's grammar: word (("." word) | ("[" word "]"))*, word = anything but . [ ]
_EXPRESSION = re.compile(r"^[^.\[\]]+(?:\.[^.\[\]]+|\[[^.\[\]]+\])*$")
_PRIMITIVES = (int, float, str, bytes, bool)


# Linux refuses a single exec argument longer than this (MAX_ARG_STRLEN), so
# no command or path DVC could use is longer.
MAX_STRING_CHARS = 128 * 1024


class InterpolationError(Exception):
    """A ``${...}`` that cannot be resolved; the message says why."""


class Budget:
    """How much interpolation may still produce during one parse.

    ``foreach`` and ``matrix`` multiply the stage template, and ``${...}`` can
    repeat a long value, so a few hundred bytes of dvc.yaml could otherwise
    ask for gigabytes.
    """

    def __init__(self, *, nodes: int = 2_000_000, chars: int = 64 * 1024 * 1024) -> None:
        self.nodes = nodes
        self.chars = chars

    def spend(self, *, nodes: int = 0, chars: int = 0) -> None:
        self.nodes -= nodes
        self.chars -= chars
        if self.nodes < 0 or self.chars < 0:
            raise InterpolationError("the pipeline expands to too much data after interpolation")


class UndefinedName(InterpolationError):
    """The selected name is not among the variables."""

    def __init__(self, name: str) -> None:
        super().__init__(f"undefined name '{name}' in '${{{name}}}'")
        self.name = name


def has_interpolation(value: object) -> bool:
    """Whether ``value`` (or anything inside it) contains a ``${...}``."""
    if isinstance(value, str):
        return _KEYCRE.search(value) is not None
    if isinstance(value, Mapping):
        return any(has_interpolation(k) or has_interpolation(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_interpolation(item) for item in value)
    return False


def is_whole_reference(value: object) -> bool:
    """Whether ``value`` is a string consisting of exactly one ``${...}``."""
    if not isinstance(value, str):
        return False
    matches = list(_KEYCRE.finditer(value))
    return len(matches) == 1 and matches[0].group(0) == value


def check_syntax(value: object) -> None:
    """Raise for any malformed ``${...}`` in ``value``, before any is resolved."""
    if isinstance(value, str):
        for match in _KEYCRE.finditer(value):
            _parse(match["inner"])
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_syntax(key)
            check_syntax(item)
    elif isinstance(value, list):
        for item in value:
            check_syntax(item)


def resolve(
    value: object, variables: Mapping[str, object], *, key: str | None, budget: Budget
) -> object:
    """Interpolate every string in ``value`` (mapping keys too, as DVC does).

    ``key`` is the stage field being resolved (``"cmd"``, ``"outs"``...) and
    decides what may be interpolated; ``None`` allows any value.
    """
    budget.spend(nodes=1)
    if isinstance(value, str):
        return _resolve_str(value, variables, key=key, budget=budget)
    if isinstance(value, Mapping):
        return {
            _resolve_key(k, variables, key=key, budget=budget): resolve(
                v, variables, key=key, budget=budget
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [resolve(item, variables, key=key, budget=budget) for item in value]
    return value


def _resolve_key(
    name: object, variables: Mapping[str, object], *, key: str | None, budget: Budget
) -> object:
    resolved = resolve(name, variables, key=key, budget=budget)
    if isinstance(resolved, (list, Mapping)):
        raise InterpolationError(f"mapping key {name!r} resolved to a {type(resolved).__name__}")
    return resolved


def to_str(value: object) -> str:
    """Render a value the way DVC embeds it in a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return _as_arguments(value)
    return str(value)


def _parse(inner: str) -> list[str]:
    if not _EXPRESSION.match(inner):
        raise InterpolationError(f"invalid expression '${{{inner}}}'")
    normalized = inner.replace("[", ".").replace("]", "")
    return [part.strip() for part in normalized.split(".")]


def _resolve_str(
    text: str, variables: Mapping[str, object], *, key: str | None, budget: Budget
) -> object:
    matches = list(_KEYCRE.finditer(text))
    if not matches:
        return text.replace("\\${", "${")
    if len(matches) == 1 and matches[0].group(0) == text:
        # A whole-value reference keeps the referenced value's type.
        value = _select(variables, matches[0]["inner"])
        _check_interpolable(value, matches[0]["inner"], key)
        return value
    pieces: list[str] = []
    length = 0
    position = 0
    for match in matches:
        value = _select(variables, match["inner"])
        _check_interpolable(value, match["inner"], key)
        rendered = to_str(value)
        pieces += [text[position : match.start()], rendered]
        length += match.start() - position + len(rendered)
        if length > MAX_STRING_CHARS:
            raise InterpolationError(
                f"{text[:40]!r}... is longer than {MAX_STRING_CHARS} characters"
            )
        position = match.end()
    pieces.append(text[position:])
    budget.spend(chars=length)
    return "".join(pieces).replace("\\${", "${")


def _select(variables: Mapping[str, object], inner: str) -> object:
    name = inner.strip()
    current: object = variables
    for part in _parse(inner):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and _is_index(part, len(current)):
            current = current[int(part)]
        else:
            raise UndefinedName(name)
    return current


def _is_index(part: str, length: int) -> bool:
    try:
        index = int(part)
    except ValueError:
        return False
    return -length <= index < length


def _check_interpolable(value: object, inner: str, key: str | None) -> None:
    if value is None or isinstance(value, _PRIMITIVES):
        return
    if key is None or "foreach" in key:
        return
    if isinstance(value, Mapping) and key == "cmd":
        return
    raise InterpolationError(
        f"cannot interpolate '${{{inner.strip()}}}' of type {type(value).__name__} into '{key}'"
    )


def _flatten(mapping: Mapping[object, object], prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            continue  # DVC's context holds string keys only
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _as_arguments(mapping: Mapping[object, object]) -> str:
    """``{"lr": 0.1, "fast": True, "layers": [1, 2]}`` -> ``--lr 0.1 --fast --layers 1 2``."""
    words: list[str] = []
    for name, value in _flatten(mapping).items():
        if isinstance(value, bool):
            # DVC's default "store_true" style: a false flag is simply omitted.
            words.extend([f"--{name}"] if value else [])
        elif isinstance(value, str):
            words.extend([f"--{name}", shlex.quote(value)])
        elif isinstance(value, list):
            words.extend(_list_arguments(name, value))
        else:
            words.extend([f"--{name}", str(value)])
    return " ".join(words)


def _list_arguments(name: str, values: list[object]) -> list[str]:
    if not values:
        return []
    words = [f"--{name}"]
    for item in values:
        if isinstance(item, (list, Mapping)):
            raise InterpolationError(f"cannot interpolate nested list or mapping in '{name}'")
        words.append(shlex.quote(item) if isinstance(item, str) else str(item))
    return words
