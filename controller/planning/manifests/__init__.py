"""Kubernetes manifests as plain dicts: credentials, the run Job, provisioned workloads.

Pure builders (no kubernetes client, no clock, no randomness): names, ids and
texts come in, so the same inputs give the same manifest. That makes
server-side apply (as :data:`FIELD_MANAGER`) idempotent and golden files possible.

    meta        names, labels, selectors, owner references
    secrets     the experiment's credentials Secret and registry pull secret --
                the only manifests that hold credential values
    pods        pod-level parts: resources, tolerations, failure policy, defaults
    runs        a run's runner ConfigMap and Job (``resource: job``)
    workloads   StatefulSet / Deployment / Job for ``POST /resource/k8s/create``

Everything a caller needs is importable from this package.
"""

from controller.planning.manifests.meta import (
    FIELD_MANAGER,
    LABEL_COMPONENT,
    LABEL_EXPERIMENT,
    LABEL_KIND,
    LABEL_RESOURCE,
    LABEL_RUN,
    MANAGED_BY,
    WORKLOAD_KINDS,
    Manifest,
    credentials_secret_name,
    dvc_cache_claim_name,
    label_selector,
    labels,
    owner_reference,
    pull_secret_name,
    run_configmap_name,
    run_job_name,
    workload_selector,
)
from controller.planning.manifests.pods import GPU_RESOURCE, resource_requirements
from controller.planning.manifests.runs import (
    RUN_WORKDIR,
    RUNNER_COMMAND,
    RUNNER_CONTAINER,
    RUNNER_FATAL_EXIT_CODES,
    RUNNER_MOUNT,
    run_job,
    runner_configmap,
)
from controller.planning.manifests.secrets import credentials_secret, registry_pull_secret
from controller.planning.manifests.workloads import (
    IDLE_COMMAND,
    WORKLOAD_CONTAINER,
    WORKLOAD_WORK_ROOT,
    workload,
)

__all__ = [
    "FIELD_MANAGER",
    "GPU_RESOURCE",
    "IDLE_COMMAND",
    "LABEL_COMPONENT",
    "LABEL_EXPERIMENT",
    "LABEL_KIND",
    "LABEL_RESOURCE",
    "LABEL_RUN",
    "MANAGED_BY",
    "RUNNER_COMMAND",
    "RUNNER_CONTAINER",
    "RUNNER_FATAL_EXIT_CODES",
    "RUNNER_MOUNT",
    "RUN_WORKDIR",
    "WORKLOAD_CONTAINER",
    "WORKLOAD_KINDS",
    "WORKLOAD_WORK_ROOT",
    "Manifest",
    "credentials_secret",
    "credentials_secret_name",
    "dvc_cache_claim_name",
    "label_selector",
    "labels",
    "owner_reference",
    "pull_secret_name",
    "registry_pull_secret",
    "resource_requirements",
    "run_configmap_name",
    "run_job",
    "run_job_name",
    "runner_configmap",
    "workload",
    "workload_selector",
]
