"""Where a ``dvc.yaml`` path points inside the repository.

DVC takes stage paths relative to the stage's ``wdir``; the rest of the
service wants them repo-relative. A path that leaves the repo, is absolute or
is a URL (an external dependency) cannot be staged by the service, so it is an
error rather than something to carry along.
"""

from __future__ import annotations

import posixpath
import re

__all__ = ["PathProblem", "is_within", "join_in_repo"]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


class PathProblem(ValueError):
    """A pipeline path the service cannot use; the message says why."""


def join_in_repo(wdir: str, path: str) -> str:
    """Normalise ``path`` taken relative to ``wdir``; ``"."`` is the repo root."""
    if not path:
        raise PathProblem("an empty path")
    if _URL.match(path):
        raise PathProblem(f"external URL {path!r} (only paths inside the repo are supported)")
    if path.startswith("/") or _WINDOWS_DRIVE.match(path):
        raise PathProblem(f"absolute path {path!r}")
    if "\\" in path or "\0" in path:
        raise PathProblem(f"path {path!r} contains a backslash or NUL (use '/')")
    joined = posixpath.normpath(posixpath.join(wdir, path))
    if joined == ".." or joined.startswith("../"):
        raise PathProblem(f"path {path!r} leaves the repository")
    return joined


def is_within(path: str, parent: str) -> bool:
    """Whether ``path`` is ``parent`` or lies inside the directory ``parent``."""
    return parent == "." or path == parent or path.startswith(parent + "/")
