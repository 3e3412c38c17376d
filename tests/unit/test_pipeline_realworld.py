"""parse_pipeline on what public dvc.yaml files contain and DVC 3.67 accepts.

Covers: ``checkpoint:`` on outputs, metrics and plots (accepted as DVC 3 does,
ignored, with a warning when true); URL dependencies -- https, http, s3 and
remote:// are accepted, kept out of repo paths, the graph, wdir and the
"nobody provides it" warnings, and reported with what the service must check
(host, remote); other schemes, credentials, ambiguous characters and ``..`` in
a remote path are refused; an empty or comment-only file says it has no stages.
(``tests/integration/test_pipeline_bundles.py`` checks the same files against a
real ``dvc repro --dry`` and through the service.)
"""

from __future__ import annotations

import textwrap

import pytest

from controller.domain.errors import InvalidPipeline
from controller.domain.pipeline import ExternalDependency, Pipeline, parse_pipeline


def parse(text: str, files: dict[str, bytes] | None = None) -> Pipeline:
    return parse_pipeline(textwrap.dedent(text), files=files or {}, params={"n": 1})


def refusal(text: str) -> InvalidPipeline:
    with pytest.raises(InvalidPipeline) as caught:
        parse(text)
    return caught.value


CHECKPOINTS = """
    stages:
      train:
        cmd: python train.py
        outs:
          - model.pt:
              checkpoint: true
          - logs:
              checkpoint: false
        metrics:
          - metrics.json:
              cache: false
              checkpoint: true
        plots:
          - plots.csv:
              checkpoint: true
              x: step
"""


def test_checkpoint_outputs_are_accepted_and_ignored_with_a_warning() -> None:
    pipeline = parse(CHECKPOINTS)
    stage = pipeline.stages["train"]
    assert [(out.path, out.kind, out.cache) for out in stage.outs] == [
        ("model.pt", "outs", True),
        ("logs", "outs", True),
        ("metrics.json", "metrics", False),
        ("plots.csv", "plots", True),
    ]
    assert pipeline.warnings == tuple(
        f"stage 'train': {section} entry '{path}': 'checkpoint: true' is ignored "
        "(DVC 3 removed checkpoint outputs; the output is tracked as usual)"
        for section, path in (
            ("outs", "model.pt"),
            ("metrics", "metrics.json"),
            ("plots", "plots.csv"),
        )
    )


def test_a_checkpoint_in_a_foreach_template_warns_once_for_the_group() -> None:
    pipeline = parse(
        """
        stages:
          train:
            foreach: [a, b]
            do:
              cmd: train ${item}
              outs:
                - models/${item}.pt:
                    checkpoint: true
        """
    )
    assert list(pipeline.stages) == ["train@a", "train@b"]
    assert len(pipeline.warnings) == 1
    assert "'checkpoint: true' is ignored" in pipeline.warnings[0]


EXTERNAL = """
    stages:
      fetch:
        wdir: sub
        cmd: python fetch.py
        deps:
          - https://data.example.com/wine.csv
          - http://mirror.example.org/wine.csv?raw=1
          - s3://public-bucket/datasets/wine.csv
          - remote://storage/raw/wine.csv
          - fetch.py
          - https://data.example.com/wine.csv
        outs: [raw.csv]
      train:
        cmd: python train.py
        deps: [sub/raw.csv, "https://${host}/weights-${n}.bin"]
"""


def test_url_dependencies_are_accepted_and_reported_for_the_service_to_check() -> None:
    pipeline = parse(EXTERNAL.replace("${host}", "models.example.com"), files={"sub/fetch.py": b""})
    fetch = pipeline.stages["fetch"]
    # Repo paths get the wdir; URLs stay as written (DVC does the same) and once each.
    assert fetch.deps == ("sub/fetch.py",)
    assert fetch.external_deps == (
        "https://data.example.com/wine.csv",
        "http://mirror.example.org/wine.csv?raw=1",
        "s3://public-bucket/datasets/wine.csv",
        "remote://storage/raw/wine.csv",
    )
    assert pipeline.external_deps == (
        ExternalDependency("fetch", fetch.external_deps[0], "https", host="data.example.com"),
        ExternalDependency("fetch", fetch.external_deps[1], "http", host="mirror.example.org"),
        ExternalDependency("fetch", fetch.external_deps[2], "s3"),
        ExternalDependency("fetch", fetch.external_deps[3], "remote", remote="storage"),
        ExternalDependency(
            "train", "https://models.example.com/weights-1.bin", "https", host="models.example.com"
        ),
    )
    # Not repo paths: nothing warns that no stage produces them, and they order nothing.
    assert pipeline.warnings == ()
    assert pipeline.order == ("fetch", "train")


@pytest.mark.parametrize(
    ("dep", "fragment"),
    [
        ("gs://bucket/x.csv", "'gs://' dependencies are not supported here"),
        ("azure://container/x.csv", "'azure://' dependencies are not supported here"),
        ("ssh://host/x.csv", "'ssh://' dependencies are not supported here"),
        ("https://user:secret@data.example.com/x.csv", "credentials in a URL are not accepted"),
        ("https://evil.example.com\\@data.example.com/x", "backslashes"),
        ("https://data.example.com/a b.csv", "spaces"),
        ("https:///x.csv", "names no host"),
        ("https://bad_host!/x.csv", "no valid host"),
        ("s3:///key.csv", "names no host, bucket or remote"),
        ("remote://storage/../other-experiment/secret", "'..' are not allowed"),
        ("remote://storage/./x", "'..' are not allowed"),
    ],
)
def test_url_dependencies_the_service_cannot_use_are_refused(dep: str, fragment: str) -> None:
    error = refusal(f"stages:\n  s: {{cmd: run, deps: ['{dep}']}}\n")
    assert error.stages == ["s"]
    assert error.detail.startswith("dvc.yaml: stage 's': dependency ")
    assert fragment in error.detail


def test_a_refused_url_never_echoes_its_credentials() -> None:
    error = refusal('stages:\n  s: {cmd: run, deps: ["https://bot:hunter2@example.com/x"]}\n')
    assert "hunter2" not in error.detail
    assert "'https://***@example.com/x'" in error.detail


@pytest.mark.parametrize("section", ["outs", "metrics", "plots"])
def test_urls_are_still_refused_as_outputs(section: str) -> None:
    error = refusal(f"stages:\n  s: {{cmd: run, {section}: ['https://example.com/o']}}\n")
    assert "external URL" in error.detail


def test_urls_are_still_refused_as_params_files() -> None:
    error = refusal("stages:\n  s: {cmd: run, params: [{'https://example.com/p.yaml': [a]}]}\n")
    assert "external URL" in error.detail


@pytest.mark.parametrize("text", ["", "\n\n", "# a pipeline, some day\n# nothing yet\n", "---\n"])
def test_an_empty_or_comment_only_file_has_no_stages(text: str) -> None:
    error = refusal(text)
    assert error.detail == (
        "dvc.yaml: dvc.yaml has no stages (the file is empty or holds only comments)"
    )
