"""Manifest builders: golden output, the Kubernetes schema, names, labels, credential hygiene.

Covers: every builder's output for fixed inputs against ``golden/<name>.yaml``
(regenerate with ``MLEXP_UPDATE_GOLDEN=1``; never under ``CI=true``); a round trip
through the official client's models, which drops misspelt keys; DNS-1123 names and
valid label values for any ids; credentials in plain text nowhere, and outside the two
Secrets not even base64-encoded; the Job's failure policy and pod defaults; workload
selectors that select their own pods and nothing of another kind.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from kubernetes.client import ApiClient

from controller.domain.bundle import RepoSpec
from controller.domain.errors import InvalidInput
from controller.domain.k8sconfig import EXEC_WORK_ROOT, JobSettings
from controller.domain.models import Experiment, Run, RunState
from controller.domain.naming import is_dns1123_label
from controller.domain.safeyaml import dump_yaml
from controller.domain.workloads import Resources, Toleration, WorkloadSpec, is_label_value
from controller.planning.manifests import (
    FIELD_MANAGER,
    LABEL_RUN,
    Manifest,
    credentials_secret,
    credentials_secret_name,
    label_selector,
    labels,
    owner_reference,
    pull_secret_name,
    registry_pull_secret,
    run_configmap_name,
    run_job,
    run_job_name,
    runner_configmap,
    workload,
    workload_selector,
)
from controller.planning.runs import credential_env, runner_spec

GOLDEN = Path(__file__).parent / "golden"
EXP = "exp-0123456789"
RUN = "run-0123456789"
NS = "ml-a"
IMAGE = "registry.example.com/ml/wine-workload:1.0"
DEFAULT_RESOURCES = Resources.model_validate(
    {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
)
MODELS = {
    "Secret": "V1Secret",
    "ConfigMap": "V1ConfigMap",
    "Job": "V1Job",
    "StatefulSet": "V1StatefulSet",
    "Deployment": "V1Deployment",
    "Service": "V1Service",
    "PersistentVolumeClaim": "V1PersistentVolumeClaim",
}

run_ids = st.from_regex(r"\Arun-[0-9a-f]{10}\Z", fullmatch=True)
experiment_ids = st.from_regex(r"\Aexp-[0-9a-f]{10}\Z", fullmatch=True)
credentials = st.from_regex(r"\A[A-Za-z0-9+/=_.~!#%-]{16,40}\Z", fullmatch=True)


# -- fixed inputs --------------------------------------------------------------


def spec_of(**fields: object) -> WorkloadSpec:
    return WorkloadSpec.model_validate({"name": "trainer", "namespace": NS, **fields})


STATEFULSET = spec_of(
    kind="StatefulSet",
    experiment_id=EXP,
    replicas=2,
    env={"LOG_LEVEL": "debug", "DATA_DIR": "/data"},
    resources={"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi", "gpu": 1}},
    node_selector={"accelerator": "nvidia-a100", "disk": "ssd"},
    tolerations=[
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "value": "ml", "effect": "NoExecute", "toleration_seconds": 60},
    ],
    dvc_cache={"size": "20Gi", "storage_class": "fast-ssd"},
    service_account="ml-runner",
    labels={"team": "vision"},
    annotations={"example.com/owner": "vision"},
)
DEPLOYMENT = spec_of(kind="Deployment", name="pool", experiment_id=EXP, dvc_cache={"size": "10Gi"})
JOB = spec_of(
    kind="Job",
    name="prep",
    replicas=3,
    command=["python3", "-m", "prep"],
    active_deadline_seconds=600,
    resources={"limits": {"cpu": "1"}},
)


def fixed_run_job(**overrides: object) -> Manifest:
    arguments: dict[str, object] = {
        "run_id": RUN,
        "experiment_id": EXP,
        "namespace": NS,
        "image": IMAGE,
        "image_pull_policy": "IfNotPresent",
        "secret_name": credentials_secret_name(EXP),
        "pull_secret_name": pull_secret_name(EXP),
        "configmap_name": run_configmap_name(RUN),
        "resources": DEFAULT_RESOURCES,
        "service_account": None,
        "backoff_limit": 2,
        "active_deadline_seconds": 21600,
        "ttl_seconds_after_finished": 3600,
        "node_selector": {"pool": "ml"},
        "tolerations": [Toleration(key="dedicated", value="ml", effect="NoSchedule")],
    }
    arguments.update(overrides)
    return run_job(**arguments)  # type: ignore[arg-type]


def fixed_configmap(**overrides: object) -> Manifest:
    arguments: dict[str, object] = {
        "run_id": RUN,
        "experiment_id": EXP,
        "namespace": NS,
        "runner_source": "#!/usr/bin/env python3\nprint('the runner')\n",
        "spec": {"run_id": RUN, "branch": f"runs/{RUN}", "files": {}, "base_commit": "a" * 40},
    }
    arguments.update(overrides)
    return runner_configmap(**arguments)  # type: ignore[arg-type]


def build_workload(spec: WorkloadSpec, **overrides: object) -> list[Manifest]:
    arguments: dict[str, object] = {
        "image": spec.image or IMAGE,
        "image_pull_policy": "IfNotPresent",
        "secret_name": credentials_secret_name(EXP) if spec.experiment_id else None,
        "pull_secret_name": pull_secret_name(EXP) if spec.experiment_id else None,
        "default_resources": DEFAULT_RESOURCES,
    }
    arguments.update(overrides)
    return workload(spec, **arguments)  # type: ignore[arg-type]


GOLDEN_CASES: dict[str, list[Manifest]] = {
    "credentials_secret": [
        credentials_secret(
            experiment_id=EXP,
            namespace=NS,
            env={
                "MLEXP_GIT_USERNAME": "mlexp-bot",
                "MLEXP_GIT_TOKEN": "tok-0123456789abcdef",
                "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
                "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "AWS_DEFAULT_REGION": "us-east-1",
            },
        )
    ],
    "registry_pull_secret": [
        registry_pull_secret(
            experiment_id=EXP,
            namespace=NS,
            server="registry.example.com",
            username="robot$ml",
            password="pull-password-0123",
        )
    ],
    "runner_configmap": [fixed_configmap()],
    "run_job": [fixed_run_job()],
    "workload_statefulset": build_workload(STATEFULSET),
    "workload_deployment": build_workload(DEPLOYMENT),
    "workload_job": build_workload(JOB, jobs=JobSettings(ttl_seconds_after_finished=None)),
}


# -- golden files --------------------------------------------------------------


def render(documents: Sequence[Mapping[str, object]]) -> str:
    header = "# Generated by tests/unit/test_manifests.py; MLEXP_UPDATE_GOLDEN=1 regenerates.\n"
    return header + "---\n".join(dump_yaml(dict(doc)) for doc in documents)


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_golden(name: str) -> None:
    text = render(GOLDEN_CASES[name])
    path = GOLDEN / f"{name}.yaml"
    updating = os.environ.get("MLEXP_UPDATE_GOLDEN") == "1"
    if updating and os.environ.get("CI") != "true":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        return
    hint = "if the change is intended, rerun with MLEXP_UPDATE_GOLDEN=1 and review the diff"
    if not path.exists():
        pytest.fail(f"{path} is missing; {hint}")
    assert text == path.read_text(), f"{path.name} differs from the builder's output; {hint}"


# -- the Kubernetes schema -----------------------------------------------------


def every_manifest() -> list[Manifest]:
    documents = [doc for docs in GOLDEN_CASES.values() for doc in docs]
    documents += build_workload(spec_of(kind="Deployment"))  # no PVC, no secrets
    return [*documents, fixed_run_job(service_account="runner", ttl_seconds_after_finished=None)]


@pytest.mark.parametrize(
    "manifest",
    every_manifest(),
    ids=lambda m: f"{tree(m)['kind']}-{tree(m)['metadata']['name']}",
)
def test_round_trip_through_the_client_models_loses_nothing(manifest: Manifest) -> None:
    # The client drops keys its models do not know, so a misspelt field shows up here.
    api: Any = ApiClient()
    model = api._ApiClient__deserialize(manifest, MODELS[str(manifest["kind"])])
    assert api.sanitize_for_serialization(model) == manifest


def test_every_object_is_labelled_as_ours() -> None:
    for manifest in every_manifest():
        metadata = tree(manifest)["metadata"]
        assert metadata["labels"]["app.kubernetes.io/managed-by"] == FIELD_MANAGER
        assert metadata["namespace"] == NS
        assert all(is_label_value(v) for v in metadata["labels"].values())


# -- names ---------------------------------------------------------------------


@given(run_ids, experiment_ids)
def test_generated_names_and_label_values_are_valid(run_id: str, experiment_id: str) -> None:
    names = [
        credentials_secret_name(experiment_id),
        pull_secret_name(experiment_id),
        run_job_name(run_id),
        run_configmap_name(run_id),
    ]
    assert all(is_dns1123_label(name) for name in names)
    assert len(set(names)) == 4
    job = tree(fixed_run_job(run_id=run_id, experiment_id=experiment_id))
    configmap = tree(fixed_configmap(run_id=run_id, experiment_id=experiment_id))
    assert job["metadata"]["name"] == run_job_name(run_id)
    assert configmap["metadata"]["name"] == run_configmap_name(run_id)
    for manifest in (job, configmap):
        assert all(is_label_value(v) for v in manifest["metadata"]["labels"].values())


@pytest.mark.parametrize("bad", ["run_0123", "RUN-0123456789", "run-" + "a" * 60])
def test_an_id_that_makes_a_bad_name_is_a_bug(bad: str) -> None:
    with pytest.raises(ValueError, match="DNS-1123"):
        run_job_name(bad)


def test_names_and_selectors() -> None:
    assert run_job_name(RUN) == "mlexp-run-0123456789"
    assert run_configmap_name(RUN) == "mlexp-run-0123456789-runner"
    assert credentials_secret_name(EXP) == "mlexp-cred-exp-0123456789"
    assert pull_secret_name(EXP) == "mlexp-pull-exp-0123456789"
    assert label_selector(labels("run", run_id=RUN)) == (
        "app.kubernetes.io/managed-by=mlexp-ctrl,mlexp.io/component=run,mlexp.io/run-id=" + RUN
    )


# -- credentials ---------------------------------------------------------------


def test_secrets_hold_exactly_the_given_values_base64_encoded() -> None:
    env = {"MLEXP_GIT_TOKEN": "t0k", "AWS_DEFAULT_REGION": "eu-west-1"}
    secret = credentials_secret(experiment_id=EXP, namespace=NS, env=env)
    data = tree(secret)["data"]
    assert list(data) == sorted(env)
    assert {k: base64.b64decode(v).decode() for k, v in data.items()} == env
    assert "stringData" not in secret
    with pytest.raises(ValueError, match="Secret key"):
        credentials_secret(experiment_id=EXP, namespace=NS, env={"BAD KEY": "x"})


def test_pull_secret_is_a_docker_config() -> None:
    secret = registry_pull_secret(
        experiment_id=EXP, namespace=NS, server="r.example.com", username="u", password="p:w"
    )
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    encoded = tree(secret)["data"][".dockerconfigjson"]
    config = json.loads(base64.b64decode(encoded))
    entry = config["auths"]["r.example.com"]
    assert (entry["username"], entry["password"]) == ("u", "p:w")
    assert base64.b64decode(entry["auth"]).decode() == "u:p:w"


def planted_repo(token: str, access_key: str, secret_key: str, password: str) -> RepoSpec:
    return RepoSpec.model_validate(
        {
            "git": {
                "url": "https://git.example.com/ml/wine.git",
                "username": "bot",
                "token": token,
            },
            "dvc": {"url": "s3://ml-artifacts/wine"},
            "storage": {
                "endpoint_url": "https://minio.example.com",
                "access_key_id": access_key,
                "secret_access_key": secret_key,
                "region": "us-east-1",
            },
            "registry": {"server": "registry.example.com", "username": "bot", "password": password},
        }
    )


def everything_for(repo: RepoSpec) -> tuple[list[Manifest], list[Manifest]]:
    """(the two Secrets, every other manifest) as the service would build them for ``repo``."""
    assert repo.registry is not None
    assert repo.registry.password is not None
    secrets = [
        credentials_secret(experiment_id=EXP, namespace=NS, env=credential_env(repo)),
        registry_pull_secret(
            experiment_id=EXP,
            namespace=NS,
            server=repo.registry.server or "",
            username=repo.registry.username or "",
            password=repo.registry.password.get_secret_value(),
        ),
    ]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    experiment = Experiment(
        experiment_id=EXP,
        owner="ci",
        git_url=repo.git.url or "",
        branch="main",
        commit="a" * 40,
        dvc_remote="storage",
        dvc_url=repo.dvc.url or "",
        stages=["train"],
        metrics_files=["metrics.json"],
        params={"train": {"C": 1.0}},
        created_at=now,
    )
    run = Run(
        run_id=RUN,
        experiment_id=EXP,
        owner="ci",
        resource="job",
        namespace=NS,
        params={"train.C": 0.5},
        state=RunState.QUEUED,
        created_at=now,
    )
    others = [
        fixed_configmap(spec=runner_spec(run=run, experiment=experiment)),
        fixed_run_job(),
        *build_workload(STATEFULSET),
        *build_workload(DEPLOYMENT),
    ]
    return secrets, others


@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow])
@given(credentials, credentials, credentials, credentials)
def test_credentials_only_in_the_secrets_and_never_in_plain_text(
    token: str, access_key: str, secret_key: str, password: str
) -> None:
    values = (token, access_key, secret_key, password)
    assume(len(set(values)) == 4)
    baseline = json.dumps(everything_for(planted_repo(*("x" * 16,) * 4)))
    assume(not any(value in baseline for value in values))
    secrets, others = everything_for(planted_repo(*values))
    encoded = [base64.b64encode(value.encode()).decode() for value in values]
    plain_secrets, plain_others = json.dumps(secrets), json.dumps(others)
    for value, b64 in zip(values, encoded, strict=True):
        assert value not in plain_secrets
        assert value not in plain_others
        assert b64 not in plain_others
    data = [base64.b64decode(v).decode() for s in secrets for v in tree(s)["data"].values()]
    assert all(any(value in text for text in data) for value in values)


# -- the run Job ---------------------------------------------------------------


def tree(manifest: Mapping[str, object]) -> Any:
    """The manifest for reading in assertions (a nested, untyped dict)."""
    return cast(Any, manifest)


def pod_of(manifest: Manifest) -> Any:
    return tree(manifest)["spec"]["template"]["spec"]


def test_run_job_takes_credentials_by_reference_and_fails_fast_only_when_hopeless() -> None:
    job = fixed_run_job()
    spec = tree(job)["spec"]
    pod = pod_of(job)
    (container,) = pod["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": credentials_secret_name(EXP)}}]
    assert container["command"] == [
        "python3",
        "/opt/mlexp/runner.py",
        "--spec",
        "/opt/mlexp/spec.json",
        "--workdir",
        "/work",
    ]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod
    assert pod["imagePullSecrets"] == [{"name": pull_secret_name(EXP)}]
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert rules[1]["action"] == "FailJob"
    assert rules[1]["onExitCodes"] == {"containerName": "runner", "operator": "In", "values": [2]}
    assert 1 not in rules[1]["onExitCodes"]["values"]  # a failed step is retried
    assert spec["template"]["metadata"]["labels"][LABEL_RUN] == RUN


def test_run_job_with_a_service_account_and_without_optional_limits() -> None:
    job = fixed_run_job(
        service_account="runner",
        pull_secret_name=None,
        secret_name=None,
        resources=None,
        active_deadline_seconds=None,
        ttl_seconds_after_finished=None,
        node_selector={},
        tolerations=[],
    )
    spec, pod = tree(job)["spec"], pod_of(job)
    assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) == ("runner", True)
    assert "activeDeadlineSeconds" not in spec
    assert "ttlSecondsAfterFinished" not in spec
    for key in ("imagePullSecrets", "nodeSelector", "tolerations"):
        assert key not in pod
    (container,) = pod["containers"]
    assert "envFrom" not in container
    assert container["resources"] == {}


def test_configured_pod_labels_go_on_run_pods_and_never_override_ours() -> None:
    job = tree(fixed_run_job(pod_labels={"mlexp.io/test-drive": "manual", LABEL_RUN: "other"}))
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["mlexp.io/test-drive"] == "manual"
    assert pod_labels[LABEL_RUN] == RUN
    assert "mlexp.io/test-drive" not in job["metadata"]["labels"]


def test_runner_configmap() -> None:
    configmap = fixed_configmap(
        spec={"b": 1, "a": {"d": 2, "c": 3}},
        owner_references=[owner_reference(api_version="batch/v1", kind="Job", name="j", uid="u")],
    )
    data = tree(configmap)["data"]
    assert data["spec.json"] == '{\n  "a": {\n    "c": 3,\n    "d": 2\n  },\n  "b": 1\n}\n'
    assert configmap["immutable"] is True
    assert tree(configmap)["metadata"]["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "u", "controller": True}
    ]
    with pytest.raises(InvalidInput, match="limit of a ConfigMap"):
        fixed_configmap(spec={"files": {"params.yaml": "x" * 1_000_000}})


# -- provisioned workloads -----------------------------------------------------


@pytest.mark.parametrize("spec", [STATEFULSET, DEPLOYMENT, JOB], ids=lambda s: s.kind)
def test_workload_selects_its_own_pods_only(spec: WorkloadSpec) -> None:
    main = tree(build_workload(spec)[-1])
    assert main["kind"] == spec.kind
    template_labels = main["spec"]["template"]["metadata"]["labels"]
    assert template_labels["mlexp.io/resource"] == spec.name
    assert template_labels["mlexp.io/kind"] == spec.kind
    if spec.kind == "Job":
        assert "selector" not in main["spec"]
        return
    selector = main["spec"]["selector"]["matchLabels"]
    assert selector == workload_selector(spec.kind, spec.name)
    assert selector.items() <= template_labels.items()
    other = "Deployment" if spec.kind == "StatefulSet" else "StatefulSet"
    assert workload_selector(other, spec.name).items() > set()
    assert not workload_selector(other, spec.name).items() <= template_labels.items()


def test_selector_takes_the_resource_string_spelling_too() -> None:
    assert workload_selector("sts", "x") == workload_selector("StatefulSet", "x")
    assert workload_selector("deploy", "x") == workload_selector("Deployment", "x")
    assert workload_selector("sts", "x") != workload_selector("deploy", "x")
    with pytest.raises(ValueError, match="workload kind"):
        workload_selector("pod", "x")


def test_exec_work_root_is_an_emptydir_where_the_config_says() -> None:
    default = pod_of(build_workload(DEPLOYMENT)[-1])
    assert {"name": "mlexp-work", "mountPath": EXEC_WORK_ROOT} in default["containers"][0][
        "volumeMounts"
    ]
    moved = pod_of(build_workload(DEPLOYMENT, work_root="/scratch/mlexp")[-1])
    assert {"name": "mlexp-work", "mountPath": "/scratch/mlexp"} in moved["containers"][0][
        "volumeMounts"
    ]
    assert {"name": "mlexp-work", "emptyDir": {}} in moved["volumes"]


def test_statefulset_comes_with_its_headless_service_and_claim_template() -> None:
    service, sts = map(tree, build_workload(STATEFULSET))
    assert service["kind"] == "Service"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == workload_selector("StatefulSet", "trainer")
    spec = sts["spec"]
    assert spec["serviceName"] == service["metadata"]["name"] == "trainer"
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    (container,) = pod_of(sts)["containers"]
    assert {"name": "dvc-cache", "mountPath": "/var/cache/mlexp/dvc"} in container["volumeMounts"]
    assert container["command"] == ["sleep", "infinity"]
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "2Gi", "nvidia.com/gpu": "1"},
        "limits": {"memory": "8Gi", "nvidia.com/gpu": "1"},
    }
    assert [e["name"] for e in container["env"]] == ["DATA_DIR", "LOG_LEVEL"]
    pod = pod_of(sts)
    assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) == ("ml-runner", True)
    assert sts["metadata"]["labels"]["team"] == "vision"
    assert sts["metadata"]["annotations"] == {"example.com/owner": "vision"}


def test_deployment_gets_a_standalone_claim_defaults_and_recreate() -> None:
    claim, deployment = map(tree, build_workload(DEPLOYMENT, default_service_account="default-sa"))
    assert claim["kind"] == "PersistentVolumeClaim"
    assert claim["metadata"]["name"] == "pool-dvc-cache"
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = pod_of(deployment)
    volume = {"name": "dvc-cache", "persistentVolumeClaim": {"claimName": "pool-dvc-cache"}}
    assert volume in pod["volumes"]
    assert pod["serviceAccountName"] == "default-sa"
    (container,) = pod["containers"]
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    assert container["envFrom"] == [{"secretRef": {"name": credentials_secret_name(EXP)}}]
    shared = spec_of(kind="Deployment", dvc_cache={"size": "1Gi", "access_mode": "ReadWriteMany"})
    assert "strategy" not in tree(build_workload(shared)[-1])["spec"]


def test_job_workload_runs_its_command_with_job_settings() -> None:
    (job,) = build_workload(JOB, jobs=JobSettings(backoff_limit=5))
    spec = tree(job)["spec"]
    assert (spec["parallelism"], spec["completions"]) == (3, 3)
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (5, 600)
    assert spec["ttlSecondsAfterFinished"] == 3600
    pod = pod_of(job)
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["command"] == ["python3", "-m", "prep"]
    assert container["resources"] == {"limits": {"cpu": "1"}}  # replaces the defaults whole
    assert "envFrom" not in container
    assert "imagePullSecrets" not in pod
    plain = tree(build_workload(spec_of(kind="Job"))[-1])
    assert "command" not in pod_of(plain)["containers"][0]
    assert plain["spec"]["activeDeadlineSeconds"] == 21600


def test_host_network_pods_share_the_nodes_network_and_keep_cluster_dns() -> None:
    pod = pod_of(fixed_run_job(host_network=True))
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert "hostNetwork" not in pod_of(fixed_run_job())


def test_workloads_take_the_configured_placement_unless_they_name_their_own() -> None:
    toleration = Toleration.model_validate(
        {"key": "mlexp.io/real-node", "operator": "Exists", "effect": "NoSchedule"}
    )
    defaults = {
        "default_node_selector": {"kubernetes.io/hostname": "realnode"},
        "default_tolerations": [toleration],
        "host_network": True,
    }
    plain = spec_of(kind="Deployment", name="plain", experiment_id=EXP)
    pod = tree(build_workload(plain, **defaults)[-1])["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/hostname": "realnode"}
    assert pod["tolerations"] == [
        {"key": "mlexp.io/real-node", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod["hostNetwork"] is True
    own = spec_of(kind="Deployment", name="own", experiment_id=EXP, node_selector={"pool": "gpu"})
    pod = tree(build_workload(own, **defaults)[-1])["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu"}
