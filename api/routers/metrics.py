"""``GET /metrics``: the service's metrics in the Prometheus text format.

The counts are service-wide (every tenant's runs), so a caller needs an admin token,
or none at all with ``metrics.public: true``. The Host checks of ``api.middleware``
apply either way (a public ``/metrics`` is not readable through DNS rebinding).
Not in the OpenAPI document: it is for Prometheus, not for API clients.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from api.deps import built_services, principal
from controller.domain.errors import Forbidden

router = APIRouter(tags=["metrics"])


async def metrics_reader(request: Request) -> None:
    """Anyone when ``metrics.public``; else an authenticated admin (401 / 403)."""
    if built_services(request).settings.metrics.public:
        return
    caller = await principal(request)
    if not caller.admin:
        raise Forbidden(
            "metrics are service-wide: they need an admin token (or metrics.public: true)"
        )


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, _: Annotated[None, Depends(metrics_reader)]) -> Response:
    # A plain def: the scrape counts runs in the store (a blocking query).
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
