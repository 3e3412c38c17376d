"""Every security rule of DESIGN.md gets a request that breaks it: refused, nothing changed.

"Nothing changed" is checked on the data dir (no repo, secret, remote or work dir
appears), on the listings (no experiment or run recorded), and on the response
(problem+json that never echoes a credential).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from controller.settings import Settings
from tests.support.bundles import QUICK_DVC, create, small_parts
from tests.support.service import RunningService, service_in_thread

pytestmark = pytest.mark.integration

SECRET = "tok-DO-NOT-LEAK-42"


def snapshot(service: RunningService) -> tuple[list[str], int, int]:
    root = service.settings.data_dir
    files = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("state.db")
    )
    experiments = len(service.http.get("/experiments").json())
    runs = len(service.http.get("/runs").json())
    return files, experiments, runs


def assert_refused(
    service: RunningService, response: httpx.Response, status: int
) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert body["status"] == status
    assert body["detail"]
    assert SECRET not in response.text
    return body


def post_bundle(
    service: RunningService, parts: list[tuple[str, tuple[str, bytes]]]
) -> httpx.Response:
    return service.http.post("/experiment/create", files=parts)


def with_file(name: str, data: bytes = b"x") -> list[tuple[str, tuple[str, bytes]]]:
    return [*small_parts(QUICK_DVC), ("files", (name, data))]


BAD_BUNDLES = {
    "unknown repo_json key": small_parts(QUICK_DVC, repo_json={"git": {"tokn": SECRET}}),
    "ext:: transport": small_parts(QUICK_DVC, repo_json={"git": {"url": "ext::sh -c id"}}),
    "option-looking url": small_parts(QUICK_DVC, repo_json={"git": {"url": "--upload-pack=id"}}),
    "credentials in url": small_parts(
        QUICK_DVC, repo_json={"git": {"url": f"https://bot:{SECRET}@git.example.com/x.git"}}
    ),
    "plain http url": small_parts(
        QUICK_DVC, repo_json={"git": {"url": "http://example.com/x.git"}}
    ),
    "absolute file name": with_file("/etc/passwd"),
    "dot-dot file name": with_file("src/../../x.py"),
    "backslash file name": with_file("src\\x.py"),
    ".git file name": with_file(".git/hooks/post-checkout"),
    ".dvc file name": with_file(".dvc/config"),
    "dvc.yaml as a file": with_file("dvc.yaml"),
    "old-style .dvc stage": with_file("data.dvc", b"cmd: touch /tmp/x\nouts:\n- path: x\n"),
    "cycle": small_parts(
        "stages:\n"
        "  a: {cmd: x, deps: [b.txt], outs: [a.txt]}\n"
        "  b: {cmd: y, deps: [a.txt], outs: [b.txt]}\n"
    ),
    "unknown stage key": small_parts("stages:\n  a: {cmd: x, outz: [a.txt]}\n"),
    "yaml alias bomb": small_parts(
        QUICK_DVC,
        params="a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        ),
    ),
    "deep yaml": small_parts(QUICK_DVC, params="x: " + "[" * 500 + "]" * 500 + "\n"),
    "params not a mapping": small_parts(QUICK_DVC, params="- 1\n- 2\n"),
    "stage param missing": small_parts(QUICK_DVC, params="y: 1\n"),
    "params with a date": small_parts(QUICK_DVC, params="x: 1\nwhen: 2026-01-01\n"),
    "params with an int key": small_parts(QUICK_DVC, params="x: {1: a}\n"),
}


@pytest.mark.parametrize("case", list(BAD_BUNDLES))
def test_bad_bundles_are_refused_and_leave_nothing(service: RunningService, case: str) -> None:
    before = snapshot(service)
    body = assert_refused(service, post_bundle(service, BAD_BUNDLES[case]), 422)
    assert snapshot(service) == before
    if case == "cycle":
        assert body["stages"] == ["a", "b"] or body["stages"] == ["b", "a"]
        assert "cycle" in str(body["detail"])


def test_upload_over_the_cap_is_413(service: RunningService) -> None:
    before = snapshot(service)
    big = with_file("data/big.bin", b"0" * (service.settings.max_upload_bytes + 1))
    assert_refused(service, post_bundle(service, big), 413)

    def chunks() -> object:
        # A well-formed start, so only the size can stop the parser, and no Content-Length.
        yield b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="big"\r\n\r\n'
        for _ in range(service.settings.max_upload_bytes // 65536 + 2):
            yield b"1" * 65536

    chunked = service.http.post(
        "/experiment/create",
        content=chunks(),  # type: ignore[arg-type]
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert_refused(service, chunked, 413)
    assert snapshot(service) == before


def test_missing_parts_are_problem_json(service: RunningService) -> None:
    body = assert_refused(
        service, service.http.post("/experiment/create", files=small_parts(QUICK_DVC)[:2]), 422
    )
    assert "hyperparams_file" in str(body["detail"])


def test_bad_run_requests_record_nothing(service: RunningService) -> None:
    experiment = create(service.http, small_parts(QUICK_DVC))
    before = snapshot(service)
    cases = [
        ({"experiment_id": experiment["experiment_id"], "params": {"y": 1}}, 422),
        ({"experiment_id": experiment["experiment_id"], "params": {"x.y": 1}}, 422),
        ({"experiment_id": experiment["experiment_id"], "resource": "sts/Bad Name"}, 422),
        ({"experiment_id": experiment["experiment_id"], "resource": "job"}, 422),
        ({"experiment_id": experiment["experiment_id"], "surprise": True}, 422),
        ({"experiment_id": "exp-0000000000"}, 404),
        ({}, 422),
    ]
    for payload, status in cases:
        assert_refused(service, service.http.post("/experiment/run", json=payload), status)
    assert_refused(service, service.http.post("/experiment/run", content=b"{not json"), 422)
    assert snapshot(service) == before


def test_unknown_routes_and_ids_are_problem_json(service: RunningService) -> None:
    assert_refused(service, service.http.get("/runs/run-0000000000"), 404)
    assert_refused(service, service.http.get("/experiments/nope"), 404)
    assert_refused(service, service.http.get("/no/such/route"), 404)


def test_tokens_gate_every_endpoint(settings: Settings, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "tokens:\n"
        "  - {token: alice-0123456789abcdef, name: alice, namespaces: [team-a]}\n"
        "  - {token: bob-0123456789abcdefgh, name: bob, namespaces: [team-b]}\n"
    )
    secured = settings.model_copy(update={"tokens_file": tokens})
    with service_in_thread(secured) as service:
        http = service.http
        assert_refused(service, http.get("/experiments"), 401)
        assert_refused(
            service, http.get("/experiments", headers={"Authorization": "Bearer nope"}), 401
        )
        alice = {"Authorization": "Bearer alice-0123456789abcdef"}
        bob = {"Authorization": "Bearer bob-0123456789abcdefgh"}
        response = http.post("/experiment/create", files=small_parts(QUICK_DVC), headers=alice)
        assert response.status_code == 201, response.text
        experiment_id = response.json()["experiment_id"]
        assert response.json()["owner"] == "alice"
        # Another token neither sees nor runs alice's experiment.
        assert_refused(service, http.get(f"/experiments/{experiment_id}", headers=bob), 404)
        assert http.get("/experiments", headers=bob).json() == []
        run = http.post("/experiment/run", json={"experiment_id": experiment_id}, headers=bob)
        assert_refused(service, run, 404)
        assert http.get("/healthz").status_code == 200  # liveness needs no token


def test_credentials_never_come_back(service: RunningService) -> None:
    repo_json = {
        "git": {"branch": "main"},
        "storage": {"access_key_id": SECRET, "secret_access_key": SECRET},
    }
    experiment = create(service.http, small_parts(QUICK_DVC, repo_json=repo_json))
    assert SECRET not in json.dumps(experiment)
    assert SECRET not in service.http.get(f"/experiments/{experiment['experiment_id']}").text
    assert SECRET not in service.http.get("/openapi.json").text
