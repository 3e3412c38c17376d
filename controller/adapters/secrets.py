"""Where an experiment's credentials are kept in the local profile.

One file per experiment under ``<data_dir>/secrets``, readable by the service's
user only. The database never holds a credential, so a copy of it shared for
debugging leaks nothing. (On Kubernetes, credentials live in Secrets.)
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from pydantic import SecretStr

from controller.domain.bundle import RepoSpec


class LocalSecretStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, experiment_id: str) -> Path:
        return self.root / f"{experiment_id}.json"

    def put(self, experiment_id: str, spec: RepoSpec) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self._path(experiment_id).with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(_reveal(spec.model_dump(exclude_none=True)), out)
        tmp.replace(self._path(experiment_id))

    def get(self, experiment_id: str) -> RepoSpec | None:
        path = self._path(experiment_id)
        if not path.is_file():
            return None
        return RepoSpec.model_validate_json(path.read_text())

    def delete(self, experiment_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(experiment_id).unlink()


def _reveal(value: object) -> object:
    """pydantic dumps SecretStr masked; the store must keep the real value."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    return value
