"""Private CA certificates for runs on Kubernetes, and the dispatch Lease's configuration.

Covers: the CA files' text is read from the settings' paths (PEM only, bounded) under
fixed names; the runner points git and S3 at the files its spec names beside it (and at
nothing else); a Job's runner ConfigMap carries them as keys; the Lease is off outside a
cluster unless configured, on in-cluster in the pod's namespace, and refused at start-up
when no namespace can be found for it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controller import runner
from controller.domain.errors import ExternalError
from controller.domain.k8sconfig import K8sConfig, LeaseConfig, lease_for
from controller.planning.manifests.runs import runner_configmap
from controller.services.runs import _ca_files
from controller.settings import Settings, StorageSettings

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def settings_with(tmp_path: Path, git: Path | None, s3: Path | None) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        config_file=tmp_path / "none.yaml",
        git_ca_bundle=git,
        storage=StorageSettings(ca_bundle=s3),
    )


def test_ca_files_are_read_as_text_under_fixed_names(tmp_path: Path) -> None:
    (tmp_path / "git.pem").write_text(PEM)
    (tmp_path / "s3.pem").write_text(PEM.replace("MIIB", "MIIC"))
    found = _ca_files(settings_with(tmp_path, tmp_path / "git.pem", tmp_path / "s3.pem"))
    assert found == {"git-ca.crt": PEM, "s3-ca.crt": PEM.replace("MIIB", "MIIC")}
    assert _ca_files(settings_with(tmp_path, None, None)) == {}


@pytest.mark.parametrize("content", [b"not a certificate", PEM.encode() * 20_000])
def test_a_ca_file_that_is_no_pem_or_too_big_is_refused(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "git.pem").write_bytes(content)
    with pytest.raises(ExternalError, match="git CA bundle is not PEM"):
        _ca_files(settings_with(tmp_path, tmp_path / "git.pem", None))


def test_a_missing_ca_file_is_named_without_its_path(tmp_path: Path) -> None:
    with pytest.raises(ExternalError) as caught:
        _ca_files(settings_with(tmp_path, None, tmp_path / "gone.pem"))
    assert "s3 CA bundle cannot be read" in caught.value.detail
    assert str(tmp_path) not in caught.value.detail


def test_the_runner_uses_the_ca_files_beside_its_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("MLEXP_GIT_CA_BUNDLE", "AWS_CA_BUNDLE"):
        monkeypatch.setenv(name, "/host/path/that/the/pod/lacks.pem")
    spec = {"ca_files": {"git": "git-ca.crt", "s3": "s3-ca.crt", "other": "x.crt"}}
    runner.use_ca_files(spec, tmp_path)
    assert os.environ["MLEXP_GIT_CA_BUNDLE"] == str(tmp_path / "git-ca.crt")
    assert os.environ["AWS_CA_BUNDLE"] == str(tmp_path / "s3-ca.crt")
    env = runner.git_environment(os.environ)
    assert env["GIT_SSL_CAINFO"] == str(tmp_path / "git-ca.crt")


def test_the_runner_takes_no_path_out_of_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLEXP_GIT_CA_BUNDLE", raising=False)
    runner.use_ca_files({"ca_files": {"git": "../../etc/passwd"}}, tmp_path)
    assert "MLEXP_GIT_CA_BUNDLE" not in os.environ


def test_a_jobs_configmap_carries_the_ca_files() -> None:
    manifest = runner_configmap(
        run_id="run-1",
        experiment_id="exp-1",
        namespace="ns",
        runner_source="print()",
        spec={"ca_files": {"git": "git-ca.crt"}},
        files={"git-ca.crt": PEM},
    )
    assert manifest["data"]["git-ca.crt"] == PEM
    assert set(manifest["data"]) == {"git-ca.crt", "runner.py", "spec.json"}


def test_no_lease_outside_a_cluster_unless_configured(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    assert lease_for(K8sConfig(kubeconfig=kubeconfig)) is None
    lease = lease_for(K8sConfig(kubeconfig=kubeconfig, lease=LeaseConfig(namespace="ops")))
    assert lease == LeaseConfig(namespace="ops")
    with pytest.raises(ValueError, match=r"lease\.namespace is not set"):
        lease_for(K8sConfig(kubeconfig=kubeconfig, lease=LeaseConfig()))


def test_in_cluster_the_lease_is_in_the_pods_namespace(tmp_path: Path) -> None:
    (tmp_path / "namespace").write_text("mlexp-system\n")
    config = K8sConfig(in_cluster=True, service_account_dir=tmp_path)
    lease = lease_for(config)
    assert lease is not None
    assert (lease.namespace, lease.name, lease.duration_seconds) == (
        "mlexp-system",
        "mlexp-ctrl",
        15,
    )
    (tmp_path / "namespace").write_text("Not A Label")
    with pytest.raises(ValueError, match="names no namespace"):
        lease_for(config)


@pytest.mark.parametrize(
    "fields", [{"namespace": "UPPER"}, {"name": "-bad"}, {"duration_seconds": 0.5}]
)
def test_a_bad_lease_config_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LeaseConfig.model_validate(fields)
