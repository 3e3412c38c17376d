"""The local run sandbox at start-up: refused settings stop the service with what to fix.

- ``local.isolation: sandbox`` (the default) without bubblewrap: ``mlexp serve`` exits 2
  and says what to install; nothing listens.
- ``local.isolation: none`` with a tokens file naming more than one principal: refused.
- ``none`` with one principal starts, and says so in a warning.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.services.auth import TokenRegistry
from controller.services.container import StartupError, local_executor, preflight
from controller.settings import Settings
from tests.support.service import REPO_ROOT, free_port

pytestmark = pytest.mark.integration

TWO = "tokens:\n  - {token: aaaaaaaaaaaaaaaa1, name: a}\n  - {token: bbbbbbbbbbbbbbbb2, name: b}\n"
NO_SANDBOX = {"isolation": "none"}
ONE = "tokens:\n  - {token: aaaaaaaaaaaaaaaa1, name: a}\n"


def test_serve_refuses_to_start_without_bubblewrap(tmp_path: Path) -> None:
    port = free_port()
    bin_dir = tmp_path / "bin"  # a PATH with python but no bwrap
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {
        "PATH": str(bin_dir),
        "HOME": str(tmp_path),
        "MLEXP_DATA_DIR": str(tmp_path / "data"),
        "MLEXP_PORT": str(port),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "controller.cli", "serve"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "bubblewrap" in proc.stderr
    assert "apt-get install bubblewrap" in proc.stderr
    assert "local.isolation: none" in proc.stderr


def test_isolation_none_is_refused_with_more_than_one_principal(
    settings: Settings, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(TWO)
    unsafe = settings.model_copy(
        update={
            "tokens_file": tokens,
            "local": settings.local.model_copy(update=NO_SANDBOX),
        }
    )
    with pytest.raises(StartupError, match="more than one principal"):
        preflight(unsafe)


def test_isolation_none_with_one_principal_starts_with_a_warning(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(ONE)
    chosen = settings.model_copy(
        update={
            "tokens_file": tokens,
            "local": settings.local.model_copy(update=NO_SANDBOX),
        }
    )
    with caplog.at_level(logging.WARNING):
        executor = local_executor(chosen, TokenRegistry.from_file(tokens))
    assert executor.bwrap is None
    assert any("not sandboxed" in r.getMessage() for r in caplog.records)


def test_the_default_is_the_sandbox(settings: Settings) -> None:
    assert settings.local.isolation == "sandbox"
    executor = local_executor(settings, None)
    assert executor.bwrap is not None
    assert os.path.basename(executor.bwrap) == "bwrap"
    assert settings.data_dir in executor.hidden
