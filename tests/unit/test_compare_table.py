"""Comparing runs (controller.domain.compare) and the CLI rendering (controller.cli.compare).

Covers: ranking with missing and non-numeric metrics (last, no error), the param columns
being exactly those that differ, a failed run's params from the experiment's plus its
overrides, baseline deltas and changed params, CSV (parsed back, formula-looking text made
inert), the two-run diff naming exactly the stages whose dvc.lock entries changed, a stage
only one run has, and the aligned table.
"""

from __future__ import annotations

import csv
import io
from datetime import timedelta

from controller.cli.compare import render_pair, render_table
from controller.domain.compare import Entry, comparison, diff, entry, to_csv
from controller.domain.models import JsonValue, Run, RunResult, RunState
from tests.support.records import NOW

EXPERIMENT_PARAMS: dict[str, JsonValue] = {
    "prepare": {"seed": 42},
    "train": {"C": 1.0, "max_iter": 500},
}


def stages(c: float, model: str = "m1") -> dict[str, JsonValue]:
    return {
        "prepare": {"deps": {"src/prepare.py": "p0"}, "params": {"prepare.seed": 42}, "outs": {}},
        "train": {
            "deps": {"src/train.py": "t0", "data/train.csv": "d0"},
            "params": {"train.C": c, "train.max_iter": 500},
            "outs": {"models/model.pkl": model},
        },
        "evaluate": {"deps": {"models/model.pkl": model}, "params": {}, "outs": {}},
    }


def run(
    run_id: str,
    *,
    minutes: int,
    c: float,
    metrics: dict[str, JsonValue] | None = None,
    state: RunState = RunState.SUCCEEDED,
    lock: dict[str, JsonValue] | None = None,
) -> Run:
    result = None
    if state is RunState.SUCCEEDED:
        result = RunResult(
            git_url="file:///repo.git",
            branch=f"runs/{run_id}",
            commit="c" * 40,
            metrics={"metrics.json": metrics or {}},
            flat_metrics=metrics or {},
            params={"prepare.seed": 42, "train.C": c, "train.max_iter": 500},
            stages=lock if lock is not None else stages(c, model=f"m-{c}"),
            clone_command="git clone ...",
        )
    return Run(
        run_id=run_id,
        experiment_id="exp-1",
        owner="local",
        resource="local",
        namespace=None,
        params={"train.C": c},
        state=state,
        created_at=NOW + timedelta(minutes=minutes),
        finished_at=NOW + timedelta(minutes=minutes + 1),
        result=result,
    )


def entries(*runs: Run) -> list[Entry]:
    return [entry(r, EXPERIMENT_PARAMS) for r in runs]


def test_ranking_puts_missing_and_string_metrics_last_and_marks_the_best() -> None:
    table = comparison(
        "exp-1",
        entries(
            run("low", minutes=0, c=0.1, metrics={"accuracy": 0.8}),
            run("text", minutes=1, c=0.2, metrics={"accuracy": "n/a"}),
            run("failed", minutes=2, c=-1.0, state=RunState.FAILED),
            run("high", minutes=3, c=1.0, metrics={"accuracy": 0.95, "loss": 0.1}),
        ),
        metric="accuracy",
        goal="max",
    )
    assert [r.run_id for r in table.rows] == ["high", "low", "text", "failed"]
    assert [r.best for r in table.rows] == [True, False, False, False]
    assert table.metric_columns == ["accuracy", "loss"]
    assert table.rows[2].metrics == {"accuracy": "n/a"}
    assert table.rows[3].metrics == {}

    lowest = comparison(
        "exp-1",
        entries(run("a", minutes=0, c=0.1, metrics={"loss": 0.3}), run("b", minutes=1, c=1.0)),
        metric="loss",
        goal="min",
    )
    assert [r.run_id for r in lowest.rows] == ["a", "b"]


def test_no_best_when_no_row_has_a_number_and_newest_first_without_a_metric() -> None:
    runs = entries(
        run("old", minutes=0, c=0.1, metrics={"accuracy": "high"}),
        run("new", minutes=5, c=0.2, state=RunState.FAILED),
    )
    table = comparison("exp-1", runs, metric="accuracy")
    assert not any(r.best for r in table.rows)
    unranked = comparison("exp-1", runs)
    assert [r.run_id for r in unranked.rows] == ["new", "old"]
    assert unranked.metric is None
    assert not any(r.best for r in unranked.rows)


def test_param_columns_are_the_params_that_differ_and_failed_runs_use_their_overrides() -> None:
    failed = run("failed", minutes=2, c=-1.0, state=RunState.FAILED)
    table = comparison(
        "exp-1",
        entries(
            run("a", minutes=0, c=0.1, metrics={"accuracy": 0.8}),
            run("b", minutes=1, c=1.0, metrics={"accuracy": 0.9}),
            failed,
        ),
        metric="accuracy",
    )
    assert table.param_columns == ["train.C"]
    assert [r.params for r in table.rows] == [{"train.C": 1.0}, {"train.C": 0.1}, {"train.C": -1.0}]
    assert entry(failed, EXPERIMENT_PARAMS).params == {
        "prepare.seed": 42,
        "train.C": -1.0,
        "train.max_iter": 500,
    }
    # One run: nothing differs.
    single = comparison("exp-1", entries(run("a", minutes=0, c=0.1)), metric="accuracy")
    assert single.param_columns == []


def test_limit_keeps_the_best_rows() -> None:
    runs = entries(*(run(f"r{i}", minutes=i, c=i, metrics={"acc": i / 10}) for i in range(5)))
    table = comparison("exp-1", runs, metric="acc", limit=2)
    assert [r.run_id for r in table.rows] == ["r4", "r3"]


def test_baseline_adds_deltas_and_changed_params() -> None:
    base = run("base", minutes=0, c=0.1, metrics={"accuracy": 0.95, "note": "x", "n": 45})
    table = comparison(
        "exp-1",
        entries(base, run("b", minutes=1, c=1.0, metrics={"accuracy": 0.9, "n": 45})),
        metric="accuracy",
        baseline=entry(base, EXPERIMENT_PARAMS),
    )
    rows = {r.run_id: r for r in table.rows}
    assert rows["b"].deltas == {"accuracy": -0.05, "n": 0.0}
    assert rows["b"].changed == ["train.C"]
    assert rows["base"].deltas == {"accuracy": 0.0, "n": 0.0}
    assert rows["base"].changed == []
    assert table.delta_columns == ["accuracy", "n"]
    assert table.baseline is not None
    assert table.baseline.run_id == "base"


def test_a_baseline_outside_the_rows_still_counts_for_the_columns() -> None:
    outside = run("outside", minutes=0, c=5.0, metrics={"accuracy": 0.5})
    table = comparison(
        "exp-1",
        entries(run("a", minutes=1, c=1.0, metrics={"accuracy": 0.9})),
        metric="accuracy",
        baseline=entry(outside, EXPERIMENT_PARAMS),
    )
    assert table.param_columns == ["train.C"]
    assert table.rows[0].deltas == {"accuracy": 0.4}
    assert [r.run_id for r in table.rows] == ["a"]


def test_csv_reads_back_with_json_for_non_scalars_and_inert_formulas() -> None:
    base = run("base", minutes=0, c=0.1, metrics={"accuracy": 0.9})
    table = comparison(
        "exp-1",
        entries(
            base,
            run("b", minutes=1, c=1.0, metrics={"accuracy": 1.0, "cm": [[1, 0], [0, 1]]}),
            run("c", minutes=2, c=2.0, metrics={"accuracy": "=HYPERLINK(1)"}),
        ),
        metric="accuracy",
        baseline=entry(base, EXPERIMENT_PARAMS),
    )
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert list(rows[0]) == [
        "run_id",
        "state",
        "best",
        "param:train.C",
        "metric:accuracy",
        "metric:cm",
        "delta:accuracy",
    ]
    assert [r["run_id"] for r in rows] == ["b", "base", "c"]
    assert rows[0]["best"] == "true"
    assert rows[1]["best"] == "false"
    assert rows[0]["metric:cm"] == "[[1,0],[0,1]]"
    assert float(rows[0]["delta:accuracy"]) == 0.1
    assert rows[2]["metric:accuracy"] == "'=HYPERLINK(1)"
    assert rows[2]["delta:accuracy"] == ""
    assert rows[2]["param:train.C"] == "2.0"


def test_diff_names_exactly_the_stages_whose_lock_entries_changed() -> None:
    a = run("a", minutes=0, c=0.1, metrics={"accuracy": 0.9, "n": 45})
    b = run("b", minutes=1, c=1.0, metrics={"accuracy": 1.0, "n": 45})
    result = diff(*entries(a, b))
    changed = {s.stage: s for s in result.stages}
    assert list(changed) == ["train", "evaluate"]
    assert changed["train"].changed == ["params", "outs"]
    assert changed["train"].params == {"train.C": [0.1, 1.0]}
    assert changed["train"].outs == {"models/model.pkl": ["m-0.1", "m-1.0"]}
    assert changed["evaluate"].changed == ["deps"]
    assert result.unchanged_stages == ["prepare"]
    params = {p.key: p for p in result.params}
    assert not params["train.C"].same
    assert params["prepare.seed"].same
    metrics = {m.key: m for m in result.metrics}
    assert metrics["accuracy"].delta == 0.1
    assert metrics["n"].same
    assert result.notes == []


def test_diff_reports_a_stage_only_one_run_has_and_runs_without_a_lock() -> None:
    lock = stages(1.0, model="m-1.0")
    extra = {**lock, "report": {"deps": {}, "params": {}, "outs": {"r.html": "h"}}}
    a = run("a", minutes=0, c=1.0, lock=lock)
    b = run("b", minutes=1, c=1.0, lock=extra)
    result = diff(*entries(a, b))
    assert [(s.stage, s.only_in, s.changed) for s in result.stages] == [("report", "b", [])]
    assert result.unchanged_stages == ["prepare", "train", "evaluate"]

    failed = run("f", minutes=2, c=-1.0, state=RunState.FAILED)
    against_failed = diff(*entries(a, failed))
    assert against_failed.stages == []
    assert against_failed.notes == ["run f has no dvc.lock (failed): its stages are not compared"]
    assert {p.key: (p.a, p.b) for p in against_failed.params if not p.same} == {
        "train.C": (1.0, -1.0)
    }


def test_render_table_aligns_marks_the_best_and_cuts_long_values() -> None:
    base = run("base", minutes=0, c=0.1, metrics={"accuracy": 0.912345678})
    table = comparison(
        "exp-1",
        entries(
            base,
            run("b", minutes=1, c=1.0, metrics={"accuracy": 1, "label": "x" * 60}),
        ),
        metric="accuracy",
        baseline=entry(base, EXPERIMENT_PARAMS),
    )
    text = render_table(table.model_dump(mode="json"))
    lines = text.splitlines()
    assert lines[0] == "2 runs of exp-1, best first by accuracy (max), deltas against base"
    header, best, other = lines[1:]
    assert header.split() == ["run", "state", "train.C", "accuracy", "label", "Δaccuracy"]
    assert best.startswith("* b ")
    assert other.startswith("  base ")
    assert "0.91235" in other  # five significant digits
    assert "x" * 23 + "…" in best
    assert "x" * 25 not in best
    assert "+0.087654" in best
    # Aligned: each column starts at the same offset on every line.
    assert header.index("accuracy") == other.index("0.91235")
    assert header.index("label") == best.index("xxx")
    assert header.index("Δaccuracy") == best.index("+0.087654")


def test_render_pair_lists_differences_and_changed_stages() -> None:
    a = run("a", minutes=0, c=0.1, metrics={"accuracy": 0.9})
    b = run("b", minutes=1, c=1.0, metrics={"accuracy": 1.0})
    text = render_pair(diff(*entries(a, b)).model_dump(mode="json"))
    assert "params (2 the same, not shown):" in text
    assert "stages changed: train (params, outs), evaluate (deps)" in text
    assert "train: params train.C: 0.1 -> 1.0" in text
    assert "stages unchanged: prepare" in text
