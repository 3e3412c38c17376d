"""Rules for file paths inside an experiment repository.

An uploaded file's name is its path in the repo, so a name is attacker-chosen
text that later becomes a filesystem path in a clone. :func:`validate_repo_path`
accepts only plain, already-normalised, relative POSIX paths that stay inside
the repo and cannot touch what git, DVC or the service itself own. It rejects
rather than normalises: ``a//b`` or ``./a`` hint at a client bug or a probe,
and silently rewriting them would store a file under a name nobody sent.

:func:`reserved_component` is shared with the ``dvc.yaml`` checks, so a pipeline
cannot declare outputs inside ``.git`` or ``.dvc`` either.
"""

from __future__ import annotations

import re
import unicodedata

from controller.domain.errors import InvalidBundle

__all__ = [
    "MAX_COMPONENT_BYTES",
    "MAX_PATH_CHARS",
    "SERVICE_WRITTEN_FILES",
    "reserved_component",
    "validate_repo_path",
]

MAX_PATH_CHARS = 4096
MAX_COMPONENT_BYTES = 255

# The service writes these from their own form fields; an upload must not
# replace them (nor add a second pipeline file DVC would also collect).
SERVICE_WRITTEN_FILES = frozenset({"dvc.yaml", "dvc.lock", "params.yaml"})
_ANYWHERE_FILES = frozenset({"dvc.yaml", "dvc.lock"})

# `.git` in any form a checkout might map onto the real directory: git's own
# protectNTFS/protectHFS rules cover trailing dots/spaces, the 8.3 short name
# and code points HFS+ ignores. `.gitmodules` would let a bundle add submodules.
_RESERVED_NAMES = {".git": "git metadata", "git~1": "git metadata", ".dvc": "DVC metadata"}
_RESERVED_FILES = {".gitmodules": "git submodule configuration"}
_HFS_IGNORABLE = re.compile("[\u200c-\u200f\u202a-\u202e\u206a-\u206f\ufeff]")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def validate_repo_path(name: str) -> str:
    """Return ``name`` if it is a safe repo-relative POSIX path, else raise InvalidBundle.

    The result equals the input: every accepted path is already normalised.
    """
    problem = _path_problem(name)
    if problem is not None:
        raise InvalidBundle(f"file name {name!r} is not allowed: {problem}")
    return name


def reserved_component(path: str) -> str | None:
    """Why a component of ``path`` is reserved for git or DVC metadata, or ``None``."""
    for part in path.split("/"):
        folded = _fold(part)
        if folded in _RESERVED_NAMES:
            return f"{part!r} is reserved for {_RESERVED_NAMES[folded]}"
        if folded in _RESERVED_FILES:
            return f"{part!r} is reserved for {_RESERVED_FILES[folded]}"
    return None


def _fold(part: str) -> str:
    """The name a case-insensitive, trailing-dot-stripping filesystem would see."""
    return _HFS_IGNORABLE.sub("", part).rstrip(". ").lower()


def _path_problem(name: str) -> str | None:
    checks = (
        _shape_problem,
        _character_problem,
        _component_problem,
        reserved_component,
        _service_file_problem,
    )
    for check in checks:
        problem = check(name)
        if problem is not None:
            return problem
    return None


def _shape_problem(name: str) -> str | None:
    if not name:
        return "it is empty"
    if len(name) > MAX_PATH_CHARS:
        return f"it is longer than {MAX_PATH_CHARS} characters"
    if name.startswith("/"):
        return "absolute paths are not allowed"
    if _WINDOWS_DRIVE.match(name):
        return "Windows drive paths are not allowed"
    if name.startswith("-"):
        # Tools downstream take paths as arguments; this one would read as an option.
        return "a path must not start with '-'"
    return None


def _character_problem(name: str) -> str | None:
    if "\\" in name:
        return "backslashes are not allowed (use '/')"
    for char in name:
        if unicodedata.category(char) in ("Cc", "Cs"):
            return f"control character {char!r} is not allowed"
    return None


def _component_problem(name: str) -> str | None:
    for part in name.split("/"):
        if part == "":
            return "empty path components ('//' or a trailing '/') are not allowed"
        if part in (".", ".."):
            return f"{part!r} components are not allowed"
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            return f"a component is longer than {MAX_COMPONENT_BYTES} bytes"
    return None


def _service_file_problem(name: str) -> str | None:
    if _fold(name) in SERVICE_WRITTEN_FILES:
        return f"{name!r} is written by the service from its own form field"
    basename = _fold(name.rsplit("/", 1)[-1])
    if basename in _ANYWHERE_FILES:
        return f"a {basename!r} in a subdirectory would be collected by DVC as a pipeline"
    return None
