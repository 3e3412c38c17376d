"""Run planning: the runner's spec, its credential env, the committed DVC config, results."""

from __future__ import annotations

from controller.domain.bundle import RepoSpec
from controller.domain.models import Run
from controller.planning.runs import (
    clone_command,
    credential_env,
    dvc_config,
    run_result,
    runner_spec,
)
from tests.support.records import experiment_record, run_record

EXPERIMENT = experiment_record()


def run(**params: object) -> Run:
    return run_record(params)  # type: ignore[arg-type]


def test_spec_carries_overridden_params_and_no_credentials() -> None:
    spec = runner_spec(run=run(**{"train.C": 0.5}), experiment=EXPERIMENT, cache_dir="/c")
    assert spec["branch"] == "runs/run-0123456789"
    assert spec["base_commit"] == "a" * 40
    assert spec["files"] == {"params.yaml": "train:\n  C: 0.5\n"}
    assert "train.C=0.5" in str(spec["message"])
    assert "token" not in str(spec).lower()


def test_spec_without_overrides_keeps_the_committed_params() -> None:
    assert runner_spec(run=run(), experiment=EXPERIMENT)["files"] == {}


def test_credential_env_maps_every_secret() -> None:
    spec = RepoSpec.model_validate(
        {
            "git": {"url": "https://h/x.git", "token": "t0k", "username": "bot"},
            "storage": {"access_key_id": "AK", "secret_access_key": "SK", "region": "eu-west-1"},
        }
    )
    assert credential_env(spec, git_ca_bundle="/ca.pem", s3_ca_bundle="/s3.pem") == {
        "AWS_CA_BUNDLE": "/s3.pem",
        "MLEXP_GIT_TOKEN": "t0k",
        "MLEXP_GIT_USERNAME": "bot",
        "MLEXP_GIT_CA_BUNDLE": "/ca.pem",
        "AWS_ACCESS_KEY_ID": "AK",
        "AWS_SECRET_ACCESS_KEY": "SK",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    assert credential_env(RepoSpec()) == {}


def test_committed_dvc_config_has_location_only() -> None:
    text = dvc_config(remote="storage", url="s3://b/w", endpoint_url="http://m:9000", region="r1")
    assert text == (
        "[core]\n    remote = storage\n['remote \"storage\"']\n    url = s3://b/w\n"
        "    endpointurl = http://m:9000\n    region = r1\n"
    )


def test_result_parses_json_and_yaml_metrics_and_reports_bad_ones() -> None:
    result = run_result(
        run=run(),
        experiment=EXPERIMENT,
        commit="b" * 40,
        metrics_files={"metrics.json": '{"acc": 0.9}', "eval/scores.yaml": "f1: 0.8\n", "x": "{"},
    )
    assert result.metrics["metrics.json"] == {"acc": 0.9}
    assert result.metrics["eval/scores.yaml"] == {"f1": 0.8}
    assert "error" in result.metrics["x"]  # type: ignore[operator]
    assert result.clone_command == (
        "git clone -b runs/run-0123456789 https://git.example.com/ml/wine.git run-0123456789"
        " && cd run-0123456789 && dvc pull"
    )


def test_clone_command_quotes_local_paths() -> None:
    assert clone_command("/data/my repos/x.git", "runs/r", "r").startswith(
        "git clone -b runs/r '/data/my repos/x.git' r"
    )
