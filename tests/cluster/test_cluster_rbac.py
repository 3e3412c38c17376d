"""RBAC on the test cluster: a Role bound to a ServiceAccount allows exactly what it lists.

Covers authorization (SubjectAccessReview as the admin) and authentication with a
ServiceAccount token the API server signed (SelfSubjectAccessReview and a real request as the
ServiceAccount), so the cluster's PKI and service-account keys are exercised too.
"""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support.cluster import Cluster

SA = "runner"


@pytest.fixture
def bound_service_account(k8s_api: client.ApiClient, core: client.CoreV1Api, namespace: str) -> str:
    """ServiceAccount `runner` may get/list/watch pods and create pods/exec in `namespace`."""
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": SA}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "pod-reader"},
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]},
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "runner-reads-pods"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "pod-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": namespace}],
        },
    )
    return f"system:serviceaccount:{namespace}:{SA}"


def _allowed(
    k8s_api: client.ApiClient, user: str, verb: str, resource: str, namespace: str
) -> bool:
    review = client.AuthorizationV1Api(k8s_api).create_subject_access_review(
        {
            "spec": {
                "user": user,
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                "resourceAttributes": {"namespace": namespace, "verb": verb, "resource": resource},
            }
        }
    )
    return bool(review.status.allowed)


def test_role_binding_allows_listed_verbs_and_denies_the_rest(
    k8s_api: client.ApiClient, bound_service_account: str, namespace: str
) -> None:
    user = bound_service_account
    assert _allowed(k8s_api, user, "list", "pods", namespace)
    assert _allowed(k8s_api, user, "watch", "pods", namespace)
    assert not _allowed(k8s_api, user, "delete", "pods", namespace)
    assert not _allowed(k8s_api, user, "get", "secrets", namespace)
    assert not _allowed(k8s_api, user, "list", "pods", "kube-system")


def test_service_account_token_authenticates_with_its_own_permissions(
    k8s_cluster: Cluster, core: client.CoreV1Api, bound_service_account: str, namespace: str
) -> None:
    token = core.create_namespaced_service_account_token(
        SA, namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token
    configuration = client.Configuration()
    configuration.host = k8s_cluster.api_url
    configuration.ssl_ca_cert = str(k8s_cluster.state_dir / "pki" / "ca.crt")
    configuration.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(configuration) as as_runner:
        review = client.AuthorizationV1Api(as_runner).create_self_subject_access_review(
            {
                "spec": {
                    "resourceAttributes": {
                        "namespace": namespace,
                        "verb": "list",
                        "resource": "pods",
                    }
                }
            }
        )
        assert review.status.allowed
        assert client.CoreV1Api(as_runner).list_namespaced_pod(namespace).items == []
        with pytest.raises(ApiException) as denied:
            client.CoreV1Api(as_runner).list_namespaced_secret(namespace)
    assert denied.value.status == 403
    assert bound_service_account in denied.value.body
