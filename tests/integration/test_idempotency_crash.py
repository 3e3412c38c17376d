"""An Idempotency-Key's answer is recorded in the transaction that records the run.

So a crash between queueing the run and recording the answer cannot make a retry queue
the run twice. The crash is simulated by making the answer's own recording (after the
handler returned) do nothing, and restarting the service, which drops unanswered keys.
"""

from __future__ import annotations

import pytest

from controller.services.idempotency import IdempotencyService
from controller.settings import Settings
from tests.support.bundles import QUICK_DVC, create, small_parts
from tests.support.service import service_in_thread

pytestmark = pytest.mark.integration


def test_a_retry_after_a_crash_gets_the_first_run(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = {"resource": "local", "params": {"x": 3}}
    headers = {"Idempotency-Key": "crash-window-1"}
    with service_in_thread(settings) as service:
        experiment = create(service.http, small_parts(QUICK_DVC, "x: 1\n"))
        body["experiment_id"] = experiment["experiment_id"]
        with monkeypatch.context() as crash:
            crash.setattr(IdempotencyService, "record", lambda *args, **kwargs: None)
            first = service.http.post("/experiment/run", json=body, headers=headers)
        assert first.status_code == 202, first.text
        service.wait_run(first.json()["run_id"])
    with service_in_thread(settings) as service:  # a restart drops keys without an answer
        again = service.http.post("/experiment/run", json=body, headers=headers)
        runs = service.http.get("/runs").json()
    assert again.status_code == 202, again.text
    assert again.json()["run_id"] == first.json()["run_id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert [r["run_id"] for r in runs] == [first.json()["run_id"]]
