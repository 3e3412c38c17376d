"""The sample bundle (client_ref.templ/ + workload_example/src/) run by the real DVC.

Covers: ``dvc repro`` of prepare -> train -> evaluate in a fresh git+dvc repo writes
``metrics.json`` with a model worth the name and the confusion plot data; a second
``dvc repro`` is a no-op; a changed ``train.C`` then reruns train and evaluate but not
prepare (one scenario, as each ``dvc repro`` costs seconds); the prepare stage is
deterministic given its params.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.gitserver import isolated_git_env
from tests.support.prereqs import require, require_tools

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLE = REPO_ROOT / "client_ref.templ"
SRC = REPO_ROOT / "workload_example" / "src"
VENV_BIN = Path(sys.executable).parent
DVC = VENV_BIN / "dvc"
OUTPUTS = ["data/prepared/train.csv", "data/prepared/test.csv", "models/model.pkl"]
RESULTS = ["metrics.json", "plots/confusion.csv"]


def _env(home: Path, pycache: Path) -> dict[str, str]:
    """The venv's python and dvc first on PATH; no user git/dvc config; bytecode cached."""
    base = {key: value for key, value in os.environ.items() if not key.startswith("DVC_")}
    base.pop("PYTHONDONTWRITEBYTECODE", None)
    return isolated_git_env(home, base) | {
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
        "PYTHONPYCACHEPREFIX": str(pycache),
        "DVC_NO_ANALYTICS": "1",
        "DVC_GLOBAL_CONFIG_DIR": str(home / "dvc-global"),
        "DVC_SYSTEM_CONFIG_DIR": str(home / "dvc-system"),
        "DVC_SITE_CACHE_DIR": str(home / "dvc-site-cache"),
    }


def _ok(args: list[str], *, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def _mtimes(repo: Path, paths: list[str]) -> dict[str, int]:
    return {path: (repo / path).stat().st_mtime_ns for path in paths}


def _set_param(repo: Path, section: str, key: str, value: object) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One environment, and one bytecode cache, for every command of the module."""
    require_tools("git")
    require(DVC.exists(), f"dvc is not installed next to {sys.executable}")
    return _env(tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("pycache"))


def _lay_out(repo: Path) -> None:
    """The sample experiment as the service lays it out: bundle files at the root, src/."""
    repo.mkdir()
    shutil.copy(BUNDLE / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(BUNDLE / "params.yaml", repo / "params.yaml")
    shutil.copytree(SRC, repo / "src")


def test_repro_trains_a_good_model_then_reruns_only_what_changed(
    env: dict[str, str], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    _lay_out(repo)
    _ok(["git", "init", "--quiet", "--initial-branch=main"], cwd=repo, env=env)
    _ok([str(DVC), "init", "--quiet"], cwd=repo, env=env)

    first = _ok([str(DVC), "repro"], cwd=repo, env=env)

    for stage in ("prepare", "train", "evaluate"):
        assert f"Running stage '{stage}'" in first
    metrics = json.loads((repo / "metrics.json").read_text())
    assert set(metrics) == {"accuracy", "f1_macro", "n_test"}
    assert metrics["accuracy"] > 0.8
    assert metrics["f1_macro"] > 0.8
    assert metrics["n_test"] == 45  # 25 % of the 178 wine samples, rounded up
    with (repo / "plots" / "confusion.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == metrics["n_test"]
    assert {row["actual"] for row in rows} == {"class_0", "class_1", "class_2"}
    assert {row["predicted"] for row in rows} <= {"class_0", "class_1", "class_2"}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"prepare", "train", "evaluate"}
    assert lock["stages"]["train"]["params"]["params.yaml"] == {
        "train.C": 1.0,
        "train.max_iter": 500,
    }

    before = _mtimes(repo, OUTPUTS + RESULTS)
    second = _ok([str(DVC), "repro"], cwd=repo, env=env)

    assert "Running stage" not in second
    for stage in ("prepare", "train", "evaluate"):
        assert f"Stage '{stage}' didn't change, skipping" in second
    assert _mtimes(repo, OUTPUTS + RESULTS) == before

    model = (repo / "models" / "model.pkl").read_bytes()
    _set_param(repo, "train", "C", 0.05)
    third = _ok([str(DVC), "repro"], cwd=repo, env=env)

    assert "Stage 'prepare' didn't change, skipping" in third
    assert "Running stage 'train'" in third
    assert "Running stage 'evaluate'" in third
    assert _mtimes(repo, OUTPUTS[:2]) == {path: before[path] for path in OUTPUTS[:2]}
    assert (repo / "models" / "model.pkl").read_bytes() != model
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["train"]["params"]["params.yaml"]["train.C"] == 0.05


def test_prepare_is_deterministic_given_its_params(env: dict[str, str], tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    python = str(VENV_BIN / "python")
    for where in (one, two):
        _lay_out(where)
        _ok([python, "src/prepare.py"], cwd=where, env=env)

    for name in ("train.csv", "test.csv"):
        produced = (one / "data" / "prepared" / name).read_bytes()
        assert produced == (two / "data" / "prepared" / name).read_bytes()
    assert len((one / "data/prepared/train.csv").read_text().splitlines()) == 1 + 133

    _set_param(two, "prepare", "seed", 7)
    _ok([python, "src/prepare.py"], cwd=two, env=env)
    assert (two / "data/prepared/train.csv").read_bytes() != (
        one / "data/prepared/train.csv"
    ).read_bytes()
