"""Liveness and readiness."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.deps import services
from controller.domain.errors import MlexpError
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


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str] = Field(
        description="Each check and what it found: ``store``; ``kubernetes`` (the API server "
        "answers) and ``dispatch`` (this instance holds the dispatch lease) when configured."
    )


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: a check failed."}},
)
def readyz(svc: Annotated[Services, Depends(services)]) -> JSONResponse:
    """Whether this instance should get traffic: its store answers, the Kubernetes API
    server answers (when configured), and it holds the dispatch lease (when fenced; an
    instance on standby is alive but not ready)."""
    checks: dict[str, str] = {}
    ready = True
    try:
        svc.store.list_runs(limit=1)
        checks["store"] = "ok"
    except Exception as exc:  # any failure of the database is "not ready"
        ready, checks["store"] = False, f"failed: {type(exc).__name__}"
    if svc.kube is not None:
        try:
            checks["kubernetes"] = f"ok ({svc.kube.server_version()})"
        except MlexpError as exc:
            ready, checks["kubernetes"] = False, f"failed: {exc.detail}"
    if svc.fence is not None:
        checks["dispatch"] = svc.fence.describe()
        ready = ready and svc.fence.leader
    body = Readiness(ready=ready, checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
