"""Liveness and readiness."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from api.deps import services
from controller.services.container import Services

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    profile: str
    version: str
    kubernetes_api_calls: dict[str, int] | None = Field(
        default=None, description="Calls made to the Kubernetes API since start, by kind."
    )


@router.get("/healthz", response_model=Health)
def healthz(svc: Annotated[Services, Depends(services)]) -> Health:
    svc.store.list_runs(limit=1)  # the database answers
    calls = svc.kube.call_count() if svc.kube is not None else None
    return Health(
        status="ok",
        profile=svc.experiments.profile,
        version=_version(),
        kubernetes_api_calls=calls,
    )


def _version() -> str:
    try:
        return version("mlexp-ctrl")
    except PackageNotFoundError:
        return "unknown"
