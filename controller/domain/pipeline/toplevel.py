"""The sections of ``dvc.yaml`` beside ``stages``.

DVC interpolates ``metrics``, ``params``, ``plots``, ``artifacts`` and
``datasets`` with the pipeline variables (never with a stage's own), and
``vars`` may not be interpolated at all. Only ``metrics`` matters to a run --
those files are reported with the results -- but an undefined name or a path
outside the repo anywhere is an error here as it would be for DVC.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.domain.errors import InvalidPipeline
from controller.domain.pipeline.interpolation import (
    InterpolationError,
    check_syntax,
    has_interpolation,
    resolve,
)
from controller.domain.pipeline.limits import Budget, LimitExceeded
from controller.domain.pipeline.locations import PathProblem, join_in_repo
from controller.domain.pipeline.schema import describe

__all__ = ["check_vars_section", "top_level_metrics"]

_SECTIONS = ("metrics", "params", "plots", "artifacts", "datasets")


def _fail(detail: str) -> InvalidPipeline:
    return InvalidPipeline(f"dvc.yaml: {detail}")


def check_vars_section(document: Mapping[str, object]) -> list[object]:
    """The top-level ``vars`` list, refusing interpolation inside it."""
    vars_ = document.get("vars") or []
    assert isinstance(vars_, list)
    if has_interpolation(vars_):
        raise _fail("${...} is not allowed in the top-level 'vars'")
    return vars_


def top_level_metrics(
    document: Mapping[str, object], variables: Mapping[str, object], budget: Budget
) -> list[str]:
    """Resolve every other top-level section; return the metrics files, repo-relative."""
    resolved: dict[str, object] = {}
    for section in _SECTIONS:
        if section not in document:
            continue
        try:
            check_syntax(document[section])
            resolved[section] = resolve(document[section], variables, key=None, budget=budget)
        except (InterpolationError, LimitExceeded) as exc:
            raise _fail(f"top-level '{section}': {exc}") from None
    for section in ("params", "metrics"):
        _repo_paths(section, resolved.get(section))
    _artifact_paths(resolved.get("artifacts"))
    return _repo_paths("metrics", resolved.get("metrics"))


def _repo_paths(section: str, entries: object) -> list[str]:
    paths: list[str] = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, str):
            raise _fail(f"top-level '{section}' entry resolved to {describe(entry)}, not a path")
        try:
            paths.append(join_in_repo(".", entry))
        except PathProblem as exc:
            raise _fail(f"top-level '{section}' entry: {exc}") from None
    return paths


def _artifact_paths(artifacts: object) -> None:
    if not isinstance(artifacts, Mapping):
        return
    for name, artifact in artifacts.items():
        path = artifact.get("path") if isinstance(artifact, Mapping) else None
        if not isinstance(name, str) or not isinstance(path, str):
            raise _fail(f"artifact {name!r} must have a string name and 'path'")
        try:
            join_in_repo(".", path)
        except PathProblem as exc:
            raise _fail(f"artifact {name!r}: {exc}") from None
