"""Comparison over HTTP, on real local runs of the sample workload (git, DVC, scikit-learn).

One service with two tenants, shared by the module: tenant A runs the sample experiment
with three values of ``train.C`` and one that makes ``train`` fail, and a small
experiment whose metric is a string in one run. Covers: the table best first with
``train.C`` as the only differing param, the failed run last, a string metric last,
``state`` filtering, ``goal=min``, baseline deltas, CSV parsed back, ``/runs/compare``
naming ``train`` and ``evaluate`` but not ``prepare``, 404 for the other tenant, and
``mlexp compare`` / ``mlexp compare-runs`` output.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from controller.cli import main as mlexp
from controller.settings import load_settings
from tests.support.bundles import QUICK_DVC, create, sample_parts, small_parts, start
from tests.support.prereqs import require_tools
from tests.support.service import RunningService, service_in_thread
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

TOKEN_A = "compare-tenant-a-0123456789"
TOKEN_B = "compare-tenant-b-9876543210"
C_VALUES = (0.001, 1.0, 0.003)  # three accuracies on the wine data, submitted out of order


@dataclass
class World:
    service: RunningService
    a: httpx.Client
    b: httpx.Client
    experiment_id: str
    runs: dict[float, dict[str, Any]]  # train.C -> the finished run (C=-1.0: failed)
    quick_id: str
    quick_runs: dict[str, str]  # "number" / "text" -> run id


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_tools("git", "dvc")
    root = tmp_path_factory.mktemp("compare")
    tokens = root / "tokens.yaml"
    tokens.write_text(
        f"tokens:\n  - {{token: {TOKEN_A}, name: tenant-a}}\n"
        f"  - {{token: {TOKEN_B}, name: tenant-b}}\n"
    )
    settings = load_settings(
        data_dir=root / "data",
        config_file=root / "no-config.yaml",
        k8s_config_file=root / "no-k8s-config.yaml",
        tokens_file=tokens,
    )
    with service_in_thread(settings) as service:
        a = httpx.Client(base_url=service.url, timeout=120, headers=_bearer(TOKEN_A))
        b = httpx.Client(base_url=service.url, timeout=120, headers=_bearer(TOKEN_B))
        with a, b:
            experiment_id = str(create(a, sample_parts())["experiment_id"])
            ids = {c: start(a, experiment_id, **{"train.C": c}) for c in (*C_VALUES, -1.0)}
            quick_id = str(create(a, small_parts(QUICK_DVC, "x: 1\n"))["experiment_id"])
            quick_runs = {"number": start(a, quick_id, x=0.5), "text": start(a, quick_id, x="n/a")}
            runs = {c: _wait(a, run_id) for c, run_id in ids.items()}
            for run_id in quick_runs.values():
                assert _wait(a, run_id)["state"] == "succeeded"
            for c in C_VALUES:
                assert runs[c]["state"] == "succeeded", a.get(f"/runs/{ids[c]}/logs").text
            assert runs[-1.0]["state"] == "failed"
            yield World(service, a, b, experiment_id, runs, quick_id, quick_runs)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _wait(http: httpx.Client, run_id: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        run: dict[str, Any] = http.get(f"/runs/{run_id}").json()
        return run if run["state"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(finished, 300, what=f"run {run_id} to finish", max_interval=0.25)


def _accuracy(run: dict[str, Any]) -> float:
    value = run["result"]["flat_metrics"]["accuracy"]
    assert isinstance(value, float)
    return value


def _best_first(world: World) -> list[str]:
    """The succeeded runs by accuracy, best first; ties: earliest finished."""
    done = [world.runs[c] for c in C_VALUES]
    return [r["run_id"] for r in sorted(done, key=lambda r: (-_accuracy(r), r["finished_at"]))]


def compare(world: World, **query: Any) -> dict[str, Any]:
    response = world.a.get(f"/experiments/{world.experiment_id}/compare", params=query)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_rows_are_best_first_and_train_c_is_the_only_differing_param(world: World) -> None:
    assert len({_accuracy(world.runs[c]) for c in C_VALUES}) > 1, "C should change accuracy"
    table = compare(world, metric="accuracy", goal="max")
    failed = world.runs[-1.0]["run_id"]
    assert [r["run_id"] for r in table["rows"]] == [*_best_first(world), failed]
    assert table["param_columns"] == ["train.C"]
    assert table["metric_columns"][0] == "accuracy"
    assert {"f1_macro", "n_test"} <= set(table["metric_columns"])
    assert [r["best"] for r in table["rows"]] == [True, False, False, False]
    by_id = {r["run_id"]: r for r in table["rows"]}
    for c, run in world.runs.items():
        assert by_id[run["run_id"]]["params"] == {"train.C": c}
    assert by_id[failed]["state"] == "failed"
    assert by_id[failed]["metrics"] == {}

    worst_first = compare(world, metric="accuracy", goal="min", state="succeeded")
    assert [r["run_id"] for r in worst_first["rows"]] == _best_first_reversed(world)

    newest_first = compare(world, limit=2)
    assert [r["run_id"] for r in newest_first["rows"]] == [
        world.runs[-1.0]["run_id"],
        world.runs[C_VALUES[-1]]["run_id"],
    ]
    assert not any(r["best"] for r in newest_first["rows"])


def _best_first_reversed(world: World) -> list[str]:
    done = [world.runs[c] for c in C_VALUES]
    return [r["run_id"] for r in sorted(done, key=lambda r: (_accuracy(r), r["finished_at"]))]


def test_a_string_metric_sorts_last_without_error(world: World) -> None:
    response = world.a.get(f"/experiments/{world.quick_id}/compare", params={"metric": "x"})
    assert response.status_code == 200, response.text
    rows = response.json()["rows"]
    assert [r["run_id"] for r in rows] == [world.quick_runs["number"], world.quick_runs["text"]]
    assert [r["metrics"]["x"] for r in rows] == [0.5, "n/a"]
    assert [r["best"] for r in rows] == [True, False]
    csv_text = world.a.get(
        f"/experiments/{world.quick_id}/compare", params={"metric": "x", "format": "csv"}
    ).text
    assert [row["metric:x"] for row in csv.DictReader(io.StringIO(csv_text))] == ["0.5", "n/a"]


def test_baseline_adds_deltas_against_that_run(world: World) -> None:
    base = world.runs[0.001]
    table = compare(world, metric="accuracy", baseline=base["run_id"])
    assert table["baseline"]["run_id"] == base["run_id"]
    assert "accuracy" in table["delta_columns"]
    for row in table["rows"]:
        c = row["params"]["train.C"]
        if c == -1.0:
            assert "accuracy" not in row["deltas"]
        else:
            expected = _accuracy(world.runs[c]) - _accuracy(base)
            assert row["deltas"]["accuracy"] == pytest.approx(expected, abs=1e-9)
        assert row["changed"] == ([] if c == 0.001 else ["train.C"])

    missing = world.a.get(
        f"/experiments/{world.experiment_id}/compare", params={"baseline": "run-nope"}
    )
    assert missing.status_code == 404


def test_csv_reads_back_as_the_same_table(world: World) -> None:
    response = world.a.get(
        f"/experiments/{world.experiment_id}/compare",
        params={"metric": "accuracy", "format": "csv", "baseline": world.runs[1.0]["run_id"]},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    expected_name = f'filename="compare-{world.experiment_id}.csv"'
    assert expected_name in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    header = list(rows[0])
    assert header[:4] == ["run_id", "state", "best", "param:train.C"]
    assert "metric:accuracy" in header
    assert "delta:accuracy" in header
    table = compare(world, metric="accuracy", baseline=world.runs[1.0]["run_id"])
    assert [r["run_id"] for r in rows] == [r["run_id"] for r in table["rows"]]
    assert [r["best"] for r in rows] == ["true", "false", "false", "false"]
    for row in rows[:3]:
        c = float(row["param:train.C"])
        assert float(row["metric:accuracy"]) == _accuracy(world.runs[c])
    assert rows[3]["state"] == "failed"
    assert rows[3]["metric:accuracy"] == ""


def test_runs_compare_names_train_and_evaluate_but_not_prepare(world: World) -> None:
    a, b = world.runs[1.0], world.runs[0.001]
    response = world.a.get(
        "/runs/compare", params=[("run_id", a["run_id"]), ("run_id", b["run_id"])]
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert [s["run_id"] for s in result["runs"]] == [a["run_id"], b["run_id"]]
    stages = {s["stage"]: s for s in result["stages"]}
    assert set(stages) == {"train", "evaluate"}
    assert result["unchanged_stages"] == ["prepare"]
    assert "params" in stages["train"]["changed"]
    assert stages["train"]["params"] == {"train.C": [1.0, 0.001]}
    assert "models/model.pkl" in stages["train"]["outs"]
    assert "params" not in stages["evaluate"]["changed"]
    assert "models/model.pkl" in stages["evaluate"]["deps"]
    params = {p["key"]: p for p in result["params"]}
    assert not params["train.C"]["same"]
    assert params["prepare.seed"]["same"]
    accuracy = next(m for m in result["metrics"] if m["key"] == "accuracy")
    assert accuracy["delta"] == pytest.approx(_accuracy(b) - _accuracy(a), abs=1e-9)

    failed = world.runs[-1.0]["run_id"]
    with_failed = world.a.get("/runs/compare", params=[("run_id", a["run_id"]), ("run_id", failed)])
    assert with_failed.status_code == 200, with_failed.text
    assert with_failed.json()["stages"] == []
    assert failed in with_failed.json()["notes"][0]

    one = world.a.get("/runs/compare", params={"run_id": a["run_id"]})
    assert one.status_code == 422
    assert one.headers["content-type"].startswith("application/problem+json")


def test_another_tenant_gets_404(world: World) -> None:
    theirs = world.b.get(f"/experiments/{world.experiment_id}/compare")
    assert theirs.status_code == 404
    assert world.experiment_id not in str(world.b.get("/experiments").json())
    pair = [("run_id", world.runs[1.0]["run_id"]), ("run_id", world.runs[0.001]["run_id"])]
    assert world.b.get("/runs/compare", params=pair).status_code == 404
    # A's run as a baseline for A's own experiment, asked by B: still 404 (the experiment).
    as_baseline = world.b.get(
        f"/experiments/{world.experiment_id}/compare",
        params={"baseline": world.runs[1.0]["run_id"]},
    )
    assert as_baseline.status_code == 404


def test_cli_prints_an_aligned_table_and_the_changed_stages(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--url", world.service.url, "--token", TOKEN_A]
    assert mlexp([*common, "compare", world.experiment_id, "--metric", "accuracy"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"4 runs of {world.experiment_id}, best first by accuracy (max)"
    header = lines[1]
    assert header.split()[:3] == ["run", "state", "train.C"]
    best, *_, failed = lines[2:]
    assert best.startswith(f"* {_best_first(world)[0]} ")
    assert failed.startswith(f"  {world.runs[-1.0]['run_id']} ")
    best_run = next(r for r in world.runs.values() if r["run_id"] == _best_first(world)[0])
    column = header.index("accuracy")
    assert best[column:].startswith(f"{_accuracy(best_run):.5g} ")
    assert failed.split()[1:3] == ["failed", "-1"]

    a, b = world.runs[1.0]["run_id"], world.runs[0.003]["run_id"]
    assert mlexp([*common, "compare-runs", a, b]) == 0
    out = capsys.readouterr().out
    assert "stages changed: train (params, outs), evaluate (" in out
    assert "train: params train.C: 1.0 -> 0.003" in out
    assert "stages unchanged: prepare" in out
