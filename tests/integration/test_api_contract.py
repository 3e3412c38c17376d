"""The fixed API contract (DESIGN.md): paths, methods, status codes and Swagger UI."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.settings import Settings
from tests.support.bundles import QUICK_DVC, create, small_parts
from tests.support.service import RunningService, service_in_thread

pytestmark = pytest.mark.integration

CONTRACT = {
    ("/experiment/create", "post"): "201",
    ("/experiment/run", "post"): "202",
    ("/runs/{run_id}", "get"): "200",
    ("/runs/{run_id}/logs", "get"): "200",
    ("/runs/{run_id}/cancel", "post"): "202",
    ("/runs", "get"): "200",
    ("/experiments", "get"): "200",
    ("/experiments/{experiment_id}", "get"): "200",
    ("/healthz", "get"): "200",
}


def test_openapi_has_the_contract(service: RunningService) -> None:
    spec = service.http.get("/openapi.json").json()
    for (path, method), status in CONTRACT.items():
        assert status in spec["paths"][path][method]["responses"], (path, method)
    create = spec["paths"]["/experiment/create"]["post"]["requestBody"]["content"]
    form = next(iter(create.values()))
    assert "multipart/form-data" in create
    assert form["schema"]
    run_body = spec["paths"]["/experiment/run"]["post"]["requestBody"]["content"]
    assert set(run_body) == {"application/json", "multipart/form-data"}
    assert {"experiment_id", "resource", "namespace", "params"} <= set(
        run_body["application/json"]["schema"]["properties"]
    )


def test_swagger_ui_and_health(service: RunningService) -> None:
    docs = service.http.get("/docs")
    assert docs.status_code == 200
    assert "swagger-ui" in docs.text.lower()
    health = service.http.get("/healthz").json()
    assert health["status"] == "ok"
    assert health["profile"] == "local"
    assert service.http.get("/healthz").headers["x-request-id"]


@pytest.fixture
def seed_service(settings: Settings, tmp_path: Path) -> Iterator[RunningService]:
    """A service that accepts local repositories under tmp_path/local (local_roots)."""
    with service_in_thread(settings.model_copy(update={"local_roots": [tmp_path / "local"]})) as s:
        yield s


def test_seed_multipart_run_form(seed_service: RunningService, tmp_path: Path) -> None:
    service = seed_service
    repo = tmp_path / "local" / "seed.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(repo)], check=True)
    repo_json = {"git": {"url": str(repo), "branch": "main"}}
    experiment = create(service.http, small_parts(QUICK_DVC, repo_json=repo_json))
    form = {"resource": "local", "namespace": "ignored-locally"}
    response = service.http.post(
        "/experiment/run",
        data=form,
        files={"repo_json": ("repo.json", json.dumps(repo_json).encode())},
    )
    assert response.status_code == 202, response.text
    run = response.json()
    assert run["experiment_id"] == experiment["experiment_id"]
    assert service.wait_run(run["run_id"])["state"] == "succeeded"

    anonymous = service.http.post(
        "/experiment/run", data=form, files={"repo_json": ("repo.json", b"{}")}
    )
    assert anonymous.status_code == 422
    assert "experiment_id is required" in anonymous.json()["detail"]
    explicit = service.http.post(
        "/experiment/run",
        data={**form, "experiment_id": experiment["experiment_id"], "params": '{"x": 3}'},
        files={"repo_json": ("repo.json", b"{}")},
    )
    assert explicit.status_code == 202, explicit.text
    assert explicit.json()["params"] == {"x": 3}
