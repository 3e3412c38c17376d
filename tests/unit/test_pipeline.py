"""parse_pipeline: dvc.yaml read as DVC 3 reads it, and the stage graph checked.

Covers the accepted features (vars, interpolation, foreach, matrix, wdir,
params files, output options, top-level sections), every refusal with the
stages it names, warnings, and the DAG properties (order is topological, a
back edge is always reported as a cycle).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.domain.errors import InvalidPipeline
from controller.domain.pipeline import Output, Pipeline, Stage, parse_pipeline


def parse(
    text: str,
    *,
    files: Mapping[str, bytes] | None = None,
    params: Mapping[str, object] | None = None,
) -> Pipeline:
    return parse_pipeline(textwrap.dedent(text), files=files or {}, params=params or {})


def refusal(
    text: str,
    *,
    files: Mapping[str, bytes] | None = None,
    params: Mapping[str, object] | None = None,
) -> InvalidPipeline:
    with pytest.raises(InvalidPipeline) as caught:
        parse(text, files=files, params=params)
    return caught.value


REALISTIC = """
    stages:
      prepare:
        desc: Split the wine data set
        cmd: python src/prepare.py
        deps:
          - src/prepare.py
        params:
          - prepare.test_size
          - prepare.seed
        outs:
          - data/prepared
      train:
        cmd: python src/train.py data/prepared models/model.pkl
        deps:
          - src/train.py
          - data/prepared
        params:
          - train
        outs:
          - models/model.pkl:
              desc: the fitted classifier
              type: model
              labels: [sklearn]
              meta: {framework: sklearn}
              push: true
      evaluate:
        cmd: python src/evaluate.py models/model.pkl data/prepared
        deps:
          - src/evaluate.py
          - models/model.pkl
          - data/prepared
        metrics:
          - eval/metrics.json:
              cache: false
        plots:
          - eval/confusion.csv:
              cache: false
              template: confusion
              x: actual
              y: predicted
              title: Confusion matrix
              x_label: true class
              y_label: predicted class
          - eval/importance.png:
              cache: false
    metrics:
      - eval/summary.json
    plots:
      - eval/importance.png
      - ROC:
          x: fpr
          y:
            eval/roc.csv: tpr
          title: ROC curve
      - eval/confusion.csv:
          template: confusion
    params:
      - params.yaml
    artifacts:
      wine-classifier:
        path: models/model.pkl
        type: model
        desc: wine quality
    """
REALISTIC_PARAMS = {"prepare": {"test_size": 0.25, "seed": 7}, "train": {"C": 1.0}}
SOURCES = {f"src/{name}.py": b"" for name in ("prepare", "train", "evaluate")}


def test_realistic_pipeline_parses_in_order_with_its_metrics() -> None:
    pipeline = parse(REALISTIC, files=SOURCES, params=REALISTIC_PARAMS)

    assert pipeline.order == ("prepare", "train", "evaluate")
    assert pipeline.metrics_files == ("eval/metrics.json", "eval/summary.json")
    assert pipeline.warnings == ()
    evaluate = pipeline.stages["evaluate"]
    assert evaluate == Stage(
        name="evaluate",
        cmd=("python src/evaluate.py models/model.pkl data/prepared",),
        wdir=".",
        deps=("src/evaluate.py", "models/model.pkl", "data/prepared"),
        outs=(
            Output("eval/metrics.json", "metrics", cache=False),
            Output("eval/confusion.csv", "plots", cache=False),
            Output("eval/importance.png", "plots", cache=False),
        ),
        params=(),
        frozen=False,
        always_changed=False,
    )
    assert pipeline.stages["train"].outs == (Output("models/model.pkl", "outs", cache=True),)
    # A whole mapping as a key ("train") is one parameter; DVC tracks its subtree.
    assert pipeline.stages["train"].params == (("params.yaml", "train"),)
    assert pipeline.stages["prepare"].params == (
        ("params.yaml", "prepare.test_size"),
        ("params.yaml", "prepare.seed"),
    )


def test_stages_free_to_run_keep_dvc_yaml_order_and_producers_go_first() -> None:
    pipeline = parse(
        """
        stages:
          report: {cmd: make report, deps: [b.txt, a.txt]}
          make-b: {cmd: make b, outs: [b.txt]}
          make-a: {cmd: make a, outs: [a.txt]}
          unrelated: {cmd: echo hi}
        """
    )
    assert pipeline.order == ("make-b", "make-a", "report", "unrelated")


def test_directory_dependencies_and_outputs_link_stages_both_ways() -> None:
    pipeline = parse(
        """
        stages:
          use-file: {cmd: a, deps: [data/prepared/train.csv]}
          use-dir: {cmd: b, deps: [data]}
          produce: {cmd: c, outs: [data/prepared]}
        """
    )
    assert pipeline.order == ("produce", "use-file", "use-dir")


def test_vars_inline_files_and_key_selection_feed_interpolation() -> None:
    pipeline = parse(
        """
        vars:
          - model: {name: svm, layers: [{units: 8}, {units: 16}]}
          - config/data.yaml:split,columns
          - config/extra.json
        stages:
          train:
            vars:
              - local.yaml
            cmd: >-
              python train.py ${model.name} ${model.layers[1].units} ${model.layers.0.units}
              ${split.test} ${columns[0]} ${extra} ${lr} ${threshold} ${fast} \\${literal}
        """,
        files={
            "config/data.yaml": b"split: {test: 0.2}\ncolumns: [a, b]\nignored: [1, 2]\n",
            "config/extra.json": b'{"extra": "E"}',
            "local.yaml": b"threshold: 0.5\n",
        },
        params={"lr": 0.01, "fast": True},
    )
    assert pipeline.stages["train"].cmd == (
        "python train.py svm 16 8 0.2 a E 0.01 0.5 true ${literal}",
    )


def test_selected_keys_of_a_vars_file_are_all_that_is_loaded() -> None:
    error = refusal(
        """
        vars:
          - conf.yaml:a
        stages:
          s: {cmd: "echo ${b}"}
        """,
        files={"conf.yaml": b"a: 1\nb: 2\n"},
    )
    assert error.stages == ["s"]
    assert "undefined name 'b'" in error.detail


def test_whole_value_interpolation_keeps_the_type() -> None:
    pipeline = parse(
        """
        vars:
          - sizes: [1, 2.5, true]
        stages:
          run:
            foreach: ${sizes}
            do:
              cmd: echo ${item}
        """
    )
    # DVC names a boolean that came through ${...} with str(): "True", while
    # ${item} in a field renders it as "true".
    assert list(pipeline.stages) == ["run@1", "run@2.5", "run@True"]
    assert pipeline.stages["run@True"].cmd == ("echo true",)
    # A number where a path belongs shows the type was kept, not stringified.
    error = refusal(
        """
        vars: [{n: 5}]
        stages:
          s: {cmd: echo, deps: ["${n}"]}
        """
    )
    assert error.stages == ["s"]
    assert "resolved to int" in error.detail


def test_a_mapping_in_cmd_becomes_command_line_arguments() -> None:
    pipeline = parse(
        """
        stages:
          train:
            cmd: python train.py ${train}
        """,
        params={"train": {"lr": 0.1, "name": "a b", "fast": True, "slow": False, "dims": [1, 2]}},
    )
    assert pipeline.stages["train"].cmd == (
        "python train.py --lr 0.1 --name 'a b' --fast --dims 1 2",
    )


def test_foreach_over_a_list_of_scalars_names_stages_by_value() -> None:
    pipeline = parse(
        """
        stages:
          build:
            foreach: [us, eu]
            do:
              cmd: make ${item}
              outs:
                - out/${item}.bin
        """
    )
    assert pipeline.order == ("build@us", "build@eu")
    assert pipeline.stages["build@eu"].cmd == ("make eu",)
    assert pipeline.stages["build@eu"].outs == (Output("out/eu.bin", "outs", True),)


def test_literal_booleans_and_referenced_booleans_are_named_like_dvc() -> None:
    pipeline = parse(
        """
        stages:
          lit:
            foreach: [true, '${flag}', 0.5, null]
            do:
              cmd: echo ${item}
          grid:
            matrix:
              fast: ${flags}
              deep: [false]
            cmd: echo ${key}
        """,
        params={"flag": False, "flags": [True, 1]},
    )
    assert list(pipeline.stages) == [
        "lit@true",
        "lit@False",
        "lit@0.5",
        "lit@None",
        "grid@True-false",
        "grid@1-false",
    ]
    assert pipeline.stages["grid@True-false"].cmd == ("echo True-false",)


def test_foreach_over_a_list_of_mappings_names_stages_by_index() -> None:
    pipeline = parse(
        """
        stages:
          fit:
            foreach:
              - {model: svm, C: 1}
              - {model: rf, C: 2}
            do:
              cmd: fit ${item.model} --C ${item.C}
        """
    )
    assert {name: stage.cmd for name, stage in pipeline.stages.items()} == {
        "fit@0": ("fit svm --C 1",),
        "fit@1": ("fit rf --C 2",),
    }


def test_foreach_over_a_mapping_exposes_key_and_item() -> None:
    pipeline = parse(
        """
        vars:
          - regions:
              us: {threshold: 0.3}
              eu: {threshold: 0.4}
        stages:
          score:
            foreach: ${regions}
            do:
              cmd: score --region ${key} --threshold ${item.threshold}
              metrics:
                - scores/${key}.json:
                    cache: false
        """
    )
    assert pipeline.stages["score@eu"].cmd == ("score --region eu --threshold 0.4",)
    assert pipeline.metrics_files == ("scores/us.json", "scores/eu.json")


def test_matrix_is_a_cartesian_product_named_like_dvc() -> None:
    pipeline = parse(
        """
        stages:
          train:
            matrix:
              lr: [0.1, 0.01]
              optimizer: [adam, sgd]
              layers: [[8, 8], [16]]
            cmd: train --lr ${item.lr} --opt ${item.optimizer} --key ${key}
            outs:
              - models/${key}.pkl
        """
    )
    assert list(pipeline.stages)[:3] == [
        "train@0.1-adam-layers0",
        "train@0.1-adam-layers1",
        "train@0.1-sgd-layers0",
    ]
    assert len(pipeline.stages) == 8
    stage = pipeline.stages["train@0.01-sgd-layers1"]
    assert stage.cmd == ("train --lr 0.01 --opt sgd --key 0.01-sgd-layers1",)
    assert stage.outs == (Output("models/0.01-sgd-layers1.pkl", "outs", True),)


def test_matrix_values_may_come_from_variables() -> None:
    pipeline = parse(
        """
        stages:
          sweep:
            matrix:
              seed: ${seeds}
            cmd: run ${item.seed}
        """,
        params={"seeds": [1, 2]},
    )
    assert list(pipeline.stages) == ["sweep@1", "sweep@2"]


def test_wdir_applies_to_paths_and_params_files() -> None:
    pipeline = parse(
        """
        stages:
          train:
            wdir: src
            cmd: python train.py
            deps: [train.py, ../data/raw.csv]
            params: [lr]
            outs: [../models/]
        """,
        files={"src/train.py": b"", "src/params.yaml": b"lr: 0.1\n", "data/raw.csv": b"x\n"},
    )
    stage = pipeline.stages["train"]
    assert stage.wdir == "src"
    assert stage.deps == ("src/train.py", "data/raw.csv")
    assert stage.outs == (Output("models", "outs", True),)
    # Like DVC, the default params file is looked up in the stage's wdir.
    assert stage.params == (("src/params.yaml", "lr"),)


def test_frozen_and_always_changed() -> None:
    pipeline = parse(
        """
        stages:
          fetch: {cmd: fetch, frozen: true}
          clock: {cmd: date, always_changed: true}
        """
    )
    assert pipeline.stages["fetch"].frozen
    assert not pipeline.stages["fetch"].always_changed
    assert pipeline.stages["clock"].always_changed
    assert not pipeline.stages["clock"].frozen


def test_params_from_other_files_keys_and_whole_files() -> None:
    pipeline = parse(
        """
        stages:
          train:
            cmd: train
            params:
              - seed
              - conf/train.yaml: [optimizer.lr, layers.1]
              - conf/model.toml: []
              - conf/data.json:
        """,
        files={
            "conf/train.yaml": b"optimizer: {lr: 0.1}\nlayers: [8, 16]\n",
            "conf/model.toml": b'kind = "svm"\n[grid]\nC = [1, 2]\n',
            "conf/data.json": b'{"path": "x.csv", "sep": ","}',
        },
        params={"seed": 1},
    )
    assert pipeline.stages["train"].params == (
        ("params.yaml", "seed"),
        ("conf/train.yaml", "optimizer.lr"),
        ("conf/train.yaml", "layers.1"),
        ("conf/model.toml", "kind"),
        ("conf/model.toml", "grid"),
        ("conf/data.json", "path"),
        ("conf/data.json", "sep"),
    )


def test_a_wholly_tracked_params_yaml_absorbs_plain_keys() -> None:
    pipeline = parse(
        """
        stages:
          s:
            cmd: run
            params: [a.b, {params.yaml: []}]
        """,
        params={"a": {"b": 1}, "c": 2},
    )
    assert pipeline.stages["s"].params == (("params.yaml", "a"), ("params.yaml", "c"))


def test_a_params_file_written_by_another_stage_orders_and_warns() -> None:
    pipeline = parse(
        """
        stages:
          use: {cmd: use, params: [{gen/params.yaml: [best]}]}
          tune: {cmd: tune, outs: [gen/params.yaml]}
        """
    )
    assert pipeline.order == ("tune", "use")
    assert pipeline.stages["use"].params == (("gen/params.yaml", "best"),)
    assert any("written by stage 'tune'" in warning for warning in pipeline.warnings)


def test_output_options_and_a_list_cmd_are_accepted() -> None:
    pipeline = parse(
        """
        stages:
          s:
            cmd:
              - python a.py
              - python b.py
            meta: {owner: team}
            outs:
              - cache/:
                  persist: true
                  remote: fast
                  push: false
              - model.pkl
            metrics:
              - m.json
            plots:
              - p.csv:
                  header: true
        datasets:
          - name: wine
            type: dvc
            url: https://example.com/wine.git
        """
    )
    stage = pipeline.stages["s"]
    assert stage.cmd == ("python a.py", "python b.py")
    assert [(out.path, out.kind, out.cache) for out in stage.outs] == [
        ("cache", "outs", True),
        ("model.pkl", "outs", True),
        ("m.json", "metrics", True),
        ("p.csv", "plots", True),
    ]


def test_bytes_input_and_yaml_merge_keys_work() -> None:
    pipeline = parse_pipeline(
        b"stages:\n  a: &base\n    cmd: run a\n    deps: [x]\n"
        b"  b:\n    <<: *base\n    cmd: run b\n",
        files={"x": b""},
        params={},
    )
    assert pipeline.stages["b"].cmd == ("run b",)
    assert pipeline.stages["b"].deps == ("x",)


def test_warns_about_dependencies_nobody_provides() -> None:
    pipeline = parse(
        """
        stages:
          s:
            cmd: run
            deps: [src, data/raw.csv, data/lake/part-0.csv, remote-only.csv]
        """,
        files={"src/main.py": b"", "data/raw.csv": b"", "data/lake.dvc": b"outs: []\n"},
    )
    assert pipeline.warnings == (
        "stage 's': dependency 'remote-only.csv' is not produced by any stage nor uploaded; "
        "it has to come from the DVC remote",
    )


ERRORS = [
    ("- just\n- a list\n", [], "top level must be a mapping"),
    ("", [], "dvc.yaml has no stages"),
    ("# only a comment\n\n", [], "dvc.yaml has no stages"),
    ("vars: []\n", [], "no 'stages'"),
    ("stages: [a, b]\n", [], "'stages' must be a mapping"),
    ("stages: {}\n", [], "'stages' is empty"),
    ("stage:\n  a: {cmd: x}\n", [], "unknown top-level key 'stage'"),
    ("stages:\n  a: {cmd: x, cmds: y}\n", ["a"], "stage 'a': unknown key 'cmds'"),
    ("stages:\n  a: {deps: [x]}\n", ["a"], "stage 'a' has no 'cmd'"),
    ("stages:\n  a: {cmd: '  '}\n", ["a"], "'cmd' is empty"),
    ("stages:\n  a: {cmd: x, frozen: 'yes'}\n", ["a"], "'frozen' must be a boolean"),
    ("stages:\n  a: {cmd: x, deps: data}\n", ["a"], "'deps' must be a list of strings"),
    ("stages:\n  a: {cmd: x, outs: [{o: {cach: false}}]}\n", ["a"], "unknown option 'cach'"),
    ("stages:\n  a: {cmd: x, outs: [{o: {checkpoint: 'yes'}}]}\n", ["a"], "'checkpoint' must be"),
    ("stages:\n  a: {cmd: x, metrics: [{m: {x: c}}]}\n", ["a"], "unknown option 'x'"),
    ("stages:\n  a: {cmd: x, wdir: 3}\n", ["a"], "'wdir' must be a string"),
    ("stages:\n  a: hello\n", ["a"], "stage 'a' must be a mapping"),
    ("stages:\n  a: {foreach: [1]}\n", ["a"], "needs both 'foreach' and 'do'"),
    ("stages:\n  a: {foreach: [1], do: {cmd: x}, cmd: y}\n", ["a"], "not allowed beside"),
    ("stages:\n  a: {foreach: 3, do: {cmd: x}}\n", ["a"], "'foreach' must be a list"),
    ("stages:\n  a: {foreach: '${n}', do: {cmd: x}}\n", ["a"], "foreach needs a list or a mapping"),
    ("stages:\n  a: {matrix: {x: '${n}'}, cmd: x}\n", ["a"], "matrix entry 'x' needs a list"),
    ("stages:\n  a: {cmd: 'echo ${missing}'}\n", ["a"], "undefined name 'missing'"),
    ("stages:\n  a: {cmd: 'echo ${n.deeper}'}\n", ["a"], "undefined name 'n.deeper'"),
    ("stages:\n  a: {cmd: 'echo ${l[5]}'}\n", ["a"], "undefined name 'l[5]'"),
    ("stages:\n  a: {cmd: 'echo ${a..b}'}\n", ["a"], "invalid expression"),
    ("stages:\n  a: {cmd: 'echo ${l}'}\n", ["a"], "cannot interpolate '${l}' of type list"),
    (
        "stages:\n  b:\n    foreach: [x, y]\n    do: {cmd: 'echo ${item} ${nope}'}\n",
        ["b@x"],
        "stage 'b@x' (from 'b'), field 'cmd': undefined name 'nope'",
    ),
    ("stages:\n  b:\n    foreach: [x, x]\n    do: {cmd: x}\n", ["b", "b@x"], "more than once"),
    (
        "stages:\n  b:\n    foreach: [us]\n    do: {cmd: x}\n  b@us: {cmd: y}\n",
        ["b@us", "b"],
        "clashes with the stages generated by 'b'",
    ),
    ("stages:\n  'a:b': {cmd: x}\n", ["a:b"], "may not contain"),
    (
        "stages:\n  a:\n    foreach: {'${n}': 1}\n    do: {cmd: x}\n",
        ["a"],
        "cannot use a whole ${...} as a key",
    ),
    ("stages:\n  a: {cmd: x, vars: ['${n}']}\n", ["a"], "not allowed in 'vars'"),
    ("vars: ['${n}']\nstages:\n  a: {cmd: x}\n", [], "not allowed in the top-level 'vars'"),
    ("vars: [{n: 2}]\nstages:\n  a: {cmd: x}\n", [], "cannot redefine 'n' from 'vars[0]'"),
    ("stages:\n  a: {cmd: x, vars: [{n: 3}]}\n", ["a"], "already defined by 'params.yaml'"),
    (
        "stages:\n  a:\n    foreach: [1]\n    do: {cmd: x, vars: [{item: 3}]}\n",
        ["a@1"],
        "may not set 'item'",
    ),
    ("vars: [params.yaml:n]\nstages:\n  a: {cmd: x}\n", [], "already wholly loaded"),
    ("vars: [missing.yaml]\nstages:\n  a: {cmd: x}\n", [], "'missing.yaml' is not in the bundle"),
    ("vars: [conf.yaml]\nstages:\n  a: {cmd: x}\n", [], "must hold a mapping"),
    ("stages:\n  a: {cmd: x, wdir: ../elsewhere}\n", ["a"], "leaves the repository"),
    ("stages:\n  a: {cmd: x, deps: [../../etc/passwd]}\n", ["a"], "leaves the repository"),
    ("stages:\n  a: {cmd: x, deps: [/etc/passwd]}\n", ["a"], "absolute path"),
    ("stages:\n  a: {cmd: x, outs: ['s3://bucket/x']}\n", ["a"], "external URL"),
    ("stages:\n  a: {cmd: x, deps: ['gs://bucket/x']}\n", ["a"], "'gs://' dependencies are not"),
    ("stages:\n  a: {cmd: x, outs: [.git/hooks/post-checkout]}\n", ["a"], "git metadata"),
    ("stages:\n  a: {cmd: x, outs: [.dvc/config]}\n", ["a"], "DVC metadata"),
    ("stages:\n  a: {cmd: x, outs: [sub/dvc.yaml]}\n", ["a"], "cannot be an output"),
    ("stages:\n  a: {cmd: x, outs: [data.dvc]}\n", ["a"], "cannot be an output"),
    ("stages:\n  a: {cmd: x, outs: [.]}\n", ["a"], "the whole repository"),
    ("stages:\n  a: {cmd: x, params: [missing.key]}\n", ["a"], "parameter 'missing.key'"),
    ("stages:\n  a: {cmd: x, params: [{other.yaml: [k]}]}\n", ["a"], "neither params.yaml nor"),
    ("stages:\n  a: {cmd: x, wdir: sub, params: [k]}\n", ["a"], "'sub/params.yaml' is neither"),
    ("stages:\n  a: {cmd: x, params: [{conf.yaml: [k]}]}\n", ["a"], "must hold a mapping"),
    ("stages:\n  a: {cmd: x, outs: [o, o2]}\n  b: {cmd: y, outs: [o]}\n", ["a", "b"], "both"),
    ("stages:\n  a: {cmd: x, outs: [o], metrics: [o]}\n", ["a"], "more than once"),
    ("stages:\n  a: {cmd: x, outs: [d]}\n  b: {cmd: y, outs: [d/f]}\n", ["a", "b"], "overlapping"),
    ("stages:\n  a: {cmd: x, outs: [d/f, d]}\n", ["a"], "overlapping outputs"),
    ("stages:\n  a: {cmd: x, deps: [o/f], outs: [o]}\n", ["a"], "depends on its own output 'o'"),
    ("stages:\n  a: {cmd: x, deps: [o], outs: [o/f]}\n", ["a"], "depends on its own output"),
    ("stages:\n  a: {cmd: 'x: y: z'\n", [], "line 3"),
    ("stages:\n  a: {cmd: x}\n  a: {cmd: y}\n", [], "duplicate key 'a'"),
    ("metrics: ['${nope}']\nstages:\n  a: {cmd: x}\n", [], "top-level 'metrics'"),
    ("metrics: [../m.json]\nstages:\n  a: {cmd: x}\n", [], "leaves the repository"),
    ("artifacts:\n  m: {type: model}\nstages:\n  a: {cmd: x}\n", [], "top-level 'artifacts'"),
    ("plots: [{p: {z: 1}}]\nstages:\n  a: {cmd: x}\n", [], "top-level 'plots'"),
    ("stages:\n  a: {cmd: ['${n}']}\n", ["a"], "'cmd' must be text"),
    ("stages:\n  a: {cmd: x}\nvars: [{d: 2024-01-01}]\n", [], "'d' is a date"),
]


@pytest.mark.parametrize(("text", "stages", "fragment"), ERRORS)
def test_refusals_name_the_stages_involved(text: str, stages: list[str], fragment: str) -> None:
    error = refusal(
        text,
        files={"conf.yaml": b"- not a mapping\n"},
        params={"n": 1, "l": [1, 2]},
    )
    assert fragment in error.detail
    assert error.stages == stages
    assert error.detail.startswith("dvc.yaml: ")


def test_a_cycle_lists_its_stages_in_order() -> None:
    error = refusal(
        """
        stages:
          prepare: {cmd: p, deps: [eval.json], outs: [data]}
          train: {cmd: t, deps: [data], outs: [model]}
          evaluate: {cmd: e, deps: [model], outs: [eval.json]}
          unrelated: {cmd: u}
        """
    )
    assert "cycle: " in error.detail
    assert sorted(error.stages) == ["evaluate", "prepare", "train"]
    rotation = error.stages.index("prepare")
    assert error.stages[rotation:] + error.stages[:rotation] == ["prepare", "train", "evaluate"]
    chain = " -> ".join([*error.stages, error.stages[0]])
    assert error.detail.endswith(f"cycle: {chain}")


def test_a_parameter_missing_from_a_named_file_names_stage_key_and_file() -> None:
    error = refusal(
        """
        stages:
          train: {cmd: t, params: [{conf/train.yaml: [optimizer.momentum]}]}
        """,
        files={"conf/train.yaml": b"optimizer: {lr: 0.1}\n"},
    )
    assert error.stages == ["train"]
    assert error.detail == (
        "dvc.yaml: stage 'train': parameter 'optimizer.momentum' is not defined in "
        "'conf/train.yaml'"
    )


def test_a_matrix_bomb_is_refused_before_it_expands() -> None:
    values = "[" + ", ".join(str(i) for i in range(100)) + "]"
    error = refusal(
        f"""
        stages:
          sweep:
            matrix: {{a: {values}, b: {values}, c: {values}, d: {values}, e: {values}}}
            cmd: run
        """
    )
    assert error.stages == ["sweep"]
    assert "would generate 10000000000 stages" in error.detail


def test_interpolation_cannot_blow_a_small_file_up() -> None:
    long_value = {"v": "x" * 100_000}
    one_long_string = refusal(
        """
        stages:
          s: {cmd: "echo ${v} ${v}"}
        """,
        params=long_value,
    )
    assert "longer than 131072 characters" in one_long_string.detail
    many_strings = refusal(
        "stages:\n  s:\n    cmd: run\n    deps:\n"
        + "".join(f"      - d{i}/${{v}}\n" for i in range(700)),
        params=long_value,
    )
    assert many_strings.stages == ["s"]
    assert "over the 'chars' limit: more than 67108864 characters" in many_strings.detail


def test_yaml_limits_apply_to_dvc_yaml() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n"
        for i in range(7)
    )
    with pytest.raises(InvalidPipeline, match=r"dvc.yaml: .*aliases expand"):
        parse_pipeline(bomb, files={}, params={})


# --- properties of the stage graph -------------------------------------------------


@st.composite
def dags(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]], list[int]]:
    """A DAG on stages 0..n-1 (edges i -> j only for i < j) and a dvc.yaml order."""
    count = draw(st.integers(min_value=1, max_value=9))
    pairs = [(i, j) for i in range(count) for j in range(i + 1, count)]
    edges = draw(st.lists(st.sampled_from(pairs), unique=True)) if pairs else []
    appearance = draw(st.permutations(range(count)))
    return count, edges, appearance


def dag_yaml(count: int, edges: list[tuple[int, int]], appearance: list[int]) -> str:
    lines = ["stages:"]
    for node in appearance:
        deps = [f"out/s{src}.txt" for src, dst in edges if dst == node]
        lines += [f"  s{node}:", f"    cmd: make {node}", f"    outs: [out/s{node}.txt]"]
        if deps:
            lines.append(f"    deps: [{', '.join(deps)}]")
    return "\n".join(lines) + "\n"


@settings(max_examples=60, deadline=None)
@given(dags())
def test_random_dags_parse_and_order_is_topological(
    dag: tuple[int, list[tuple[int, int]], list[int]],
) -> None:
    count, edges, appearance = dag
    pipeline = parse_pipeline(dag_yaml(count, edges, appearance), files={}, params={})
    position = {name: index for index, name in enumerate(pipeline.order)}
    assert sorted(position) == sorted(f"s{i}" for i in range(count))
    for src, dst in edges:
        assert position[f"s{src}"] < position[f"s{dst}"]
    if not edges:
        assert pipeline.order == tuple(f"s{i}" for i in appearance)


@settings(max_examples=60, deadline=None)
@given(dags().filter(lambda dag: bool(dag[1])), st.data())
def test_a_back_edge_always_yields_a_cycle_naming_stages_on_it(
    dag: tuple[int, list[tuple[int, int]], list[int]], data: st.DataObject
) -> None:
    count, edges, appearance = dag
    graph = nx.DiGraph(edges)
    src = data.draw(st.sampled_from(sorted({edge[0] for edge in edges})))
    dst = data.draw(st.sampled_from(sorted(nx.descendants(graph, src))))
    # src now also depends on an output of its descendant dst: dst -> src closes a loop.
    with_back_edge = [*edges, (dst, src)]
    graph.add_edge(dst, src)
    with pytest.raises(InvalidPipeline) as caught:
        parse_pipeline(dag_yaml(count, with_back_edge, appearance), files={}, params={})
    cycle = caught.value.stages
    assert caught.value.detail.startswith("dvc.yaml: cycle: ")
    assert len(cycle) >= 2
    for index, name in enumerate(cycle):
        following = cycle[(index + 1) % len(cycle)]
        assert graph.has_edge(int(name[1:]), int(following[1:]))
