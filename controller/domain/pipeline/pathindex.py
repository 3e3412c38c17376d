"""Sorted repo paths, so that "inside" and "contains" are binary searches.

A path's key is the path with ``/`` replaced by ``\\0``. Sorted by key, the
paths inside a directory ``d`` are exactly those from ``d\\0`` (inclusive) to
``d\\1`` (exclusive): one contiguous run, found with two bisections. Plain
string order would not do, as ``a-b`` sorts between ``a`` and ``a/c``. Paths
never contain NUL (:func:`~.locations.join_in_repo` refuses it).

Lookups cost O(log n) comparisons of at most one path each, and nothing is
built per path component, so a 4,000-level path costs what its characters
cost -- where a per-component trie, or a set of every ancestor, would cost its
depth times its length.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

__all__ = ["PathIndex", "key"]

_SEP = "\0"
_AFTER_SEP = "\1"


def key(path: str) -> str:
    """The sort key of a normalised repo path."""
    return path.replace("/", _SEP)


class PathIndex:
    """An immutable sorted set of paths, by position ``0 .. len - 1``."""

    def __init__(self, paths: Iterable[str]) -> None:
        self._keys = sorted({key(path) for path in paths})

    def __len__(self) -> int:
        return len(self._keys)

    def path(self, position: int) -> str:
        return self._keys[position].replace(_SEP, "/")

    def position(self, path: str) -> int | None:
        """Where ``path`` itself is, if it is in the index."""
        wanted = key(path)
        index = bisect.bisect_left(self._keys, wanted)
        if index < len(self._keys) and self._keys[index] == wanted:
            return index
        return None

    def inside(self, path: str) -> range:
        """Positions of the paths strictly inside the directory ``path``."""
        wanted = key(path)
        low = bisect.bisect_left(self._keys, wanted + _SEP)
        high = bisect.bisect_left(self._keys, wanted + _AFTER_SEP, low)
        return range(low, high)

    def nearest_ancestor(self, path: str) -> int | None:
        """Position of ``path`` or of an ancestor of it, provided no two indexed paths nest.

        The greatest key not above ``path``'s is then the only candidate: any key
        between an ancestor's and ``path``'s would lie inside that ancestor.
        """
        wanted = key(path)
        index = bisect.bisect_right(self._keys, wanted) - 1
        if index < 0:
            return None
        candidate = self._keys[index]
        if candidate == wanted or wanted.startswith(candidate + _SEP):
            return index
        return None

    def first_nested_pair(self) -> tuple[int, int] | None:
        """``(outer, inner)`` positions of the first path inside another, in key order.

        If some path lies inside ``p``, so does the path right after ``p``, so
        comparing neighbours is enough.
        """
        for index in range(1, len(self._keys)):
            if self._keys[index].startswith(self._keys[index - 1] + _SEP):
                return index - 1, index
        return None

    def outermost(self) -> PathIndex:
        """The same paths without those inside another one (which then never nest)."""
        kept: list[str] = []
        for candidate in self._keys:
            if not (kept and candidate.startswith(kept[-1] + _SEP)):
                kept.append(candidate)
        index = PathIndex(())
        index._keys = kept
        return index
