"""Build the service objects once, from settings (called by the app's lifespan and the CLI)."""

from __future__ import annotations

from dataclasses import dataclass

from controller.adapters.kube import KubeApi
from controller.adapters.secrets import LocalSecretStore
from controller.adapters.store import Store
from controller.domain.k8sconfig import NamespacePolicy, load_k8s_config
from controller.executors import Executor
from controller.executors.kube_exec import ExecExecutor
from controller.executors.kube_job import JobExecutor
from controller.executors.kube_tracking import JobTracker
from controller.executors.local import LocalExecutor
from controller.services.auth import TokenRegistry
from controller.services.experiments import ExperimentService
from controller.services.resources import ResourceService
from controller.services.runs import KubernetesSide, RunService
from controller.settings import Settings


@dataclass
class Services:
    settings: Settings
    store: Store
    experiments: ExperimentService
    runs: RunService
    tokens: TokenRegistry | None
    kube: KubeApi | None = None
    tracker: JobTracker | None = None
    resources: ResourceService | None = None

    def close(self) -> None:
        self.runs.stop()
        if self.kube is not None:
            self.kube.close()
        self.store.close()


def build_services(settings: Settings) -> Services:
    for directory in (settings.data_dir, settings.logs_dir, settings.work_dir):
        directory.mkdir(parents=True, exist_ok=True)
    store = Store(settings.db_path)
    secrets = LocalSecretStore(settings.data_dir / "secrets")
    k8s = load_k8s_config(settings.k8s_config_file) if settings.k8s_config_file.is_file() else None
    experiments = ExperimentService(
        settings, store, secrets, profile="local" if k8s is None else "kubernetes"
    )
    executors: dict[str, Executor] = {
        "local": LocalExecutor(
            settings.work_dir,
            cancel_grace=settings.cancel_grace_seconds,
            keep_workdirs=settings.keep_workdirs,
        )
    }
    tokens = TokenRegistry.from_file(settings.tokens_file) if settings.tokens_file else None
    if k8s is None:
        runs = RunService(settings, store, experiments, executors)
        return Services(settings, store, experiments, runs, tokens)

    kube = KubeApi(
        kubeconfig=k8s.kubeconfig,
        context=k8s.context,
        in_cluster=k8s.in_cluster,
        qps=k8s.api.qps,
        burst=k8s.api.burst,
    )
    stuck: list[RunService] = []  # the tracker reports to the run service built below
    tracker = JobTracker(kube, on_stuck=lambda run_id, why: stuck[0].stuck(run_id, why))
    executors["job"] = JobExecutor(kube, k8s, tracker)
    executors["exec"] = ExecExecutor(
        kube, work_root=k8s.exec.work_root, poll_seconds=k8s.exec.poll_seconds
    )
    side = KubernetesSide(NamespacePolicy.from_config(k8s), k8s.defaults.image)
    runs = RunService(settings, store, experiments, executors, side)
    stuck.append(runs)
    ca = str(settings.git_ca_bundle) if settings.git_ca_bundle else None
    resources = ResourceService(store, experiments, kube, k8s, git_ca_bundle=ca)
    return Services(settings, store, experiments, runs, tokens, kube, tracker, resources)
