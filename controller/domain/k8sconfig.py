"""The Kubernetes side's configuration (``config/k8s-config.yaml``) and the namespace fence.

:func:`load_k8s_config` runs once at start-up; a bad file is a ``ValueError``
naming the file, so the service refuses to start rather than failing requests
later. :class:`NamespacePolicy` decides, before any Kubernetes call, whether a
request may touch a namespace. The order of its checks is the contract:

1. no namespace, or one that is not a DNS-1123 label -> ``InvalidInput`` (422);
2. prohibited by the config -> ``Forbidden`` (prohibited wins over allowed);
3. not allowed by the config -> ``Forbidden``;
4. not among the caller's token namespaces -> ``Forbidden``; an admin skips
   only this step, never the config.

All namespace rules are ``fnmatch`` patterns, matched case-sensitively.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from controller.domain.errors import Forbidden, InvalidInput, summary, validation_details
from controller.domain.naming import is_dns1123_label
from controller.domain.safeyaml import load_yaml
from controller.domain.workloads import (
    Resources,
    Toleration,
    is_label_key,
    is_label_value,
    is_subdomain,
)

__all__ = [
    "EXEC_WORK_ROOT",
    "SERVICE_ACCOUNT_DIR",
    "ApiLimits",
    "ExecSettings",
    "JobSettings",
    "K8sConfig",
    "K8sDefaults",
    "LeaseConfig",
    "NamespacePolicy",
    "NamespacesConfig",
    "lease_for",
    "load_k8s_config",
]

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MAX_CONFIG_BYTES = 256 * 1024
# Where exec'd runners keep their work dirs inside a workload's pods; the workload
# manifests mount an emptyDir there, so it is writable whatever the image's user.
EXEC_WORK_ROOT = "/var/lib/mlexp"
_PATTERN = re.compile(r"^[a-z0-9*?\[\]!-]{1,63}$")
_IMAGE = re.compile(r"^[^\s\x00-\x1f\x7f]{1,500}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NamespacesConfig(_Strict):
    # Nothing is allowed unless listed: a missing or empty list fails closed.
    allowed: tuple[str, ...] = ()
    prohibited: tuple[str, ...] = ("kube-*",)

    @field_validator("allowed", "prohibited")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            if not _PATTERN.match(pattern):
                raise ValueError(
                    f"{pattern[:80]!r} is not a namespace pattern"
                    " (lowercase letters, digits, '-', and fnmatch's * ? [...])"
                )
        return value


class K8sDefaults(_Strict):
    image: str | None = Field(
        default=None,
        pattern=_IMAGE.pattern,
        description="Image when neither the request nor repo_json.registry names one.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    service_account: str | None = None
    resources: Resources | None = None
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        max_length=32,
        description="Where run pods (and provisioned workloads that name none) are scheduled.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=32,
        description="Taints run pods (and provisioned workloads that name none) tolerate.",
    )
    host_network: bool = Field(
        default=False,
        description="Run pods and provisioned workloads in the node's network namespace: for "
        "clusters where pods must reach services listening on the node itself (a git or S3 "
        "server on the node's loopback, as in the real-node test tier). They then share the "
        "node's ports and interfaces; leave it off elsewhere.",
    )

    @field_validator("node_selector")
    @classmethod
    def _node_selector(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            if not is_label_key(key) or not is_label_value(label):
                raise ValueError(f"{key[:80]!r}: not a valid label key and value")
        return value

    @field_validator("service_account")
    @classmethod
    def _service_account(cls, value: str | None) -> str | None:
        if value is not None and not is_subdomain(value):
            raise ValueError("is not a DNS-1123 subdomain")
        return value


class JobSettings(_Strict):
    backoff_limit: int = Field(default=2, ge=0, le=20)
    ttl_seconds_after_finished: int | None = Field(default=3600, ge=0)
    active_deadline_seconds: int = Field(default=21600, ge=1)
    log_followers: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Run pods whose log is followed as it is written, at most, at once; the "
        "others' logs are read once their Job ends (and followed when a slot frees).",
    )
    pod_labels: dict[str, str] = Field(
        default_factory=dict,
        max_length=16,
        description="Extra labels on run pods (e.g. for admission policies or test drivers).",
    )

    @field_validator("pod_labels")
    @classmethod
    def _pod_labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            if not is_label_key(key) or not is_label_value(label):
                raise ValueError(f"{key[:80]!r}: not a valid label key and value")
        return value


class ExecSettings(_Strict):
    """Runs exec'd into a StatefulSet/Deployment pod (``resource: sts/<name>``)."""

    work_root: str = Field(default=EXEC_WORK_ROOT, pattern=r"^/[A-Za-z0-9._/-]{0,254}$")
    poll_seconds: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="Exec runs report through one long exec stream; when it breaks, the run "
        "is polled with short execs this often until the stream is open again.",
    )

    @field_validator("work_root")
    @classmethod
    def _work_root(cls, value: str) -> str:
        if "/../" in f"{value}/" or value.rstrip("/") == "":
            raise ValueError("must be an absolute directory path without '..'")
        return value.rstrip("/")


class ApiLimits(_Strict):
    """A token bucket on Kubernetes API calls: ``qps`` sustained, ``burst`` at once."""

    qps: float = Field(default=20.0, gt=0, le=10_000)
    burst: int = Field(default=40, ge=1, le=100_000)


class LeaseConfig(_Strict):
    """The dispatch fence: a ``coordination.k8s.io`` Lease that one instance holds while it
    dispatches and tracks runs (:mod:`controller.services.fence`)."""

    namespace: str | None = Field(
        default=None,
        description="Where the Lease lives: the service's own namespace. In-cluster, the "
        "pod's namespace (read from the service account directory) when left out.",
    )
    name: str = Field(default="mlexp-ctrl", min_length=1, max_length=253)
    duration_seconds: float = Field(
        default=15.0,
        ge=1,
        le=300,
        description="How long a Lease not renewed stays held: a standby takes over once it "
        "has seen it unchanged for this long.",
    )

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        if value is not None and not is_dns1123_label(value):
            raise ValueError(f"{value[:80]!r}: not a DNS-1123 label")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not is_subdomain(value):
            raise ValueError(f"{value[:80]!r}: not a DNS-1123 subdomain")
        return value


class K8sConfig(_Strict):
    kubeconfig: Path | None = None
    in_cluster: bool = False
    service_account_dir: Path = Field(
        default=SERVICE_ACCOUNT_DIR,
        description="In-cluster: where the pod's service account token, CA certificate and "
        "namespace are (the standard mount; a test or sidecar may put them elsewhere).",
    )
    lease: LeaseConfig | None = Field(
        default=None,
        description="Hold a Lease while dispatching, so a second instance stands by. "
        "In-cluster it is on by default (in the pod's namespace); set it to {} elsewhere.",
    )
    context: str | None = Field(default=None, min_length=1, max_length=253)
    namespaces: NamespacesConfig = NamespacesConfig()
    defaults: K8sDefaults = K8sDefaults()
    jobs: JobSettings = JobSettings()
    exec: ExecSettings = ExecSettings()
    api: ApiLimits = ApiLimits()

    @model_validator(mode="after")
    def _one_way_in(self) -> K8sConfig:
        if self.in_cluster and self.kubeconfig is not None:
            raise ValueError("set either kubeconfig or in_cluster: true, not both")
        if not self.in_cluster and self.kubeconfig is None:
            raise ValueError("set kubeconfig (a path) or in_cluster: true")
        if self.in_cluster and self.context is not None:
            raise ValueError("context applies to a kubeconfig, not to in_cluster")
        return self


def lease_for(config: K8sConfig) -> LeaseConfig | None:
    """The Lease the service holds, with its namespace resolved; None: no fence.

    In-cluster, a fence is on unless configured otherwise, in the pod's own namespace.
    Raises ``ValueError`` when a Lease is wanted and no namespace can be found for it.
    """
    lease = config.lease
    if lease is None and not config.in_cluster:
        return None
    lease = lease or LeaseConfig()
    if lease.namespace is not None:
        return lease
    own = config.service_account_dir / "namespace"
    try:
        namespace = own.read_text().strip() if config.in_cluster else ""
    except OSError:
        namespace = ""
    if not is_dns1123_label(namespace):
        raise ValueError(f"lease.namespace is not set and {own} names no namespace: set it")
    return lease.model_copy(update={"namespace": namespace})


def load_k8s_config(path: Path) -> K8sConfig:
    """Read and validate ``path``; a relative ``kubeconfig`` is taken from the file's dir.

    Raises ``ValueError`` (a start-up error) whose message starts with the path.
    """
    try:
        raw = load_yaml(path.read_bytes(), source=str(path), max_bytes=MAX_CONFIG_BYTES)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the Kubernetes config: {exc.strerror}") from None
    except InvalidInput as exc:
        raise ValueError(exc.detail) from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    try:
        config = K8sConfig.model_validate(raw)
    except ValidationError as exc:
        problems = summary(validation_details(exc), empty_loc="(file)")
        raise ValueError(f"{path}: {problems}") from None
    if config.kubeconfig is None:
        return config
    kubeconfig = config.kubeconfig.expanduser()
    if not kubeconfig.is_absolute():
        kubeconfig = path.parent / kubeconfig
    kubeconfig = kubeconfig.resolve()
    if not kubeconfig.is_file():
        raise ValueError(f"{path}: kubeconfig {kubeconfig} is not a file")
    return config.model_copy(update={"kubeconfig": kubeconfig})


@dataclass(frozen=True)
class NamespacePolicy:
    """Which namespaces the service may touch: allowed by config, not prohibited."""

    allowed: tuple[str, ...]
    prohibited: tuple[str, ...]

    @classmethod
    def from_config(cls, config: K8sConfig) -> NamespacePolicy:
        return cls(config.namespaces.allowed, config.namespaces.prohibited)

    def is_allowed(self, namespace: str) -> bool:
        return self._refusal(namespace) is None

    def check(
        self, namespace: str | None, *, caller_namespaces: tuple[str, ...], caller_admin: bool
    ) -> str:
        """``namespace`` if the caller may use it; else ``InvalidInput`` or ``Forbidden``."""
        if namespace is None or namespace == "":
            raise InvalidInput("namespace is required for Kubernetes resources")
        if not is_dns1123_label(namespace):
            raise InvalidInput(
                f"namespace {namespace[:80]!r} is not a DNS-1123 label"
                " (lowercase letters, digits and '-', at most 63 characters)"
            )
        refusal = self._refusal(namespace)
        if refusal is not None:
            raise Forbidden(f"namespace {namespace!r} {refusal}")
        if not caller_admin and not _matches(namespace, caller_namespaces):
            raise Forbidden(f"namespace {namespace!r} is not among the caller's token namespaces")
        return namespace

    def _refusal(self, namespace: str) -> str | None:
        if not is_dns1123_label(namespace):
            return "is not a DNS-1123 label"
        if _matches(namespace, self.prohibited):
            return "is prohibited by the service's Kubernetes configuration"
        if not _matches(namespace, self.allowed):
            return "is not allowed by the service's Kubernetes configuration"
        return None


def _matches(namespace: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(namespace, pattern) for pattern in patterns)
