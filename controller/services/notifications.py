"""Webhooks: subscriptions per principal, and the events they are sent.

A principal subscribes a URL to event types (of one experiment, or all of theirs). For
every event on the bus, each webhook of the event's owner that wants it gets a delivery
in the outbox: its payload is the CloudEvent body, recorded before the publisher's call
returns; it is signed when it is sent, with a fresh timestamp, so a retry an hour later
is not refused as stale. Tenants are strangers: a principal sees, tests and deletes only
its own webhooks (another's is 404, even for an admin), and receives only its own
events. Secrets are shown once, in the answer that creates the webhook.
"""

from __future__ import annotations

import logging
import secrets
import time
from datetime import UTC, datetime

from controller.adapters.store import DeliveryRow, Store
from controller.adapters.webhooks import WebhookPoster, WebhookSecrets
from controller.domain.errors import Conflict, InvalidInput, NotFound
from controller.domain.models import utcnow
from controller.domain.webhooks import (
    PING,
    DeliveryView,
    PingQueued,
    Webhook,
    WebhookCreated,
    WebhookRequest,
    WebhookView,
    cloud_event,
    envelope_json,
    new_event_id,
    new_secret,
    signed_headers,
)
from controller.metrics import WEBHOOK_DELIVERIES
from controller.services.auth import Principal
from controller.services.events import Event
from controller.services.outbox import STATUSES, Attempt, Delivery, Outbox, PayloadTooLarge
from controller.settings import Settings

log = logging.getLogger("mlexp.webhooks")

KIND = "webhook"


def target_of(webhook_id: str) -> str:
    return f"{KIND}:{webhook_id}"


class WebhookService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        outbox: Outbox,
        poster: WebhookPoster,
        secrets_store: WebhookSecrets,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.poster = poster
        self.secrets = secrets_store
        self.source = settings.webhooks.source
        self.max_per_principal = settings.webhooks.max_per_principal
        outbox.register(KIND, self.send, self._counted)

    # -- subscriptions ------------------------------------------------------------

    def create(self, principal: Principal, request: WebhookRequest) -> WebhookCreated:
        """Record a webhook (URL checked against the egress policy: blocking, it resolves)."""
        refusal = self.poster.check(request.url)
        if refusal is not None:
            raise InvalidInput(f"url: {refusal}")
        if self.store.count_webhooks(principal.name) >= self.max_per_principal:
            raise Conflict(
                f"you have {self.max_per_principal} webhooks already (webhooks.max_per_principal)"
            )
        webhook = Webhook(
            webhook_id=f"wh-{secrets.token_hex(8)}",
            owner=principal.name,
            url=request.url,
            events=list(request.events),
            experiment_id=request.experiment_id,
            created_at=utcnow(),
        )
        secret = new_secret()
        self.secrets.put(webhook.webhook_id, secret)  # first: a listed webhook can sign
        self.store.add_webhook(
            webhook.webhook_id,
            webhook.owner,
            webhook.created_at.isoformat(),
            webhook.model_dump_json(),
        )
        log.info("webhook created", extra={"webhook_id": webhook.webhook_id})
        return WebhookCreated(**webhook.view().model_dump(), secret=secret)

    def list_webhooks(self, principal: Principal) -> list[WebhookView]:
        return [
            Webhook.model_validate_json(body).view()
            for body in self.store.list_webhooks(owner=principal.name)
        ]

    def get(self, principal: Principal, webhook_id: str) -> WebhookView:
        return self._own(principal, webhook_id).view()

    def delete(self, principal: Principal, webhook_id: str) -> None:
        """Forget the webhook, its pending deliveries (never sent) and its history."""
        webhook = self._own(principal, webhook_id)
        self.store.delete_webhook(webhook.webhook_id, target_of(webhook.webhook_id))
        self.secrets.delete(webhook.webhook_id)
        log.info("webhook deleted", extra={"webhook_id": webhook.webhook_id})

    def test(self, principal: Principal, webhook_id: str) -> PingQueued:
        webhook = self._own(principal, webhook_id)
        event = Event(
            type=PING,
            subject=webhook.webhook_id,
            owner=webhook.owner,
            experiment_id=webhook.experiment_id or "",
            data={"webhook_id": webhook.webhook_id, "message": "ping from mlexp-ctrl"},
        )
        event_id = new_event_id()
        delivery_id = self._enqueue(webhook, event, event_id)
        return PingQueued(webhook_id=webhook.webhook_id, delivery_id=delivery_id, event_id=event_id)

    def deliveries(
        self,
        principal: Principal,
        webhook_id: str,
        *,
        status: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[DeliveryView]:
        """The webhook's deliveries, newest first."""
        webhook = self._own(principal, webhook_id)
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"status: one of {', '.join(STATUSES)}")
        rows = self.store.list_deliveries(
            target_of(webhook.webhook_id), status=status, limit=limit, offset=offset
        )
        return [_view(row) for row in rows]

    def _own(self, principal: Principal, webhook_id: str) -> Webhook:
        found = self.store.get_webhook(webhook_id)
        if found is None or found[0] != principal.name:
            raise NotFound(f"no webhook {webhook_id}")
        return Webhook.model_validate_json(found[1])

    # -- events -------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """An :class:`EventBus` subscriber: queue the event for each webhook that wants it
        (a few SQLite writes in the publishing thread; the sending is the outbox's)."""
        wanted = [
            webhook
            for body in self.store.list_webhooks(owner=event.owner)
            if (webhook := Webhook.model_validate_json(body)).wants(event.type, event.experiment_id)
        ]
        if not wanted:
            return
        event_id = new_event_id()  # one event: the same id for every webhook and retry
        for webhook in wanted:
            try:
                self._enqueue(webhook, event, event_id)
            except PayloadTooLarge:
                log.warning(
                    "an event is too large to send",
                    extra={"webhook_id": webhook.webhook_id, "event": event.type},
                )

    def _enqueue(self, webhook: Webhook, event: Event, event_id: str) -> str:
        body = envelope_json(
            cloud_event(
                event_id=event_id,
                event_type=event.type,
                source=self.source,
                subject=event.subject,
                time=event.time,
                data=event.data,
            )
        )
        return self.outbox.enqueue(target_of(webhook.webhook_id), event_id, event.type, body)

    # -- sending (outbox workers) ----------------------------------------------------

    def send(self, delivery: Delivery) -> Attempt:
        """One attempt: sign the stored body now and POST it to the webhook's URL."""
        webhook_id = delivery.target.split(":", 1)[1]
        found = self.store.get_webhook(webhook_id)
        secret = self.secrets.get(webhook_id) if found else None
        if found is None or secret is None:
            return Attempt(ok=False, error="the webhook was deleted", retry=False)
        webhook = Webhook.model_validate_json(found[1])
        body = delivery.payload.encode()
        headers = signed_headers(secret, delivery.event_id, int(time.time()), body)
        result = self.poster.post(webhook.url, body, headers)
        return Attempt(ok=result.ok, status=result.status, error=result.error, retry=result.retry)

    @staticmethod
    def _counted(delivery: Delivery, outcome: str) -> None:
        WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()


def _view(row: DeliveryRow) -> DeliveryView:
    def when(seconds: float | None) -> datetime | None:
        return None if seconds is None else datetime.fromtimestamp(seconds, UTC)

    return DeliveryView(
        delivery_id=row.delivery_id,
        event_id=row.event_id,
        event_type=row.event_type,
        status=row.status,
        attempts=row.attempts,
        last_status_code=row.last_status,
        last_error=row.last_error,
        created_at=datetime.fromtimestamp(row.created_at, UTC),
        next_attempt_at=when(row.next_attempt_at) if row.status == "pending" else None,
        finished_at=when(row.finished_at),
    )
