"""``POST /experiment/sweep``, sweep status, the sweep listing, and cancel."""

from __future__ import annotations

import functools
from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import ValidationError

from api.deps import Caller, built_services
from api.idempotency import Idempotent
from controller.domain.errors import InvalidInput, summary, validation_details
from controller.domain.sweeps import SweepCreated, SweepRequest, SweepSummary, SweepView
from controller.services.sweeps import SweepService

router = APIRouter(tags=["sweeps"])


async def sweep_service(request: Request) -> SweepService:
    return built_services(request).sweeps


Sweeps = Annotated[SweepService, Depends(sweep_service)]


@router.post(
    "/experiment/sweep",
    status_code=202,
    response_model=SweepCreated,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": SweepRequest.model_json_schema()}},
        }
    },
)
async def start_sweep(
    request: Request, caller: Caller, sweeps: Sweeps, once: Idempotent
) -> SweepCreated | Response:
    """Start a sweep: many runs of one experiment, one per trial of a grid, random or
    adaptive (Optuna TPE) search, at most ``max_parallel`` queued or running at once.

    Every trial's keys are checked against the experiment's params before anything
    starts (422 naming the key); more trials than ``max_sweep_runs`` is 422 too. The
    answer has the sweep and the runs started so far (``run_ids``).
    """
    try:
        body = SweepRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        details = validation_details(exc)
        raise InvalidInput(f"invalid sweep request: {summary(details)}", errors=details) from None
    return await to_thread.run_sync(
        functools.partial(once.call, sweeps.create, caller, body),
        limiter=request.app.state.submissions,
    )


@router.get("/sweeps", response_model=list[SweepSummary])
def list_sweeps(
    caller: Caller,
    sweeps: Sweeps,
    experiment_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[SweepSummary]:
    """The caller's sweeps (an admin's: everyone's), newest first, with run counts."""
    return sweeps.list_sweeps(caller, experiment_id=experiment_id, limit=limit, offset=offset)


@router.get("/sweeps/{sweep_id}", response_model=SweepView)
def get_sweep(caller: Caller, sweeps: Sweeps, sweep_id: str) -> SweepView:
    """The sweep: counts by state, the best trial so far by its objective, the trials."""
    return sweeps.get(caller, sweep_id)


@router.post("/sweeps/{sweep_id}/cancel", response_model=SweepView)
def cancel_sweep(caller: Caller, sweeps: Sweeps, sweep_id: str) -> SweepView:
    """Cancel the sweep's queued and running trials; finished ones stay. 409 if it ended."""
    return sweeps.cancel(caller, sweep_id)
