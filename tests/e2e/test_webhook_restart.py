"""Webhook deliveries survive a restart of the service (a process): deliveries pending
while the receiver is down are all delivered, once each and in order, by the restarted
service once the receiver is up."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook as Verifier

from tests.support.receiver import Receiver
from tests.support.service import free_port, service_process
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

QUICK_RETRIES = {
    "MLEXP_DELIVERIES__FIRST_RETRY_SECONDS": "0.2",
    "MLEXP_DELIVERIES__MAX_RETRY_SECONDS": "0.5",
    "MLEXP_DELIVERIES__MAX_ATTEMPTS": "100",
}


def test_pending_deliveries_survive_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()  # the receiver's, down for now
    url = f"http://127.0.0.1:{port}/hook"
    with service_process(data, QUICK_RETRIES) as (_, service_url):
        http = httpx.Client(base_url=service_url, timeout=30)
        created = http.post("/webhooks", json={"url": url, "events": ["run.failed"]}).json()
        wid, secret = created["webhook_id"], created["secret"]
        event_ids = [http.post(f"/webhooks/{wid}/test").json()["event_id"] for _ in range(3)]
        wait_for(
            lambda: (
                (rows := http.get(f"/webhooks/{wid}/deliveries").json())
                and rows[-1]["attempts"] >= 2
            ),
            30,
            what="the first delivery to have failed twice",
        )
        rows = http.get(f"/webhooks/{wid}/deliveries").json()
        assert [r["status"] for r in rows] == ["pending"] * 3
        assert "cannot connect" in rows[-1]["last_error"]
        http.close()

    with Receiver(port=port) as receiver, service_process(data, QUICK_RETRIES) as (_, service_url):
        got = receiver.wait_count(3, timeout=60)
        with httpx.Client(base_url=service_url, timeout=30) as http:
            rows = wait_for(
                lambda: (
                    (rows := http.get(f"/webhooks/{wid}/deliveries").json())
                    and all(r["status"] == "delivered" for r in rows)
                    and rows
                ),
                30,
                what="every delivery to be delivered",
            )
        assert len(receiver.received()) == 3
    assert [r.headers["webhook-id"] for r in got] == event_ids  # in order, once each
    for received in got:
        assert json.loads(received.body)["type"] == "io.mlexp.ping"
        Verifier(secret).verify(received.body, received.headers)
    assert len(rows) == 3
