"""What a ``foreach`` or ``matrix`` group generates, named exactly as DVC names it.

From ``dvc/parsing/__init__.py``: a foreach over a mapping is named by its
keys; over a list of scalars by the values; over a list holding any list or
mapping by the indices. A matrix is the cartesian product of its lists, in
the order the matrix names them, named by its values (``<name><index>`` for a
list or mapping value) joined with ``-``.

Two DVC quirks are kept because a run executes DVC's names, not ours:

* DVC resolves this data without unwrapping its context nodes, so a value
  that arrives through a whole ``${...}`` is rendered with ``str()``: the
  boolean from ``foreach: ${flags}`` names a stage ``@True``, while a literal
  ``true`` names it ``@true``.
* The same unwrapping makes DVC crash on a mapping key that is a whole
  ``${...}``; we refuse it with an error instead.

Unlike DVC we refuse two items that render to the same name: DVC silently
keeps only the last one, which drops a stage.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

from controller.domain.pipeline.interpolation import is_whole_reference, resolve, to_str
from controller.domain.pipeline.limits import Budget
from controller.domain.pipeline.schema import describe
from controller.domain.pipeline.variables import ContextError, check_values

__all__ = [
    "JOIN",
    "Iteration",
    "IterationError",
    "foreach_iterations",
    "matrix_iterations",
]

JOIN = "@"


@dataclass(frozen=True)
class Iteration:
    """One generated stage: its name and the ``item``/``key`` it sees."""

    name: str
    values: Mapping[str, object]


class IterationError(Exception):
    """The group cannot be expanded; ``stages`` are the generated names involved."""

    def __init__(self, message: str, stages: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.stages = stages


@dataclass(frozen=True)
class _Entry:
    value: object
    # Reached through a whole `${...}`: DVC renders it with str(), see above.
    from_context: bool


def foreach_iterations(
    group: str, data: object, variables: Mapping[str, object], budget: Budget
) -> list[Iteration]:
    _refuse_reference_keys(data)
    if isinstance(data, list):
        entries = [
            _Entry(resolve(item, variables, key=None, budget=budget), is_whole_reference(item))
            for item in data
        ]
        _check_items([entry.value for entry in entries])
        return _from_list(group, entries, budget)
    iterable = resolve(data, variables, key=None, budget=budget)
    _check_items(iterable)
    if isinstance(iterable, Mapping):
        # A mapping from the variables shows DVC only its string keys.
        from_context = not isinstance(data, Mapping)
        keyed = [
            (to_str(key), value)
            for key, value in iterable.items()
            if isinstance(key, str) or not from_context
        ]
        _check_count(len(keyed), budget)
        return [
            Iteration(f"{group}{JOIN}{key}", {"item": item, "key": key})
            for key, item in _unique(group, keyed)
        ]
    if isinstance(iterable, list):
        return _from_list(group, [_Entry(item, from_context=True) for item in iterable], budget)
    raise IterationError(f"foreach needs a list or a mapping, got {describe(iterable)}")


def _from_list(group: str, entries: list[_Entry], budget: Budget) -> list[Iteration]:
    _check_count(len(entries), budget)
    composite = any(isinstance(entry.value, (list, Mapping)) for entry in entries)
    keyed = [
        (str(index) if composite else _render(entry), entry.value)
        for index, entry in enumerate(entries)
    ]
    return [Iteration(f"{group}{JOIN}{key}", {"item": item}) for key, item in _unique(group, keyed)]


def matrix_iterations(
    group: str, data: Mapping[str, object], variables: Mapping[str, object], budget: Budget
) -> list[Iteration]:
    _refuse_reference_keys(data)
    columns = {
        name: _matrix_column(name, values, variables, budget) for name, values in data.items()
    }
    _check_count(math.prod(len(column) for column in columns.values()), budget)
    keyed: list[tuple[str, object]] = []
    for combination in itertools.product(*(enumerate(column) for column in columns.values())):
        fragments = [
            f"{name}{index}" if isinstance(entry.value, (list, Mapping)) else _render(entry)
            for name, (index, entry) in zip(columns, combination, strict=True)
        ]
        item = {name: entry.value for name, (_, entry) in zip(columns, combination, strict=True)}
        key = "-".join(fragments)
        # Each long value is repeated in the name of every combination it is in.
        budget.spend(nodes=len(fragments), chars=len(key))
        keyed.append((key, item))
    return [
        Iteration(f"{group}{JOIN}{key}", {"item": item, "key": key})
        for key, item in _unique(group, keyed)
    ]


def _matrix_column(
    name: str, values: object, variables: Mapping[str, object], budget: Budget
) -> list[_Entry]:
    if isinstance(values, list):
        column = [
            _Entry(resolve(v, variables, key=None, budget=budget), is_whole_reference(v))
            for v in values
        ]
        _check_items([entry.value for entry in column])
        return column
    resolved = resolve(values, variables, key=None, budget=budget)
    if not isinstance(resolved, list):
        raise IterationError(f"matrix entry '{name}' needs a list, got {describe(resolved)}")
    return [_Entry(value, from_context=True) for value in resolved]


def _check_count(count: int, budget: Budget) -> None:
    # Before anything is generated: a matrix of five 100-value lists would
    # otherwise build ten billion combinations first.
    limit = budget.limits.stages
    if count > limit:
        raise IterationError(
            f"would generate {count} stages; over the 'stages' limit of {limit} per bundle"
        )


def _check_items(items: object) -> None:
    # DVC puts each item into its context and crashes on dates and sets there.
    try:
        check_values(items, "item")
    except ContextError as exc:
        raise IterationError(str(exc)) from None


def _render(entry: _Entry) -> str:
    return str(entry.value) if entry.from_context else to_str(entry.value)


def _refuse_reference_keys(data: object) -> None:
    if isinstance(data, Mapping):
        for key, value in data.items():
            if is_whole_reference(key):
                raise IterationError(
                    f"key {key!r}: DVC 3 cannot use a whole ${{...}} as a key in foreach or "
                    "matrix data (write it as a literal or inside a longer string)"
                )
            _refuse_reference_keys(value)
    elif isinstance(data, list):
        for item in data:
            _refuse_reference_keys(item)


def _unique(group: str, keyed: list[tuple[str, object]]) -> list[tuple[str, object]]:
    seen: set[str] = set()
    for key, _ in keyed:
        name = f"{group}{JOIN}{key}"
        if key in seen:
            raise IterationError(f"generates '{name}' more than once", (name,))
        seen.add(key)
    return keyed
