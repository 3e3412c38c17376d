"""Build the service objects once, from settings (called by the app's lifespan and the CLI)."""

from __future__ import annotations

from dataclasses import dataclass

from controller.adapters.secrets import LocalSecretStore
from controller.adapters.store import Store
from controller.executors.local import LocalExecutor
from controller.services.auth import TokenRegistry
from controller.services.experiments import ExperimentService
from controller.services.runs import RunService
from controller.settings import Settings


@dataclass
class Services:
    settings: Settings
    store: Store
    experiments: ExperimentService
    runs: RunService
    tokens: TokenRegistry | None

    def close(self) -> None:
        self.runs.stop()
        self.store.close()


def build_services(settings: Settings) -> Services:
    for directory in (settings.data_dir, settings.logs_dir, settings.work_dir):
        directory.mkdir(parents=True, exist_ok=True)
    store = Store(settings.db_path)
    secrets = LocalSecretStore(settings.data_dir / "secrets")
    experiments = ExperimentService(settings, store, secrets, profile="local")
    executor = LocalExecutor(
        settings.work_dir,
        cancel_grace=settings.cancel_grace_seconds,
        keep_workdirs=settings.keep_workdirs,
    )
    runs = RunService(settings, store, experiments, executor)
    tokens = TokenRegistry.from_file(settings.tokens_file) if settings.tokens_file else None
    return Services(settings, store, experiments, runs, tokens)
