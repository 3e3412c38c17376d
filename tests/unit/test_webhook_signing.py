"""Webhook envelopes and signatures (controller.domain.webhooks): the CloudEvents 1.0
envelope as the ``cloudevents`` package reads it, Standard Webhooks signatures as the
``standardwebhooks`` package verifies them, and the subscription request's rules."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from pydantic import ValidationError
from standardwebhooks import Webhook as Verifier
from standardwebhooks import WebhookVerificationError

from controller.domain.models import RunState
from controller.domain.webhooks import (
    EVENT_TYPES,
    WebhookRequest,
    cloud_event,
    envelope_json,
    new_event_id,
    new_secret,
    secret_key,
    signed_headers,
)

WHEN = datetime(2025, 5, 17, 12, 30, 1, 250000, tzinfo=UTC)
DATA = {"run_id": "run-1", "state": "succeeded", "metrics": {"acc": 0.9}, "note": "ü ✓"}


def envelope(event_id: str = "evt_1") -> str:
    return envelope_json(
        cloud_event(
            event_id=event_id,
            event_type="run.succeeded",
            source="/mlexp-ctrl",
            subject="run-1",
            time=WHEN,
            data=DATA,
        )
    )


def test_the_envelope_is_a_cloudevent_the_sdk_reads() -> None:
    body = envelope("evt_abc")
    headers = signed_headers(new_secret(), "evt_abc", int(time.time()), body.encode())
    event = from_http_event(HTTPMessage(headers=headers, body=body.encode()))
    assert event.get_specversion() == "1.0"
    assert event.get_id() == "evt_abc"
    assert event.get_source() == "/mlexp-ctrl"
    assert event.get_type() == "io.mlexp.run.succeeded"
    assert event.get_subject() == "run-1"
    assert event.get_time() == WHEN
    assert event.get_datacontenttype() == "application/json"
    assert event.get_data() == DATA
    assert set(json.loads(body)) == {
        "specversion", "id", "source", "type", "time", "subject", "datacontenttype", "data",
    }  # fmt: skip


def test_a_signature_verifies_with_the_standard_webhooks_library() -> None:
    secret = new_secret()
    body = envelope().encode()
    headers = signed_headers(secret, "evt_1", int(time.time()), body)
    assert Verifier(secret).verify(body, headers) == json.loads(body)
    assert headers["webhook-id"] == "evt_1"
    assert headers["webhook-signature"].startswith("v1,")


@pytest.mark.parametrize("tamper", ["body", "timestamp", "id", "secret"])
def test_anything_changed_is_refused(tamper: str) -> None:
    secret = new_secret()
    body = envelope().encode()
    now = int(time.time())
    headers = signed_headers(secret, "evt_1", now, body)
    if tamper == "body":
        body = body.replace(b"succeeded", b"failed")
    elif tamper == "timestamp":
        headers["webhook-timestamp"] = str(now - 1)
    elif tamper == "id":
        headers["webhook-id"] = "evt_2"
    else:
        secret = new_secret()
    with pytest.raises(WebhookVerificationError):
        Verifier(secret).verify(body, headers)


def test_a_stale_timestamp_is_refused_by_receivers() -> None:
    """Why signing happens at send time: a retry an hour later must carry a fresh one."""
    secret = new_secret()
    body = envelope().encode()
    headers = signed_headers(secret, "evt_1", int(time.time()) - 3600, body)
    with pytest.raises(WebhookVerificationError):
        Verifier(secret).verify(body, headers)


def test_secrets_are_whsec_and_32_random_bytes() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_")
    assert first != second
    assert len(secret_key(first)) == 32
    assert secret_key(first) == base64.b64decode(first.removeprefix("whsec_"))
    with pytest.raises(ValueError):
        secret_key("whsec_not base64!")
    with pytest.raises(ValueError):
        secret_key("whsec_" + base64.b64encode(b"short").decode())


def test_event_ids_are_unique() -> None:
    assert len({new_event_id() for _ in range(1000)}) == 1000


def test_every_run_event_the_bus_publishes_can_be_subscribed_to() -> None:
    published = {"run.started"} | {f"run.{state.value}" for state in RunState if state.terminal}
    assert published <= set(EVENT_TYPES)


def test_a_request_keeps_known_events_once_in_a_fixed_order() -> None:
    request = WebhookRequest.model_validate(
        {
            "url": "https://hooks.example.com/x",
            "events": ["run.failed", "run.started", "run.failed"],
        }
    )
    assert request.events == ["run.started", "run.failed"]


@pytest.mark.parametrize(
    "body",
    [
        {"url": "https://hooks.example.com/x", "events": []},
        {"url": "https://hooks.example.com/x", "events": ["run.exploded"]},
        {"url": "https://hooks.example.com/x"},
        {"url": "ftp://hooks.example.com/x", "events": ["run.failed"]},
        {"url": "https://user:pw@hooks.example.com/x", "events": ["run.failed"]},
        {"url": "https://hooks.example.com/x#frag", "events": ["run.failed"]},
        {"url": "https://hooks example.com/x", "events": ["run.failed"]},
        {"url": "https://", "events": ["run.failed"]},
        {"url": "https://h.example.com/" + "a" * 2100, "events": ["run.failed"]},
        {"url": "https://hooks.example.com/x", "events": ["run.failed"], "experiment_id": "../x"},
        {"url": "https://hooks.example.com/x", "events": ["run.failed"], "extra": 1},
    ],
)
def test_bad_requests_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        WebhookRequest.model_validate(body)
