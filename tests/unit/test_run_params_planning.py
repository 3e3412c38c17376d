"""runner_spec's params.yaml: written from the experiment's committed document plus the
run's overrides, never from the values record (which once turned ``.inf`` into ``null``)."""

from __future__ import annotations

from controller.domain.models import Experiment, Run
from controller.domain.params import parse_params
from controller.planning.runs import runner_spec
from tests.support.records import experiment_record, run_record

DOCUMENT = """\
# learning setup
train:
  lr: 1e-10      # tiny on purpose
  C: 1.0
  tag: "0x1F"
  layers: [[8, 4], [2]]
seed: 42
"""


def experiment(document: str | None) -> Experiment:
    values = parse_params(DOCUMENT.encode(), max_bytes=1 << 20).values
    return experiment_record(
        stages=["train"], metrics_files=[], params=values, params_document=document
    )


def run(**params: object) -> Run:
    return run_record(params)  # type: ignore[arg-type]


def test_overrides_are_written_into_the_committed_document() -> None:
    spec = runner_spec(run=run(**{"train.C": 0.5, "seed": 7}), experiment=experiment(DOCUMENT))
    assert spec["files"] == {
        "params.yaml": DOCUMENT.replace("C: 1.0", "C: 0.5").replace("seed: 42", "seed: 7")
    }


def test_records_without_a_document_still_get_their_values() -> None:
    spec = runner_spec(run=run(seed=7), experiment=experiment(None))
    files = spec["files"]
    assert isinstance(files, dict)
    assert "seed: 7\n" in files["params.yaml"]
    assert "lr: 1.0e-10\n" in files["params.yaml"]


def test_a_run_without_overrides_writes_no_params() -> None:
    assert runner_spec(run=run(), experiment=experiment(DOCUMENT))["files"] == {}
