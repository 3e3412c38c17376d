"""k8s-config.yaml loading (start-up errors name the file) and the namespace fence.

Covers: the template loads; kubeconfig paths resolve from the config file's dir;
bad files are ``ValueError`` with the path; :class:`NamespacePolicy` check order
(422 for malformed or missing, 403 for prohibited, not allowed, not the caller's),
admins bypassing only the token check; prohibited-wins as a property.
"""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from controller.domain.errors import Forbidden, InvalidInput
from controller.domain.k8sconfig import (
    EXEC_WORK_ROOT,
    K8sConfig,
    NamespacePolicy,
    load_k8s_config,
)

TEMPLATES = Path(__file__).resolve().parents[2] / "config.templ"

namespaces = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?\Z", fullmatch=True)
patterns = st.from_regex(r"\A[a-z0-9*?-]{1,12}\Z", fullmatch=True)


def write_config(tmp_path: Path, text: str, *, kubeconfig: bool = True) -> Path:
    if kubeconfig:
        (tmp_path / "kubeconfig.yaml").write_text("apiVersion: v1\nkind: Config\n")
    path = tmp_path / "k8s-config.yaml"
    path.write_text(text)
    return path


def policy(allowed: tuple[str, ...], prohibited: tuple[str, ...] = ()) -> NamespacePolicy:
    return NamespacePolicy(allowed=allowed, prohibited=prohibited)


# -- loading -------------------------------------------------------------------


def test_template_loads_with_kubeconfig_next_to_it(tmp_path: Path) -> None:
    for name in ("k8s-config.yaml", "kubeconfig.yaml"):
        shutil.copy(TEMPLATES / name, tmp_path / name)
    config = load_k8s_config(tmp_path / "k8s-config.yaml")
    assert config.kubeconfig == (tmp_path / "kubeconfig.yaml").resolve()
    assert config.namespaces.allowed == ("ml-*", "team-a")
    assert config.namespaces.prohibited == ("kube-*", "default")
    assert config.defaults.image == "registry.example.com/ml/wine-workload:1.0"
    assert config.defaults.resources is not None
    assert config.defaults.resources.limits is not None
    assert config.defaults.resources.limits.memory == "4Gi"
    assert (config.jobs.backoff_limit, config.jobs.active_deadline_seconds) == (2, 21600)
    assert (config.api.qps, config.api.burst) == (20.0, 40)
    assert (config.exec.work_root, config.exec.poll_seconds) == (EXEC_WORK_ROOT, 2.0)
    assert config.jobs.pod_labels == {}


def test_relative_kubeconfig_is_taken_from_the_config_dir_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    (conf / "sub").mkdir(parents=True)
    (conf / "sub" / "kc.yaml").write_text("kind: Config\n")
    (conf / "k8s.yaml").write_text("kubeconfig: sub/kc.yaml\nnamespaces: {allowed: [ml-*]}\n")
    monkeypatch.chdir(tmp_path)
    assert load_k8s_config(conf / "k8s.yaml").kubeconfig == (conf / "sub" / "kc.yaml").resolve()


def test_in_cluster_needs_no_kubeconfig(tmp_path: Path) -> None:
    path = write_config(tmp_path, "in_cluster: true\n", kubeconfig=False)
    config = load_k8s_config(path)
    assert config.in_cluster
    assert config.kubeconfig is None
    # Fails closed: nothing is allowed until the file says so.
    assert not NamespacePolicy.from_config(config).is_allowed("ml-a")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kubeconfig: kubeconfig.yaml\nin_cluster: true\n", "not both"),
        ("in_cluster: false\n", "set kubeconfig"),
        ("in_cluster: true\ncontext: prod\n", "context applies to a kubeconfig"),
        ("kubeconfig: missing.yaml\n", "is not a file"),
        ("kubeconfig: kubeconfig.yaml\nnamspaces: {}\n", "namspaces: Extra inputs"),
        ("kubeconfig: kubeconfig.yaml\napi: {qps: 0}\n", "api.qps"),
        ("kubeconfig: kubeconfig.yaml\njobs: {backoff_limit: -1}\n", "jobs.backoff_limit"),
        ("kubeconfig: kubeconfig.yaml\nnamespaces: {allowed: ['ML/*']}\n", "namespace pattern"),
        (
            "kubeconfig: kubeconfig.yaml\ndefaults: {resources: {limits: {cpu: lots}}}\n",
            "defaults.resources.limits.cpu",
        ),
        ("kubeconfig: kubeconfig.yaml\ndefaults: {image_pull_policy: Sometimes}\n", "Always"),
        ("kubeconfig: kubeconfig.yaml\nexec: {work_root: work}\n", "exec.work_root"),
        ("kubeconfig: kubeconfig.yaml\nexec: {work_root: /a/../b}\n", "'..'"),
        ("kubeconfig: kubeconfig.yaml\nexec: {poll_seconds: 0}\n", "exec.poll_seconds"),
        ("kubeconfig: kubeconfig.yaml\njobs: {pod_labels: {'a b': c}}\n", "jobs.pod_labels"),
        ("- just\n- a list\n", "expected a mapping"),
        ("kubeconfig: [unclosed\n", "expected ',' or ']'"),
    ],
)
def test_bad_files_are_start_up_errors_naming_the_file(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(ValueError, match=r"k8s-config\.yaml") as info:
        load_k8s_config(path)
    assert expected in str(info.value)


def test_exec_and_pod_label_settings(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        "kubeconfig: kubeconfig.yaml\n"
        "exec: {work_root: /tmp/mlexp/, poll_seconds: 0.5}\n"
        "jobs: {pod_labels: {mlexp.io/test-drive: manual}}\n",
    )
    config = load_k8s_config(path)
    assert (config.exec.work_root, config.exec.poll_seconds) == ("/tmp/mlexp", 0.5)
    assert config.jobs.pod_labels == {"mlexp.io/test-drive": "manual"}


def test_unreadable_file_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        load_k8s_config(tmp_path / "absent.yaml")


def test_config_is_frozen() -> None:
    config = K8sConfig(in_cluster=True)
    with pytest.raises(ValueError, match="frozen"):
        config.in_cluster = False  # type: ignore[misc]


# -- the namespace fence -------------------------------------------------------

FENCE = policy(("ml-*", "team-a"), ("kube-*", "default", "ml-secret"))


def test_allowed_namespace_passes_for_a_caller_with_a_matching_token() -> None:
    assert FENCE.check("ml-a", caller_namespaces=("ml-*",), caller_admin=False) == "ml-a"
    assert FENCE.check("team-a", caller_namespaces=("team-a",), caller_admin=False) == "team-a"


@pytest.mark.parametrize("namespace", [None, ""])
def test_missing_namespace_is_invalid_input(namespace: str | None) -> None:
    with pytest.raises(InvalidInput, match="namespace is required"):
        FENCE.check(namespace, caller_namespaces=("*",), caller_admin=True)


@pytest.mark.parametrize("namespace", ["ML-A", "ml_a", "-ml", "ml-", "a" * 64, "ml.a", "ml a"])
def test_malformed_namespace_is_invalid_input_not_forbidden(namespace: str) -> None:
    with pytest.raises(InvalidInput, match="DNS-1123") as info:
        FENCE.check(namespace, caller_namespaces=("*",), caller_admin=True)
    assert not isinstance(info.value, Forbidden)


@pytest.mark.parametrize(
    ("namespace", "reason"),
    [
        ("kube-system", "prohibited"),
        ("default", "prohibited"),
        ("ml-secret", "prohibited"),  # matches ml-* too: prohibited wins
        ("prod", "not allowed"),
    ],
)
def test_config_refusals_hold_even_for_admins(namespace: str, reason: str) -> None:
    with pytest.raises(Forbidden, match=reason) as info:
        FENCE.check(namespace, caller_namespaces=("*",), caller_admin=True)
    assert repr(namespace) in info.value.detail


def test_token_namespaces_limit_callers_and_admins_skip_only_that() -> None:
    with pytest.raises(Forbidden, match="caller's token namespaces"):
        FENCE.check("ml-b", caller_namespaces=("ml-a", "team-*"), caller_admin=False)
    with pytest.raises(Forbidden, match="caller's token namespaces"):
        FENCE.check("ml-b", caller_namespaces=(), caller_admin=False)
    assert FENCE.check("ml-b", caller_namespaces=(), caller_admin=True) == "ml-b"


def test_is_allowed_ignores_callers() -> None:
    assert FENCE.is_allowed("ml-x")
    assert not FENCE.is_allowed("ml-secret")
    assert not FENCE.is_allowed("Not-A-Label")


@given(namespaces, st.lists(patterns, max_size=4), st.lists(patterns, max_size=4))
def test_prohibited_always_wins(
    namespace: str, allowed: list[str], prohibited_extra: list[str]
) -> None:
    fence = policy((*allowed, namespace, "*"), (*prohibited_extra, namespace))
    assert not fence.is_allowed(namespace)
    with pytest.raises(Forbidden, match="prohibited"):
        fence.check(namespace, caller_namespaces=("*",), caller_admin=True)


@given(namespaces, st.lists(patterns, max_size=5), st.lists(patterns, max_size=3))
def test_a_namespace_matching_no_allowed_pattern_is_never_allowed(
    namespace: str, allowed: list[str], prohibited: list[str]
) -> None:
    assume(not any(fnmatch.fnmatchcase(namespace, p) for p in allowed))
    fence = policy(tuple(allowed), tuple(prohibited))
    assert not fence.is_allowed(namespace)
    with pytest.raises(Forbidden):
        fence.check(namespace, caller_namespaces=("*",), caller_admin=True)


@given(namespaces, st.lists(patterns, max_size=5), st.lists(patterns, max_size=3))
def test_allowed_means_some_allowed_and_no_prohibited_pattern_matches(
    namespace: str, allowed: list[str], prohibited: list[str]
) -> None:
    expected = any(fnmatch.fnmatchcase(namespace, p) for p in allowed) and not any(
        fnmatch.fnmatchcase(namespace, p) for p in prohibited
    )
    assert policy(tuple(allowed), tuple(prohibited)).is_allowed(namespace) is expected
