"""The only manifests that hold credential values: an experiment's two Secrets.

Both use ``data`` (base64), not ``stringData``. ``stringData`` is write-only: the
API server merges it into ``data``, so under server-side apply the field manager
owns ``stringData.*`` paths that never exist on the object, and a key dropped
from a later apply lingers in ``data`` (kubernetes/kubernetes#108008). With
``data`` the manager owns the real keys: a repeated apply is a no-op and a
removed key is pruned.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping

from controller.planning.manifests.meta import (
    Manifest,
    credentials_secret_name,
    labels,
    metadata,
    pull_secret_name,
)

_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")


def credentials_secret(*, experiment_id: str, namespace: str, env: Mapping[str, str]) -> Manifest:
    """One key per environment variable the runner reads (pods take it with ``envFrom``)."""
    for key in env:
        if not _SECRET_KEY.match(key):
            # Keys come from credential_env, never from a client: a bad one is a bug.
            raise ValueError(f"{key[:80]!r} is not a valid Secret key")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(
            credentials_secret_name(experiment_id),
            namespace,
            labels("credentials", experiment_id=experiment_id),
        ),
        "type": "Opaque",
        "data": {key: _b64(env[key]) for key in sorted(env)},
    }


def registry_pull_secret(
    *, experiment_id: str, namespace: str, server: str, username: str, password: str
) -> Manifest:
    """A ``kubernetes.io/dockerconfigjson`` Secret for ``imagePullSecrets``."""
    auth = _b64(f"{username}:{password}")
    config = {"auths": {server: {"username": username, "password": password, "auth": auth}}}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(
            pull_secret_name(experiment_id),
            namespace,
            labels("credentials", experiment_id=experiment_id),
        ),
        "type": "kubernetes.io/dockerconfigjson",
        # sort_keys: the same credentials must give the same bytes, or every apply writes.
        "data": {".dockerconfigjson": _b64(json.dumps(config, sort_keys=True))},
    }


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")
