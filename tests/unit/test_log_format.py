"""The log formats of ``controller.logs``: JSON fields, the readable text line, the request
id carried from the context (also into worker threads), and the scrubbing of anything
shaped like a credential."""

from __future__ import annotations

import contextvars
import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from controller.logs import (
    REQUEST_ID,
    ContextFilter,
    JsonFormatter,
    TextFormatter,
    configure_logging,
    formatter,
    redact,
)


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, io.StringIO]]:
    """A logger writing each record in both formats."""
    logger = logging.getLogger("mlexp.test-log-format")
    json_out, text_out = io.StringIO(), io.StringIO()
    handlers = []
    for out, fmt in ((json_out, JsonFormatter()), (text_out, TextFormatter())):
        handler = logging.StreamHandler(out)
        handler.setFormatter(fmt)
        handler.addFilter(ContextFilter())
        handlers.append(handler)
    saved = (logger.handlers[:], logger.level, logger.propagate)
    logger.handlers[:] = handlers
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, json_out, text_out
    logger.handlers[:], logger.level, logger.propagate = saved


def test_json_lines_have_the_fields_and_the_extras(
    captured: tuple[logging.Logger, io.StringIO, io.StringIO],
) -> None:
    logger, json_out, text_out = captured
    logger.info("run queued", extra={"run_id": "run-1", "experiment_id": "exp-1", "attempt": 2})
    entry = json.loads(json_out.getvalue())
    assert entry["message"] == "run queued"
    assert entry["level"] == "info"
    assert entry["logger"] == "mlexp.test-log-format"
    assert entry["time"].endswith("Z")
    assert "T" in entry["time"]
    assert entry["run_id"] == "run-1"
    assert entry["experiment_id"] == "exp-1"
    assert entry["attempt"] == 2
    assert "request_id" not in entry  # not known outside a request
    line = text_out.getvalue().rstrip("\n")
    stamp, level, name, rest = line.split(" ", 3)
    assert stamp == entry["time"]
    assert (level, name) == ("INFO", "mlexp.test-log-format")
    assert rest == "run queued run_id=run-1 experiment_id=exp-1 attempt=2"


def test_text_quotes_values_that_would_break_the_line(
    captured: tuple[logging.Logger, io.StringIO, io.StringIO],
) -> None:
    logger, _, text_out = captured
    logger.warning("git failed", extra={"stderr": 'fatal: no\nsecond "line"', "level": "x"})
    line = text_out.getvalue().rstrip("\n")
    assert "\n" not in line
    assert 'stderr="fatal: no\\nsecond \\"line\\""' in line
    assert "level_=x" in line  # an extra never overwrites a fixed field


def test_a_traceback_is_one_json_field(
    captured: tuple[logging.Logger, io.StringIO, io.StringIO],
) -> None:
    logger, json_out, _ = captured
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("step failed")
    lines = json_out.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["level"] == "error"
    assert "RuntimeError: boom" in entry["exc"]


def test_the_request_id_follows_the_context_into_worker_threads(
    captured: tuple[logging.Logger, io.StringIO, io.StringIO],
) -> None:
    logger, json_out, text_out = captured
    token = REQUEST_ID.set("feedface00000001")
    try:
        logger.info("in the request")
        # A sync route runs in a worker thread with a copy of the request's context.
        context = contextvars.copy_context()
        worker = threading.Thread(target=context.run, args=(logger.info, "in a worker"))
        worker.start()
        worker.join()
        logger.info("explicit", extra={"request_id": "given"})
    finally:
        REQUEST_ID.reset(token)
    logger.info("after the request")
    entries = [json.loads(line) for line in json_out.getvalue().splitlines()]
    assert [e.get("request_id") for e in entries] == [
        "feedface00000001",
        "feedface00000001",
        "given",
        None,
    ]
    assert "request_id=feedface00000001" in text_out.getvalue().splitlines()[0]


CANARY = "canary-Zq7XwV3pL9"


@pytest.mark.parametrize(
    "text",
    [
        f"fatal: unable to access 'https://bot:{CANARY}@git.example.com/x.git/'",
        f"fatal: unable to access 'https://{CANARY}@git.example.com/x.git/'",
        f"Authorization: Bearer {CANARY}",
        f"authorization: Basic {CANARY}==",
        f"GET https://s3.example.com/b/k?X-Amz-Signature={CANARY}&x=1",
        f"https://hooks.example.com/h?token={CANARY}",
        f"AWS_SECRET_ACCESS_KEY={CANARY}",
        f"{{'secret_access_key': '{CANARY}'}}",
        f'"password": "{CANARY}"',
    ],
)
def test_credential_shapes_are_scrubbed(text: str) -> None:
    assert CANARY not in redact(text)
    assert "***" in redact(text)


def test_plain_text_is_left_alone() -> None:
    text = "run queued on sts/trainer: https://git.example.com/ml/wine.git (branch main)"
    assert redact(text) == text


def test_secret_named_extras_and_nested_values_never_show(
    captured: tuple[logging.Logger, io.StringIO, io.StringIO],
) -> None:
    logger, json_out, text_out = captured
    logger.info(
        "odd caller",
        extra={
            "token": CANARY,
            "storage": {"secret_access_key": CANARY, "region": "eu"},
            "url": f"https://u:{CANARY}@h/x",
        },
    )
    assert CANARY not in json_out.getvalue()
    assert CANARY not in text_out.getvalue()
    entry = json.loads(json_out.getvalue())
    assert entry["token"] == "***"
    assert entry["storage"] == {"secret_access_key": "***", "region": "eu"}


def test_configure_logging_routes_the_service_and_uvicorn_through_one_handler() -> None:
    names = ("mlexp", "uvicorn", "uvicorn.access", "uvicorn.error")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in names}
    mlexp_level = logging.getLogger("mlexp").level
    try:
        logging.getLogger("uvicorn.access").handlers[:] = []  # uvicorn's access_log=False
        configure_logging("debug", "json")
        handler = logging.getLogger("mlexp").handlers[0]
        assert isinstance(handler.formatter, JsonFormatter)
        assert logging.getLogger("mlexp").level == logging.DEBUG
        assert logging.getLogger("uvicorn").handlers == [handler]
        assert logging.getLogger("uvicorn.access").handlers == []  # stays off
        logging.getLogger("uvicorn.access").addHandler(logging.NullHandler())  # on
        configure_logging("debug", "json")
        handler = logging.getLogger("mlexp").handlers[0]
        assert logging.getLogger("uvicorn.access").handlers == [handler]
        assert logging.getLogger("uvicorn.error").handlers == []  # propagates to "uvicorn"
        configure_logging("INFO", "text")  # again: replaced, not added
        assert len(logging.getLogger("mlexp").handlers) == 1
        assert isinstance(logging.getLogger("mlexp").handlers[0].formatter, TextFormatter)
    finally:
        for name, (handlers, propagate) in saved.items():
            logging.getLogger(name).handlers[:] = handlers
            logging.getLogger(name).propagate = propagate
        logging.getLogger("mlexp").setLevel(mlexp_level)
    assert isinstance(formatter("json"), JsonFormatter)
