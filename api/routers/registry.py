"""The model registry: register a run's model, promote versions to stages, read it.

Kept in the experiment repository as GTO's git tags (``<artifact>@v<semver>``,
``<artifact>#<stage>#<n>``), so ``gto show`` on a clone gives the same view.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Caller, built_services
from controller.domain.registry import VersionView
from controller.services.registry import Promotion, RegistryService, RegistryView

router = APIRouter(tags=["registry"])

NAME = Field(max_length=63, description="An artifact name: lower-case letters, digits and '-'.")
VERSION = Field(max_length=128, description="SemVer with a 'v' prefix, e.g. `v1.2.0`.")
STAGE = Field(max_length=63, description="A stage, e.g. `prod`.")


async def registry_service(request: Request) -> RegistryService:
    return built_services(request).registry


Registry = Annotated[RegistryService, Depends(registry_service)]


class RegisterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    artifact: str = NAME
    version: str | None = Field(
        default=None,
        max_length=128,
        description="Omitted: the greatest registered version with its patch bumped "
        "(`v0.0.1` for the first), as `gto register` does.",
    )
    path: str | None = Field(
        default=None,
        max_length=1024,
        description="The artifact's path in the repository; omitted: from the `artifacts` "
        "section of dvc.yaml.",
    )


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = VERSION
    stage: str = STAGE


class PromoteBestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    artifact: str = NAME
    metric: str = Field(max_length=512, description="A flattened metric key, e.g. `accuracy`.")
    goal: Literal["max", "min", "maximize", "minimize"] = "max"
    stage: str = STAGE
    sweep_id: str | None = Field(default=None, max_length=64, description="Only its trials.")


@router.post("/runs/{run_id}/register", status_code=201, response_model=VersionView)
def register_run(
    caller: Caller, registry: Registry, run_id: str, body: RegisterRequest
) -> VersionView:
    """Register the run's model as a version of ``artifact``: the annotated tag
    ``<artifact>@<version>`` on the run's commit, pushed to the experiment repository.
    Only a succeeded run (409 otherwise); a version or commit registered already is 409."""
    return registry.register(caller, run_id, body.artifact, body.version, body.path)


@router.post(
    "/experiments/{experiment_id}/registry/{artifact}/promote",
    status_code=201,
    response_model=Promotion,
)
def promote_version(
    caller: Caller, registry: Registry, experiment_id: str, artifact: str, body: PromoteRequest
) -> Promotion:
    """Assign ``stage`` to a registered version: the tag ``<artifact>#<stage>#<n>``. The
    latest assignment wins, so promoting an older version rolls back. A version that is
    the stage's current one already makes no tag (``assigned: false``)."""
    return registry.promote(caller, experiment_id, artifact, body.version, body.stage)


@router.post("/experiments/{experiment_id}/promote-best", status_code=201, response_model=Promotion)
def promote_best_run(
    caller: Caller, registry: Registry, experiment_id: str, body: PromoteBestRequest
) -> Promotion:
    """Register (if its commit has no version yet) and promote the best succeeded run by
    ``metric`` (of the sweep, with ``sweep_id``); ties go to the earliest finished."""
    return registry.promote_best(
        caller, experiment_id, body.artifact, body.metric, body.goal, body.stage, body.sweep_id
    )


@router.get("/experiments/{experiment_id}/registry", response_model=RegistryView)
def get_registry(caller: Caller, registry: Registry, experiment_id: str) -> RegistryView:
    """Artifacts, their versions and stages (each with its run, that run's metrics and the
    ``dvc get`` command that fetches it), read from the repository's tags: the view
    ``gto show`` gives on a clone."""
    return registry.registry(caller, experiment_id)
