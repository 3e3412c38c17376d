"""The parsed pipeline: what each stage runs, reads and writes, and in what order.

Plain frozen dataclasses so planners and services can use them without
knowing anything about ``dvc.yaml`` syntax. Every path is repo-relative POSIX,
already normalised, with the stage's ``wdir`` applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from controller.domain.models import ArtifactSpec, PlotSpec
from controller.domain.pipeline.external import ExternalDependency

__all__ = ["Output", "OutputKind", "Pipeline", "Stage"]

OutputKind = Literal["outs", "metrics", "plots"]


@dataclass(frozen=True)
class Output:
    """One thing a stage writes."""

    path: str
    kind: OutputKind
    # False means the file is tracked by git, not the DVC cache (e.g. a
    # metrics.json declared with ``cache: false``).
    cache: bool


@dataclass(frozen=True)
class Stage:
    """One concrete stage, after ``foreach``/``matrix`` expansion and interpolation.

    ``name`` is DVC's: ``train``, ``build@us`` (foreach over a dict or a list
    of scalars), ``build@0`` (foreach over a list of lists or mappings) or
    ``train@0.1-adam`` (matrix: the values joined with ``-``).

    ``params`` lists ``(params file, dotted key)`` pairs; a file tracked as a
    whole contributes one pair per top-level key it has.
    """

    name: str
    cmd: tuple[str, ...]
    wdir: str
    deps: tuple[str, ...]
    outs: tuple[Output, ...]
    params: tuple[tuple[str, str], ...]
    frozen: bool
    always_changed: bool
    # URL dependencies (see .external), as written; DVC fetches them itself.
    external_deps: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pipeline:
    """A pipeline DVC would accept, with an execution order that respects its DAG."""

    stages: Mapping[str, Stage]
    # Topological; stages that could run in either order keep dvc.yaml's order.
    order: tuple[str, ...]
    metrics_files: tuple[str, ...]
    # Things worth telling the client that do not stop the pipeline, such as a
    # dependency nobody produces or uploads (it may come from the DVC remote).
    warnings: tuple[str, ...]
    # Every URL dependency, in dvc.yaml order: the service checks their hosts
    # against the egress policy and their remotes against the bundle's.
    external_deps: tuple[ExternalDependency, ...] = ()
    # Plots (top-level ``plots``, then stages' plot outputs) and the ``artifacts``
    # section, paths repo-relative: see :mod:`.plots`.
    plots: tuple[PlotSpec, ...] = ()
    artifacts: Mapping[str, ArtifactSpec] = field(default_factory=lambda: MappingProxyType({}))
