"""The FastAPI application: lifespan, middleware, error rendering, routers.

``create_app`` builds nothing but the app object; the lifespan reads settings
and builds the services once (so importing ``api`` has no side effects).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import CapacityLimiter
from fastapi import FastAPI

from api import errors, idempotency, openapi, ui
from api.browser import BrowserPolicy
from api.deadlines import BodyDeadline
from api.middleware import BodyLimit, BrowserSafety, HttpMetrics, RequestId, Standby
from api.routers import (
    compare,
    experiments,
    health,
    metrics,
    registry,
    resources,
    runs,
    sweeps,
    webhooks,
)
from controller.logs import configure_logging
from controller.metrics import ServiceCollector, app_registry, observe_run_end
from controller.services.container import Services, build_services
from controller.services.idempotency import IdempotencyService
from controller.settings import Settings, load_settings

DESCRIPTION = """\
Post an experiment bundle (repository credentials, a DVC pipeline, hyperparameters
and code); run its pipeline; get every run's results back as a git branch plus
data in the DVC remote: `git clone -b <run branch> <repo> && dvc pull`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resolved = settings or load_settings()
        configure_logging(resolved.log_level, resolved.log_format)
        # Before anything is built: a malformed allowed_hosts/origins entry stops start-up.
        app.state.browser = BrowserPolicy.from_settings(resolved)
        built: Services = build_services(resolved)
        built.runs.subscribe(observe_run_end)  # before start: reconciling may end runs
        app.state.metrics = app_registry(
            ServiceCollector(built.store.count_runs_by_state_and_resource)
        )
        app.state.services = built
        if built.fence is not None:  # dispatch once this instance holds the lease
            built.fence.start()
        else:
            built.activate()
        app.state.idempotency = IdempotencyService(
            built.store, ttl_seconds=resolved.idempotency.ttl_seconds
        )
        app.state.submissions = CapacityLimiter(runs.SUBMISSION_THREADS)
        try:
            yield
        finally:
            built.close()

    app = FastAPI(title="mlexp-ctrl", description=DESCRIPTION, lifespan=lifespan)
    errors.install(app)
    idempotency.install(app)
    app.add_middleware(Standby)  # innermost: only requests that passed every other check
    app.add_middleware(BodyLimit)
    app.add_middleware(BodyDeadline)  # a body that trickles in gets 408 (api.deadlines)
    app.add_middleware(BrowserSafety)  # runs before BodyLimit: refusals read no body
    app.add_middleware(RequestId)
    app.add_middleware(HttpMetrics)  # outermost: refusals by the others are timed too
    # compare before runs: GET /runs/compare is not GET /runs/{run_id}.
    routers = (experiments, compare, runs, sweeps, registry, webhooks, resources, health, metrics)
    for module in routers:
        app.include_router(module.router)
    openapi.install(app)
    ui.install(app)  # the dashboard: static files, a client of the routes above
    return app
