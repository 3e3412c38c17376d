"""``local.enabled: false``: a service that runs nothing on its own machine (an install in a
cluster). Without Kubernetes that leaves nothing to run pipelines on: refused at start-up;
with it, no sandbox is looked for (a pod's seccomp profile may refuse bubblewrap).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.services import container
from controller.services.container import StartupError, build_services, preflight
from controller.settings import LocalSettings, Settings


def settings_in(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        config_file=tmp_path / "none.yaml",
        k8s_config_file=tmp_path / "no-k8s.yaml",
        local=LocalSettings(enabled=False),
    )


def test_without_kubernetes_there_is_nothing_to_run_on(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match=r"local\.enabled: false leaves nothing"):
        build_services(settings_in(tmp_path))


def test_no_sandbox_is_looked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_sandbox(*args: object) -> None:
        raise AssertionError("the sandbox was looked for")

    monkeypatch.setattr(container, "local_executor", no_sandbox)
    preflight(settings_in(tmp_path))  # does not raise
