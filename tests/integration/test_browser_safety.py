"""Browser safety, attacked for real over HTTP: CSRF and DNS rebinding against the token-less
service (a web page posting a bundle whose stage runs anything, then running it with the
seed's form), CORS only where configured, tokens from the Authorization header only.

Each refused attack is followed by a check that nothing was created: no experiment, no
run, no repository, no secret in the data dir.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from controller.settings import Settings
from tests.support.bundles import QUICK_DVC, create, small_parts
from tests.support.service import RunningService, service_in_thread

pytestmark = pytest.mark.integration

EVIL = "http://evil.example"
PROBLEM = "application/problem+json"


def hostile_bundle(marker: Path) -> list[tuple[str, tuple[str, bytes]]]:
    """A valid bundle whose only stage writes outside its work dir: what the page wants run."""
    dvc_yaml = (
        "stages:\n"
        "  pwn:\n"
        f"    cmd: python -c \"open('{marker}', 'w').write('pwned')\"\n"
        "    always_changed: true\n"
    )
    return small_parts(dvc_yaml)


def assert_problem(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    for word in words:
        assert word in body["detail"]


def assert_nothing_created(service: RunningService) -> None:
    assert service.http.get("/experiments").json() == []
    assert service.http.get("/runs").json() == []
    data = service.settings.data_dir
    for kept in (service.settings.repos_dir, service.settings.remotes_dir, data / "secrets"):
        assert not kept.exists() or not any(kept.iterdir()), kept


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


def test_csrf_create_from_a_foreign_page_is_refused(
    service: RunningService, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    parts = hostile_bundle(marker)
    forged = service.http.post("/experiment/create", files=parts, headers={"Origin": EVIL})
    assert_problem(forged, 403, "allowed_origins")
    # The browser's fetch metadata alone, without an Origin, is refused too.
    fetch_meta = service.http.post(
        "/experiment/create", files=parts, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert_problem(fetch_meta, 403, "cross-site")
    # A sandboxed frame sends Origin: null.
    null_origin = service.http.post("/experiment/create", files=parts, headers={"Origin": "null"})
    assert_problem(null_origin, 403)
    assert_nothing_created(service)
    assert not marker.exists()
    # The same bundle from curl, the CLI or Swagger UI (same origin) is a valid one.
    same_origin = service.http.post(
        "/experiment/create", files=parts, headers={"Origin": service.url}
    )
    assert same_origin.status_code == 201, same_origin.text
    assert service.http.post("/experiment/create", files=parts).status_code == 201


def test_dns_rebinding_is_refused(service: RunningService) -> None:
    # The page at http://evil.example:8080 had its name re-pointed at 127.0.0.1: to the
    # browser the request is same-origin, and the Host header is the only trace of it.
    rebound = {"Host": "evil.example:8080", "Origin": "http://evil.example:8080"}
    forged = service.http.post("/experiment/create", files=small_parts(QUICK_DVC), headers=rebound)
    assert_problem(forged, 400, "allowed_hosts")
    # Reading is refused too (the page could read the answers: it is "same-origin").
    for path in ("/experiments", "/runs", "/docs", "/openapi.json"):
        assert_problem(service.http.get(path, headers={"Host": "evil.example:8080"}), 400)
    assert_problem(service.http.get("/experiments", headers={"Host": "2130706433"}), 400)
    assert_nothing_created(service)
    # Kubernetes probes send the pod's IP as Host: those answer whatever the name (the
    # others do not; /metrics only while it wants an admin's token, as Prometheus
    # scrapes: tests/integration/test_metrics_endpoint.py).
    for probe in ("/healthz", "/readyz"):
        assert service.http.get(probe, headers={"Host": "10.1.2.3:8080"}).status_code == 200
    # Token-less, /metrics is anyone's: a rebound name must not read it.
    assert_problem(service.http.get("/metrics", headers={"Host": "10.1.2.3:8080"}), 400)
    assert_problem(service.http.post("/readyz", headers={"Host": "10.1.2.3:8080"}), 400)
    for loopback in ("localhost", "LOCALHOST:8080", "127.0.0.1", "[::1]:1"):
        assert service.http.get("/experiments", headers={"Host": loopback}).status_code == 200


def test_seed_form_run_from_a_foreign_page_is_refused(settings: Settings, tmp_path: Path) -> None:
    # The user's own experiment exists (its repo under a local root); the page only needs
    # its repo_json to run it.
    repo = tmp_path / "mine.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(repo)], check=True)
    repo_json = {"git": {"url": str(repo), "branch": "main"}}
    with service_in_thread(settings.model_copy(update={"local_roots": [tmp_path]})) as service:
        experiment = create(service.http, small_parts(QUICK_DVC, repo_json=repo_json))
        form = {"resource": "local", "namespace": "default"}
        files = {"repo_json": ("repo.json", json.dumps(repo_json).encode())}
        forged = service.http.post(
            "/experiment/run", data=form, files=files, headers={"Origin": EVIL}
        )
        assert_problem(forged, 403, "allowed_origins")
        rebound = service.http.post(
            "/experiment/run", data=form, files=files, headers={"Host": "evil.example:8080"}
        )
        assert_problem(rebound, 400, "allowed_hosts")
        assert service.http.get("/runs").json() == []
        # Without the foreign Origin the same form starts a run: the refusal was the Origin's.
        accepted = service.http.post("/experiment/run", data=form, files=files)
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["experiment_id"] == experiment["experiment_id"]
        service.wait_run(accepted.json()["run_id"])


def test_refused_before_the_body_is_read(service: RunningService) -> None:
    """The 403 comes back while the client is still holding most of the body back."""
    port = int(service.url.rsplit(":", 1)[1])
    head = (
        "POST /experiment/create HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        f"Origin: {EVIL}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n"
        "Content-Length: 1000000\r\n\r\n"
        "--x\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        answer = sock.recv(4096).decode("latin-1")
    assert answer.startswith("HTTP/1.1 403"), answer
    assert PROBLEM in answer


def test_no_cors_by_default(service: RunningService) -> None:
    ui = "http://ui.example"
    read = service.http.get("/experiments", headers={"Origin": ui})
    assert read.status_code == 200
    assert cors_headers(read) == {}
    preflight = service.http.options(
        "/experiment/create",
        headers={"Origin": ui, "Access-Control-Request-Method": "POST"},
    )
    assert cors_headers(preflight) == {}
    assert_problem(
        service.http.post(
            "/experiment/create", files=small_parts(QUICK_DVC), headers={"Origin": ui}
        ),
        403,
    )


def test_configured_origins_and_hosts(settings: Settings) -> None:
    ui = "https://ui.example"
    configured = settings.model_copy(
        update={"allowed_origins": [ui], "allowed_hosts": ["mlexp.internal"]}
    )
    with service_in_thread(configured) as service:
        http = service.http
        preflight = http.options(
            "/experiment/create",
            headers={
                "Origin": ui,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == ui
        assert "Authorization" in preflight.headers["access-control-allow-headers"]
        assert "access-control-allow-credentials" not in preflight.headers

        created = http.post(
            "/experiment/create", files=small_parts(QUICK_DVC), headers={"Origin": ui}
        )
        assert created.status_code == 201, created.text
        assert created.headers["access-control-allow-origin"] == ui
        assert "access-control-allow-credentials" not in created.headers
        assert "Origin" in created.headers["vary"]

        foreign = http.post(
            "/experiment/create", files=small_parts(QUICK_DVC), headers={"Origin": EVIL}
        )
        assert_problem(foreign, 403)
        assert cors_headers(foreign) == {}
        foreign_read = http.get("/experiments", headers={"Origin": EVIL})
        assert foreign_read.status_code == 200
        assert "access-control-allow-origin" not in foreign_read.headers
        foreign_preflight = http.options(
            "/experiment/create", headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in foreign_preflight.headers

        assert http.get("/experiments", headers={"Host": "mlexp.internal:8080"}).status_code == 200
        assert_problem(http.get("/experiments", headers={"Host": "other.internal"}), 400)
        assert len(http.get("/experiments").json()) == 1


def test_tokens_come_from_the_authorization_header_only(settings: Settings, tmp_path: Path) -> None:
    token = "alice-0123456789abcdef"
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - {{token: {token}, name: alice}}\n")
    with service_in_thread(settings.model_copy(update={"tokens_file": tokens})) as service:
        http = service.http
        cookie = f"token={token}; access_token={token}; Authorization=Bearer%20{token}"
        assert_problem(http.get("/experiments", headers={"Cookie": cookie}), 401, "bearer token")
        for query in ("token", "access_token", "bearer", "authorization"):
            assert_problem(http.get("/experiments", params={query: token}), 401)
        created = http.post(
            "/experiment/create",
            files=small_parts(QUICK_DVC),
            params={"token": token},
            headers={"Cookie": cookie},
        )
        assert_problem(created, 401)
        assert http.get("/experiments", headers={"Authorization": f"Bearer {token}"}).json() == []
