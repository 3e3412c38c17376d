"""An experiment's credentials are read from its secrets file once, then kept (bounded,
least recently used out first): every run submission re-checks the experiment's URLs
and would otherwise read and parse the file each time."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from controller.adapters.secrets import LocalSecretStore
from controller.adapters.store import Store
from controller.domain.bundle import RepoSpec
from controller.domain.errors import NotFound
from controller.services import experiments
from controller.services.experiments import ExperimentService
from controller.settings import load_settings


class CountingSecrets(LocalSecretStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: list[str] = []

    def get(self, experiment_id: str) -> RepoSpec | None:
        self.reads.append(experiment_id)
        return super().get(experiment_id)


def service(tmp_path: Path) -> tuple[ExperimentService, CountingSecrets]:
    settings = load_settings(
        data_dir=tmp_path / "data",
        config_file=tmp_path / "no-config.yaml",
        k8s_config_file=tmp_path / "no-k8s-config.yaml",
    )
    secrets = CountingSecrets(tmp_path / "secrets")
    # The store is not used by credentials(); nothing is opened for it.
    return ExperimentService(settings, cast(Store, None), secrets, "local"), secrets


def spec(user: str) -> RepoSpec:
    return RepoSpec.model_validate({"git": {"username": user, "token": f"token-of-{user}"}})


def test_credentials_are_read_once_and_kept(tmp_path: Path) -> None:
    svc, secrets = service(tmp_path)
    secrets.put("exp-1", spec("alice"))
    first = svc.credentials("exp-1")
    assert first.git.token is not None
    assert first.git.token.get_secret_value() == "token-of-alice"
    assert svc.credentials("exp-1") is first
    svc.check_locations("exp-1")
    assert secrets.reads == ["exp-1"]


def test_missing_credentials_are_not_kept(tmp_path: Path) -> None:
    svc, secrets = service(tmp_path)
    with pytest.raises(NotFound):
        svc.credentials("exp-1")
    secrets.put("exp-1", spec("alice"))
    assert svc.credentials("exp-1").git.username == "alice"
    assert secrets.reads == ["exp-1", "exp-1"]


def test_the_least_recently_used_go_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(experiments, "CREDENTIALS_CACHED", 2)
    svc, secrets = service(tmp_path)
    for name in ("a", "b", "c"):
        secrets.put(f"exp-{name}", spec(name))
    svc.credentials("exp-a")
    svc.credentials("exp-b")
    svc.credentials("exp-a")  # now b is the least recently used
    svc.credentials("exp-c")  # b goes
    secrets.reads.clear()
    svc.credentials("exp-a")
    svc.credentials("exp-c")
    assert secrets.reads == []
    svc.credentials("exp-b")
    assert secrets.reads == ["exp-b"]
