"""Credential flows against real servers: git over HTTPS with basic auth, S3 over HTTP.

An experiment whose repository needs a token and whose DVC remote is S3 (moto's
server) runs end to end; then every place a credential could leak is scanned —
git history of every branch, committed DVC config, the data dir (database, logs,
work dirs), the service's log output and the API's answers. Only the secret
store may hold them.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from controller.settings import Settings
from tests.support.bundles import clone_run, create, sample_parts, start
from tests.support.gitserver import GitHttpServer, basic_auth_header
from tests.support.s3server import S3Server
from tests.support.service import service_in_thread

pytestmark = pytest.mark.integration


def repo_json(
    git: GitHttpServer, s3: S3Server, url: str, bucket: str, token: str
) -> dict[str, object]:
    return {
        "git": {"url": url, "branch": "main", "username": "mlexp-bot", "token": token},
        "dvc": {"remote": "storage", "url": f"s3://{bucket}/wine"},
        "storage": {
            "endpoint_url": s3.endpoint_url,
            "access_key_id": s3.access_key_id,
            "secret_access_key": s3.secret_access_key,
            "region": s3.region,
        },
    }


@pytest.fixture
def remote_settings(settings: Settings, git_server: GitHttpServer) -> Settings:
    return settings.model_copy(update={"git_ca_bundle": git_server.ca_file})


def test_https_git_and_s3_run_end_to_end_without_leaks(
    remote_settings: Settings,
    git_server: GitHttpServer,
    s3_server: S3Server,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    name, bucket = f"wine-{uuid.uuid4().hex[:8]}", f"art-{uuid.uuid4().hex[:8]}"
    url = git_server.create_bare(name)
    s3_server.create_bucket(bucket)
    token = "tok-0123456789abcdef"
    spec = repo_json(git_server, s3_server, url, bucket, token)

    with service_in_thread(remote_settings) as service:
        experiment = create(service.http, sample_parts(spec))
        run_id = start(service.http, experiment["experiment_id"], **{"train.max_iter": 300})
        run = service.wait_run(run_id)
        assert run["state"] == "succeeded", service.http.get(f"/runs/{run_id}/logs").text
        answers = [
            service.http.get(path).text
            for path in ("/experiments", "/runs", f"/runs/{run_id}", f"/runs/{run_id}/logs")
        ]

    # The git server saw authenticated requests only after refusing anonymous ones.
    statuses = {status for _, _, status in git_server.requests}
    assert 200 in statuses
    # Data went to S3 (outputs and run-cache), the branch to the git server.
    keys = s3_server.list_keys(bucket, "wine/")
    assert any(key.startswith("wine/files/md5/") for key in keys)
    assert any("runs" in key for key in keys), keys

    # A client with its own credentials gets the results back.
    clone = clone_run(
        url=url, run_id=run_id, dest=tmp_path / "clone", git=git_server, s3=s3_server, token=token
    )
    assert (clone / "models" / "model.pkl").stat().st_size > 0

    # Scan for the secrets everywhere they must not be.
    secrets = [token, s3_server.secret_access_key, basic_auth_header("mlexp-bot", token).split()[1]]
    history = subprocess.run(
        ["git", "log", "-p", "--all", "--format=%H %an %s%n%b"],
        cwd=clone, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "endpointurl" in (clone / ".dvc" / "config").read_text()
    places = {"git history": history, "git config": (clone / ".git" / "config").read_text()}
    places.update({f"answer {i}": text for i, text in enumerate(answers)})
    places["service output"] = "".join(capfd.readouterr())
    data_dir = remote_settings.data_dir
    for path in data_dir.rglob("*"):
        if path.is_file() and "secrets" not in path.relative_to(data_dir).parts:
            places[str(path)] = path.read_bytes().decode(errors="replace")
    for secret in secrets:
        leaks = [where for where, text in places.items() if secret in text]
        assert leaks == [], f"a credential leaked into {leaks}"
    secret_files = list((data_dir / "secrets").iterdir())
    assert [oct(p.stat().st_mode & 0o777) for p in secret_files] == ["0o600"]


def test_wrong_token_is_refused_cleanly(
    remote_settings: Settings, git_server: GitHttpServer, s3_server: S3Server
) -> None:
    name = f"denied-{uuid.uuid4().hex[:8]}"
    url = git_server.create_bare(name)
    spec = repo_json(git_server, s3_server, url, "unused-bucket", "tok-wrong-wrong-wrong")
    with service_in_thread(remote_settings) as service:
        response = service.http.post("/experiment/create", files=sample_parts(spec))
        assert response.status_code == 502, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert "tok-wrong" not in response.text
        assert service.http.get("/experiments").json() == []
    assert not list((remote_settings.data_dir / "secrets").glob("*.json"))
    heads = subprocess.run(
        ["git", "for-each-ref"], cwd=git_server.repo_path(name),
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert heads == ""
