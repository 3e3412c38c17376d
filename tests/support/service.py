"""The app over real HTTP: uvicorn on a free loopback port, in a thread or as a process.

Both run the server ``mlexp serve`` runs (``api.server.server_config``: the header
deadline, the connection and request caps), so tests see what a client would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from api.app import create_app
from api.server import server_config
from controller.settings import Settings
from tests.support.waiting import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RunningService:
    url: str
    settings: Settings
    http: httpx.Client

    def wait_run(self, run_id: str, timeout: float = 180) -> dict[str, object]:
        def finished() -> dict[str, object] | None:
            run: dict[str, object] = self.http.get(f"/runs/{run_id}").json()
            return run if run["state"] in ("succeeded", "failed", "cancelled") else None

        return wait_for(finished, timeout, what=f"run {run_id} to finish", max_interval=0.25)


def _healthy(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def service_in_thread(settings: Settings) -> Iterator[RunningService]:
    """The app in this process (so tests can reach its objects), over real HTTP."""
    port = free_port()
    config = server_config(
        settings.model_copy(update={"host": "127.0.0.1"}),
        create_app(settings),
        port=port,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=120) as http:
        wait_for(lambda: _healthy(http), 30, what="the service to answer /healthz")
        try:
            yield RunningService(url, settings, http)
        finally:
            server.should_exit = True
            thread.join(timeout=30)


@contextmanager
def service_process(
    data_dir: Path, env: Mapping[str, str] | None = None, port: int | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``mlexp serve`` as a child process; stopped (SIGTERM) on exit."""
    port = port or free_port()
    child_env = dict(os.environ)
    child_env.update(env or {})
    child_env.update(MLEXP_DATA_DIR=str(data_dir), MLEXP_PORT=str(port), MLEXP_HOST="127.0.0.1")
    log = (data_dir.parent / f"service-{port}.log").open("ab")
    child = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "serve"],
        cwd=REPO_ROOT,
        env=child_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=5) as probe:
            wait_for(
                lambda: child.poll() is not None or _healthy(probe),
                60,
                what="the service process to answer /healthz",
            )
        if child.poll() is not None:
            raise AssertionError(f"the service exited with {child.returncode}")
        yield child, url
    finally:
        if child.poll() is None:
            child.terminate()
            child.wait(timeout=30)
        log.close()
