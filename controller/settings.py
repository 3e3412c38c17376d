"""Service settings: environment variables prefixed ``MLEXP_`` and ``config/server.yaml``.

Nothing is read at import time; :func:`load_settings` is called once by the
app's lifespan (and by the CLI), so a bad setting stops the service at start-up
with a clear message instead of failing a request later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, YamlConfigSettingsSource
from pydantic_settings.sources import PydanticBaseSettingsSource

DEFAULT_CONFIG_FILE = Path("config/server.yaml")


class LocalSettings(BaseModel):
    """The local executor (``resource: local``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=True,
        description="false: the service runs no pipeline on its own machine (resource: "
        "local is refused with 422) and needs no sandbox -- an install in a cluster, where "
        "runs go to pods. Needs Kubernetes configured.",
    )
    isolation: Literal["sandbox", "none"] = Field(
        default="sandbox",
        description="sandbox: each run in its own bubblewrap sandbox (sees only its work dir, "
        "the toolchain read-only, a private /tmp and its own processes). none: runs see the "
        "whole machine as the service's user; refused with more than one principal.",
    )


class EgressSettings(BaseModel):
    """Where URLs that callers give (git, S3 endpoint) may point."""

    model_config = ConfigDict(extra="forbid")

    allowed_networks: list[str] = Field(
        default_factory=list,
        description="CIDRs allowed although loopback, link-local or private "
        "(e.g. 10.0.0.0/8 for an in-cluster git server).",
    )


class HttpSettings(BaseModel):
    """Slow and numerous clients. The body deadline is in the app; the rest needs the
    server ``mlexp serve`` runs (``api.server``): plain ``uvicorn api:app`` lacks them."""

    model_config = ConfigDict(extra="forbid")

    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="The request line and headers must arrive within this, counted from the "
        "connection's opening or from the first byte of a later request (else 408, closed).",
    )
    body_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=86400,
        description="Time a request body may take to arrive (time spent waiting for the "
        "client only), plus one second per body_min_bytes_per_second bytes received (else 408).",
    )
    body_min_bytes_per_second: int = Field(
        default=16384,
        ge=0,
        description="Each this many bytes received extend the body's time by one second "
        "(0: body_timeout_seconds is the whole budget).",
    )
    keep_alive_seconds: int = Field(
        default=5, ge=1, le=3600, description="An idle connection is closed after this."
    )
    max_connections: int = Field(
        default=512,
        ge=1,
        description="Open connections; one beyond it gets 503 and is closed at once.",
    )
    max_requests: int = Field(
        default=256,
        ge=1,
        description="Requests in progress at once; more get 503 with Retry-After "
        "(GET /healthz is exempt).",
    )
    backlog: int = Field(
        default=2048, ge=1, description="Connections the kernel queues before they are accepted."
    )


class IdempotencySettings(BaseModel):
    """The Idempotency-Key header on POSTs that create something."""

    model_config = ConfigDict(extra="forbid")

    ttl_seconds: int = Field(
        default=86400, ge=60, description="How long a key's first answer is kept and replayed."
    )
    wait_seconds: float = Field(
        default=10.0,
        ge=0,
        le=600,
        description="A request whose key is in use by one still in progress waits this long "
        "for its answer, then gets 409.",
    )


class DeliverySettings(BaseModel):
    """The outbox: deliveries to outside systems (webhooks, MLflow), kept and retried."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(
        default=10, ge=1, le=100, description="Attempts of one delivery before it is failed."
    )
    first_retry_seconds: float = Field(
        default=5.0, gt=0, le=86400, description="Wait before the first retry."
    )
    max_retry_seconds: float = Field(
        default=3600.0,
        gt=0,
        le=7 * 86400,
        description="Cap on the wait between retries (it doubles from first_retry_seconds, "
        "with random jitter).",
    )
    workers: int = Field(
        default=8, ge=1, le=64, description="Deliveries attempted at once (to distinct targets)."
    )
    retention_days: float = Field(
        default=7.0,
        ge=0,
        description="Delivered and failed deliveries older than this are purged at start "
        "(0: kept).",
    )
    max_payload_bytes: int = Field(
        default=256 * 1024, ge=1024, le=16 * 1024 * 1024, description="Cap on one payload."
    )


class WebhookSettings(BaseModel):
    """Signed webhooks (CloudEvents over HTTP, Standard Webhooks signatures)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        default="/mlexp-ctrl",
        min_length=1,
        max_length=200,
        description="The CloudEvents 'source' of every event (e.g. the service's URL).",
    )
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    read_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300, description="Wait for the receiver's answer."
    )
    max_per_principal: int = Field(
        default=50, ge=1, le=10_000, description="Webhooks one principal may have."
    )


class MetricsSettings(BaseModel):
    """``GET /metrics`` (Prometheus)."""

    model_config = ConfigDict(extra="forbid")

    public: bool = Field(
        default=False,
        description="Answer /metrics without a token (Host checks still apply); the counts "
        "it shows are service-wide, across tenants. False: the same auth as the API.",
    )


class MlflowSettings(BaseModel):
    """Export of finished runs, sweeps and promotions to an MLflow tracking server.
    Credentials come from the environment MLflow's client reads (MLFLOW_TRACKING_TOKEN,
    or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD), never from this file."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str = Field(
        min_length=1,
        max_length=2000,
        description="The tracking server's http(s) URL (e.g. https://mlflow.example.com).",
    )
    experiment_name: str = Field(
        default="mlexp/{experiment_id}",
        min_length=1,
        max_length=400,
        description="The MLflow experiment of a service experiment's runs; placeholders "
        "{experiment_id} and {owner} (the token principal's name).",
    )
    timeout_seconds: float = Field(
        default=30.0, gt=0, le=600, description="Per request to the tracking server."
    )

    @field_validator("tracking_uri")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
        except ValueError:
            raise ValueError("tracking_uri is not a URL") from None
        if "@" in value or parts.query or parts.fragment:
            raise ValueError(
                "tracking_uri has no credentials, query or fragment (credentials come from "
                "MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD)"
            )
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("tracking_uri is an http(s) URL of an MLflow tracking server")
        return value

    @field_validator("experiment_name")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            value.format(experiment_id="e", owner="o")
        except (KeyError, IndexError, ValueError):
            raise ValueError("experiment_name may use {experiment_id} and {owner} only") from None
        return value


def _masked_mlflow(value: object) -> object:
    """The mlflow section with anything before an '@' of the tracking URI masked, before
    anything can echo it (a validation error shows its input): such a URI is refused."""
    if isinstance(value, dict) and isinstance(value.get("tracking_uri"), str):
        uri: str = value["tracking_uri"]
        if "@" in uri:
            head, sep, rest = uri.partition("://")
            head, rest = (head + sep, rest) if sep else ("", uri)
            return {**value, "tracking_uri": f"{head}***@{rest.rsplit('@', 1)[1]}"}
    return value


class StorageSettings(BaseModel):
    """The S3 side, as the operator configures it (credentials come with each experiment)."""

    model_config = ConfigDict(extra="forbid")

    ca_bundle: Path | None = Field(
        default=None,
        description="CA bundle for https S3 endpoints with a private CA (runs get it as "
        "AWS_CA_BUNDLE; on Kubernetes its content travels in the run's ConfigMap).",
    )


class Settings(BaseSettings):
    """Everything the service can be told; env wins over ``config/server.yaml``."""

    model_config = SettingsConfigDict(
        env_prefix="MLEXP_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = Field(
        default=Path("data"),
        description="Where the state database, run logs, work dirs and local repos live.",
    )
    config_file: Path = Field(default=DEFAULT_CONFIG_FILE, description="Server settings YAML.")
    k8s_config_file: Path = Field(
        default=Path("config/k8s-config.yaml"),
        description="Kubernetes settings; when the file exists, Kubernetes resources are enabled.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    tokens_file: Path | None = Field(
        default=None,
        description="YAML of bearer tokens (token -> name, namespaces). Unset: loopback only.",
    )
    max_concurrent_runs: int = Field(default=2, ge=1, le=256)
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_yaml_bytes: int = Field(default=1024 * 1024, ge=1024)
    keep_workdirs: bool = Field(
        default=False, description="Keep a finished run's work dir (for debugging)."
    )
    cancel_grace_seconds: float = Field(default=5.0, ge=0)
    log_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=64 * 1024,
        description="Cap on a run's log (per runner): its head and tail are kept, with a "
        "line saying how many bytes in between were left out.",
    )
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="text: a readable line per event (for a terminal); json: one object a "
        "line with time, level, logger, message, request_id and run_id where known.",
    )
    git_ca_bundle: Path | None = Field(
        default=None,
        description="CA bundle for https git remotes (sets GIT_SSL_CAINFO; on Kubernetes its "
        "content travels in the run's ConfigMap, never as a path of this host).",
    )
    storage: StorageSettings = Field(default_factory=StorageSettings)
    local: LocalSettings = Field(default_factory=LocalSettings)
    egress: EgressSettings = Field(default_factory=EgressSettings)
    local_roots: list[Path] = Field(
        default_factory=list,
        description="Local profile: directories under which git.url / dvc.url may be local "
        "paths. Empty: only the repos and remotes the service keeps itself.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header names accepted besides 127.0.0.1, localhost, [::1] and the "
        "configured host ('*' accepts any).",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed to make state-changing requests (and CORS).",
    )
    max_active_runs: int = Field(
        default=100,
        ge=1,
        description="Queued + running runs per principal (tokens file may override per principal).",
    )
    requests_per_second: float = Field(
        default=50.0,
        ge=0,
        description="Request rate per token principal (0: unlimited); "
        "tokens file may override per principal.",
    )
    max_sweep_runs: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Trials one sweep may have (a grid's product, random or adaptive trials); "
        "a sweep over it is refused with 422.",
    )
    http: HttpSettings = Field(default_factory=HttpSettings)
    idempotency: IdempotencySettings = Field(default_factory=IdempotencySettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    deliveries: DeliverySettings = Field(default_factory=DeliverySettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    mlflow: Annotated[MlflowSettings | None, BeforeValidator(_masked_mlflow)] = Field(
        default=None, description="Export to MLflow; unset: no export."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = _config_file_from(init_settings, env_settings)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config_file.is_file():
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "state.db"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def work_dir(self) -> Path:
        return self.data_dir / "work"

    @property
    def repos_dir(self) -> Path:
        return self.data_dir / "repos"

    @property
    def remotes_dir(self) -> Path:
        return self.data_dir / "remotes"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "dvc-cache"


def _config_file_from(*sources: PydanticBaseSettingsSource) -> Path:
    for source in sources:
        value = source().get("config_file")
        if value:
            return Path(str(value))
    return DEFAULT_CONFIG_FILE


def load_settings(**overrides: object) -> Settings:
    """Read and validate settings; the data dir is made absolute so child processes agree."""
    settings = Settings(**overrides)  # type: ignore[arg-type]
    settings.data_dir = settings.data_dir.resolve()
    return settings
