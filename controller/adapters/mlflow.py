"""An MLflow tracking server, through its REST API (``/api/2.0/mlflow/...``) with httpx.

Only what the export needs: experiments by name, runs found by tag, created, logged to
in batches and ended, and registered model versions found by run and given an alias.
MLflow's own rules for what it accepts (batch sizes, key characters, value lengths)
are applied here, in pure functions (:func:`batches`, :func:`mlflow_key`), so a request
the server would refuse is never sent.

Credentials come from the variables MLflow's own client reads: ``MLFLOW_TRACKING_TOKEN``
(a bearer token) or ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (basic);
TLS from ``MLFLOW_TRACKING_SERVER_CERT_PATH`` and ``MLFLOW_TRACKING_INSECURE_TLS``. They
go into request headers only, never into a URL, a log line or an error.

Errors (every httpx error is mapped here, in :meth:`MlflowClient._call`)::

    MlflowError              .status (HTTP status or None), .retry
    ├── MlflowUnavailable    no answer, a timeout, 5xx or 429: trying later may help
    └── MlflowRejected       any other 4xx: the request is wrong (.code: MLflow's error_code)
"""

from __future__ import annotations

import math
import os
import posixpath
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self, TypeVar

import httpx

API = "/api/2.0/mlflow"

# MLflow's limits (mlflow/utils/validation.py); a request over them is refused with 400.
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_ENTITIES_PER_BATCH = 1000
MAX_KEY_CHARS = 250
MAX_PARAM_VALUE_CHARS = 6000
MAX_TAG_VALUE_CHARS = 8000
MAX_ALIAS_CHARS = 255
MAX_ERROR_CHARS = 200

RunStatus = Literal["RUNNING", "FINISHED", "FAILED", "KILLED"]
_V = TypeVar("_V")

_KEY_BAD_CHARS = re.compile(r"[^\w.\- :/]")
_ALIAS = re.compile(r"^[\w\-]+$")
_VERSION_ALIAS = re.compile(r"^[vV]\d+$")
# Values this client puts into search filters: ids and names, never caller prose.
_FILTER_VALUE = re.compile(r"^[\w.:@#/+\-]{1,250}$")


class MlflowError(Exception):
    """The server could not do what was asked; the message is short and credential-free."""

    retry = False

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class MlflowUnavailable(MlflowError):
    retry = True


class MlflowRejected(MlflowError):
    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message, status)
        self.code = code


# -- pure: what MLflow accepts ----------------------------------------------------------


def mlflow_key(key: str) -> str:
    """``key`` as MLflow accepts a param, metric or tag name: letters, digits, ``_ - . :
    /`` and spaces, not resolving to another path (``a//b``, ``../x``), at most 250."""
    cleaned = _KEY_BAD_CHARS.sub("_", key)[:MAX_KEY_CHARS] or "_"
    if _path_not_unique(cleaned):
        cleaned = cleaned.replace("/", "_")
        if _path_not_unique(cleaned):  # ".", "..", "..x"
            cleaned = "_" + cleaned[: MAX_KEY_CHARS - 1]
    return cleaned


def _path_not_unique(name: str) -> bool:
    norm = posixpath.normpath(name)
    return norm != name or norm == "." or norm.startswith("..") or norm.startswith("/")


def clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def alias_allowed(alias: str) -> bool:
    """Whether MLflow accepts ``alias`` as a registered-model alias."""
    return (
        bool(_ALIAS.fullmatch(alias))
        and len(alias) <= MAX_ALIAS_CHARS
        and alias.lower() != "latest"
        and not _VERSION_ALIAS.fullmatch(alias)
    )


@dataclass(frozen=True)
class Batch:
    """One ``runs/log-batch`` request's content, within MLflow's limits."""

    params: list[tuple[str, str]] = field(default_factory=list)
    metrics: list[tuple[str, float]] = field(default_factory=list)
    tags: list[tuple[str, str]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.params) + len(self.metrics) + len(self.tags)


def batches(
    params: Mapping[str, str], metrics: Mapping[str, float], tags: Mapping[str, str]
) -> list[Batch]:
    """Split params, metrics and tags into as few batches as MLflow's limits allow (100
    params, 1000 metrics, 100 tags, 1000 in all per request), keys made acceptable
    (:func:`mlflow_key`), params clipped to 6000 characters and tags to 8000, non-finite
    metrics left out. Two keys that clean to the same name keep the first value."""
    clean_params = _cleaned({k: clip(v, MAX_PARAM_VALUE_CHARS) for k, v in params.items()})
    clean_metrics = _cleaned({k: v for k, v in metrics.items() if math.isfinite(v)})
    clean_tags = _cleaned({k: clip(v, MAX_TAG_VALUE_CHARS) for k, v in tags.items()})
    out: list[Batch] = []
    p, m, t = list(clean_params.items()), list(clean_metrics.items()), list(clean_tags.items())
    while p or m or t:
        batch = Batch(params=p[:MAX_PARAMS_PER_BATCH], tags=t[:MAX_TAGS_PER_BATCH])
        room = min(MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH - batch.size)
        batch.metrics.extend(m[:room])
        p, m, t = p[len(batch.params) :], m[len(batch.metrics) :], t[len(batch.tags) :]
        out.append(batch)
    return out


def _cleaned(values: Mapping[str, _V]) -> dict[str, _V]:
    out: dict[str, _V] = {}
    for key, value in values.items():
        out.setdefault(mlflow_key(key), value)
    return out


def quoted(value: str) -> str:
    """``value`` as a string literal of MLflow's search filter grammar."""
    if not _FILTER_VALUE.fullmatch(value):
        raise ValueError("a search value is an id or a name (letters, digits, ._:@#/+-)")
    return f"'{value}'"


# -- the client -------------------------------------------------------------------------


@dataclass(frozen=True)
class FoundRun:
    run_id: str
    status: str
    tags: dict[str, str]


def auth_headers(environ: Mapping[str, str]) -> dict[str, str]:
    """The Authorization header MLflow's client would send for this environment."""
    token = environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    username = environ.get("MLFLOW_TRACKING_USERNAME")
    password = environ.get("MLFLOW_TRACKING_PASSWORD")
    if username and password:
        basic = httpx.BasicAuth(username, password)
        request = next(basic.auth_flow(httpx.Request("GET", "http://mlflow.invalid/")))
        return {"Authorization": request.headers["Authorization"]}
    return {}


def _verify(environ: Mapping[str, str]) -> bool | str:
    if environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("1", "true"):
        return False
    return environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True


class MlflowClient:
    """One tracking server. Thread-compatible: one export worker uses it at a time."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        timeout: float = 10.0,
        environ: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self._http = httpx.Client(
            base_url=tracking_uri.rstrip("/") + API,
            headers=auth_headers(env),
            timeout=timeout,
            verify=_verify(env),
            follow_redirects=False,
            transport=transport,
        )
        self._experiments: dict[str, str] = {}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- experiments and runs -----------------------------------------------------

    def experiment(self, name: str) -> str:
        """The id of the experiment called ``name``, created if there is none."""
        if name in self._experiments:
            return self._experiments[name]
        experiment_id = self._experiment_by_name(name)
        if experiment_id is None:
            try:
                answer = self._call("POST", "/experiments/create", {"name": name})
                experiment_id = _str(answer, "experiment_id")
            except MlflowRejected as exc:  # made meanwhile by someone else
                if exc.code != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment_id = self._experiment_by_name(name)
                if experiment_id is None:
                    raise
        self._experiments[name] = experiment_id
        return experiment_id

    def forget_experiments(self) -> None:
        """Look experiments up again (one may have been deleted or renamed in MLflow)."""
        self._experiments.clear()

    def _experiment_by_name(self, name: str) -> str | None:
        try:
            answer = self._call("GET", "/experiments/get-by-name", params={"experiment_name": name})
        except MlflowRejected as exc:
            if exc.code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        experiment = answer.get("experiment")
        if not isinstance(experiment, dict):
            raise MlflowUnavailable("MLflow answered get-by-name without an experiment")
        if experiment.get("lifecycle_stage") == "deleted":
            raise MlflowRejected(f"the MLflow experiment {name!r} is deleted (restore it)")
        return _str(experiment, "experiment_id")

    def find_runs(
        self, experiment_id: str, tags: Mapping[str, str], max_results: int = 10
    ) -> list[FoundRun]:
        """Active runs of the experiment that carry every one of ``tags``, oldest first."""
        where = " and ".join(f"tags.`{key}` = {quoted(value)}" for key, value in tags.items())
        answer = self._call(
            "POST",
            "/runs/search",
            {
                "experiment_ids": [experiment_id],
                "filter": where,
                "run_view_type": "ACTIVE_ONLY",
                "max_results": max_results,
                "order_by": ["attributes.start_time ASC"],
            },
        )
        found = []
        for run in _list(answer, "runs"):
            info, data = run.get("info"), run.get("data")
            if not isinstance(info, dict):
                continue
            tag_list = data.get("tags", []) if isinstance(data, dict) else []
            found.append(
                FoundRun(
                    run_id=_str(info, "run_id"),
                    status=str(info.get("status", "")),
                    tags={
                        str(t.get("key")): str(t.get("value"))
                        for t in tag_list
                        if isinstance(t, dict)
                    },
                )
            )
        return found

    def create_run(
        self, experiment_id: str, *, name: str, start_ms: int, tags: Mapping[str, str]
    ) -> str:
        answer = self._call(
            "POST",
            "/runs/create",
            {
                "experiment_id": experiment_id,
                "run_name": name,
                "start_time": start_ms,
                "tags": [
                    {"key": mlflow_key(k), "value": clip(v, MAX_TAG_VALUE_CHARS)}
                    for k, v in tags.items()
                ],
            },
        )
        run = answer.get("run")
        info = run.get("info") if isinstance(run, dict) else None
        if not isinstance(info, dict):
            raise MlflowUnavailable("MLflow answered runs/create without a run")
        return _str(info, "run_id")

    def log(
        self,
        run_id: str,
        *,
        params: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
        timestamp_ms: int = 0,
    ) -> int:
        """Log in as many ``runs/log-batch`` calls as needed; how many were made.

        Metrics are logged at step 0 with ``timestamp_ms``: logging the same again (a
        retried export) adds no second point, as MLflow skips an identical one."""
        sent = 0
        for batch in batches(params or {}, metrics or {}, tags or {}):
            self._call(
                "POST",
                "/runs/log-batch",
                {
                    "run_id": run_id,
                    "params": [{"key": k, "value": v} for k, v in batch.params],
                    "metrics": [
                        {"key": k, "value": v, "timestamp": timestamp_ms, "step": 0}
                        for k, v in batch.metrics
                    ],
                    "tags": [{"key": k, "value": v} for k, v in batch.tags],
                },
            )
            sent += 1
        return sent

    def end_run(self, run_id: str, status: RunStatus, end_ms: int | None) -> None:
        body: dict[str, object] = {"run_id": run_id, "status": status}
        if end_ms is not None:
            body["end_time"] = end_ms
        self._call("POST", "/runs/update", body)

    # -- model registry -----------------------------------------------------------

    def model_versions_of(self, run_id: str) -> list[tuple[str, str]]:
        """``(registered model name, version)`` of every model version made from the run."""
        answer = self._call(
            "GET",
            "/model-versions/search",
            params={"filter": f"run_id = {quoted(run_id)}", "max_results": 200},
        )
        return [
            (_str(v, "name"), _str(v, "version"))
            for v in _list(answer, "model_versions")
            if v.get("current_stage") != "Deleted"
        ]

    def set_alias(self, model: str, alias: str, version: str) -> None:
        self._call(
            "POST",
            "/registered-models/alias",
            {"name": model, "alias": alias, "version": version},
        )

    # -- the one I/O boundary -----------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: Mapping[str, object] | None = None,
        params: Mapping[str, str | int] | None = None,
    ) -> dict[str, object]:
        try:
            response = self._http.request(method, path.lstrip("/"), json=body, params=params)
        except httpx.TimeoutException:
            raise MlflowUnavailable(f"MLflow timed out ({path})") from None
        except httpx.HTTPError as exc:
            raise MlflowUnavailable(f"cannot reach MLflow ({path}: {type(exc).__name__})") from None
        status = response.status_code
        if status >= 500 or status == 429:
            raise MlflowUnavailable(f"MLflow answered {status} ({path})", status)
        if status >= 300:
            code, message = _error_of(response)
            text = f"MLflow refused {path}: {status} {code or ''} {message}".strip()
            raise MlflowRejected(clip(text, MAX_ERROR_CHARS), status, code)
        try:
            answer = response.json()
        except ValueError:
            raise MlflowUnavailable(f"MLflow answered {path} with no JSON", status) from None
        if not isinstance(answer, dict):
            raise MlflowUnavailable(f"MLflow answered {path} with no JSON object", status)
        return answer


def _error_of(response: httpx.Response) -> tuple[str | None, str]:
    try:
        body = response.json()
    except ValueError:
        return None, ""
    if not isinstance(body, dict):
        return None, ""
    code = body.get("error_code")
    message = body.get("message")
    return (
        code if isinstance(code, str) else None,
        clip(message, 120) if isinstance(message, str) else "",
    )


def _str(mapping: Mapping[str, object], key: str) -> str:
    value = mapping.get(key)
    if not isinstance(value, str) or not value:
        raise MlflowUnavailable(f"MLflow's answer lacks {key}")
    return value


def _list(mapping: Mapping[str, object], key: str) -> Iterator[dict[str, object]]:
    value = mapping.get(key, [])
    if isinstance(value, list):
        yield from (item for item in value if isinstance(item, dict))
