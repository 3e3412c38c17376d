"""A local runner does nothing until the service has recorded it (crash safety, issue 8).

The runner waits for its start signal (the credentials line on stdin), which the
service writes only after storing the runner's handle. So a crash between starting a
runner and recording it leaves a runner that gets end of input and exits untouched,
and the restarted service starts the run again instead of failing or losing it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from controller import runner
from controller.adapters.store import Store
from controller.domain.models import Run, RunState, utcnow
from controller.domain.naming import new_id
from controller.settings import Settings
from tests.support.bundles import QUICK_DVC, create, small_parts
from tests.support.service import service_in_thread

pytestmark = pytest.mark.integration


def test_a_runner_without_its_start_signal_exits_untouched(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"run_id": "run-x", "branch": "runs/run-x", "repo_url": "/nope"}))
    work = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, runner.__file__, "--spec", str(spec), "--workdir", str(work),
         "--env-stdin"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == runner.NOT_STARTED, proc.stdout + proc.stderr
    assert "exiting untouched" in proc.stdout
    assert sorted(p.name for p in work.iterdir()) == []  # no clone, no status file


def test_a_run_left_running_without_a_handle_is_started_again(settings: Settings) -> None:
    with service_in_thread(settings) as service:
        experiment = create(service.http, small_parts(QUICK_DVC, "x: 1\n"))
    # What a crash between "running" and "handle recorded" leaves behind.
    store = Store(settings.db_path)
    try:
        run = Run(
            run_id=new_id("run"),
            experiment_id=str(experiment["experiment_id"]),
            owner="local",
            resource="local",
            namespace=None,
            params={"x": 5},
            state=RunState.RUNNING,
            created_at=utcnow(),
        )
        store.add_run(run)
        assert store.get_handle(run.run_id) is None
    finally:
        store.close()
    with service_in_thread(settings) as service:
        final = service.wait_run(run.run_id)
        log = service.http.get(f"/runs/{run.run_id}/logs").text
    assert final["state"] == "succeeded", log
    assert final["result"]["metrics"]["m.json"] == {"x": 5}  # type: ignore[index]
    assert "before the runner started; starting it" in log
