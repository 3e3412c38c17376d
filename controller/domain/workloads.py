"""The spec of ``POST /resource/k8s/create``: a StatefulSet, Deployment or Job to provision.

:func:`parse_workload_spec` reads a JSON or (safe) YAML body into a
:class:`WorkloadSpec`; everything a manifest builder needs is validated here,
so a spec that parses builds manifests the API server accepts. Kubernetes
syntax rules live here too (resource quantities, label keys and values), as
plain functions the configuration models reuse.

Messages never echo a value from the body, only keys and rules: a client may
paste a credential anywhere, and ``env`` keys that look like one are refused
outright (credentials belong in ``repo_json`` and reach the workload through
the experiment's Secret).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from controller.domain.errors import InvalidInput, validation_details
from controller.domain.safeyaml import load_yaml

__all__ = [
    "DvcCacheVolume",
    "ResourceQuantities",
    "Resources",
    "Toleration",
    "WorkloadKind",
    "WorkloadSpec",
    "is_label_key",
    "is_label_value",
    "is_quantity",
    "is_subdomain",
    "parse_quantity",
    "parse_workload_spec",
]

WorkloadKind = Literal["StatefulSet", "Deployment", "Job"]
MAX_SPEC_BYTES = 256 * 1024
# 52 leaves room for what controllers append: "-<ordinal>" for StatefulSet pods and the
# 63-character controller-revision-hash label value "<name>-<10-char hash>".
MAX_WORKLOAD_NAME = 52

# A StatefulSet's headless Service carries the workload's name, and Service names are
# DNS-1035 labels (no leading digit); one rule for every kind keeps names portable.
_WORKLOAD_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SUBDOMAIN_PART = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_QUANTITY = re.compile(
    r"^(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]{1,3})?$"
)
_SUFFIX_FACTORS: dict[str, Decimal] = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_CREDENTIAL_NAME = re.compile(r"TOKEN|SECRET|PASSW(OR)?D|CREDENTIAL|KEY", re.IGNORECASE)
# Prefixes the service or Kubernetes itself own: a client label there could hijack a
# selector (mlexp.io/resource) or pose as a system component. app.kubernetes.io holds
# the recommended labels meant for everyone (name, version, part-of) -- but managed-by
# is ours.
_RESERVED_LABEL_PREFIXES = ("mlexp.io/", "app.kubernetes.io/managed-by")
_RESERVED_DOMAINS = ("kubernetes.io", "k8s.io")
_OPEN_DOMAINS = ("app.kubernetes.io",)
_IMAGE = re.compile(r"^[^\s\x00-\x1f\x7f]{1,500}$")
_MOUNT_PATH = re.compile(r"^/[A-Za-z0-9._/-]{0,254}$")
_MAX_ANNOTATION_BYTES = 256 * 1024
_MAX_ENV_BYTES = 64 * 1024


# -- Kubernetes syntax ---------------------------------------------------------


def is_quantity(value: str) -> bool:
    """A non-negative Kubernetes resource quantity (``500m``, ``1Gi``, ``1e9``, ``2``)."""
    return bool(_QUANTITY.match(value))


def parse_quantity(value: str) -> Decimal:
    """The quantity's value in base units (cores, bytes); ``ValueError`` if malformed."""
    match = _QUANTITY.match(value)
    if match is None:
        raise ValueError("not a Kubernetes quantity")
    suffix = match.group("suffix") or ""
    number = Decimal(match.group("number"))
    if suffix[:1] in ("e", "E"):
        return number.scaleb(int(suffix[1:]))
    return number * _SUFFIX_FACTORS[suffix]


def is_subdomain(value: str) -> bool:
    """A DNS-1123 subdomain: dot-separated labels, 253 characters at most."""
    return 0 < len(value) <= 253 and all(_SUBDOMAIN_PART.match(p) for p in value.split("."))


def is_label_key(key: str) -> bool:
    """A qualified name: ``[prefix/]name``, the prefix a DNS-1123 subdomain."""
    prefix, slash, name = key.rpartition("/")
    if slash and not is_subdomain(prefix):
        return False
    return bool(_LABEL_NAME.match(name))


def is_label_value(value: str) -> bool:
    return bool(_LABEL_VALUE.match(value))


def _quantity(value: str | None) -> str | None:
    if value is not None and not is_quantity(value):
        raise ValueError("must be a Kubernetes quantity such as 500m, 2, 512Mi or 1Gi")
    return value


def _key_name(key: str) -> str:
    """A client-supplied key, shortened, for an error message."""
    return repr(key if len(key) <= 64 else key[:61] + "...")


def _check_labels(labels: dict[str, str], what: str) -> dict[str, str]:
    for key, value in labels.items():
        if not is_label_key(key):
            raise ValueError(f"{what} key {_key_name(key)} is not a valid label key")
        if not is_label_value(value):
            raise ValueError(
                f"{what}[{_key_name(key)}]: a label value is at most 63 characters of"
                " [A-Za-z0-9_.-], starting and ending with a letter or digit"
            )
    return labels


def _check_client_keys(keys: list[str], what: str) -> None:
    """Refuse keys in domains the service or Kubernetes reserve."""
    for key in keys:
        domain = key.rpartition("/")[0]
        reserved = key.startswith(_RESERVED_LABEL_PREFIXES) or (
            domain not in _OPEN_DOMAINS
            and any(domain == d or domain.endswith("." + d) for d in _RESERVED_DOMAINS)
        )
        if reserved:
            raise ValueError(f"{what} key {_key_name(key)} is reserved")


# -- models --------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ResourceQuantities(_Strict):
    cpu: str | None = None
    memory: str | None = None
    gpu: int | None = Field(default=None, ge=0, le=64, description="nvidia.com/gpu")

    @field_validator("cpu", "memory")
    @classmethod
    def _quantities(cls, value: str | None) -> str | None:
        return _quantity(value)


class Resources(_Strict):
    """Requests and limits; a GPU count is set as both (extended resources cannot overcommit)."""

    requests: ResourceQuantities | None = None
    limits: ResourceQuantities | None = None

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Resources:
        if self.requests is None or self.limits is None:
            return self
        for field in ("cpu", "memory"):
            request, limit = getattr(self.requests, field), getattr(self.limits, field)
            both = request is not None and limit is not None
            if both and parse_quantity(request) > parse_quantity(limit):
                raise ValueError(f"requests.{field} is above limits.{field}")
        gpus = (self.requests.gpu, self.limits.gpu)
        if None not in gpus and gpus[0] != gpus[1]:
            raise ValueError("requests.gpu and limits.gpu must be equal when both are set")
        return self

    @property
    def gpu(self) -> int | None:
        for side in (self.limits, self.requests):
            if side is not None and side.gpu is not None:
                return side.gpu
        return None


class Toleration(_Strict):
    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        # The API server's own rules, checked here so a bad spec is 422, not a 502.
        if self.key is not None and not is_label_key(self.key):
            raise ValueError("key is not a valid label key")
        if self.key is None and self.operator != "Exists":
            raise ValueError("a toleration without key must use operator Exists")
        if self.operator == "Exists" and self.value:
            raise ValueError("operator Exists takes no value")
        if self.value is not None and not is_label_value(self.value):
            raise ValueError("value is not a valid label value")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("toleration_seconds needs effect NoExecute")
        return self


class DvcCacheVolume(_Strict):
    """A persistent DVC cache, so runs in the workload's pods share fetched and built data."""

    size: str
    storage_class: str | None = None
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"] = "ReadWriteOnce"
    mount_path: str = Field(default="/var/cache/mlexp/dvc", pattern=_MOUNT_PATH.pattern)

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        if not is_quantity(value) or parse_quantity(value) <= 0:
            raise ValueError("must be a positive Kubernetes quantity such as 10Gi")
        return value

    @field_validator("storage_class")
    @classmethod
    def _storage_class(cls, value: str | None) -> str | None:
        if value is not None and not is_subdomain(value):
            raise ValueError("is not a DNS-1123 subdomain")
        return value

    @field_validator("mount_path")
    @classmethod
    def _mount_path(cls, value: str) -> str:
        if "/../" in f"{value}/" or "/./" in f"{value}/" or value == "/":
            raise ValueError("must be an absolute path without '.' or '..' segments")
        return value


class WorkloadSpec(_Strict):
    kind: WorkloadKind
    name: str = Field(
        min_length=1,
        max_length=MAX_WORKLOAD_NAME,
        pattern=_WORKLOAD_NAME.pattern,
        description="DNS-1035 label (lowercase, starts with a letter), at most 52 characters.",
    )
    namespace: str = Field(max_length=63, pattern=_NAMESPACE.pattern)
    experiment_id: str | None = Field(
        default=None,
        pattern=r"^exp-[0-9a-f]{10}$",
        description="Experiment whose credentials Secret and registry pull secret it references.",
    )
    image: str | None = Field(default=None, pattern=_IMAGE.pattern)
    replicas: int = Field(default=1, ge=0, le=100, description="Job: parallelism and completions.")
    command: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Default for StatefulSet/Deployment: a long-lived idle process to exec into.",
    )
    env: dict[str, str] = Field(default_factory=dict, description="Plain, non-secret values.")
    resources: Resources | None = None
    node_selector: dict[str, str] = Field(default_factory=dict, max_length=32)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    dvc_cache: DvcCacheVolume | None = None
    service_account: str | None = None
    active_deadline_seconds: int | None = Field(default=None, ge=1, description="Job only.")
    labels: dict[str, str] = Field(default_factory=dict, max_length=32)
    annotations: dict[str, str] = Field(default_factory=dict, max_length=32)
    shared: bool = Field(
        default=False,
        description=(
            "StatefulSet/Deployment: whether exec runs may share a pod. false (the default):"
            " a pod runs at most one exec run at a time (a run that finds every ready pod busy"
            " stays queued until one is free) and a run's process group is killed when it"
            " ends, so no other run's process is there to read its environment"
            " (/proc/<pid>/environ). true: several runs share a pod, each in its own work dir"
            " and process group, but processes of one user in one container can read each"
            " other's environment, so runs sharing a pod are not private from each other;"
            " opt in only for runs that trust each other. Either way only the principal that"
            " provisioned the workload (or an admin) runs in its pods."
        ),
    )

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not arg or "\x00" in arg or len(arg) > 4096 for arg in value):
            raise ValueError("arguments must be non-empty, at most 4096 characters, without NUL")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _ENV_NAME.match(key):
                raise ValueError(f"{_key_name(key)} is not a valid environment variable name")
            if key.upper().startswith("MLEXP_"):
                raise ValueError(f"{_key_name(key)}: the MLEXP_ prefix is reserved for the service")
            if _CREDENTIAL_NAME.search(key):
                raise ValueError(
                    f"{_key_name(key)} looks like a credential; put credentials in repo_json"
                    " (workloads of an experiment get them from its Secret)"
                )
        if sum(len(k) + len(v.encode()) for k, v in value.items()) > _MAX_ENV_BYTES:
            raise ValueError(f"env is larger than {_MAX_ENV_BYTES} bytes")
        return value

    @field_validator("node_selector")
    @classmethod
    def _node_selector(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_labels(value, "node_selector")

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        _check_client_keys(list(value), "labels")
        return _check_labels(value, "labels")

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, value: dict[str, str]) -> dict[str, str]:
        _check_client_keys(list(value), "annotations")
        for key in value:
            if not is_label_key(key):
                raise ValueError(f"annotations key {_key_name(key)} is not a valid key")
        if sum(len(k) + len(v.encode()) for k, v in value.items()) > _MAX_ANNOTATION_BYTES:
            raise ValueError(f"annotations are larger than {_MAX_ANNOTATION_BYTES} bytes")
        return value

    @field_validator("service_account")
    @classmethod
    def _service_account(cls, value: str | None) -> str | None:
        if value is not None and not is_subdomain(value):
            raise ValueError("is not a DNS-1123 subdomain")
        return value

    @model_validator(mode="after")
    def _kind_rules(self) -> WorkloadSpec:
        if self.kind == "Job" and self.replicas < 1:
            raise ValueError("a Job needs replicas >= 1 (its parallelism and completions)")
        if self.kind != "Job" and self.active_deadline_seconds is not None:
            raise ValueError("active_deadline_seconds applies to kind Job only")
        if self.kind == "Job" and self.shared:
            raise ValueError(
                "shared applies to StatefulSet and Deployment only (runs exec into them)"
            )
        return self


# -- parsing -------------------------------------------------------------------

_JSON_TYPES = ("application/json",)
_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
_SNIFFED_TYPES = ("text/plain", "application/octet-stream")


def parse_workload_spec(
    data: bytes, *, content_type: str | None, max_bytes: int = MAX_SPEC_BYTES
) -> WorkloadSpec:
    """Parse a JSON or YAML workload spec; every failure is an :class:`InvalidInput`.

    ``content_type`` picks the parser (JSON strictly; YAML through the safe
    loader); absent or generic types are sniffed, JSON being a subset of YAML.
    """
    raw = _parse_body(data, content_type=content_type, max_bytes=max_bytes)
    if not isinstance(raw, dict):
        raise InvalidInput("workload spec must be a mapping of keys to values")
    try:
        return WorkloadSpec.model_validate(raw)
    except ValidationError as exc:
        raise _invalid_spec(exc) from None


def _parse_body(data: bytes, *, content_type: str | None, max_bytes: int) -> object:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if len(data) > max_bytes:
        raise InvalidInput(f"workload spec is larger than {max_bytes} bytes")
    if media in _JSON_TYPES or media.endswith("+json"):
        return _parse_json(data)
    if media and media not in _YAML_TYPES + _SNIFFED_TYPES and not media.endswith("+yaml"):
        raise InvalidInput(
            f"workload spec: unsupported content type {media[:80]!r}; send JSON or YAML"
        )
    return load_yaml(data, source="workload spec", max_bytes=max_bytes, max_depth=16)


def _parse_json(data: bytes) -> object:
    try:
        return json.loads(data, object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = (
            f"{exc.msg} at line {exc.lineno} column {exc.colno}"
            if isinstance(exc, json.JSONDecodeError)
            else "not UTF-8"
        )
        raise InvalidInput(f"workload spec is not valid JSON: {where}") from None
    except RecursionError:
        raise InvalidInput("workload spec: nesting too deep") from None


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidInput(f"workload spec: duplicate key {_key_name(key)}")
        result[key] = value
    return result


def _invalid_spec(exc: ValidationError) -> InvalidInput:
    """One message: unknown keys first (by path), then every other rule broken."""
    errors = validation_details(exc)
    unknown = [e["loc"] for e in errors if e["type"] == "extra_forbidden"]
    other = [
        f"{e['loc'] or '(spec)'}: {e['msg']}" for e in errors if e["type"] != "extra_forbidden"
    ]
    parts = []
    if unknown:
        parts.append("unknown keys: " + ", ".join(_key_name(str(k)) for k in unknown))
    parts.extend(other)
    return InvalidInput("workload spec is invalid: " + "; ".join(parts), errors=errors)
