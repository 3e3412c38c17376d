"""Dependencies: the services built by the lifespan, and who is calling."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from controller.domain.errors import Forbidden, InvalidInput
from controller.services.auth import LOCAL_ADMIN, Principal, is_loopback
from controller.services.container import Services
from controller.services.experiments import ExperimentService
from controller.services.resources import ResourceService
from controller.services.runs import RunService


def services(request: Request) -> Services:
    built: Services = request.app.state.services
    return built


def principal(request: Request, svc: Annotated[Services, Depends(services)]) -> Principal:
    if svc.tokens is None:
        # No tokens file: the service is for this machine's users only.
        if not is_loopback(request.client.host if request.client else None):
            raise Forbidden("this service accepts requests from loopback only (no tokens file)")
        return LOCAL_ADMIN
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return svc.tokens.authenticate(token.strip() if scheme.lower() == "bearer" else None)


def experiment_service(svc: Annotated[Services, Depends(services)]) -> ExperimentService:
    return svc.experiments


def run_service(svc: Annotated[Services, Depends(services)]) -> RunService:
    return svc.runs


def resource_service(svc: Annotated[Services, Depends(services)]) -> ResourceService:
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
