"""``POST /experiment/run``, run status, logs, cancel, and the run listing."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from api.deps import Caller, Runs
from api.idempotency import Idempotent
from controller.domain.errors import InvalidInput, NotFound, summary, validation_details
from controller.domain.models import Run, RunState
from controller.domain.plots import PlotRows
from controller.domain.safeyaml import load_json
from controller.services.auth import Principal
from controller.services.runs import RunRequest, RunService

router = APIRouter(tags=["runs"])

FOLLOW_POLL_SECONDS = 0.2
LOG_CHUNK = 64 * 1024
LOG_MEDIA = "text/plain; charset=utf-8"
# Submissions run in worker threads, at most this many at once (the app's
# ``state.submissions`` limiter). More would only queue on the store's write lock while
# contending for the GIL: each hand-over of it between threads costs system calls.
SUBMISSION_THREADS = 2


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    experiment_id: str = Field(max_length=64)
    resource: str = Field(default="local", description="local, job, sts/<name> or deploy/<name>")
    namespace: str | None = Field(default=None, max_length=63)
    params: dict[str, object] = Field(
        default_factory=dict, description='Overrides by dotted key, e.g. {"train.C": 0.5}.'
    )
    deadline_seconds: int | None = Field(
        default=None, ge=1, le=30 * 86400, description="resource job: the Job's deadline."
    )


SEED_FORM = {
    "type": "object",
    "required": ["repo_json"],
    "properties": {
        "repo_json": {"type": "string", "format": "binary"},
        "experiment_id": {"type": "string"},
        "resource": {"type": "string", "default": "local"},
        "namespace": {"type": "string"},
        "params": {"type": "string", "description": "JSON object of overrides"},
    },
}


@router.post(
    "/experiment/run",
    status_code=202,
    response_model=Run,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": RunCreate.model_json_schema()},
                "multipart/form-data": {"schema": SEED_FORM},
            },
        }
    },
)
async def submit_run(
    request: Request, caller: Caller, runs: Runs, once: Idempotent
) -> Run | Response:
    """Queue a run of an experiment, with parameter overrides.

    JSON is the main form; the seed's multipart form (``repo_json`` + ``resource``
    + ``namespace``) is accepted too and finds the experiment by its repository.
    With an ``Idempotency-Key`` header, a retry gets the first answer and queues nothing.
    """
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        run_request = await _from_seed_form(request, caller, runs)
    else:
        try:
            body = RunCreate.model_validate_json(await request.body())
        except ValidationError as exc:
            raise _invalid(exc) from None
        run_request = RunRequest(
            body.experiment_id,
            body.resource,
            body.namespace,
            body.params,  # type: ignore[arg-type]
            body.deadline_seconds,
        )
    if once.key is not None:
        run_request = dataclasses.replace(run_request, idempotency_key=once.key)
    # Blocking (the store, the run's log, maybe DNS): in a worker thread, at most
    # SUBMISSION_THREADS at once, since they queue on the store's lock anyway.
    return await to_thread.run_sync(
        functools.partial(once.call, runs.submit, caller, run_request),
        limiter=request.app.state.submissions,
    )


async def _from_seed_form(request: Request, caller: Principal, runs: RunService) -> RunRequest:
    form = await request.form()
    repo_json = form.get("repo_json")
    if not isinstance(repo_json, UploadFile):
        raise InvalidInput("the multipart form needs a 'repo_json' file part")
    experiment_id = _text(form.get("experiment_id"))
    if experiment_id is None:
        spec = await run_in_threadpool(runs.experiments.parse_repo, await repo_json.read())
        if spec.git.url is None:
            raise InvalidInput("experiment_id is required when repo_json has no git.url")
        found = await run_in_threadpool(
            runs.experiments.find_by_repo, caller, spec.git.url, spec.git.branch
        )
        experiment_id = found.experiment_id
    params_text = _text(form.get("params"))
    params = load_json(params_text, source="params") if params_text else {}
    if not isinstance(params, dict):
        raise InvalidInput("params must be a JSON object")
    return RunRequest(
        experiment_id, _text(form.get("resource")) or "local", _text(form.get("namespace")), params
    )


def _text(value: object) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _invalid(exc: ValidationError) -> InvalidInput:
    details = validation_details(exc)
    return InvalidInput(f"invalid run request: {summary(details)}", errors=details)


@router.get("/runs", response_model=list[Run])
def list_runs(
    caller: Caller,
    runs: Runs,
    experiment_id: str | None = None,
    state: Annotated[list[RunState] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[Run]:
    return runs.list(caller, experiment_id=experiment_id, states=state, limit=limit, offset=offset)


@router.get("/runs/{run_id}", response_model=Run)
async def get_run(caller: Caller, runs: Runs, run_id: str) -> Run:
    # On the event loop: one look-up by key on the store's reader connection, which never
    # waits for a writer (tens of microseconds), where a worker thread would cost more.
    return runs.get(caller, run_id)


class RunPlots(BaseModel):
    run_id: str
    plots: list[PlotRows] = Field(
        description="Each plot dvc.yaml declares, with its definition and, per data file, "
        "its rows (or why there are none). While the run runs, its plot files as they stand "
        "(live); once it has succeeded, as its commit holds them; otherwise empty."
    )
    live: bool = Field(
        default=False,
        description="True while the run runs: the rows are read as its stages write them "
        "(from its work dir, or as its runner reports them on Kubernetes) and will grow.",
    )


@router.get("/runs/{run_id}/plots", response_model=RunPlots)
def get_run_plots(caller: Caller, runs: Runs, run_id: str) -> RunPlots:
    """The run's plot data: rows of the JSON, YAML, CSV and TSV files ``dvc.yaml`` declares
    as plots, with the x/y fields each plot names -- as its commit holds them once it has
    succeeded, and, while it runs, as its stages write them (``live: true``)."""
    # A plain def: the rows (up to megabytes) are parsed in a worker thread.
    plots, live = runs.plots(caller, run_id)
    return RunPlots(run_id=run_id, plots=plots, live=live)


@router.post(
    "/runs/{run_id}/cancel",
    status_code=202,
    response_model=Run,
    responses={200: {"model": Run, "description": "With `wait=true`: the run, stopped."}},
)
def cancel_run(
    caller: Caller,
    runs: Runs,
    run_id: str,
    response: Response,
    wait: Annotated[
        bool, Query(description="Answer (200) only once the runner and all it started are gone.")
    ] = False,
) -> Run:
    """Stop the run and everything it started.

    A queued run is cancelled at once. A running one answers 202 at once with
    ``cancel_requested: true``; it becomes ``cancelled`` when its runner is gone (or
    ends as it would have, if it finished first). With ``wait=true`` the answer (200)
    comes only then.
    """
    if wait:
        response.status_code = 200
    return runs.cancel(caller, run_id, wait=wait)


@router.get(
    "/runs/{run_id}/logs",
    response_class=PlainTextResponse,
    response_model=None,
    responses={200: {"content": {"text/plain": {}}}},
)
async def run_logs(
    caller: Caller,
    runs: Runs,
    run_id: str,
    follow: bool = False,
    offset: Annotated[int, Query(ge=0, le=2**62, description="Start at this byte of the log.")] = 0,
) -> StreamingResponse:
    """The run's log, streamed from disk; with ``follow=true`` until the run ends.

    ``offset`` past the end is no error: the answer is empty (or, following, waits
    for the log to reach it, and ends when the run has ended).
    """
    await run_in_threadpool(runs.get, caller, run_id)
    path = runs.log_path(run_id)
    if follow:
        await run_in_threadpool(runs.want_log, run_id)
        return StreamingResponse(_follow(runs, caller, run_id, offset), media_type=LOG_MEDIA)
    size = await run_in_threadpool(_log_size, path)
    if size is None:
        raise NotFound(f"run {run_id!r} has no log yet")
    # Up to its size now: a log that grows meanwhile does not make this answer endless.
    return StreamingResponse(_read_log(path, offset, size), media_type=LOG_MEDIA)


def _log_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _read_chunk(path: Path, position: int, limit: int) -> bytes:
    """At most ``limit`` bytes of the log from ``position``; nothing at or past its end."""
    try:
        with path.open("rb") as log:
            if position >= os.fstat(log.fileno()).st_size:
                return b""  # before seeking: an offset past what a file may hold is fine too
            log.seek(position)
            return log.read(limit)
    except FileNotFoundError:
        return b""


async def _read_log(path: Path, position: int, end: int | None = None) -> AsyncIterator[bytes]:
    """The log from ``position`` to ``end`` (None: to wherever it ends), a chunk at a time."""
    while end is None or position < end:
        limit = LOG_CHUNK if end is None else min(LOG_CHUNK, end - position)
        chunk = await run_in_threadpool(_read_chunk, path, position, limit)
        if not chunk:
            return
        position += len(chunk)
        yield chunk


async def _follow(
    runs: RunService, caller: Principal, run_id: str, offset: int
) -> AsyncIterator[bytes]:
    path = runs.log_path(run_id)
    position = offset
    while True:
        chunk = await run_in_threadpool(_read_chunk, path, position, LOG_CHUNK)
        if chunk:
            position += len(chunk)
            yield chunk
            continue
        run = await run_in_threadpool(runs.get, caller, run_id)
        if run.state.terminal:
            # The service notes the end just after recording it: give that line a moment,
            # then send what is left and end.
            await asyncio.sleep(FOLLOW_POLL_SECONDS)
            async for rest in _read_log(path, position):
                yield rest
            return
        await asyncio.sleep(FOLLOW_POLL_SECONDS)
