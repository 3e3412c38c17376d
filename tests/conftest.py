"""Fixtures shared by the tiers: settings on a fresh data dir, and the app over HTTP.

Integration and end-to-end tests use real parts only: the git CLI, DVC, S3 over
HTTP (moto's server) and git over HTTPS with basic auth (``git http-backend``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.settings import Settings, load_settings
from tests.support.gitserver import GitHttpServer
from tests.support.leftovers import leftovers
from tests.support.prereqs import require_tools
from tests.support.s3server import S3Server
from tests.support.service import RunningService, service_in_thread

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)


_BASETEMP: list[Path] = []
LEFTOVER_GRACE_SECONDS = 10.0


@pytest.fixture(autouse=True, scope="session")
def _session_basetemp(tmp_path_factory: pytest.TempPathFactory) -> None:
    _BASETEMP.append(tmp_path_factory.getbasetemp())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the suite if a process started by a test is still alive once everything ended."""
    if not _BASETEMP:
        return
    deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
    left = leftovers(_BASETEMP[0])
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = leftovers(_BASETEMP[0])
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = "\n  ".join(left)
        message = f"processes started by tests are still running:\n  {lines}"
        if reporter is not None:
            reporter.write_line(message, red=True)
        else:
            print(message, file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True, scope="session")
def _tools_on_path() -> None:
    """The venv's dvc and python come first, as they do for the service's runners."""
    os.environ["PATH"] = os.pathsep.join([VENV_BIN, os.environ.get("PATH", "")])
    os.environ["DVC_NO_ANALYTICS"] = "1"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data",
        config_file=tmp_path / "no-config.yaml",
        k8s_config_file=tmp_path / "no-k8s-config.yaml",
        max_upload_bytes=2 * 1024 * 1024,
    )


@pytest.fixture
def service(settings: Settings) -> Iterator[RunningService]:
    require_tools("git")
    with service_in_thread(settings) as running:
        yield running


@pytest.fixture(scope="session")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHttpServer]:
    require_tools("git")
    root = tmp_path_factory.mktemp("git-server")
    with GitHttpServer(root, username="mlexp-bot", password="tok-0123456789abcdef") as server:
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


def bundle_files(root: Path = REPO_ROOT) -> dict[str, bytes]:
    """The sample bundle's code files, as the CLI posts them (``src/...``)."""
    src = root / "workload_example" / "src"
    return {f"src/{p.name}": p.read_bytes() for p in sorted(src.glob("*.py"))}
