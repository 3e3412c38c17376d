"""The ``Idempotency-Key`` header on POST endpoints that create something.

A handler takes the :data:`Idempotent` dependency and makes its one service call
through it::

    def create_thing(caller: Caller, things: Things, once: Idempotent, ...) -> Thing | Response:
        return once.call(things.create, caller, ...)

Without the header nothing changes (the result goes out through the route's response
model). With it (rules in :mod:`controller.services.idempotency`): the first request
records its answer; a retry gets that answer back (``Idempotent-Replayed: true``) and
the handler does not run; a retry while the first is in progress waits up to
``idempotency.wait_seconds`` for its answer, then gets 409. A request that claimed a key
and recorded no answer (it failed, however it failed) frees the key when it ends
(:class:`ReleaseUnanswered`), so that the key can be used again.

The dependency is a plain ``async def``, not one that yields: FastAPI gives a yielding
dependency an exit stack on every request, key or no key, which costs more than all the
rest of the dependency; the release is this module's middleware instead.

A request is identified by its method, path and body. A multipart body counts by its
parts — each part's name, file name and content, in order — not by its bytes, whose
boundary a client draws at random for each attempt; any other body by its bytes. The
parts are hashed from the form the endpoint parsed anyway (Starlette caches it on the
request), and a JSON body from the bytes Starlette caches for the handler: nothing is
read twice.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Annotated, ParamSpec, TypeVar

from fastapi import Depends, FastAPI, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel
from starlette.datastructures import FormData, UploadFile
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import Caller, built_services
from controller.domain.errors import Conflict
from controller.services.idempotency import Answer, Claim, IdempotencyService, check_key

REPLAYED = "Idempotent-Replayed"
CHUNK = 1024 * 1024
FIRST_POLL_SECONDS = 0.01
MAX_POLL_SECONDS = 0.25

P = ParamSpec("P")
M = TypeVar("M", bound=BaseModel)


class Replay(Exception):
    """Raised by the dependency when the key already has an answer: the handler is skipped."""

    def __init__(self, answer: Answer) -> None:
        super().__init__("idempotent replay")
        self.answer = answer


class Once:
    """One request's key (or none): :meth:`call` runs the work and records its answer."""

    def __init__(
        self,
        service: IdempotencyService | None = None,
        owner: str = "",
        key: str | None = None,
        status: int = 200,
    ) -> None:
        self.service = service
        self.owner = owner
        self.key = key
        self.status = status
        self.recorded = False

    def call(self, work: Callable[P, M], *args: P.args, **kwargs: P.kwargs) -> M | Response:
        result = work(*args, **kwargs)
        if self.service is None or self.key is None:
            return result
        body = result.model_dump_json().encode()
        self.service.record(self.owner, self.key, Answer(self.status, body))
        self.recorded = True
        return Response(body, status_code=self.status, media_type="application/json")

    def release(self) -> None:
        """Free the key if no answer was recorded (blocking: the store)."""
        if self.service is not None and self.key is not None and not self.recorded:
            self.service.release(self.owner, self.key)


NO_KEY = Once()
CLAIM = "idempotency_claim"  # where a request keeps its claimed key (scope["state"])


async def once(
    request: Request,
    caller: Caller,
    raw: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="1 to 255 printable ASCII characters: a retry with the same key gets "
            "the first answer back and creates nothing more.",
        ),
    ] = None,
) -> Once:
    if raw is None:
        return NO_KEY
    key = check_key(raw)
    service: IdempotencyService = request.app.state.idempotency
    fingerprint = await request_fingerprint(request)
    wait_seconds = built_services(request).settings.idempotency.wait_seconds
    answer = await _claim(service, caller.name, key, fingerprint, wait_seconds)
    if answer is not None:
        raise Replay(answer)
    route = request.scope.get("route")
    handle = Once(service, caller.name, key, getattr(route, "status_code", None) or 200)
    setattr(request.state, CLAIM, handle)  # freed by ReleaseUnanswered if not answered
    return handle


Idempotent = Annotated[Once, Depends(once)]


async def _claim(
    service: IdempotencyService, owner: str, key: str, fingerprint: str, wait_seconds: float
) -> Answer | None:
    """The key's answer, or None once this request holds the key; 409 after waiting for
    another request that holds it. Waiting polls the store (no thread is held meanwhile)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    delay = FIRST_POLL_SECONDS
    while True:
        outcome = await run_in_threadpool(service.claim, owner, key, fingerprint)
        if outcome is Claim.NEW:
            return None
        if isinstance(outcome, Answer):
            return outcome
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise Conflict(
                "a request with this Idempotency-Key is still in progress; retry shortly "
                "to get its answer"
            )
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, MAX_POLL_SECONDS)


async def request_fingerprint(request: Request) -> str:
    digest = hashlib.sha256()
    _field(digest.update, request.method.encode())
    _field(digest.update, request.url.path.encode())
    content_type = request.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/form-data"):
        digest.update(b"multipart")
        form = await request.form()
        await run_in_threadpool(_hash_form, digest.update, form)
    else:
        digest.update(b"bytes")
        _field(digest.update, await request.body())
    return digest.hexdigest()


def _hash_form(update: Callable[[bytes], None], form: FormData) -> None:
    for name, value in form.multi_items():
        _field(update, name.encode())
        if isinstance(value, UploadFile):
            _field(update, b"file:" + (value.filename or "").encode())
            content = hashlib.sha256()
            value.file.seek(0)
            while chunk := value.file.read(CHUNK):
                content.update(chunk)
            value.file.seek(0)
            update(content.digest())
        else:
            _field(update, b"text:" + value.encode())


def _field(update: Callable[[bytes], None], data: bytes) -> None:
    """Length-prefixed, so that no two sequences of fields hash alike."""
    update(len(data).to_bytes(8, "big"))
    update(data)


async def _replay(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Replay)
    return Response(
        exc.answer.body,
        status_code=exc.answer.status,
        media_type="application/json",
        headers={REPLAYED: "true"},
    )


class ReleaseUnanswered:
    """ASGI middleware: when a request that claimed a key ends without having recorded an
    answer (an error, a refusal, a disconnect), the key is freed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            handle = scope.get("state", {}).get(CLAIM)
            if isinstance(handle, Once) and not handle.recorded:
                await run_in_threadpool(handle.release)


def install(app: FastAPI) -> None:
    app.add_exception_handler(Replay, _replay)
    app.add_middleware(ReleaseUnanswered)
