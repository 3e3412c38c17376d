"""Where a ``dvc.yaml`` path points inside the repository.

DVC takes stage paths relative to the stage's ``wdir``; the rest of the
service wants them repo-relative. A path that leaves the repo, is absolute,
is longer than any path the OS can open, or is a URL cannot be staged by the
service, so it is an error rather than something to carry along. (A URL is
fine as a *dependency*: :mod:`.external` checks those before they get here.)
"""

from __future__ import annotations

import posixpath
import re

from controller.domain.paths import MAX_PATH_CHARS

__all__ = ["PathProblem", "is_url", "join_in_repo"]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


class PathProblem(ValueError):
    """A pipeline path the service cannot use; the message says why."""


def is_url(path: str) -> bool:
    """Whether ``path`` starts with a URL scheme (``s3://``, ``https://``...)."""
    return _URL.match(path) is not None


def join_in_repo(wdir: str, path: str) -> str:
    """Normalise ``path`` taken relative to ``wdir``; ``"."`` is the repo root."""
    if not path:
        raise PathProblem("an empty path")
    if len(path) > MAX_PATH_CHARS:
        # Linux's PATH_MAX: nothing could open it, and it bounds per-path costs.
        raise PathProblem(f"a path longer than {MAX_PATH_CHARS} characters")
    if is_url(path):
        raise PathProblem(f"external URL {path!r} (only paths inside the repo are supported)")
    if path.startswith("/") or _WINDOWS_DRIVE.match(path):
        raise PathProblem(f"absolute path {path!r}")
    if "\\" in path or "\0" in path:
        raise PathProblem(f"path {path!r} contains a backslash or NUL (use '/')")
    joined = posixpath.normpath(posixpath.join(wdir, path))
    if joined == ".." or joined.startswith("../"):
        raise PathProblem(f"path {path!r} leaves the repository")
    return joined
