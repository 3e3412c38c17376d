"""The workload spec of POST /resource/k8s/create: parsing, Kubernetes syntax rules, errors.

Covers: JSON and YAML bodies by content type; defaults; unknown keys listed without
values; credential-looking env names refused; quantity, label and toleration rules as
the API server applies them; kind-specific rules (``shared`` pods for exec runs); no error
message echoes a value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.domain.errors import InvalidInput
from controller.domain.workloads import (
    MAX_WORKLOAD_NAME,
    Resources,
    WorkloadSpec,
    is_label_key,
    is_label_value,
    is_quantity,
    parse_quantity,
    parse_workload_spec,
)

BASE = {"kind": "StatefulSet", "name": "trainer", "namespace": "ml-a"}
PLANTED = "hunter2-planted-value"
NOT_TEXT: object = 1


def parse(
    body: Mapping[str, object], content_type: str | None = "application/json"
) -> WorkloadSpec:
    return parse_workload_spec(json.dumps(body).encode(), content_type=content_type)


def refused(body: Mapping[str, object]) -> str:
    with pytest.raises(InvalidInput) as info:
        parse(body)
    return info.value.detail


# -- bodies and content types --------------------------------------------------


def test_minimal_json_spec_gets_defaults() -> None:
    spec = parse(BASE)
    assert (spec.kind, spec.name, spec.namespace, spec.replicas) == (
        "StatefulSet",
        "trainer",
        "ml-a",
        1,
    )
    assert spec.image is None
    assert spec.command is None
    assert spec.experiment_id is None
    assert spec.env == {}
    assert spec.tolerations == []
    assert spec.dvc_cache is None


def test_yaml_spec_with_every_field() -> None:
    body = b"""
kind: Deployment
name: gpu-pool
namespace: team-a
experiment_id: exp-0123456789
image: registry.example.com/ml/wine-workload:1.0
replicas: 3
command: [sleep, "3600"]
env: {LOG_LEVEL: debug}
resources:
  requests: {cpu: 500m, memory: 1Gi, gpu: 1}
  limits: {cpu: "2", memory: 4Gi}
node_selector: {accelerator: nvidia-a100}
tolerations:
  - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
  - {key: dedicated, value: ml, effect: NoExecute, toleration_seconds: 60}
dvc_cache: {size: 20Gi, storage_class: fast-ssd, access_mode: ReadWriteMany}
service_account: ml-runner
labels: {team: vision}
annotations: {example.com/owner: "Vision team <vision@example.com>"}
"""
    spec = parse_workload_spec(body, content_type="application/yaml; charset=utf-8")
    assert spec.kind == "Deployment"
    assert spec.resources is not None
    assert spec.resources.gpu == 1
    assert spec.tolerations[1].toleration_seconds == 60
    assert spec.dvc_cache is not None
    assert spec.dvc_cache.mount_path == "/var/cache/mlexp/dvc"


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/octet-stream"])
def test_generic_content_types_are_sniffed(content_type: str | None) -> None:
    for body in (json.dumps(BASE).encode(), b"kind: Job\nname: prep\nnamespace: ml-a\n"):
        assert parse_workload_spec(body, content_type=content_type).namespace == "ml-a"


def test_declared_json_is_parsed_strictly() -> None:
    with pytest.raises(InvalidInput, match="not valid JSON"):
        parse_workload_spec(b"kind: Job\n", content_type="application/json")
    with pytest.raises(InvalidInput, match="duplicate key 'name'"):
        parse_workload_spec(
            b'{"kind": "Job", "name": "a", "name": "b", "namespace": "n"}',
            content_type="application/json",
        )


def test_unsupported_content_type_and_size_are_refused() -> None:
    with pytest.raises(InvalidInput, match="unsupported content type"):
        parse_workload_spec(b"<xml/>", content_type="application/xml")
    with pytest.raises(InvalidInput, match="larger than 100 bytes"):
        parse_workload_spec(b"x" * 101, content_type=None, max_bytes=100)


@pytest.mark.parametrize("body", [b"[1, 2]", b"just text", b""])
def test_body_must_be_a_mapping(body: bytes) -> None:
    with pytest.raises(InvalidInput, match="must be a mapping"):
        parse_workload_spec(body, content_type=None)


def test_unknown_keys_are_listed_without_their_values() -> None:
    detail = refused({**BASE, "replicaz": PLANTED, "tolerations": [{"key": "a", "efect": PLANTED}]})
    assert "unknown keys" in detail
    assert "'replicaz'" in detail
    assert "'tolerations.0.efect'" in detail
    assert PLANTED not in detail


@pytest.mark.parametrize(
    "body",
    [
        {**BASE, "name": PLANTED.upper()},
        {**BASE, "namespace": PLANTED + "!"},
        {**BASE, "image": PLANTED + " x"},
        {**BASE, "replicas": PLANTED},
        {**BASE, "env": {"A": NOT_TEXT}},
        {**BASE, "node_selector": {"disk": PLANTED + "/x"}},
        {**BASE, "resources": {"limits": {"memory": PLANTED}}},
        {**BASE, "kind": PLANTED},
    ],
)
def test_no_error_message_echoes_a_value(body: dict[str, object]) -> None:
    with pytest.raises(InvalidInput) as info:
        parse(body)
    assert PLANTED not in info.value.detail
    assert PLANTED.upper() not in info.value.detail
    assert PLANTED not in json.dumps(info.value.errors)


# -- field rules ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "trainer-1", "x" * MAX_WORKLOAD_NAME])
def test_good_names(name: str) -> None:
    assert parse({**BASE, "name": name}).name == name


@pytest.mark.parametrize(
    "name", ["1trainer", "Trainer", "trainer-", "tr_ainer", "x" * (MAX_WORKLOAD_NAME + 1), ""]
)
def test_bad_names(name: str) -> None:
    assert "name" in refused({**BASE, "name": name})


@pytest.mark.parametrize(
    "key",
    [
        "GIT_TOKEN",
        "aws_secret_access_key",
        "DB_PASSWORD",
        "SMTP_PASSWD",
        "API_KEY",
        "GOOGLE_CREDENTIALS",
    ],
)
def test_credential_looking_env_names_point_to_repo_json(key: str) -> None:
    detail = refused({**BASE, "env": {key: PLANTED}})
    assert "repo_json" in detail
    assert repr(key) in detail
    assert PLANTED not in detail


@pytest.mark.parametrize("key", ["MLEXP_GIT_USERNAME", "mlexp_anything", "1ABC", "A-B", "A=B"])
def test_reserved_or_malformed_env_names(key: str) -> None:
    assert "env" in refused({**BASE, "env": {key: "v"}})


def test_plain_env_is_kept() -> None:
    assert parse({**BASE, "env": {"LOG_LEVEL": "debug", "_X": ""}}).env["LOG_LEVEL"] == "debug"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("2", Decimal(2)),
        ("1.5", Decimal("1.5")),
        ("1Gi", Decimal(2**30)),
        ("512Mi", Decimal(512 * 2**20)),
        ("1e3", Decimal(1000)),
        ("1E-3", Decimal("0.001")),
        ("100k", Decimal(100_000)),
        ("250u", Decimal("0.00025")),
        (".5", Decimal("0.5")),
    ],
)
def test_quantities(text: str, value: Decimal) -> None:
    assert is_quantity(text)
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "-1", "1 Gi", "1GB", "1gi", "Gi", "1.2.3", "0x10", "1K"])
def test_not_quantities(text: str) -> None:
    assert not is_quantity(text)
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(text)


def test_requests_above_limits_and_unequal_gpus_are_refused() -> None:
    resources = {"requests": {"memory": "8Gi"}, "limits": {"memory": "4Gi"}}
    assert "requests.memory is above limits.memory" in refused({**BASE, "resources": resources})
    resources = {"requests": {"cpu": "2500m"}, "limits": {"cpu": "2"}}
    assert "requests.cpu is above limits.cpu" in refused({**BASE, "resources": resources})
    gpus = {"requests": {"gpu": 1}, "limits": {"gpu": 2}}
    assert "gpu" in refused({**BASE, "resources": gpus})


def test_gpu_count_is_taken_from_either_side() -> None:
    assert Resources.model_validate({"requests": {"gpu": 2}}).gpu == 2
    assert Resources.model_validate({"limits": {"gpu": 1}}).gpu == 1
    assert Resources.model_validate({"limits": {"cpu": "1"}}).gpu is None


@pytest.mark.parametrize(
    ("toleration", "expected"),
    [
        ({"operator": "Equal", "value": "x"}, "without key must use operator Exists"),
        ({"key": "a", "operator": "Exists", "value": "x"}, "Exists takes no value"),
        ({"key": "a", "toleration_seconds": 5, "effect": "NoSchedule"}, "needs effect NoExecute"),
        ({"key": "a b"}, "valid label key"),
        ({"key": "a", "value": "x" * 64}, "valid label value"),
        ({"key": "a", "effect": "Sometimes"}, "NoSchedule"),
    ],
)
def test_toleration_rules(toleration: dict[str, object], expected: str) -> None:
    assert expected in refused({**BASE, "tolerations": [toleration]})


def test_toleration_of_everything_is_allowed() -> None:
    assert parse({**BASE, "tolerations": [{"operator": "Exists"}]}).tolerations[0].key is None


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("node_selector", {"bad key!": "x"}, "not a valid label key"),
        ("node_selector", {"disk": "-ssd"}, "label value"),
        ("labels", {"mlexp.io/resource": "other"}, "reserved"),
        ("labels", {"app.kubernetes.io/managed-by": "me"}, "reserved"),
        ("labels", {"node.kubernetes.io/role": "x"}, "reserved"),
        ("annotations", {"k8s.io/x": "y"}, "reserved"),
        ("annotations", {"bad key": "y"}, "not a valid key"),
        ("experiment_id", "exp-XYZ", "experiment_id"),
        ("service_account", "Bad_SA", "DNS-1123 subdomain"),
        ("dvc_cache", {"size": "0"}, "positive"),
        ("dvc_cache", {"size": "1Gi", "mount_path": "/a/../b"}, "'..'"),
        ("dvc_cache", {"size": "1Gi", "mount_path": "relative"}, "mount_path"),
        ("dvc_cache", {"size": "1Gi", "storage_class": "Fast!"}, "storage_class"),
        ("command", [], "command"),
        ("command", ["ok", ""], "non-empty"),
        ("replicas", 101, "replicas"),
    ],
)
def test_field_rules(field: str, value: object, expected: str) -> None:
    assert expected in refused({**BASE, field: value})


def test_recommended_app_labels_are_open_to_clients() -> None:
    labels = {"app.kubernetes.io/name": "trainer", "app.kubernetes.io/part-of": "wine"}
    assert parse({**BASE, "labels": labels}).labels == labels


def test_annotation_values_may_be_free_text_but_bounded() -> None:
    assert parse({**BASE, "annotations": {"example.com/note": "any text: ok"}}).annotations
    assert "larger than" in refused({**BASE, "annotations": {"a": "x" * (256 * 1024)}})


def test_kind_rules() -> None:
    assert "replicas >= 1" in refused({**BASE, "kind": "Job", "replicas": 0})
    assert "Job only" in refused({**BASE, "active_deadline_seconds": 60})
    assert parse({**BASE, "kind": "Deployment", "replicas": 0}).replicas == 0
    job = parse({**BASE, "kind": "Job", "replicas": 4, "active_deadline_seconds": 60})
    assert job.active_deadline_seconds == 60


def test_pods_are_exclusive_unless_the_spec_opts_in_to_sharing() -> None:
    assert parse(BASE).shared is False
    assert parse({**BASE, "shared": True}).shared is True
    assert parse({**BASE, "kind": "Deployment", "shared": True}).shared is True
    yaml_body = b"kind: Deployment\nname: pool\nnamespace: ml-a\nshared: true\n"
    assert parse_workload_spec(yaml_body, content_type="application/yaml").shared is True
    # Jobs are never exec targets: sharing means nothing there, so it is an error.
    assert "shared applies to StatefulSet and Deployment" in refused(
        {**BASE, "kind": "Job", "shared": True}
    )
    assert "shared" in refused({**BASE, "shared": "sometimes"})


def test_the_shared_field_documents_what_sharing_gives_up() -> None:
    """The API docs (OpenAPI schema) say what each setting guarantees."""
    text = WorkloadSpec.model_json_schema()["properties"]["shared"]["description"]
    assert "one exec run at a time" in text
    assert "/proc/<pid>/environ" in text
    assert "not private" in text


# -- syntax helpers as properties ----------------------------------------------


@given(st.text(max_size=70))
def test_label_values_follow_the_rule(value: str) -> None:
    if is_label_value(value):
        assert len(value) <= 63
        assert set(value) <= set(
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."
        )
        assert value == "" or (value[0].isalnum() and value[-1].isalnum())


@given(st.from_regex(r"\A([a-z0-9]+\.)?[a-z0-9]{1,10}/[A-Za-z0-9][-A-Za-z0-9_.]{0,20}\Z"))
def test_prefixed_label_keys_are_keys(key: str) -> None:
    assert is_label_key(key) is (key.split("/")[1][-1] not in "-_.")


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["", "m", "k", "Mi", "Gi"]))
def test_integer_quantities_parse_to_their_value(number: int, suffix: str) -> None:
    factors = {
        "": Decimal(1),
        "m": Decimal("0.001"),
        "k": Decimal(1000),
        "Mi": Decimal(2**20),
        "Gi": Decimal(2**30),
    }
    assert parse_quantity(f"{number}{suffix}") == number * factors[suffix]
