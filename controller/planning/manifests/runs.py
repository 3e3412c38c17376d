"""A run on ``resource: job``: the runner's ConfigMap and the Job that runs it.

The Job's container runs the runner from the ConfigMap, so any image with
python3, git and dvc will do; credentials come from the experiment's Secret
through ``envFrom`` and appear nowhere in either object.

Failure policy: evictions and other disruptions are ignored (not counted
against ``backoffLimit``); exit codes in :data:`RUNNER_FATAL_EXIT_CODES` fail the
Job at once, since another attempt cannot succeed. Every other failure is
retried up to ``backoffLimit``: the runner exits 1 for any failed step, whether
transient (the network during clone, pull or push) or not (``dvc repro``), and
a retry is safe because each runner step is idempotent and DVC's run-cache
skips the stages that already finished.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from controller.domain.errors import InvalidInput
from controller.domain.workloads import Resources, Toleration
from controller.planning.manifests.meta import (
    Manifest,
    labels,
    metadata,
    run_configmap_name,
    run_job_name,
)
from controller.planning.manifests.pods import (
    env_from,
    optional,
    pod_failure_policy,
    pod_spec,
    resource_requirements,
)

RUNNER_CONTAINER = "runner"
RUNNER_MOUNT = "/opt/mlexp"
RUN_WORKDIR = "/work"
RUNNER_COMMAND = (
    "python3",
    f"{RUNNER_MOUNT}/runner.py",
    "--spec",
    f"{RUNNER_MOUNT}/spec.json",
    "--workdir",
    RUN_WORKDIR,
)
# 2 is argparse's usage error: the command line or the mounted spec is wrong, and
# will be just as wrong on the next attempt.
RUNNER_FATAL_EXIT_CODES: tuple[int, ...] = (2,)
# The API server refuses a ConfigMap over 1 MiB, metadata included.
MAX_CONFIGMAP_DATA_BYTES = 1_000_000


def runner_configmap(
    *,
    run_id: str,
    experiment_id: str,
    namespace: str,
    runner_source: str,
    spec: Mapping[str, object],
    files: Mapping[str, str] | None = None,
    owner_references: Sequence[Mapping[str, object]] = (),
) -> Manifest:
    """``runner.py`` and ``spec.json`` (sorted keys), mounted read-only into the run's Job,
    with the ``files`` the spec names beside it (private CA certificates).

    Raises ``InvalidInput`` when they exceed what a ConfigMap can hold (huge params).
    """
    data = {
        **(files or {}),
        "runner.py": runner_source,
        "spec.json": json.dumps(spec, sort_keys=True, indent=2) + "\n",
    }
    size = sum(len(key) + len(value.encode()) for key, value in data.items())
    if size > MAX_CONFIGMAP_DATA_BYTES:
        raise InvalidInput(
            f"run {run_id}: the runner and its spec take {size} bytes, over the"
            f" {MAX_CONFIGMAP_DATA_BYTES}-byte limit of a ConfigMap"
        )
    meta = metadata(
        run_configmap_name(run_id),
        namespace,
        labels("runner", experiment_id=experiment_id, run_id=run_id),
    )
    if owner_references:
        meta["ownerReferences"] = [dict(ref) for ref in owner_references]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        # A run's spec never changes, and kubelets do not watch immutable ConfigMaps:
        # with hundreds of runs in flight that is hundreds of watches fewer.
        "immutable": True,
        "data": data,
    }


def run_job(
    *,
    run_id: str,
    experiment_id: str,
    namespace: str,
    image: str,
    image_pull_policy: str,
    secret_name: str | None,
    pull_secret_name: str | None,
    configmap_name: str,
    resources: Resources | None,
    service_account: str | None,
    backoff_limit: int,
    active_deadline_seconds: int | None,
    ttl_seconds_after_finished: int | None,
    node_selector: Mapping[str, str],
    tolerations: Sequence[Toleration],
    pod_labels: Mapping[str, str] | None = None,
    host_network: bool = False,
) -> Manifest:
    """One run's ``batch/v1`` Job; its pods carry the run and experiment labels.

    ``pod_labels`` (from the config) go on the pods only; ours win on a clash, since
    the run's status is found through them.
    """
    run_labels = labels("run", experiment_id=experiment_id, run_id=run_id)
    template_labels = {**(pod_labels or {}), **run_labels}
    pod = pod_spec(
        _runner_container(image, image_pull_policy, secret_name, resources),
        volumes=[
            {"name": "runner", "configMap": {"name": configmap_name, "defaultMode": 0o444}},
            {"name": "work", "emptyDir": {}},
        ],
        service_account=service_account,
        pull_secret_name=pull_secret_name,
        node_selector=node_selector,
        tolerations=tolerations,
        host_network=host_network,
    )
    spec: Manifest = {
        "backoffLimit": backoff_limit,
        "podFailurePolicy": pod_failure_policy(RUNNER_CONTAINER, RUNNER_FATAL_EXIT_CODES),
        **optional(
            activeDeadlineSeconds=active_deadline_seconds,
            ttlSecondsAfterFinished=ttl_seconds_after_finished,
        ),
        "template": {
            "metadata": {"labels": template_labels},
            "spec": {**pod, "restartPolicy": "Never"},
        },
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(run_job_name(run_id), namespace, run_labels),
        "spec": spec,
    }


def _runner_container(
    image: str, image_pull_policy: str, secret_name: str | None, resources: Resources | None
) -> Manifest:
    return {
        "name": RUNNER_CONTAINER,
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "command": list(RUNNER_COMMAND),
        "env": [
            {"name": "DVC_NO_ANALYTICS", "value": "1"},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            # The runner writes why it failed there; the kubelet puts it in the pod status.
            {"name": "MLEXP_TERMINATION_LOG", "value": "/dev/termination-log"},
        ],
        **env_from(secret_name),
        "resources": resource_requirements(resources),
        "volumeMounts": [
            {"name": "runner", "mountPath": RUNNER_MOUNT, "readOnly": True},
            {"name": "work", "mountPath": RUN_WORKDIR},
        ],
        # The log's tail becomes the termination message, so a failure's reason outlives
        # the pod; the runner never prints a credential.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # git and dvc need no capabilities; the work dir is an emptyDir anyone may write.
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
