"""The service's Prometheus metrics.

Two kinds:

* metrics that code updates as things happen, in the process-wide :data:`REGISTRY`:
  run durations (:func:`observe_run_end`, a run-service subscriber), Kubernetes API
  calls (``adapters.kube``), webhook deliveries, MLflow exports, HTTP latency
  (``api.middleware``);
* what is counted at scrape time from the store — runs by state and resource kind,
  queue depth, active runs — and the build info: :class:`ServiceCollector`, one per
  app, joined with :data:`REGISTRY` by :func:`app_registry` (so two apps in one process,
  as in tests, never register the same names twice).

Names follow Prometheus conventions: ``mlexp_`` prefix, ``_total`` counters, ``_seconds``.
Labels are bounded: a resource is its kind (``local``, ``job``, ``sts``, ``deploy``),
never a workload's name; a route is its template, never a raw path.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.domain.models import Run, RunState

REGISTRY = CollectorRegistry(auto_describe=True)

RUN_DURATION = Histogram(
    "mlexp_run_duration_seconds",
    "Wall time of runs from start to end, by resource kind and outcome.",
    ["resource", "outcome"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400),
    registry=REGISTRY,
)
KUBERNETES_CALLS = Counter(
    "mlexp_kubernetes_api_calls_total",
    "Calls to the Kubernetes API server, by verb (HTTP method, WATCH, LOG, EXEC) and "
    "outcome (ok, the status class 4xx/5xx, timeout or connection).",
    ["verb", "outcome"],
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "mlexp_webhook_deliveries_total",
    "Webhook delivery attempts, by outcome (delivered, retried, failed).",
    ["outcome"],
    registry=REGISTRY,
)
MLFLOW_EXPORTS = Counter(
    "mlexp_mlflow_exports_total",
    "MLflow export attempts, by outcome (delivered, retried, failed).",
    ["outcome"],
    registry=REGISTRY,
)
HTTP_REQUEST_DURATION = Histogram(
    "mlexp_http_request_duration_seconds",
    "HTTP request latency, by method, route template and status code.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)

RESOURCE_KINDS = ("local", "job", "sts", "deploy")

RunCounts = Callable[[], dict[tuple[str, str], int]]
"""(state, resource kind) -> number of runs: ``Store.count_runs_by_state_and_resource``."""


def resource_kind(resource: str) -> str:
    """``sts/trainer`` -> ``sts``: the label a run's resource gets."""
    return resource.partition("/")[0]


def observe_run_end(run: Run, previous: RunState | None) -> None:
    """A ``RunService.subscribe`` callback: a run that just ended adds its duration.

    Runs that never started (cancelled while queued) have no duration and are not observed.
    """
    if not run.state.terminal or previous is run.state:
        return
    if run.started_at is None or run.finished_at is None:
        return
    seconds = max(0.0, (run.finished_at - run.started_at).total_seconds())
    RUN_DURATION.labels(resource=resource_kind(run.resource), outcome=run.state.value).observe(
        seconds
    )


def build_version() -> str:
    try:
        return version("mlexp-ctrl")
    except PackageNotFoundError:
        return "unknown"


class ServiceCollector(Collector):
    """What one service counts at scrape time: one grouped query on the store."""

    def __init__(self, counts: RunCounts, build: str | None = None) -> None:
        self.counts = counts
        self.build = build or build_version()

    def collect(self) -> Iterable[Metric]:
        counts = self.counts()
        runs = GaugeMetricFamily(
            "mlexp_runs", "Runs recorded, by state and resource kind.", labels=["state", "resource"]
        )
        kinds = sorted(set(RESOURCE_KINDS) | {kind for _, kind in counts})
        for state in RunState:
            for kind in kinds:
                runs.add_metric([state.value, kind], counts.get((state.value, kind), 0))
        yield runs
        by_state = {state.value: 0 for state in RunState}
        for (name, _), count in counts.items():
            by_state[name] = by_state.get(name, 0) + count
        yield GaugeMetricFamily(
            "mlexp_queue_depth",
            "Runs waiting to start (queued).",
            value=by_state[RunState.QUEUED.value],
        )
        yield GaugeMetricFamily(
            "mlexp_active_runs",
            "Runs executing now (running).",
            value=by_state[RunState.RUNNING.value],
        )
        yield InfoMetricFamily(
            "mlexp_build",
            "The service's version and Python.",
            value={"version": self.build, "python": platform.python_version()},
        )


class _Shared(Collector):
    """The process-wide metrics, as one collector of an app's registry."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def app_registry(collector: Collector) -> CollectorRegistry:
    """A registry for one app's ``/metrics``: :data:`REGISTRY` and the app's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Shared())
    registry.register(collector)
    return registry
