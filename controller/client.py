"""A small HTTP client of the mlexp-ctrl API (used by the ``mlexp`` CLI and the demo)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "cancelled"}

# Decoded JSON from the service; callers read the documented fields.
JsonObject = dict[str, Any]


class ApiError(Exception):
    """The service answered with a problem+json (or another error)."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail


class MlexpClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 120.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        try:
            body = response.json()
            raise ApiError(response.status_code, str(body.get("title")), str(body.get("detail")))
        except ValueError:
            raise ApiError(response.status_code, response.reason_phrase, response.text) from None

    def _json(self, response: httpx.Response) -> JsonObject:
        data = self._check(response).json()
        assert isinstance(data, dict)
        return data

    def get(self, path: str, **params: object) -> JsonObject:
        """GET ``path`` (query ``params``; a list value repeats the key) -> its JSON object."""
        return self._json(self.http.get(path, params=_query(params)))

    def get_text(self, path: str, **params: object) -> str:
        return self._check(self.http.get(path, params=_query(params))).text

    def post(self, path: str, body: JsonObject | None = None) -> JsonObject:
        return self._json(self.http.post(path, json=body or {}))

    def health(self) -> JsonObject:
        return self._json(self.http.get("/healthz"))

    def create_experiment(
        self,
        *,
        repo_json: Path,
        dvc_yaml: Path,
        params: Path,
        files: Sequence[tuple[str, Path]] = (),
    ) -> JsonObject:
        parts: list[tuple[str, tuple[str, bytes]]] = [
            ("repo_json", (repo_json.name, repo_json.read_bytes())),
            ("dvc_yaml_file", ("dvc.yaml", dvc_yaml.read_bytes())),
            ("hyperparams_file", (params.name, params.read_bytes())),
        ]
        parts += [("files", (name, path.read_bytes())) for name, path in files]
        return self._json(self.http.post("/experiment/create", files=parts))

    def list_experiments(self) -> list[JsonObject]:
        data = self._check(self.http.get("/experiments")).json()
        assert isinstance(data, list)
        return data

    def get_experiment(self, experiment_id: str) -> JsonObject:
        return self._json(self.http.get(f"/experiments/{experiment_id}"))

    def start_run(
        self,
        experiment_id: str,
        *,
        params: Mapping[str, object] | None = None,
        resource: str = "local",
        namespace: str | None = None,
    ) -> JsonObject:
        body = {
            "experiment_id": experiment_id,
            "resource": resource,
            "namespace": namespace,
            "params": dict(params or {}),
        }
        return self._json(self.http.post("/experiment/run", json=body))

    def get_run(self, run_id: str) -> JsonObject:
        return self._json(self.http.get(f"/runs/{run_id}"))

    def list_runs(
        self, *, experiment_id: str | None = None, state: str | None = None
    ) -> list[JsonObject]:
        query = {k: v for k, v in (("experiment_id", experiment_id), ("state", state)) if v}
        data = self._check(self.http.get("/runs", params=query)).json()
        assert isinstance(data, list)
        return data

    def cancel_run(self, run_id: str, *, wait: bool = False) -> JsonObject:
        """Ask for the run to stop; with ``wait``, answered once it has."""
        params = {"wait": "true"} if wait else None
        return self._json(self.http.post(f"/runs/{run_id}/cancel", params=params))

    def logs(self, run_id: str) -> str:
        return self._check(self.http.get(f"/runs/{run_id}/logs")).text

    def follow_logs(self, run_id: str) -> Iterator[str]:
        with self.http.stream(
            "GET", f"/runs/{run_id}/logs", params={"follow": "true"}, timeout=None
        ) as response:
            self._check_stream(response)
            yield from response.iter_text()

    def _check_stream(self, response: httpx.Response) -> None:
        if not response.is_success:
            response.read()
            self._check(response)

    def wait(self, run_id: str, *, timeout: float = 3600, interval: float = 0.25) -> JsonObject:
        deadline = time.monotonic() + timeout
        while True:
            run = self.get_run(run_id)
            if run.get("state") in TERMINAL:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} did not finish within {timeout:.0f} s")
            time.sleep(interval)


def _query(params: dict[str, object]) -> httpx.QueryParams:
    """Query pairs without the None values; lists repeat their key."""
    pairs: list[tuple[str, str | int | float | bool | None]] = []
    for key, value in params.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is not None:
                pairs.append((key, str(item).lower() if isinstance(item, bool) else str(item)))
    return httpx.QueryParams(pairs)
