"""Each project template, from ``mlexp init`` to a finished run, through the real service.

Covers: ``mlexp init DIR --template NAME``, then ``mlexp experiment create DIR`` (the
bundle as written, its ``src/`` posted with it) and ``mlexp run start ID --follow``
against the app over HTTP with real git, DVC and the local executor; the run succeeds,
``--follow`` prints one progress line per stage (``[stage i/n name] mm:ss``, on stderr,
the log on stdout); for ``training-curve``, ``GET /runs/{id}/plots`` has the loss and
accuracy curves with one row per epoch and ``result.flat_metrics`` the final accuracy.
The CLI runs in-process.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from controller import templates
from controller.cli import main
from tests.support.service import RunningService

pytestmark = pytest.mark.integration

PROGRESS = re.compile(r"\[stage (\d+)/(\d+) ([^\]\s]+)\] (\d+:)?\d\d:\d\d")
CURVES = "dvclive/plots/metrics"


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _run_template(
    service: RunningService, capsys: pytest.CaptureFixture[str], project: Path, name: str
) -> tuple[dict[str, object], dict[str, object], str]:
    """init, experiment create, run start --follow; the experiment, the run, stderr."""
    code, _, err = _cli(capsys, "init", str(project), "--template", name)
    assert code == 0, err
    url = service.url
    code, out, err = _cli(capsys, "--url", url, "--json", "experiment", "create", str(project))
    assert code == 0, err
    experiment: dict[str, object] = json.loads(out)
    code, out, err = _cli(
        capsys, "--url", url, "run", "start", str(experiment["experiment_id"]), "--follow"
    )
    assert code == 0, out + err
    found = re.search(r"^run (\S+): succeeded$", out, re.MULTILINE)
    assert found, out
    assert "Running stage '" in out  # the log, streamed on stdout
    run: dict[str, object] = service.http.get(f"/runs/{found[1]}").json()
    assert run["state"] == "succeeded"
    return experiment, run, err


def _progress_once_per_stage(err: str, stages: list[str]) -> None:
    lines = [line for line in err.splitlines() if line.startswith("[stage ")]
    assert len(lines) == len(stages), err
    shown = [PROGRESS.fullmatch(line) for line in lines]
    assert all(shown), lines
    assert [(int(m[1]), int(m[2]), m[3]) for m in shown if m] == [
        (number, len(stages), stage) for number, stage in enumerate(stages, start=1)
    ]


def test_sklearn_basic_runs_from_init_to_success(
    service: RunningService, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    experiment, run, err = _run_template(service, capsys, tmp_path / "wine", "sklearn-basic")
    assert experiment["stages"] == ["prepare", "train", "evaluate"]
    _progress_once_per_stage(err, ["prepare", "train", "evaluate"])
    result = run["result"]
    assert isinstance(result, dict)
    assert 0.8 < result["flat_metrics"]["accuracy"] <= 1.0


def test_training_curve_runs_and_its_curve_is_in_the_run_plots(
    service: RunningService, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    experiment, run, err = _run_template(service, capsys, tmp_path / "curve", "training-curve")
    assert experiment["stages"] == ["train"]
    _progress_once_per_stage(err, ["train"])
    epochs = yaml.safe_load(templates.get("training-curve").files["params.yaml"])["train"]["epochs"]

    response = service.http.get(f"/runs/{run['run_id']}/plots")
    assert response.status_code == 200, response.text
    plots = {plot["id"]: plot for plot in response.json()["plots"]}
    assert set(plots) == {"loss", "accuracy"}
    loss = plots["loss"]
    assert loss["x"] == "step"
    for split in ("train", "test"):
        rows = loss["data"][f"{CURVES}/{split}/loss.tsv"]["rows"]
        assert [row["step"] for row in rows] == list(range(epochs))  # one row per epoch
        assert all(isinstance(row["loss"], float) and row["loss"] > 0 for row in rows)
        assert rows[-1]["loss"] < rows[0]["loss"]  # it learns
    accuracy_rows = plots["accuracy"]["data"][f"{CURVES}/test/accuracy.tsv"]["rows"]
    assert len(accuracy_rows) == epochs

    result = run["result"]
    assert isinstance(result, dict)
    final = result["flat_metrics"]["test.accuracy"]
    assert final == accuracy_rows[-1]["accuracy"]
    assert 0.8 < final <= 1.0
    assert result["flat_metrics"]["step"] == epochs - 1
