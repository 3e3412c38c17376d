"""Live plots of local runs: ``GET /runs/{id}/plots`` while the run runs (issue 12).

Covers, through the real service (local executor, sandboxed stages, real git and DVC):
the ``training-curve`` template's curves grow while its run runs (two reads, more rows in
the second, ``live: true``), then are the rows of its commit (``live: false``, one per
epoch); and a stage that plants symlinks where its ``dvc.yaml`` declares plots (the file
itself, and a directory on the way) gets no rows from them -- nothing outside its work
dir is read -- while its ordinary plot file is read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.bundles import create, plot_row_count, small_parts, start, template_parts
from tests.support.service import RunningService
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

CURVE = "dvclive/plots/metrics/train/loss.tsv"
EPOCHS = 24
# Plants two symlinks out of its work dir where plots are declared, writes one honest plot
# file, then waits for ../gate (in the run's work dir, which its sandbox sees).
PLANTING_DVC = """\
stages:
  plant:
    cmd: >-
      python -c "import os, pathlib, time, yaml;
      p = yaml.safe_load(open('params.yaml'));
      os.symlink(p['secret'], 'evil.csv');
      os.symlink(p['outside'], 'linked');
      pathlib.Path('good.csv').write_text('step,v\\n0,1\\n1,2\\n');
      [time.sleep(0.05) for _ in iter(pathlib.Path('../gate').exists, True)]"
    params: [secret, outside]
plots:
  - evil.csv
  - linked/secret.csv
  - good.csv
"""


def test_a_training_curve_grows_while_its_run_runs(service: RunningService) -> None:
    experiment = create(service.http, template_parts("training-curve"))
    run_id = start(
        service.http,
        experiment["experiment_id"],
        **{"train.epochs": EPOCHS, "train.epoch_pause_seconds": 0.5},
    )
    first = wait_for(
        lambda: (seen := plot_row_count(service.http, run_id, CURVE))[0] >= 2 and seen,
        180,
        what="the first rows of the curve",
        max_interval=0.2,
    )
    assert first[1] is True  # live
    assert first[0] < EPOCHS
    second = wait_for(
        lambda: (seen := plot_row_count(service.http, run_id, CURVE))[0] > first[0] and seen,
        60,
        what="more rows of the curve",
        max_interval=0.2,
    )
    assert second[1] is True
    assert service.http.get(f"/runs/{run_id}").json()["state"] == "running"

    assert service.wait_run(run_id)["state"] == "succeeded"
    # The commit's rows, one per epoch.
    assert plot_row_count(service.http, run_id, CURVE) == (EPOCHS, False)


def test_symlinks_a_stage_plants_are_not_followed(service: RunningService, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.csv"
    secret.write_text("step,v\n0,314159\n")
    params = json.dumps({"secret": str(secret), "outside": str(outside)})
    experiment = create(service.http, small_parts(PLANTING_DVC, params))
    run_id = start(service.http, experiment["experiment_id"])
    gate = service.settings.work_dir / run_id / "gate"
    try:
        body = wait_for(
            lambda: (
                (b := service.http.get(f"/runs/{run_id}/plots").json())["live"]
                and b["plots"]
                and b["plots"][2]["data"]["good.csv"]["rows"]
                and b
            ),
            180,
            what="the stage's plot file",
            max_interval=0.2,
        )
        repo = service.settings.work_dir / run_id / "repo"
        assert (repo / "evil.csv").is_symlink()  # planted, and pointing out
        assert (repo / "linked").is_symlink()
        data = {file: d for plot in body["plots"] for file, d in plot["data"].items()}
        assert data["good.csv"]["rows"] == [{"step": 0, "v": 1}, {"step": 1, "v": 2}]
        for planted in ("evil.csv", "linked/secret.csv"):
            assert data[planted]["rows"] == []
            assert "not written yet" in data[planted]["error"]
        assert "314159" not in json.dumps(body)
    finally:
        gate.parent.mkdir(parents=True, exist_ok=True)
        gate.write_text("go")
    service.wait_run(run_id)
