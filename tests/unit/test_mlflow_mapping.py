"""MLflow export, the pure part: a run's and a sweep's params, metrics and tags, status
mapping, times, the experiment name template, MLflow's batch limits and key rules, the
credentials header from the environment, how server answers are classified (retry or
not), and the ``mlflow`` settings section (a URI with credentials is refused unechoed)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from controller.adapters.mlflow import (
    MAX_ENTITIES_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VALUE_CHARS,
    MAX_PARAMS_PER_BATCH,
    MAX_TAG_VALUE_CHARS,
    MAX_TAGS_PER_BATCH,
    MlflowClient,
    MlflowRejected,
    MlflowUnavailable,
    alias_allowed,
    auth_headers,
    batches,
    mlflow_key,
    quoted,
)
from controller.domain.models import Run, RunResult, RunState
from controller.services.events import run_view
from controller.services.mlflow_export import (
    RUN_STATUS,
    SWEEP_STATUS,
    experiment_name,
    millis,
    plan_run,
    plan_sweep,
    promotion_tags,
    split_metrics,
)
from controller.settings import Settings

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
T1 = datetime(2026, 3, 1, 12, 5, 30, 250000, tzinfo=UTC)


def a_run(state: RunState = RunState.SUCCEEDED, **changes: Any) -> Run:
    result = RunResult(
        git_url="https://git.example.com/ml/wine.git",
        branch="runs/run-abc",
        commit="0123abcd" * 5,
        metrics={"m.json": {"acc": 0.9}},
        flat_metrics={"acc": 0.9, "n": 3, "ok": True, "note": "fine", "bad": None},
        params={"train.C": 0.5, "train.kernel": "rbf", "layers": [1, 2]},
        clone_command="git clone -b runs/run-abc https://git.example.com/ml/wine.git",
    )
    fields: dict[str, Any] = {
        "run_id": "run-abc",
        "experiment_id": "exp-1",
        "owner": "alice",
        "resource": "local",
        "namespace": None,
        "params": {"train.C": 0.5},
        "state": state,
        "created_at": T0,
        "started_at": T0,
        "finished_at": T1,
        "result": result if state is RunState.SUCCEEDED else None,
    }
    fields.update(changes)
    return Run(**fields)


def test_a_succeeded_run_maps_params_metrics_tags_times_and_status() -> None:
    run = a_run()
    assert run.result is not None
    plan = plan_run(run_view(run), run.owner, run.result.params)
    assert plan.name == "run-abc"
    assert plan.find == {"mlexp.run_id": "run-abc"}
    assert plan.status == "FINISHED"
    assert plan.start_ms == 1772366400000
    assert plan.end_ms == 1772366730250
    # Every param the run used, not only its overrides; non-strings as JSON.
    assert plan.params == {"train.C": "0.5", "train.kernel": "rbf", "layers": "[1,2]"}
    # Numbers are metrics (a flag is not a number); the rest become tags; None is dropped.
    assert plan.metrics == {"acc": 0.9, "n": 3.0}
    assert plan.tags["mlexp.metric.ok"] == "true"
    assert plan.tags["mlexp.metric.note"] == "fine"
    assert "mlexp.metric.bad" not in plan.tags
    for key, value in {
        "mlexp.run_id": "run-abc",
        "mlexp.experiment_id": "exp-1",
        "mlexp.git_url": "https://git.example.com/ml/wine.git",
        "mlexp.branch": "runs/run-abc",
        "mlexp.commit": "0123abcd" * 5,
        "mlexp.clone_command": "git clone -b runs/run-abc https://git.example.com/ml/wine.git",
        "mlexp.resource": "local",
        "mlexp.state": "succeeded",
        "mlexp.kind": "run",
        "mlflow.runName": "run-abc",
        "mlflow.user": "alice",
        "mlflow.source.git.commit": "0123abcd" * 5,
    }.items():
        assert plan.tags[key] == value, key
    assert "mlexp.namespace" not in plan.tags  # unset fields are not tagged
    assert "mlexp.sweep_id" not in plan.tags


def test_a_failed_run_without_result_keeps_its_overrides_and_reason() -> None:
    run = a_run(RunState.FAILED, reason="stage train failed", sweep_id="sweep-1")
    plan = plan_run(run_view(run), run.owner, None)
    assert plan.status == "FAILED"
    assert plan.params == {"train.C": "0.5"}
    assert plan.metrics == {}
    assert plan.tags["mlexp.reason"] == "stage train failed"
    assert plan.tags["mlexp.sweep_id"] == "sweep-1"
    assert "mlexp.commit" not in plan.tags


def test_a_run_cancelled_while_queued_starts_when_it_was_created() -> None:
    run = a_run(RunState.CANCELLED, started_at=None)
    plan = plan_run(run_view(run), run.owner, None)
    assert plan.status == "KILLED"
    assert plan.start_ms == millis(T0)


def test_status_mapping() -> None:
    assert RUN_STATUS == {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}
    assert SWEEP_STATUS == {
        "completed": "FINISHED",
        "stopped": "FINISHED",
        "cancelled": "KILLED",
        "failed": "FAILED",
    }


SWEEP_VIEW: dict[str, Any] = {
    "sweep_id": "sweep-9",
    "experiment_id": "exp-1",
    "owner": "alice",
    "state": "stopped",
    "reason": "run run-2 reached x = 6",
    "request": {
        "experiment_id": "exp-1",
        "resource": "local",
        "params": {"epochs": 3},
        "grid": {"x": [1, 2, 3]},
        "max_parallel": 2,
        "objective": {"metric": "x", "goal": "max"},
        "stop": None,
    },
    "total_trials": 3,
    "created_at": T0.isoformat(),
    "finished_at": T1.isoformat(),
    "counts": {"succeeded": 2, "cancelled": 1},
    "best": {"run_id": "run-2", "metric": "x", "value": 6.0},
}


def test_a_finished_sweep_is_an_ended_parent_run() -> None:
    plan = plan_sweep(SWEEP_VIEW, finished=True)
    assert plan.find == {"mlexp.sweep_id": "sweep-9", "mlexp.kind": "sweep"}
    assert plan.status == "FINISHED"
    assert (plan.start_ms, plan.end_ms) == (millis(T0), millis(T1))
    assert plan.params == {
        "sweep.resource": "local",
        "sweep.params.epochs": "3",
        "sweep.grid.x": "[1,2,3]",
        "sweep.max_parallel": "2",
        "sweep.objective.metric": "x",
        "sweep.objective.goal": "max",
    }
    assert plan.metrics == {"best.x": 6.0, "trials.succeeded": 2.0, "trials.cancelled": 1.0}
    assert plan.tags["mlexp.best_run_id"] == "run-2"
    assert plan.tags["mlexp.state"] == "stopped"
    assert plan.tags["mlexp.reason"] == "run run-2 reached x = 6"
    assert plan.tags["mlexp.kind"] == "sweep"


def test_a_running_sweep_parent_is_left_running_with_the_same_params() -> None:
    running = {**SWEEP_VIEW, "state": "running", "finished_at": None, "best": None}
    plan = plan_sweep(running, finished=False)
    assert plan.status is None
    assert plan.end_ms is None
    assert plan.metrics == {}
    assert "mlexp.state" not in plan.tags
    # Logged again when it finishes: MLflow refuses a param whose value changes.
    assert plan.params == plan_sweep(SWEEP_VIEW, finished=True).params


@pytest.mark.parametrize("state", ["completed", "stopped", "cancelled", "failed"])
def test_each_sweep_end_has_a_status(state: str) -> None:
    assert plan_sweep({**SWEEP_VIEW, "state": state}, finished=True).status == SWEEP_STATUS[state]


def test_experiment_name_template_and_promotion_tags() -> None:
    assert experiment_name("mlexp/{experiment_id}", "exp-1", "alice") == "mlexp/exp-1"
    assert experiment_name("{owner}/{experiment_id}", "exp-1", "alice") == "alice/exp-1"
    assert promotion_tags("wine-model", "prod", "v1.2.0") == {
        "mlexp.model.wine-model.stage": "prod",
        "mlexp.model.wine-model.version": "v1.2.0",
    }


def test_split_metrics_keeps_numbers_only() -> None:
    numbers, tags = split_metrics({"a": 1, "b": 2.5, "c": False, "d": {"error": "x"}})
    assert numbers == {"a": 1.0, "b": 2.5}
    assert tags == {"mlexp.metric.c": "false", "mlexp.metric.d": '{"error":"x"}'}


# -- MLflow's limits ------------------------------------------------------------------


def test_batches_respect_every_limit_and_lose_nothing() -> None:
    params = {f"p{i}": "v" * (MAX_PARAM_VALUE_CHARS + 10 if i == 0 else 5) for i in range(250)}
    metrics = {f"m{i}": float(i) for i in range(2100)}
    tags = {f"t{i}": "x" * (MAX_TAG_VALUE_CHARS + 1 if i == 0 else 1) for i in range(130)}
    out = batches(params, metrics, tags)
    for batch in out:
        assert len(batch.params) <= MAX_PARAMS_PER_BATCH
        assert len(batch.tags) <= MAX_TAGS_PER_BATCH
        assert len(batch.metrics) <= MAX_METRICS_PER_BATCH
        assert batch.size <= MAX_ENTITIES_PER_BATCH
    assert len(out) == 3  # 250 params need 3 calls; metrics fill the room left
    assert [k for b in out for k, _ in b.params] == list(params)
    assert [k for b in out for k, _ in b.metrics] == list(metrics)
    assert [k for b in out for k, _ in b.tags] == list(tags)
    first = dict(out[0].params)["p0"]
    assert len(first) == MAX_PARAM_VALUE_CHARS
    assert first.endswith("...")
    assert len(dict(out[0].tags)["t0"]) == MAX_TAG_VALUE_CHARS


def test_batches_drop_non_finite_metrics_and_nothing_makes_no_call() -> None:
    assert batches({}, {}, {}) == []
    (only,) = batches({}, {"a": math.nan, "b": math.inf, "c": 1.0}, {})
    assert only.metrics == [("c", 1.0)]


@given(
    st.integers(0, 400),
    st.integers(0, 3500),
    st.integers(0, 400),
)
def test_batches_property(n_params: int, n_metrics: int, n_tags: int) -> None:
    out = batches(
        {f"p{i}": "v" for i in range(n_params)},
        {f"m{i}": 1.0 for i in range(n_metrics)},
        {f"t{i}": "v" for i in range(n_tags)},
    )
    assert all(
        len(b.params) <= 100 and len(b.tags) <= 100 and len(b.metrics) <= 1000 and b.size <= 1000
        for b in out
    )
    assert all(b.size > 0 for b in out)
    assert sum(len(b.params) for b in out) == n_params
    assert sum(len(b.metrics) for b in out) == n_metrics
    assert sum(len(b.tags) for b in out) == n_tags


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("eval.json:accuracy", "eval.json:accuracy"),
        ("train/loss", "train/loss"),
        ("a[0]", "a_0_"),
        ("a//b", "a__b"),
        ("../x", "_.._x"),
        ("/abs", "_abs"),
        (".", "_."),
        ("", "_"),
        ("k" * 300, "k" * 250),
    ],
)
def test_keys_become_names_mlflow_accepts(key: str, expected: str) -> None:
    assert mlflow_key(key) == expected


def test_aliases_mlflow_accepts() -> None:
    assert alias_allowed("prod")
    assert alias_allowed("stag-ing_2")
    assert not alias_allowed("latest")
    assert not alias_allowed("Latest")
    assert not alias_allowed("v3")  # MLflow reserves version aliases
    assert not alias_allowed("a.b")


def test_search_values_are_ids_only() -> None:
    assert quoted("run-abc") == "'run-abc'"
    with pytest.raises(ValueError):
        quoted("x' or '1'='1")


# -- credentials and answers ----------------------------------------------------------


def test_credentials_come_from_mlflow_environment_variables() -> None:
    assert auth_headers({}) == {}
    assert auth_headers({"MLFLOW_TRACKING_TOKEN": "tok"}) == {"Authorization": "Bearer tok"}
    basic = auth_headers({"MLFLOW_TRACKING_USERNAME": "u", "MLFLOW_TRACKING_PASSWORD": "p"})
    assert basic == {"Authorization": "Basic dTpw"}


def client_answering(status: int, body: object = None, *, error: Exception | None = None) -> Any:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if error is not None:
            raise error
        return httpx.Response(status, json=body)

    client = MlflowClient(
        "http://mlflow.test/",
        environ={"MLFLOW_TRACKING_TOKEN": "canary-token-1234"},
        transport=httpx.MockTransport(handler),
    )
    return client, seen


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_server_errors_are_retried(status: int) -> None:
    client, _ = client_answering(status, {"error_code": "INTERNAL_ERROR"})
    with pytest.raises(MlflowUnavailable) as caught:
        client.end_run("r1", "FINISHED", 1)
    assert caught.value.retry
    assert caught.value.status == status


def test_no_answer_is_retried_and_says_nothing_of_the_credentials() -> None:
    client, _ = client_answering(0, error=httpx.ConnectError("connection refused"))
    with pytest.raises(MlflowUnavailable) as caught:
        client.experiment("mlexp/exp-1")
    assert caught.value.retry
    assert "canary" not in str(caught.value)


def test_client_errors_are_not_retried_and_are_short() -> None:
    client, seen = client_answering(
        400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "bad " * 200}
    )
    with pytest.raises(MlflowRejected) as caught:
        client.log("r1", params={"a": "1"})
    assert not caught.value.retry
    assert caught.value.code == "INVALID_PARAMETER_VALUE"
    assert len(str(caught.value)) <= 200
    assert seen[0].headers["Authorization"] == "Bearer canary-token-1234"
    assert seen[0].url.path == "/api/2.0/mlflow/runs/log-batch"


def test_a_missing_experiment_is_created() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path.endswith("get-by-name"):
            return httpx.Response(404, json={"error_code": "RESOURCE_DOES_NOT_EXIST"})
        return httpx.Response(200, json={"experiment_id": "7"})

    client = MlflowClient("http://mlflow.test", environ={}, transport=httpx.MockTransport(handler))
    assert client.experiment("mlexp/exp-1") == "7"
    assert client.experiment("mlexp/exp-1") == "7"  # remembered
    assert [c.rsplit("/", 1)[1] for c in calls] == ["get-by-name", "create"]


# -- settings -------------------------------------------------------------------------


def settings(**mlflow: object) -> Settings:
    return Settings(config_file="/nonexistent/server.yaml", mlflow=mlflow)  # type: ignore[arg-type]


def test_mlflow_settings_are_off_unless_set() -> None:
    assert Settings(config_file="/nonexistent/server.yaml").mlflow is None
    configured = settings(tracking_uri="http://127.0.0.1:5000")
    assert configured.mlflow is not None
    assert configured.mlflow.experiment_name == "mlexp/{experiment_id}"


@pytest.mark.parametrize(
    "uri", ["https://bot:canary-pass@mlflow.example.com", "https://canary-tok@h", "canary@h"]
)
def test_a_uri_with_credentials_is_refused_without_echoing_them(uri: str) -> None:
    with pytest.raises(ValidationError) as caught:
        settings(tracking_uri=uri)
    assert "canary" not in str(caught.value)
    assert "credentials" in str(caught.value)


@pytest.mark.parametrize("uri", ["file:///tmp/mlruns", "databricks", "http://h/?x=1"])
def test_other_uris_are_refused(uri: str) -> None:
    with pytest.raises(ValidationError):
        settings(tracking_uri=uri)


def test_unknown_template_placeholders_are_refused() -> None:
    with pytest.raises(ValidationError, match="experiment_name"):
        settings(tracking_uri="http://h", experiment_name="mlexp/{project}")
