"""Per-principal quotas from the tokens file, over HTTP: ``max_active_runs`` (queued +
running runs) and ``requests_per_second``. A principal at its limit gets 429 with
Retry-After and problem+json; the others are not slowed down by it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from controller.settings import Settings
from tests.support.bundles import SLEEPY_DVC, small_parts
from tests.support.service import RunningService, service_in_thread

pytestmark = pytest.mark.integration

TOKENS = {
    "alice": "alice-0123456789abcdef",
    "bob": "bob-0123456789abcdefgh",
    "crowd": "crowd-0123456789abcdef",
    "slow": "slow-0123456789abcdefg",
}
TOKENS_FILE = f"""\
tokens:
  - {{token: {TOKENS["alice"]}, name: alice, max_active_runs: 1}}
  - {{token: {TOKENS["bob"]}, name: bob}}
  - {{token: {TOKENS["crowd"]}, name: crowd, max_active_runs: 2}}
  - {{token: {TOKENS["slow"]}, name: slow, requests_per_second: 1}}
"""


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def assert_too_many(response: httpx.Response, limit_name: str) -> int:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 429
    assert limit_name in body["detail"]
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit()
    assert int(retry_after) >= 1
    return int(retry_after)


@pytest.fixture
def quota_service(settings: Settings, tmp_path: Path) -> Iterator[RunningService]:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(TOKENS_FILE)
    with service_in_thread(settings.model_copy(update={"tokens_file": tokens})) as service:
        yield service


class Runs:
    """Runs submitted by the test, cancelled by their owners at the end (stages sleep)."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.experiments: dict[str, str] = {}
        self.owned: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def experiment(self, who: str) -> str:
        response = self.http.post(
            "/experiment/create", files=small_parts(SLEEPY_DVC), headers=auth(who)
        )
        assert response.status_code == 201, response.text
        self.experiments[who] = response.json()["experiment_id"]
        return self.experiments[who]

    def submit(self, who: str) -> httpx.Response:
        response = self.http.post(
            "/experiment/run", json={"experiment_id": self.experiments[who]}, headers=auth(who)
        )
        if response.status_code == 202:
            with self.lock:
                self.owned.append((who, response.json()["run_id"]))
        return response

    def cancel(self, who: str, run_id: str) -> None:
        response = self.http.post(
            f"/runs/{run_id}/cancel", headers=auth(who), params={"wait": "true"}
        )
        assert response.status_code in (200, 409), response.text

    def cancel_all(self) -> None:
        for who, run_id in self.owned:
            self.cancel(who, run_id)


def test_max_active_runs_per_principal(quota_service: RunningService) -> None:
    runs = Runs(quota_service.http)
    for who in ("alice", "bob"):
        runs.experiment(who)
    try:
        first = runs.submit("alice")
        assert first.status_code == 202, first.text
        second = runs.submit("alice")
        assert assert_too_many(second, "max_active_runs") >= 1
        assert "alice" in second.json()["detail"]
        # The refused run was not recorded; the first one is still active.
        mine = quota_service.http.get("/runs", headers=auth("alice")).json()
        assert [run["run_id"] for run in mine] == [first.json()["run_id"]]
        assert mine[0]["state"] in ("queued", "running")
        # Another principal is not held back by alice's quota.
        assert runs.submit("bob").status_code == 202
        assert runs.submit("bob").status_code == 202
        # Once alice's run is over, her quota is free again.
        runs.cancel("alice", first.json()["run_id"])
        assert runs.submit("alice").status_code == 202
    finally:
        runs.cancel_all()


def test_concurrent_submits_cannot_overshoot(quota_service: RunningService) -> None:
    runs = Runs(quota_service.http)
    runs.experiment("crowd")
    start = threading.Barrier(8)

    def submit() -> int:
        start.wait(timeout=30)
        return runs.submit("crowd").status_code

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = sorted(pool.map(lambda _: submit(), range(8)))
        assert statuses == [202, 202] + [429] * 6
        active = quota_service.http.get("/runs", headers=auth("crowd")).json()
        assert len(active) == 2
    finally:
        runs.cancel_all()


def test_request_rate_per_principal(quota_service: RunningService) -> None:
    http = quota_service.http
    # slow: 1 request per second, bursts of 2.
    burst = [http.get("/experiments", headers=auth("slow")) for _ in range(6)]
    assert [r.status_code for r in burst[:2]] == [200, 200]
    refused = [r for r in burst if r.status_code == 429]
    assert len(refused) >= 3
    retry_after = assert_too_many(refused[0], "requests_per_second")
    # bob (the default, 50 per second) is not slowed down by slow's bucket.
    assert [http.get("/experiments", headers=auth("bob")).status_code for _ in range(6)] == [
        200
    ] * 6
    # After Retry-After, slow is served again.
    time.sleep(retry_after)
    assert http.get("/experiments", headers=auth("slow")).status_code == 200
    # Liveness needs no token and counts against nobody.
    assert all(http.get("/healthz").status_code == 200 for _ in range(5))
