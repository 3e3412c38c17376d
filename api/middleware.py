"""ASGI middleware: request ids, and the total upload size cap (413).

The cap is enforced on the bytes actually received, not only on the
Content-Length header, so a chunked upload cannot get past it.
"""

from __future__ import annotations

import json
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller.domain.errors import PayloadTooLarge


class RequestId:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodyLimit:
    """The cap comes from the settings the lifespan loaded (``max_upload_bytes``)."""

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


def _detail(max_bytes: int) -> str:
    return f"the request body is larger than the {max_bytes}-byte upload limit"


async def _refuse(scope: Scope, send: Send, max_bytes: int) -> None:
    body = json.dumps(
        {
            "type": "about:blank",
            "title": PayloadTooLarge.title,
            "status": 413,
            "detail": _detail(max_bytes),
            "instance": scope.get("path", ""),
            "request_id": scope.get("state", {}).get("request_id"),
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
