"""sys-env/mlexp-ctrl-env.yaml against pyproject.toml and uv.lock, so the three cannot drift.

Covers: the conda env is named ``mlx`` and brings python 3.11 and git; every pyproject
dependency and the ``workload`` extra appear in its pip section, with their extras; every
pip entry is pinned exactly, to the version uv.lock resolves, which pyproject allows.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_FILE = REPO_ROOT / "sys-env" / "mlexp-ctrl-env.yaml"


def _env() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(ENV_FILE.read_text())
    return data


def _conda_packages() -> list[str]:
    return [item for item in _env()["dependencies"] if isinstance(item, str)]


def _pip_requirements() -> dict[NormalizedName, Requirement]:
    sections = [item["pip"] for item in _env()["dependencies"] if isinstance(item, dict)]
    assert len(sections) == 1, "expected one pip: section"
    requirements = [Requirement(line) for line in sections[0]]
    by_name = {canonicalize_name(req.name): req for req in requirements}
    assert len(by_name) == len(requirements), "a package is listed twice"
    return by_name


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _declared() -> list[Requirement]:
    project = _pyproject()["project"]
    lines = [*project["dependencies"], *project["optional-dependencies"]["workload"]]
    return [Requirement(line) for line in lines]


def _locked_versions() -> dict[NormalizedName, str]:
    lock = tomllib.loads((REPO_ROOT / "uv.lock").read_text())
    return {canonicalize_name(pkg["name"]): pkg["version"] for pkg in lock["package"]}


def test_env_is_named_mlx_with_python_311_and_git() -> None:
    conda = _conda_packages()
    assert _env()["name"] == "mlx"
    assert "python=3.11" in conda
    assert "git" in conda
    assert "pip" in conda


@pytest.mark.parametrize("declared", _declared(), ids=lambda req: req.name)
def test_every_pyproject_dependency_is_in_the_env(declared: Requirement) -> None:
    pip = _pip_requirements()
    name = canonicalize_name(declared.name)
    assert name in pip, f"{declared.name} is in pyproject.toml but not in {ENV_FILE.name}"
    assert declared.extras <= pip[name].extras, f"{declared.name} lost extras {declared.extras}"


@pytest.mark.parametrize("name", sorted(_pip_requirements()))
def test_every_pip_entry_is_pinned_to_the_locked_version(name: NormalizedName) -> None:
    requirement = _pip_requirements()[name]
    specifiers = list(requirement.specifier)
    assert len(specifiers) == 1, f"{name} should be pinned with exactly one ==X"
    assert specifiers[0].operator == "=="
    locked = _locked_versions()
    assert name in locked, f"{name} is not in uv.lock"
    assert specifiers[0].version == locked[name], f"{name}: uv.lock has {locked[name]}"


def test_locked_pins_satisfy_pyproject() -> None:
    pip = _pip_requirements()
    for declared in _declared():
        pinned = next(iter(pip[canonicalize_name(declared.name)].specifier)).version
        assert declared.specifier.contains(pinned), f"{declared.name}=={pinned} vs {declared}"
    requires_python = _pyproject()["project"]["requires-python"]
    assert Requirement(f"python{requires_python}").specifier.contains("3.11")
