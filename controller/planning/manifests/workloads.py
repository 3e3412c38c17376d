"""What ``POST /resource/k8s/create`` applies: a StatefulSet, Deployment or Job, and company.

A StatefulSet comes with the headless Service its ``serviceName`` names, and its
DVC cache is a claim template (one PVC per pod, deleted with the set). A
Deployment or Job with a DVC cache comes with a standalone PVC. The list is in
apply order: what an object refers to comes before it.

StatefulSet and Deployment pods idle (``sleep infinity``) unless a command is
given, so runs can be exec'd into them; each pod has an emptyDir at the exec
work root (``exec.work_root`` in k8s-config.yaml) for the exec'd runners' work dirs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from controller.domain.k8sconfig import EXEC_WORK_ROOT, JobSettings
from controller.domain.workloads import Resources, Toleration, WorkloadSpec
from controller.planning.manifests.meta import (
    Manifest,
    dvc_cache_claim_name,
    labels,
    metadata,
    workload_selector,
)
from controller.planning.manifests.pods import (
    env_from,
    optional,
    pod_failure_policy,
    pod_spec,
    resource_requirements,
)

WORKLOAD_CONTAINER = "workload"
# The default of k8s-config's exec.work_root: an emptyDir is mounted there, writable
# whatever user the image runs as, and it survives container restarts.
WORKLOAD_WORK_ROOT = EXEC_WORK_ROOT
IDLE_COMMAND = ("sleep", "infinity")
DVC_CACHE_VOLUME = "dvc-cache"
_API_VERSIONS = {"StatefulSet": "apps/v1", "Deployment": "apps/v1", "Job": "batch/v1"}


def workload(
    spec: WorkloadSpec,
    *,
    image: str,
    image_pull_policy: str,
    secret_name: str | None,
    pull_secret_name: str | None,
    default_resources: Resources | None,
    default_service_account: str | None = None,
    jobs: JobSettings | None = None,
    work_root: str = WORKLOAD_WORK_ROOT,
    default_node_selector: Mapping[str, str] | None = None,
    default_tolerations: Sequence[Toleration] = (),
    host_network: bool = False,
) -> list[Manifest]:
    """The objects for ``spec``, dependencies first; the workload itself is last.

    The spec's node selector and tolerations, each when it names any, else the defaults.

    ``spec.resources`` replaces ``default_resources`` as a whole: merging field
    by field could pair a request with a smaller default limit.
    """
    # The client's labels cannot override ours: their keys may not use mlexp.io/.
    object_labels = {
        **labels("workload", experiment_id=spec.experiment_id, resource=spec.name, kind=spec.kind),
        **spec.labels,
    }
    resources = spec.resources if spec.resources is not None else default_resources
    volumes: list[Manifest] = [{"name": "mlexp-work", "emptyDir": {}}]
    if spec.dvc_cache is not None and spec.kind != "StatefulSet":
        claim = {"claimName": dvc_cache_claim_name(spec.name)}
        volumes.append({"name": DVC_CACHE_VOLUME, "persistentVolumeClaim": claim})
    pod = pod_spec(
        _container(spec, image, image_pull_policy, secret_name, resources, work_root),
        volumes=volumes,
        service_account=spec.service_account or default_service_account,
        pull_secret_name=pull_secret_name,
        node_selector=spec.node_selector or default_node_selector or {},
        tolerations=spec.tolerations or default_tolerations,
        host_network=host_network,
    )
    meta = metadata(spec.name, spec.namespace, object_labels)
    if spec.annotations:
        meta["annotations"] = {key: spec.annotations[key] for key in sorted(spec.annotations)}
    template: Manifest = {"metadata": {"labels": dict(object_labels)}, "spec": pod}
    main: Manifest = {
        "apiVersion": _API_VERSIONS[spec.kind],
        "kind": spec.kind,
        "metadata": meta,
        "spec": _kind_spec(spec, template, object_labels, jobs or JobSettings()),
    }
    if spec.kind == "StatefulSet":
        return [_headless_service(spec, object_labels), main]
    if spec.dvc_cache is not None:
        return [_dvc_cache_claim(spec, object_labels), main]
    return [main]


def _container(
    spec: WorkloadSpec,
    image: str,
    image_pull_policy: str,
    secret_name: str | None,
    resources: Resources | None,
    work_root: str,
) -> Manifest:
    container: Manifest = {
        "name": WORKLOAD_CONTAINER,
        "image": image,
        "imagePullPolicy": image_pull_policy,
    }
    command = spec.command or (list(IDLE_COMMAND) if spec.kind != "Job" else None)
    if command is not None:
        container["command"] = list(command)
    if spec.env:
        container["env"] = [{"name": key, "value": spec.env[key]} for key in sorted(spec.env)]
    container.update(env_from(secret_name))
    container["resources"] = resource_requirements(resources)
    mounts: list[Manifest] = [{"name": "mlexp-work", "mountPath": work_root}]
    if spec.dvc_cache is not None:
        mounts.append({"name": DVC_CACHE_VOLUME, "mountPath": spec.dvc_cache.mount_path})
    container["volumeMounts"] = mounts
    container["securityContext"] = {"allowPrivilegeEscalation": False}
    return container


def _kind_spec(
    spec: WorkloadSpec, template: Manifest, object_labels: Mapping[str, str], jobs: JobSettings
) -> Manifest:
    if spec.kind == "Job":
        return _job_spec(spec, template, jobs)
    result: Manifest = {
        "replicas": spec.replicas,
        "selector": {"matchLabels": workload_selector(spec.kind, spec.name)},
    }
    if spec.kind == "StatefulSet":
        result["serviceName"] = spec.name
        # Pods are independent exec targets: start and replace them all at once.
        result["podManagementPolicy"] = "Parallel"
        result["template"] = template
        if spec.dvc_cache is not None:
            result["volumeClaimTemplates"] = [_claim_template(spec, object_labels)]
            retention = {"whenDeleted": "Delete", "whenScaled": "Retain"}
            result["persistentVolumeClaimRetentionPolicy"] = retention
        return result
    if spec.dvc_cache is not None and spec.dvc_cache.access_mode != "ReadWriteMany":
        # A single-node volume cannot follow a rolling update's new pod to another node.
        result["strategy"] = {"type": "Recreate"}
    result["template"] = template
    return result


def _job_spec(spec: WorkloadSpec, template: Manifest, jobs: JobSettings) -> Manifest:
    # No selector: the Job controller adds its own (ours would need manualSelector).
    pod = template["spec"]
    assert isinstance(pod, dict)
    return {
        "parallelism": spec.replicas,
        "completions": spec.replicas,
        "backoffLimit": jobs.backoff_limit,
        "podFailurePolicy": pod_failure_policy(WORKLOAD_CONTAINER, ()),
        "activeDeadlineSeconds": spec.active_deadline_seconds or jobs.active_deadline_seconds,
        **optional(ttlSecondsAfterFinished=jobs.ttl_seconds_after_finished),
        "template": {**template, "spec": {**pod, "restartPolicy": "Never"}},
    }


def _claim_spec(spec: WorkloadSpec) -> Manifest:
    cache = spec.dvc_cache
    assert cache is not None
    claim: Manifest = {
        "accessModes": [cache.access_mode],
        "resources": {"requests": {"storage": cache.size}},
    }
    if cache.storage_class is not None:
        claim["storageClassName"] = cache.storage_class
    return claim


def _claim_template(spec: WorkloadSpec, object_labels: Mapping[str, str]) -> Manifest:
    return {
        "metadata": {"name": DVC_CACHE_VOLUME, "labels": dict(object_labels)},
        "spec": _claim_spec(spec),
    }


def _dvc_cache_claim(spec: WorkloadSpec, object_labels: Mapping[str, str]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(dvc_cache_claim_name(spec.name), spec.namespace, object_labels),
        "spec": _claim_spec(spec),
    }


def _headless_service(spec: WorkloadSpec, object_labels: Mapping[str, str]) -> Manifest:
    """The governing Service of a StatefulSet: stable DNS names for its pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(spec.name, spec.namespace, object_labels),
        "spec": {
            "clusterIP": "None",
            "selector": workload_selector(spec.kind, spec.name),
            "publishNotReadyAddresses": True,
        },
    }
