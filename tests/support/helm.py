"""Helm for the cluster tier: the binary, rendering the chart, installing it into a Cluster.

    helm = helm_binary()                      # built by scripts/build-k8s, cached
    text = render(helm, {"namespaces": ["ml-a"]}, release="mlx", namespace="mlx-system")
    with installed_chart(cluster, helm, namespaces=("ml-a", "ml-b")) as release:
        release.user                          # system:serviceaccount:<ns>:<sa>, for --as / SARs
        service_account_kubeconfig(cluster, release, tmp / "sa.kubeconfig")  # act as it

`installed_chart` creates the release namespace and every listed namespace (the chart's Roles
live in them), runs `helm upgrade --install` against the cluster's admin kubeconfig, and
uninstalls and deletes those namespaces afterwards. Helm's own state (cache, config, the
repository index) goes to a temporary directory, never to the user's home.

Only the standard library and PyYAML are used. Errors: `HelmError` with the tail of helm's or
kubectl's stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.cluster import REPO_ROOT, Cluster, ClusterError, build_binaries

CHART = REPO_ROOT / "deploy" / "helm" / "mlexp-ctrl"
COMMAND_TIMEOUT = 120.0


class HelmError(RuntimeError):
    """helm or kubectl failed; the message ends with its stderr's tail."""


def helm_binary() -> Path:
    """The helm binary scripts/build-k8s built (raises ClusterError if it cannot)."""
    helm = build_binaries() / "helm"
    if not os.access(helm, os.X_OK):
        raise ClusterError(f"{helm} is missing after scripts/build-k8s")
    return helm


def _helm_env(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


def run(
    argv: Sequence[str | Path], *, stdin: str | None = None, env: Mapping[str, str] | None = None
) -> str:
    """Run a command; its stdout, or HelmError with its stderr."""
    done = subprocess.run(
        [str(arg) for arg in argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        env=dict(env) if env is not None else None,
        check=False,
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise HelmError(f"{Path(str(argv[0])).name} {argv[1]} failed ({done.returncode}):\n{tail}")
    return done.stdout


def _values_args(values: Mapping[str, Any] | None, scratch: Path) -> list[str]:
    if not values:
        return []
    path = scratch / f"values-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(dict(values)))
    return ["--values", str(path)]


def render(
    helm: Path,
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "mlexp",
    namespace: str = "mlexp-system",
    values_files: Sequence[Path] = (),
) -> str:
    """`helm template` of the chart: the manifests as one YAML stream."""
    with tempfile.TemporaryDirectory(prefix="mlexp-helm-") as scratch:
        home = Path(scratch)
        argv: list[str | Path] = [helm, "template", release, CHART, "--namespace", namespace]
        for path in values_files:
            argv += ["--values", str(path)]
        argv += _values_args(values, home)
        return run(argv, env=_helm_env(home))


def objects(manifests: str) -> list[dict[str, Any]]:
    """The objects of a YAML stream (empty documents left out)."""
    return [doc for doc in yaml.safe_load_all(manifests) if doc]


def kubectl(cluster: Cluster, *args: str, stdin: str | None = None) -> str:
    """kubectl as the cluster's admin."""
    return run([cluster.kubectl, "--kubeconfig", str(cluster.kubeconfig), *args], stdin=stdin)


def ensure_namespaces(cluster: Cluster, names: Sequence[str]) -> None:
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in names]
    stream = "\n---\n".join(json.dumps(doc) for doc in docs)
    kubectl(cluster, "apply", "--server-side", "-f", "-", stdin=stream)


@dataclass(frozen=True)
class Release:
    """An installed chart: who the service is, and where it may act."""

    name: str
    namespace: str
    service_account: str
    fullname: str
    namespaces: tuple[str, ...]

    @property
    def user(self) -> str:
        """The ServiceAccount's user name, for `kubectl --as` and SubjectAccessReviews."""
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    @property
    def groups(self) -> tuple[str, ...]:
        """The groups the API server gives that ServiceAccount's tokens."""
        return (
            "system:serviceaccounts",
            f"system:serviceaccounts:{self.namespace}",
            "system:authenticated",
        )


def service_account_token(cluster: Cluster, release: Release, *, duration: str = "1h") -> str:
    """A token for the release's ServiceAccount (TokenRequest, as `kubectl create token`)."""
    return kubectl(
        cluster, "create", "token", release.service_account, "-n", release.namespace,
        f"--duration={duration}",
    ).strip()  # fmt: skip


def service_account_kubeconfig(cluster: Cluster, release: Release, path: Path) -> Path:
    """A kubeconfig at `path` that acts as the release's ServiceAccount (a fresh token, the
    cluster's server and CA): the rights a pod of the chart would have, and no more."""
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["users"] = [{"name": release.service_account,
                        "user": {"token": service_account_token(cluster, release)}}]  # fmt: skip
    for context in config["contexts"]:
        context["context"]["user"] = release.service_account
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path


def install(
    cluster: Cluster,
    helm: Path,
    *,
    release: str,
    namespace: str,
    namespaces: Sequence[str],
    values: Mapping[str, Any] | None = None,
) -> Release:
    """`helm upgrade --install` into the cluster (namespaces created first); no waiting for
    the pod (on kwok nodes nothing pulls the image)."""
    ensure_namespaces(cluster, [namespace, *namespaces])
    merged = {**(values or {}), "namespaces": list(namespaces)}
    with tempfile.TemporaryDirectory(prefix="mlexp-helm-") as scratch:
        home = Path(scratch)
        argv: list[str | Path] = [
            helm, "upgrade", "--install", release, CHART,
            "--kubeconfig", cluster.kubeconfig, "--namespace", namespace,
            *_values_args(merged, home),
        ]  # fmt: skip
        run(argv, env=_helm_env(home))
        manifest = run(
            [helm, "get", "manifest", release, "--kubeconfig", cluster.kubeconfig,
             "--namespace", namespace],
            env=_helm_env(home),
        )  # fmt: skip
    deployment = next(o for o in objects(manifest) if o["kind"] == "Deployment")
    return Release(
        name=release,
        namespace=namespace,
        service_account=deployment["spec"]["template"]["spec"]["serviceAccountName"],
        fullname=deployment["metadata"]["name"],
        namespaces=tuple(namespaces),
    )


def uninstall(cluster: Cluster, helm: Path, release: Release) -> None:
    with tempfile.TemporaryDirectory(prefix="mlexp-helm-") as scratch:
        run(
            [helm, "uninstall", release.name, "--kubeconfig", cluster.kubeconfig,
             "--namespace", release.namespace],
            env=_helm_env(Path(scratch)),
        )  # fmt: skip


@contextlib.contextmanager
def installed_chart(
    cluster: Cluster,
    helm: Path,
    *,
    namespaces: Sequence[str],
    namespace: str | None = None,
    release: str = "mlexp",
    values: Mapping[str, Any] | None = None,
) -> Iterator[Release]:
    """The chart installed with `namespaces` allowed (in a fresh release namespace unless one
    is given); uninstalled and the namespaces deleted (without waiting) afterwards."""
    namespace = namespace or f"mlexp-{uuid.uuid4().hex[:8]}"
    installed = install(
        cluster, helm, release=release, namespace=namespace, namespaces=namespaces, values=values
    )
    try:
        yield installed
    finally:
        with contextlib.suppress(HelmError):
            uninstall(cluster, helm, installed)
        kubectl(cluster, "delete", "namespace", "--wait=false", "--ignore-not-found",
                namespace, *namespaces)  # fmt: skip
