"""Pod-level parts shared by the run Job and provisioned workloads.

The pod defaults are deliberately tight: no API token unless the caller named a
service account, no service-link environment, the runtime's default seccomp
profile, and no privilege escalation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from controller.domain.workloads import Resources, Toleration
from controller.planning.manifests.meta import Manifest

GPU_RESOURCE = "nvidia.com/gpu"


def resource_requirements(resources: Resources | None) -> dict[str, dict[str, str]]:
    """``requests``/``limits`` maps; a GPU count goes into both, as ``nvidia.com/gpu``."""
    if resources is None:
        return {}
    result: dict[str, dict[str, str]] = {}
    gpu = resources.gpu
    for side, quantities in (("requests", resources.requests), ("limits", resources.limits)):
        values: dict[str, str] = {}
        if quantities is not None and quantities.cpu is not None:
            values["cpu"] = quantities.cpu
        if quantities is not None and quantities.memory is not None:
            values["memory"] = quantities.memory
        if gpu is not None:
            values[GPU_RESOURCE] = str(gpu)
        if values:
            result[side] = values
    return result


def toleration(item: Toleration) -> Manifest:
    return optional(
        key=item.key,
        operator=item.operator,
        value=item.value,
        effect=item.effect,
        tolerationSeconds=item.toleration_seconds,
    )


def env_from(secret_name: str | None) -> Manifest:
    """Credentials by reference: the pod spec names the Secret, never a value."""
    return {} if secret_name is None else {"envFrom": [{"secretRef": {"name": secret_name}}]}


def pod_failure_policy(container: str, fatal_exit_codes: Sequence[int]) -> Manifest:
    # Evictions, preemption and node drains say nothing about the workload: not counted
    # against backoffLimit.
    rules: list[Manifest] = [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    ]
    if fatal_exit_codes:
        exit_codes = {"containerName": container, "operator": "In", "values": [*fatal_exit_codes]}
        rules.append({"action": "FailJob", "onExitCodes": exit_codes})
    return {"rules": rules}


def pod_spec(
    container: Manifest,
    *,
    volumes: Sequence[Manifest],
    service_account: str | None,
    pull_secret_name: str | None,
    node_selector: Mapping[str, str],
    tolerations: Sequence[Toleration],
    host_network: bool = False,
) -> Manifest:
    pod: Manifest = {}
    if host_network:  # the node's network (k8s-config defaults.host_network)
        pod["hostNetwork"] = True
        pod["dnsPolicy"] = "ClusterFirstWithHostNet"  # cluster DNS names still resolve
    if service_account is not None:
        pod["serviceAccountName"] = service_account
    # No API token in the pod unless the caller chose an identity for it.
    pod["automountServiceAccountToken"] = service_account is not None
    # Service links would put every Service of the namespace into the environment.
    pod["enableServiceLinks"] = False
    pod["securityContext"] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if pull_secret_name is not None:
        pod["imagePullSecrets"] = [{"name": pull_secret_name}]
    if node_selector:
        pod["nodeSelector"] = {key: node_selector[key] for key in sorted(node_selector)}
    if tolerations:
        pod["tolerations"] = [toleration(item) for item in tolerations]
    pod["containers"] = [container]
    pod["volumes"] = list(volumes)
    return pod


def optional(**fields: object) -> Manifest:
    """The fields that are set: the API server fills defaults, and a null would be a diff."""
    return {key: value for key, value in fields.items() if value is not None}
