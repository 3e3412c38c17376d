"""Use case: provision workloads (StatefulSet, Deployment, Job) in allowed namespaces.

The namespace is checked before any Kubernetes call. Objects are applied
server-side under deterministic names, so posting the same spec again updates
rather than duplicates. A workload bound to an experiment gets that
experiment's credentials Secret (``envFrom``) and registry pull secret; no
credential is in the workload itself.

A workload belongs to the principal that provisioned it: only that principal
(or an admin) updates it, deletes it or runs in its pods (:func:`provisioned` is
what the run service asks). A name already taken -- by another principal's
workload, or by an object the service did not provision -- is refused instead of
taken over.
"""

from __future__ import annotations

import logging
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from controller.adapters.kube import KubeApi, Obj
from controller.adapters.store import Store
from controller.domain.errors import Conflict, InvalidInput, NotFound
from controller.domain.k8sconfig import K8sConfig, NamespacePolicy
from controller.domain.models import utcnow
from controller.domain.workloads import WorkloadSpec
from controller.planning import manifests as m
from controller.planning.runs import credential_env
from controller.services.auth import Principal
from controller.services.experiments import ExperimentService

log = logging.getLogger("mlexp.resources")

SHORT = {"StatefulSet": "sts", "Deployment": "deploy", "Job": "job"}
LONG = {short: kind for kind, short in SHORT.items()}


class Readiness(BaseModel):
    desired: int
    ready: int
    ready_pods: list[str] = Field(default_factory=list)


class Resource(BaseModel):
    model_config = ConfigDict(frozen=True)

    resource: str = Field(description="What runs name in `resource`: sts/<name>, deploy/<name>.")
    kind: str
    name: str
    namespace: str
    owner: str
    experiment_id: str | None
    image: str
    created_at: datetime
    spec: WorkloadSpec
    readiness: Readiness | None = None


def provisioned(store: Store, namespace: str, kind: str, name: str) -> Resource | None:
    """The record of a workload the service provisioned (``kind`` spelt sts or StatefulSet)."""
    found = store.get_resource(namespace, LONG.get(kind, kind), name)
    return Resource.model_validate_json(found[1]) if found is not None else None


class ResourceService:
    def __init__(
        self,
        store: Store,
        experiments: ExperimentService,
        kube: KubeApi,
        config: K8sConfig,
    ) -> None:
        self.store = store
        self.experiments = experiments
        self.kube = kube
        self.config = config
        self.policy = NamespacePolicy.from_config(config)

    def _check_namespace(self, principal: Principal, namespace: str | None) -> str:
        return self.policy.check(
            namespace, caller_namespaces=principal.namespaces, caller_admin=principal.admin
        )

    def create(self, principal: Principal, spec: WorkloadSpec) -> Resource:
        namespace = self._check_namespace(principal, spec.namespace)
        previous = self._claim_name(principal, namespace, spec)
        secret_name = pull_name = None
        registry_image = None
        if spec.experiment_id is not None:
            self.experiments.get(principal, spec.experiment_id)  # visible to the caller
            repo = self.experiments.credentials(spec.experiment_id)
            # Credentials only: CA certificates come with each run's spec (a path of the
            # service's host would mean nothing in the pod).
            env = credential_env(repo)
            self.kube.apply(
                m.credentials_secret(experiment_id=spec.experiment_id, namespace=namespace, env=env)
            )
            secret_name = m.credentials_secret_name(spec.experiment_id)
            registry = repo.registry
            registry_image = registry.image if registry else None
            if registry and registry.password is not None and registry.server:
                self.kube.apply(
                    m.registry_pull_secret(
                        experiment_id=spec.experiment_id,
                        namespace=namespace,
                        server=registry.server,
                        username=registry.username or "",
                        password=registry.password.get_secret_value(),
                    )
                )
                pull_name = m.pull_secret_name(spec.experiment_id)
        image = spec.image or registry_image or self.config.defaults.image
        if not image:
            raise InvalidInput(
                "no image: set image in the spec, registry.image in the experiment's repo_json, "
                "or defaults.image in k8s-config.yaml"
            )
        for manifest in m.workload(
            spec,
            image=image,
            image_pull_policy=self.config.defaults.image_pull_policy,
            secret_name=secret_name,
            pull_secret_name=pull_name,
            default_resources=self.config.defaults.resources,
            default_service_account=self.config.defaults.service_account,
            jobs=self.config.jobs,
            work_root=self.config.exec.work_root,
            default_node_selector=self.config.defaults.node_selector,
            default_tolerations=self.config.defaults.tolerations,
            host_network=self.config.defaults.host_network,
        ):
            self.kube.apply(manifest)
        resource = Resource(
            resource=f"{SHORT[spec.kind]}/{spec.name}",
            kind=spec.kind,
            name=spec.name,
            namespace=namespace,
            # An update (by the owner or an admin) keeps who owns it and since when: queued
            # runs check that the workload they were accepted for is still the same one.
            owner=previous.owner if previous else principal.name,
            experiment_id=spec.experiment_id,
            image=image,
            created_at=previous.created_at if previous else utcnow(),
            spec=spec,
        )
        self.store.put_resource(
            namespace, spec.kind, spec.name, principal.name, resource.model_dump_json()
        )
        log.info("resource applied", extra={"resource": resource.resource, "namespace": namespace})
        return resource

    def _claim_name(
        self, principal: Principal, namespace: str, spec: WorkloadSpec
    ) -> Resource | None:
        """The caller's own record of this workload (an update), None for a new one.

        Refused with 409, before anything is applied: a name that another principal's
        workload holds (applying would hand its pods to the caller) or that an object the
        service did not provision holds (applying would take it over).
        """
        previous = provisioned(self.store, namespace, spec.kind, spec.name)
        if previous is not None and principal.may_see(previous.owner):
            return previous
        live = self.kube.get(spec.kind, namespace, spec.name) if previous is None else None
        what = f"{SHORT[spec.kind]}/{spec.name} in namespace {namespace}"
        if live is not None and (live.get("metadata") or {}).get("deletionTimestamp"):
            raise Conflict(f"{what} is being deleted; post the spec again once it is gone")
        if previous is not None or live is not None:
            raise Conflict(f"{what} already exists; choose another name")
        return None

    def _record(self, principal: Principal, namespace: str, kind: str, name: str) -> Resource:
        self._check_namespace(principal, namespace)
        found = self.store.get_resource(namespace, LONG.get(kind, kind), name)
        if found is None or not principal.may_see(found[0]):
            raise NotFound(f"resource {kind}/{name} in {namespace} does not exist")
        return Resource.model_validate_json(found[1])

    def get(self, principal: Principal, namespace: str, kind: str, name: str) -> Resource:
        resource = self._record(principal, namespace, kind, name)
        live = self.kube.get(resource.kind, namespace, name)
        if live is None:
            return resource
        return resource.model_copy(update={"readiness": self._readiness(resource, live)})

    def _readiness(self, resource: Resource, live: Obj) -> Readiness:
        status = live.get("status") or {}
        selector = m.label_selector(m.workload_selector(SHORT[resource.kind], resource.name))
        pods, _ = self.kube.select("Pod", resource.namespace, selector)
        ready = sorted(
            str(p["metadata"]["name"])
            for p in pods
            if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (p.get("status") or {}).get("conditions") or []
            )
        )
        if resource.kind == "Job":
            desired = int((live.get("spec") or {}).get("completions") or 1)
            return Readiness(
                desired=desired, ready=int(status.get("succeeded") or 0), ready_pods=ready
            )
        desired = int((live.get("spec") or {}).get("replicas") or 0)
        return Readiness(
            desired=desired, ready=int(status.get("readyReplicas") or 0), ready_pods=ready
        )

    def list(self, principal: Principal, namespace: str | None) -> list[Resource]:
        if namespace is not None:
            self._check_namespace(principal, namespace)
        owner = None if principal.admin else principal.name
        return [
            Resource.model_validate_json(body)
            for body in self.store.list_resources(owner=owner, namespace=namespace)
        ]

    def delete(self, principal: Principal, namespace: str, kind: str, name: str) -> None:
        resource = self._record(principal, namespace, kind, name)
        self.kube.delete(resource.kind, namespace, name, foreground=False)
        selector = m.label_selector({m.LABEL_RESOURCE: name})
        for extra_kind in ("Service", "PersistentVolumeClaim"):
            items, _ = self.kube.select(extra_kind, namespace, selector)
            for item in items:
                self.kube.delete(
                    extra_kind, namespace, str(item["metadata"]["name"]), foreground=False
                )
        self.store.delete_resource(namespace, resource.kind, name)
        log.info("resource deleted", extra={"resource": resource.resource, "namespace": namespace})
