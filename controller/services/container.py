"""Build the service objects once, from settings (called by the app's lifespan and the CLI)."""

from __future__ import annotations

import logging
import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path

from controller.adapters import sandbox
from controller.adapters.kube import KubeApi
from controller.adapters.mlflow import MlflowClient
from controller.adapters.secrets import LocalSecretStore
from controller.adapters.store import Store
from controller.adapters.webhooks import WebhookPoster, WebhookSecrets
from controller.domain.k8sconfig import NamespacePolicy, lease_for, load_k8s_config
from controller.executors import Executor
from controller.executors.kube_exec import ExecExecutor
from controller.executors.kube_job import JobExecutor
from controller.executors.kube_tracking import JobTracker
from controller.executors.local import LocalExecutor
from controller.services.auth import TokenRegistry
from controller.services.compare import CompareService
from controller.services.events import EventBus
from controller.services.experiments import ExperimentService
from controller.services.fence import DispatchFence, identity
from controller.services.mlflow_export import MlflowExport
from controller.services.notifications import WebhookService
from controller.services.outbox import Outbox, RetryPolicy
from controller.services.registry import RegistryService
from controller.services.resources import ResourceService
from controller.services.runs import KubernetesSide, RunService
from controller.services.sweeps import SweepService, principal_lookup
from controller.settings import Settings

log = logging.getLogger("mlexp.services")

# Certificate locations a run may need to reach git and S3 over TLS.
CA_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "GIT_SSL_CAINFO")


class StartupError(RuntimeError):
    """The settings cannot work; the message says what to change or install."""


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
    fence: DispatchFence | None = None  # set: dispatch only while holding the lease
    # Built from the services above, in __post_init__.
    events: EventBus = field(init=False)
    compare: CompareService = field(init=False)
    sweeps: SweepService = field(init=False)
    registry: RegistryService = field(init=False)
    outbox: Outbox = field(init=False)  # started by the app after the runs
    webhooks: WebhookService = field(init=False)
    mlflow: MlflowExport | None = field(init=False)  # when settings.mlflow is set

    def __post_init__(self) -> None:
        self.events = EventBus()
        self.outbox = outbox_from(self.settings, self.store)
        self.webhooks = WebhookService(
            self.settings,
            self.store,
            self.outbox,
            WebhookPoster(
                self.experiments.locations,
                connect_timeout=self.settings.webhooks.connect_timeout_seconds,
                read_timeout=self.settings.webhooks.read_timeout_seconds,
            ),
            WebhookSecrets(self.settings.data_dir / "secrets" / "webhooks"),
        )
        self.events.subscribe(self.webhooks.on_event)
        self.mlflow = mlflow_export(self.settings, self.store, self.outbox, self.events)
        self.runs.subscribe(self.events.run_changed)
        self.compare = CompareService(self.store, self.experiments, self.runs)
        self.registry = RegistryService(
            self.settings, self.store, self.experiments, self.runs, self.events
        )
        # Subscribes to run changes now; started (resumes its sweeps) after the run service.
        self.sweeps = SweepService(
            self.settings, self.store, self.runs, principal_lookup(self.tokens), self.events
        )

    def activate(self) -> None:
        """Start dispatching and tracking runs (the fence calls this once it holds the lease)."""
        self.runs.start()
        self.sweeps.start()  # after the runs are reconciled: sweeps resume from them
        self.outbox.start()  # after every sender is registered (services built)

    def close(self) -> None:
        self.outbox.stop()
        self.webhooks.poster.close()
        if self.mlflow is not None:
            self.mlflow.close()
        self.sweeps.stop()
        self.runs.stop()
        if self.fence is not None:  # after the runs stopped: then a successor may start
            self.fence.stop()
        if self.kube is not None:
            self.kube.close()
        self.store.close()


def outbox_from(settings: Settings, store: Store) -> Outbox:
    """The outbox of deliveries to outside systems, with the retry policy of the settings."""
    options = settings.deliveries
    policy = RetryPolicy(
        max_attempts=options.max_attempts,
        first_seconds=options.first_retry_seconds,
        cap_seconds=options.max_retry_seconds,
    )
    return Outbox(
        store,
        policy,
        workers=options.workers,
        max_payload_bytes=options.max_payload_bytes,
        retention_days=options.retention_days,
    )


def mlflow_export(
    settings: Settings, store: Store, outbox: Outbox, events: EventBus
) -> MlflowExport | None:
    """The MLflow export, sending through the outbox, if ``mlflow`` is configured."""
    if settings.mlflow is None:
        return None
    client = MlflowClient(settings.mlflow.tracking_uri, timeout=settings.mlflow.timeout_seconds)
    export = MlflowExport(settings.mlflow, store, outbox, client)
    export.attach(events)
    return export


def local_executor(settings: Settings, tokens: TokenRegistry | None) -> LocalExecutor:
    """The local executor, sandboxed unless ``local.isolation: none`` was chosen."""
    bwrap = None
    if settings.local.isolation == "none":
        if tokens is not None and len(tokens.principals) > 1:
            raise StartupError(
                "local.isolation: none lets every run read the service's data and other "
                "runs; it is refused when the tokens file names more than one principal"
            )
        log.warning(
            "local runs are not sandboxed (local.isolation: none): their code sees this "
            "machine as the service's user does, including the data dir"
        )
    else:
        try:
            bwrap = sandbox.check_available()
        except sandbox.SandboxUnavailable as exc:
            raise StartupError(str(exc)) from None
    readable = [Path(os.environ[k]) for k in CA_VARIABLES if os.environ.get(k)]
    readable += [p.resolve() for p in (settings.git_ca_bundle, settings.storage.ca_bundle) if p]
    hidden = [settings.data_dir, settings.config_file.resolve().parent]
    hidden += [p.resolve() for p in (settings.tokens_file, settings.k8s_config_file) if p]
    return LocalExecutor(
        settings.work_dir,
        cancel_grace=settings.cancel_grace_seconds,
        keep_workdirs=settings.keep_workdirs,
        bwrap=bwrap,
        readable=readable,
        hidden=hidden,
    )


def preflight(settings: Settings) -> None:
    """What ``mlexp serve`` checks before listening: a StartupError says what to fix."""
    try:
        tokens = TokenRegistry.from_file(settings.tokens_file) if settings.tokens_file else None
    except (OSError, ValueError) as exc:
        raise StartupError(f"tokens file: {exc}") from None
    if settings.local.enabled:
        local_executor(settings, tokens)


def build_services(settings: Settings) -> Services:
    for directory in (settings.data_dir, settings.logs_dir, settings.work_dir):
        directory.mkdir(parents=True, exist_ok=True)
    store = Store(settings.db_path)
    secrets = LocalSecretStore(settings.data_dir / "secrets")
    k8s = load_k8s_config(settings.k8s_config_file) if settings.k8s_config_file.is_file() else None
    experiments = ExperimentService(
        settings, store, secrets, profile="local" if k8s is None else "kubernetes"
    )
    tokens = TokenRegistry.from_file(settings.tokens_file) if settings.tokens_file else None
    executors: dict[str, Executor] = {}
    if settings.local.enabled:
        executors["local"] = local_executor(settings, tokens)
    elif k8s is None:
        raise StartupError(
            "local.enabled: false leaves nothing to run pipelines on: configure Kubernetes "
            f"({settings.k8s_config_file}) or enable local runs"
        )
    if k8s is None:
        runs = RunService(settings, store, experiments, executors)
        return Services(settings, store, experiments, runs, tokens)

    try:
        lease = lease_for(k8s)
    except ValueError as exc:
        raise StartupError(f"{settings.k8s_config_file}: {exc}") from None
    kube = KubeApi(
        kubeconfig=k8s.kubeconfig,
        context=k8s.context,
        in_cluster=k8s.in_cluster,
        service_account_dir=k8s.service_account_dir,
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
    resources = ResourceService(store, experiments, kube, k8s)
    built = Services(settings, store, experiments, runs, tokens, kube, tracker, resources)
    if lease is not None:
        built.fence = DispatchFence(
            kube,
            lease,
            # The pod's name (the chart sets it from the downward API): with hostNetwork the
            # host name is the node's.
            identity(os.environ.get("MLEXP_POD_NAME") or socket.gethostname()),
            on_acquired=built.activate,
            on_lost=_terminate,
        )
    return built


def _terminate() -> None:
    """The dispatch lease was lost: stop the service (as a leader elector does), so that it
    no longer acts on runs when a successor takes over; Kubernetes starts it again, and it
    comes back on standby."""
    os.kill(os.getpid(), signal.SIGTERM)
