"""A published run's result: metrics files that cannot be read are warnings, never errors.

Whatever a run's metrics file holds (it is the run's own code that wrote it), building
the result does not raise: the file's entry says what is wrong and a warning names it.
"""

from __future__ import annotations

import pytest

from controller.domain.models import Run, RunState
from controller.planning.runs import MAX_LOCK_STAGES, run_result
from tests.support.records import experiment_record, run_record

EXPERIMENT = experiment_record(stages=["measure"], metrics_files=["metrics.json"], params={})


def run() -> Run:
    return run_record(state=RunState.RUNNING)


UNREADABLE = {
    "bad-date.yaml": "d: 2020-99-99\n",
    "bad-time.yaml": "t: 2020-01-01 25:61:61\n",
    "bad-tag.yaml": "x: !!float abc\n",
    "unclosed.json": '{"acc": 0.9',
    "deep.yaml": "[" * 500 + "]" * 500,
    "two-docs.yaml": "a: 1\n---\nb: 2\n",
}


@pytest.mark.parametrize(("path", "text"), sorted(UNREADABLE.items()))
def test_an_unreadable_metrics_file_is_a_warning(path: str, text: str) -> None:
    warnings: list[str] = []
    files = {path: text, "metrics.json": '{"acc": 0.9}', "eval/scores.yaml": "when: 2020-01-02\n"}
    result = run_result(
        run=run(), experiment=EXPERIMENT, commit="b" * 40, metrics_files=files, warnings=warnings
    )
    entry = result.metrics[path]
    assert isinstance(entry, dict)
    assert set(entry) == {"error"}
    assert len(warnings) == 1
    assert warnings[0].startswith(f"metrics file {path} could not be read: ")
    assert result.warnings == warnings  # the API shows them with the result
    # The readable ones are unaffected (a valid date becomes its ISO text).
    assert result.metrics["metrics.json"] == {"acc": 0.9}
    assert result.metrics["eval/scores.yaml"] == {"when": "2020-01-02"}


def test_readable_metrics_give_no_warning() -> None:
    warnings: list[str] = []
    result = run_result(
        run=run(),
        experiment=EXPERIMENT,
        commit="b" * 40,
        metrics_files={"metrics.json": '{"acc": 0.9, "loss": [0.5, 0.25]}'},
        warnings=warnings,
    )
    assert result.metrics == {"metrics.json": {"acc": 0.9, "loss": [0.5, 0.25]}}
    assert warnings == []


def lock(stage_count: int) -> str:
    entry = "    cmd: python s.py\n    deps:\n    - path: s.py\n      md5: {md5}\n"
    body = "".join(f"  s{i}:\n" + entry.format(md5=f"a{i:031x}") for i in range(stage_count))
    return "schema: '2.0'\nstages:\n" + body


def test_dvc_lock_is_kept_per_stage() -> None:
    result = run_result(
        run=run(), experiment=EXPERIMENT, commit="b" * 40, metrics_files={}, lock_text=lock(2)
    )
    assert result.stages == {
        "s0": {"deps": {"s.py": "a" + "0" * 31}, "params": {}, "outs": {}},
        "s1": {"deps": {"s.py": "a" + "0" * 30 + "1"}, "params": {}, "outs": {}},
    }
    assert result.warnings == []


def test_a_lock_past_the_stage_cap_is_left_out_with_a_warning() -> None:
    warnings: list[str] = []
    result = run_result(
        run=run(),
        experiment=EXPERIMENT,
        commit="b" * 40,
        metrics_files={},
        warnings=warnings,
        lock_text=lock(MAX_LOCK_STAGES + 1),
    )
    assert result.stages == {}
    assert warnings == result.warnings
    assert warnings[0].startswith(f"dvc.lock has {MAX_LOCK_STAGES + 1} stages")


def test_an_unreadable_lock_is_a_warning() -> None:
    result = run_result(
        run=run(), experiment=EXPERIMENT, commit="b" * 40, metrics_files={}, lock_text="{"
    )
    assert result.stages == {}
    assert result.warnings == ["dvc.lock could not be read: InvalidInput"]
