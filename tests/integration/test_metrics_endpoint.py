"""``GET /metrics`` over HTTP, read with prometheus_client's own parser.

Covers: the run gauges (by state and resource kind), queue depth and active runs while
one run holds the only slot and another waits; the run duration histogram after runs
that succeed and fail; the HTTP latency histogram labelled by route template, never by
a raw id; build info; auth (401 without a token, 403 for a tenant, 200 for an admin) and
``metrics.public`` (no token needed, the Host check still applies); not in the OpenAPI
document.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.settings import MetricsSettings, Settings
from tests.support.bundles import FAILING_DVC, GATED_DVC, QUICK_DVC, create, small_parts, start
from tests.support.service import service_in_thread
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(http: httpx.Client, **headers: str) -> Samples:
    response = http.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def runs(samples: Samples, state: str) -> float:
    return value(samples, "mlexp_runs", state=state, resource="local")


def durations(samples: Samples, outcome: str) -> float:
    return value(samples, "mlexp_run_duration_seconds_count", resource="local", outcome=outcome)


def test_metrics_move_as_runs_go(settings: Settings) -> None:
    one_slot = settings.model_copy(update={"max_concurrent_runs": 1})
    with service_in_thread(one_slot) as service:
        http = service.http
        before = scrape(http)
        assert value(before, "mlexp_queue_depth") == 0
        assert value(before, "mlexp_active_runs") == 0

        # A gated run holds the only slot; a second run waits in the queue.
        gated = create(http, small_parts(GATED_DVC, "gate: ../gate\n"))
        held = start(http, gated["experiment_id"])
        gate = service.settings.work_dir / held / "gate"
        try:
            wait_for(
                lambda: "step 4: dvc repro" in http.get(f"/runs/{held}/logs").text,
                120,
                what="the gated run to reach its stage",
            )
            quick = create(http, small_parts(QUICK_DVC))
            waiting = start(http, quick["experiment_id"], x=2)
            during = scrape(http)
            assert value(during, "mlexp_active_runs") == 1
            assert value(during, "mlexp_queue_depth") == 1
            assert runs(during, "running") == 1
            assert runs(during, "queued") == 1
        finally:
            gate.parent.mkdir(parents=True, exist_ok=True)
            gate.touch()
        assert service.wait_run(held)["state"] == "succeeded"
        assert service.wait_run(waiting)["state"] == "succeeded"
        failing = create(http, small_parts(FAILING_DVC))
        failed = start(http, failing["experiment_id"])
        assert service.wait_run(failed)["state"] == "failed"

        after = scrape(http)
        assert runs(after, "succeeded") - runs(before, "succeeded") == 2
        assert runs(after, "failed") - runs(before, "failed") == 1
        assert value(after, "mlexp_queue_depth") == 0
        assert value(after, "mlexp_active_runs") == 0
        assert durations(after, "succeeded") - durations(before, "succeeded") == 2
        assert durations(after, "failed") - durations(before, "failed") == 1
        seconds = value(
            after, "mlexp_run_duration_seconds_sum", resource="local", outcome="succeeded"
        ) - value(before, "mlexp_run_duration_seconds_sum", resource="local", outcome="succeeded")
        assert seconds > 0

        # Latency by route template: the runs read above are one series, no raw id anywhere.
        routes = {
            dict(labels).get("route")
            for name, labels in after
            if name == "mlexp_http_request_duration_seconds_count"
        }
        assert {"/runs/{run_id}", "/runs/{run_id}/logs", "/experiment/run"} <= routes
        assert (
            value(
                after,
                "mlexp_http_request_duration_seconds_count",
                method="GET",
                route="/runs/{run_id}",
                status="200",
            )
            >= 3
        )
        http.get("/no/such/route/run-1234")
        unmatched = scrape(http)
        assert (
            value(
                unmatched,
                "mlexp_http_request_duration_seconds_count",
                method="GET",
                route="other",
                status="404",
            )
            >= 1
        )
        label_values = {v for _, labels in unmatched for _, v in labels}
        for run_id in (held, waiting, failed):
            assert not any(run_id in v for v in label_values), run_id
        assert not any("run-1234" in v for v in label_values)

        info = [dict(labels) for name, labels in after if name == "mlexp_build_info"]
        assert len(info) == 1
        assert info[0]["version"]
        assert info[0]["python"].count(".") == 2


def test_metrics_need_an_admin_unless_public(settings: Settings, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "tokens:\n"
        "  - {token: admin-0123456789abcdef, name: ops, admin: true}\n"
        "  - {token: tenant-0123456789abcdef, name: alice}\n"
    )
    secured = settings.model_copy(update={"tokens_file": tokens})
    with service_in_thread(secured) as service:
        http = service.http
        refused = http.get("/metrics")
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        wrong = http.get("/metrics", headers={"Authorization": "Bearer not-a-token-at-all"})
        assert wrong.status_code == 401
        tenant = http.get("/metrics", headers={"Authorization": "Bearer tenant-0123456789abcdef"})
        assert tenant.status_code == 403
        samples = scrape(http, Authorization="Bearer admin-0123456789abcdef")
        assert any(name == "mlexp_runs" for name, _ in samples)
        # Prometheus scrapes a pod by its IP: with a token wanted, any Host will do.
        by_ip = {"Host": "10.1.2.3:8080"}
        assert http.get("/metrics", headers=by_ip).status_code == 401
        assert (
            http.get(
                "/metrics", headers={**by_ip, "Authorization": "Bearer admin-0123456789abcdef"}
            ).status_code
            == 200
        )
        # For Prometheus, not API clients: not in the OpenAPI document (nor fuzzed).
        document = http.get("/openapi.json").json()
        assert "/metrics" not in document["paths"]

    public = secured.model_copy(update={"metrics": MetricsSettings(public=True)})
    with service_in_thread(public) as service:
        samples = scrape(service.http)
        assert any(name == "mlexp_build_info" for name, _ in samples)
        # Public, yet not readable through a rebinding host name.
        foreign = service.http.get("/metrics", headers={"Host": "attacker.example"})
        assert foreign.status_code == 400
        # The rest of the API still wants a token.
        assert service.http.get("/experiments").status_code == 401
