"""``mlexp serve`` runs the guarded server of ``api.server`` with the ``http`` settings from the
environment: a connection that sends nothing is closed at the header deadline, one that
trickles its headers gets a 408, and requests are served as usual.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.service import service_process

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT = 1.5
SLACK = 3.0


def closed_after(sock: socket.socket, began: float) -> tuple[bytes, float]:
    sock.settimeout(HEADER_TIMEOUT + 30)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received, time.monotonic() - began


def test_mlexp_serve_applies_the_header_deadline(tmp_path: Path) -> None:
    env = {
        "MLEXP_HTTP__HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "MLEXP_CONFIG_FILE": str(tmp_path / "no-config.yaml"),
        "MLEXP_K8S_CONFIG_FILE": str(tmp_path / "no-k8s-config.yaml"),
    }
    with service_process(tmp_path / "data", env=env) as (_, url):
        port = urlsplit(url).port
        assert port is not None
        with socket.create_connection(("127.0.0.1", port)) as silent:
            received, elapsed = closed_after(silent, time.monotonic())
        assert received == b""
        assert HEADER_TIMEOUT - 0.1 <= elapsed < HEADER_TIMEOUT + SLACK

        with socket.create_connection(("127.0.0.1", port)) as slow:
            began = time.monotonic()
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHo")  # and nothing more
            received, elapsed = closed_after(slow, began)
        assert received.startswith(b"HTTP/1.1 408 ")
        assert HEADER_TIMEOUT - 0.1 <= elapsed < HEADER_TIMEOUT + SLACK

        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
