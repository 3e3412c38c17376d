"""The request body deadline (408), as ASGI middleware so that it holds under any server.

A body must arrive within ``http.body_timeout_seconds``, plus one second for each
``http.body_min_bytes_per_second`` bytes received so far: a client that trickles a byte
every few seconds is cut off, a large upload over a slow but honest link is not. Only the
time the app spends waiting for the client's bytes counts, not the time before it starts
reading them (a busy thread pool is not the client's fault).

On expiry the request gets a 408 problem (if nothing was sent yet) and the connection is
closed. GET and HEAD requests pass straight through: the app reads no body for them. The
header deadline and the connection limits are the server's (:mod:`api.server`).
"""

from __future__ import annotations

import asyncio
import logging

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.middleware import send_problem
from controller.settings import HttpSettings

log = logging.getLogger("mlexp.http")

TITLE = "Request timeout"
NO_BODY = frozenset({"GET", "HEAD"})


def _detail(limits: HttpSettings) -> str:
    rate = limits.body_min_bytes_per_second
    extra = f", plus 1 s per {rate} bytes received" if rate else ""
    return f"the request body did not arrive in time ({limits.body_timeout_seconds:g} s{extra})"


class BodyDeadline:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in NO_BODY:
            await self.app(scope, receive, send)
            return
        limits: HttpSettings | None = None
        waited = 0.0
        received = 0
        complete = False
        expired = False
        started = False

        async def timed_receive() -> Message:
            nonlocal limits, waited, received, complete, expired
            if complete:
                return await receive()  # the body is in; waiting for a disconnect is free
            if limits is None:
                limits = scope["app"].state.services.settings.http
            rate = limits.body_min_bytes_per_second
            allowed = limits.body_timeout_seconds + (received / rate if rate else 0.0)
            loop = asyncio.get_running_loop()
            began = loop.time()
            try:
                async with asyncio.timeout(max(allowed - waited, 0.0)):
                    message = await receive()
            except TimeoutError:
                expired = True
                log.info("request body timeout", extra={"path": scope["path"]})
                raise HTTPException(408, _detail(limits)) from None
            finally:
                waited += loop.time() - began
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        async def guarded_send(message: Message) -> None:
            # Once the body is late, the answer is ours (408, connection closed), whatever
            # the framework makes of the exception (FastAPI turns form errors into 400s).
            nonlocal started
            if not expired:
                started = True
                await send(message)
            elif not started and message["type"] == "http.response.start":
                started = True
                await send_problem(scope, send, 408, TITLE, _detail(_limits(scope)))

        try:
            await self.app(scope, timed_receive, guarded_send)
        except Exception:
            if not expired or started:
                raise
            await send_problem(scope, send, 408, TITLE, _detail(_limits(scope)))


def _limits(scope: Scope) -> HttpSettings:
    limits: HttpSettings = scope["app"].state.services.settings.http
    return limits
