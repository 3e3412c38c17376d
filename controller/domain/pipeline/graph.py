"""The stage graph: who produces what, who needs whom, and in which order.

An edge ``A -> B`` means B depends on something A writes: one of B's
dependencies (or params files) equals one of A's outputs, lies inside an
output directory, or contains an output. Like DVC's ``build_graph`` we refuse
an output listed twice, an output inside another output ("overlapping
outputs"), a stage that depends on its own output, and cycles -- each with
the stages involved, so the client can find them in ``dvc.yaml``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping, Sequence

import networkx as nx

from controller.domain.errors import InvalidPipeline
from controller.domain.pipeline.model import Stage
from controller.domain.pipeline.sources import Sources

__all__ = ["OutputIndex", "execution_order", "stage_graph", "unprovided_dependencies"]


class OutputIndex:
    """Every output path and the stage that writes it, with prefix lookups."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self._owner: dict[str, str] = {}
        for stage in stages:
            for output in stage.outs:
                self._add(output.path, stage.name)
        # Paths under a directory `d` are contiguous in plain string order,
        # since they all start with `d/`.
        self._sorted = sorted(self._owner)
        self._check_nesting()

    def _add(self, path: str, stage: str) -> None:
        owner = self._owner.get(path)
        if owner == stage:
            raise InvalidPipeline(
                f"dvc.yaml: stage '{stage}' lists output '{path}' more than once",
                stages=[stage],
            )
        if owner is not None:
            raise InvalidPipeline(
                f"dvc.yaml: output '{path}' is produced by both '{owner}' and '{stage}'",
                stages=[owner, stage],
            )
        self._owner[path] = stage

    def _check_nesting(self) -> None:
        for path in self._sorted:
            for parent in _ancestors(path):
                if parent in self._owner:
                    inner, outer = self._owner[path], self._owner[parent]
                    raise InvalidPipeline(
                        f"dvc.yaml: overlapping outputs: '{path}' of stage '{inner}' is inside "
                        f"output '{parent}' of stage '{outer}'",
                        stages=list(dict.fromkeys([outer, inner])),
                    )

    def related(self, path: str) -> Iterator[tuple[str, str]]:
        """``(output, stage)`` for outputs equal to, containing, or inside ``path``."""
        for candidate in (path, *_ancestors(path)):
            if candidate in self._owner:
                yield candidate, self._owner[candidate]
        start = bisect.bisect_left(self._sorted, path + "/")
        for candidate in self._sorted[start:]:
            if not candidate.startswith(path + "/"):
                break
            yield candidate, self._owner[candidate]

    def producer(self, path: str) -> str | None:
        """The stage whose output is ``path`` or contains it."""
        for candidate in (path, *_ancestors(path)):
            if candidate in self._owner:
                return self._owner[candidate]
        return None


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:end]) for end in range(len(parts) - 1, 0, -1)]


def stage_graph(
    stages: Sequence[Stage], index: OutputIndex, params_files: Mapping[str, Sequence[str]]
) -> nx.DiGraph:
    """The acyclic dependency graph; raises for self-dependencies and cycles."""
    graph = nx.DiGraph()
    graph.add_nodes_from(stage.name for stage in stages)
    for stage in stages:
        for dep in (*stage.deps, *params_files.get(stage.name, ())):
            for output, producer in index.related(dep):
                if producer == stage.name:
                    raise InvalidPipeline(
                        f"dvc.yaml: stage '{stage.name}' depends on its own output '{output}' "
                        f"(through '{dep}')",
                        stages=[stage.name],
                    )
                graph.add_edge(producer, stage.name)
    _check_acyclic(graph)
    return graph


def _check_acyclic(graph: nx.DiGraph) -> None:
    try:
        edges = nx.find_cycle(graph, orientation="original")
    except nx.NetworkXNoCycle:
        return
    cycle = [str(edge[0]) for edge in edges]
    path = " -> ".join([*cycle, cycle[0]])
    raise InvalidPipeline(f"dvc.yaml: cycle: {path}", stages=cycle)


def execution_order(graph: nx.DiGraph, names: Sequence[str]) -> tuple[str, ...]:
    """A topological order; among stages free to run, the one listed first goes first."""
    position = {name: index for index, name in enumerate(names)}
    return tuple(nx.lexicographical_topological_sort(graph, key=position.__getitem__))


def unprovided_dependencies(
    stages: Sequence[Stage], index: OutputIndex, sources: Sources
) -> list[str]:
    """Warnings for dependencies that neither a stage nor the bundle provides."""
    warnings: list[str] = []
    for stage in stages:
        for dep in stage.deps:
            if next(index.related(dep), None) is None and not sources.provides(dep):
                warnings.append(
                    f"stage '{stage.name}': dependency '{dep}' is not produced by any stage "
                    "nor uploaded; it has to come from the DVC remote"
                )
    return warnings
