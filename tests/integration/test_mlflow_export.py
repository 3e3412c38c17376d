"""The MLflow export against a real ``mlflow server`` (PyPI ``mlflow``, SQLite backend, on
loopback), read back with MLflow's own client (``mlflow.tracking.MlflowClient``).

Covers: a finished local run as an MLflow run (every param the run used, its metrics,
the ``mlexp.*`` tags, status and start/end times), a failed run as FAILED, a repeated
export making no second run; a grid sweep as a parent run with its trials nested
(``mlflow.parentRunId``) and ended with the sweep; a promotion setting an alias on the
MLflow model version registered from the run, and tags on the run where none is
registered; MLflow unreachable (its port closed) not failing the run, the export retried
and landing once MLflow is back, counted in ``mlexp_mlflow_exports_total``.

One server for the module (it takes a minute to start); the service reaches it through a
forwarder on loopback that the test can close (connection refused) and open again.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.adapters.store import Store
from controller.metrics import MLFLOW_EXPORTS
from controller.settings import DeliverySettings, MlflowSettings, Settings, load_settings
from tests.support.bundles import FAILING_DVC, QUICK_DVC, create, small_parts, start
from tests.support.prereqs import require
from tests.support.service import RunningService, free_port, service_in_thread
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

MLFLOW = Path(sys.executable).parent / "mlflow"
TARGET = "mlflow:default"
QUICK_WITH_ARTIFACT = QUICK_DVC + "artifacts:\n  x-model:\n    path: m.json\n    type: model\n"


# -- the MLflow server and a port that can be closed -------------------------------------


@dataclass
class MlflowServer:
    url: str
    process: subprocess.Popen[bytes]


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    """The server and its workers (its own process group): TERM, then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            continue
        with suppress(ProcessLookupError):  # workers that outlived the parent
            os.killpg(process.pid, signal.SIGKILL)
        return


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    require(MLFLOW.is_file(), f"{MLFLOW} is not installed (the dev group's mlflow)")
    root = tmp_path_factory.mktemp("mlflow")
    (root / "artifacts").mkdir()
    port = free_port()
    log = (root / "server.log").open("ab")
    process = subprocess.Popen(
        [
            str(MLFLOW),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--default-artifact-root",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=root,
        # No job runner (huey workers): the export needs none of it.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # one group: the server, its uvicorn worker, its job runner
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: process.poll() is not None or _healthy(url),
            300,
            what="mlflow server to answer /health",
            max_interval=1.0,
        )
        if process.poll() is not None:
            raise AssertionError(f"mlflow server exited: {(root / 'server.log').read_text()}")
        yield MlflowServer(url, process)
    finally:
        _stop(process)
        log.close()


class Forwarder:
    """A loopback port forwarding to ``upstream``; :meth:`close` refuses connections and
    cuts those open (MLflow unreachable), :meth:`open` listens again on the same port."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def open(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        listener.settimeout(0.2)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            for sock in self._open:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            source.settimeout(None)
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


# -- the service, configured with MLflow ------------------------------------------------


@dataclass
class World:
    service: RunningService
    forwarder: Forwarder
    reader: Any  # mlflow.tracking.MlflowClient
    store: Store  # a second connection to the service's state, to read deliveries

    @property
    def http(self) -> httpx.Client:
        return self.service.http


@pytest.fixture(scope="module")
def world(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from mlflow.tracking import MlflowClient as MlflowReader

    tmp = tmp_path_factory.mktemp("mlflow-export")
    forwarder = Forwarder(int(mlflow_server.url.rsplit(":", 1)[1]))
    forwarder.open()
    settings: Settings = load_settings(
        data_dir=tmp / "data",
        config_file=tmp / "no-config.yaml",
        k8s_config_file=tmp / "no-k8s-config.yaml",
        max_upload_bytes=2 * 1024 * 1024,
        max_concurrent_runs=3,
        mlflow=MlflowSettings(
            tracking_uri=f"http://127.0.0.1:{forwarder.port}", timeout_seconds=60
        ),
        # A short retry policy: MLflow coming back is noticed within a second or two.
        deliveries=DeliverySettings(
            first_retry_seconds=0.3, max_retry_seconds=1.5, max_attempts=100
        ),
    )
    try:
        with service_in_thread(settings) as service:
            store = Store(settings.db_path)
            try:
                yield World(service, forwarder, MlflowReader(mlflow_server.url), store)
            finally:
                store.close()
    finally:
        forwarder.close()


def mlflow_runs(world: World, experiment_id: str, **tags: str) -> list[Any]:
    """MLflow runs of the service experiment's MLflow experiment with these tags."""
    experiment = world.reader.get_experiment_by_name(f"mlexp/{experiment_id}")
    if experiment is None:
        return []
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs: list[Any] = world.reader.search_runs([experiment.experiment_id], filter_string=where)
    return runs


def exported(world: World, experiment_id: str, run_id: str, status: str = "FINISHED") -> Any:
    """The run's MLflow run once its export has ended it."""

    def ended() -> Any:
        found = mlflow_runs(world, experiment_id, **{"mlexp.run_id": run_id})
        return found[0] if found and found[0].info.status == status else None

    return wait_for(ended, 120, what=f"run {run_id} in MLflow as {status}", max_interval=0.5)


def millis(iso: object) -> int:
    return int(datetime.fromisoformat(str(iso)).timestamp() * 1000)


def counted(outcome: str) -> float:
    value = MLFLOW_EXPORTS.labels(outcome=outcome)._value.get()
    return float(value)


def wait_run(world: World, run_id: str) -> dict[str, Any]:
    run: dict[str, Any] = world.service.wait_run(run_id)
    return run


# -- tests ------------------------------------------------------------------------------


def test_a_run_is_exported_with_params_metrics_tags_status_and_times(world: World) -> None:
    experiment = create(world.http, small_parts(QUICK_DVC, "x: 1\nlabel: wine\nopt:\n  lr: 0.1\n"))
    exp_id = str(experiment["experiment_id"])
    delivered_before = counted("delivered")
    run_id = start(world.http, exp_id, x=7)
    run = wait_run(world, run_id)
    assert run["state"] == "succeeded", world.http.get(f"/runs/{run_id}/logs").text

    mlflow_run = exported(world, exp_id, run_id)
    # Every param the run used (params.yaml with the override), flattened; metrics.
    assert mlflow_run.data.params == {"x": "7", "label": "wine", "opt.lr": "0.1"}
    assert mlflow_run.data.metrics == {"x": 7.0}
    tags = mlflow_run.data.tags
    result = run["result"]
    for key, value in {
        "mlexp.run_id": run_id,
        "mlexp.experiment_id": exp_id,
        "mlexp.git_url": result["git_url"],
        "mlexp.branch": result["branch"],
        "mlexp.commit": result["commit"],
        "mlexp.clone_command": result["clone_command"],
        "mlexp.resource": "local",
        "mlflow.runName": run_id,
        "mlflow.source.git.commit": result["commit"],
    }.items():
        assert tags.get(key) == value, key
    assert "mlflow.parentRunId" not in tags
    assert mlflow_run.info.run_name == run_id
    assert mlflow_run.info.start_time == millis(run["started_at"])
    assert mlflow_run.info.end_time == millis(run["finished_at"])

    # The delivery is recorded as delivered, and counted.
    (row,) = [r for r in world.store.list_deliveries(TARGET) if r.event_id.endswith(run_id)]
    wait_for(
        lambda: world.store.get_delivery(row.delivery_id).status == "delivered",  # type: ignore[union-attr]
        30,
        what="the delivery to be marked delivered",
    )
    assert counted("delivered") > delivered_before

    # Exported again (a retry after a lost answer): still one MLflow run, one metric point.
    delivery = world.store.get_delivery(row.delivery_id)
    assert delivery is not None
    export = _export(world)
    from controller.services.outbox import Delivery

    again = export.send(
        Delivery(
            delivery_id=delivery.delivery_id,
            target=TARGET,
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            payload=delivery.payload,
            attempts=1,
            created_at=datetime.now(),
        )
    )
    assert again.ok, again
    export.close()
    assert len(mlflow_runs(world, exp_id, **{"mlexp.run_id": run_id})) == 1
    assert len(world.reader.get_metric_history(mlflow_run.info.run_id, "x")) == 1


def _export(world: World) -> Any:
    """An export like the service's, on the test's own store connection."""
    from controller.adapters.mlflow import MlflowClient
    from controller.services.mlflow_export import MlflowExport
    from controller.services.outbox import Outbox, RetryPolicy

    settings = world.service.settings.mlflow
    assert settings is not None
    client = MlflowClient(settings.tracking_uri, timeout=60)
    return MlflowExport(settings, world.store, Outbox(world.store, RetryPolicy()), client)


def test_a_failed_run_is_a_failed_mlflow_run(world: World) -> None:
    experiment = create(world.http, small_parts(FAILING_DVC))
    exp_id = str(experiment["experiment_id"])
    run_id = start(world.http, exp_id)
    run = wait_run(world, run_id)
    assert run["state"] == "failed"
    mlflow_run = exported(world, exp_id, run_id, status="FAILED")
    assert mlflow_run.data.tags["mlexp.state"] == "failed"
    assert mlflow_run.data.tags["mlexp.reason"] == run["reason"][:8000]
    assert mlflow_run.info.end_time == millis(run["finished_at"])


def test_a_sweep_is_a_parent_run_with_its_trials_nested(world: World) -> None:
    experiment = create(world.http, small_parts(QUICK_DVC, "x: 0\n"))
    exp_id = str(experiment["experiment_id"])
    response = world.http.post(
        "/experiment/sweep",
        json={
            "experiment_id": exp_id,
            "grid": {"x": [1, 2, 3]},
            "max_parallel": 2,
            "objective": {"metric": "x", "goal": "max"},
        },
    )
    assert response.status_code == 202, response.text
    sweep_id = response.json()["sweep_id"]

    def sweep_ended() -> dict[str, Any] | None:
        view: dict[str, Any] = world.http.get(f"/sweeps/{sweep_id}").json()
        return view if view["state"] != "running" else None

    view = wait_for(sweep_ended, 300, what=f"sweep {sweep_id} to end", max_interval=0.5)
    assert view["state"] == "completed", view

    def parent_finished() -> Any:
        found = mlflow_runs(world, exp_id, **{"mlexp.sweep_id": sweep_id, "mlexp.kind": "sweep"})
        return found[0] if found and found[0].info.status == "FINISHED" else None

    parent = wait_for(parent_finished, 120, what="the sweep's parent run to end")
    assert len(mlflow_runs(world, exp_id, **{"mlexp.kind": "sweep"})) == 1
    assert parent.info.run_name == sweep_id
    assert parent.data.params["sweep.grid.x"] == "[1,2,3]"
    assert parent.data.params["sweep.max_parallel"] == "2"
    assert parent.data.metrics["best.x"] == 3.0
    assert parent.data.metrics["trials.succeeded"] == 3.0
    assert parent.data.tags["mlexp.best_run_id"] == view["best"]["run_id"]
    assert parent.data.tags["mlexp.state"] == "completed"

    trial_ids = {t["run_id"] for t in view["trials"]}
    for run_id in trial_ids:
        exported(world, exp_id, run_id)
    trials = mlflow_runs(world, exp_id, **{"mlexp.sweep_id": sweep_id, "mlexp.kind": "run"})
    assert {t.data.tags["mlexp.run_id"] for t in trials} == trial_ids
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {parent.info.run_id}
    assert sorted(t.data.metrics["x"] for t in trials) == [1.0, 2.0, 3.0]
    # MLflow's own view of nesting: the parent's children.
    children = world.reader.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert len(children) == 3


def test_a_promotion_sets_an_alias_or_tags_the_run(world: World) -> None:
    experiment = create(world.http, small_parts(QUICK_WITH_ARTIFACT))
    exp_id = str(experiment["experiment_id"])
    run_ids = [start(world.http, exp_id, x=x) for x in (1, 2)]
    for run_id in run_ids:
        assert wait_run(world, run_id)["state"] == "succeeded"
    first, second = (exported(world, exp_id, run_id) for run_id in run_ids)

    # A model registered in MLflow from the first run's MLflow run (as a user would).
    world.reader.create_registered_model("x-model-mlflow")
    version = world.reader.create_model_version(
        "x-model-mlflow", f"runs:/{first.info.run_id}/model", run_id=first.info.run_id
    )

    for run_id, semver, stage in ((run_ids[0], "v1.0.0", "prod"), (run_ids[1], "v2.0.0", "canary")):
        registered = world.http.post(
            f"/runs/{run_id}/register", json={"artifact": "x-model", "version": semver}
        )
        assert registered.status_code == 201, registered.text
        promoted = world.http.post(
            f"/experiments/{exp_id}/registry/x-model/promote",
            json={"version": semver, "stage": stage},
        )
        assert promoted.status_code == 201, promoted.text

    def aliased() -> Any:
        model = world.reader.get_registered_model("x-model-mlflow")
        return model if "prod" in model.aliases else None

    model = wait_for(aliased, 120, what="the alias 'prod' in MLflow")
    assert model.aliases == {"prod": version.version}
    assert world.reader.get_model_version_by_alias("x-model-mlflow", "prod").run_id == (
        first.info.run_id
    )

    # No MLflow model from the second run: its promotion is a tag on its run.
    def tagged() -> Any:
        run = world.reader.get_run(second.info.run_id)
        return run if run.data.tags.get("mlexp.model.x-model.stage") == "canary" else None

    run = wait_for(tagged, 120, what="the promotion tags on the second run")
    assert run.data.tags["mlexp.model.x-model.version"] == "v2.0.0"
    assert "canary" not in world.reader.get_registered_model("x-model-mlflow").aliases
    tags = world.reader.get_run(first.info.run_id).data.tags
    assert tags["mlexp.model.x-model.stage"] == "prod"
    assert tags["mlexp.model.x-model.version"] == "v1.0.0"


def test_mlflow_down_never_fails_a_run_and_the_export_lands_later(world: World) -> None:
    experiment = create(world.http, small_parts(QUICK_DVC))
    exp_id = str(experiment["experiment_id"])
    retried_before = counted("retried")
    world.forwarder.close()
    try:
        run_id = start(world.http, exp_id, x=5)
        run = wait_run(world, run_id)
        assert run["state"] == "succeeded"

        def failing_attempts() -> Any:
            rows = [r for r in world.store.list_deliveries(TARGET) if r.event_id.endswith(run_id)]
            return rows[0] if rows and rows[0].attempts >= 3 else None

        row = wait_for(failing_attempts, 60, what="export attempts while MLflow is down")
        assert row.status == "pending"
        assert row.last_error is not None
        assert "MLflow" in row.last_error
        assert counted("retried") >= retried_before + 3
        assert mlflow_runs(world, exp_id, **{"mlexp.run_id": run_id}) == []
    finally:
        world.forwarder.open()

    mlflow_run = exported(world, exp_id, run_id)
    assert mlflow_run.data.metrics == {"x": 5.0}
    wait_for(
        lambda: world.store.get_delivery(row.delivery_id).status == "delivered",  # type: ignore[union-attr]
        30,
        what="the delivery to be marked delivered",
    )
    assert json.loads(row.payload)["subject"] == run_id
