"""Logs: an event name plus key/values, as a readable line or one JSON object a line.

Callers log ``log.info("run queued", extra={"run_id": ...})``; both formats write every
extra key. ``log_format: text`` (the default, for a terminal)::

    2025-05-01T12:00:00.123Z INFO mlexp.runs run queued run_id=r-1 request_id=9f…

``log_format: json``: ``{"time", "level", "logger", "message", "request_id", "run_id",
…extras, "exc"}``, ``request_id`` and ``run_id`` where known. The request id comes from
:data:`REQUEST_ID`, which ``api.middleware.RequestId`` sets while it handles a request
(:class:`ContextFilter` copies it onto each record, also in the worker threads a request
runs in), so every line a request causes carries the id its answer names.

Credentials: no caller passes one, and request bodies and headers are never logged. As a
second line of defence each line is scrubbed (:func:`redact`) of what has the shape of a
credential — URL userinfo, ``Bearer``/``Basic`` values, secret-named query parameters
and assignments — and an extra whose key names a secret is never written.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from contextvars import ContextVar
from typing import Literal

LogFormat = Literal["text", "json"]

REQUEST_ID: ContextVar[str | None] = ContextVar("mlexp_request_id", default=None)
RUN_ID: ContextVar[str | None] = ContextVar("mlexp_run_id", default=None)

HANDLER_NAME = "mlexp"
# uvicorn's records carry a copy of the message with terminal colours: not for a log line.
_SKIPPED = {"color_message"}
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_FIXED = ("time", "level", "logger", "message")
_CONTEXT = ("request_id", "run_id")
_SECRET_KEY = re.compile(
    r"(?i)(token|password|passwd|secret|authorization|credential|access_key|api_key|cookie)"
)
MASK = "***"

_REDACTIONS: list[tuple[re.Pattern[str], str]] = [
    # scheme://user:password@host and scheme://token@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"<>]+@"), rf"\1{MASK}@"),
    # Authorization: Bearer xyz / Basic xyz (in a header dump or an error)
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{8,}"), rf"\1\2{MASK}"),
    # ?token=…&X-Amz-Signature=… and key=value / key: value with a secret-like key
    (
        re.compile(
            r"(?i)(\b[\w.-]*(?:token|password|passwd|secret|signature|credential|access_key"
            r"|api_key|private_key)[\w.-]*\b[\"']?\s*[=:]\s*[\"']?)[^\s&\"',;}]+"
        ),
        rf"\1{MASK}",
    ),
]


def redact(text: str) -> str:
    """``text`` without anything shaped like a credential (see the module docstring)."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


class ContextFilter(logging.Filter):
    """Copies the current request id and run id onto a record that has none."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in (("request_id", REQUEST_ID), ("run_id", RUN_ID)):
            if getattr(record, name, None) is None:
                value = var.get()
                if value is not None:
                    setattr(record, name, value)
        return True


def _timestamp(record: logging.LogRecord) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{stamp}.{int(record.msecs):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, object]:
    """The record's request id, run id and extras, in that order; secret-named ones masked."""
    fields: dict[str, object] = {}
    for name in _CONTEXT:
        value = getattr(record, name, None)
        if value is not None:
            fields[name] = value
    for key, value in vars(record).items():
        if key in _STANDARD or key in _SKIPPED or key in _CONTEXT or key.startswith("_"):
            continue
        name = f"{key}_" if key in _FIXED or key == "exc" else key
        fields[name] = MASK if _SECRET_KEY.search(key) else value
    return fields


def _clean(value: object) -> object:
    """A JSON-able, redacted value: strings scrubbed, containers walked, the rest as text."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {str(k): MASK if _SECRET_KEY.search(str(k)) else _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return redact(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object a line (a traceback is one string field, ``exc``)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        entry.update({key: _clean(value) for key, value in _fields(record).items()})
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


_BARE = re.compile(r"[^\s\"'=\\]+")


class TextFormatter(logging.Formatter):
    """``time LEVEL logger message key=value…``; values with spaces or quotes are quoted."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, record.name, record.getMessage()]
        for key, value in _fields(record).items():
            text = value if isinstance(value, str) else json.dumps(_clean(value), default=str)
            parts.append(f"{key}={text if _BARE.fullmatch(text) else json.dumps(text)}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


def formatter(fmt: LogFormat) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


def configure_logging(level: str = "INFO", fmt: LogFormat = "text") -> None:
    """One handler on stderr for the service's loggers (``mlexp.*``) and uvicorn's (its
    access log only if it is on: ``mlexp serve`` turns it off, since paths may hold ids).

    Called by the app's lifespan and by ``mlexp serve``; calling it again replaces the
    handler. The root logger gets it too (at WARNING, for libraries' warnings) only when
    nothing else configured it, so an embedding program (a test runner) keeps its own.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(ContextFilter())
    service = logging.getLogger("mlexp")
    service.handlers[:] = [handler]
    service.setLevel(level.upper())
    service.propagate = False
    server = logging.getLogger("uvicorn")
    server.handlers[:] = [handler]
    server.propagate = False
    access = logging.getLogger("uvicorn.access")
    if access.handlers:  # uvicorn turns its access log off by leaving it no handler
        access.handlers[:] = [handler]
        access.propagate = False
    error = logging.getLogger("uvicorn.error")  # propagates to "uvicorn"
    error.handlers[:] = []
    error.propagate = True
    root = logging.getLogger()
    if all(h.get_name() == HANDLER_NAME for h in root.handlers):
        root.handlers[:] = [handler]
        root.setLevel(logging.WARNING)
