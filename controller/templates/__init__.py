"""Project templates: ready-to-post experiment bundles shipped inside the package.

Each template is a folder of this package (package data, read with ``importlib.resources``
so an installed package has them): the bundle's files exactly as ``mlexp init`` writes them
(``dvc.yaml``, ``params.yaml``, ``repo.json`` for the local profile, ``README.md``,
``src/...``), and ``template.toml`` holding its one-line ``description`` (not written).

``sklearn-basic`` is the sample bundle (``client_ref.templ/`` and ``workload_example/src/``,
which are not package data) copied in; ``tests/unit/test_templates.py`` keeps the copy
identical to the sample.

Writing is planned first -- every path checked to stay inside the target directory, no
symlink or non-directory on the way -- then done, so a refusal writes nothing.
"""

from __future__ import annotations

import contextlib
import os
import tomllib
from collections.abc import Iterator, Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath
from typing import NamedTuple

__all__ = ["Template", "TemplateError", "get", "init", "plan", "templates", "write"]

MANIFEST = "template.toml"
# Never part of a bundle: the manifest, and what Python or an editor may leave behind.
_SKIPPED = frozenset({MANIFEST, "__init__.py", "__pycache__", ".DS_Store"})
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


class TemplateError(ValueError):
    """An unknown template, or a target directory ``mlexp init`` will not write into."""


class Template(NamedTuple):
    name: str
    description: str
    files: Mapping[str, bytes]  # repo-relative POSIX path -> content


def templates() -> list[Template]:
    """Every template shipped with the package, by name."""
    root = resources.files(__name__)
    return [
        _load(entry)
        for entry in sorted(root.iterdir(), key=lambda e: e.name)
        if entry.is_dir() and entry.joinpath(MANIFEST).is_file()
    ]


def get(name: str) -> Template:
    found = {template.name: template for template in templates()}
    if name not in found:
        raise TemplateError(f"no template {name!r} (templates: {', '.join(sorted(found))})")
    return found[name]


def _load(folder: Traversable) -> Template:
    manifest = tomllib.loads(folder.joinpath(MANIFEST).read_text(encoding="utf-8"))
    description = str(manifest.get("description", "")).strip()
    return Template(folder.name, description, dict(sorted(_files(folder, PurePosixPath()))))


def _files(folder: Traversable, prefix: PurePosixPath) -> Iterator[tuple[str, bytes]]:
    for entry in folder.iterdir():
        if entry.name in _SKIPPED or entry.name.endswith(".pyc"):
            continue
        if entry.is_dir():
            yield from _files(entry, prefix / entry.name)
        elif entry.is_file():
            yield (prefix / entry.name).as_posix(), entry.read_bytes()


def _relative(rel: str) -> PurePosixPath:
    """``rel`` as a path that stays beneath the directory it is joined to."""
    path = PurePosixPath(rel)
    if (
        not rel
        or "\\" in rel
        or "\0" in rel
        or path.is_absolute()
        or any(part in ("", ".", "..") for part in rel.split("/"))
    ):
        raise TemplateError(f"{rel!r}: not a relative path inside the bundle")
    return path


def plan(
    target: Path, template: Template, *, force: bool = False
) -> list[tuple[PurePosixPath, bytes]]:
    """What ``init`` writes: (path relative to ``target``, content) pairs, all checked.

    ``target`` must be missing or an empty directory, unless ``force``; then files of the
    template replace files already there, and anything else in it is left alone. A
    symlink, or a file where a directory is needed, anywhere below ``target`` is refused:
    a write never follows a link out of it.
    """
    if target.exists() and not target.is_dir():
        raise TemplateError(f"{target}: exists and is not a directory")
    if target.is_dir() and not force and any(target.iterdir()):
        raise TemplateError(f"{target}: not empty (use --force to write into it)")
    writes: list[tuple[PurePosixPath, bytes]] = []
    for rel, content in template.files.items():
        path = _relative(rel)
        parts = path.parts
        here = target
        for depth, part in enumerate(parts):
            here = here / part
            last = depth == len(parts) - 1
            if here.is_symlink():
                raise TemplateError(f"{here}: a symbolic link; refusing to write through it")
            if here.exists() and (here.is_dir() if last else not here.is_dir()):
                kind = "a directory" if last else "not a directory"
                raise TemplateError(f"{here}: {kind}; cannot write {rel}")
        writes.append((path, content))
    return writes


def write(target: Path, writes: list[tuple[PurePosixPath, bytes]]) -> None:
    """Carry out a :func:`plan`. Beneath ``target`` every path component is opened
    without following links, so a link put in place after planning fails the write
    instead of redirecting it."""
    target.mkdir(parents=True, exist_ok=True)
    for rel, content in writes:
        *parents, name = rel.parts
        fd = os.open(target, _DIR_FLAGS & ~os.O_NOFOLLOW)  # target itself: the caller's
        try:
            for part in parents:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_fd=fd)
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
            out = os.open(name, _FILE_FLAGS, 0o666, dir_fd=fd)
        finally:
            os.close(fd)
        with os.fdopen(out, "wb") as handle:
            handle.write(content)


def init(target: Path, name: str, *, force: bool = False) -> list[str]:
    """Write template ``name`` into ``target``; the bundle's relative paths, in order."""
    template = get(name)
    write(target, plan(target, template, force=force))
    return list(template.files)
