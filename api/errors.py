"""Every error leaves as RFC 9457 ``application/problem+json``, rendered here and only here.

One table maps the domain's error classes to HTTP statuses; validation errors
from FastAPI are reshaped the same way (without echoing input values, which
may be credentials); anything unexpected becomes a bare 500 that carries the
request id, with the traceback going to the log and not to the client.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller.domain import errors

log = logging.getLogger("mlexp.api")

PROBLEM_JSON = "application/problem+json"

STATUS: list[tuple[type[errors.MlexpError], int]] = [
    (errors.InvalidInput, 422),
    (errors.PayloadTooLarge, 413),
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.TooManyRequests, 429),
    (errors.ExternalError, 502),
]


def status_of(exc: errors.MlexpError) -> int:
    return next((status for cls, status in STATUS if isinstance(exc, cls)), 500)


def problem(
    request: Request,
    status: int,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: object,
) -> JSONResponse:
    body: dict[str, object] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "request_id": getattr(request.state, "request_id", None),
    }
    body.update({k: v for k, v in extra.items() if v})
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="mlexp"'
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.MlexpError)
    stages = exc.stages if isinstance(exc, errors.InvalidPipeline) else None
    headers = (
        {"Retry-After": str(exc.retry_after)} if isinstance(exc, errors.TooManyRequests) else None
    )
    return problem(
        request,
        status_of(exc),
        exc.title,
        exc.detail,
        headers=headers,
        errors=exc.errors,
        stages=stages,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"loc": ".".join(str(p) for p in err.get("loc", ())), "msg": err.get("msg", "")}
        for err in exc.errors()
    ]
    summary = "; ".join(f"{d['loc']}: {d['msg']}" for d in details)
    return problem(request, 422, "Invalid request", summary or "invalid request", errors=details)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
    return problem(request, exc.status_code, title, str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    log.error(
        "unhandled error",
        exc_info=exc,
        extra={"request_id": request_id, "path": request.url.path},
    )
    return problem(
        request, 500, "Internal error", f"unexpected error; quote request id {request_id}"
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.MlexpError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
