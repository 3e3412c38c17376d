"""Slow and numerous clients against the service's own server (``api.server``), over raw
sockets: the header deadline (a request line trickled byte by byte, a silent connection,
a second request started on a kept-alive connection), the body deadline (408 for a
trickled JSON or multipart body, a slow but steady body accepted), the keep-alive
timeout, the request cap (503 while others complete, /healthz exempt) and the connection
cap. Plain uvicorn fails the header and cap tests: its keep-alive timer stops at the
first byte and it has no header deadline.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from controller.settings import HttpSettings, Settings
from tests.support.service import RunningService, service_in_thread
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 1.0
MIN_RATE = 100  # bytes per second that extend the body's time by one second
KEEP_ALIVE = 1
# Scheduling on a shared 2-core machine: how late a deadline may fire and still pass.
SLACK = 2.0


@pytest.fixture
def strict(settings: Settings) -> Iterator[RunningService]:
    limits = HttpSettings(
        header_timeout_seconds=HEADER_TIMEOUT,
        body_timeout_seconds=BODY_TIMEOUT,
        body_min_bytes_per_second=MIN_RATE,
        keep_alive_seconds=KEEP_ALIVE,
    )
    with service_in_thread(settings.model_copy(update={"http": limits})) as service:
        yield service


def connect(service: RunningService) -> socket.socket:
    port = urlsplit(service.url).port
    assert port is not None
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    return sock


def read_to_close(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """What the server sent until it closed the connection, and when it closed (monotonic)."""
    sock.settimeout(timeout)
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return received, time.monotonic()
        received += chunk


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body; the connection stays usable."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        rest += chunk
    return int(status_line.split()[1]), headers, rest[:length]


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return int(status_line.split()[1]), headers, body


def trickle(sock: socket.socket, data: bytes, interval: float) -> threading.Thread:
    """Send ``data`` one byte every ``interval`` seconds until done or the peer is gone."""

    def run() -> None:
        for byte in data:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                return
            time.sleep(interval)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def head(method: str, path: str, *extra: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *extra, "", ""]
    return "\r\n".join(lines).encode()


def assert_problem(raw: bytes, status: int) -> dict[str, object]:
    code, headers, body = parse(raw)
    assert code == status, raw[:300]
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    problem: dict[str, object] = json.loads(body)
    assert problem["status"] == status
    return problem


# -- header deadline ----------------------------------------------------------------


def test_headers_trickled_byte_by_byte_are_cut_off(strict: RunningService) -> None:
    sock = connect(strict)
    began = time.monotonic()
    # 4 bytes a second: the request line and headers would take about 30 s.
    sender = trickle(sock, head("GET", "/healthz", "X-Pad: " + "a" * 80), 0.25)
    with sock:
        received, closed_at = read_to_close(sock, HEADER_TIMEOUT + 10)
    elapsed = closed_at - began
    assert HEADER_TIMEOUT - 0.1 <= elapsed < HEADER_TIMEOUT + SLACK, elapsed
    problem = assert_problem(received, 408)
    assert "headers" in str(problem["detail"])
    sender.join(timeout=5)


def test_a_silent_connection_is_closed_at_the_header_deadline(strict: RunningService) -> None:
    sock = connect(strict)
    began = time.monotonic()
    with sock:
        received, closed_at = read_to_close(sock, HEADER_TIMEOUT + 10)
    assert HEADER_TIMEOUT - 0.1 <= closed_at - began < HEADER_TIMEOUT + SLACK
    assert received == b""  # nothing was asked, nothing is answered


def test_keep_alive_then_header_deadline_on_one_connection(strict: RunningService) -> None:
    with connect(strict) as sock:
        sock.sendall(head("GET", "/healthz"))
        status, _, _ = read_response(sock)
        assert status == 200
        answered = time.monotonic()
        # Idle: closed after the keep-alive timeout (well before the header deadline).
        received, closed_at = read_to_close(sock, KEEP_ALIVE + 10)
        assert received == b""
        assert KEEP_ALIVE - 0.1 <= closed_at - answered < KEEP_ALIVE + SLACK

    # The first byte of a next request stops uvicorn's keep-alive timer; the header
    # deadline then runs from that byte.
    with connect(strict) as sock:
        sock.sendall(head("GET", "/healthz"))
        assert read_response(sock)[0] == 200
        sock.sendall(b"G")
        first_byte = time.monotonic()
        received, closed_at = read_to_close(sock, HEADER_TIMEOUT + 10)
        assert HEADER_TIMEOUT - 0.1 <= closed_at - first_byte < HEADER_TIMEOUT + SLACK
        assert_problem(received, 408)


def test_pipelined_requests_are_answered(strict: RunningService) -> None:
    with connect(strict) as sock:
        sock.sendall(head("GET", "/healthz") + head("GET", "/experiments"))
        assert read_response(sock)[0] == 200
        status, _, body = read_response(sock)
        assert status == 200
        assert json.loads(body) == []
        # Both answered within the deadline; the connection is still usable afterwards.
        sock.sendall(head("GET", "/healthz"))
        assert read_response(sock)[0] == 200


# -- body deadline ------------------------------------------------------------------


def test_a_trickled_json_body_gets_408(strict: RunningService) -> None:
    body = json.dumps({"experiment_id": "exp-x", "params": {"pad": "a" * 100}}).encode()
    request = head(
        "POST",
        "/experiment/run",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    )
    sock = connect(strict)
    sock.sendall(request)
    began = time.monotonic()
    sender = trickle(sock, body, 0.25)  # 4 bytes a second, far below the minimum rate
    with sock:
        received, closed_at = read_to_close(sock, BODY_TIMEOUT + 30)
    problem = assert_problem(received, 408)
    assert "body" in str(problem["detail"])
    assert problem["instance"] == "/experiment/run"
    # 1 s, plus 1 s per 100 bytes received: a few bytes only.
    assert BODY_TIMEOUT - 0.1 <= closed_at - began < BODY_TIMEOUT + 0.2 + SLACK
    sender.join(timeout=5)
    assert strict.http.get("/runs").json() == []


def test_a_trickled_multipart_body_gets_408(strict: RunningService) -> None:
    boundary = "b0undary"
    body = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="repo_json"; filename="repo.json"\r\n\r\n'
        "{}\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    request = head(
        "POST",
        "/experiment/create",
        f"Content-Type: multipart/form-data; boundary={boundary}",
        f"Content-Length: {len(body)}",
    )
    sock = connect(strict)
    sock.sendall(request + body[:20])
    began = time.monotonic()
    sender = trickle(sock, body[20:], 0.25)
    with sock:
        received, closed_at = read_to_close(sock, BODY_TIMEOUT + 30)
    assert_problem(received, 408)
    assert closed_at - began < BODY_TIMEOUT + 0.2 + SLACK
    sender.join(timeout=5)
    assert strict.http.get("/experiments").json() == []


def test_a_slow_but_steady_body_is_accepted(strict: RunningService) -> None:
    """600 bytes at 200 bytes a second: 3 s, more than the 1 s base, within its extension."""
    body = json.dumps({"experiment_id": "exp-missing", "params": {"pad": "a" * 540}}).encode()
    request = head(
        "POST",
        "/experiment/run",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    )
    with connect(strict) as sock:
        sock.sendall(request)
        began = time.monotonic()
        for start in range(0, len(body), 60):
            time.sleep(0.3)
            sock.sendall(body[start : start + 60])
        status, headers, answer = read_response(sock)
        assert time.monotonic() - began > BODY_TIMEOUT * 2  # it did take longer than the base
        assert status == 404, answer  # read in full and answered by the app: no such experiment
        assert headers["content-type"] == "application/problem+json"


# -- limits ---------------------------------------------------------------------------


def test_requests_beyond_the_cap_get_503_while_the_others_complete(settings: Settings) -> None:
    limits = HttpSettings(max_requests=2, body_timeout_seconds=60, header_timeout_seconds=60)
    with service_in_thread(settings.model_copy(update={"http": limits})) as service:
        body = json.dumps({"experiment_id": "exp-missing"}).encode()
        request = head(
            "POST",
            "/experiment/run",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
        )
        held = [connect(service), connect(service)]
        for sock in held:
            sock.sendall(request)  # headers only: each request waits for its body

        with httpx.Client(base_url=service.url, timeout=30) as client:

            def refused_one() -> httpx.Response | None:
                response = client.get("/experiments")
                return response if response.status_code == 503 else None

            refused = wait_for(refused_one, 30, what="a request beyond max_requests to be refused")
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["status"] == 503
            # Liveness is not refused: a busy service is not a dead one.
            assert client.get("/healthz").status_code == 200

            # The two requests in progress complete normally once their bodies come.
            for sock in held:
                with sock:
                    sock.sendall(body)
                    status, _, answer = read_response(sock)
                    assert status == 404, answer
            wait_for(
                lambda: client.get("/experiments").status_code == 200,
                30,
                what="requests to be served again",
            )


def test_connections_beyond_the_cap_are_closed_at_once(settings: Settings) -> None:
    limits = HttpSettings(max_connections=3, keep_alive_seconds=60, header_timeout_seconds=60)
    with service_in_thread(settings.model_copy(update={"http": limits})) as service:
        service.http.close()  # the harness's own pooled connection would count

        def open_three() -> list[socket.socket] | None:
            socks = [connect(service) for _ in range(3)]
            for sock in socks:
                try:
                    sock.sendall(head("GET", "/healthz"))
                    if read_response(sock)[0] != 200:
                        raise AssertionError("refused")
                except (AssertionError, OSError):
                    for other in socks:
                        other.close()
                    return None
            return socks

        held = wait_for(open_three, 30, what="three connections to be served")
        try:
            extra = connect(service)
            began = time.monotonic()
            with extra:
                received, closed_at = read_to_close(extra, 30)
            assert closed_at - began < SLACK  # at once, not at the 60 s header deadline
            assert_problem(received, 503)
            # The connections within the cap are untouched.
            held[0].sendall(head("GET", "/healthz"))
            assert read_response(held[0])[0] == 200
        finally:
            held.pop().close()
        # One closed: a new connection is served.

        def served() -> bool:
            with connect(service) as sock:
                try:
                    sock.sendall(head("GET", "/healthz"))
                    return read_response(sock)[0] == 200
                except (AssertionError, OSError):
                    return False

        try:
            assert wait_for(served, 30, what="a connection within the cap to be served")
        finally:
            for sock in held:
                sock.close()
