"""Dependencies: the services built by the lifespan, and who is calling.

They sit on every request, so they are kept cheap:

* ``async def``: they only read memory (the app's state, token digests, a rate bucket),
  and FastAPI would run a plain ``def`` dependency in its thread pool, a hand-over to a
  worker thread and back per dependency and request that costs more than the work;
* flat: each reads the services from the app's state itself rather than through a
  ``Depends(services)`` of its own, since FastAPI resolves every node of the graph on
  every request, cached or not.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from controller.domain.errors import Forbidden, InvalidInput
from controller.services.auth import LOCAL_ADMIN, Principal, is_loopback
from controller.services.container import Services
from controller.services.experiments import ExperimentService
from controller.services.resources import ResourceService
from controller.services.runs import RunService


def built_services(request: Request) -> Services:
    """The services the lifespan built (a plain function, for dependencies to call)."""
    built: Services = request.app.state.services
    return built


async def services(request: Request) -> Services:
    return built_services(request)


async def principal(request: Request) -> Principal:
    """Who is calling, and whether their request rate allows another request (429).

    The token comes from the Authorization header only: never from a cookie (a browser
    would attach it to a forged request) nor from the query string (it would end up in
    logs and browser history).
    """
    svc = built_services(request)
    if svc.tokens is None:
        # No tokens file: the service is for this machine's users only (and not rate-limited).
        if not is_loopback(request.client.host if request.client else None):
            raise Forbidden("this service accepts requests from loopback only (no tokens file)")
        return LOCAL_ADMIN
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    caller = svc.tokens.authenticate(token.strip() if scheme.lower() == "bearer" else None)
    rate = caller.requests_per_second
    svc.tokens.rates.admit(caller.name, svc.settings.requests_per_second if rate is None else rate)
    return caller


async def experiment_service(request: Request) -> ExperimentService:
    return built_services(request).experiments


async def run_service(request: Request) -> RunService:
    return built_services(request).runs


async def resource_service(request: Request) -> ResourceService:
    svc = built_services(request)
    if svc.resources is None:
        raise InvalidInput(
            "Kubernetes is not configured for this service (config/k8s-config.yaml); "
            "see config.templ/k8s-config.yaml"
        )
    return svc.resources


Caller = Annotated[Principal, Depends(principal)]
Experiments = Annotated[ExperimentService, Depends(experiment_service)]
Runs = Annotated[RunService, Depends(run_service)]
Resources = Annotated[ResourceService, Depends(resource_service)]
