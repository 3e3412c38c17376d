"""Results as data: what a succeeded run records, through the API over HTTP, for real.

Real local runs (git, DVC, the local executor) of: the sample workload (params with the
override, flat metrics, dvc.lock per stage, the confusion plot's rows); a bundle with two
metrics files and non-numeric metrics (``file:key`` prefixes, strings kept); a bundle with
top-level plots (a ``y`` mapping over a JSON and a YAML file, a TSV, a file DVC caches,
an image). ``GET /runs/{id}/plots`` is tenant-checked and empty for a run that failed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controller.settings import Settings
from tests.support.bundles import FAILING_DVC, sample_parts, small_parts
from tests.support.service import service_in_thread
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

TOKEN_A = "results-tenant-a-0123456789"
TOKEN_B = "results-tenant-b-9876543210"
MD5 = re.compile(r"^[0-9a-f]{32}(\.dir)?$")


@pytest.fixture
def tenants(settings: Settings, tmp_path: Path) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        f"tokens:\n  - {{token: {TOKEN_A}, name: tenant-a}}\n"
        f"  - {{token: {TOKEN_B}, name: tenant-b}}\n"
    )
    configured = settings.model_copy(update={"tokens_file": tokens})
    with service_in_thread(configured) as service:
        a, b = (
            httpx.Client(
                base_url=service.url, timeout=120, headers={"Authorization": f"Bearer {token}"}
            )
            for token in (TOKEN_A, TOKEN_B)
        )
        with a, b:
            yield a, b


def create(http: httpx.Client, parts: list[tuple[str, tuple[str, bytes]]]) -> dict[str, object]:
    response = http.post("/experiment/create", files=parts)
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


def run_to_end(http: httpx.Client, experiment_id: object, **params: object) -> dict[str, object]:
    response = http.post(
        "/experiment/run",
        json={"experiment_id": experiment_id, "resource": "local", "params": params},
    )
    assert response.status_code == 202, response.text
    run_id = response.json()["run_id"]

    def finished() -> dict[str, object] | None:
        run: dict[str, object] = http.get(f"/runs/{run_id}").json()
        return run if run["state"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(finished, 300, what=f"run {run_id} to finish", max_interval=0.5)


def succeeded(http: httpx.Client, run: dict[str, object]) -> dict[str, object]:
    log = http.get(f"/runs/{run['run_id']}/logs").text
    assert run["state"] == "succeeded", log
    result = run["result"]
    assert isinstance(result, dict)
    return result


def test_the_sample_run_records_params_metrics_stages_and_plot_rows(
    tenants: tuple[httpx.Client, httpx.Client],
) -> None:
    a, b = tenants
    experiment = create(a, sample_parts())
    assert experiment["plots"] == [
        {
            "id": "plots/confusion.csv",
            "files": ["plots/confusion.csv"],
            "x": "actual",
            "y": {"plots/confusion.csv": ["predicted"]},
            "template": "confusion",
            "title": None,
        }
    ]
    run = run_to_end(a, experiment["experiment_id"], **{"train.C": 0.5})
    result = succeeded(a, run)

    # Every parameter the run used, flattened; the override in place of params.yaml's 1.0.
    params = result["params"]
    assert params == {
        "prepare.test_size": 0.25,
        "prepare.seed": 42,
        "train.C": 0.5,
        "train.max_iter": 500,
    }
    flat = result["flat_metrics"]
    assert isinstance(flat, dict)
    assert set(flat) == {"accuracy", "f1_macro", "n_test"}
    accuracy = flat["accuracy"]
    assert isinstance(accuracy, float)
    assert 0.8 < accuracy <= 1.0
    assert flat["accuracy"] == result["metrics"]["metrics.json"]["accuracy"]  # type: ignore[index]

    # dvc.lock per stage: hashes of deps and outs, the params each stage read.
    stages = result["stages"]
    assert isinstance(stages, dict)
    assert set(stages) == {"prepare", "train", "evaluate"}
    assert stages["train"]["params"] == {"train.C": 0.5, "train.max_iter": 500}
    assert stages["prepare"]["params"] == {"prepare.seed": 42, "prepare.test_size": 0.25}
    assert set(stages["train"]["deps"]) == {"src/train.py", "data/prepared/train.csv"}
    assert set(stages["train"]["outs"]) == {"models/model.pkl"}
    assert set(stages["evaluate"]["outs"]) == {"metrics.json", "plots/confusion.csv"}
    for stage in stages.values():
        for digest in [*stage["deps"].values(), *stage["outs"].values()]:
            assert MD5.match(digest), stage
    # One file, two views of it: train's output is evaluate's input.
    assert (
        stages["train"]["outs"]["models/model.pkl"]
        == (stages["evaluate"]["deps"]["models/model.pkl"])
    )

    response = a.get(f"/runs/{run['run_id']}/plots")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["run_id"] == run["run_id"]
    (plot,) = body["plots"]
    assert (plot["id"], plot["x"], plot["y"], plot["template"]) == (
        "plots/confusion.csv",
        "actual",
        {"plots/confusion.csv": ["predicted"]},
        "confusion",
    )
    data = plot["data"]["plots/confusion.csv"]
    assert data["error"] is None
    rows = data["rows"]
    assert len(rows) == flat["n_test"]
    assert all(set(row) == {"actual", "predicted"} for row in rows)
    assert {row["actual"] for row in rows} == {"class_0", "class_1", "class_2"}
    # The rows are the run's: its accuracy is the share of rows predicted right.
    right = sum(row["actual"] == row["predicted"] for row in rows)
    assert round(right / len(rows), 6) == accuracy

    # Another tenant's run does not exist; neither does an unknown one.
    assert b.get(f"/runs/{run['run_id']}/plots").status_code == 404
    missing = a.get("/runs/run-does-not-exist/plots")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")


def test_a_run_that_did_not_succeed_has_no_plots(
    tenants: tuple[httpx.Client, httpx.Client],
) -> None:
    a, _ = tenants
    dvc_yaml = FAILING_DVC + "plots:\n  - never.csv\n"
    experiment = create(a, small_parts(dvc_yaml))
    run = run_to_end(a, experiment["experiment_id"])
    assert run["state"] == "failed"
    response = a.get(f"/runs/{run['run_id']}/plots")
    assert response.status_code == 200
    assert response.json() == {"run_id": run["run_id"], "plots": [], "live": False}


SCORE_PY = b"""\
import json, pathlib, yaml
x = yaml.safe_load(open("params.yaml"))["x"]
pathlib.Path("eval").mkdir(exist_ok=True)
json.dump({"accuracy": x / 10, "label": "good", "train": {"loss": 0.25, "ok": True}},
          open("metrics.json", "w"))
pathlib.Path("eval/scores.yaml").write_text("f1: 0.8\\nstatus: n/a\\nbest_epoch: 3\\n")
"""

SCORE_DVC = """\
stages:
  score:
    cmd: python src/score.py
    deps: [src/score.py]
    params: [x]
    metrics:
      - metrics.json: {cache: false}
      - eval/scores.yaml: {cache: false}
"""


def test_several_metrics_files_are_prefixed_and_non_numeric_metrics_kept(
    tenants: tuple[httpx.Client, httpx.Client],
) -> None:
    a, _ = tenants
    parts = [*small_parts(SCORE_DVC, "x: 1\n"), ("files", ("src/score.py", SCORE_PY))]
    experiment = create(a, parts)
    assert experiment["metrics_files"] == ["metrics.json", "eval/scores.yaml"]
    run = run_to_end(a, experiment["experiment_id"], x=7)
    result = succeeded(a, run)
    assert result["flat_metrics"] == {
        "metrics.json:accuracy": 0.7,
        "metrics.json:label": "good",
        "metrics.json:train.loss": 0.25,
        "metrics.json:train.ok": True,
        "eval/scores.yaml:f1": 0.8,
        "eval/scores.yaml:status": "n/a",
        "eval/scores.yaml:best_epoch": 3,
    }
    assert result["params"] == {"x": 7}
    stages = result["stages"]
    assert isinstance(stages, dict)
    assert list(stages) == ["score"]
    assert stages["score"]["params"] == {"x": 7}
    assert set(stages["score"]["outs"]) == {"metrics.json", "eval/scores.yaml"}
    assert all(MD5.match(d) for d in stages["score"]["outs"].values())
    # The experiment declares no plots: the answer is empty, not an error.
    plots = a.get(f"/runs/{run['run_id']}/plots")
    assert plots.status_code == 200
    assert plots.json()["plots"] == []


WRITE_PY = b"""\
import json, pathlib
pathlib.Path("eval").mkdir(exist_ok=True)
roc = [{"fpr": 0.0, "tpr": 0.0}, {"fpr": 0.5, "tpr": 0.9}, {"fpr": 1.0, "tpr": 1.0}]
json.dump({"meta": {"n": 3}, "roc": roc}, open("eval/train_roc.json", "w"))
pathlib.Path("eval/test_roc.yaml").write_text(
    "summary: [1, 2]\\n"
    "points:\\n"
    "  - {fpr: 0.0, tpr: 0.0, threshold: 1.0}\\n"
    "  - {fpr: 1.0, tpr: 1.0, threshold: .nan}\\n"
)
pathlib.Path("eval/loss.tsv").write_text("step\\tloss\\n1\\t0.9\\n2\\t0.4\\n")
pathlib.Path("eval/cached.csv").write_text("a,b\\n1,2\\n")
pathlib.Path("eval/importance.png").write_bytes(b"\\x89PNG\\r\\n\\x1a\\n")
"""

PLOTS_DVC = """\
plots:
  - ROC:
      x: fpr
      y:
        eval/train_roc.json: tpr
        eval/test_roc.yaml: [tpr, threshold]
      title: ROC
  - eval/loss.tsv:
      x: step
      y: loss
  - eval/cached.csv
stages:
  write:
    cmd: python src/write.py
    deps: [src/write.py]
    outs:
      - eval/train_roc.json: {cache: false}
      - eval/test_roc.yaml: {cache: false}
      - eval/loss.tsv: {cache: false}
      - eval/cached.csv
    plots:
      - eval/importance.png: {cache: false}
"""


def test_top_level_plots_with_a_y_mapping_over_json_and_yaml_files(
    tenants: tuple[httpx.Client, httpx.Client],
) -> None:
    a, _ = tenants
    parts = [*small_parts(PLOTS_DVC), ("files", ("src/write.py", WRITE_PY))]
    experiment = create(a, parts)
    declared = experiment["plots"]
    assert isinstance(declared, list)
    assert [p["id"] for p in declared] == [
        "ROC",
        "eval/loss.tsv",
        "eval/cached.csv",
        "eval/importance.png",
    ]
    assert declared[0]["files"] == ["eval/train_roc.json", "eval/test_roc.yaml"]
    run = run_to_end(a, experiment["experiment_id"])
    succeeded(a, run)

    response = a.get(f"/runs/{run['run_id']}/plots")
    assert response.status_code == 200, response.text
    roc, loss, cached, image = response.json()["plots"]

    assert (roc["id"], roc["x"], roc["title"]) == ("ROC", "fpr", "ROC")
    assert roc["y"] == {"eval/train_roc.json": ["tpr"], "eval/test_roc.yaml": ["tpr", "threshold"]}
    # JSON: the list inside the object; YAML: the list of objects, not the list of numbers.
    assert roc["data"]["eval/train_roc.json"]["rows"] == [
        {"fpr": 0.0, "tpr": 0.0},
        {"fpr": 0.5, "tpr": 0.9},
        {"fpr": 1.0, "tpr": 1.0},
    ]
    assert roc["data"]["eval/test_roc.yaml"]["rows"] == [
        {"fpr": 0.0, "tpr": 0.0, "threshold": 1.0},
        {"fpr": 1.0, "tpr": 1.0, "threshold": "NaN"},
    ]
    assert (loss["x"], loss["y"]) == ("step", {"eval/loss.tsv": ["loss"]})
    assert loss["data"]["eval/loss.tsv"]["rows"] == [
        {"step": 1, "loss": 0.9},
        {"step": 2, "loss": 0.4},
    ]
    # Cached by DVC: not in the run's commit, and the answer says so.
    assert cached["data"]["eval/cached.csv"]["rows"] == []
    assert "cache: false" in cached["data"]["eval/cached.csv"]["error"]
    assert image["data"]["eval/importance.png"]["image"] is True
