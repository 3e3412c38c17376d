"""Worst-case ``dvc.yaml`` parse times: the adversarial inputs of issue 8 and our own.

Each case is built in a child process that imports ``controller`` from a source
tree, parses once, and reports wall time, peak RSS and the outcome (accepted with
N stages, or the start of the refusal). Children run with a time limit and an
address-space cap, so a quadratic parser shows up as "> N s" or "out of memory"
instead of freezing or swapping the machine.

    .venv/bin/python bench/parse_worst.py                         # this tree
    .venv/bin/python bench/parse_worst.py --baseline /tmp/old     # and another tree
    .venv/bin/python bench/parse_worst.py --only overlap-1500 --timeout 300

A baseline tree is any checkout holding ``controller/``; to get the code before
issue 8, without touching this checkout's git state:

    mkdir /tmp/old && git archive b1a2392 controller | tar -x -C /tmp/old

The figure that matters is the slowest case: with linear parsing and the budgets
of ``controller/domain/pipeline/limits.py`` it stays at a few seconds for inputs
up to the 1 MiB size cap, where the old code took minutes or ran out of memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024

Case = tuple[str, dict[str, bytes], dict[str, object]]  # dvc.yaml, files, params


def _stages(body: str) -> str:
    return "stages:\n" + body


def nested_dollar(count: int) -> Case:
    """Issue 8: ``${`` repeated with no ``}`` -- the old scanner rescanned the rest from each."""
    return _stages(f'  a:\n    cmd: "echo {"${" * count}"\n'), {}, {}


def nested_dollar_lines(count: int) -> Case:
    """``${`` runs broken by newlines, with one ``}`` at the very end."""
    block = "${" * 60
    text = "\\n".join([block] * (count // 60))
    return _stages(f'  a:\n    cmd: "echo {text} }}"\n'), {}, {}


def overlap(count: int) -> Case:
    """Issue 8: a foreach writing ``a/${item}`` and a foreach of stages depending on ``a``."""
    items = ", ".join(str(i) for i in range(count))
    text = _stages(
        f"  w:\n    foreach: [{items}]\n    do:\n      cmd: write ${{item}}\n"
        f"      outs:\n        - a/${{item}}\n"
        f"  r:\n    foreach: [{items}]\n    do:\n      cmd: read ${{item}}\n      deps: [a]\n"
    )
    return text, {}, {}


def deep_paths(total_bytes: int) -> Case:
    """Outputs 4,000 characters deep, read through every 50th ancestor directory."""
    depth = 1_990  # components of "d/": a 3,980-character prefix
    prefix = "d/" * depth
    body: list[str] = []
    for i in range((total_bytes - 100_000) // 4_100):
        body.append(f"  w{i}:\n    cmd: w\n    outs: [{prefix}x{i}]\n")
    ancestors = ", ".join("d" + "/d" * level for level in range(0, depth, 50))
    body.append(f"  r:\n    cmd: r\n    deps: [{ancestors}]\n")
    return _stages("".join(body)), {}, {}


def foreach_big_params(stages: int, keys: int) -> Case:
    """A foreach whose stages each have their own ``vars``, over a params.yaml of many keys."""
    params: dict[str, object] = {f"k{i}": i for i in range(keys)}
    params["train"] = {f"p{i}": i for i in range(keys)}
    items = ", ".join(str(i) for i in range(stages))
    text = _stages(
        f"  s:\n    foreach: [{items}]\n    do:\n"
        "      vars: [{train: {extra: 1}}, {local: 2}]\n"
        "      cmd: run ${item} ${train.extra} ${local} ${k7}\n"
        "      params: [train.p1]\n"
    )
    return text, {}, params


def files_and_deps(files: int, deps: int) -> Case:
    """Many uploaded files and many dependencies nobody produces (the warning check)."""
    uploads = {f"src/m{i}/f.py": b"" for i in range(files)}
    uploads.update({f"data/d{i}.dvc": b"outs: []\n" for i in range(files)})
    per_stage = 100
    body = []
    for stage in range(deps // per_stage):
        listed = ", ".join(f"missing/s{stage}/d{d}" for d in range(per_stage))
        body.append(f"  s{stage}:\n    cmd: c\n    deps: [{listed}]\n")
    return _stages("".join(body)), uploads, {}


def matrix_names(columns: int, values: int) -> Case:
    """A matrix at the stage limit whose values are long strings (long stage names)."""
    long = "v" * 1_000
    rows = "\n".join(
        f"      c{c}: [{', '.join(f'{long}{c}x{v}' for v in range(values))}]"
        for c in range(columns)
    )
    return _stages(f"  m:\n    matrix:\n{rows}\n    cmd: run ${{key}}\n"), {}, {}


def many_references(stages: int, per_stage: int) -> Case:
    """A foreach template full of ``${...}``: interpolations grow with stages x references."""
    items = ", ".join(str(i) for i in range(stages))
    refs = " ".join(f"${{v.k{j % 50}}}" for j in range(per_stage))
    params = {"v": {f"k{j}": j for j in range(50)}}
    text = _stages(f"  s:\n    foreach: [{items}]\n    do:\n      cmd: run ${{item}} {refs}\n")
    return text, {}, params


def chain(stages: int) -> Case:
    """A chain where each stage reads the previous one's output, listed in reverse."""
    body = [
        f"  s{i}:\n    cmd: c\n    deps: [o/{i - 1}]\n    outs: [o/{i}]\n"
        for i in range(stages - 1, 0, -1)
    ]
    body.append("  s0:\n    cmd: c\n    outs: [o/0]\n")
    return _stages("".join(body)), {}, {}


def ring(stages: int) -> Case:
    """The same chain closed into one big cycle."""
    body = [
        f"  s{i}:\n    cmd: c\n    deps: [o/{(i - 1) % stages}]\n    outs: [o/{i}]\n"
        for i in range(stages)
    ]
    return _stages("".join(body)), {}, {}


def vars_files(count: int, file_bytes: int) -> Case:
    """Many large ``vars`` files (the upload cap is 20 MiB): YAML parsing is the slow part."""
    files = {}
    for n in range(count):
        text = "".join(f"f{n}k{i}: {i}\n" for i in range(file_bytes // 16))
        files[f"conf/v{n}.yaml"] = text[: text.rfind("\n", 0, file_bytes) + 1].encode()
    text = f"vars: [{', '.join(files)}]\nstages:\n  s:\n    cmd: run\n"
    return text, files, {}


def plain(total_bytes: int) -> Case:
    """Plain stages and nothing clever: the YAML parse alone, for scale."""
    body = []
    i = 0
    while sum(map(len, body)) < total_bytes - 200:
        body.append(f"  s{i}:\n    cmd: python run.py --n {i}\n    deps: [src/run.py]\n")
        i += 1
    return _stages("".join(body)), {"src/run.py": b""}, {}


CASES: dict[str, Callable[[], Case]] = {
    "nested-dollar-60k (issue)": lambda: nested_dollar(30_000),
    "overlap-1500 (issue)": lambda: overlap(1_500),
    "nested-dollar-1mb": lambda: nested_dollar(500_000),
    "nested-dollar-lines-1mb": lambda: nested_dollar_lines(500_000),
    "overlap-5000": lambda: overlap(5_000),
    "deep-paths-1mb": lambda: deep_paths(MiB - 64 * 1024),
    "foreach-vars-big-params": lambda: foreach_big_params(10_000, 50_000),
    "files-x-deps": lambda: files_and_deps(250, 20_000),
    "matrix-long-names": lambda: matrix_names(2, 100),
    "references-1m": lambda: many_references(10_000, 99),
    "chain-10k": lambda: chain(10_000),
    "ring-10k": lambda: ring(10_000),
    "plain-1mb": lambda: plain(MiB - 64 * 1024),
    "vars-files-20x1mb": lambda: vars_files(20, MiB - 64 * 1024),
}


def child(name: str, root: Path, memory_mb: int) -> None:
    """Parse one case with the tree at ``root``; print one JSON line."""
    limit = memory_mb * MiB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.path.insert(0, str(root))
    from controller.domain.errors import InvalidPipeline
    from controller.domain.pipeline import parse_pipeline
    from controller.domain.safeyaml import load_yaml

    text, files, params = CASES[name]()
    data = text.encode()
    started = time.perf_counter()
    try:
        pipeline = parse_pipeline(data, files=files, params=params)
        outcome = f"accepted, {len(pipeline.stages)} stages"
    except InvalidPipeline as exc:
        outcome = "refused: " + exc.detail[:90]
    except MemoryError:
        outcome = "out of memory"
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # The YAML parse alone (safeyaml, the same in both trees), for scale.
    started = time.perf_counter()
    load_yaml(data, source="dvc.yaml")
    yaml_seconds = time.perf_counter() - started
    report = {"seconds": seconds, "yaml": yaml_seconds, "outcome": outcome}
    print(json.dumps(report | {"peak_mb": peak, "bytes": len(data)}))


def measure(name: str, root: Path, timeout: float, memory_mb: int) -> dict[str, object]:
    command = [sys.executable, __file__, "--child", name, "--root", str(root)]
    command += ["--memory-mb", str(memory_mb)]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"seconds": None, "outcome": f"still running after {timeout:g} s (stopped)"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1][:90]
        wall = time.perf_counter() - started
        return {"seconds": None, "outcome": f"crashed after {wall:.1f} s: {tail}"}
    result: dict[str, object] = json.loads(lines[-1])
    return result


def _seconds(result: dict[str, object]) -> str:
    seconds = result.get("seconds")
    return "-" if not isinstance(seconds, float) else f"{seconds:8.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="another tree to compare with")
    parser.add_argument("--only", action="append", help="run only these cases")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    parser.add_argument("--memory-mb", type=int, default=2048, help="address space per case")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.root, args.memory_mb)
        return 0

    names = [name for name in CASES if not args.only or any(o in name for o in args.only)]
    trees = [("this tree", REPO_ROOT)]
    if args.baseline:
        trees.append(("baseline", args.baseline.resolve()))
    print(f"worst-case dvc.yaml parses (limit {args.timeout:g} s, {args.memory_mb} MiB each)")
    worst: dict[str, float] = {}
    for name in names:
        for label, root in trees:
            result = measure(name, root, args.timeout, args.memory_mb)
            peak = result.get("peak_mb")
            size = result.get("bytes")
            yaml_seconds = result.get("yaml")
            print(
                f"{name:28} {label:10} {_seconds(result):>10}"
                + (f" (yaml {yaml_seconds:5.2f})" if isinstance(yaml_seconds, float) else " " * 13)
                + (f"  {peak:6.0f} MiB" if isinstance(peak, float) else "            ")
                + (f"  {size:>8} B" if isinstance(size, int) else "            ")
                + f"  {result['outcome']}",
                flush=True,
            )
            seconds = result.get("seconds")
            worst[label] = max(
                worst.get(label, 0.0),
                seconds if isinstance(seconds, float) else float(args.timeout),
            )
    for label, seconds in worst.items():
        print(f"slowest case, {label}: {seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
