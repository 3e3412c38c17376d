"""The stage graph: who produces what, who needs whom, and in which order.

Stage B depends on stage A when one of B's dependencies (or params files)
equals one of A's outputs, lies inside an output directory, or contains an
output. Like DVC's ``build_graph`` we refuse an output listed twice, an output
inside another output ("overlapping outputs"), a stage that depends on its own
output, and cycles -- each with the stages involved, so the client can find
them in ``dvc.yaml``.

Nothing here is quadratic. Outputs sit in a :class:`~.pathindex.PathIndex`
(sorted, so overlaps are neighbours and lookups are bisections). Since outputs
never nest, a dependency lies inside at most one output; the outputs *inside*
a dependency directory form a contiguous run of the index, and instead of one
link per (reader, output) pair -- 1,500 stages reading a directory that 1,500
stages write into would be 2.25 million links -- each distinct run gets one
*directory node*: writers link to the innermost run holding their output, a
run links to the run around it, and a reader links to its run once. Runs of a
tree nest or are disjoint, so this is a forest, and the graph has one node per
stage and per run and O(outputs + dependencies) links, with the same stage-to-
stage reachability as the pairwise graph. Directory nodes are not stages:
orders and cycles list stages only.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

from controller.domain.errors import InvalidPipeline
from controller.domain.pipeline.limits import Budget
from controller.domain.pipeline.model import Stage
from controller.domain.pipeline.pathindex import PathIndex
from controller.domain.pipeline.sources import Sources

__all__ = [
    "OutputIndex",
    "StageGraph",
    "execution_order",
    "stage_graph",
    "unprovided_dependencies",
]


class OutputIndex:
    """Every output path and the stage that writes it; outputs are checked not to nest."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        owner: dict[str, str] = {}
        for stage in stages:
            for output in stage.outs:
                _add(owner, output.path, stage.name)
        self.paths = PathIndex(owner)
        self.owners = [owner[self.paths.path(i)] for i in range(len(self.paths))]
        nested = self.paths.first_nested_pair()
        if nested is not None:
            outer_path, inner_path = (self.paths.path(i) for i in nested)
            outer, inner = (self.owners[i] for i in nested)
            raise InvalidPipeline(
                f"dvc.yaml: overlapping outputs: '{inner_path}' of stage '{inner}' is inside "
                f"output '{outer_path}' of stage '{outer}'",
                stages=list(dict.fromkeys([outer, inner])),
            )

    def producer(self, path: str) -> str | None:
        """The stage whose output is ``path`` or contains it."""
        position = self.paths.nearest_ancestor(path)
        return None if position is None else self.owners[position]

    def is_related(self, path: str) -> bool:
        """Whether an output equals, contains or lies inside ``path``."""
        return self.paths.nearest_ancestor(path) is not None or bool(self.paths.inside(path))


def _add(owner: dict[str, str], path: str, stage: str) -> None:
    previous = owner.get(path)
    if previous == stage:
        raise InvalidPipeline(
            f"dvc.yaml: stage '{stage}' lists output '{path}' more than once", stages=[stage]
        )
    if previous is not None:
        raise InvalidPipeline(
            f"dvc.yaml: output '{path}' is produced by both '{previous}' and '{stage}'",
            stages=[previous, stage],
        )
    owner[path] = stage


@dataclass(frozen=True)
class StageGraph:
    """Nodes ``0 .. len(stages) - 1`` are stages in dvc.yaml order; the rest are directories."""

    stages: tuple[str, ...]
    successors: tuple[tuple[int, ...], ...]


class _Builder:
    def __init__(self, stages: Sequence[Stage], index: OutputIndex, budget: Budget) -> None:
        self.index = index
        self.budget = budget
        self.names = tuple(stage.name for stage in stages)
        self.number = {name: number for number, name in enumerate(self.names)}
        self.successors: list[list[int]] = [[] for _ in stages]
        # Positions of each stage's outputs in the index, sorted, to spot a
        # stage reading a directory its own output lies in.
        self.own: list[list[int]] = [[] for _ in stages]
        for position, owner in enumerate(index.owners):
            self.own[self.number[owner]].append(position)
        self.runs: dict[tuple[int, int], int] = {}

    def link(self, source: int, target: int) -> None:
        self.budget.spend(edges=1)
        self.successors[source].append(target)

    def depend(self, stage: int, dep: str) -> None:
        name = self.names[stage]
        around = self.index.paths.nearest_ancestor(dep)
        if around is not None:
            self._from_producer(stage, dep, around)
        inside = self.index.paths.inside(dep)
        if not inside:
            return
        own = self.own[stage]
        mine = bisect.bisect_left(own, inside.start)
        if mine < len(own) and own[mine] < inside.stop:
            self._refuse_own(name, self.index.paths.path(own[mine]), dep)
        run = (inside.start, inside.stop)
        if run not in self.runs:
            self.runs[run] = len(self.successors)
            self.successors.append([])
        self.link(self.runs[run], stage)

    def _from_producer(self, stage: int, dep: str, position: int) -> None:
        producer = self.number[self.index.owners[position]]
        if producer == stage:
            self._refuse_own(self.names[stage], self.index.paths.path(position), dep)
        self.link(producer, stage)

    @staticmethod
    def _refuse_own(name: str, output: str, dep: str) -> NoReturn:
        raise InvalidPipeline(
            f"dvc.yaml: stage '{name}' depends on its own output '{output}' (through '{dep}')",
            stages=[name],
        )

    def link_runs(self) -> None:
        """Writers to the innermost run holding their output; each run to the run around it."""
        ordered = sorted(self.runs, key=lambda run: (run[0], -run[1]))
        opened: list[tuple[int, int]] = []  # the runs holding the current position, outermost first
        next_run = 0
        for position, owner in enumerate(self.index.owners):
            while opened and opened[-1][1] <= position:
                opened.pop()
            while next_run < len(ordered) and ordered[next_run][0] == position:
                run = ordered[next_run]
                if opened:
                    self.link(self.runs[run], self.runs[opened[-1]])
                opened.append(run)
                next_run += 1
            if opened:
                self.link(self.number[owner], self.runs[opened[-1]])


def stage_graph(
    stages: Sequence[Stage],
    index: OutputIndex,
    params_files: Mapping[str, Sequence[str]],
    budget: Budget,
) -> StageGraph:
    """The dependency graph; raises for self-dependencies (cycles: :func:`execution_order`)."""
    builder = _Builder(stages, index, budget)
    for number, stage in enumerate(stages):
        for dep in (*stage.deps, *params_files.get(stage.name, ())):
            builder.depend(number, dep)
    builder.link_runs()
    return StageGraph(builder.names, tuple(tuple(targets) for targets in builder.successors))


def execution_order(graph: StageGraph, budget: Budget) -> tuple[str, ...]:
    """A topological order; among stages free to run, the one listed first goes first.

    Kahn's algorithm on a heap keyed by dvc.yaml position. Directory nodes sort
    before every stage, so one is passed on as soon as its writers are done and
    stages become free exactly when they would in the pairwise graph.
    """
    count = len(graph.successors)
    waiting = [0] * count
    for targets in graph.successors:
        for target in targets:
            waiting[target] += 1
    stage_count = len(graph.stages)
    ready = [(_priority(node, stage_count), node) for node in range(count) if not waiting[node]]
    heapq.heapify(ready)
    order: list[str] = []
    done = 0
    while ready:
        _, node = heapq.heappop(ready)
        done += 1
        if node < stage_count:
            order.append(graph.stages[node])
            budget.check_time()
        for target in graph.successors[node]:
            waiting[target] -= 1
            if not waiting[target]:
                heapq.heappush(ready, (_priority(target, stage_count), target))
    if done < count:
        _refuse_cycle(graph, waiting)
    return tuple(order)


# Stages named in a cycle's message; a 10,000-stage ring need not be spelt out twice.
_CYCLE_SHOWN = 20


def _priority(node: int, stage_count: int) -> int:
    return node if node < stage_count else -1


def _refuse_cycle(graph: StageGraph, waiting: list[int]) -> NoReturn:
    """Report one cycle among the nodes Kahn's algorithm could not free.

    Each of them still waits for another of them, so walking backwards from
    one, always to a waiting predecessor, must come back to a node already seen.
    """
    predecessors: list[list[int]] = [[] for _ in graph.successors]
    for node, targets in enumerate(graph.successors):
        for target in targets:
            if waiting[node]:
                predecessors[target].append(node)
    start = next(node for node in range(len(graph.stages)) if waiting[node])
    seen: dict[int, int] = {}
    walk: list[int] = []
    node = start
    while node not in seen:
        seen[node] = len(walk)
        walk.append(node)
        node = predecessors[node][0]
    numbers = [n for n in reversed(walk[seen[node] :]) if n < len(graph.stages)]
    first = numbers.index(min(numbers))  # start at the stage listed first in dvc.yaml
    cycle = [graph.stages[n] for n in numbers[first:] + numbers[:first]]
    shown = cycle[:_CYCLE_SHOWN]
    if len(cycle) > _CYCLE_SHOWN:  # `stages` still lists them all
        shown.append(f"... ({len(cycle) - _CYCLE_SHOWN} more)")
    path = " -> ".join([*shown, cycle[0]])
    raise InvalidPipeline(f"dvc.yaml: cycle: {path}", stages=cycle)


def unprovided_dependencies(
    stages: Sequence[Stage], index: OutputIndex, sources: Sources
) -> list[str]:
    """Warnings for dependencies that neither a stage nor the bundle provides."""
    warnings: list[str] = []
    for stage in stages:
        for dep in stage.deps:
            if not index.is_related(dep) and not sources.provides(dep):
                warnings.append(
                    f"stage '{stage.name}': dependency '{dep}' is not produced by any stage "
                    "nor uploaded; it has to come from the DVC remote"
                )
    return warnings
