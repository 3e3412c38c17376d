"""Names, labels and selectors of the objects the service manages.

Names are deterministic functions of ids, so a restarted service finds (and
server-side apply updates) the same object instead of creating a twin; labels
let it list and watch everything it made.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.domain.naming import is_dns1123_label

Manifest = dict[str, object]

FIELD_MANAGER = "mlexp-ctrl"

MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_EXPERIMENT = "mlexp.io/experiment-id"
LABEL_RUN = "mlexp.io/run-id"
LABEL_RESOURCE = "mlexp.io/resource"
LABEL_KIND = "mlexp.io/kind"
LABEL_COMPONENT = "mlexp.io/component"

# A workload's kind as a run's resource string spells it (sts/<name>) and as Kubernetes does.
WORKLOAD_KINDS = {
    "sts": "StatefulSet",
    "deploy": "Deployment",
    "job": "Job",
    "StatefulSet": "StatefulSet",
    "Deployment": "Deployment",
    "Job": "Job",
}


def credentials_secret_name(experiment_id: str) -> str:
    return _checked(f"mlexp-cred-{experiment_id}")


def pull_secret_name(experiment_id: str) -> str:
    return _checked(f"mlexp-pull-{experiment_id}")


def run_job_name(run_id: str) -> str:
    return _checked(f"mlexp-{run_id}")


def run_configmap_name(run_id: str) -> str:
    return _checked(f"mlexp-{run_id}-runner")


def dvc_cache_claim_name(workload_name: str) -> str:
    """The standalone PVC of a Deployment or Job (a StatefulSet has a claim template)."""
    return _checked(f"{workload_name}-dvc-cache")


def _checked(name: str) -> str:
    # Ids come from the service, so a bad name is a bug, not a client error.
    if not is_dns1123_label(name):
        raise ValueError(f"{name[:80]!r} is not a DNS-1123 label")
    return name


def labels(
    component: str,
    *,
    experiment_id: str | None = None,
    run_id: str | None = None,
    resource: str | None = None,
    kind: str | None = None,
) -> dict[str, str]:
    """The labels of a managed object; a subset of them selects it again.

    ``component`` is ``credentials``, ``runner``, ``run`` or ``workload``.
    """
    result = {MANAGED_BY: FIELD_MANAGER, LABEL_COMPONENT: component}
    optional = {
        LABEL_EXPERIMENT: experiment_id,
        LABEL_RUN: run_id,
        LABEL_RESOURCE: resource,
        LABEL_KIND: kind,
    }
    result.update({key: value for key, value in optional.items() if value is not None})
    return result


def workload_selector(kind: str, name: str) -> dict[str, str]:
    """The pods of one workload; the kind is in it, so ``sts/x`` and ``deploy/x`` never mix.

    ``kind`` may be spelt either way: ``sts`` or ``StatefulSet``, ``deploy`` or ``Deployment``.
    """
    if kind not in WORKLOAD_KINDS:
        raise ValueError(f"{kind[:40]!r} is not a workload kind")
    return {LABEL_RESOURCE: name, LABEL_KIND: WORKLOAD_KINDS[kind]}


def label_selector(selector: Mapping[str, str]) -> str:
    """``k=v,k=v`` for list and watch calls, in a stable order."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items()))


def owner_reference(*, api_version: str, kind: str, name: str, uid: str) -> dict[str, object]:
    """Make an object go when its owner does (a run's ConfigMap with its Job).

    No ``blockOwnerDeletion``: setting it needs update rights on the owner's
    finalizers, and nothing has to wait for a ConfigMap to go.
    """
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "controller": True}


def metadata(name: str, namespace: str, object_labels: Mapping[str, str]) -> Manifest:
    return {"name": name, "namespace": namespace, "labels": dict(object_labels)}
