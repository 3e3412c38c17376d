"""The sections of ``dvc.yaml`` beside ``stages``.

DVC interpolates ``metrics``, ``params``, ``plots``, ``artifacts`` and
``datasets`` with the pipeline variables (never with a stage's own), and
``vars`` may not be interpolated at all. ``metrics``, ``plots`` and
``artifacts`` matter to a run -- its results are read from them (see
:mod:`.plots`) -- and an undefined name or a path outside the repo anywhere is
an error here as it would be for DVC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from controller.domain.errors import InvalidPipeline
from controller.domain.models import ArtifactSpec, PlotSpec
from controller.domain.pipeline.interpolation import (
    InterpolationError,
    check_syntax,
    has_interpolation,
    resolve,
)
from controller.domain.pipeline.limits import Budget, LimitExceeded
from controller.domain.pipeline.locations import PathProblem, join_in_repo
from controller.domain.pipeline.plots import artifact_specs, top_level_plots
from controller.domain.pipeline.schema import describe

__all__ = ["TopLevel", "check_vars_section", "top_level_sections"]

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


@dataclass(frozen=True)
class TopLevel:
    """What the sections beside ``stages`` declare, resolved, paths repo-relative."""

    metrics: list[str]
    plots: list[PlotSpec]
    artifacts: dict[str, ArtifactSpec]


def top_level_sections(
    document: Mapping[str, object],
    variables: Mapping[str, object],
    budget: Budget,
    warnings: list[str],
) -> TopLevel:
    """Resolve every other top-level section; ``warnings`` gets what is worth telling."""
    resolved: dict[str, object] = {}
    for section in _SECTIONS:
        if section not in document:
            continue
        try:
            check_syntax(document[section])
            resolved[section] = resolve(document[section], variables, key=None, budget=budget)
        except (InterpolationError, LimitExceeded) as exc:
            raise _fail(f"top-level '{section}': {exc}") from None
    _repo_paths("params", resolved.get("params"))
    return TopLevel(
        metrics=_repo_paths("metrics", resolved.get("metrics")),
        plots=top_level_plots(resolved.get("plots"), warnings),
        artifacts=artifact_specs(resolved.get("artifacts")),
    )


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
