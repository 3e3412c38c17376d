"""``POST /experiment/create`` and the experiment listing/detail endpoints."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, Response, UploadFile

from api.deps import Caller, Experiments
from api.idempotency import Idempotent
from controller.domain.errors import InvalidBundle
from controller.domain.models import CreatedExperiment, Experiment
from controller.services.experiments import BundleUpload

router = APIRouter(tags=["experiments"])


@router.post("/experiment/create", status_code=201, response_model=CreatedExperiment)
def create_experiment(
    caller: Caller,
    experiments: Experiments,
    once: Idempotent,
    repo_json: Annotated[UploadFile, File(description="Repository, DVC remote and credentials.")],
    dvc_yaml_file: Annotated[UploadFile, File(description="The DVC pipeline (dvc.yaml).")],
    hyperparams_file: Annotated[
        UploadFile, File(description="Hyperparameters, YAML or JSON; stored as params.yaml.")
    ],
    files: Annotated[
        list[UploadFile] | None,
        File(description="Code and data files; each part's filename is its path in the repo."),
    ] = None,
) -> CreatedExperiment | Response:
    """Validate a bundle and turn it into a versioned experiment repository.

    The answer's ``warnings`` say what the pipeline checks noticed without refusing it.

    With an ``Idempotency-Key`` header, a retry gets the first answer and creates nothing.
    """
    uploads = []
    for part in files or []:
        if not part.filename:
            raise InvalidBundle("every 'files' part needs a filename (its path in the repo)")
        uploads.append((part.filename, part.file.read()))
    bundle = BundleUpload(
        repo_json=repo_json.file.read(),
        dvc_yaml=dvc_yaml_file.file.read(),
        hyperparams=hyperparams_file.file.read(),
        files=uploads,
    )
    return once.call(experiments.create, caller, bundle)


@router.get("/experiments", response_model=list[Experiment])
def list_experiments(
    caller: Caller,
    experiments: Experiments,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[Experiment]:
    return experiments.list(caller, limit=limit, offset=offset)


@router.get("/experiments/{experiment_id}", response_model=Experiment)
def get_experiment(caller: Caller, experiments: Experiments, experiment_id: str) -> Experiment:
    return experiments.get(caller, experiment_id)
