"""How much work one ``dvc.yaml`` may ask of the parser, and the meter that enforces it.

Every step of :func:`~controller.domain.pipeline.parse_pipeline` runs in time
linear in what it reads, but ``foreach`` and ``matrix`` multiply a stage
template and ``${...}`` repeats values, so a few hundred bytes can still ask
for millions of stages, links or characters. A :class:`Budget` is created per
parse and charged as the work happens; the first limit crossed stops the parse
with :class:`LimitExceeded`, which names the limit (callers turn it into a 422).

The limits are named constants, collected in :class:`Limits` so that they can
become settings without touching the parser. The wall-time limit is a backstop
for whatever the counted limits miss; it is checked every few hundred charges
and between phases, never by a thread or a signal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "MAX_CHARS",
    "MAX_EDGES",
    "MAX_EXTERNAL_HOSTS",
    "MAX_INTERPOLATIONS",
    "MAX_NODES",
    "MAX_PLOT_FILES",
    "MAX_STAGES",
    "MAX_WALL_SECONDS",
    "MAX_WARNINGS",
    "Budget",
    "LimitExceeded",
    "Limits",
]

# Stages after foreach/matrix expansion: far beyond any real sweep (a matrix of
# five 100-value lists would otherwise ask for ten billion).
MAX_STAGES = 10_000
# Links in the dependency graph: one per dependency on another stage's output,
# plus the shared nodes that stand for a directory many stages read.
MAX_EDGES = 250_000
# `${...}` references resolved, counting each time a foreach/matrix template is
# resolved again.
MAX_INTERPOLATIONS = 500_000
# Values (strings, lists, mappings, numbers) produced by expansion and
# interpolation, plus keys merged into a stage's own `vars`.
MAX_NODES = 2_000_000
# Characters of strings produced or rewritten by interpolation.
MAX_CHARS = 64 * 1024 * 1024
# Distinct hosts of external (https/http) dependencies; each one is resolved
# and checked against the egress policy when the bundle is validated.
MAX_EXTERNAL_HOSTS = 20
# Plot data files declared (top-level `plots` and stages' plot outputs, counting each
# file of each plot): each one is read back from a run's commit and its rows kept.
MAX_PLOT_FILES = 200
# Everything above keeps a parse to a few seconds; this only catches what they miss.
MAX_WALL_SECONDS = 20.0
# Warnings returned with a pipeline (not a refusal: the rest are only counted),
# so that 20,000 missing dependencies do not make a 2 MB answer.
MAX_WARNINGS = 100

# How often (in charges) the clock is read.
_CLOCK_EVERY = 256


@dataclass(frozen=True)
class Limits:
    """One value per budgeted quantity; the field name is the limit's name in errors."""

    stages: int = MAX_STAGES
    edges: int = MAX_EDGES
    interpolations: int = MAX_INTERPOLATIONS
    nodes: int = MAX_NODES
    chars: int = MAX_CHARS
    external_hosts: int = MAX_EXTERNAL_HOSTS
    plot_files: int = MAX_PLOT_FILES
    wall_seconds: float = MAX_WALL_SECONDS


_WHAT = {
    "stages": "stages after foreach/matrix expansion",
    "edges": "links in the stage dependency graph",
    "interpolations": "${...} references resolved",
    "nodes": "values produced by expansion and interpolation",
    "chars": "characters produced by interpolation",
    "external_hosts": "distinct hosts of external URL dependencies",
    "plot_files": "plot data files declared",
}


class LimitExceeded(Exception):
    """A budget limit was crossed; ``limit`` is the :class:`Limits` field."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


def over(limit: str, value: float) -> LimitExceeded:
    """The error for going over ``limit`` (a :class:`Limits` field) set to ``value``."""
    if limit == "wall_seconds":
        return LimitExceeded(
            limit, f"over the 'wall_seconds' limit: parsing took longer than {value:g} seconds"
        )
    return LimitExceeded(
        limit, f"over the '{limit}' limit: more than {value} {_WHAT[limit]} in one bundle"
    )


class Budget:
    """What one parse has used so far; :meth:`spend` refuses going over a limit.

    The counters double as operation counts: tests and ``bench/parse_worst.py``
    read them to show that the work grows linearly with the input.
    """

    def __init__(
        self, limits: Limits | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits or Limits()
        self._clock = clock
        self._deadline = clock() + self.limits.wall_seconds
        self._charges = 0
        self.nodes = 0
        self.chars = 0
        self.interpolations = 0
        self.edges = 0

    def spend(
        self, *, nodes: int = 0, chars: int = 0, interpolations: int = 0, edges: int = 0
    ) -> None:
        self.nodes += nodes
        self.chars += chars
        self.interpolations += interpolations
        self.edges += edges
        limits = self.limits
        if self.nodes > limits.nodes:
            raise over("nodes", limits.nodes)
        if self.chars > limits.chars:
            raise over("chars", limits.chars)
        if self.interpolations > limits.interpolations:
            raise over("interpolations", limits.interpolations)
        if self.edges > limits.edges:
            raise over("edges", limits.edges)
        self._charges += 1
        if self._charges % _CLOCK_EVERY == 0:
            self.check_time()

    def check_stages(self, count: int) -> None:
        if count > self.limits.stages:
            raise over("stages", self.limits.stages)

    def check_time(self) -> None:
        if self._clock() > self._deadline:
            raise over("wall_seconds", self.limits.wall_seconds)
