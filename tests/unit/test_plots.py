"""Plots and artifacts as data: their definitions read from dvc.yaml, their rows from a run.

Covers parse_pipeline's ``plots`` and ``artifacts`` (top-level plots given by path, by id
with a ``y`` mapping, with an ``x`` mapping; stage plot outputs with x/y and ``wdir``;
interpolation; which definition wins; refusals and the ``plot_files`` limit), and
``read_rows``/``plot_rows`` for each format, the number rules, and the bounds.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping

import pytest

from controller.domain.errors import InvalidPipeline
from controller.domain.models import ArtifactSpec, PlotSpec
from controller.domain.pipeline import Limits, Pipeline, parse_pipeline
from controller.domain.pipeline.limits import Budget
from controller.domain.plots import MAX_ROWS, PlotRows, plot_rows, read_rows


def parse(text: str, params: Mapping[str, object] | None = None, **kwargs: object) -> Pipeline:
    budget = kwargs.get("budget")
    assert budget is None or isinstance(budget, Budget)
    return parse_pipeline(textwrap.dedent(text), files={}, params=params or {}, budget=budget)


def by_id(pipeline: Pipeline) -> dict[str, PlotSpec]:
    return {spec.id: spec for spec in pipeline.plots}


# -- definitions ---------------------------------------------------------------------


def test_top_level_plots_by_path_by_id_with_a_y_mapping_and_with_fields() -> None:
    pipeline = parse(
        """
        plots:
          - logs/loss.csv
          - ROC:
              x: fpr
              y:
                eval/train/roc.json: tpr
                ./eval/test/roc.json: [tpr, threshold]
              title: ROC curves
              template: simple
          - eval/hist.yaml:
              y: [a, b]
              template: bar_horizontal
          - eval/pr.json: {x: recall, y: precision}
        stages:
          a: {cmd: x}
        """
    )
    assert [spec.id for spec in pipeline.plots] == [
        "logs/loss.csv",
        "ROC",
        "eval/hist.yaml",
        "eval/pr.json",
    ]
    plots = by_id(pipeline)
    assert plots["logs/loss.csv"] == PlotSpec(
        id="logs/loss.csv", files=["logs/loss.csv"], y={"logs/loss.csv": []}
    )
    # With a y mapping the id is only a name; the files are its keys, normalised.
    assert plots["ROC"] == PlotSpec(
        id="ROC",
        files=["eval/train/roc.json", "eval/test/roc.json"],
        x="fpr",
        y={"eval/train/roc.json": ["tpr"], "eval/test/roc.json": ["tpr", "threshold"]},
        template="simple",
        title="ROC curves",
    )
    assert plots["eval/hist.yaml"].y == {"eval/hist.yaml": ["a", "b"]}
    assert plots["eval/hist.yaml"].template == "bar_horizontal"
    assert (plots["eval/pr.json"].x, plots["eval/pr.json"].y) == (
        "recall",
        {"eval/pr.json": ["precision"]},
    )
    assert pipeline.warnings == ()


def test_an_x_mapping_adds_its_files_and_different_x_fields_are_a_warning() -> None:
    pipeline = parse(
        """
        plots:
          - same:
              x: {a.csv: step, b.csv: step}
              y: {a.csv: loss, b.csv: loss}
          - mixed:
              x: {steps.csv: step, b.csv: epoch}
              y: {b.csv: acc}
        stages:
          a: {cmd: x}
        """
    )
    plots = by_id(pipeline)
    assert plots["same"].x == "step"
    assert plots["same"].files == ["a.csv", "b.csv"]
    # The x-only file is a data file too (its rows give the x values), with no y.
    assert plots["mixed"].files == ["b.csv", "steps.csv"]
    assert plots["mixed"].y == {"b.csv": ["acc"]}
    assert plots["mixed"].x == "step"
    assert len(pipeline.warnings) == 1
    assert "'mixed'" in pipeline.warnings[0]
    assert "step, epoch" in pipeline.warnings[0]


def test_stage_plots_keep_x_y_template_and_title_with_the_stage_wdir() -> None:
    pipeline = parse(
        """
        stages:
          evaluate:
            cmd: python eval.py
            wdir: eval
            plots:
              - confusion.csv: {cache: false, template: confusion, x: actual, y: predicted}
              - roc.json:
                  x: fpr
              - roc.json:
                  y: tpr
                  title: ROC
              - importance.png
        """
    )
    assert pipeline.plots == (
        PlotSpec(
            id="eval/confusion.csv",
            files=["eval/confusion.csv"],
            x="actual",
            y={"eval/confusion.csv": ["predicted"]},
            template="confusion",
        ),
        # One path listed twice merges its options, as the output does.
        PlotSpec(
            id="eval/roc.json",
            files=["eval/roc.json"],
            x="fpr",
            y={"eval/roc.json": ["tpr"]},
            title="ROC",
        ),
        PlotSpec(
            id="eval/importance.png", files=["eval/importance.png"], y={"eval/importance.png": []}
        ),
    )


def test_a_top_level_definition_wins_over_the_stage_plot_of_the_same_file() -> None:
    pipeline = parse(
        """
        plots:
          - roc.json: {x: fpr, y: tpr}
        stages:
          evaluate:
            cmd: e
            plots: [roc.json, other.csv]
        """
    )
    assert [spec.id for spec in pipeline.plots] == ["roc.json", "other.csv"]
    assert pipeline.plots[0].x == "fpr"


def test_the_sample_pipeline_declares_its_confusion_plot_and_model_artifact() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    params = {"prepare": {"test_size": 0.25, "seed": 42}, "train": {"C": 1.0, "max_iter": 500}}
    pipeline = parse_pipeline(
        (root / "client_ref.templ" / "dvc.yaml").read_text(), files={}, params=params
    )
    assert [(p.id, p.x, p.y, p.template) for p in pipeline.plots] == [
        (
            "plots/confusion.csv",
            "actual",
            {"plots/confusion.csv": ["predicted"]},
            "confusion",
        )
    ]


def test_plots_and_artifacts_are_interpolated_with_the_pipeline_variables() -> None:
    pipeline = parse(
        """
        vars:
          - out: results
        plots:
          - ${out}/loss.csv:
              x: ${x_field}
              y: {"${out}/loss.csv": "${y_field}"}
        artifacts:
          "${name}":
            path: ${out}/model.pkl
            type: model
            desc: the model
            labels: [sklearn, "${name}"]
            meta: {framework: sklearn}
          data:
            path: ./data/../data/raw
        stages:
          a: {cmd: x}
        """,
        params={"x_field": "step", "y_field": 3, "name": "wine-model"},
    )
    spec = pipeline.plots[0]
    # The id keeps the y mapping's meaning: a name (here, interpolated like a path).
    assert spec.id == "results/loss.csv"
    assert spec.x == "step"
    assert spec.y == {"results/loss.csv": ["3"]}
    assert dict(pipeline.artifacts) == {
        "wine-model": ArtifactSpec(
            path="results/model.pkl",
            type="model",
            desc="the model",
            labels=["sklearn", "wine-model"],
        ),
        "data": ArtifactSpec(path="data/raw"),
    }


def test_a_later_definition_of_an_id_replaces_the_earlier_one() -> None:
    pipeline = parse(
        """
        plots:
          - a.csv: {x: one}
          - b.csv
          - a.csv: {x: two}
        stages:
          s: {cmd: x}
        """
    )
    assert [(spec.id, spec.x) for spec in pipeline.plots] == [("a.csv", "two"), ("b.csv", None)]


REFUSED = [
    ("plots: [../up.csv]\n", "leaves the repository"),
    ("plots: [{p: {y: {/abs.json: v}}}]\n", "absolute path"),
    ("plots: [{p: {y: {.git/config: v}}}]\n", "reserved"),
    ("plots: [{p: {x: {../x.csv: s}, y: {a.csv: v}}}]\n", "leaves the repository"),
    ("plots: ['${missing}.csv']\n", "top-level 'plots'"),
    ("plots: [{a.csv: {y: '${lm}'}}]\n", "not a field name"),
    ("plots: [{a.csv: {x: '${l}'}}]\n", "not a field name"),
    ("plots: [.]\n", "whole repository"),
    ("artifacts: {m: {path: ../m.pkl}}\n", "artifact 'm'"),
    ("artifacts: {m: {path: '${l}'}}\n", "must have a string name and 'path'"),
    ("artifacts: {m: {path: m.pkl, labels: ['${m}']}}\n", "artifact 'm'"),
    ("artifacts: {m: {path: m.pkl, type: '${m}'}}\n", "not text"),
]


@pytest.mark.parametrize(("section", "fragment"), REFUSED)
def test_bad_plot_and_artifact_definitions_are_refused(section: str, fragment: str) -> None:
    with pytest.raises(InvalidPipeline) as caught:
        parse_pipeline(
            section + "stages:\n  a: {cmd: x}\n",
            files={},
            params={"l": [1, 2], "m": {"k": 1}, "lm": [{"k": 1}]},
        )
    assert fragment in caught.value.detail
    assert caught.value.detail.startswith("dvc.yaml: ")


def test_a_stage_plot_option_that_resolves_to_a_mapping_names_the_stage() -> None:
    with pytest.raises(InvalidPipeline) as caught:
        parse_pipeline(
            "stages:\n  a: {cmd: x, plots: [{p.csv: {x: '${m}'}}]}\n",
            files={},
            params={"m": {"k": 1}},
        )
    assert "stage 'a'" in caught.value.detail
    assert caught.value.stages == ["a"]


def test_plot_files_are_counted_against_the_budget() -> None:
    text = "plots:\n" + "".join(f"  - p{i}.csv\n" for i in range(3))
    text += "stages:\n  a: {cmd: x, plots: [q.csv]}\n"
    # 3 top-level + 1 stage plot = 4 files.
    assert len(parse(text, budget=Budget(Limits(plot_files=4))).plots) == 4
    with pytest.raises(InvalidPipeline) as caught:
        parse(text, budget=Budget(Limits(plot_files=3)))
    assert "'plot_files' limit" in caught.value.detail


# -- rows ----------------------------------------------------------------------------


def test_read_rows_csv_and_tsv_turn_numbers_into_numbers() -> None:
    text = "step,loss,name,big,odd\n1,0.5,a,1e3,1_000\n2,-.25,b,nan,٣\n"
    rows, total = read_rows("logs/loss.csv", text)
    assert total == 2
    assert rows == [
        {"step": 1, "loss": 0.5, "name": "a", "big": 1000.0, "odd": "1_000"},
        # NaN and other scripts' digits stay as written.
        {"step": 2, "loss": -0.25, "name": "b", "big": "nan", "odd": "٣"},
    ]
    rows, _ = read_rows("t.TSV", "actual\tpredicted\n0\t1\n")
    assert rows == [{"actual": 0, "predicted": 1}]


def test_read_rows_json_list_or_object_holding_lists_picks_the_one_with_the_fields() -> None:
    assert read_rows("p.json", '[{"x": 1, "y": 2}]') == ([{"x": 1, "y": 2}], 1)
    document = {
        "meta": {"note": "n"},
        "train": [{"epoch": 1, "loss": 0.9}],
        "nested": {"test": [{"fpr": 0.0, "tpr": 0.1, "threshold": "Infinity"}]},
    }
    text = json.dumps(document)
    # Without fields: the first list of objects; with them: the first that has them.
    assert read_rows("p.json", text)[0] == [{"epoch": 1, "loss": 0.9}]
    assert read_rows("p.json", text, ["fpr", "tpr"])[0] == document["nested"]["test"]  # type: ignore[index]
    # Fields nobody has: the first list all the same (a client sees what is there).
    assert read_rows("p.json", text, ["nope"])[0] == [{"epoch": 1, "loss": 0.9}]
    # Strings that look like numbers stay strings in JSON; NaN becomes a string.
    assert read_rows("p.json", '[{"a": "1", "b": NaN, "c": -Infinity}]')[0] == [
        {"a": "1", "b": "NaN", "c": "-Infinity"}
    ]


def test_read_rows_yaml() -> None:
    text = "points:\n  - {x: 1, y: 0.5, at: 2024-01-01}\n  - {x: 2, y: .inf}\n"
    for suffix in ("yaml", "yml"):
        rows, total = read_rows(f"p.{suffix}", text)
        assert total == 2
        assert rows == [{"x": 1, "y": 0.5, "at": "2024-01-01"}, {"x": 2, "y": "Infinity"}]


@pytest.mark.parametrize(
    ("path", "text", "fragment"),
    [
        ("p.json", "{not json", "not valid JSON"),
        ("p.json", '{"a": 1}', "no list of rows"),
        ("p.json", "[1, 2]", "no list of rows"),
        ("p.yaml", "a: [b: c", "p.yaml"),
        ("p.txt", "x", "unsupported plot format"),
        ("dvclive/plots/metrics", "x", "unsupported plot format"),
    ],
)
def test_read_rows_refuses_what_holds_no_rows(path: str, text: str, fragment: str) -> None:
    with pytest.raises(Exception, match=fragment):
        read_rows(path, text)


def test_rows_are_bounded_and_counted() -> None:
    csv_text = "i\n" + "".join(f"{i}\n" for i in range(MAX_ROWS + 5))
    rows, total = read_rows("big.csv", csv_text)
    assert (len(rows), total) == (MAX_ROWS, MAX_ROWS + 5)
    assert rows[-1] == {"i": MAX_ROWS - 1}
    json_text = json.dumps([{"i": i} for i in range(MAX_ROWS + 1)])
    rows, total = read_rows("big.json", json_text)
    assert (len(rows), total) == (MAX_ROWS, MAX_ROWS + 1)
    spec = PlotSpec(id="big.csv", files=["big.csv"], y={"big.csv": ["i"]})
    (plot,) = plot_rows([spec], {"big.csv": csv_text})
    assert plot["data"]["big.csv"]["truncated_from"] == MAX_ROWS + 5  # type: ignore[index,call-overload]


def test_the_total_kept_for_a_run_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import controller.domain.plots as plots

    monkeypatch.setattr(plots, "MAX_TOTAL_CHARS", 200)
    spec = PlotSpec(id="p", files=["a.csv", "b.csv"], y={"a.csv": [], "b.csv": []})
    text = "v\n" + "".join(f"{i}\n" for i in range(10))
    (plot,) = plot_rows([spec], {"a.csv": text, "b.csv": text})
    data = PlotRows.model_validate(plot).data
    assert len(data["a.csv"].rows) == 10
    assert data["b.csv"].rows == []
    assert "over 200 characters" in str(data["b.csv"].error)


def test_plot_rows_keeps_the_definition_and_reports_each_file() -> None:
    specs = [
        PlotSpec(
            id="ROC",
            files=["train.json", "test.json", "gone.csv"],
            x="fpr",
            y={"train.json": ["tpr"], "test.json": ["tpr"], "gone.csv": ["tpr"]},
            title="ROC",
        ),
        PlotSpec(id="importance.png", files=["importance.png"], y={"importance.png": []}),
    ]
    files = {
        "train.json": json.dumps({"roc": [{"fpr": 0, "tpr": 0.5}]}),
        "test.json": "{broken",
        "importance.png": "\ufffdPNG",
    }
    answer = plot_rows(specs, files)
    json.dumps(answer, allow_nan=False)  # plain JSON, as the API sends it
    roc, image = (PlotRows.model_validate(plot) for plot in answer)
    assert (roc.id, roc.x, roc.y["train.json"], roc.title) == ("ROC", "fpr", ["tpr"], "ROC")
    assert roc.data["train.json"].rows == [{"fpr": 0, "tpr": 0.5}]
    assert roc.data["train.json"].error is None
    assert roc.data["test.json"].rows == []
    assert "test.json: not valid JSON" in str(roc.data["test.json"].error)
    assert "not a file in the run's commit" in str(roc.data["gone.csv"].error)
    assert image.data["importance.png"].image is True
    assert image.data["importance.png"].rows == []
