"""parse_pipeline in linear time, within its budget.

Covers: the ``${...}`` scanner (finds exactly what DVC's pattern finds, and
examines each character a bounded number of times, however the text is built);
the stage graph (same stages, order and cycles as the pairwise definition, and
O(dependencies + outputs) links where the pairwise graph is quadratic); the
sorted path index against a naive one; scopes that layer instead of copying;
every budget limit refusing with its name (stages, edges, interpolations, nodes,
chars, external_hosts, wall_seconds on a fake clock); and the adversarial inputs
of issue 8 at ~1 MB, under a generous wall bound (the old code took minutes to
hours on them).
"""

from __future__ import annotations

import itertools
import re
import time

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.domain.errors import InvalidPipeline
from controller.domain.pipeline import Budget, Limits, Pipeline, parse_pipeline
from controller.domain.pipeline.interpolation import scan
from controller.domain.pipeline.limits import (
    MAX_CHARS,
    MAX_EDGES,
    MAX_EXTERNAL_HOSTS,
    MAX_INTERPOLATIONS,
    MAX_NODES,
    MAX_STAGES,
    MAX_WALL_SECONDS,
    MAX_WARNINGS,
)
from controller.domain.pipeline.pathindex import PathIndex
from controller.domain.pipeline.sources import Sources
from controller.domain.pipeline.variables import Layer, Variables

# DVC 3's own pattern (dvc/parsing/interpolate.py): the reference the scanner must match.
DVC_KEYCRE = re.compile(r"(?<!\\)\$\{(?P<inner>.*?)\}")

# Generous: on a loaded two-core machine the new code needs a few seconds for these;
# the old one needed minutes (nested ${) to hours, or ran out of memory.
WALL_BOUND_SECONDS = 60.0


def parse(
    text: str,
    *,
    files: dict[str, bytes] | None = None,
    params: dict[str, object] | None = None,
    budget: Budget | None = None,
) -> Pipeline:
    return parse_pipeline(text, files=files or {}, params=params or {}, budget=budget)


def refusal(text: str, *, budget: Budget | None = None, **kwargs: object) -> InvalidPipeline:
    with pytest.raises(InvalidPipeline) as caught:
        parse(text, budget=budget, **kwargs)  # type: ignore[arg-type]
    return caught.value


def timed(text: str, **kwargs: object) -> tuple[float, Pipeline | InvalidPipeline]:
    started = time.perf_counter()
    try:
        result: Pipeline | InvalidPipeline = parse(text, **kwargs)  # type: ignore[arg-type]
    except InvalidPipeline as exc:
        result = exc
    return time.perf_counter() - started, result


# --- the ${...} scanner ---------------------------------------------------------------

TOKENS = ["${", "}", "\\${", "\n", "a", ".", "[0]", " ", "$", "{", "\\"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=60).map("".join))
def test_scan_finds_exactly_what_dvcs_pattern_finds(text: str) -> None:
    expected = [(m.start(), m.end(), m["inner"]) for m in DVC_KEYCRE.finditer(text)]
    assert [tuple(reference) for reference in scan(text).references] == expected


# Building blocks an attacker would repeat: runs of `${` with no `}`, runs broken
# by newlines (the pattern's `.` stops there), escapes, and a lone `}` far away.
BLOCKS = st.sampled_from(["${", "${\n", "\\${", "}", "${a", "\n", "x" * 50, "${${${"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(BLOCKS, st.integers(1, 3_000)), min_size=1, max_size=8))
def test_scan_examines_each_character_a_bounded_number_of_times(
    runs: list[tuple[str, int]],
) -> None:
    text = "".join(block * count for block, count in runs)
    # Three forward-only cursors, plus one character per escaped `${`.
    assert scan(text).examined <= 4 * len(text) + 4


@pytest.mark.parametrize(
    "text",
    [
        "${" * 500_000,
        ("${" * 60 + "\n") * 8_000 + "}",
        "\\${" * 330_000 + "}",
        "$" * 1_000_000,
    ],
    ids=["nested", "nested-lines", "escaped", "dollars"],
)
def test_scan_of_a_megabyte_is_linear(text: str) -> None:
    # The old lazy pattern restarted at every `${` and read to the end: n^2 / 2.
    assert scan(text).examined <= 4 * len(text) + 4


def test_a_megabyte_of_nested_dollars_parses_within_a_generous_bound() -> None:
    text = f'stages:\n  a:\n    cmd: "echo {"${" * 500_000}"\n'  # issue 8, 17 times larger
    seconds, result = timed(text)
    assert isinstance(result, Pipeline)
    assert result.stages["a"].cmd == ("echo " + "${" * 500_000,)
    assert seconds < WALL_BOUND_SECONDS


def test_one_huge_expression_is_quoted_in_part() -> None:
    text = f'stages:\n  a:\n    cmd: "echo {"${" * 400_000}}}"\n'
    seconds, result = timed(text)
    assert isinstance(result, InvalidPipeline)
    assert "undefined name '${${" in result.detail
    assert len(result.detail) < 400
    assert seconds < WALL_BOUND_SECONDS


def test_nested_dollars_broken_by_newlines_parse_within_a_generous_bound() -> None:
    block = "${" * 60
    text = 'stages:\n  a:\n    cmd: "echo ' + "\\n".join([block] * 8_000) + ' }"\n'
    seconds, result = timed(text)
    # The one `}` closes the `${` on its own line: an expression DVC cannot select.
    assert isinstance(result, InvalidPipeline)
    assert "undefined name '${${" in result.detail
    assert len(result.detail) < 400  # quoted in part, not in full
    assert seconds < WALL_BOUND_SECONDS


# --- the stage graph ------------------------------------------------------------------


def overlap_yaml(count: int) -> str:
    """Issue 8: a foreach writing ``a/${item}``, another whose stages all read ``a``."""
    items = ", ".join(str(i) for i in range(count))
    return (
        f"stages:\n  w:\n    foreach: [{items}]\n    do:\n      cmd: write ${{item}}\n"
        "      outs:\n        - a/${item}\n"
        f"  r:\n    foreach: [{items}]\n    do:\n      cmd: read ${{item}}\n      deps: [a]\n"
    )


def test_issue_overlap_case_needs_linear_links_not_pairs() -> None:
    budget = Budget()
    pipeline = parse(overlap_yaml(1_500), budget=budget)
    assert len(pipeline.order) == 3_000
    assert set(pipeline.order[:1_500]) == {f"w@{i}" for i in range(1_500)}
    assert pipeline.order[1_500:] == tuple(f"r@{i}" for i in range(1_500))
    # One link per writer into the directory node, one from it per reader: the
    # pairwise graph had 1,500 x 1,500 = 2,250,000.
    assert budget.edges == 3_000


def test_overlap_at_the_stage_limit_parses_within_a_generous_bound() -> None:
    budget = Budget()
    started = time.perf_counter()
    pipeline = parse(overlap_yaml(MAX_STAGES // 2), budget=budget)
    seconds = time.perf_counter() - started
    assert len(pipeline.stages) == MAX_STAGES
    assert budget.edges == MAX_STAGES  # 25,000,000 pairwise
    assert seconds < WALL_BOUND_SECONDS


COMPONENTS = ["a", "b", "a-b"]  # "a-b" sorts between "a" and "a/..." in plain order


@st.composite
def tree_paths(draw: st.DrawFn) -> str:
    depth = draw(st.integers(1, 3))
    return "/".join(draw(st.sampled_from(COMPONENTS)) for _ in range(depth))


@st.composite
def random_pipelines(draw: st.DrawFn) -> list[tuple[list[str], list[str]]]:
    """Stages as (deps, outs) over a small tree, so equal, nested and sibling paths abound."""
    count = draw(st.integers(1, 7))
    return [
        (
            draw(st.lists(tree_paths(), max_size=3, unique=True)),
            draw(st.lists(tree_paths(), max_size=2, unique=True)),
        )
        for _ in range(count)
    ]


def pipeline_yaml(stages: list[tuple[list[str], list[str]]]) -> str:
    lines = ["stages:"]
    for number, (deps, outs) in enumerate(stages):
        lines += [f"  s{number}:", f"    cmd: run {number}"]
        lines += [f"    deps: [{', '.join(deps)}]"] if deps else []
        lines += [f"    outs: [{', '.join(outs)}]"] if outs else []
    return "\n".join(lines) + "\n"


def related(first: str, second: str) -> bool:
    return first == second or first.startswith(second + "/") or second.startswith(first + "/")


def pairwise_expectation(stages: list[tuple[list[str], list[str]]]) -> tuple[str, object]:
    """What the quadratic, by-definition graph says: a refusal kind, or the order."""
    owners: dict[str, int] = {}
    for number, (_, outs) in enumerate(stages):
        for out in outs:
            if out in owners:
                return "duplicate", None
            owners[out] = number
    if any(related(a, b) for a, b in itertools.combinations(owners, 2)):
        return "overlapping", None
    graph = nx.DiGraph()
    graph.add_nodes_from(range(len(stages)))
    for number, (deps, _) in enumerate(stages):
        for dep, (out, owner) in itertools.product(deps, owners.items()):
            if related(dep, out):
                if owner == number:
                    return "self", None
                graph.add_edge(owner, number)
    if not nx.is_directed_acyclic_graph(graph):
        return "cycle", graph
    order = nx.lexicographical_topological_sort(graph, key=lambda node: node)
    return "order", tuple(f"s{node}" for node in order)


REFUSALS = {
    "duplicate": ("produced by both", "more than once"),
    "overlapping": ("overlapping outputs",),
    "self": ("depends on its own output",),
    "cycle": ("cycle: ",),
}


@settings(max_examples=200, deadline=None)
@given(random_pipelines())
def test_graph_agrees_with_the_pairwise_definition(
    stages: list[tuple[list[str], list[str]]],
) -> None:
    kind, expected = pairwise_expectation(stages)
    if kind == "order":
        assert parse(pipeline_yaml(stages)).order == expected
        return
    error = refusal(pipeline_yaml(stages))
    assert any(fragment in error.detail for fragment in REFUSALS[kind])
    if kind == "cycle":
        assert isinstance(expected, nx.DiGraph)
        cycle = [int(name[1:]) for name in error.stages]
        for index, node in enumerate(cycle):
            assert expected.has_edge(node, cycle[(index + 1) % len(cycle)])


@st.composite
def deep_pipelines(draw: st.DrawFn) -> list[tuple[list[str], list[str]]]:
    """Many stages writing deep, distinct paths and reading directories above them."""
    count = draw(st.integers(1, 30))
    stages = []
    for number in range(count):
        depth = draw(st.integers(1, 30))
        branch = draw(st.sampled_from(["x", "y", "x/y"]))
        out = f"{branch}/" + "/".join(["d"] * depth) + f"/o{number}"
        deps = [
            draw(st.sampled_from(["x", "y", "x/y"])) + "/d" * level
            for level in draw(st.lists(st.integers(0, 30), max_size=4, unique=True))
        ]
        stages.append((deps, [out]))
    return stages


@settings(max_examples=40, deadline=None)
@given(deep_pipelines())
def test_links_stay_linear_in_dependencies_and_outputs(
    stages: list[tuple[list[str], list[str]]],
) -> None:
    budget = Budget()
    _, result = timed(pipeline_yaml(stages), budget=budget)
    # Directories read by their own writers make cycles and self-dependencies too.
    assert isinstance(result, Pipeline) or any(
        fragment in result.detail for fragment in ("cycle", "its own output", "overlapping")
    )
    deps = sum(len(d) for d, _ in stages)
    outs = sum(len(o) for _, o in stages)
    # Per dependency: its producer and its directory node; per directory node one
    # link to the node around it; per output one link into its innermost node.
    assert budget.edges <= 3 * deps + outs


def test_a_long_cycle_is_listed_in_full_in_stages_and_shortened_in_the_message() -> None:
    ring = "stages:\n" + "".join(
        f"  s{i}: {{cmd: c, deps: [o/{(i - 1) % 30}], outs: [o/{i}]}}\n" for i in range(30)
    )
    error = refusal(ring)
    assert error.stages == [f"s{i}" for i in range(30)]
    chain = " -> ".join(f"s{i}" for i in range(20))
    assert error.detail == f"dvc.yaml: cycle: {chain} -> ... (10 more) -> s0"


def test_a_deep_path_is_refused_before_anything_costs_its_depth() -> None:
    deep = "/".join(["d"] * 60_000)  # 120,000 characters, 60,000 levels
    started = time.perf_counter()
    error = refusal(f"stages:\n  w:\n    cmd: w\n    outs: [{deep}]\n")
    assert error.stages == ["w"]
    assert "longer than 4096 characters" in error.detail
    assert len(error.detail) < 200  # and not echoed back in full
    assert time.perf_counter() - started < WALL_BOUND_SECONDS


def test_a_megabyte_of_deep_paths_parses_within_a_generous_bound() -> None:
    prefix = "d/" * 1_990
    body = "".join(f"  w{i}:\n    cmd: w\n    outs: [{prefix}x{i}]\n" for i in range(220))
    ancestors = ", ".join("d" + "/d" * level for level in range(0, 1_990, 50))
    text = f"stages:\n{body}  r:\n    cmd: r\n    deps: [{ancestors}]\n"
    assert len(text) > 900_000
    budget = Budget()
    seconds, result = timed(text, budget=budget)
    assert isinstance(result, Pipeline)
    assert result.order[-1] == "r"
    assert budget.edges <= 3 * 40 + 220
    assert seconds < WALL_BOUND_SECONDS


# --- sorted paths, bundle files ---------------------------------------------------------


def naive_inside(paths: list[str], directory: str) -> set[str]:
    return {path for path in paths if path.startswith(directory + "/")}


@settings(max_examples=300, deadline=None)
@given(st.lists(tree_paths(), max_size=12, unique=True), tree_paths())
def test_path_index_agrees_with_prefix_checks(paths: list[str], probe: str) -> None:
    index = PathIndex(paths)
    assert {index.path(i) for i in index.inside(probe)} == naive_inside(paths, probe)
    assert (index.position(probe) is not None) == (probe in paths)
    outer = index.outermost()
    kept = {outer.path(i) for i in range(len(outer))}
    assert kept == {p for p in paths if not any(p.startswith(q + "/") for q in paths)}
    ancestor = outer.nearest_ancestor(probe)
    expected = [p for p in kept if probe == p or probe.startswith(p + "/")]
    assert (None if ancestor is None else outer.path(ancestor)) in (expected or [None])
    nested = index.first_nested_pair()
    has_nesting = any(p.startswith(q + "/") for p in paths for q in paths)
    assert (nested is not None) == has_nesting


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(tree_paths(), tree_paths().map(lambda p: p + ".dvc")), max_size=10),
    tree_paths(),
)
def test_bundle_provides_what_a_loop_over_every_file_would_find(files: list[str], dep: str) -> None:
    sources = Sources(dict.fromkeys(files, b""), {})

    def within(path: str, parent: str) -> bool:
        return path == parent or path.startswith(parent + "/")

    expected = any(
        within(name, dep) or (name.endswith(".dvc") and within(dep, name.removesuffix(".dvc")))
        for name in files
    )
    assert sources.provides(dep) == expected


def test_many_files_and_many_dependencies_parse_within_a_generous_bound() -> None:
    # Every dependency used to be compared with every file: 10^8 checks here.
    files = {f"src/m{i}/f.py": b"" for i in range(2_500)}
    files.update({f"data/d{i}.dvc": b"outs: []\n" for i in range(2_500)})
    body = "".join(
        f"  s{s}:\n    cmd: c\n    deps: [{', '.join(f'm/s{s}/d{d}' for d in range(200))}]\n"
        for s in range(100)
    )
    seconds, result = timed(f"stages:\n{body}", files=files)
    assert isinstance(result, Pipeline)
    # None of them is produced or uploaded; the answer names the first ones only.
    assert len(result.warnings) == MAX_WARNINGS + 1
    assert result.warnings[0].startswith("stage 's0': dependency 'm/s0/d0' is not produced")
    assert result.warnings[-1] == f"... and {20_000 - MAX_WARNINGS} more warnings"
    assert seconds < WALL_BOUND_SECONDS


# --- scopes -----------------------------------------------------------------------------


def test_stage_vars_layer_over_shared_data_instead_of_copying_it() -> None:
    train = {f"p{i}": i for i in range(1_000)}
    params: dict[str, object] = {"train": train, "lr": 0.1}
    variables = Variables.for_pipeline([], Sources({}, params))
    budget = Budget()
    scope = variables.iteration({"item": 1}).with_stage_vars(
        [{"train": {"extra": 2}}, {"local": 3}],
        wdir=".",
        sources=Sources({}, params),
        stage="s@1",
        budget=budget,
    )
    merged = scope.data["train"]
    assert isinstance(merged, Layer)
    assert merged.base is train  # shared, not copied
    assert (merged["extra"], merged["p7"]) == (2, 7)
    assert list(merged)[-1] == "extra"
    assert len(merged) == 1_001
    assert "extra" not in train
    assert "local" not in variables.data
    assert (scope.data["item"], scope.data["lr"]) == (1, 0.1)
    # Charged for what the stage's vars hold, not for what params.yaml holds.
    assert budget.nodes == 3


def test_a_big_foreach_with_stage_vars_over_big_params_stays_linear() -> None:
    params: dict[str, object] = {f"k{i}": i for i in range(50_000)}
    params["train"] = {f"p{i}": i for i in range(50_000)}
    items = ", ".join(str(i) for i in range(MAX_STAGES))
    text = (
        f"stages:\n  s:\n    foreach: [{items}]\n    do:\n"
        "      vars: [{train: {extra: 1}}, {local: 2}]\n"
        "      cmd: run ${item} ${train.extra} ${local} ${k7}\n"
        "      params: [train.p1]\n"
    )
    budget = Budget()
    seconds, result = timed(text, params=params, budget=budget)
    assert isinstance(result, Pipeline)
    assert result.stages["s@9999"].cmd == ("run 9999 1 2 7",)
    assert budget.nodes < 20 * MAX_STAGES  # nothing proportional to params.yaml per stage
    assert seconds < WALL_BOUND_SECONDS


# --- the budget -------------------------------------------------------------------------


def test_the_limits_are_the_named_constants() -> None:
    assert Limits() == Limits(
        stages=MAX_STAGES,
        edges=MAX_EDGES,
        interpolations=MAX_INTERPOLATIONS,
        nodes=MAX_NODES,
        chars=MAX_CHARS,
        external_hosts=MAX_EXTERNAL_HOSTS,
        wall_seconds=MAX_WALL_SECONDS,
    )


def foreach_yaml(count: int, body: str = "cmd: run ${item}") -> str:
    items = ", ".join(str(i) for i in range(count))
    return f"stages:\n  s:\n    foreach: [{items}]\n    do:\n      {body}\n"


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 200), st.integers(0, 6), st.integers(0, 6))
def test_work_is_proportional_to_stages_times_template(
    stages: int, references: int, deps: int
) -> None:
    refs = " ".join(["${item}"] * references)
    dep_list = ", ".join(f"'d{j}/${{item}}'" for j in range(deps))
    budget = Budget()
    parse(foreach_yaml(stages, f"{{cmd: 'run {refs}', deps: [{dep_list}]}}"), budget=budget)
    assert budget.interpolations == stages * (references + deps)
    # Per stage: its foreach item, its cmd, its deps list and each dep in it.
    assert budget.nodes == stages * (3 + deps)
    assert budget.edges == 0


def test_stages_limit_counts_every_group() -> None:
    half = MAX_STAGES // 2 + 1
    items = ", ".join(str(i) for i in range(half))
    text = "stages:\n" + "".join(
        f"  g{g}:\n    foreach: [{items}]\n    do:\n      cmd: run\n" for g in range(2)
    )
    error = refusal(text)
    assert error.stages == ["g1"]
    assert f"over the 'stages' limit: more than {MAX_STAGES} stages" in error.detail


def test_edges_limit_is_named() -> None:
    text = "stages:\n  p: {cmd: p, outs: [o]}\n" + "".join(
        f"  r{i}: {{cmd: r, deps: [o]}}\n" for i in range(30)
    )
    parse(text, budget=Budget(Limits(edges=30)))
    error = refusal(text, budget=Budget(Limits(edges=29)))
    assert error.detail == (
        "dvc.yaml: over the 'edges' limit: more than 29 links in the stage dependency graph "
        "in one bundle"
    )


def test_interpolations_limit_is_named_and_counts_every_generated_stage() -> None:
    text = foreach_yaml(100, "cmd: run ${item} ${item} ${item}")
    budget = Budget()
    parse(text, budget=budget)
    assert budget.interpolations == 300
    error = refusal(text, budget=Budget(Limits(interpolations=299)))
    assert error.stages == ["s@99"]
    assert "over the 'interpolations' limit: more than 299 ${...} references" in error.detail


def test_nodes_limit_charges_whole_params_files_per_stage() -> None:
    params: dict[str, object] = {f"k{i}": i for i in range(1_000)}
    text = foreach_yaml(100, "{cmd: run, params: [{params.yaml: []}]}")
    budget = Budget()
    parse(text, params=params, budget=budget)
    assert budget.nodes >= 100 * 1_000
    error = refusal(text, params=params, budget=Budget(Limits(nodes=50_000)))
    assert "over the 'nodes' limit" in error.detail


def test_chars_limit_charges_long_matrix_names() -> None:
    long = "v" * 1_000
    values = ", ".join(f"{long}{i}" for i in range(50))
    text = f"stages:\n  m:\n    matrix:\n      a: [{values}]\n      b: [{values}]\n    cmd: run\n"
    budget = Budget()
    parse(text, budget=budget)
    assert budget.chars >= 2_500 * 2_000  # every name repeats two long values
    error = refusal(text, budget=Budget(Limits(chars=1_000_000)))
    assert error.stages == ["m"]
    assert "over the 'chars' limit" in error.detail


def test_external_hosts_limit_is_named() -> None:
    deps = ", ".join(f"https://h{i}.example.com/d.csv" for i in range(MAX_EXTERNAL_HOSTS + 1))
    error = refusal(f"stages:\n  s: {{cmd: run, deps: [{deps}]}}\n")
    assert (
        f"over the 'external_hosts' limit: more than {MAX_EXTERNAL_HOSTS} distinct hosts"
        in error.detail
    )
    same_host = ", ".join(f"https://h.example.com/d{i}.csv" for i in range(50))
    assert len(parse(f"stages:\n  s: {{cmd: run, deps: [{same_host}]}}\n").external_deps) == 50


def test_wall_time_limit_is_named_on_a_fake_clock() -> None:
    ticks = itertools.count()

    def clock() -> float:
        return float(next(ticks))  # one second per reading

    text = foreach_yaml(2_000)
    budget = Budget(Limits(wall_seconds=5), clock=clock)
    error = refusal(text, budget=budget)
    assert "over the 'wall_seconds' limit: parsing took longer than 5 seconds" in error.detail
    # The same parse on a clock that stands still is accepted.
    assert len(parse(text, budget=Budget(Limits(wall_seconds=5), clock=lambda: 0.0)).order) == 2_000


def test_wall_time_is_checked_after_every_file_parsed() -> None:
    # A bundle may carry many large vars files; YAML is the slowest thing parsed.
    files = {f"v{i}.yaml": f"k{i}: {i}\n".encode() for i in range(10)}
    text = f"vars: [{', '.join(files)}]\nstages:\n  s: {{cmd: run}}\n"
    ticks = itertools.count()
    budget = Budget(Limits(wall_seconds=2.5), clock=lambda: float(next(ticks)))
    error = refusal(text, files=files, budget=budget)
    assert error.detail == (
        "dvc.yaml: over the 'wall_seconds' limit: parsing took longer than 2.5 seconds"
    )
    assert budget.chars == 3 * len(files["v0.yaml"])  # the fourth file was never parsed
