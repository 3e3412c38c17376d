"""The variables ``${...}`` can see, built the way DVC 3 builds its context.

``params.yaml`` is always loaded first, then the top-level ``vars`` in order,
then a stage's own ``vars`` (relative to its ``wdir``) into a private scope. A
name may not be defined twice, except that mappings merge key by key; ``item``
and ``key`` belong to ``foreach``/``matrix`` and stage ``vars`` cannot set
them. A vars entry ``file.yaml:a,b`` imports only those top-level keys, and a
file is never imported both wholly and partly (see ``dvc/parsing/context.py``).

DVC keeps only string keys in its context; other keys are skipped when
merging and can never be selected by ``${...}``, so the data is not copied.
Scopes share unchanged data and copy a mapping only when a merge changes it,
which keeps a stage's own ``vars`` cheap even in a large ``foreach``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from controller.domain.pipeline.locations import PathProblem, join_in_repo
from controller.domain.pipeline.sources import DEFAULT_PARAMS_FILE, SourceError, Sources

__all__ = ["ContextError", "Variables", "check_values"]

_SCALARS = (str, int, float, bool, bytes)


class ContextError(Exception):
    """Variables cannot be loaded or merged; the message says why."""


@dataclass
class Variables:
    """Variable values plus the bookkeeping DVC's merge rules need."""

    data: dict[str, object] = field(default_factory=dict)
    # Which files were imported, and which keys of them (None: the whole file).
    imports: dict[str, list[str] | None] = field(default_factory=dict)
    # Dotted name -> the source that defined it, for "already defined" errors.
    origins: dict[str, str] = field(default_factory=dict)
    reserved: frozenset[str] = frozenset()
    # Containers already checked by check_values, shared by every scope.
    checked: dict[int, object] = field(default_factory=dict)

    @classmethod
    def for_pipeline(cls, vars_: Sequence[object], sources: Sources) -> Variables:
        variables = cls()
        variables.load(DEFAULT_PARAMS_FILE, wdir=".", sources=sources)
        variables.load_all(vars_, wdir=".", sources=sources, label="vars")
        return variables

    def iteration(self, values: Mapping[str, object]) -> Variables:
        """A scope with ``item``/``key`` set (shadowing any global ones) and reserved."""
        return Variables(
            {**self.data, **values},
            self.imports,
            self.origins,
            frozenset(values),
            self.checked,
        )

    def with_stage_vars(
        self, vars_: Sequence[object], *, wdir: str, sources: Sources, stage: str
    ) -> Variables:
        if not vars_:
            return self
        scope = Variables(
            dict(self.data),
            {path: None if keys is None else list(keys) for path, keys in self.imports.items()},
            dict(self.origins),
            self.reserved,
            self.checked,
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
        self, into: dict[str, object], new: Mapping[str, object], source: str, prefix: str
    ) -> None:
        for key, value in new.items():
            if not isinstance(key, str):
                continue  # DVC's context ignores non-string keys
            dotted = f"{prefix}{key}"
            existing = into.get(key)
            if isinstance(existing, Mapping) and isinstance(value, Mapping):
                # Copy on write: `existing` may be shared with other scopes.
                merged = dict(existing)
                self._merge_into(merged, value, source, f"{dotted}.")
                into[key] = merged
            elif key in into:
                raise ContextError(
                    f"cannot redefine '{dotted}' from '{source}': "
                    f"it is already defined by '{self._origin(dotted)}'"
                )
            else:
                check_values(value, dotted, self.checked)
                into[key] = value
                self.origins[dotted] = source

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
