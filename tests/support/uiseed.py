"""An experiment with many runs, recorded straight into the store of a stopped service, for
the dashboard's 1,000-run test and its benchmark (bench/ui_render.py).

The experiment is created through the API (a service in this process, stopped again), then
its runs are added to the store directly: nine in ten succeeded, with a ``score`` metric and
an ``x`` param (50 values) and ``lr``; every tenth failed, with no result. Nothing may be
serving ``settings.data_dir`` meanwhile.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from controller.adapters.store import Store
from controller.domain.models import Run, RunResult, RunState
from controller.settings import Settings
from tests.support.bundles import create, small_parts
from tests.support.service import service_in_thread

__all__ = ["SEED_DVC", "seed_experiment"]

# The dashboard tests' bundle: a metric, a param that differs, a plot and an artifact (its
# stage never runs here: the runs are recorded, not run).
SEED_DVC = """\
stages:
  train:
    cmd: >-
      python -c "import yaml, json; p = yaml.safe_load(open('params.yaml')); x = p['x'];
      json.dump({'score': x * x, 'x': x}, open('m.json', 'w'));
      json.dump([{'step': i, 'loss': 1.0 / (i + x)} for i in range(10)], open('curve.json', 'w'))"
    params: [x]
    metrics:
      - m.json: {cache: false}
    plots:
      - curve.json: {cache: false, x: step, y: loss}
artifacts:
  x-model:
    path: m.json
    type: model
"""


def seed_experiment(settings: Settings, runs: int = 1000) -> str:
    """Create an experiment and record ``runs`` ended runs of it; its id."""
    with service_in_thread(settings) as service:
        experiment = create(service.http, small_parts(SEED_DVC, "x: 1\nlr: 0.1\n"))
    experiment_id = str(experiment["experiment_id"])
    store = Store(settings.db_path)  # the service is stopped: its store is ours
    try:
        base = datetime(2026, 1, 1, tzinfo=UTC)
        for i in range(runs):
            run_id = f"run-{experiment_id[-8:]}-{i:010d}"
            store.add_run(
                Run(
                    run_id=run_id,
                    experiment_id=experiment_id,
                    owner="local",
                    resource="local",
                    namespace=None,
                    params={"x": i % 50, "lr": 0.1},
                    state=RunState.SUCCEEDED if i % 10 else RunState.FAILED,
                    created_at=base + timedelta(seconds=i),
                    finished_at=base + timedelta(seconds=i + 5),
                    result=RunResult(
                        git_url="file:///nowhere",
                        branch=f"runs/{run_id}",
                        commit="a" * 40,
                        metrics={"m.json": {"score": i * 0.5, "x": i % 50}},
                        flat_metrics={"score": i * 0.5, "x": i % 50},
                        params={"x": i % 50, "lr": 0.1},
                        clone_command="git clone …",
                    )
                    if i % 10
                    else None,
                )
            )
    finally:
        store.close()
    return experiment_id
