"""Parse ``dvc.yaml`` the way DVC 3 would, and check its stage graph.

:func:`parse_pipeline` is pure: it reads only the bytes it is given (the
pipeline, the uploaded files and the parsed ``params.yaml``) and never imports
DVC, which is slow to import and does I/O. It follows DVC's own rules, read
from ``dvc/schema.py``, ``dvc/parsing/`` and ``dvc/stage/``, in this order:

1. ``schema``     -- the raw file's shape, before any ``${...}`` is resolved;
2. ``variables``  -- ``params.yaml`` and ``vars`` become the interpolation context;
3. ``expand``     -- ``foreach``/``matrix`` expansion (names in ``iteration``)
   and ``${...}`` interpolation (``interpolation``);
4. ``build``      -- repo-relative paths, outputs, declared parameters, and
   URL dependencies (``external``); plot definitions and artifacts, from the
   top-level sections (``toplevel``) and the stages' plot outputs (``plots``);
5. ``params``     -- every declared parameter exists in its file;
6. ``graph``      -- duplicate/overlapping outputs, self-dependencies, cycles,
   and an execution order.

Every step is linear in what it reads, and the whole parse is metered by a
:class:`~.limits.Budget` (stages, graph links, interpolations, values,
characters, wall time). Every refusal is an
:class:`~controller.domain.errors.InvalidPipeline` whose ``stages`` names the
stages involved; one for a budget names the limit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

from controller.domain.errors import InvalidInput, InvalidPipeline
from controller.domain.pipeline.build import (
    ParamsUse,
    build_stage,
    external_dependencies,
    plot_outputs,
)
from controller.domain.pipeline.expand import expand_stages
from controller.domain.pipeline.external import ExternalDependency
from controller.domain.pipeline.graph import (
    OutputIndex,
    execution_order,
    stage_graph,
    unprovided_dependencies,
)
from controller.domain.pipeline.limits import MAX_WARNINGS, Budget, LimitExceeded, Limits, over
from controller.domain.pipeline.model import Output, OutputKind, Pipeline, Stage
from controller.domain.pipeline.params import resolve_params
from controller.domain.pipeline.plots import plot_specs, stage_plots
from controller.domain.pipeline.schema import check_stage_definition, check_top_level
from controller.domain.pipeline.sources import Sources
from controller.domain.pipeline.toplevel import check_vars_section, top_level_sections
from controller.domain.pipeline.variables import ContextError, Variables
from controller.domain.safeyaml import load_yaml

__all__ = [
    "Budget",
    "ExternalDependency",
    "Limits",
    "Output",
    "OutputKind",
    "Pipeline",
    "Stage",
    "parse_pipeline",
]


def parse_pipeline(
    dvc_yaml: str | bytes,
    *,
    files: Mapping[str, bytes],
    params: Mapping[str, object],
    budget: Budget | None = None,
) -> Pipeline:
    """Parse and check a pipeline; ``files`` are the other uploads by repo path.

    ``budget`` defaults to a fresh one with the default :class:`Limits`; pass
    your own to use other limits or to read what the parse used.
    """
    budget = budget or Budget()
    try:
        return _parse(dvc_yaml, files, params, budget)
    except LimitExceeded as exc:
        # Limits crossed inside a stage are reported with it, by the steps.
        raise InvalidPipeline(f"dvc.yaml: {exc}") from None


def _parse(
    dvc_yaml: str | bytes, files: Mapping[str, bytes], params: Mapping[str, object], budget: Budget
) -> Pipeline:
    try:
        document = load_yaml(dvc_yaml, source="dvc.yaml")
    except InvalidInput as exc:
        raise InvalidPipeline(exc.detail) from None
    raw_stages = check_top_level(document)
    assert isinstance(document, Mapping)
    warnings: list[str] = []
    for name, definition in raw_stages.items():
        warnings += check_stage_definition(name, definition)

    sources = Sources(files, params, budget)
    try:
        variables = Variables.for_pipeline(check_vars_section(document), sources)
    except ContextError as exc:
        raise InvalidPipeline(f"dvc.yaml: 'vars': {exc}") from None
    budget.check_time()
    top = top_level_sections(document, variables.data, budget, warnings)
    resolved, expand_warnings = expand_stages(raw_stages, variables, sources, budget)
    warnings += expand_warnings

    built = [build_stage(stage) for stage in resolved]
    from_stages = [
        spec for stage in resolved for spec in stage_plots(stage.name, plot_outputs(stage))
    ]
    plots = plot_specs(top.plots, from_stages, budget.limits)
    budget.check_time()
    index = OutputIndex([stage for stage, _ in built])
    stages: list[Stage] = []
    external: list[ExternalDependency] = []
    for stage, uses in built:
        pairs, params_warnings = resolve_params(stage.name, uses, sources, index.producer, budget)
        stages.append(dataclasses.replace(stage, params=pairs))
        warnings.extend(params_warnings)
        external += external_dependencies(stage)
    _check_external_hosts(external, budget.limits)

    graph = stage_graph(stages, index, _params_files(built), budget)
    order = execution_order(graph, budget)
    warnings.extend(unprovided_dependencies(stages, index, sources))
    return Pipeline(
        stages=MappingProxyType({stage.name: stage for stage in stages}),
        order=order,
        metrics_files=_metrics_files(stages, top.metrics),
        warnings=_capped(warnings),
        external_deps=tuple(external),
        plots=plots,
        artifacts=MappingProxyType(top.artifacts),
    )


def _capped(warnings: list[str]) -> tuple[str, ...]:
    if len(warnings) <= MAX_WARNINGS:
        return tuple(warnings)
    return (*warnings[:MAX_WARNINGS], f"... and {len(warnings) - MAX_WARNINGS} more warnings")


def _check_external_hosts(external: list[ExternalDependency], limits: Limits) -> None:
    # The service resolves each host name (blocking DNS) before accepting the bundle.
    hosts = {dep.host for dep in external if dep.host is not None}
    if len(hosts) > limits.external_hosts:
        raise over("external_hosts", limits.external_hosts)


def _params_files(built: list[tuple[Stage, list[ParamsUse]]]) -> dict[str, list[str]]:
    # Params files are dependencies too: one written by another stage orders them.
    return {stage.name: [use.file for use in uses] for stage, uses in built}


def _metrics_files(stages: list[Stage], top_level: list[str]) -> tuple[str, ...]:
    from_stages = [out.path for stage in stages for out in stage.outs if out.kind == "metrics"]
    return tuple(dict.fromkeys([*from_stages, *top_level]))
