"""Runs on Kubernetes, measured on the loopback test control plane (issue 4, Benchmark).

Starts the cluster tier's control plane (etcd, kube-apiserver, controller-manager,
scheduler and kwok with two fake nodes; tests/support/cluster.py), a git server over
HTTPS (tests/support/gitserver.py) and moto's S3 (tests/support/s3server.py), and
``mlexp serve`` as a separate process with a k8s-config.yaml that allows ``bench-*``
namespaces and labels run pods ``mlexp.io/test-drive: manual`` (kwok then leaves them
Running, so runs stay in flight until something finishes them). Held pods get an empty
container log once Running, as a kubelet would give them, so following their log works
(``--no-pod-logs`` leaves that out). Prints:

1. Kubernetes API calls per run, by kind (read, write, watch, exec), from the
   service's own counter (``GET /healthz`` -> ``kubernetes_api_calls``), as the
   difference across runs divided by their number:
   * ``resource: job``, launch only (``--runs`` runs whose Jobs stay Running), and the
     first run in a namespace (which starts the tracker's watches) separately;
   * cancelling those runs (``POST /runs/{id}/cancel``);
   * complete Job runs (``--complete``), whose pods' commands tests/support/jobdriver.py
     runs on this host and reports back through the pods' status;
   * runs exec'd into a StatefulSet pod (``--exec-runs``, one at a time unless
     ``--exec-together``), whose stage prints a line a second for ``--exec-seconds``:
     the calls per second of run, the exec calls of a launch, and the time from the
     runner's end (its last log line) to the run's recorded end. Each run's progress
     comes over one long exec stream; short execs every ``exec.poll_seconds``
     (``--poll-seconds``) only while that stream is broken.
2. Time from ``POST /experiment/run`` to the Job existing, seen by a watch on Jobs
   labelled ``mlexp.io/run-id`` (started before the POST): median and p99 over the
   ``--runs`` sequential launches.
3. Growth: Job runs posted in waves up to each of ``--growth`` (default 100 and 500 in
   flight), and after each wave, once every pod is Running, the service's CPU, RSS and
   threads over ``--growth-seconds``: how they grow per run in flight. Then all cancelled.
4. A burst: ``--concurrent`` Job runs (default 1,000) posted at once from
   ``--submit-threads`` clients: submission rate, POST -> Job exists, time until every
   Job existed; then (once every pod is Running) CPU % of one core (``/proc/<pid>/stat``
   utime+stime), RSS (``VmRSS``) and thread count over ``--sample-seconds`` of steady
   tracking (with how the CPU was spread over threads, their context switches, and the
   Job and pod events meanwhile). Then the service is killed (SIGKILL) and started again
   on its data dir: seconds until it answers ``/healthz`` (it re-attaches every run
   before it answers), the API calls the new process made to get there, and the Jobs
   counted afterwards (one per run: no duplicate). Last, every run is cancelled from
   ``--cancel-threads`` clients: how fast ``POST /runs/{id}/cancel`` answered (202) and
   how long until every run was ``cancelled``. Cancelling stops at ``--cancel-budget``
   seconds and the remaining Jobs and the namespace are deleted instead; the output says
   which happened. The fake nodes hold 600 pods each (scripts/k8s/kwok-stages.yaml).
5. The floor (``--no-floor`` leaves it out): the burst's Jobs and ConfigMaps created
   straight from the benchmark with as many threads as the service's launch pool, in an
   empty namespace: how fast this control plane takes them, to hold the burst against.

Progress goes to stderr, the figures to stdout. Needs Go (first build of the cluster
binaries, cached after) and openssl, like the cluster test tier. About 6 to 8 minutes
with the defaults on a 2-core machine (``--growth ""`` leaves part 3 out).

    .venv/bin/python bench/k8s_runs.py [--runs 20] [--concurrent 500] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import urllib3
import yaml
from common import REPO_ROOT, median, percentile
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from controller.domain.naming import new_id
from controller.planning import manifests as m
from tests.support.bundles import QUICK_DVC, small_parts
from tests.support.cluster import MANUAL_DRIVE, Cluster, build_binaries
from tests.support.gitserver import GitHttpServer
from tests.support.jobdriver import JobDriver
from tests.support.s3server import S3Server
from tests.support.service import free_port, service_process
from tests.support.waiting import WaitTimeout, wait_for

T = TypeVar("T")

RUN_LABEL = "mlexp.io/run-id"
GIT_USER = "mlexp-bot"
GIT_TOKEN = "bench-token-0123456789abcdef"  # the throwaway git server's password
KINDS = ("read", "write", "watch", "exec")
TERMINAL = ("succeeded", "failed", "cancelled")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def progress(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


def figure(message: str = "") -> None:
    print(message, flush=True)


# --- the service process ---------------------------------------------------------------------


def cpu_seconds_of(stat: Path) -> float:
    """utime + stime, in seconds, from a /proc stat file (its fields 14 and 15)."""
    after_name = stat.read_text().rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    return cpu_seconds_of(Path(f"/proc/{pid}/stat"))


def rss_and_threads(pid: int) -> tuple[int, int]:
    """VmRSS in KiB and the thread count, from /proc/<pid>/status."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]), int(fields["Threads"])


@dataclass
class Service:
    pid: int
    url: str
    http: httpx.Client
    log: Path

    def calls(self) -> Counter[str]:
        for attempt in range(3):  # a kept-alive connection may have been closed meanwhile
            try:
                body = self.http.get("/healthz").json()
                break
            except httpx.TransportError:
                if attempt == 2:
                    raise
                time.sleep(0.5)
        return Counter({k: int(v) for k, v in (body["kubernetes_api_calls"] or {}).items()})

    def settled_calls(self, quiet: float = 1.5, timeout: float = 60) -> Counter[str]:
        """The call counter once it has not moved for ``quiet`` seconds."""
        last, since = self.calls(), time.monotonic()
        deadline = since + timeout
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = self.calls()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return last

    def run(
        self,
        http: httpx.Client,
        experiment_id: str,
        resource: str,
        namespace: str,
        params: Mapping[str, object] | None = None,
    ) -> str:
        body = {"experiment_id": experiment_id, "resource": resource, "namespace": namespace,
                "params": dict(params or {})}  # fmt: skip
        response = http.post("/experiment/run", json=body)
        if response.status_code != 202:
            raise RuntimeError(f"POST /experiment/run: {response.status_code} {response.text}")
        return str(response.json()["run_id"])

    def started(self, run_id: str) -> bool:
        """The service has launched the run (its note follows the executor's launch)."""
        return "run started on" in self.http.get(f"/runs/{run_id}/logs").text

    def wait_started(self, run_ids: Sequence[str], timeout: float = 120) -> None:
        for run_id in run_ids:
            wait_for(partial(self.started, run_id), timeout, what=f"{run_id} launched")

    def wait_terminal(self, run_ids: Sequence[str], timeout: float) -> list[dict[str, Any]]:
        def done(run_id: str) -> dict[str, Any] | None:
            run: dict[str, Any] = self.http.get(f"/runs/{run_id}").json()
            return run if run["state"] in TERMINAL else None

        return [
            wait_for(partial(done, r), timeout, what=f"{r} to finish", max_interval=0.5)
            for r in run_ids
        ]

    def states(self, namespace_runs: set[str] | None = None) -> Counter[str]:
        """Run states (of ``namespace_runs`` only, if given), from the run listing."""
        counts: Counter[str] = Counter()
        offset = 0
        while True:
            page = self.http.get("/runs", params={"limit": 1000, "offset": offset}).json()
            for run in page:
                if namespace_runs is None or run["run_id"] in namespace_runs:
                    counts[str(run["state"])] += 1
            if len(page) < 1000:
                return counts
            offset += 1000


@contextlib.contextmanager
def start_service(home: Path, env: Mapping[str, str]) -> Iterator[Service]:
    """``python -m controller.cli serve`` on a fresh data dir under ``home``."""
    home.mkdir(parents=True)
    port = free_port()
    with (
        service_process(home / "data", env, port=port) as (child, url),
        httpx.Client(base_url=url, timeout=300) as http,
    ):
        yield Service(child.pid, url, http, home / f"service-{port}.log")


def log_problems(log: Path) -> list[str]:
    """Warning and error lines (and tracebacks) of a service's log."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [
        line
        for line in lines
        if any(f'"level": "{level}"' in line for level in ("warning", "error", "critical"))
        or line.startswith(("Traceback", "ERROR"))
    ]


# --- watching run objects from the benchmark's side ------------------------------------------


class RunObjects(threading.Thread):
    """Jobs or Pods labelled with a run id in one namespace, kept current by a watch.

    Records when each run's object was first seen (``time.monotonic()``), and each live
    object's phase. Events are parsed as plain JSON, not into the client's models.
    ``on_running`` is called (on the watch's thread) once for each object that is Running.
    """

    def __init__(
        self,
        list_fn: Callable[..., Any],
        namespace: str,
        on_running: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__(name=f"bench-watch-{namespace}", daemon=True)
        self.list_fn = list_fn
        self.namespace = namespace
        self.on_running = on_running
        self.announced: set[str] = set()
        self.first_seen: dict[str, float] = {}
        self.events = 0
        self.live: dict[str, tuple[str | None, bool]] = {}  # name -> (phase, being deleted)
        self.cond = threading.Condition()
        self.stopping = threading.Event()
        self.synced = threading.Event()

    def __enter__(self) -> RunObjects:
        self.start()
        if not self.synced.wait(30):
            raise RuntimeError(f"the watch on {self.namespace} did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.join(timeout=15)

    def run(self) -> None:
        version = ""
        while not self.stopping.is_set():
            try:
                if not version:
                    response = self.list_fn(
                        self.namespace, label_selector=RUN_LABEL, _preload_content=False
                    )
                    listing = json.loads(response.data)
                    version = str(listing["metadata"]["resourceVersion"])
                    for item in listing.get("items") or []:
                        self._record("ADDED", item)
                    self.synced.set()
                stream = watch.Watch()  # type: ignore[no-untyped-call]
                for event in stream.stream(  # type: ignore[no-untyped-call]
                    self.list_fn,
                    self.namespace,
                    label_selector=RUN_LABEL,
                    resource_version=version,
                    timeout_seconds=5,
                    allow_watch_bookmarks=True,
                    deserialize=False,
                ):
                    obj = event["object"]
                    version = str(obj["metadata"]["resourceVersion"])
                    if event["type"] != "BOOKMARK":
                        self._record(str(event["type"]), obj)
                    if self.stopping.is_set():
                        stream.stop()  # type: ignore[no-untyped-call]
            except (KeyError, ApiException):
                version = ""  # an ERROR event (410 Gone, unparsed without deserialize): relist
                self.stopping.wait(0.2)
            except (urllib3.exceptions.HTTPError, OSError):
                self.stopping.wait(0.5)

    def _record(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name"))
        run_id = (meta.get("labels") or {}).get(RUN_LABEL)
        now = time.monotonic()
        with self.cond:
            self.events += 1
            if kind == "DELETED":
                self.live.pop(name, None)
            else:
                phase = (obj.get("status") or {}).get("phase")
                self.live[name] = (phase, meta.get("deletionTimestamp") is not None)
                if run_id and run_id not in self.first_seen:
                    self.first_seen[str(run_id)] = now
            self.cond.notify_all()
        running = (obj.get("status") or {}).get("phase") == "Running" and kind != "DELETED"
        if running and self.on_running is not None and name not in self.announced:
            self.announced.add(name)
            self.on_running(obj)

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def seen_at(self, run_id: str, timeout: float) -> float:
        if not self.wait(lambda: run_id in self.first_seen, timeout):
            raise WaitTimeout(f"no object for run {run_id} after {timeout:.0f} s")
        return self.first_seen[run_id]

    def count(self, ids: set[str]) -> int:
        return len(ids & self.first_seen.keys())

    def running(self) -> int:
        return sum(
            1 for phase, deleting in self.live.values() if phase == "Running" and not deleting
        )


# --- helpers ---------------------------------------------------------------------------------


def container_logs(cluster: Cluster) -> Callable[[dict[str, Any]], None]:
    """Give a Running pod's containers an (empty) log, as a kubelet would.

    kwok serves pod logs from files (tests/support/cluster.py) and runs nothing in
    these pods, so without this a log request for them fails instead of following.
    """

    def touch(pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        for container in pod["spec"]["containers"]:
            path = cluster.log_path(meta["namespace"], meta["name"], container["name"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()

    return touch


def per_run(before: Counter[str], after: Counter[str], runs: int) -> str:
    diff = {kind: (after[kind] - before[kind]) / runs for kind in KINDS}
    parts = "  ".join(f"{kind} {value:.2f}" for kind, value in diff.items())
    return f"{parts}  = {sum(diff.values()):.2f} per run"


def totals(before: Counter[str], after: Counter[str]) -> str:
    return "  ".join(f"{kind} {after[kind] - before[kind]}" for kind in KINDS)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def spread(values: Sequence[float]) -> str:
    """Median and p99 (nearest rank: the maximum below 100 values), in ms."""
    return f"median {ms(median(values))}, p99 {ms(percentile(values, 99))} (n={len(values)})"


def spread_s(values: Sequence[float]) -> str:
    return f"median {median(values):.1f} s, max {max(values):.1f} s (n={len(values)})"


def run_seconds(run: Mapping[str, Any]) -> float:
    started = datetime.fromisoformat(str(run["created_at"]))
    finished = datetime.fromisoformat(str(run["finished_at"]))
    return (finished - started).total_seconds()


def fan_out(
    url: str,
    items: Sequence[str],
    threads: int,
    work: Callable[[httpx.Client, str], T],
    deadline: float | None = None,
) -> dict[str, T]:
    """``work`` on each item from ``threads`` clients; none is started after ``deadline``."""
    pending = list(reversed(items))
    results: dict[str, T] = {}
    lock = threading.Lock()
    failures: list[BaseException] = []

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            while True:
                with lock:
                    if not pending or (deadline is not None and time.monotonic() > deadline):
                        return
                    item = pending.pop()
                try:
                    result = work(http, item)
                except Exception as exc:
                    with lock:
                        failures.append(exc)
                    return
                with lock:
                    results[item] = result

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if failures:
        raise failures[0]
    return results


def exists(read: Callable[[], object]) -> bool:
    try:
        read()
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def make_namespace(core: client.CoreV1Api, name: str) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # Pods are refused until the namespace's default ServiceAccount exists.
    wait_for(
        lambda: exists(partial(core.read_namespaced_service_account, "default", name)),
        60,
        what=f"the default ServiceAccount in {name}",
    )


def drop_namespaces(api: client.ApiClient, names: Sequence[str], timeout: float) -> float:
    """Delete the namespaces' Jobs, then the namespaces; wait until they are gone.

    The Jobs go first, with background propagation: in the test cluster a namespace
    deleted with hundreds of Running Job pods in it can stay Terminating for minutes,
    its pods held by the batch.kubernetes.io/job-tracking finalizer.
    Returns the seconds it took.
    """
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    started = time.monotonic()
    for name in names:
        with contextlib.suppress(ApiException):
            batch.delete_collection_namespaced_job(name, propagation_policy="Background")
        with contextlib.suppress(ApiException):
            core.delete_namespace(name)
    wait_for(
        lambda: not any(exists(partial(core.read_namespace, n)) for n in names),
        timeout,
        what=f"namespaces {', '.join(names)} to be deleted",
        max_interval=0.5,
    )
    return time.monotonic() - started


@dataclass
class Remotes:
    git: GitHttpServer
    s3: S3Server

    def repo_json(self) -> dict[str, object]:
        name = f"bench-{uuid.uuid4().hex[:8]}"
        self.s3.create_bucket(name)
        return {
            "git": {"url": self.git.create_bare(name), "username": GIT_USER, "token": GIT_TOKEN},
            "dvc": {"url": f"s3://{name}/data"},
            "storage": {
                "endpoint_url": self.s3.endpoint_url,
                "access_key_id": self.s3.access_key_id,
                "secret_access_key": self.s3.secret_access_key,
                "region": self.s3.region,
            },
        }

    def experiment(self, service: Service) -> str:
        parts = small_parts(QUICK_DVC, "x: 1\n", repo_json=self.repo_json())
        response = service.http.post("/experiment/create", files=parts)
        if response.status_code != 201:
            raise RuntimeError(f"POST /experiment/create: {response.status_code} {response.text}")
        return str(response.json()["experiment_id"])


@dataclass
class Bench:
    args: argparse.Namespace
    root: Path
    cluster: Cluster
    api: client.ApiClient
    remotes: Remotes
    service_env: dict[str, str]
    children: list[tuple[subprocess.Popen[bytes], Any]] = field(default_factory=list)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)


# --- parts 1 and 2: calls per run, time to the Job ------------------------------------------


def launch_only(bench: Bench, service: Service, namespace: str, experiment: str) -> None:
    n = bench.args.runs
    figure(f"== Job runs, launch only, one at a time, namespace {namespace} ==")
    logs = None if bench.args.no_pod_logs else container_logs(bench.cluster)
    with (
        RunObjects(bench.batch.list_namespaced_job, namespace) as jobs,
        RunObjects(bench.core.list_namespaced_pod, namespace, logs),
    ):
        before = service.settled_calls()
        started = time.monotonic()
        first = service.run(service.http, experiment, "job", namespace)
        first_latency = jobs.seen_at(first, 60) - started
        service.wait_started([first])
        after_first = service.settled_calls()

        latencies, answered, run_ids = [], [], [first]
        for _ in range(n):
            started = time.monotonic()
            run_id = service.run(service.http, experiment, "job", namespace)
            answered.append(time.monotonic() - started)
            latencies.append(jobs.seen_at(run_id, 60) - started)
            service.wait_started([run_id])
            run_ids.append(run_id)
        after = service.settled_calls()
    figure(
        f"API calls, first Job run in a namespace (the tracker lists and watches Jobs and "
        f"Pods there): {totals(before, after_first)}"
    )
    figure(f"API calls per Job run, launch only (n={n}): {per_run(after_first, after, n)}")
    figure(f"POST /experiment/run -> Job exists: {spread(latencies)}")
    figure(f"  first run in the namespace: {ms(first_latency)};  POST answered: {spread(answered)}")

    progress(f"cancelling the {len(run_ids)} launch-only runs")
    before = after
    took = fan_out(service.url, run_ids, 4, _timed_cancel)
    time.sleep(1)  # followers copy the deleted Jobs' pod logs after the cancel returns
    after = service.settled_calls()
    states = Counter(service.http.get(f"/runs/{r}").json()["state"] for r in run_ids)
    figure(
        f"API calls per cancel (n={len(run_ids)}, 4 at a time): "
        f"{per_run(before, after, len(run_ids))}"
    )
    figure(
        f"  cancel answered: {spread([t for t, _ in took.values()])}; final states {dict(states)}"
    )


def _timed_cancel(http: httpx.Client, run_id: str) -> tuple[float, int]:
    started = time.monotonic()
    response = http.post(f"/runs/{run_id}/cancel")
    return time.monotonic() - started, response.status_code


def complete_jobs(bench: Bench, service: Service, namespace: str, experiment: str) -> None:
    k = bench.args.complete
    if k <= 0:
        return
    figure(f"== Complete Job runs, namespace {namespace} (pods run on this host by JobDriver) ==")
    with JobDriver(bench.cluster, bench.api, namespace, bench.root / "job-pods") as driver:
        # A first run, held and cancelled, so the tracker's watches here are not counted below.
        # Pods are held until their run's launch is done: kwok makes a pod Running at once,
        # possibly before the service has created the ConfigMap it mounts, which a kubelet
        # would wait for but the driver does not.
        driver.hold_all = True
        warm = service.run(service.http, experiment, "job", namespace)
        service.wait_started([warm])
        service.http.post(f"/runs/{warm}/cancel")
        before = service.settled_calls()
        # Distinct params: identical runs at once would share one DVC run-cache entry, and
        # here (pods on this host) one cache dir too.
        run_ids = [
            service.run(service.http, experiment, "job", namespace, {"x": i + 2}) for i in range(k)
        ]
        for run_id in run_ids:
            service.wait_started([run_id])
            driver.release(run_id)
        runs = service.wait_terminal(run_ids, timeout=300)
        after = service.settled_calls()
    states = Counter(str(run["state"]) for run in runs)
    figure(f"API calls per complete Job run (n={k}, together): {per_run(before, after, k)}")
    figure(
        f"  run time (created -> finished): {spread_s([run_seconds(r) for r in runs])}; "
        f"states {dict(states)}"
    )
    for run in runs:
        if run["state"] != "succeeded":
            figure(f"  ! {run['run_id']} {run['state']}: {run.get('reason')}")


EXEC_DVC = """\
stages:
  write:
    cmd: >-
      python -c "import json, sys, time, yaml; p = yaml.safe_load(open('params.yaml'));
      [print(f'tick {i}', flush=True) or time.sleep(1) for i in range(p['seconds'])];
      json.dump({'x': p['x']}, open('m.json', 'w'))"
    params: [x, seconds]
    metrics:
      - m.json: {cache: false}
"""
"""The exec runs' stage: a line a second for ``seconds`` seconds, then its metric."""

# The runner's last line: ``[mlexp <UTC time, ms>] succeeded: …`` (or ``failed: …``).
RUNNER_END = re.compile(r"^\[mlexp (\S+Z)\] (?:succeeded|failed): ", re.MULTILINE)


def runner_ended(log: str) -> datetime | None:
    """When the runner wrote its last line (its end), from the run's log."""
    ends = RUNNER_END.findall(log)
    return datetime.fromisoformat(ends[-1]) if ends else None


def exec_runs(bench: Bench, service: Service, namespace: str, experiment: str) -> None:
    k = bench.args.exec_runs
    if k <= 0:
        return
    poll = bench.args.poll_seconds
    seconds = bench.args.exec_seconds
    together = "together" if bench.args.exec_together else "one at a time"
    figure(f"== Runs exec'd into a StatefulSet pod (sts/bench), namespace {namespace} ==")
    parts = small_parts(EXEC_DVC, f"x: 1\nseconds: {seconds}\n", bench.remotes.repo_json())
    created = service.http.post("/experiment/create", files=parts)
    if created.status_code != 201:
        raise RuntimeError(f"POST /experiment/create: {created.status_code} {created.text}")
    experiment = str(created.json()["experiment_id"])
    # Runs that go together share the pod (an opt-in); otherwise one run per pod at a time.
    spec = {"kind": "StatefulSet", "name": "bench", "namespace": namespace,
            "experiment_id": experiment, "shared": bench.args.exec_together}  # fmt: skip
    response = service.http.post("/resource/k8s/create", json=spec)
    if response.status_code != 201:
        raise RuntimeError(f"POST /resource/k8s/create: {response.status_code} {response.text}")
    wait_for(
        lambda: (
            (
                service.http.get(f"/resources/{namespace}/sts/bench").json().get("readiness") or {}
            ).get("ready")
            == 1
        ),
        90,
        what="sts/bench to be ready",
    )
    before = service.settled_calls()
    run_ids: list[str] = []
    launch_calls: list[int] = []  # exec calls from the POST to the service's "run started" note
    for i in range(k):
        if bench.args.exec_together:
            run_ids.append(
                service.run(service.http, experiment, "sts/bench", namespace, {"x": 100 + i})
            )
            continue
        ahead = service.calls()
        run_ids.append(
            service.run(service.http, experiment, "sts/bench", namespace, {"x": 100 + i})
        )
        wait_for(partial(service.started, run_ids[-1]), 120, what="launched", max_interval=0.05)
        launch_calls.append(service.calls()["exec"] - ahead["exec"])
        service.wait_terminal(run_ids[-1:], timeout=300 + seconds)
    runs = service.wait_terminal(run_ids, timeout=300 + k * seconds)
    after = service.settled_calls()
    states = Counter(str(run["state"]) for run in runs)
    durations = [run_seconds(r) for r in runs]
    seen: list[float] = []  # the runner's last line -> the run's recorded end
    for run in runs:
        ended = runner_ended(service.http.get(f"/runs/{run['run_id']}/logs").text)
        if ended is not None and run.get("finished_at"):
            finished = datetime.fromisoformat(str(run["finished_at"]))
            seen.append((finished - ended).total_seconds())
    calls = sum(after[kind] - before[kind] for kind in KINDS)
    figure(
        f"API calls per exec run (n={k}, {together} in one pod, a {seconds} s stage, "
        f"exec.poll_seconds={poll}): {per_run(before, after, k)}"
    )
    figure(
        f"  run time (created -> finished): {spread_s(durations)}; "
        f"API calls per second of run: {calls / sum(durations):.3f} "
        f"(exec {(after['exec'] - before['exec']) / sum(durations):.3f}); states {dict(states)}"
    )
    if launch_calls:
        figure(
            f"  exec calls from the POST to the run's start (launch, give or take a follow "
            f"call): median {median(launch_calls):.0f}, max {max(launch_calls)}"
        )
    if seen:
        figure(
            "  runner's end (its last log line) -> run recorded as ended (this includes "
            f"reading the published result back from git): {spread(seen)}"
        )
    for run in runs:
        if run["state"] != "succeeded":
            figure(f"  ! {run['run_id']} {run['state']}: {run.get('reason')}")


# --- part 3: many concurrent Job runs -------------------------------------------------------


@dataclass
class Sample:
    at: float
    cpu: float
    rss_kib: int
    threads: int
    cluster_cpu: float


def sample(pid: int, cluster: Cluster) -> Sample:
    rss, threads = rss_and_threads(pid)
    cluster_cpu = 0.0
    for component in cluster.components:
        with contextlib.suppress(OSError):
            cluster_cpu += cpu_seconds(component.pid)
    return Sample(time.monotonic(), cpu_seconds(pid), rss, threads, cluster_cpu)


def thread_stats(pid: int) -> dict[int, tuple[float, int]]:
    """CPU seconds and context switches (voluntary + not) of each of the process's threads."""
    stats: dict[int, tuple[float, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            cpu = cpu_seconds_of(task / "stat")
            status = (task / "status").read_text().splitlines()
        except OSError:
            continue
        switches = sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)
        stats[int(task.name)] = (cpu, switches)
    return stats


def thread_spread(before: dict[int, tuple[float, int]], after: dict[int, tuple[float, int]],
                  wall: float) -> str:  # fmt: skip
    """How the CPU of a window was spread over threads, and how often they woke."""
    cpu = sorted(
        ((after[t][0] - before[t][0]) / wall * 100 for t in after if t in before), reverse=True
    )
    switches = sum(after[t][1] - before[t][1] for t in after if t in before) / wall
    top = ", ".join(f"{value:.1f}" for value in cpu[:3])
    return (
        f"{sum(1 for value in cpu if value > 0)} of {len(after)} threads used CPU "
        f"(busiest: {top} % of one core); {switches:.0f} context switches/s"
    )


def watch_process(pid: int, cluster: Cluster, seconds: float) -> list[Sample]:
    samples = [sample(pid, cluster)]
    end = samples[0].at + seconds
    while time.monotonic() < end:
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        samples.append(sample(pid, cluster))
    return samples


def load(bench: Bench, namespace: str) -> None:
    args = bench.args
    c = args.concurrent
    figure(f"== {c} concurrent Job runs, namespace {namespace} ==")
    figure(
        f"service settings: api.qps={args.qps:g} api.burst={args.burst}, log level {args.log_level}"
    )
    inotify = Path("/proc/sys/fs/inotify/max_user_instances").read_text().strip()
    figure(
        f"host: fs.inotify.max_user_instances={inotify} (kwok, like a kubelet, opens one "
        "for each followed container log)"
    )
    make_namespace(bench.core, namespace)
    logs = None if args.no_pod_logs else container_logs(bench.cluster)
    with (
        start_service(bench.root / "service-load", bench.service_env) as service,
        RunObjects(bench.batch.list_namespaced_job, namespace) as jobs,
        RunObjects(bench.core.list_namespaced_pod, namespace, logs) as pods,
    ):
        experiment = bench.remotes.experiment(service)
        idle = watch_process(service.pid, bench.cluster, 3)
        idle_cpu = (idle[-1].cpu - idle[0].cpu) / (idle[-1].at - idle[0].at) * 100

        progress(f"submitting {c} Job runs from {args.submit_threads} client threads")
        calls_before = service.calls()
        cpu_before = cpu_seconds(service.pid)
        posted: dict[str, float] = {}

        def submit(http: httpx.Client, _: str) -> tuple[str, float, float]:
            started = time.monotonic()
            run_id = service.run(http, experiment, "job", namespace)
            return run_id, started, time.monotonic()

        t0 = time.monotonic()
        with profiled(bench, service.pid, "burst"):
            submitted = fan_out(
                service.url, [str(i) for i in range(c)], args.submit_threads, submit
            )
            run_ids = {run_id for run_id, _, _ in submitted.values()}
            jobs.wait(lambda: jobs.count(run_ids) >= c, args.load_timeout)
        t_submitted = max(end for _, _, end in submitted.values())
        for run_id, started, _ in submitted.values():
            posted[run_id] = started
        figure(
            f"submission: {len(run_ids)} runs accepted (202) in {t_submitted - t0:.1f} s = "
            f"{len(run_ids) / (t_submitted - t0):.1f} runs/s ({args.submit_threads} clients); "
            f"POST answered {spread([end - start for _, start, end in submitted.values()])}"
        )
        progress("waiting for every Job")
        if not jobs.wait(lambda: jobs.count(run_ids) >= c, args.load_timeout):
            figure(f"  ! only {jobs.count(run_ids)} of {c} Jobs after {args.load_timeout} s")
        t_jobs = max((jobs.first_seen[r] for r in run_ids if r in jobs.first_seen), default=t0)
        cpu_launch = cpu_seconds(service.pid) - cpu_before
        to_job = [jobs.first_seen[r] - posted[r] for r in run_ids if r in jobs.first_seen]
        figure(f"all {jobs.count(run_ids)} Jobs existed {t_jobs - t0:.1f} s after the first POST")
        figure(f"  POST -> Job exists, under this load: {spread(to_job)}")
        calls_launched = service.settled_calls()
        api_rate = sum((calls_launched - calls_before).values()) / (t_jobs - t0)
        figure(
            f"  API calls per run, launch under load: {per_run(calls_before, calls_launched, c)}"
            f"; ~{api_rate:.0f} calls/s while launching"
        )
        figure(
            f"  service CPU from first POST to last Job: {cpu_launch:.1f} s "
            f"({cpu_launch / c * 1000:.0f} ms per run)"
        )

        progress(f"waiting for {c} pods to be Running (kwok)")
        ok = pods.wait(lambda: pods.running() >= c, args.load_timeout)
        figure(
            f"pods Running: {pods.running()}/{c}"
            f"{'' if ok else f' (gave up after {args.load_timeout} s)'}, "
            f"{time.monotonic() - t0:.1f} s after the first POST"
        )
        time.sleep(2)  # let the last pod events reach the service
        progress(f"sampling the service for {args.sample_seconds:g} s of steady tracking")
        calls_before = service.calls()
        events_before = jobs.events + pods.events
        threads_before = thread_stats(service.pid)
        steady = watch_process(service.pid, bench.cluster, args.sample_seconds)
        threads_after = thread_stats(service.pid)
        calls_after = service.calls()
        events = jobs.events + pods.events - events_before
        wall = steady[-1].at - steady[0].at
        cpu = (steady[-1].cpu - steady[0].cpu) / wall * 100
        plane = (steady[-1].cluster_cpu - steady[0].cluster_cpu) / wall * 100
        rss = [s.rss_kib / 1024 for s in steady]
        threads = [s.threads for s in steady]
        states = service.states()
        figure(
            f"steady tracking of {c} runs ({wall:.0f} s): service CPU {cpu:.1f} % of one core, "
            f"RSS {median(rss):.0f} MiB (max {max(rss):.0f}), threads {max(threads)}"
        )
        figure(f"  {thread_spread(threads_before, threads_after, wall)}")
        figure(f"  Job and pod watch events in the namespace during the window: {events}")
        figure(
            f"  idle before submitting: CPU {idle_cpu:.1f} %, RSS {idle[-1].rss_kib / 1024:.0f} "
            f"MiB, threads {idle[-1].threads}"
        )
        figure(
            f"  API calls during the window: {totals(calls_before, calls_after)}; "
            f"control plane (etcd, apiserver, controllers, kwok) CPU {plane:.0f} % of one core"
        )
        figure(f"  run states: {dict(states)}")

        service = restart(bench, service, bench.root / "service-load", namespace, run_ids, jobs)
        cancel_all(bench, service, sorted(run_ids), namespace)


def cancel_all(bench: Bench, service: Service, run_ids: list[str], namespace: str) -> None:
    """Cancel every run (answered at once, 202) and time until all are ``cancelled``."""
    args = bench.args
    progress(f"cancelling {len(run_ids)} runs from {args.cancel_threads} client threads")
    started = time.monotonic()
    deadline = started + args.cancel_budget
    done = fan_out(service.url, run_ids, args.cancel_threads, _timed_cancel, deadline=deadline)
    answered = time.monotonic() - started
    ok = [t for t, status in done.values() if status in (200, 202)]
    bad = Counter(status for _, status in done.values() if status not in (200, 202))
    figure(
        f"cancel via POST /runs/{{id}}/cancel ({args.cancel_threads} clients): {len(ok)} of "
        f"{len(run_ids)} answered in {answered:.1f} s = {len(ok) / answered:.1f}/s; "
        f"per cancel {spread(ok or [0])}" + (f"; other answers: {dict(bad)}" if bad else "")
    )
    wanted = set(run_ids)

    def all_cancelled() -> bool:
        states = service.states(namespace_runs=wanted)
        return states.get("cancelled", 0) + states.get("succeeded", 0) + states.get(
            "failed", 0
        ) >= len(wanted)

    with contextlib.suppress(WaitTimeout):
        wait_for(all_cancelled, max(1.0, deadline - time.monotonic()), what="every cancel",
                 max_interval=0.5)  # fmt: skip
    took = time.monotonic() - started
    states = service.states(namespace_runs=wanted)
    figure(
        f"  all {len(run_ids)} runs cancelled {took:.1f} s after the first cancel"
        if states.get("cancelled", 0) == len(run_ids)
        else f"  after {took:.1f} s: {dict(states)}"
    )
    if states.get("cancelled", 0) < len(run_ids):
        progress(f"cancel budget ({args.cancel_budget:g} s) spent; deleting namespace {namespace}")
        try:
            gone = f"gone after {drop_namespaces(bench.api, [namespace], args.load_timeout):.1f} s"
        except WaitTimeout:
            gone = f"still there after {args.load_timeout:g} s"
        figure(
            f"  the cancel budget ({args.cancel_budget:g} s) ran out: the Jobs and namespace "
            f"{namespace} deleted instead, {gone}"
        )
    time.sleep(2)
    rss, threads = rss_and_threads(service.pid)
    figure(f"  service threads afterwards {threads}, RSS {rss / 1024:.0f} MiB")


def growth(bench: Bench, namespace: str) -> None:
    """Runs in flight in waves up to each checkpoint; the service's footprint at each."""
    args = bench.args
    points = sorted({int(x) for x in args.growth.split(",") if x.strip()})
    if not points:
        return
    figure(f"== growth: Job runs in flight at {points}, namespace {namespace} ==")
    make_namespace(bench.core, namespace)
    logs = None if args.no_pod_logs else container_logs(bench.cluster)
    with (
        start_service(bench.root / "service-growth", bench.service_env) as service,
        RunObjects(bench.batch.list_namespaced_job, namespace) as jobs,
        RunObjects(bench.core.list_namespaced_pod, namespace, logs) as pods,
    ):
        experiment = bench.remotes.experiment(service)
        rows: list[tuple[int, float, float, int]] = []
        idle = watch_process(service.pid, bench.cluster, args.growth_seconds)
        rows.append(_footprint(0, idle))
        run_ids: list[str] = []
        for target in points:
            wave = target - len(run_ids)

            def submit(http: httpx.Client, _: str) -> str:
                return service.run(http, experiment, "job", namespace)

            progress(f"posting {wave} more Job runs ({target} in flight)")
            run_ids += fan_out(
                service.url, [str(i) for i in range(wave)], args.submit_threads, submit
            ).values()
            ok = pods.wait(lambda t=target: pods.running() >= t, args.load_timeout)  # type: ignore[misc]
            if not ok:
                figure(f"  ! only {pods.running()} of {target} pods Running")
            jobs.wait(lambda t=target: len(jobs.live) >= t, 30)  # type: ignore[misc]
            time.sleep(2)
            rows.append(_footprint(target, watch_process(service.pid, bench.cluster,
                                                         args.growth_seconds)))  # fmt: skip
        figure(f"  runs in flight | service CPU % of one core | RSS MiB | threads "
               f"({args.growth_seconds:g} s windows)")  # fmt: skip
        for runs, cpu, rss, threads in rows:
            figure(f"  {runs:>14} | {cpu:>25.1f} | {rss:>7.0f} | {threads:>7}")
        (n0, _, rss0, threads0), (n1, _, rss1, threads1) = rows[1], rows[-1]
        if n1 > n0:
            figure(
                f"  growth per run from {n0} to {n1}: RSS {(rss1 - rss0) * 1024 / (n1 - n0):.0f} "
                f"KiB, threads {(threads1 - threads0) / (n1 - n0):.3f}"
            )
        cancel_all(bench, service, run_ids, namespace)
    with contextlib.suppress(ApiException, WaitTimeout):
        drop_namespaces(bench.api, [namespace], 180)


def _footprint(runs: int, samples: Sequence[Sample]) -> tuple[int, float, float, int]:
    wall = samples[-1].at - samples[0].at
    cpu = (samples[-1].cpu - samples[0].cpu) / wall * 100 if wall > 0 else 0.0
    return runs, cpu, median([x.rss_kib / 1024 for x in samples]), max(x.threads for x in samples)


def restart(bench: Bench, service: Service, home: Path, namespace: str, run_ids: set[str],
            jobs: RunObjects) -> Service:  # fmt: skip
    """SIGKILL the service, start it again on its data dir; how long until it answers."""
    progress(f"killing the service (SIGKILL) with {len(run_ids)} runs in flight")
    port = free_port()
    child_env = dict(os.environ)
    child_env.update(bench.service_env)
    child_env.update(MLEXP_DATA_DIR=str(home / "data"), MLEXP_PORT=str(port),
                     MLEXP_HOST="127.0.0.1")  # fmt: skip
    os.kill(service.pid, signal.SIGKILL)
    killed = time.monotonic()
    with contextlib.suppress(ChildProcessError):
        os.waitpid(service.pid, 0)
    log = (home / f"service-{port}.log").open("ab")
    child = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "serve"],
        cwd=REPO_ROOT, env=child_env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    bench.children.append((child, log))
    url = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=url, timeout=300)
    answered = None
    with profiled(bench, child.pid, "restart"):
        while time.monotonic() - killed < 300 and child.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if http.get("/healthz", timeout=2).status_code == 200:
                    answered = time.monotonic() - killed
                    break
            time.sleep(0.02)
    if answered is None:
        raise RuntimeError(f"the restarted service did not answer (log {log.name})")
    again = Service(child.pid, url, http, home / f"service-{port}.log")
    calls = again.calls()
    running = again.states(namespace_runs=run_ids).get("running", 0)
    lines = again.log.read_text(errors="replace").splitlines()
    adopted = sum(1 for line in lines if "run adopted" in line)
    time.sleep(2)
    figure(
        f"restart with {len(run_ids)} Job runs in flight: answering again {answered:.2f} s after "
        f"SIGKILL; {adopted} runs re-attached before it answered, {running} still running; "
        f"API calls to get there: {dict(calls)}"
    )
    figure(f"  Jobs in the namespace afterwards: {len(jobs.live)} for {len(run_ids)} runs "
           f"({max(0, len(jobs.live) - len(run_ids))} duplicates)")  # fmt: skip
    for line in lines:
        if '"runs reconciled"' in line:
            figure(f"  the service's own account: {line[:300]}")
    return again


# --- main ------------------------------------------------------------------------------------


@contextlib.contextmanager
def profiled(bench: Bench, pid: int, name: str) -> Iterator[None]:
    """With ``--profile DIR``: py-spy samples ``pid`` meanwhile; its hottest frames are
    printed after (collapsed stacks kept in DIR/<name>.txt)."""
    if bench.args.profile is None:
        yield
        return
    bench.args.profile.mkdir(parents=True, exist_ok=True)
    out = bench.args.profile / f"{name}.txt"
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    recorder = subprocess.Popen(
        [spy, "record", "-p", str(pid), "-o", str(out), "-f", "raw", "-r", "200", "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(timeout=60)
    if out.exists():
        figure(f"  profile of {name} ({out}): {hot_frames(out)}")


def hot_frames(path: Path, top: int = 10) -> str:
    """The frames of the project's code most often on the stack, as % of samples."""
    total = 0
    inclusive: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        # py-spy names files relative to the import path: ours are controller/... and api/...
        frames = {f for f in stack.split(";") if " (controller/" in f or " (api/" in f}
        for frame in {f.rsplit(":", 1)[0] + ")" for f in frames}:
            inclusive[frame] += int(count)
    parts = [f"{name.strip()} {n / total * 100:.0f}%" for name, n in inclusive.most_common(top)]
    return f"{total} samples; " + "; ".join(parts)


def floor(bench: Bench, namespace: str) -> None:
    """The control plane's own pace: the same Job + ConfigMap creates the service makes for
    ``--concurrent`` runs, made straight from this process with ``--submit-threads`` x 2
    threads (as many as the service's launch pool), in an empty namespace."""
    args = bench.args
    c = args.concurrent
    threads = args.submit_threads * 2
    figure(f"== the floor: {c} Jobs and their ConfigMaps created directly ({threads} threads) ==")
    make_namespace(bench.core, namespace)
    runner_source = (REPO_ROOT / "controller" / "runner.py").read_text()
    batch, core = bench.batch, bench.core

    def create(_: httpx.Client, item: str) -> float:
        run_id = new_id("run")
        job = m.run_job(
            run_id=run_id, experiment_id="exp_floor", namespace=namespace,
            image="mlexp/workload:bench", image_pull_policy="IfNotPresent", secret_name=None,
            pull_secret_name=None, configmap_name=m.run_configmap_name(run_id), resources=None,
            service_account=None, backoff_limit=0, active_deadline_seconds=600,
            ttl_seconds_after_finished=None, node_selector={}, tolerations=(),
            pod_labels=dict(MANUAL_DRIVE),
        )  # fmt: skip
        started = time.monotonic()
        created = json.loads(
            batch.create_namespaced_job(namespace, body=job, _preload_content=False).data
        )
        took = time.monotonic() - started
        owner = m.owner_reference(api_version="batch/v1", kind="Job", name=m.run_job_name(run_id),
                                  uid=created["metadata"]["uid"])  # fmt: skip
        configmap = m.runner_configmap(
            run_id=run_id, experiment_id="exp_floor", namespace=namespace,
            runner_source=runner_source, spec={"run_id": run_id}, owner_references=(owner,),
        )  # fmt: skip
        core.create_namespaced_config_map(namespace, body=configmap, _preload_content=False)
        return took

    started = time.monotonic()
    took = fan_out("http://unused", [str(i) for i in range(c)], threads, create)
    wall = time.monotonic() - started
    figure(
        f"  {c} Jobs (+ ConfigMaps) created in {wall:.1f} s = {c / wall:.1f} Jobs/s; "
        f"Job create answered {spread(list(took.values()))}"
    )
    with contextlib.suppress(ApiException, WaitTimeout):
        drop_namespaces(bench.api, [namespace], args.load_timeout)


def _stop_children(bench: Bench) -> None:
    """Services the benchmark started again after killing them."""
    for child, log in bench.children:
        if child.poll() is None:
            child.terminate()
            child.wait(timeout=30)
        log.close()


def service_problems(services: Sequence[Path]) -> None:
    for log in services:
        lines = log_problems(log)
        figure(f"service log {log.name}: {len(lines)} warning/error lines")
        for line in lines[:8]:
            figure(f"  {line[:400]}")
        events = Counter(
            str(json.loads(line).get("event")) for line in lines if line.startswith("{")
        )
        if events:
            figure(f"  by event: {dict(events)}")


def code_state() -> str:
    """The commit measured, and any uncommitted changes to the service's code."""
    git = ["git", "-C", str(REPO_ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    changed = subprocess.run(
        [*git, "status", "--porcelain", "--", "api", "controller"], capture_output=True, text=True
    )
    dirty = [line[3:] for line in changed.stdout.splitlines()]
    return f"commit {head.stdout.strip() or '?'}" + (
        f", uncommitted changes in {', '.join(dirty)}" if dirty else ""
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--runs", type=int, default=20, help="launch-only Job runs, one at a time (parts 1, 2)")
    add("--concurrent", type=int, default=1000, help="Job runs posted at once (part 4)")
    add("--growth", default="100,500", help="runs in flight at which to sample (part 3)")
    add("--growth-seconds", type=float, default=10, help="sample window at each of them")
    add("--complete", type=int, default=3, help="complete Job runs driven by JobDriver")
    add("--exec-runs", type=int, default=3, help="runs exec'd into a StatefulSet pod")
    add("--exec-together", action="store_true", help="start the exec runs at once")
    add("--exec-seconds", type=int, default=30, help="how long each exec run's stage lasts")
    add("--poll-seconds", type=float, default=2.0, help="exec.poll_seconds (shipped default 2)")
    add("--qps", type=float, default=500, help="the service's api.qps")
    add("--burst", type=int, default=1000, help="the service's api.burst")
    add("--submit-threads", type=int, default=8, help="clients posting the concurrent runs")
    add("--cancel-threads", type=int, default=8, help="clients cancelling them")
    add("--cancel-budget", type=float, default=180, help="then delete the namespace instead")
    add("--sample-seconds", type=float, default=30, help="steady-tracking sample window")
    add("--load-timeout", type=float, default=300, help="wait for all Jobs / pods")
    add(
        "--no-pod-logs",
        action="store_true",
        help="leave the held pods without a container log (kwok then answers log requests "
        "with an error)",
    )
    add("--log-level", default="INFO", help="the service's MLEXP_LOG_LEVEL")
    add("--floor", action=argparse.BooleanOptionalAction, default=True,
        help="last, create the burst's Jobs directly, for the control plane's pace")  # fmt: skip
    add("--profile", type=Path, help="sample the burst and the restart with py-spy, into DIR")
    add("--keep", type=Path, help="work in this (new) directory and keep it: logs, cluster state")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's access log
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            root = args.keep.resolve()
            root.mkdir(parents=True, exist_ok=False)
        else:
            root = Path(tempfile.mkdtemp(prefix="mlexp-k8s-bench-"))
            stack.callback(shutil.rmtree, root, ignore_errors=True)
        progress(f"work dir {root}")
        progress("building or reusing the cluster binaries")
        bin_dir = build_binaries(progress=True)
        s3 = stack.enter_context(S3Server())
        git = stack.enter_context(
            GitHttpServer(root / "git", username=GIT_USER, password=GIT_TOKEN)
        )
        progress("starting the control plane")
        cluster = stack.enter_context(Cluster.start(root / "k8s", bin_dir=bin_dir))
        progress(f"control plane up after {time.monotonic() - started:.0f} s")
        api = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(cluster.kubeconfig)
        )
        stack.callback(api.close)

        k8s_config = root / "k8s-config.yaml"
        k8s_config.write_text(
            yaml.safe_dump(
                {
                    "kubeconfig": str(cluster.kubeconfig),
                    "namespaces": {"allowed": ["bench-*"], "prohibited": ["kube-*"]},
                    "defaults": {"image": "mlexp/workload:bench"},
                    "jobs": {"backoff_limit": 0, "pod_labels": dict(MANUAL_DRIVE)},
                    "exec": {
                        "work_root": str(root / "exec-runs"),
                        "poll_seconds": args.poll_seconds,
                    },
                    "api": {"qps": args.qps, "burst": args.burst},
                }
            )
        )
        env = {
            "MLEXP_K8S_CONFIG_FILE": str(k8s_config),
            "MLEXP_CONFIG_FILE": str(root / "no-server.yaml"),
            "MLEXP_GIT_CA_BUNDLE": str(git.ca_file),
            "MLEXP_LOG_LEVEL": args.log_level,
            # The git and S3 servers listen on loopback, refused by default in this profile.
            "MLEXP_EGRESS__ALLOWED_NETWORKS": '["127.0.0.0/8"]',
        }
        bench = Bench(args, root, cluster, api, Remotes(git, s3), env)
        tag = uuid.uuid4().hex[:6]
        launch_ns, drive_ns, load_ns = (f"bench-{tag}-{p}" for p in ("launch", "drive", "load"))
        figure(f"code: {code_state()}")
        figure(
            "Kubernetes API calls: the service's counter (GET /healthz kubernetes_api_calls), "
            "differences / runs. The tracker re-opens each namespace's 2 watches every 60 s; "
            "those re-opens fall into whatever window they land in."
        )

        for namespace in (launch_ns, drive_ns):
            make_namespace(bench.core, namespace)
        with start_service(root / "service-calls", env) as service:
            experiment = bench.remotes.experiment(service)
            launch_only(bench, service, launch_ns, experiment)
            complete_jobs(bench, service, drive_ns, experiment)
            exec_runs(bench, service, drive_ns, experiment)
        progress("deleting the first namespaces (the fake nodes hold 500 pods in all)")
        drop_namespaces(bench.api, [launch_ns, drive_ns], 180)

        stack.callback(_stop_children, bench)
        try:
            growth(bench, f"bench-{tag}-growth")
            load(bench, load_ns)
            if args.floor:
                floor(bench, f"bench-{tag}-floor")
        finally:
            with contextlib.suppress(ApiException, WaitTimeout):
                drop_namespaces(bench.api, [load_ns], 180)
        figure()
        service_problems(sorted(root.glob("service-*/service-*.log")))
        figure(f"total time {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
