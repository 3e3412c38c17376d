"""``storage.ca_bundle`` end to end (issue 13): a DVC remote on S3 over HTTPS whose
certificate a private CA issued (moto's server over TLS, tests/support/s3server.py).

A local run of the sample bundle publishes to that S3 when the service is given the CA
as ``storage.ca_bundle`` (the runner gets it as ``AWS_CA_BUNDLE``, and reads it through
its sandbox), and a client with the CA gets the model back with ``git clone`` + ``dvc
pull`` (one without it cannot). Without the setting the run fails at its first S3 step
with a reason that says the certificate could not be verified, naming neither a
credential nor a path of the service's host, and nothing reaches the bucket.

The service itself never talks to S3 (creating an experiment only writes
``.dvc/config``; results are read back from git), so runs are where the CA matters.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.settings import Settings, StorageSettings
from tests.support.bundles import clone_run, create, sample_parts, start
from tests.support.gitserver import GitHttpServer
from tests.support.s3server import S3Server
from tests.support.service import service_in_thread

pytestmark = pytest.mark.integration

TOKEN = "tok-0123456789abcdef"  # the session git server's password (tests/conftest.py)


@pytest.fixture(scope="module")
def https_s3() -> Iterator[S3Server]:
    with S3Server(https=True) as server:
        yield server


def repo_json(git: GitHttpServer, s3: S3Server, bucket: str) -> dict[str, object]:
    return {
        "git": {"url": git.create_bare(f"ca-{uuid.uuid4().hex[:8]}"), "username": "mlexp-bot",
                "token": TOKEN},
        "dvc": {"remote": "storage", "url": f"s3://{bucket}/wine"},
        "storage": {
            "endpoint_url": s3.endpoint_url,
            "access_key_id": s3.access_key_id,
            "secret_access_key": s3.secret_access_key,
            "region": s3.region,
        },
    }  # fmt: skip


def with_cas(settings: Settings, git: GitHttpServer, s3_ca: Path | None) -> Settings:
    return settings.model_copy(
        update={"git_ca_bundle": git.ca_file, "storage": StorageSettings(ca_bundle=s3_ca)}
    )


def test_a_local_run_publishes_to_s3_with_a_private_ca(
    settings: Settings, git_server: GitHttpServer, https_s3: S3Server, tmp_path: Path
) -> None:
    assert https_s3.endpoint_url.startswith("https://127.0.0.1:")
    bucket = f"ca-{uuid.uuid4().hex[:8]}"
    https_s3.create_bucket(bucket)
    # A copy of the CA elsewhere: the run can only have used what the setting names.
    ca = tmp_path / "operator" / "s3-ca.pem"
    ca.parent.mkdir()
    ca.write_bytes(https_s3.ca_file.read_bytes())
    spec = repo_json(git_server, https_s3, bucket)
    with service_in_thread(with_cas(settings, git_server, ca)) as service:
        experiment = create(service.http, sample_parts(spec))
        run_id = start(service.http, experiment["experiment_id"])
        run = service.wait_run(run_id, timeout=300)
        log = service.http.get(f"/runs/{run_id}/logs").text
    assert run["state"] == "succeeded", log
    assert "step 6: dvc push" in log
    keys = https_s3.list_keys(bucket, "wine/")
    assert any(key.startswith("wine/files/md5/") for key in keys), keys
    assert any("runs" in key for key in keys), keys

    url = str(spec["git"]["url"])  # type: ignore[index]
    clone = clone_run(
        url=url, run_id=run_id, dest=tmp_path / "clone", git=git_server, s3=https_s3, token=TOKEN
    )
    assert (clone / "models" / "model.pkl").stat().st_size > 0

    # The same pull without the CA is refused by certificate verification.
    (clone / "models" / "model.pkl").unlink()
    env = https_s3.subprocess_env(dict(os.environ))
    del env["AWS_CA_BUNDLE"]
    env.pop("SSL_CERT_FILE", None)
    env.pop("REQUESTS_CA_BUNDLE", None)
    refused = subprocess.run(
        ["dvc", "pull", "--force"], cwd=clone, env=env, capture_output=True, text=True
    )
    assert refused.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in refused.stdout + refused.stderr
    assert not (clone / "models" / "model.pkl").exists()


def test_without_the_ca_a_run_fails_with_a_certificate_error(
    settings: Settings, git_server: GitHttpServer, https_s3: S3Server, tmp_path: Path
) -> None:
    bucket = f"noca-{uuid.uuid4().hex[:8]}"
    https_s3.create_bucket(bucket)
    spec = repo_json(git_server, https_s3, bucket)
    no_ca = with_cas(settings, git_server, None)
    with service_in_thread(no_ca) as service:
        experiment = create(service.http, sample_parts(spec))
        run_id = start(service.http, experiment["experiment_id"])
        run = service.wait_run(run_id, timeout=300)
        log = service.http.get(f"/runs/{run_id}/logs").text
    assert run["state"] == "failed", log
    reason = str(run["reason"])
    # dvc's own words, from the step that failed: the kind of failure, not a stack trace.
    assert reason.startswith("dvc pull exited with"), reason
    assert "CERTIFICATE_VERIFY_FAILED" in reason, reason
    for secret in (TOKEN, https_s3.secret_access_key, https_s3.access_key_id):
        assert secret not in reason
    for path in (str(https_s3.ca_file.parent.parent), str(no_ca.data_dir), str(tmp_path), "/tmp"):
        assert path not in reason, reason
    assert https_s3.list_keys(bucket) == []
