"""``/webhooks``: subscribe a URL to events, list and delete subscriptions, send a ping,
and see each delivery's fate. A caller sees only its own webhooks."""

from __future__ import annotations

from typing import Annotated, Literal

from anyio import to_thread
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import ValidationError

from api.deps import Caller, built_services
from controller.domain.errors import InvalidInput, summary, validation_details
from controller.domain.webhooks import (
    DeliveryView,
    PingQueued,
    WebhookCreated,
    WebhookRequest,
    WebhookView,
)
from controller.services.notifications import WebhookService

router = APIRouter(tags=["webhooks"])

WebhookId = Annotated[str, Path(max_length=64)]


async def webhook_service(request: Request) -> WebhookService:
    return built_services(request).webhooks


Webhooks = Annotated[WebhookService, Depends(webhook_service)]

MAX_BODY_BYTES = 16 * 1024


@router.post(
    "/webhooks",
    status_code=201,
    response_model=WebhookCreated,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": WebhookRequest.model_json_schema()}},
        }
    },
)
async def create_webhook(request: Request, caller: Caller, webhooks: Webhooks) -> WebhookCreated:
    """Subscribe ``url`` to ``events`` (of ``experiment_id`` only, if given).

    Each event is POSTed as a CloudEvents 1.0 JSON body, signed per Standard Webhooks
    (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) with the ``secret`` of
    this answer: it is shown once. The URL must pass the egress policy (422).
    """
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidInput(f"a webhook request is at most {MAX_BODY_BYTES} bytes")
    try:
        body = WebhookRequest.model_validate_json(raw)
    except ValidationError as exc:
        details = validation_details(exc)
        raise InvalidInput(f"invalid webhook: {summary(details)}", errors=details) from None
    return await to_thread.run_sync(webhooks.create, caller, body)


@router.get("/webhooks", response_model=list[WebhookView])
def list_webhooks(caller: Caller, webhooks: Webhooks) -> list[WebhookView]:
    """Your webhooks, oldest first (never their secrets)."""
    return webhooks.list_webhooks(caller)


@router.get("/webhooks/{webhook_id}", response_model=WebhookView)
def get_webhook(caller: Caller, webhooks: Webhooks, webhook_id: WebhookId) -> WebhookView:
    return webhooks.get(caller, webhook_id)


@router.delete("/webhooks/{webhook_id}", status_code=204)
def delete_webhook(caller: Caller, webhooks: Webhooks, webhook_id: WebhookId) -> Response:
    """Delete the webhook; its pending deliveries are dropped, never sent."""
    webhooks.delete(caller, webhook_id)
    return Response(status_code=204)


@router.post("/webhooks/{webhook_id}/test", status_code=202, response_model=PingQueued)
def test_webhook(caller: Caller, webhooks: Webhooks, webhook_id: WebhookId) -> PingQueued:
    """Queue a ping (type ``io.mlexp.ping``); see its fate in the deliveries."""
    return webhooks.test(caller, webhook_id)


@router.get("/webhooks/{webhook_id}/deliveries", response_model=list[DeliveryView])
def list_deliveries(
    caller: Caller,
    webhooks: Webhooks,
    webhook_id: WebhookId,
    status: Literal["pending", "delivered", "failed"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[DeliveryView]:
    """The webhook's deliveries, newest first: status, attempts, last status code and
    error (a short excerpt of the receiver's answer at most)."""
    return webhooks.deliveries(caller, webhook_id, status=status, limit=limit, offset=offset)
