"""A run's outcome is its publication, and a run leaves no work dir behind.

Covers: metrics that cannot be parsed (``d: 2020-99-99``) are a warning on a succeeded
run, at the end of a followed run and when a restarted service settles it; a runner
that reports a failure although its branch was pushed has succeeded; a wait on the
runner that fails does not lose the run; the work dir is removed after success,
failure, cancel, a failing wait and a restart (and kept with ``keep_workdirs``).
Failures are injected by wrapping the real local executor; everything else is real.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from controller.executors import Handle, Outcome
from controller.executors.local import LocalExecutor
from controller.settings import Settings, load_settings
from tests.support.bundles import FAILING_DVC, QUICK_DVC, SLEEPY_DVC, create, small_parts, start
from tests.support.prereqs import require_tools
from tests.support.service import RunningService, service_in_thread
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

# A metrics file whose date YAML cannot construct (month 99), beside one that is fine.
BAD_METRICS_DVC = """\
stages:
  measure:
    cmd: >-
      python -c "import pathlib;
      pathlib.Path('bad.yaml').write_text('d: 2020-99-99\\nacc: 0.5\\n');
      pathlib.Path('good.json').write_text('{\\"acc\\": 0.75}')"
    metrics:
      - bad.yaml: {cache: false}
      - good.json: {cache: false}
"""
# Waits for ../gate (in its work dir, which its sandbox sees), then writes the bad metrics.
GATED_BAD_METRICS_DVC = """\
stages:
  measure:
    cmd: >-
      python -c "import pathlib, time;
      pathlib.Path('started').write_text('x');
      [time.sleep(0.05) for _ in iter(pathlib.Path('../gate').exists, True)];
      pathlib.Path('bad.yaml').write_text('d: 2020-99-99\\n')"
    metrics:
      - bad.yaml: {cache: false}
"""


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data",
        config_file=tmp_path / "no-config.yaml",
        k8s_config_file=tmp_path / "no-k8s-config.yaml",
        **overrides,
    )


def _heads(git_url: object) -> str:
    return subprocess.run(
        ["git", "ls-remote", "--heads", str(git_url)], capture_output=True, text=True, check=True
    ).stdout


def _gone(path: Path, what: str) -> None:
    wait_for(lambda: not path.exists(), 30, what=f"the work dir of {what} to be removed")


def test_unparseable_metrics_are_a_warning_on_a_succeeded_run(service: RunningService) -> None:
    experiment = create(service.http, small_parts(BAD_METRICS_DVC))
    run_id = start(service.http, experiment["experiment_id"])
    run = service.wait_run(run_id)
    log = service.http.get(f"/runs/{run_id}/logs").text
    assert run["state"] == "succeeded", (run, log[-2000:])
    result = run["result"]
    assert isinstance(result, dict)
    assert result["metrics"]["good.json"] == {"acc": 0.75}
    assert "error" in result["metrics"]["bad.yaml"]
    assert "warning: metrics file bad.yaml could not be read" in log
    assert f"refs/heads/runs/{run_id}" in _heads(experiment["git_url"])
    _gone(service.settings.work_dir / run_id, "a run with bad metrics")


def test_work_dirs_are_removed_after_success_failure_and_cancel(service: RunningService) -> None:
    work = service.settings.work_dir
    quick = create(service.http, small_parts(QUICK_DVC))
    succeeded = start(service.http, quick["experiment_id"])
    failing = create(service.http, small_parts(FAILING_DVC))
    failed = start(service.http, failing["experiment_id"])
    assert service.wait_run(succeeded)["state"] == "succeeded"
    assert service.wait_run(failed)["state"] == "failed"
    _gone(work / succeeded, "a succeeded run")
    _gone(work / failed, "a failed run")

    sleepy = create(service.http, small_parts(SLEEPY_DVC))
    cancelled = start(service.http, sleepy["experiment_id"])
    wait_for(lambda: (work / cancelled / "repo" / "started").exists(), 120, what="the stage")
    stopped = service.http.post(f"/runs/{cancelled}/cancel", params={"wait": "true"})
    assert stopped.json()["state"] == "cancelled"
    _gone(work / cancelled, "a cancelled run")
    # The runner ended on SIGTERM the way it ends a failed step: its log says so.
    assert "the runner was stopped (SIGTERM)" in service.http.get(f"/runs/{cancelled}/logs").text


def test_keep_workdirs_keeps_them(tmp_path: Path) -> None:
    require_tools("git")
    with service_in_thread(_settings(tmp_path, keep_workdirs=True)) as service:
        experiment = create(service.http, small_parts(QUICK_DVC))
        run_id = start(service.http, experiment["experiment_id"])
        assert service.wait_run(run_id)["state"] == "succeeded"
        assert (service.settings.work_dir / run_id / "status.json").is_file()


def test_a_failing_wait_does_not_lose_a_run(
    service: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_wait = LocalExecutor.wait

    def wait_then_fail(self: LocalExecutor, handle: Handle) -> Outcome:
        real_wait(self, handle)  # the runner ends (and publishes); following it then fails
        raise RuntimeError("injected: following the runner failed")

    monkeypatch.setattr(LocalExecutor, "wait", wait_then_fail)
    experiment = create(service.http, small_parts(QUICK_DVC, "x: 3\n"))
    run_id = start(service.http, experiment["experiment_id"])
    run = service.wait_run(run_id)
    assert run["state"] == "succeeded", run
    assert run["result"]["metrics"]["m.json"] == {"x": 3}  # type: ignore[index]
    _gone(service.settings.work_dir / run_id, "a run whose wait failed")


def test_a_published_run_succeeds_whatever_its_runner_reported(
    service: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_wait = LocalExecutor.wait

    def wait_and_misreport(self: LocalExecutor, handle: Handle) -> Outcome:
        real_wait(self, handle)
        return Outcome("failed", reason="injected: the runner said it failed")

    monkeypatch.setattr(LocalExecutor, "wait", wait_and_misreport)
    experiment = create(service.http, small_parts(QUICK_DVC, "x: 4\n"))
    run_id = start(service.http, experiment["experiment_id"])
    run = service.wait_run(run_id)
    assert run["state"] == "succeeded", run
    result = run["result"]
    assert isinstance(result, dict)
    assert result["branch"] == f"runs/{run_id}"
    assert result["metrics"]["m.json"] == {"x": 4}
    assert f"{result['commit']}\trefs/heads/runs/{run_id}" in _heads(experiment["git_url"])
    log = service.http.get(f"/runs/{run_id}/logs").text
    assert "injected: the runner said it failed" in log
    assert "was published: the run succeeded" in log


def test_a_failed_run_that_published_nothing_stays_failed(service: RunningService) -> None:
    experiment = create(service.http, small_parts(FAILING_DVC))
    run_id = start(service.http, experiment["experiment_id"])
    run = service.wait_run(run_id)
    assert run["state"] == "failed"
    assert "dvc repro" in str(run["reason"])
    assert run_id not in _heads(experiment["git_url"])


def test_a_restart_settles_a_run_with_bad_metrics_and_removes_its_work_dir(
    tmp_path: Path,
) -> None:
    require_tools("git")
    restartable = _settings(tmp_path)
    with service_in_thread(restartable) as service:
        experiment = create(service.http, small_parts(GATED_BAD_METRICS_DVC))
        run_id = start(service.http, experiment["experiment_id"])
        workdir = service.settings.work_dir / run_id
        try:
            wait_for(lambda: (workdir / "repo" / "started").exists(), 120, what="the stage")
        except BaseException:
            (workdir / "gate").touch()  # no runner outlives the test
            raise
    # The service has stopped; its runner goes on, and ends before the next start.
    (workdir / "gate").touch()
    wait_for(
        lambda: '"succeeded"' in (workdir / "status.json").read_text(),
        120,
        what="the runner to finish while the service is down",
    )
    with service_in_thread(restartable) as service:
        run = service.wait_run(run_id, timeout=60)
        log = service.http.get(f"/runs/{run_id}/logs").text
        assert run["state"] == "succeeded", (run, log[-2000:])
        assert "error" in run["result"]["metrics"]["bad.yaml"]  # type: ignore[index]
        assert "warning: metrics file bad.yaml could not be read" in log
        _gone(workdir, "a run settled after a restart")
