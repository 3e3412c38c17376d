"""Webhooks for real: the app over HTTP, real runs (git, DVC, S3 on loopback) and real
receivers (threaded ``http.server`` on loopback). Every delivery's signature is checked
with the ``standardwebhooks`` package and its envelope read with ``cloudevents``.

Covers: a run's ``run.started`` then ``run.succeeded`` delivered in order to the
experiment's webhook (not to one scoped to another experiment), with the run's public
view and no credential of the bundle; a receiver failing 3 times then succeeding (one
delivery, delivered, 4 attempts, the same ``webhook-id`` each time); a hanging receiver
not delaying another webhook (nor the next delivery of its own jumping the queue); tenants
(B's events never reach A's webhook; A's webhook is 404 to B); URLs the egress policy
refuses (422, at creation; at send time, not retried); ``sweep.finished``,
``model.registered`` and ``model.promoted``; deleting drops pending deliveries; the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from standardwebhooks import Webhook as Verifier

from controller.adapters.locations import LocationGuard
from controller.adapters.webhooks import WebhookPoster
from controller.domain.egress import EgressPolicy
from controller.metrics import REGISTRY
from controller.settings import DeliverySettings, Settings, WebhookSettings
from tests.support.bundles import QUICK_DVC, create, small_parts, start
from tests.support.gitserver import GitHttpServer
from tests.support.receiver import Received, Receiver
from tests.support.s3server import S3Server
from tests.support.service import REPO_ROOT, RunningService, service_in_thread
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

TOKEN_A = "webhook-tenant-a-0123456789"
TOKEN_B = "webhook-tenant-b-9876543210"
GIT_TOKEN = "tok-0123456789abcdef"  # the git test server's password


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "deliveries": DeliverySettings(
                max_attempts=6, first_retry_seconds=0.2, max_retry_seconds=0.5
            ),
            "webhooks": WebhookSettings(source="https://mlexp.test", read_timeout_seconds=30),
        }
    )


def add_webhook(http: httpx.Client, url: str, events: list[str], **extra: str) -> dict[str, Any]:
    response = http.post("/webhooks", json={"url": url, "events": events, **extra})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert created["secret"].startswith("whsec_")
    return created


def deliveries(http: httpx.Client, webhook_id: str, **query: Any) -> list[dict[str, Any]]:
    response = http.get(f"/webhooks/{webhook_id}/deliveries", params=query)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


def verified(secret: str, received: Received) -> dict[str, Any]:
    """The request's CloudEvent, after its signature and envelope were checked."""
    payload = Verifier(secret).verify(received.body, received.headers)
    event = from_http_event(HTTPMessage(headers=received.headers, body=received.body))
    assert event.get_specversion() == "1.0"
    assert event.get_id() == received.headers["webhook-id"]
    assert event.get_source() == "https://mlexp.test"
    assert event.get_datacontenttype() == "application/json"
    assert event.get_time() is not None
    assert event.get_data() == payload["data"]
    assert isinstance(payload, dict)
    return payload


def counter(outcome: str) -> float:
    value = REGISTRY.get_sample_value("mlexp_webhook_deliveries_total", {"outcome": outcome})
    return value or 0.0


# --- a run, end to end -----------------------------------------------------------------


@pytest.fixture
def credentialed(
    settings: Settings, git_server: GitHttpServer, s3_server: S3Server
) -> Iterator[tuple[RunningService, dict[str, Any], list[str]]]:
    """The service, and a repo_json with real credentials (git token, S3 keys)."""
    bucket = f"wh-{uuid.uuid4().hex[:8]}"
    s3_server.create_bucket(bucket)
    repo = {
        "git": {
            "url": git_server.create_bare(f"wh-{uuid.uuid4().hex[:8]}"),
            "username": "mlexp-bot",
            "token": GIT_TOKEN,
        },
        "dvc": {"url": f"s3://{bucket}/wh"},
        "storage": {
            "endpoint_url": s3_server.endpoint_url,
            "access_key_id": s3_server.access_key_id,
            "secret_access_key": s3_server.secret_access_key,
            "region": s3_server.region,
        },
    }
    canaries = [GIT_TOKEN, s3_server.access_key_id, s3_server.secret_access_key]
    with service_in_thread(settings.model_copy(update={"git_ca_bundle": git_server.ca_file})) as s:
        yield s, repo, canaries


def test_a_run_is_delivered_in_order_signed_and_without_credentials(
    credentialed: tuple[RunningService, dict[str, Any], list[str]],
) -> None:
    service, repo, canaries = credentialed
    http = service.http
    experiment = create(http, small_parts(QUICK_DVC, repo_json=repo))
    exp_id = str(experiment["experiment_id"])
    with Receiver() as receiver, Receiver() as elsewhere:
        hook = add_webhook(
            http, receiver.url, ["run.succeeded", "run.started"], experiment_id=exp_id
        )
        other = add_webhook(http, elsewhere.url, ["run.succeeded"], experiment_id="exp-other")
        run_id = start(http, exp_id, x=3)
        run = service.wait_run(run_id)
        assert run["state"] == "succeeded", run
        got = receiver.wait_count(2)
        # Deliveries are recorded when the events are published (before the run's state
        # is): two for this webhook, both sent; none for the other experiment's webhook.
        wait_for(
            lambda: (
                [r["status"] for r in deliveries(http, hook["webhook_id"])]
                == ["delivered", "delivered"]
            ),
            30,
            what="both deliveries to be marked delivered",
        )
        assert len(receiver.received()) == 2
        assert deliveries(http, other["webhook_id"]) == []
        assert elsewhere.received() == []

    started, succeeded = (verified(hook["secret"], r) for r in got)
    assert [started["type"], succeeded["type"]] == [
        "io.mlexp.run.started",
        "io.mlexp.run.succeeded",
    ]
    assert started["subject"] == succeeded["subject"] == run_id
    assert started["id"] != succeeded["id"]
    data = succeeded["data"]
    result = run["result"]
    assert isinstance(result, dict)
    assert data["state"] == "succeeded"
    assert data["experiment_id"] == exp_id
    assert data["metrics"] == {"x": 3}
    assert data["params"] == {"x": 3}
    for key in ("branch", "commit", "clone_command", "git_url"):
        assert data[key] == result[key]
        assert data[key]
    for received in got:
        text = received.body.decode() + json.dumps(received.headers)
        for canary in canaries:
            assert canary not in text
        assert received.path == "/hook"

    rows = deliveries(http, hook["webhook_id"])
    assert [(r["event_type"], r["status"], r["attempts"]) for r in rows] == [
        ("run.succeeded", "delivered", 1),
        ("run.started", "delivered", 1),
    ]  # newest first
    assert rows[0]["last_status_code"] == 204
    assert rows[0]["event_id"] == succeeded["id"]
    assert deliveries(http, other["webhook_id"]) == []
    # The secret is shown once: never listed, never in the database.
    listed = http.get("/webhooks").json()
    assert {h["webhook_id"] for h in listed} == {hook["webhook_id"], other["webhook_id"]}
    assert "secret" not in json.dumps(listed)
    assert "secret" not in http.get(f"/webhooks/{hook['webhook_id']}").json()
    data_dir = service.settings.data_dir
    stored = b"".join(p.read_bytes() for p in data_dir.glob("state.db*"))
    assert hook["secret"].encode() not in stored
    assert hook["secret"].removeprefix("whsec_").encode() not in stored


# --- retries, isolation of receivers --------------------------------------------------


def test_a_receiver_that_fails_three_times_gets_the_event_once(service: RunningService) -> None:
    http = service.http
    before = {o: counter(o) for o in ("delivered", "retried", "failed")}
    with Receiver(fail_first=3) as receiver:
        hook = add_webhook(http, receiver.url, ["run.failed"])
        ping = http.post(f"/webhooks/{hook['webhook_id']}/test")
        assert ping.status_code == 202, ping.text
        got = receiver.wait_count(4)
        row = wait_for(
            lambda: next(
                (r for r in deliveries(http, hook["webhook_id"]) if r["status"] != "pending"),
                None,
            ),
            30,
            what="the delivery to end",
        )
        # A delivery that ended is never sent again: the receiver's count is final.
        assert len(deliveries(http, hook["webhook_id"])) == 1
        assert len(receiver.received()) == 4
    assert row["status"] == "delivered"
    assert row["attempts"] == 4
    assert row["last_status_code"] == 204
    assert row["delivery_id"] == ping.json()["delivery_id"]
    assert row["event_type"] == "ping"
    assert {r.headers["webhook-id"] for r in got} == {ping.json()["event_id"]}
    bodies = {r.body for r in got}
    assert len(bodies) == 1  # the same event each time, signed afresh
    for received in got:
        assert verified(hook["secret"], received)["type"] == "io.mlexp.ping"
    assert counter("retried") - before["retried"] == 3
    assert counter("delivered") - before["delivered"] == 1
    assert counter("failed") == before["failed"]


def test_a_failing_delivery_shows_why_and_is_given_up(service: RunningService) -> None:
    http = service.http
    with Receiver(fail_first=100, fail_status=503) as receiver:
        hook = add_webhook(http, receiver.url, ["run.failed"])
        http.post(f"/webhooks/{hook['webhook_id']}/test")
        row = wait_for(
            lambda: next(iter(deliveries(http, hook["webhook_id"], status="failed")), None),
            30,
            what="the delivery to be given up",
        )
        assert len(receiver.received()) == 6  # deliveries.max_attempts
    assert row["attempts"] == 6
    assert row["last_status_code"] == 503
    # A short, printable excerpt of the receiver's answer, never its whole body.
    assert row["last_error"].startswith("HTTP 503: receiver says no:")
    assert len(row["last_error"]) <= 220
    assert "\x00" not in row["last_error"]
    assert "\x1b" not in row["last_error"]


def test_a_hanging_receiver_delays_no_other_webhook(service: RunningService) -> None:
    http = service.http
    with Receiver(hang=True) as hanging, Receiver() as healthy:
        stuck = add_webhook(http, hanging.url, ["run.failed"])
        fine = add_webhook(http, healthy.url, ["run.failed"])
        http.post(f"/webhooks/{stuck['webhook_id']}/test")
        hanging.wait_count(1, timeout=10)
        http.post(f"/webhooks/{stuck['webhook_id']}/test")  # waits behind the first
        asked = time.monotonic()
        http.post(f"/webhooks/{fine['webhook_id']}/test")
        got = healthy.wait_count(1, timeout=5)
        assert got[0].at - asked < 3
        verified(fine["secret"], got[0])
        assert len(hanging.received()) == 1  # its next delivery waits its turn
        pending = deliveries(http, stuck["webhook_id"], status="pending")
        assert len(pending) == 2


def test_deleting_a_webhook_drops_its_pending_deliveries(service: RunningService) -> None:
    http = service.http
    with Receiver(fail_first=1000) as receiver:
        hook = add_webhook(http, receiver.url, ["run.failed"])
        for _ in range(3):
            http.post(f"/webhooks/{hook['webhook_id']}/test")
        receiver.wait_count(2)
        assert http.delete(f"/webhooks/{hook['webhook_id']}").status_code == 204
        seen = len(receiver.received())
        time.sleep(1.0)
        assert len(receiver.received()) <= seen + 1  # one may have been in flight
    assert http.get(f"/webhooks/{hook['webhook_id']}").status_code == 404
    assert http.get(f"/webhooks/{hook['webhook_id']}/deliveries").status_code == 404
    secrets_dir = service.settings.data_dir / "secrets" / "webhooks"
    assert not (secrets_dir / hook["webhook_id"]).exists()


# --- tenants ----------------------------------------------------------------------------


@pytest.fixture
def tenants(settings: Settings, tmp_path: Path) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        f"tokens:\n  - {{token: {TOKEN_A}, name: tenant-a}}\n"
        f"  - {{token: {TOKEN_B}, name: tenant-b}}\n"
    )
    with service_in_thread(settings.model_copy(update={"tokens_file": tokens})) as service:
        headers = {"Authorization": f"Bearer {TOKEN_A}"}
        a = httpx.Client(base_url=service.url, timeout=120, headers=headers)
        headers = {"Authorization": f"Bearer {TOKEN_B}"}
        b = httpx.Client(base_url=service.url, timeout=120, headers=headers)
        with a, b:
            yield a, b


def test_tenants_see_and_receive_only_their_own(
    tenants: tuple[httpx.Client, httpx.Client],
) -> None:
    a, b = tenants
    with Receiver() as for_a, Receiver() as for_b:
        hook_a = add_webhook(a, for_a.url, ["run.succeeded", "run.started"])
        hook_b = add_webhook(b, for_b.url, ["run.succeeded"])
        exp_b = create(b, small_parts(QUICK_DVC))
        run_b = start(b, exp_b["experiment_id"], x=2)
        event = verified(hook_b["secret"], for_b.wait_count(1)[0])
        assert event["subject"] == run_b
        # The event was published (B got it): nothing was recorded for A's webhook.
        assert deliveries(a, hook_a["webhook_id"]) == []
        assert for_a.received() == []

        wid = hook_a["webhook_id"]
        for method, path in [
            ("GET", f"/webhooks/{wid}"),
            ("DELETE", f"/webhooks/{wid}"),
            ("POST", f"/webhooks/{wid}/test"),
            ("GET", f"/webhooks/{wid}/deliveries"),
        ]:
            response = b.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
        assert [h["webhook_id"] for h in b.get("/webhooks").json()] == [hook_b["webhook_id"]]
        assert [h["webhook_id"] for h in a.get("/webhooks").json()] == [wid]
        assert deliveries(a, wid) == []  # B's "test" recorded nothing for A's webhook
        assert for_a.received() == []
        assert a.get(f"/webhooks/{wid}").status_code == 200


# --- the egress policy ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:10.0.0.1]/hook",
        "http://192.168.1.1:8080/x",
        "https://0.0.0.0/",
    ],
)
def test_urls_the_egress_policy_refuses_get_422(service: RunningService, url: str) -> None:
    response = service.http.post("/webhooks", json={"url": url, "events": ["run.failed"]})
    assert response.status_code == 422, response.text
    problem = response.json()
    assert "egress" in problem["detail"] or "host" in problem["detail"]
    assert url.split("/")[2] not in problem["detail"]  # the address is not echoed
    assert service.http.get("/webhooks").json() == []


@pytest.mark.parametrize(
    "body",
    [
        {"url": "https://example.com/x", "events": []},
        {"url": "https://example.com/x", "events": ["run.exploded"]},
        {"url": "https://user:pw@example.com/x", "events": ["run.failed"]},
        {"url": "file:///etc/passwd", "events": ["run.failed"]},
    ],
)
def test_bad_webhooks_get_422(service: RunningService, body: dict[str, Any]) -> None:
    response = service.http.post("/webhooks", json=body)
    assert response.status_code == 422, response.text
    assert "pw" not in response.text
    assert service.http.get("/webhooks").json() == []


def test_loopback_is_refused_where_the_policy_says_so_also_at_send_time(tmp_path: Path) -> None:
    """The kubernetes profile reaches public addresses only; allowed_networks opens one."""
    with Receiver() as receiver:
        strict = LocationGuard(
            profile="kubernetes", policy=EgressPolicy.for_profile("kubernetes"), data_dir=tmp_path
        )
        poster = WebhookPoster(strict)
        assert "loopback" in (poster.check(receiver.url) or "")
        assert "loopback" in (poster.check(f"http://localhost:{receiver.port}/") or "")
        result = poster.post(receiver.url, b"{}", {})
        assert (result.ok, result.retry) == (False, False)
        assert "loopback" in (result.error or "")
        assert "127.0.0.1" not in (result.error or "")
        poster.close()

        opened = LocationGuard(
            profile="kubernetes",
            policy=EgressPolicy.for_profile("kubernetes", ["127.0.0.0/8"]),
            data_dir=tmp_path,
        )
        poster = WebhookPoster(opened)
        assert poster.check(receiver.url) is None
        result = poster.post(f"http://localhost:{receiver.port}/named", b"{}", {"x-a": "1"})
        poster.close()
        assert (result.ok, result.status) == (True, 204)
        assert receiver.received()[0].headers["host"] == f"localhost:{receiver.port}"
        assert receiver.received()[0].path == "/named"
        assert len(receiver.received()) == 1  # the refused attempt never connected


# --- sweeps and the registry --------------------------------------------------------------


def test_sweep_finished_and_model_promoted_are_delivered(service: RunningService) -> None:
    http = service.http
    experiment = create(http, small_parts(QUICK_DVC))
    exp_id = str(experiment["experiment_id"])
    events = ["sweep.finished", "model.registered", "model.promoted"]
    with Receiver() as receiver:
        hook = add_webhook(http, receiver.url, events, experiment_id=exp_id)
        body = {"experiment_id": exp_id, "grid": {"x": [1, 2]}, "max_parallel": 2}
        response = http.post("/experiment/sweep", json=body)
        assert response.status_code == 202, response.text
        sweep_id = response.json()["sweep_id"]
        finished = verified(hook["secret"], receiver.wait_count(1, timeout=180)[0])
        assert finished["type"] == "io.mlexp.sweep.finished"
        assert finished["subject"] == sweep_id
        assert finished["data"]["state"] == "completed"

        runs = http.get("/runs", params={"sweep_id": sweep_id}).json()
        run_id = runs[0]["run_id"]
        response = http.post(
            f"/runs/{run_id}/register", json={"artifact": "tiny", "path": "m.json"}
        )
        assert response.status_code == 201, response.text
        version = response.json()["version"]
        response = http.post(
            f"/experiments/{exp_id}/registry/tiny/promote",
            json={"version": version, "stage": "prod"},
        )
        assert response.status_code in (200, 201), response.text
        got = receiver.wait_count(3, timeout=30)
    registered, promoted = (verified(hook["secret"], r) for r in got[1:])
    assert registered["type"] == "io.mlexp.model.registered"
    assert promoted["type"] == "io.mlexp.model.promoted"
    assert registered["data"]["artifact"] == promoted["data"]["artifact"] == "tiny"
    assert "prod" in json.dumps(promoted["data"])


# --- the CLI ------------------------------------------------------------------------------


def mlexp(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", "--url", url, *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_the_cli(service: RunningService) -> None:
    with Receiver() as receiver:
        added = mlexp(service.url, "--json", "webhook", "add", receiver.url,
                      "--event", "run.succeeded", "--event", "sweep.finished")  # fmt: skip
        assert added.returncode == 0, added.stderr
        created = json.loads(added.stdout)
        wid = created["webhook_id"]
        human = mlexp(service.url, "webhook", "add", receiver.url, "--event", "run.failed")
        assert "signing secret (shown once" in human.stdout
        assert "whsec_" in human.stdout

        listed = mlexp(service.url, "webhook", "list")
        assert wid in listed.stdout
        assert "run.succeeded,sweep.finished" in listed.stdout
        assert "whsec_" not in listed.stdout

        tested = mlexp(service.url, "webhook", "test", wid)
        assert tested.returncode == 0, tested.stderr
        verified(created["secret"], receiver.wait_count(1)[0])
        shown = wait_for(
            lambda: (
                (out := mlexp(service.url, "webhook", "deliveries", wid).stdout)
                and "delivered" in out
                and out
            ),
            30,
            what="the ping to show as delivered",
        )
        assert "ping" in shown
        assert "attempts=1" in shown

        assert mlexp(service.url, "webhook", "rm", wid).returncode == 0
        assert wid not in mlexp(service.url, "webhook", "list").stdout
        gone = mlexp(service.url, "webhook", "test", wid)
        assert gone.returncode != 0
        refused = mlexp(service.url, "webhook", "add", receiver.url, "--event", "run.exploded")
        assert refused.returncode != 0
