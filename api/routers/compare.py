"""``GET /experiments/{id}/compare`` (runs as a table) and ``GET /runs/compare`` (two runs).

Included before the runs router, so that ``/runs/compare`` is not ``/runs/{run_id}``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from api.deps import Caller, built_services
from controller.domain.compare import Comparison, RunDiff, to_csv
from controller.domain.errors import InvalidInput
from controller.domain.models import RunState
from controller.services.compare import MAX_ROWS, CompareService

router = APIRouter(tags=["compare"])

CSV_MEDIA = "text/csv; charset=utf-8"


async def compare_service(request: Request) -> CompareService:
    return built_services(request).compare


Comparisons = Annotated[CompareService, Depends(compare_service)]


@router.get(
    "/experiments/{experiment_id}/compare",
    response_model=Comparison,
    responses={200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with format=csv."}},
)
def compare_experiment_runs(
    caller: Caller,
    compare: Comparisons,
    experiment_id: str,
    metric: Annotated[
        str | None,
        Query(max_length=512, description="Rank by this metric (flattened key, e.g. `accuracy`)."),
    ] = None,
    goal: Annotated[Literal["max", "min"], Query(description="Is bigger better?")] = "max",
    state: Annotated[
        list[RunState] | None,
        Query(description="Only runs in these states (repeatable); default: every state."),
    ] = None,
    sweep_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_ROWS)] = 100,
    baseline: Annotated[
        str | None, Query(max_length=64, description="A run id: add deltas against this run.")
    ] = None,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
) -> Comparison | Response:
    """The experiment's runs as a table: rows best first by ``metric`` (runs without a
    numeric value of it last, never an error; without ``metric``, newest first), columns
    the params that differ between the rows, then the metrics. ``best`` marks the top
    row when it has a numeric value. With ``baseline`` (any run you can see), each row
    gets ``deltas`` (row minus baseline, per metric numeric in both) and ``changed``
    (params that differ from the baseline's). Only the caller's own runs are listed
    (an admin sees all); the best ``limit`` of the newest 5,000 matching runs.
    """
    table = compare.table(
        caller,
        experiment_id,
        metric=metric or None,
        goal=goal,
        states=state,
        sweep_id=sweep_id,
        limit=limit,
        baseline=baseline,
    )
    if format == "csv":
        return Response(
            to_csv(table),
            media_type=CSV_MEDIA,
            headers={"Content-Disposition": f'attachment; filename="compare-{experiment_id}.csv"'},
        )
    return table


@router.get("/runs/compare", response_model=RunDiff)
def compare_two_runs(
    caller: Caller,
    compare: Comparisons,
    run_id: Annotated[list[str], Query(description="Exactly two run ids, `?run_id=a&run_id=b`.")],
) -> RunDiff:
    """Two runs side by side (``a`` is the first ``run_id``, ``b`` the second): every
    param and metric with whether they are the same (``delta`` = b - a for numbers), and
    the pipeline stages whose ``dvc.lock`` entries differ (deps, params or outs hashes),
    or that only one run has. The runs may belong to different experiments; both must be
    the caller's (else 404).
    """
    if len(run_id) != 2 or any(len(r) > 64 for r in run_id):
        raise InvalidInput("give exactly two run ids: ?run_id=<a>&run_id=<b>")
    return compare.pair(caller, run_id[0], run_id[1])
