"""The bundle's files as data: where ``vars`` and ``params`` values come from.

``params.yaml`` arrives already parsed; any other YAML, JSON or TOML file is
parsed on first use (with :func:`~controller.domain.safeyaml.load_yaml`'s
limits) and kept for the rest of the parse. Each file parsed is charged to the
parse's budget and the clock is read after it: a bundle may carry many large
``vars`` files, and parsing YAML is the slowest thing the parser does.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping

from controller.domain.errors import InvalidInput
from controller.domain.pipeline.limits import Budget
from controller.domain.pipeline.pathindex import PathIndex
from controller.domain.safeyaml import load_yaml

__all__ = ["DEFAULT_PARAMS_FILE", "SourceError", "Sources", "UnsupportedFormat"]

DEFAULT_PARAMS_FILE = "params.yaml"


class SourceError(Exception):
    """A file cannot serve as a source of values; the message says why."""


class UnsupportedFormat(SourceError):
    """DVC can read it (a Python params file), but this parser cannot."""


class Sources:
    """Read-only view of ``params.yaml`` and the uploaded files, by repo path."""

    def __init__(
        self,
        files: Mapping[str, bytes],
        params: Mapping[str, object],
        budget: Budget | None = None,
    ) -> None:
        self._files = files
        self._budget = budget
        self._parsed: dict[str, Mapping[str, object]] = {DEFAULT_PARAMS_FILE: params}
        # Sorted, so "is there a file under d" is a bisection, not a loop over
        # every file for every dependency.
        self._index = PathIndex(files)
        # `data.dvc` tracks `data`: its content comes from the DVC remote.
        self._tracked = PathIndex(
            name.removesuffix(".dvc") for name in files if name.endswith(".dvc")
        ).outermost()

    def exists(self, path: str) -> bool:
        return path == DEFAULT_PARAMS_FILE or path in self._files

    def provides(self, path: str) -> bool:
        """Whether the bundle holds ``path``: the file, files under it, or a ``.dvc`` for it."""
        return (
            self.exists(path)
            or bool(self._index.inside(path))
            or self._tracked.nearest_ancestor(path) is not None
        )

    def load(self, path: str) -> Mapping[str, object]:
        """The mapping stored in ``path``; raises :class:`SourceError`."""
        if path not in self._parsed:
            self._parsed[path] = self._parse(path)
        return self._parsed[path]

    def _parse(self, path: str) -> Mapping[str, object]:
        if path not in self._files:
            if self._index.inside(path):
                raise SourceError(f"'{path}' is a directory")
            raise SourceError(f"'{path}' is not in the bundle")
        raw = self._files[path]
        data = self._decode(path, raw)
        if self._budget is not None:
            self._budget.spend(chars=len(raw))
            self._budget.check_time()
        if not isinstance(data, Mapping):
            raise SourceError(f"'{path}' must hold a mapping, not {type(data).__name__}")
        return data

    @staticmethod
    def _decode(path: str, raw: bytes) -> object:
        if path.lower().endswith(".py"):
            raise UnsupportedFormat(f"'{path}' is a Python params file, which is not supported")
        try:
            if path.lower().endswith(".toml"):
                return tomllib.loads(raw.decode("utf-8"))
            return load_yaml(raw, source=path)
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise SourceError(f"'{path}' cannot be parsed: {exc}") from None
        except InvalidInput as exc:
            raise SourceError(str(exc)) from None
