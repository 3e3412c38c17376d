"""ASGI middleware: request ids, browser safety (400/403, CORS), the upload size cap (413),
HTTP latency metrics.

Plain ASGI callables rather than ``BaseHTTPMiddleware``: they sit on every
request, and they answer refusals themselves (problem+json) without touching
the request body. The cap is enforced on the bytes actually received, not only
on the Content-Length header, so a chunked upload cannot get past it.
"""

from __future__ import annotations

import json
import random
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.browser import BrowserPolicy
from controller.domain.errors import PayloadTooLarge
from controller.logs import REQUEST_ID
from controller.metrics import HTTP_REQUEST_DURATION

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Kubernetes' liveness and readiness probes come by the pod's IP, as do Prometheus' scrapes
# of /metrics (exempt only while it wants an admin's token: a page that rebinds a name to
# the service has no token, but could read public or token-less metrics).
PROBES = frozenset({"/healthz", "/readyz"})
METRICS = "/metrics"


class RequestId:
    """An id per request, in ``X-Request-Id`` and in problem bodies, to find its log lines.

    It only has to be unique, not unguessable (it grants nothing): 64 bits from the
    process's Mersenne Twister, without the system call a ``secrets`` id costs. While the
    request is handled it is also in ``controller.logs.REQUEST_ID``, so its log lines carry it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"{random.getrandbits(64):016x}"
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        token = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetrics:
    """Each request's latency, by method, route template and status (``controller.metrics``).

    The route is the template the router matched (``/runs/{run_id}``), read from the scope
    once the app is done; a request no route matched (404, or refused by a middleware
    before routing) is ``other``, and so is an unusual method: labels stay bounded whatever
    clients send. The time runs until the last byte of the answer is handed over.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500  # unless an answer starts: the app failed without one

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = getattr(scope.get("route"), "path", None)
            method = scope["method"] if scope["method"] in METHODS else "other"
            HTTP_REQUEST_DURATION.labels(
                method=method, route=route if isinstance(route, str) else "other", status=status
            ).observe(time.perf_counter() - began)


CORS_METHODS = b"GET, HEAD, POST, PUT, PATCH, DELETE"
CORS_HEADERS = b"Authorization, Content-Type"
CORS_EXPOSED = b"Retry-After, X-Request-Id"
HOST_REFUSED = (
    "the Host header names a host this service does not answer to; add it to allowed_hosts"
)


class BrowserSafety:
    """The rules of ``api.browser`` on every request, before the body is read.

    1. Host (400): refuses names the service is not configured for (DNS rebinding);
       ``GET /healthz`` and ``GET /readyz`` are exempt, since Kubernetes probes send the
       pod's IP, and so is ``GET /metrics`` for Prometheus while it wants an admin's token
       (not with ``metrics.public`` or without tokens: then nothing but the Host header
       keeps a rebinding page from reading it).
    2. Origin (403): refuses state-changing requests from foreign pages (CSRF).
    3. CORS, only when ``allowed_origins`` is set and only for those origins: preflights
       are answered here, responses get ``Access-Control-Allow-Origin``; never credentials.

    The policy is built by the app's lifespan from the settings (``app.state.browser``).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy: BrowserPolicy = scope["app"].state.browser
        host: str | None = None
        origin: str | None = None
        fetch_site: str | None = None
        preflight = False
        hosts = 0
        for name, value in scope["headers"]:
            if name == b"host":
                hosts += 1
                host = value.decode("latin-1")
            elif name == b"origin":
                # Two Origin headers make no origin at all: refused below as malformed.
                origin = value.decode("latin-1") if origin is None else "\n"
            elif name == b"sec-fetch-site":
                fetch_site = value.decode("latin-1")
            elif name == b"access-control-request-method":
                preflight = True
        method: str = scope["method"]
        path = scope["path"]
        probe = method == "GET" and (
            path in PROBES or (path == METRICS and _metrics_guarded(scope))
        )
        if not probe and (hosts > 1 or not policy.host_allowed(host, scope["http_version"])):
            await send_problem(scope, send, 400, "Host not allowed", HOST_REFUSED)
            return
        reason = policy.refusal(method, origin, fetch_site, host)
        if reason is not None:
            await send_problem(scope, send, 403, "Cross-origin request refused", reason)
            return
        if not policy.origins:
            await self.app(scope, receive, send)  # no CORS unless configured
            return
        allowed = policy.allowed_origin(origin) if origin is not None else None
        if allowed is not None and method == "OPTIONS" and preflight:
            await _preflight(send, origin or allowed)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                headers.append((b"vary", b"Origin"))
                if allowed is not None and origin is not None:
                    headers.append((b"access-control-allow-origin", origin.encode("latin-1")))
                    headers.append((b"access-control-expose-headers", CORS_EXPOSED))
            await send(message)

        await self.app(scope, receive, send_with_cors)


async def _preflight(send: Send, origin: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 204,
            "headers": [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-methods", CORS_METHODS),
                (b"access-control-allow-headers", CORS_HEADERS),
                (b"access-control-max-age", b"600"),
                (b"vary", b"Origin"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})


NO_BODY = frozenset({"GET", "HEAD"})


class BodyLimit:
    """The cap comes from the settings the lifespan loaded (``max_upload_bytes``).

    GET and HEAD requests are only checked for their declared length: the app reads no
    body for them, so there is nothing to count.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = int(scope["app"].state.services.settings.max_upload_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await _refuse(scope, send, max_bytes)
            return
        if scope["method"] in NO_BODY:
            await self.app(scope, receive, send)
            return
        received = 0
        exceeded = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    exceeded = True
                    raise PayloadTooLarge(_detail(max_bytes))
            return message

        async def guarded_send(message: Message) -> None:
            # The framework may turn our exception into its own error (FastAPI answers 400
            # for any failure while parsing a form): once over the cap, the answer is 413.
            if not exceeded:
                await send(message)
            elif message["type"] == "http.response.start":
                await _refuse(scope, send, max_bytes)

        await self.app(scope, counting_receive, guarded_send)


def _metrics_guarded(scope: Scope) -> bool:
    """Whether /metrics wants an admin's token (tokens configured, metrics not public)."""
    settings = scope["app"].state.services.settings
    return settings.tokens_file is not None and not settings.metrics.public


class Standby:
    """An instance on standby (another holds the dispatch lease: ``services.fence``) answers
    reads but refuses changes with 503: a run it accepted would wait for a dispatcher that
    is not looking, and its cancel would reach no runner."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            fence = scope["app"].state.services.fence
            if fence is not None and not fence.leader:
                await send_problem(scope, send, 503, "Standby", fence.describe())
                return
        await self.app(scope, receive, send)


def _detail(max_bytes: int) -> str:
    return f"the request body is larger than the {max_bytes}-byte upload limit"


async def _refuse(scope: Scope, send: Send, max_bytes: int) -> None:
    await send_problem(scope, send, 413, PayloadTooLarge.title, _detail(max_bytes))


async def send_problem(scope: Scope, send: Send, status: int, title: str, detail: str) -> None:
    """A problem+json answer from middleware (before the app's error handlers); the
    connection is closed, since the request body may not have been read."""
    body = json.dumps(
        {
            "type": "about:blank",
            "title": title,
            "status": status,
            "detail": detail,
            "instance": scope.get("path", ""),
            "request_id": scope.get("state", {}).get("request_id"),
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
