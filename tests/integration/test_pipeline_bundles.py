"""Real-world dvc.yaml files through real DVC and the real service.

Covers: DVC 3.67 (``dvc repro --dry`` in a scratch repo) accepts the files the
parser now accepts -- checkpoint outputs, https/http URL dependencies; through
the service, the pipeline's warnings come back in the create answer (and not in
the stored record), URL dependency hosts obey the egress policy as git.url does
(a private address is a 422 that changes nothing, a public one is fine),
``remote://`` must name the bundle's DVC remote; ``mlexp experiment create``
prints the warnings.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from controller import cli
from tests.support.bundles import create, small_parts
from tests.support.prereqs import require_tools
from tests.support.service import RunningService

pytestmark = pytest.mark.integration

CHECKPOINT_AND_MISSING = """\
stages:
  train:
    cmd: python -c "open('model.pt', 'w').write('m')"
    deps: [data/raw.csv]
    outs:
      - model.pt:
          checkpoint: true
"""

URL_DEPS = """\
stages:
  fetch:
    cmd: python -c "open('raw.csv', 'w').write('r')"
    deps:
      - https://data.example.com/wine.csv
      - http://mirror.example.org/wine.csv
    outs: [raw.csv]
    plots:
      - plot.csv:
          checkpoint: false
          x: step
"""

CHECKPOINT_WARNING = (
    "stage 'train': outs entry 'model.pt': 'checkpoint: true' is ignored "
    "(DVC 3 removed checkpoint outputs; the output is tracked as usual)"
)
MISSING_WARNING = (
    "stage 'train': dependency 'data/raw.csv' is not produced by any stage nor uploaded; "
    "it has to come from the DVC remote"
)


def dvc_dry_run(tmp_path: Path, dvc_yaml: str) -> subprocess.CompletedProcess[str]:
    repo = tmp_path / "dvc-repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=repo, check=True)
    (repo / "dvc.yaml").write_text(dvc_yaml)
    (repo / "data").mkdir()
    (repo / "data" / "raw.csv").write_text("x\n")
    return subprocess.run(
        ["dvc", "repro", "--dry"], cwd=repo, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("dvc_yaml", [CHECKPOINT_AND_MISSING, URL_DEPS], ids=["checkpoint", "urls"])
def test_dvc_itself_accepts_these_files(tmp_path: Path, dvc_yaml: str) -> None:
    require_tools("git", "dvc")
    done = dvc_dry_run(tmp_path, dvc_yaml)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Running stage" in done.stdout


def problem(response: httpx.Response) -> str:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return str(response.json()["detail"])


def test_create_returns_the_pipeline_warnings(service: RunningService) -> None:
    body = create(service.http, small_parts(CHECKPOINT_AND_MISSING))
    assert body["warnings"] == [CHECKPOINT_WARNING, MISSING_WARNING]
    assert body["stages"] == ["train"]
    stored = service.http.get(f"/experiments/{body['experiment_id']}").json()
    assert "warnings" not in stored


def test_url_dependencies_obey_the_egress_policy(service: RunningService) -> None:
    private = URL_DEPS.replace("data.example.com", "10.1.2.3")
    detail = problem(service.http.post("/experiment/create", files=small_parts(private)))
    assert detail.startswith("dvc.yaml: stage 'fetch': dependency 'https://10.1.2.3/wine.csv'")
    assert "points at a private network address" in detail
    assert service.http.get("/experiments").json() == []
    # Literal public addresses need no DNS in the test; names resolve the same way.
    public = URL_DEPS.replace("data.example.com", "93.184.216.34").replace(
        "mirror.example.org", "93.184.216.34"
    )
    body = create(service.http, small_parts(public))
    assert body["warnings"] == []


def test_remote_urls_must_name_the_bundles_remote(service: RunningService) -> None:
    other = CHECKPOINT_AND_MISSING.replace("deps: [data/raw.csv]", "deps: [remote://other/x.csv]")
    detail = problem(service.http.post("/experiment/create", files=small_parts(other)))
    assert detail == (
        "dvc.yaml: stage 'train': dependency 'remote://other/x.csv': "
        "the repository's only DVC remote is 'storage'"
    )
    own = other.replace("remote://other/", "remote://storage/")
    assert create(service.http, small_parts(own))["warnings"] == [CHECKPOINT_WARNING]


def test_the_cli_prints_the_warnings(
    service: RunningService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "repo.json").write_text(json.dumps({}))
    (bundle / "dvc.yaml").write_text(CHECKPOINT_AND_MISSING)
    (bundle / "params.yaml").write_text("x: 1\n")
    assert cli.main(["--url", service.url, "experiment", "create", str(bundle)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("created exp")
    assert err.splitlines() == [f"warning: {CHECKPOINT_WARNING}", f"warning: {MISSING_WARNING}"]
