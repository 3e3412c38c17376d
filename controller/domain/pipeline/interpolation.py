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

References are found by :func:`scan`, one left-to-right pass that finds what
DVC's pattern finds (a ``${`` with no backslash before it, then the shortest
run of characters up to the next ``}``, never across a newline), without the
pattern's habit of rescanning the rest of the text from every ``${`` that has
no ``}`` after it (quadratic: 30,000 of them took nearly a minute).

Errors are :class:`InterpolationError`; callers add the stage that failed.
Every resolution is charged to the parse's :class:`~.limits.Budget`.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Mapping
from typing import NamedTuple

from controller.domain.pipeline.limits import Budget

__all__ = [
    "MAX_STRING_CHARS",
    "Budget",
    "InterpolationError",
    "Reference",
    "Scan",
    "UndefinedName",
    "check_syntax",
    "has_interpolation",
    "is_whole_reference",
    "resolve",
    "scan",
    "to_str",
]

# DVC's grammar: word (("." word) | ("[" word "]"))*, word = anything but . [ ]
# Each repetition starts with its own delimiter, which words exclude, so a
# failing match backs off one character at a time: linear, never exponential.
_EXPRESSION = re.compile(r"^[^.\[\]]+(?:\.[^.\[\]]+|\[[^.\[\]]+\])*$")
_PRIMITIVES = (int, float, str, bytes, bool)


# Linux refuses a single exec argument longer than this (MAX_ARG_STRLEN), so
# no command or path DVC could use is longer.
MAX_STRING_CHARS = 128 * 1024

# Scans and expressions up to these sizes are memoised (at most a few MiB in all).
_CACHED_TEXT_CHARS = 1024
_CACHED_EXPRESSION_CHARS = 256
# Characters of an expression quoted in an error message.
_SHOWN_CHARS = 100


class InterpolationError(Exception):
    """A ``${...}`` that cannot be resolved; the message says why."""


class UndefinedName(InterpolationError):
    """The selected name is not among the variables."""

    def __init__(self, name: str) -> None:
        shown = _shown(name)
        super().__init__(f"undefined name '{shown}' in '${{{shown}}}'")
        self.name = name


def _shown(text: str) -> str:
    # An expression can be a megabyte of `${${${`; messages quote the start of it.
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


class Reference(NamedTuple):
    """One ``${inner}``: ``text[start:end]`` is the whole reference."""

    start: int
    end: int
    inner: str


class Scan(NamedTuple):
    """The references in a text and how many characters finding them examined."""

    references: list[Reference]
    # At most three times the text's length: the operation count that shows
    # the scan is linear (see tests/unit/test_pipeline_limits.py).
    examined: int


def scan(text: str) -> Scan:
    """Every ``${...}`` in ``text``, left to right, as DVC's pattern finds them.

    Three cursors only move forward -- the next ``${``, the next ``}`` and the
    next newline -- so each character is looked at by each at most once. The
    ``}`` and newline positions are remembered: when a ``${`` has no ``}`` on its
    line, no later ``${`` before that newline has one either.
    """
    references: list[Reference] = []
    examined = 0
    length = len(text)
    position = 0
    close = -1  # the first '}' at or after the last place looked from
    newline = -1  # likewise for '\n'; `length` when there is none
    while True:
        found = text.find("${", position)
        examined += (length if found < 0 else found + 2) - position
        if found < 0:
            break
        if found > 0 and text[found - 1] == "\\":
            position = found + 1  # escaped: `\${` is literal text
            continue
        body = found + 2
        if close < body:
            close = text.find("}", body)
            examined += (length if close < 0 else close + 1) - body
            if close < 0:
                break  # no '}' after this point: no later '${' can close either
        if newline < body:
            newline = text.find("\n", body)
            examined += (length if newline < 0 else newline + 1) - body
            if newline < 0:
                newline = length
        if newline < close:
            position = newline + 1  # DVC's `.` stops at a newline
            continue
        references.append(Reference(found, close + 1, text[body:close]))
        position = close + 1
    return Scan(references, examined)


def has_interpolation(value: object) -> bool:
    """Whether ``value`` (or anything inside it) contains a ``${...}``."""
    if isinstance(value, str):
        return bool(_references(value))
    if isinstance(value, Mapping):
        return any(has_interpolation(k) or has_interpolation(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_interpolation(item) for item in value)
    return False


def is_whole_reference(value: object) -> bool:
    """Whether ``value`` is a string consisting of exactly one ``${...}``."""
    if not isinstance(value, str):
        return False
    references = _references(value)
    return len(references) == 1 and _is_whole(references[0], value)


def _is_whole(reference: Reference, text: str) -> bool:
    return reference.start == 0 and reference.end == len(text)


def check_syntax(value: object) -> None:
    """Raise for any malformed ``${...}`` in ``value``, before any is resolved."""
    if isinstance(value, str):
        for reference in _references(value):
            _parse(reference.inner)
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
        raise InterpolationError(
            f"mapping key {_shown(str(name))!r} resolved to a {type(resolved).__name__}"
        )
    return resolved


def to_str(value: object) -> str:
    """Render a value the way DVC embeds it in a string."""
    if type(value) is str:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return _as_arguments(value)
    return str(value)


def _parse(inner: str) -> tuple[str, ...]:
    # A foreach template repeats the same few expressions for every stage.
    if len(inner) <= _CACHED_EXPRESSION_CHARS:
        return _parse_cached(inner)
    return _parse_uncached(inner)


def _parse_uncached(inner: str) -> tuple[str, ...]:
    if not _EXPRESSION.match(inner):
        raise InterpolationError(f"invalid expression '${{{_shown(inner)}}}'")
    normalized = inner.replace("[", ".").replace("]", "")
    return tuple(part.strip() for part in normalized.split("."))


_parse_cached = functools.lru_cache(maxsize=4096)(_parse_uncached)


def _references(text: str) -> tuple[Reference, ...]:
    # Likewise the same template strings are resolved once per generated stage.
    if len(text) <= _CACHED_TEXT_CHARS:
        return _references_cached(text)
    return tuple(scan(text).references)


@functools.lru_cache(maxsize=1024)
def _references_cached(text: str) -> tuple[Reference, ...]:
    return tuple(scan(text).references)


def _resolve_str(
    text: str, variables: Mapping[str, object], *, key: str | None, budget: Budget
) -> object:
    # Even a string without references is scanned and copied once per stage
    # a template generates, so every string is charged by its length.
    budget.spend(chars=len(text))
    references = _references(text)
    if not references:
        return text.replace("\\${", "${")
    budget.spend(interpolations=len(references))
    if len(references) == 1 and _is_whole(references[0], text):
        # A whole-value reference keeps the referenced value's type.
        value = _select(variables, references[0].inner)
        _check_interpolable(value, references[0].inner, key)
        return value
    pieces: list[str] = []
    length = 0
    position = 0
    for reference in references:
        value = _select(variables, reference.inner)
        _check_interpolable(value, reference.inner, key)
        rendered = to_str(value)
        pieces += [text[position : reference.start], rendered]
        length += reference.start - position + len(rendered)
        if length > MAX_STRING_CHARS:
            raise InterpolationError(
                f"{text[:40]!r}... is longer than {MAX_STRING_CHARS} characters"
            )
        position = reference.end
    pieces.append(text[position:])
    budget.spend(chars=length)
    return "".join(pieces).replace("\\${", "${")


def _select(variables: Mapping[str, object], inner: str) -> object:
    current: object = variables
    for part in _parse(inner):
        # `type(...) is dict` first: the ABC check is slow, and this runs for
        # every reference in every generated stage.
        if type(current) is dict or isinstance(current, Mapping):
            if part not in current:
                raise UndefinedName(inner.strip())
            current = current[part]
        elif isinstance(current, list) and _is_index(part, len(current)):
            current = current[int(part)]
        else:
            raise UndefinedName(inner.strip())
    return current


def _is_index(part: str, length: int) -> bool:
    try:
        index = int(part)
    except ValueError:
        return False
    return -length <= index < length


def _check_interpolable(value: object, inner: str, key: str | None) -> None:
    if value is None or type(value) in _PRIMITIVES or isinstance(value, _PRIMITIVES):
        return
    if key is None or "foreach" in key:
        return
    if isinstance(value, Mapping) and key == "cmd":
        return
    raise InterpolationError(
        f"cannot interpolate '${{{_shown(inner.strip())}}}' of type {type(value).__name__} "
        f"into '{key}'"
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
