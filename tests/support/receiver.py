"""A webhook receiver on loopback: a threaded ``http.server`` that keeps every request it
gets (headers, body, when) and answers as told: fail the first N with a status, hang
until released, or just 204."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.waiting import wait_for


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float


class Receiver:
    def __init__(
        self,
        *,
        port: int = 0,
        fail_first: int = 0,
        fail_status: int = 500,
        hang: bool = False,
    ) -> None:
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.hang = hang
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(
                        Received(
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            time.monotonic(),
                        )
                    )
                    count = len(receiver.requests)
                if receiver.hang:
                    receiver._release.wait(120)
                status = receiver.fail_status if count <= receiver.fail_first else 204
                self.send_response(status)
                payload = b"receiver says no: \x00\x1b[31mred\n" * 40 if status >= 300 else b""
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def wait_count(self, count: int, timeout: float = 60) -> list[Received]:
        wait_for(
            lambda: len(self.received()) >= count,
            timeout,
            what=f"{count} requests at the receiver",
            max_interval=0.05,
        )
        return self.received()
