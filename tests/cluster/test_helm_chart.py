"""The Helm chart (deploy/helm/mlexp-ctrl): lint, render, install, and its RBAC, both ways.

Covers: `helm lint --strict` and `helm template` with the default values and a
multi-namespace values file (tests/cluster/helm-values/); the rendered objects (kinds,
Recreate, the pod's securityContext, a Role + RoleBinding per listed namespace and nothing
cluster-wide, the k8s-config's allowed list equal to the values list); the rendered
server.yaml, k8s-config.yaml and tokens.yaml read by the service's own loaders; the values
schema refusing bad values; a server-side dry run and a real install into the test cluster;
and the installed ServiceAccount's rights as a matrix of SubjectAccessReviews (resource x verb
x namespace), checked cell by cell against what the service's code uses -- everything it needs
allowed where it may act, everything else denied -- plus kubectl acting as that account.
"""

from __future__ import annotations

import base64
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from controller.adapters.kube import KubeApi
from controller.domain.errors import ExternalError
from controller.domain.k8sconfig import load_k8s_config
from controller.services.auth import TokenRegistry
from controller.settings import Settings
from tests.support.cluster import Cluster, ClusterError
from tests.support.helm import (
    CHART,
    HelmError,
    Release,
    ensure_namespaces,
    helm_binary,
    installed_chart,
    kubectl,
    objects,
    render,
    run,
    service_account_kubeconfig,
)
from tests.support.prereqs import require
from tests.support.waiting import wait_for

MULTI = Path(__file__).resolve().parent / "helm-values" / "multi-namespace.yaml"

VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
ABBREVIATED = {"deletecollection": "delcol"}
# What the service's code does in a namespace it may use (see the comments in
# templates/rbac.yaml for which code makes each call). Written here independently of the
# chart: the chart must grant exactly this.
NEEDED: dict[str, frozenset[str]] = {
    "batch/jobs": frozenset({"create", "get", "list", "watch", "patch", "delete"}),
    "apps/statefulsets": frozenset({"create", "get", "patch", "delete"}),
    "apps/deployments": frozenset({"create", "get", "patch", "delete"}),
    "pods": frozenset({"list", "watch", "delete"}),
    "pods/log": frozenset({"get"}),
    "pods/exec": frozenset({"get", "create"}),
    "secrets": frozenset({"create", "patch"}),
    "configmaps": frozenset({"create"}),
    "services": frozenset({"create", "patch", "list", "delete"}),
    "persistentvolumeclaims": frozenset({"create", "patch", "list", "delete"}),
}
# Namespaced resources nothing in the service touches.
NOT_NEEDED = (
    "events",
    "pods/attach",
    "pods/portforward",
    "serviceaccounts",
    "serviceaccounts/token",
    "coordination.k8s.io/leases",
    "rbac.authorization.k8s.io/roles",
    "rbac.authorization.k8s.io/rolebindings",
    "apps/daemonsets",
    "apps/replicasets",
    "batch/cronjobs",
)
CLUSTER_SCOPED = (
    "nodes",
    "namespaces",
    "persistentvolumes",
    "rbac.authorization.k8s.io/clusterroles",
    "rbac.authorization.k8s.io/clusterrolebindings",
    "apiextensions.k8s.io/customresourcedefinitions",
    "storage.k8s.io/storageclasses",
)
NAMESPACED = (*NEEDED, *NOT_NEEDED)
PERSISTENCE = {"enabled": True, "size": "1Gi", "accessModes": ["ReadWriteOnce"]}


@pytest.fixture(scope="module")
def helm() -> Path:
    try:
        return helm_binary()
    except ClusterError as exc:
        require(False, f"helm unavailable: {exc}")
        raise


def _kinds(objs: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objs)


def _one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}s"
    return found[0]


def _config(objs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    loaded = yaml.safe_load(_one(objs, "ConfigMap")["data"][key])
    assert isinstance(loaded, dict)
    return loaded


# --- lint and render ----------------------------------------------------------------------


@pytest.mark.parametrize("values_files", [(), (MULTI,)], ids=["default", "multi-namespace"])
def test_helm_lint_is_clean(helm: Path, values_files: tuple[Path, ...]) -> None:
    argv: list[str | Path] = [helm, "lint", "--strict", CHART]
    for path in values_files:
        argv += ["--values", path]
    out = run(argv)
    assert "1 chart(s) linted, 0 chart(s) failed" in out


def test_default_values_render_one_locked_down_replica(helm: Path) -> None:
    objs = objects(render(helm, release="mlexp", namespace="mlexp-system"))

    assert _kinds(objs) == [
        "ConfigMap", "Deployment", "PersistentVolumeClaim", "Role", "RoleBinding", "Secret",
        "Service", "ServiceAccount",
    ]  # fmt: skip
    assert {o["metadata"]["namespace"] for o in objs} == {"mlexp-system"}
    deployment = _one(objs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (container,) = pod["containers"]
    assert container["image"] == "mlexp/mlexp-ctrl:0.1.0"  # the appVersion
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"name": "MLEXP_CONFIG_FILE", "value": "/etc/mlexp/config/server.yaml"} in container[
        "env"
    ]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert set(mounts) == {"/etc/mlexp/config", "/etc/mlexp/tokens", "/data", "/tmp"}
    assert mounts["/etc/mlexp/tokens"]["readOnly"] is True
    assert _one(objs, "ServiceAccount")["automountServiceAccountToken"] is False
    service = _one(objs, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"][0]["port"] == 8080
    # No namespace listed: the service may act nowhere, and only the Lease Role exists.
    assert _config(objs, "k8s-config.yaml")["namespaces"]["allowed"] == []
    role = _one(objs, "Role")
    assert role["metadata"]["name"] == "mlexp-mlexp-ctrl-lease"
    assert role["metadata"]["namespace"] == "mlexp-system"
    # The generated admin token is the one in tokens.yaml.
    data = _one(objs, "Secret")["data"]
    token = base64.b64decode(data["admin-token"]).decode()
    tokens = yaml.safe_load(base64.b64decode(data["tokens.yaml"]))
    assert tokens == {"tokens": [{"token": token, "name": "admin", "admin": True}]}
    assert len(token) >= 32


def test_multi_namespace_values_render_a_role_per_namespace_and_nothing_cluster_wide(
    helm: Path,
) -> None:
    listed = yaml.safe_load(MULTI.read_text())["namespaces"]
    objs = objects(render(helm, release="mlexp", namespace="mlexp-system", values_files=[MULTI]))

    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = {o["metadata"]["namespace"]: o for o in objs if o["kind"] == "Role"}
    bindings = {o["metadata"]["namespace"]: o for o in objs if o["kind"] == "RoleBinding"}
    assert sorted(roles) == sorted(bindings) == sorted([*listed, "mlexp-system"])
    for namespace in listed:
        assert roles[namespace]["rules"] == roles[listed[0]]["rules"]
        assert bindings[namespace]["roleRef"]["name"] == roles[namespace]["metadata"]["name"]
        assert bindings[namespace]["subjects"] == [
            {"kind": "ServiceAccount", "name": "mlexp-mlexp-ctrl", "namespace": "mlexp-system"}
        ]
    assert roles["mlexp-system"]["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["mlexp-mlexp-ctrl"],
            "verbs": ["get", "update"],
        },
    ]
    k8s = _config(objs, "k8s-config.yaml")
    assert k8s["namespaces"]["allowed"] == listed
    assert k8s["in_cluster"] is True
    assert k8s["lease"] == {
        "namespace": "mlexp-system",
        "name": "mlexp-mlexp-ctrl",
        "duration_seconds": 20,
    }
    assert "service_account_dir" not in k8s  # the standard mount: left to the default
    assert k8s["defaults"]["image"] == "registry.example.com/ml/wine-workload:1.0"
    server = _config(objs, "server.yaml")
    assert server["max_concurrent_runs"] == 4
    assert "mlexp.example.com" in server["allowed_hosts"]
    assert "mlexp-mlexp-ctrl.mlexp-system.svc" in server["allowed_hosts"]
    assert _one(objs, "PersistentVolumeClaim")["spec"]["storageClassName"] == "fast"
    policy = _one(objs, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress left open
    assert not [o for o in objs if o["kind"] == "ServiceMonitor"]


def test_rendered_settings_are_accepted_by_the_services_own_loaders(
    helm: Path, tmp_path: Path
) -> None:
    objs = objects(render(helm, values_files=[MULTI]))
    data = _one(objs, "ConfigMap")["data"]
    (tmp_path / "server.yaml").write_text(data["server.yaml"])
    (tmp_path / "k8s-config.yaml").write_text(data["k8s-config.yaml"])
    (tmp_path / "tokens.yaml").write_bytes(
        base64.b64decode(_one(objs, "Secret")["data"]["tokens.yaml"])
    )

    settings = Settings(config_file=tmp_path / "server.yaml")
    k8s = load_k8s_config(tmp_path / "k8s-config.yaml")
    registry = TokenRegistry.from_file(tmp_path / "tokens.yaml")

    assert settings.data_dir == Path("/data")
    assert settings.k8s_config_file == Path("/etc/mlexp/config/k8s-config.yaml")
    assert settings.tokens_file == Path("/etc/mlexp/tokens/tokens.yaml")
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)  # noqa: S104 (in a pod)
    assert settings.metrics.public is True
    assert k8s.in_cluster
    assert k8s.kubeconfig is None
    assert k8s.namespaces.allowed == ("ml-team-a", "ml-team-b")
    assert k8s.lease is not None
    assert k8s.lease.duration_seconds == 20
    assert k8s.jobs.backoff_limit == 1
    assert sorted(registry.principals) == ["ci-bot", "platform-admin"]


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"namespaces": ["kube-system"]}, "namespaces"),
        ({"namespaces": ["Team_A"]}, "namespaces"),
        ({"namespaces": ["ml-a", "ml-a"]}, "namespaces"),
        ({"replicas": 2}, "replicas"),
        ({"server": {"host": "127.0.0.1"}}, "host"),
        ({"kubernetes": {"in_cluster": False}}, "in_cluster"),
        ({"auth": {"existingSecret": "", "tokens": [{"token": "short", "name": "x"}]}}, "token"),
        ({"persistence": {**PERSISTENCE, "size": "lots"}}, "size"),
    ],
    ids=["kube-ns", "not-dns1123", "duplicate", "unknown-key", "chart-owned-setting",
         "connection", "short-token", "size"],
)  # fmt: skip
def test_values_schema_refuses_bad_values(
    helm: Path, values: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(HelmError) as refused:
        render(helm, values)
    assert "values don't meet the specifications of the schema" in str(refused.value)
    assert complaint in str(refused.value)


def test_service_monitor_only_when_enabled_and_with_a_token(helm: Path) -> None:
    objs = objects(render(helm, {"serviceMonitor": {"enabled": True}}))
    monitor = _one(objs, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["credentials"] == {
        "name": "mlexp-mlexp-ctrl-tokens",
        "key": "admin-token",
    }
    assert "ServiceMonitor" not in _kinds(objects(render(helm)))
    # Tokens of the user's own and no token Secret for Prometheus: refused, with the fix.
    with pytest.raises(HelmError, match=r"serviceMonitor\.tokenSecret\.name"):
        render(
            helm,
            {
                "serviceMonitor": {"enabled": True},
                "auth": {"existingSecret": "mine", "tokens": []},
            },
        )


CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBdGVzdA==\n-----END CERTIFICATE-----\n"


def test_host_network_port_env_and_private_cas_render_into_the_pod_and_settings(
    helm: Path, tmp_path: Path
) -> None:
    values = {
        "hostNetwork": True,
        "containerPort": 18080,
        "extraEnv": [
            {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
            {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"},
        ],
        "gitCA": CA_PEM,
        "s3CA": CA_PEM + CA_PEM,
        "nodeSelector": {"mlexp.io/real-node": "true"},
        "tolerations": [{"key": "mlexp.io/real-node", "operator": "Exists"}],
        "server": {"egress": {"allowed_networks": ["127.0.0.0/8"]}},
        "persistence": {**PERSISTENCE, "enabled": False},
    }
    objs = objects(render(helm, values))

    assert "PersistentVolumeClaim" not in _kinds(objs)
    pod = _one(objs, "Deployment")["spec"]["template"]["spec"]
    assert (pod["hostNetwork"], pod["dnsPolicy"]) == (True, "ClusterFirstWithHostNet")
    assert pod["nodeSelector"] == {"mlexp.io/real-node": "true"}
    assert pod["tolerations"] == values["tolerations"]
    (container,) = pod["containers"]
    assert container["ports"][0]["containerPort"] == 18080
    assert container["env"] == [
        {"name": "MLEXP_CONFIG_FILE", "value": "/etc/mlexp/config/server.yaml"},
        {"name": "MLEXP_PORT", "value": "18080"},  # the image's own MLEXP_PORT would win
        {"name": "MLEXP_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        *values["extraEnv"],
    ]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/mlexp/ca"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}
    assert volumes[mounts["/etc/mlexp/ca"]["name"]]["configMap"]["name"] == "mlexp-mlexp-ctrl-ca"
    (ca_map,) = [o for o in objs if o["metadata"]["name"] == "mlexp-mlexp-ctrl-ca"]
    assert ca_map["kind"] == "ConfigMap"
    assert ca_map["metadata"]["namespace"] == "mlexp-system"
    assert ca_map["data"] == {"git-ca.pem": CA_PEM, "s3-ca.pem": CA_PEM + CA_PEM}

    # The service's own loader: the port, the mounted CA paths and the egress pass through.
    (config_map,) = [
        o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "mlexp-mlexp-ctrl"
    ]
    (tmp_path / "server.yaml").write_text(config_map["data"]["server.yaml"])
    settings = Settings(config_file=tmp_path / "server.yaml")
    assert settings.port == 18080
    assert settings.git_ca_bundle == Path("/etc/mlexp/ca/git-ca.pem")
    assert settings.storage.ca_bundle == Path("/etc/mlexp/ca/s3-ca.pem")
    assert settings.egress.allowed_networks == ["127.0.0.0/8"]


def test_defaults_have_no_host_network_no_ca_and_port_8080(helm: Path) -> None:
    objs = objects(render(helm))
    pod = _one(objs, "Deployment")["spec"]["template"]["spec"]
    assert "hostNetwork" not in pod
    assert "dnsPolicy" not in pod
    assert pod["containers"][0]["ports"][0]["containerPort"] == 8080
    server = _config(objs, "server.yaml")
    assert "git_ca_bundle" not in server
    assert "storage" not in server
    assert [o["metadata"]["name"] for o in objs if o["kind"] == "ConfigMap"] == ["mlexp-mlexp-ctrl"]


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"gitCA": "not a certificate"}, "gitCA"),
        ({"s3CA": "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n"}, "s3CA"),
        ({"containerPort": 70000}, "containerPort"),
        ({"hostNetwork": "yes"}, "hostNetwork"),
        ({"extraEnv": [{"value": "x"}]}, "extraEnv"),
        ({"extraEnv": [{"name": "A", "valu": "typo"}]}, "extraEnv"),
    ],
    ids=["git-ca-not-pem", "s3-ca-a-key", "port", "host-network", "env-without-name",
         "env-typo"],
)  # fmt: skip
def test_values_schema_refuses_bad_new_values(
    helm: Path, values: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(HelmError) as refused:
        render(helm, values)
    assert "values don't meet the specifications of the schema" in str(refused.value)
    assert complaint in str(refused.value)


# --- on the cluster -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def release(k8s_cluster: Cluster, helm: Path) -> Iterator[Release]:
    """The chart installed for real, allowed two fresh namespaces; a third one exists unlisted."""
    prefix = uuid.uuid4().hex[:6]
    allowed = (f"{prefix}-team-a", f"{prefix}-team-b")
    ensure_namespaces(k8s_cluster, [f"{prefix}-team-c"])
    with installed_chart(
        k8s_cluster, helm, namespaces=allowed, namespace=f"{prefix}-mlexp"
    ) as installed:
        yield installed
    kubectl(k8s_cluster, "delete", "namespace", "--wait=false", f"{prefix}-team-c")


def test_rendered_objects_pass_a_server_side_dry_run(
    k8s_cluster: Cluster, helm: Path, release: Release
) -> None:
    # The namespaces exist (the release fixture made them); nothing here is created.
    manifests = render(
        helm,
        {"namespaces": list(release.namespaces), "networkPolicy": {"enabled": True}},
        release="dryrun",
        namespace=release.namespace,
    )
    out = kubectl(
        k8s_cluster, "apply", "--server-side", "--dry-run=server", "-f", "-", stdin=manifests
    )
    assert out.count("serverside-applied (server dry run)") == len(objects(manifests))
    leftovers = kubectl(k8s_cluster, "get", "deploy,roles", "-A", "-o", "name", "-l",
                        "app.kubernetes.io/instance=dryrun")  # fmt: skip
    assert leftovers.strip() == ""


def test_install_creates_the_objects_in_the_cluster(k8s_cluster: Cluster, release: Release) -> None:
    names = kubectl(
        k8s_cluster, "get", "deploy,svc,sa,cm,secret,pvc,role,rolebinding", "-n", release.namespace,
        "-o", "name", "-l", f"app.kubernetes.io/instance={release.name}",
    ).split()  # fmt: skip
    full = release.fullname
    assert sorted(names) == sorted([
        f"deployment.apps/{full}", f"service/{full}", f"serviceaccount/{full}",
        f"configmap/{full}", f"secret/{full}-tokens", f"persistentvolumeclaim/{full}-data",
        f"role.rbac.authorization.k8s.io/{full}-lease",
        f"rolebinding.rbac.authorization.k8s.io/{full}-lease",
    ])  # fmt: skip
    for namespace in release.namespaces:
        rbac = kubectl(k8s_cluster, "get", "role,rolebinding", "-n", namespace, "-o", "name")
        assert sorted(rbac.split()) == [
            f"role.rbac.authorization.k8s.io/{full}",
            f"rolebinding.rbac.authorization.k8s.io/{full}",
        ]
    cluster_wide = kubectl(k8s_cluster, "get", "clusterrole,clusterrolebinding", "-o", "name",
                           "-l", f"app.kubernetes.io/instance={release.name}")  # fmt: skip
    assert cluster_wide.strip() == ""
    # The pod is scheduled once its claim binds; the test cluster has no provisioner, so the
    # Deployment exists with its pod pending (kwok nodes would "run" it otherwise).
    deployment = kubectl(k8s_cluster, "get", "deploy", full, "-n", release.namespace, "-o",
                         "jsonpath={.spec.strategy.type}")  # fmt: skip
    assert deployment == "Recreate"


def _split(label: str) -> tuple[str, str, str]:
    """ "batch/jobs" -> ("batch", "jobs", ""); "pods/exec" -> ("", "pods", "exec")."""
    parts = label.split("/")
    group = parts.pop(0) if parts[0] in ("batch", "apps") or "." in parts[0] else ""
    return group, parts[0], parts[1] if len(parts) > 1 else ""


def _can(
    authz: client.AuthorizationV1Api,
    release: Release,
    verb: str,
    resource: str,
    namespace: str,
    name: str = "",
) -> bool:
    """A SubjectAccessReview (as the admin) for the release's ServiceAccount."""
    group, plain, sub = _split(resource)
    attributes = {"verb": verb, "group": group, "resource": plain, "subresource": sub}
    if namespace:
        attributes["namespace"] = namespace
    if name:
        attributes["name"] = name
    review = authz.create_subject_access_review(
        {
            "spec": {
                "user": release.user,
                "groups": list(release.groups),
                "resourceAttributes": attributes,
            }
        }
    )
    return bool(review.status.allowed)


def _matrix(
    authz: client.AuthorizationV1Api,
    release: Release,
    namespaces: list[str],
    resources: tuple[str, ...],
) -> dict[tuple[str, str, str], bool]:
    """(namespace, resource, verb) -> allowed, one SubjectAccessReview each (a few at once)."""
    cells = [(ns, res, verb) for ns in namespaces for res in resources for verb in VERBS]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = pool.map(lambda cell: _can(authz, release, cell[2], cell[1], cell[0]), cells)
        return dict(zip(cells, answers, strict=True))


def _print_matrix(title: str, cells: dict[tuple[str, str, str], bool]) -> None:
    """A table per namespace (resource x verb: yes / -); a namespace where every cell is
    "no" is one line."""
    print(f"\n== {title}")
    width = max(len(res) for _, res, _ in cells) + 2
    header = " ".join(f"{ABBREVIATED.get(verb, verb):>6}" for verb in VERBS)
    for namespace in dict.fromkeys(ns for ns, _, _ in cells):
        mine = {(res, verb): ok for (ns, res, verb), ok in cells.items() if ns == namespace}
        where = namespace or "(cluster-scoped)"
        if not any(mine.values()):
            resources = len({res for res, _ in mine})
            print(f"{where}: all {len(mine)} cells ({resources} resources x {len(VERBS)} verbs) no")
            continue
        print(f"{where}:\n{'':<{width}}{header}")
        for resource in dict.fromkeys(res for res, _ in mine):
            marks = " ".join(f"{'yes' if mine[(resource, v)] else '-':>6}" for v in VERBS)
            print(f"{resource:<{width}}{marks}")


def test_rbac_allows_exactly_what_the_service_uses_where_it_may_act(
    k8s_api: client.ApiClient, release: Release
) -> None:
    authz = client.AuthorizationV1Api(k8s_api)
    unlisted = [release.namespaces[0].replace("-team-a", "-team-c"), "default", "kube-system"]
    namespaces = [*release.namespaces, release.namespace, *unlisted]
    cells = _matrix(authz, release, namespaces, NAMESPACED)
    cluster_cells = _matrix(authz, release, [""], CLUSTER_SCOPED)
    lease = f"{release.fullname}"
    lease_cells = {
        (release.namespace, f"leases name={name or '(any)'}", verb): _can(
            authz, release, verb, "coordination.k8s.io/leases", release.namespace, name
        )
        for name in (lease, "someone-elses", "")
        for verb in VERBS
    }
    _print_matrix(f"RBAC of {release.user} (SubjectAccessReviews)", cells)
    _print_matrix("cluster-scoped resources", cluster_cells)
    _print_matrix("the dispatch Lease, by name", lease_cells)

    expected = {
        (namespace, resource, verb): namespace in release.namespaces
        and verb in NEEDED.get(resource, frozenset())
        for namespace, resource, verb in cells
    }
    # Creating a Lease (of any name: RBAC sees none on create) in its own namespace.
    expected[(release.namespace, "coordination.k8s.io/leases", "create")] = True
    wrong = sorted(cell for cell, allowed in cells.items() if allowed != expected[cell])
    assert wrong == []
    assert not any(cluster_cells.values())
    allowed_lease = sorted((res, verb) for (_, res, verb), ok in lease_cells.items() if ok)
    assert allowed_lease == [
        ("leases name=(any)", "create"),
        (f"leases name={lease}", "create"),
        (f"leases name={lease}", "get"),
        (f"leases name={lease}", "update"),
        ("leases name=someone-elses", "create"),  # a create names no object to RBAC
    ]


def test_kubectl_as_the_service_account_agrees(k8s_cluster: Cluster, release: Release) -> None:
    """`kubectl auth can-i --as` (impersonation, the other way to ask) gives the same answers."""
    team_a, team_b = release.namespaces
    team_c = team_a.replace("-team-a", "-team-c")
    asks = [
        (("create", "pods", "--subresource=exec", "-n", team_a), True),
        (("get", "pods", "--subresource=exec", "-n", team_a), True),
        (("get", "pods", "--subresource=log", "-n", team_b), True),
        (("create", "pods", "--subresource=attach", "-n", team_a), False),
        (("watch", "jobs.batch", "-n", team_b), True),
        (("patch", "secrets", "-n", team_a), True),
        (("create", "leases.coordination.k8s.io", "-n", release.namespace), True),
        (
            ("update", f"leases.coordination.k8s.io/{release.fullname}", "-n", release.namespace),
            True,
        ),
        (("update", "leases.coordination.k8s.io/other", "-n", release.namespace), False),
        (("get", "pods", "-n", team_a), False),
        (("get", "secrets", "-n", team_a), False),
        (("get", "secrets", "-n", "kube-system"), False),
        (("get", "secrets", "-n", release.namespace), False),
        (("create", "jobs.batch", "-n", team_c), False),
        (("list", "pods", "-n", "default"), False),
        (("list", "nodes"), False),
        (("get", "clusterroles"), False),
        (("create", "customresourcedefinitions.apiextensions.k8s.io"), False),
        (("list", "pods", "--all-namespaces"), False),
    ]
    for args, expected in asks:
        argv = [str(k8s_cluster.kubectl), "--kubeconfig", str(k8s_cluster.kubeconfig), "auth",
                "can-i", *args, "--as", release.user]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        print(f"kubectl auth can-i {' '.join(args)} --as {release.user} -> {done.stdout.strip()}")
        assert (done.stdout.strip() == "yes") is expected, args


def test_the_services_own_adapter_works_with_only_the_charts_rights(
    k8s_cluster: Cluster, k8s_api: client.ApiClient, release: Release, tmp_path: Path
) -> None:
    """controller.adapters.kube.KubeApi with a token of the chart's ServiceAccount (what the pod
    gets): a server-side apply that creates a Secret (patch alone would not do), a websocket
    exec into a pod (get + create on pods/exec), listing pods; refused in a namespace the chart
    does not list, and refused reading back the Secret it wrote."""
    team_a = release.namespaces[0]
    team_c = team_a.replace("-team-a", "-team-c")
    kube = KubeApi(kubeconfig=service_account_kubeconfig(k8s_cluster, release, tmp_path / "sa"))

    def secret(namespace: str) -> dict[str, Any]:
        meta = {"name": "mlexp-creds-probe", "namespace": namespace}
        return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "stringData": {"K": "v"}}

    try:
        created = kube.apply(secret(team_a))
        assert created["metadata"]["name"] == "mlexp-creds-probe"
        with pytest.raises(ExternalError, match="403"):
            kube.apply(secret(team_c))
        with pytest.raises(ExternalError, match="403"):  # written, never read back
            kube.get("Secret", team_a, "mlexp-creds-probe")

        core = client.CoreV1Api(k8s_api)
        container = {"name": "main", "image": "registry.invalid/probe:1"}
        core.create_namespaced_pod(
            team_a, {"metadata": {"name": "probe"}, "spec": {"containers": [container]}}
        )
        wait_for(
            lambda: core.read_namespaced_pod("probe", team_a).status.phase == "Running",
            30,
            what="the probe pod to run on a kwok node",
        )
        pods, _ = kube.select("Pod", team_a, "")
        assert [p["metadata"]["name"] for p in pods] == ["probe"]
        result = kube.exec(team_a, "probe", ["echo", "exec-ok"])
        assert (result.stdout, result.exit_code) == ("exec-ok\n", 0)
        with pytest.raises(ExternalError, match="403"):
            kube.select("Pod", team_c, "")
    finally:
        kube.close()
