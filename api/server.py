"""The HTTP server: uvicorn (h11), with deadlines and limits against slow or numerous clients.

``mlexp serve`` and the test harness both build their server with :func:`server_config`,
so tests exercise the server that runs. Beyond uvicorn's defaults (``http`` settings):

* **header deadline** — the request line and headers must be complete within
  ``header_timeout_seconds`` of the connection's opening, or of the first byte of a
  later request on it; else a 408 (when some bytes came) and the connection is closed.
  uvicorn has no such deadline: its keep-alive timer stops at the first byte, so a
  client sending a header byte every few seconds would hold a connection for ever;
* **keep-alive** — an idle connection is closed after ``keep_alive_seconds``;
* **connections** — one beyond ``max_connections`` gets a 503 and is closed at once,
  before anything is read (file descriptors are a shared budget: the database, run
  logs and git need theirs);
* **requests** — a request arriving while ``max_requests`` are in progress gets a 503
  problem with ``Retry-After`` and the connection is closed (``GET /healthz`` is exempt,
  so that a busy service is not restarted by its liveness probe);
* ``backlog`` for the listening socket.

The body deadline is app middleware (:mod:`api.deadlines`) and so holds under any server;
everything above does not: plain ``uvicorn api:app`` runs without it.

The checks cost nothing per request: the deadline is one timer per connection, armed and
cancelled around the headers; the request limit is compared where uvicorn creates the
request's task, by choosing which app that task runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import uvicorn
from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from controller.settings import HttpSettings, Settings

log = logging.getLogger("mlexp.http")

EXEMPT_PATHS = frozenset({"/healthz"})
RETRY_AFTER_SECONDS = 1


def problem_response(status: int, reason: str, title: str, detail: str) -> bytes:
    """A whole HTTP/1.1 problem+json response that closes the connection, as bytes."""
    body = json.dumps(
        {"type": "about:blank", "title": title, "status": status, "detail": detail}
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "content-type: application/problem+json\r\n"
        f"content-length: {len(body)}\r\n"
        + (f"retry-after: {RETRY_AFTER_SECONDS}\r\n" if status == 503 else "")
        + "connection: close\r\n\r\n"
    )
    return head.encode() + body


HEADER_TIMEOUT = problem_response(
    408, "Request Timeout", "Request timeout", "the request headers did not arrive in time"
)
TOO_MANY_CONNECTIONS = problem_response(
    503, "Service Unavailable", "Service unavailable", "too many open connections; retry later"
)
BUSY_DETAIL = "too many requests in progress; retry later"


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the header deadline and the connection and request caps.

    Subclasses made by :func:`protocol_class` carry the limits.
    """

    header_timeout: float = 10.0
    max_connections: int = 512
    max_requests: int = 256

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, object],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._app = self.app
        self._header_timer: asyncio.TimerHandle | None = None
        self._request_bytes = False  # bytes of a request whose headers are not complete

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            log.warning("connection refused: too many", extra={"max": self.max_connections})
            transport.write(TOO_MANY_CONNECTIONS)
            transport.close()
            return
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        if before is None or before.response_complete:
            # Between requests: these bytes begin the next one (or end the last one's
            # unread body); its headers are now on the clock.
            self._request_bytes = True
            if self._header_timer is None:
                self._arm_header_deadline()
        self._choose_app()
        super().data_received(data)
        if self.cycle is not before:
            self._disarm_header_deadline()

    def on_response_complete(self) -> None:
        before = self.cycle
        self._choose_app()  # a pipelined request may start below
        super().on_response_complete()
        if self.cycle is not before:
            self._disarm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    # -- the header deadline -------------------------------------------------

    def _arm_header_deadline(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _disarm_header_deadline(self) -> None:
        self._request_bytes = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._request_bytes:
            log.info("request header timeout", extra={"timeout": self.header_timeout})
            self.transport.write(HEADER_TIMEOUT)
        self.transport.close()

    # -- the request limit -----------------------------------------------------

    def _choose_app(self) -> None:
        """The app a request starting now runs: the real one, or the 503 when at the limit."""
        self.app = self._app if len(self.tasks) < self.max_requests else self._busy

    async def _busy(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "http" and scope["path"] in EXEMPT_PATHS:
            await self._app(scope, receive, send)
            return
        log.warning("request refused: too many in progress", extra={"max": self.max_requests})
        body = json.dumps(
            {
                "type": "about:blank",
                "title": "Service unavailable",
                "status": 503,
                "detail": BUSY_DETAIL,
                "instance": scope.get("path", ""),
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})


def protocol_class(limits: HttpSettings) -> type[GuardedH11Protocol]:
    class Configured(GuardedH11Protocol):
        header_timeout = limits.header_timeout_seconds
        max_connections = limits.max_connections
        max_requests = limits.max_requests

    return Configured


def server_config(
    settings: Settings,
    app: str | Callable[..., Awaitable[None]] = "api:app",
    *,
    port: int | None = None,
    log_level: str | None = None,
) -> uvicorn.Config:
    """The uvicorn configuration of the service: one worker, the guarded protocol."""
    limits = settings.http
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port if port is None else port,
        http=protocol_class(limits),
        timeout_keep_alive=limits.keep_alive_seconds,
        backlog=limits.backlog,
        lifespan="on",
        log_level=(log_level or settings.log_level).lower(),
        access_log=False,
    )
