"""``Idempotency-Key`` on ``POST /experiment/create`` and ``POST /experiment/run``, over HTTP,
with two token principals: a retry returns the first answer and creates nothing (no second
experiment, repo or run), a different body with the same key is a 422, another principal's
identical key is independent, a failed request leaves its key free, keys are bounded, and
50 concurrent submissions with one key make exactly one run. Then the store's side with a
clock the test controls: expiry after the TTL, claims left by a stopped service, and one
winner among concurrent claims.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request

from api.idempotency import request_fingerprint
from controller.adapters.store import Store
from controller.domain.errors import InvalidInput
from controller.services.idempotency import Answer, Claim, IdempotencyService
from controller.settings import IdempotencySettings, Settings
from tests.support.bundles import QUICK_DVC, SLEEPY_DVC, small_parts
from tests.support.service import RunningService, service_in_thread

pytestmark = pytest.mark.integration

TOKENS = {"alice": "alice-0123456789abcdef", "bob": "bob-0123456789abcdefgh"}
TOKENS_FILE = f"""\
tokens:
  - {{token: {TOKENS["alice"]}, name: alice, requests_per_second: 0}}
  - {{token: {TOKENS["bob"]}, name: bob, requests_per_second: 0}}
"""
REPLAYED = "idempotent-replayed"


def auth(who: str, key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {TOKENS[who]}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers


@pytest.fixture
def service(settings: Settings, tmp_path: Path) -> Iterator[RunningService]:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(TOKENS_FILE)
    with service_in_thread(settings.model_copy(update={"tokens_file": tokens})) as running:
        yield running


def experiments(service: RunningService, who: str) -> list[str]:
    response = service.http.get("/experiments", headers=auth(who))
    assert response.status_code == 200, response.text
    return [e["experiment_id"] for e in response.json()]


def runs(service: RunningService, who: str) -> list[str]:
    response = service.http.get("/runs", headers=auth(who))
    assert response.status_code == 200, response.text
    return [r["run_id"] for r in response.json()]


def repos(service: RunningService) -> list[str]:
    repos_dir = service.settings.repos_dir
    return sorted(p.name for p in repos_dir.iterdir()) if repos_dir.is_dir() else []


def create(
    service: RunningService, who: str, key: str | None, params: str = "x: 1\n"
) -> httpx.Response:
    return service.http.post(
        "/experiment/create", files=small_parts(QUICK_DVC, params), headers=auth(who, key)
    )


def cancel_all(service: RunningService, who: str) -> None:
    for run_id in runs(service, who):
        response = service.http.post(
            f"/runs/{run_id}/cancel", headers=auth(who), params={"wait": "true"}
        )
        assert response.status_code in (200, 409), response.text


def test_create_replays_the_first_answer_and_creates_nothing(service: RunningService) -> None:
    first = create(service, "alice", "create-1")
    assert first.status_code == 201, first.text
    assert REPLAYED not in first.headers
    experiment_id = first.json()["experiment_id"]
    assert repos(service) == [f"{experiment_id}.git"]

    # The same parts again: httpx draws a new multipart boundary, so the bytes differ.
    again = create(service, "alice", "create-1")
    assert again.status_code == 201, again.text
    assert again.headers[REPLAYED] == "true"
    assert again.json() == first.json()
    assert again.content == first.content
    assert experiments(service, "alice") == [experiment_id]
    assert repos(service) == [f"{experiment_id}.git"]

    # Another body under the same key: refused, nothing created.
    other = create(service, "alice", "create-1", params="x: 2\n")
    assert other.status_code == 422, other.text
    assert other.headers["content-type"] == "application/problem+json"
    assert "different request" in other.json()["detail"]
    # ...and so is the key on another endpoint.
    misuse = service.http.post(
        "/experiment/run", json={"experiment_id": experiment_id}, headers=auth("alice", "create-1")
    )
    assert misuse.status_code == 422, misuse.text
    assert experiments(service, "alice") == [experiment_id]
    assert runs(service, "alice") == []
    assert repos(service) == [f"{experiment_id}.git"]


def test_keys_are_per_principal(service: RunningService) -> None:
    alice = create(service, "alice", "shared-key")
    bob = create(service, "bob", "shared-key", params="x: 2\n")
    assert alice.status_code == bob.status_code == 201, (alice.text, bob.text)
    assert REPLAYED not in bob.headers
    assert alice.json()["experiment_id"] != bob.json()["experiment_id"]
    assert experiments(service, "alice") == [alice.json()["experiment_id"]]
    assert experiments(service, "bob") == [bob.json()["experiment_id"]]
    assert len(repos(service)) == 2
    # Each one's replay is their own.
    assert create(service, "bob", "shared-key", params="x: 2\n").json() == bob.json()
    assert create(service, "alice", "shared-key").json() == alice.json()


def test_a_failed_request_leaves_its_key_free(service: RunningService) -> None:
    broken = service.http.post(
        "/experiment/create",
        files=small_parts("stages: [not, a, mapping]\n"),
        headers=auth("alice", "retry-me"),
    )
    assert broken.status_code == 422, broken.text
    assert experiments(service, "alice") == []
    fixed = create(service, "alice", "retry-me")
    assert fixed.status_code == 201, fixed.text
    assert REPLAYED not in fixed.headers
    assert experiments(service, "alice") == [fixed.json()["experiment_id"]]


def test_keys_are_bounded(service: RunningService) -> None:
    bad_keys: list[bytes] = [b"k" * 256, b"caf\xe9", b"tab\there", b""]
    for bad in bad_keys:
        headers = [(b"Authorization", f"Bearer {TOKENS['alice']}".encode())]
        response = service.http.post(
            "/experiment/create",
            files=small_parts(QUICK_DVC),
            headers=[*headers, (b"Idempotency-Key", bad)],
        )
        assert response.status_code == 422, (bad, response.text)
        assert "Idempotency-Key" in response.json()["detail"]
    assert experiments(service, "alice") == []
    longest = create(service, "alice", "k" * 255)
    assert longest.status_code == 201, longest.text


def test_run_replays_and_refuses_other_params(service: RunningService) -> None:
    experiment = create(service, "alice", None)
    experiment_id = experiment.json()["experiment_id"]
    body = {"experiment_id": experiment_id, "params": {"x": 3}}
    try:
        first = service.http.post("/experiment/run", json=body, headers=auth("alice", "run-1"))
        assert first.status_code == 202, first.text
        again = service.http.post("/experiment/run", json=body, headers=auth("alice", "run-1"))
        assert again.status_code == 202, again.text
        assert again.headers[REPLAYED] == "true"
        assert again.json()["run_id"] == first.json()["run_id"]
        other = service.http.post(
            "/experiment/run",
            json={**body, "params": {"x": 4}},
            headers=auth("alice", "run-1"),
        )
        assert other.status_code == 422, other.text
        # Without a key, a POST is a new request as before.
        plain = service.http.post("/experiment/run", json=body, headers=auth("alice"))
        assert plain.status_code == 202, plain.text
        assert sorted(runs(service, "alice")) == sorted(
            [first.json()["run_id"], plain.json()["run_id"]]
        )
    finally:
        cancel_all(service, "alice")


def test_fifty_concurrent_submissions_with_one_key_make_one_run(service: RunningService) -> None:
    experiment = service.http.post(
        "/experiment/create", files=small_parts(SLEEPY_DVC), headers=auth("alice")
    )
    assert experiment.status_code == 201, experiment.text
    body = {"experiment_id": experiment.json()["experiment_id"]}
    start = threading.Barrier(50)

    def submit(_: int) -> httpx.Response:
        with httpx.Client(base_url=service.url, timeout=60) as client:
            start.wait(timeout=60)
            return client.post("/experiment/run", json=body, headers=auth("alice", "burst"))

    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            answers = list(pool.map(submit, range(50)))
        assert [a.status_code for a in answers] == [202] * 50, [a.text for a in answers]
        assert len({a.json()["run_id"] for a in answers}) == 1
        assert sum(REPLAYED not in a.headers for a in answers) == 1  # one did the work
        assert runs(service, "alice") == [answers[0].json()["run_id"]]
    finally:
        cancel_all(service, "alice")


def test_seed_form_submissions_replay(service: RunningService) -> None:
    experiment_id = create(service, "alice", None).json()["experiment_id"]
    form = {"experiment_id": experiment_id, "params": '{"x": 5}'}
    files = {"repo_json": ("repo.json", b"{}")}
    try:
        first = service.http.post(
            "/experiment/run", data=form, files=files, headers=auth("alice", "seed-1")
        )
        assert first.status_code == 202, first.text
        again = service.http.post(
            "/experiment/run", data=form, files=files, headers=auth("alice", "seed-1")
        )
        assert again.status_code == 202, again.text
        assert again.headers[REPLAYED] == "true"
        assert again.json()["run_id"] == first.json()["run_id"]
        assert runs(service, "alice") == [first.json()["run_id"]]
    finally:
        cancel_all(service, "alice")


async def json_fingerprint(path: str, body: bytes) -> str:
    """What the service computes for a JSON POST (the test holds the key in its place)."""

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    request = Request(
        {
            "type": "http",
            "method": "POST",
            "path": path,
            "headers": [(b"content-type", b"application/json")],
            "query_string": b"",
        },
        receive,  # type: ignore[arg-type]
    )
    return await request_fingerprint(request)


def test_a_request_waits_for_the_holder_of_its_key(settings: Settings, tmp_path: Path) -> None:
    """While another request holds the key, a retry waits for its answer and replays it;
    if none comes within wait_seconds, it gets 409 and nothing is created."""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(TOKENS_FILE)
    update = {
        "tokens_file": tokens,
        "idempotency": IdempotencySettings(wait_seconds=1.0),
    }
    body = json.dumps({"experiment_id": "exp-anything"}).encode()
    fingerprint = asyncio.run(json_fingerprint("/experiment/run", body))
    with service_in_thread(settings.model_copy(update=update)) as running:
        holder = Store(running.settings.db_path)  # a second connection, as another worker
        try:
            assert holder.claim_idempotency_key("alice", "held", fingerprint, now=time.time(),
                                                expired_before=0) is None  # fmt: skip
            headers = {**auth("alice", "held"), "Content-Type": "application/json"}
            began = time.monotonic()
            busy = running.http.post("/experiment/run", content=body, headers=headers)
            assert busy.status_code == 409, busy.text
            assert "in progress" in busy.json()["detail"]
            assert time.monotonic() - began >= 0.9  # it waited before giving up

            def answer_soon() -> None:
                time.sleep(0.3)
                holder.record_idempotent_answer("alice", "held", 202, b'{"run_id": "run-x"}')

            recorder = threading.Thread(target=answer_soon)
            recorder.start()
            waited = running.http.post("/experiment/run", content=body, headers=headers)
            recorder.join()
            assert waited.status_code == 202, waited.text
            assert waited.headers[REPLAYED] == "true"
            assert waited.json() == {"run_id": "run-x"}
            assert runs(running, "alice") == []
        finally:
            holder.close()


# -- the store's side, with a clock the test controls -------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_answers_expire_after_the_ttl(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    clock = Clock()
    keys = IdempotencyService(store, ttl_seconds=3600, clock=clock)
    assert keys.claim("alice", "k", "fp-1") is Claim.NEW
    assert keys.claim("alice", "k", "fp-1") is Claim.IN_PROGRESS
    keys.record("alice", "k", Answer(201, b'{"id": 1}'))
    clock.now += 3599
    assert keys.claim("alice", "k", "fp-1") == Answer(201, b'{"id": 1}')
    with pytest.raises(InvalidInput):
        keys.claim("alice", "k", "fp-2")
    clock.now += 2  # past the TTL: the key is free again, for any request
    assert keys.claim("alice", "k", "fp-2") is Claim.NEW
    store.close()


def test_expired_records_are_purged(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    clock = Clock()
    keys = IdempotencyService(store, ttl_seconds=3600, clock=clock)
    for n in range(5):
        assert keys.claim("alice", f"k{n}", "fp") is Claim.NEW
        keys.record("alice", f"k{n}", Answer(201, b"{}"))
    clock.now += 7200
    assert keys.claim("bob", "fresh", "fp") is Claim.NEW  # the periodic purge runs here
    assert store.purge_idempotency_keys(expired_before=0.0, unanswered=True) == 1  # "fresh"
    store.close()


def test_claims_of_a_stopped_service_are_released(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    clock = Clock()
    keys = IdempotencyService(store, ttl_seconds=3600, clock=clock)
    assert keys.claim("alice", "pending", "fp") is Claim.NEW
    assert keys.claim("alice", "done", "fp") is Claim.NEW
    keys.record("alice", "done", Answer(202, b"{}"))
    restarted = IdempotencyService(store, ttl_seconds=3600, clock=clock)
    assert restarted.claim("alice", "pending", "fp") is Claim.NEW
    assert restarted.claim("alice", "done", "fp") == Answer(202, b"{}")
    store.close()


def test_one_of_many_concurrent_claims_wins(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    keys = IdempotencyService(store, ttl_seconds=3600)
    start = threading.Barrier(20)

    def claim(_: int) -> Claim | Answer:
        start.wait(timeout=30)
        return keys.claim("alice", "k", "fp")

    with ThreadPoolExecutor(max_workers=20) as pool:
        outcomes = list(pool.map(claim, range(20)))
    assert outcomes.count(Claim.NEW) == 1
    assert outcomes.count(Claim.IN_PROGRESS) == 19
    store.close()
