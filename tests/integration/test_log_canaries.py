"""No credential reaches a log line: canaries through every path that logs, in both formats.

``mlexp serve`` runs as a process with DEBUG logging (``log_format`` text, then json);
everything it writes (its own lines, uvicorn's, libraries' warnings, tracebacks) is kept.
Canary secrets travel: as the git token of a real HTTPS git server (runs succeed with it),
as S3 keys (moto accepts any), as a registry password, as the bearer token of the tokens
file, as a wrong git token (the auth failure path: git's stderr is logged), with a dead S3
endpoint (the run fails in ``dvc push``), in a failing stage's run, in URL userinfo and
query strings, and in request bodies refused with 422. Then no canary — nor its base64 or
URL-encoded forms — is in any log line, any run log, or any answer. The test also checks
that those paths did log (so it cannot pass by logging nothing), that json lines are
objects with the documented fields, and that a request's lines carry its ``X-Request-Id``.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import pytest

from tests.support.bundles import FAILING_DVC, QUICK_DVC, small_parts
from tests.support.gitserver import GitHttpServer
from tests.support.prereqs import require_tools
from tests.support.s3server import S3Server
from tests.support.service import free_port, service_process
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

TAG = uuid.uuid4().hex[:10]
GIT_TOKEN = f"gitcanary{TAG}Qx1"
WRONG_GIT_TOKEN = f"wronggitcanary{TAG}Qx2"
ACCESS_KEY = f"AKIACANARY{TAG.upper()}"
SECRET_KEY = f"s3secretcanary{TAG}Qx3"
REGISTRY_PASSWORD = f"registrycanary{TAG}Qx4"
BEARER = f"bearercanary{TAG}Qx5"
WRONG_BEARER = f"wrongbearercanary{TAG}Qx6"
URL_SECRET = f"urlcanary{TAG}Qx7"
BODY_SECRET = f"bodycanary{TAG}Qx8"
CANARIES = (
    GIT_TOKEN,
    WRONG_GIT_TOKEN,
    ACCESS_KEY,
    SECRET_KEY,
    REGISTRY_PASSWORD,
    BEARER,
    WRONG_BEARER,
    URL_SECRET,
    BODY_SECRET,
)
USERNAME = "canary-bot"


def needles() -> list[str]:
    """Each canary as it could leak: itself, URL-encoded, inside a Basic header's base64."""
    found: list[str] = []
    for canary in CANARIES:
        found += [canary, quote(canary, safe="")]
        for user in (USERNAME, "x-access-token", ""):
            found.append(base64.b64encode(f"{user}:{canary}".encode()).decode())
    found.append(base64.b64encode(BEARER.encode()).decode())
    return found


@pytest.fixture(scope="module")
def canary_git(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHttpServer]:
    """A git server whose password is a canary, so runs really use it."""
    require_tools("git")
    with GitHttpServer(
        tmp_path_factory.mktemp("canary-git"), username=USERNAME, password=GIT_TOKEN
    ) as server:
        yield server


def repo_json(
    git: GitHttpServer,
    s3: S3Server,
    *,
    token: str = GIT_TOKEN,
    endpoint: str | None = None,
    bucket: str,
) -> dict[str, object]:
    return {
        "git": {
            "url": git.create_bare(f"c-{uuid.uuid4().hex[:8]}"),
            "branch": "main",
            "username": USERNAME,
            "token": token,
        },
        "dvc": {"remote": "storage", "url": f"s3://{bucket}/data"},
        "storage": {
            "endpoint_url": endpoint or s3.endpoint_url,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "region": "us-east-1",
        },
        "registry": {
            "image": "registry.example.com/ml/wine:1.0",
            "server": "registry.example.com",
            "username": USERNAME,
            "password": REGISTRY_PASSWORD,
        },
    }


class Exchange:
    """The client side: every answer's body is kept, to be searched too."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.bodies: list[str] = []

    def send(self, method: str, path: str, **kw: object) -> httpx.Response:
        response = self.http.request(method, path, **kw)  # type: ignore[arg-type]
        self.bodies.append(response.text)
        self.bodies.append(json.dumps(dict(response.headers)))
        return response

    def create(self, parts: list[tuple[str, tuple[str, bytes]]]) -> httpx.Response:
        return self.send("POST", "/experiment/create", files=parts)

    def run(self, experiment_id: str) -> str:
        response = self.send(
            "POST", "/experiment/run", json={"experiment_id": experiment_id, "resource": "local"}
        )
        assert response.status_code == 202, response.text
        return str(response.json()["run_id"])

    def wait(self, run_id: str) -> str:
        def ended() -> str | None:
            state = str(self.http.get(f"/runs/{run_id}").json()["state"])
            return state if state in ("succeeded", "failed", "cancelled") else None

        state = wait_for(ended, 180, what=f"run {run_id} to end", max_interval=0.25)
        self.send("GET", f"/runs/{run_id}")
        self.send("GET", f"/runs/{run_id}/logs")
        return state


def exercise(ex: Exchange, git: GitHttpServer, s3: S3Server) -> dict[str, str]:
    """Every path that logs, with canaries; returns request ids worth finding in the log."""
    bucket = f"canary-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(bucket)
    ids: dict[str, str] = {}

    # A run that succeeds with the canary git token, S3 keys and registry password.
    good = ex.create(small_parts(QUICK_DVC, "x: 3\n", repo_json=repo_json(git, s3, bucket=bucket)))
    assert good.status_code == 201, good.text
    ids["created"] = good.headers["x-request-id"]
    assert ex.wait(ex.run(good.json()["experiment_id"])) == "succeeded"

    # A run whose stage fails.
    failing = ex.create(small_parts(FAILING_DVC, repo_json=repo_json(git, s3, bucket=bucket)))
    assert failing.status_code == 201, failing.text
    assert ex.wait(ex.run(failing.json()["experiment_id"])) == "failed"

    # A dead S3 endpoint: the run fails pushing its data.
    dead = f"http://127.0.0.1:{free_port()}"
    spec = repo_json(git, s3, endpoint=dead, bucket=bucket)
    no_s3 = ex.create(small_parts(QUICK_DVC, "x: 4\n", repo_json=spec))
    assert no_s3.status_code == 201, no_s3.text
    assert ex.wait(ex.run(no_s3.json()["experiment_id"])) == "failed"

    # A wrong git token: git's refusal is logged (stderr) and answered.
    refused = ex.create(
        small_parts(QUICK_DVC, repo_json=repo_json(git, s3, token=WRONG_GIT_TOKEN, bucket=bucket))
    )
    assert refused.status_code in (422, 502), refused.text
    ids["git refused"] = refused.headers["x-request-id"]

    # Credentials inside URLs: userinfo, query strings.
    base = urlsplit(git.create_bare(f"u-{uuid.uuid4().hex[:8]}"))
    for url in (
        f"https://{USERNAME}:{URL_SECRET}@{base.netloc}{base.path}",
        f"https://{URL_SECRET}@{base.netloc}{base.path}",
        f"https://{base.netloc}{base.path}?access_token={URL_SECRET}",
    ):
        spec = repo_json(git, s3, bucket=bucket)
        spec["git"] = {**spec["git"], "url": url}  # type: ignore[dict-item]
        answer = ex.create(small_parts(QUICK_DVC, repo_json=spec))
        assert answer.status_code >= 400, answer.text
    endpoint = f"http://{USERNAME}:{URL_SECRET}@127.0.0.1:{free_port()}/?key={URL_SECRET}"
    answer = ex.create(
        small_parts(QUICK_DVC, repo_json=repo_json(git, s3, endpoint=endpoint, bucket=bucket))
    )
    if answer.status_code == 201:
        ex.wait(ex.run(answer.json()["experiment_id"]))

    # Request bodies refused with 422: unknown keys and wrong types carrying canaries.
    spec = repo_json(git, s3, bucket=bucket)
    spec["git"] = {**spec["git"], "tokn": BODY_SECRET}  # type: ignore[dict-item]
    assert ex.create(small_parts(QUICK_DVC, repo_json=spec)).status_code == 422
    for body in (
        {"experiment_id": "exp-x", "resource": "local", "surprise": BODY_SECRET},
        {"experiment_id": BODY_SECRET, "resource": BODY_SECRET, "params": BODY_SECRET},
        {"experiment_id": ["nested", {"deep": BODY_SECRET}]},
    ):
        assert ex.send("POST", "/experiment/run", json=body).status_code in (404, 422)
    ex.send(
        "POST",
        "/experiment/run",
        content=f'{{"experiment_id": "{BODY_SECRET}", broken',
        headers={"Content-Type": "application/json"},
    )

    # Tokens: a wrong one, and the right one in odd places.
    wrong = ex.send("GET", "/runs", headers={"Authorization": f"Bearer {WRONG_BEARER}"})
    assert wrong.status_code == 401
    ex.send("GET", f"/runs?token={BEARER}")
    # In a path: answered (its problem echoes the path to the caller who sent it), not logged.
    assert ex.http.get(f"/no/such/{BEARER}").status_code == 404
    return ids


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_canary_reaches_a_log_line(
    log_format: str,
    canary_git: GitHttpServer,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    require_tools("git", "bwrap")
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - {{token: {BEARER}, name: canary-owner, admin: true}}\n")
    data_dir = tmp_path / "data"
    port = free_port()
    env = {
        "MLEXP_LOG_LEVEL": "DEBUG",
        "MLEXP_LOG_FORMAT": log_format,
        "MLEXP_TOKENS_FILE": str(tokens),
        "MLEXP_GIT_CA_BUNDLE": str(canary_git.ca_file),
        "MLEXP_CONFIG_FILE": str(tmp_path / "no-server.yaml"),
        "MLEXP_K8S_CONFIG_FILE": str(tmp_path / "no-k8s.yaml"),
    }
    with service_process(data_dir, env, port=port) as (_, url):
        headers = {"Authorization": f"Bearer {BEARER}"}
        with httpx.Client(base_url=url, timeout=120, headers=headers) as http:
            ex = Exchange(http)
            ids = exercise(ex, canary_git, s3_server)
    log = (data_dir.parent / f"service-{port}.log").read_text(errors="replace")
    run_logs = "\n".join(p.read_text(errors="replace") for p in data_dir.rglob("*.log"))

    # The paths above did log: the test cannot pass by logging nothing.
    assert "experiment created" in log
    assert "git failed" in log
    assert log.count("run failed") >= 2
    assert "run succeeded" in log

    for needle in needles():
        assert needle not in log, f"a canary ({needle[:12]}…) in the service's log"
        assert needle not in run_logs, f"a canary ({needle[:12]}…) in a run's log"
        for body in ex.bodies:
            assert needle not in body, f"a canary ({needle[:12]}…) in an answer"

    lines = [line for line in log.splitlines() if line.strip()]
    if log_format == "json":
        entries = [json.loads(line) for line in lines]  # every line is one object
        for entry in entries:
            assert {"time", "level", "logger", "message"} <= set(entry), entry
        created = [e for e in entries if e["message"] == "experiment created"]
        assert created[0]["request_id"] == ids["created"]
        git_failed = [e for e in entries if e["message"] == "git failed"]
        assert any(e.get("request_id") == ids["git refused"] for e in git_failed)
        assert any(e["logger"].startswith("uvicorn") for e in entries)
    else:
        stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+ "
        created = [line for line in lines if "experiment created" in line]
        assert re.match(stamp, created[0]), created[0]
        assert f"request_id={ids['created']}" in created[0]
        assert any(re.match(stamp + "Uvicorn running", line) for line in lines) or any(
            re.match(stamp, line) and " uvicorn" in line for line in lines
        )
