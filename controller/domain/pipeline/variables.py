"""The variables ``${...}`` can see, built the way DVC 3 builds its context.

``params.yaml`` is always loaded first, then the top-level ``vars`` in order,
then a stage's own ``vars`` (relative to its ``wdir``) into a private scope. A
name may not be defined twice, except that mappings merge key by key; ``item``
and ``key`` belong to ``foreach``/``matrix`` and stage ``vars`` cannot set
them. A vars entry ``file.yaml:a,b`` imports only those top-level keys, and a
file is never imported both wholly and partly (see ``dvc/parsing/context.py``).

DVC keeps only string keys in its context; other keys are skipped when
merging and can never be selected by ``${...}``, so the data is not copied.
Scopes never copy: a stage's scope (and a foreach item's) is a
:class:`Layer` over the pipeline's, and a merge into a
mapping that the scope does not own (one shared with other scopes, or read
from a file) adds a layer over that mapping instead of copying it. A scope
therefore costs what its own ``vars`` hold, never what params.yaml holds --
so a 10,000-stage ``foreach`` over a large params.yaml stays linear. Keys a
stage's ``vars`` merge are charged to the parse's budget.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from controller.domain.pipeline.limits import Budget
from controller.domain.pipeline.locations import PathProblem, join_in_repo
from controller.domain.pipeline.sources import DEFAULT_PARAMS_FILE, SourceError, Sources

__all__ = ["ContextError", "Layer", "Variables", "check_values"]

_SCALARS = (str, int, float, bool, bytes)
_V = TypeVar("_V")


class ContextError(Exception):
    """Variables cannot be loaded or merged; the message says why."""


class Layer(MutableMapping[str, _V]):
    """``base`` seen through a layer of new keys; writes go to the layer, never to ``base``.

    Like a two-map :class:`collections.ChainMap`, with cheaper lookups (no
    exception per miss in the top map): ``${...}`` selection goes through one
    of these for every reference in every generated stage. Iteration shows
    ``base``'s keys first, then the new ones, as a copy extended by the merge would.
    """

    __slots__ = ("base", "top")

    def __init__(self, base: Mapping[str, _V], top: dict[str, _V] | None = None) -> None:
        self.base = base
        self.top: dict[str, _V] = {} if top is None else top

    def __getitem__(self, key: str) -> _V:
        top = self.top
        return top[key] if key in top else self.base[key]

    def __contains__(self, key: object) -> bool:
        return key in self.top or key in self.base

    def __setitem__(self, key: str, value: _V) -> None:
        self.top[key] = value

    def __delitem__(self, key: str) -> None:
        raise TypeError("variables are never removed")

    def __iter__(self) -> Iterator[str]:
        yield from self.base
        for key in self.top:
            if key not in self.base:
                yield key

    def __len__(self) -> int:
        return len(self.base) + sum(1 for key in self.top if key not in self.base)


@dataclass
class Variables:
    """Variable values plus the bookkeeping DVC's merge rules need."""

    data: MutableMapping[str, object] = field(default_factory=dict)
    # Which files were imported, and which keys of them (None: the whole file).
    imports: dict[str, list[str] | None] = field(default_factory=dict)
    # Dotted name -> the source that defined it, for "already defined" errors.
    origins: MutableMapping[str, str] = field(default_factory=dict)
    reserved: frozenset[str] = frozenset()
    # Containers already checked by check_values, shared by every scope.
    checked: dict[int, object] = field(default_factory=dict)
    # Nested mappings this scope made and may change in place (by id, holding
    # the object so the id is not reused); any other one is shared.
    owned: dict[int, object] = field(default_factory=dict)
    budget: Budget | None = None

    @classmethod
    def for_pipeline(cls, vars_: Sequence[object], sources: Sources) -> Variables:
        variables = cls()
        variables.load(DEFAULT_PARAMS_FILE, wdir=".", sources=sources)
        variables.load_all(vars_, wdir=".", sources=sources, label="vars")
        return variables

    def iteration(self, values: Mapping[str, object]) -> Variables:
        """A scope with ``item``/``key`` set (shadowing any global ones) and reserved."""
        return Variables(
            Layer(self.data, dict(values)),
            self.imports,
            self.origins,
            frozenset(values),
            self.checked,
        )

    def with_stage_vars(
        self, vars_: Sequence[object], *, wdir: str, sources: Sources, stage: str, budget: Budget
    ) -> Variables:
        if not vars_:
            return self
        scope = Variables(
            Layer(self.data),
            {path: None if keys is None else list(keys) for path, keys in self.imports.items()},
            Layer(self.origins),
            self.reserved,
            self.checked,
            budget=budget,
        )
        scope.load_all(vars_, wdir=wdir, sources=sources, label=f"{stage}.vars")
        return scope

    def load_all(self, vars_: Sequence[object], *, wdir: str, sources: Sources, label: str) -> None:
        for index, item in enumerate(vars_):
            if isinstance(item, str):
                self.load(item, wdir=wdir, sources=sources)
            elif isinstance(item, Mapping):
                self.merge(item, source=f"{label}[{index}]")

    def load(self, item: str, *, wdir: str, sources: Sources) -> None:
        """Import ``file`` or ``file:key1,key2`` (relative to ``wdir``)."""
        name, _, keys_text = item.partition(":")
        try:
            path = join_in_repo(wdir, name)
        except PathProblem as exc:
            raise ContextError(f"vars entry {item!r}: {exc}") from None
        keys = [key for key in keys_text.split(",") if key] or None
        if path in self.imports:
            if keys is None and self.imports[path] is None:
                return  # naming a wholly imported file again is harmless
            self._check_not_loaded(path, item, keys)
        try:
            data = sources.load(path)
        except SourceError as exc:
            raise ContextError(f"vars entry {item!r}: {exc}") from None
        try:
            self.merge(_select_keys(data, keys, path), source=path)
        except ContextError as exc:
            raise ContextError(f"{path}: {exc}") from None
        self._record_import(path, keys)

    def merge(self, new: Mapping[str, object], *, source: str) -> None:
        clash = sorted(self.reserved & {key for key in new if isinstance(key, str)})
        if clash:
            raise ContextError(f"{source} may not set {clash[0]!r}: it is set by foreach/matrix")
        self._merge_into(self.data, new, source, prefix="")

    def _merge_into(
        self, into: MutableMapping[str, object], new: Mapping[str, object], source: str, prefix: str
    ) -> None:
        if self.budget is not None:
            self.budget.spend(nodes=len(new))
        for key, value in new.items():
            if not isinstance(key, str):
                continue  # DVC's context ignores non-string keys
            dotted = f"{prefix}{key}"
            existing = into.get(key)
            if isinstance(existing, Mapping) and isinstance(value, Mapping):
                self._merge_into(self._own(into, key, existing), value, source, f"{dotted}.")
            elif key in into:
                raise ContextError(
                    f"cannot redefine '{dotted}' from '{source}': "
                    f"it is already defined by '{self._origin(dotted)}'"
                )
            else:
                check_values(value, dotted, self.checked)
                into[key] = value
                self.origins[dotted] = source

    def _own(
        self, into: MutableMapping[str, object], key: str, existing: Mapping[str, object]
    ) -> MutableMapping[str, object]:
        """``existing`` if this scope may change it, else a layer over it put in its place."""
        if id(existing) in self.owned:
            assert isinstance(existing, MutableMapping)
            return existing
        layer = Layer(existing)
        self.owned[id(layer)] = layer
        into[key] = layer
        return layer

    def _origin(self, dotted: str) -> str:
        parts = dotted.split(".")
        for end in range(len(parts), 0, -1):
            origin = self.origins.get(".".join(parts[:end]))
            if origin is not None:
                return origin
        return "an earlier source"

    def _check_not_loaded(self, path: str, item: str, keys: list[str] | None) -> None:
        imported = self.imports[path]
        if keys is None or imported is None:
            raise ContextError(
                f"cannot load {item!r}: '{path}' is already "
                + ("partly" if keys is None else "wholly")
                + " loaded"
            )
        if set(keys) & set(imported):
            raise ContextError(f"cannot load {item!r}: some of those keys are already loaded")

    def _record_import(self, path: str, keys: list[str] | None) -> None:
        if path not in self.imports:
            self.imports[path] = None if keys is None else list(keys)
        elif keys:
            previous = self.imports[path]
            self.imports[path] = [*(previous or []), *keys]


def check_values(value: object, name: str, checked: dict[int, object] | None = None) -> None:
    """Refuse values DVC cannot hold as variables; containers are checked once.

    DVC 3 crashes with "Unsupported value of type" on anything but scalars,
    lists and mappings (a YAML date, a ``!!set``) -- and params.yaml is always
    among the variables, so one date there breaks every run.
    """
    # Keyed by id() and holding the object, so an id is never reused meanwhile.
    seen: dict[int, object] = {} if checked is None else checked
    stack: list[tuple[object, str]] = [(value, name)]
    while stack:
        item, label = stack.pop()
        if item is None or isinstance(item, _SCALARS):
            continue
        if id(item) in seen:
            continue
        if isinstance(item, Mapping):
            stack.extend((child, f"{label}.{key}") for key, child in item.items())
        elif isinstance(item, list):
            stack.extend((child, f"{label}[{index}]") for index, child in enumerate(item))
        else:
            raise ContextError(
                f"'{label}' is a {type(item).__name__}, which DVC cannot use as a variable "
                "(quote it to make it a string)"
            )
        seen[id(item)] = item


def _select_keys(
    data: Mapping[str, object], keys: list[str] | None, path: str
) -> Mapping[str, object]:
    if keys is None:
        return data
    missing = [key for key in keys if key not in data]
    if missing:
        raise ContextError(f"could not find {missing[0]!r} in '{path}'")
    return {key: data[key] for key in keys}
