"""Webhooks, pure: the subscription request, the CloudEvents 1.0 envelope each delivery
carries, and Standard Webhooks signatures.

A delivery's body is a CloudEvent in structured JSON mode (``specversion``, ``id``,
``source``, ``type`` ``io.mlexp.<event type>``, ``time``, ``subject``,
``datacontenttype``, ``data``); the ``id`` is the event's, the same on every retry and
for every webhook that receives it. It is signed as the Standard Webhooks spec says
(https://www.standardwebhooks.com): ``webhook-id`` (the event id),
``webhook-timestamp`` (Unix seconds, fresh for each attempt) and
``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` keyed with the
bytes that the secret's base64 (after ``whsec_``) encodes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from controller.domain.egress import BadHost, http_url_host
from controller.domain.models import JsonValue

EventType = Literal[
    "run.started",
    "run.succeeded",
    "run.failed",
    "run.cancelled",
    "sweep.finished",
    "model.registered",
    "model.promoted",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
PING = "ping"  # what POST /webhooks/{id}/test sends; nobody subscribes to it
TYPE_PREFIX = "io.mlexp."
SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
SECRET_BYTES = 32
MAX_URL_CHARS = 2048
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
WEBHOOK_ID = re.compile(r"^wh-[0-9a-f]{16}$")

ExperimentId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]


class WebhookRequest(BaseModel):
    """``POST /webhooks``: where to send which events (of which experiment, if given)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        max_length=MAX_URL_CHARS,
        description="http(s) URL the events are POSTed to; it must pass the egress policy.",
        examples=["https://ci.example.com/hooks/mlexp"],
    )
    events: list[EventType] = Field(
        min_length=1,
        max_length=len(EVENT_TYPES),
        description="Event types to receive (at least one).",
        examples=[["run.succeeded", "run.failed"]],
    )
    experiment_id: ExperimentId | None = Field(
        default=None, description="Only this experiment's events (default: all of yours)."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        check_url(url)
        return url

    @field_validator("events")
    @classmethod
    def _events(cls, events: list[EventType]) -> list[EventType]:
        return sorted(set(events), key=EVENT_TYPES.index)


def check_url(url: str) -> str:
    """The URL's host; ValueError if it is not an http(s) URL this service would POST to
    (no user info: a credential in a URL would be listed back)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise ValueError("the URL must start with https:// or http://")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F or c == "\\" for c in url):
        raise ValueError("the URL must not contain spaces, control characters or backslashes")
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if "@" in authority:
        raise ValueError("the URL must not carry user info (credentials)")
    if "#" in url:
        raise ValueError("the URL must not have a fragment")
    try:
        return http_url_host(url)
    except BadHost as exc:
        raise ValueError(f"the URL has no valid host ({exc})") from None


class WebhookView(BaseModel):
    """A webhook as its owner sees it (never its secret)."""

    webhook_id: str
    url: str
    events: list[str]
    experiment_id: str | None = None
    created_at: datetime


class Webhook(WebhookView):
    """The stored record."""

    owner: str

    def view(self) -> WebhookView:
        return WebhookView.model_validate(self.model_dump(exclude={"owner"}))

    def wants(self, event_type: str, experiment_id: str) -> bool:
        return event_type in self.events and self.experiment_id in (None, experiment_id)


class WebhookCreated(WebhookView):
    """The answer to ``POST /webhooks``: the only time the secret is shown."""

    secret: str = Field(
        description="Signing secret (whsec_...): verify webhook-signature with it. "
        "Shown once; it cannot be read back."
    )


class PingQueued(BaseModel):
    """``POST /webhooks/{id}/test``: a ping is on its way."""

    webhook_id: str
    delivery_id: str
    event_id: str


class DeliveryView(BaseModel):
    """One delivery of a webhook: what was sent, how often, how it went."""

    delivery_id: str
    event_id: str
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: datetime
    next_attempt_at: datetime | None = Field(
        default=None, description="When it is tried again (pending only)."
    )
    finished_at: datetime | None = Field(
        default=None, description="When it was delivered or given up."
    )


# --- the envelope ---------------------------------------------------------------------


def new_event_id() -> str:
    return f"evt_{secrets.token_hex(16)}"


def cloud_event(
    *,
    event_id: str,
    event_type: str,
    source: str,
    subject: str,
    time: datetime,
    data: Mapping[str, JsonValue],
) -> dict[str, JsonValue]:
    """A CloudEvents 1.0 event in structured JSON mode."""
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": TYPE_PREFIX + event_type,
        "time": time.isoformat(),
        "subject": subject,
        "datacontenttype": "application/json",
        "data": dict(data),
    }


def envelope_json(event: Mapping[str, JsonValue]) -> str:
    """The body that is sent (and signed): compact JSON."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


# --- signatures -----------------------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key a ``whsec_`` secret encodes; ValueError if it is not one."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except ValueError:
        raise ValueError("not a whsec_ secret") from None
    if not 24 <= len(key) <= 64:
        raise ValueError("a signing secret is 24 to 64 bytes")
    return key


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "msg_id.timestamp.body">``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one attempt (timestamp: now, in Unix seconds)."""
    return {
        "content-type": "application/cloudevents+json; charset=utf-8",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, msg_id, timestamp, body),
    }
