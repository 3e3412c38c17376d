"""Status reads and run submissions against the floor of the stack, side by side, with wrk.

The floor is a bare FastAPI app: one GET route returning a dict, the JSON of the very
run the service is asked for; a plain ``def`` (FastAPI runs it in its thread pool, as
the issue's floor did), or ``async def`` with ``--floor-route async``. It runs under
plain uvicorn with the service's loop, HTTP implementation, keep-alive and backlog, in a
process of its own. The service is ``mlexp serve`` (one worker) on a fresh data dir with
the executor held to one slot by a run whose stage sleeps, so posted runs stay queued;
they are cancelled afterwards.

Each repetition drives, one after the other and with the same wrk settings: the floor
(``GET /runs/{id}``), the service (``GET /runs/{id}`` of a queued run) and the service
(``POST /experiment/run``, a JSON body, 202 expected). With ``--baseline DIR`` (another
source tree of the service, e.g. ``git archive <commit> api controller | tar -x -C DIR``;
repeatable) that tree's service is measured too, in the same repetitions. Prints
requests/s, p50 and p99, the server's CPU time per request (all its threads; it depends
far less on how busy the machine is than rates do) and the ratios to the floor; then the
medians over the repetitions. Targets (issue 9): GET >= 0.8 of the floor with p99 < 50 ms;
POST >= 0.5 of the floor with p99 < 100 ms.

    .venv/bin/python bench/api_floor.py [--seconds 10] [--reps 3] [--connections 16]
                                        [--baseline DIR]

Needs ``wrk`` (Debian/Ubuntu: ``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from common import REPO_ROOT, ServiceClient, cpu_seconds, median, service

from tests.support.bundles import SLEEPY_DVC, small_parts, wait_for_stage
from tests.support.service import free_port

FLOOR = "floor GET (bare FastAPI)"
TARGETS = "targets: GET >= 0.80 of the floor, p99 < 50 ms; POST >= 0.50 of the floor, p99 < 100 ms"
# wrk's own summary as one JSON line (latencies in microseconds).
REPORT_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "socket_errors": %d, "bad_status": %d, '
    .. '"p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class Figures:
    rate: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # the server's CPU time per request
    bad: int

    def line(self, name: str, floor: Figures | None = None) -> str:
        ratio = f"  = {self.rate / floor.rate:.2f} of the floor" if floor else ""
        bad = f"  errors {self.bad}" if self.bad else ""
        return (
            f"{name:<32} {self.rate:6.0f}/s  p50 {self.p50_ms:6.1f} ms  p99 {self.p99_ms:6.1f} ms"
            f"  cpu {self.cpu_us:5.0f} us/req{ratio}{bad}"
        )


@dataclass(frozen=True)
class Case:
    url: str
    script: Path
    pid: int


def wrk(case: Case, args: argparse.Namespace, seconds: float) -> Figures:
    cpu_before = cpu_seconds(case.pid)
    out = subprocess.run(
        ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{max(1, round(seconds))}s",
         "--timeout", "10s", "-s", str(case.script), case.url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    cpu = cpu_seconds(case.pid) - cpu_before
    line = next(x for x in out.splitlines() if x.startswith("WRK_JSON "))
    raw = json.loads(line.removeprefix("WRK_JSON "))
    return Figures(
        rate=raw["requests"] / (raw["duration_us"] / 1e6),
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        cpu_us=cpu / max(1, raw["requests"]) * 1e6,
        bad=raw["socket_errors"] + raw["bad_status"],
    )


# -- the floor: a bare FastAPI app in a process of its own ----------------------------------


def serve_floor(port: int, body_file: Path, *, sync: bool) -> None:
    """``api_floor.py --floor PORT BODY``: the bare app, under plain uvicorn with the
    service's loop and HTTP implementation (not its guarded protocol)."""
    import uvicorn
    from fastapi import FastAPI
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from api.server import server_config
    from controller.settings import Settings

    document: dict[str, object] = json.loads(body_file.read_text())
    app = FastAPI()

    if sync:

        @app.get("/runs/{run_id}")
        def get_run(run_id: str) -> dict[str, object]:
            return {**document, "run_id": run_id}

    else:

        @app.get("/runs/{run_id}")
        async def get_run_async(run_id: str) -> dict[str, object]:
            return {**document, "run_id": run_id}

    ours = server_config(Settings(), port=port)
    http = "h11" if isinstance(ours.http, type) and issubclass(ours.http, H11Protocol) else "auto"
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        http=http,
        loop=ours.loop,
        timeout_keep_alive=ours.timeout_keep_alive,
        backlog=ours.backlog,
        log_level="warning",
        access_log=False,
    )


@contextmanager
def floor(document: dict[str, object], tmp: Path, route: str) -> Iterator[tuple[str, int]]:
    """The floor's URL and process id."""
    port = free_port()
    body_file = tmp / "floor-body.json"
    body_file.write_text(json.dumps(document))
    child = subprocess.Popen(
        [sys.executable, __file__, "--floor", str(port), str(body_file), "--floor-route", route],
        cwd=REPO_ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/runs/x").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or child.poll() is not None:
                raise RuntimeError("the floor app did not start")
            time.sleep(0.05)
        yield url, child.pid
    finally:
        child.terminate()
        child.wait(timeout=30)


# -- the service, holding its one slot ----------------------------------------------------------


@dataclass(frozen=True)
class Target:
    http: ServiceClient
    experiment_id: str
    run_id: str  # a queued run, read by GET


@contextmanager
def held_service(data_dir: Path, root: Path) -> Iterator[Target]:
    """The service from ``root`` with its one slot taken by a run that sleeps."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with service(data_dir, root=root, max_concurrent_runs="1") as http:
        experiment_id = _create(http)
        holder = _start(http, experiment_id)
        try:
            wait_for_stage(http, holder)
            yield Target(http, experiment_id, _start(http, experiment_id))
        finally:
            _cancel_all(http)


def cases_of(name: str, target: Target, tmp: Path) -> dict[str, Case]:
    base = str(target.http.base_url).rstrip("/")
    get_lua = tmp / f"{name}-get.lua"
    get_lua.write_text(REPORT_LUA)
    post_lua = tmp / f"{name}-post.lua"
    body = json.dumps({"experiment_id": target.experiment_id, "params": {"x": 2}})
    post_lua.write_text(
        f"wrk.method = 'POST'\nwrk.body = '{body}'\n"
        "wrk.headers['Content-Type'] = 'application/json'\n" + REPORT_LUA
    )
    return {
        f"{name} GET /runs/{{id}}": Case(f"{base}/runs/{target.run_id}", get_lua, target.http.pid),
        f"{name} POST /experiment/run": Case(f"{base}/experiment/run", post_lua, target.http.pid),
    }


# -- the benchmark ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10, help="of each wrk run")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of each, unmeasured")
    parser.add_argument(
        "--floor-route",
        choices=["def", "async"],
        default="def",
        help="the floor's handler: a plain def (run in the thread pool) or an async def",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        action="append",
        default=[],
        help="another source tree of the service, measured too (repeatable; named by its "
        "directory)",
    )
    parser.add_argument("--floor", nargs=2, metavar=("PORT", "BODY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        serve_floor(int(args.floor[0]), Path(args.floor[1]), sync=args.floor_route == "def")
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk (Debian/Ubuntu), brew install wrk")

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mlexp-bench-")))
        targets = {
            "service": stack.enter_context(held_service(tmp / "service" / "data", REPO_ROOT))
        }
        for root in args.baseline:
            name = root.resolve().name
            targets[name] = stack.enter_context(held_service(tmp / name / "data", root.resolve()))
        document = targets["service"].http.get(f"/runs/{targets['service'].run_id}").json()
        floor_url, floor_pid = stack.enter_context(floor(document, tmp, args.floor_route))
        cases = {
            FLOOR: Case(f"{floor_url}/runs/{document['run_id']}", tmp / "floor.lua", floor_pid)
        }
        cases[FLOOR].script.write_text(REPORT_LUA)
        for name, target in targets.items():
            cases.update(cases_of(name, target, tmp))
        results = measure(cases, args)

    print("median over the repetitions:")
    summary = {
        name: Figures(
            rate=median([f.rate for f in figures]),
            p50_ms=median([f.p50_ms for f in figures]),
            p99_ms=median([f.p99_ms for f in figures]),
            cpu_us=median([f.cpu_us for f in figures]),
            bad=sum(f.bad for f in figures),
        )
        for name, figures in results.items()
    }
    for name, figures in summary.items():
        print("  " + figures.line(name, None if name == FLOOR else summary[FLOOR]))
    print(TARGETS)


def measure(cases: dict[str, Case], args: argparse.Namespace) -> dict[str, list[Figures]]:
    print(
        f"wrk: {args.connections} connections, {args.threads} thread(s), "
        f"{args.seconds:g} s each, {args.reps} repetition(s); {os.cpu_count()} CPUs; "
        f"floor route: {args.floor_route}",
        flush=True,
    )
    for case in cases.values():  # warm every process up
        wrk(case, args, args.warmup)
    results: dict[str, list[Figures]] = {name: [] for name in cases}
    for rep in range(args.reps):
        for name, case in cases.items():
            results[name].append(wrk(case, args, args.seconds))
        print(f"rep {rep + 1}:", flush=True)
        for name, figures in results.items():
            floor_now = None if name == FLOOR else results[FLOOR][-1]
            print("  " + figures[-1].line(name, floor_now), flush=True)
    return results


def _create(http: httpx.Client) -> str:
    response = http.post("/experiment/create", files=small_parts(SLEEPY_DVC))
    response.raise_for_status()
    return str(response.json()["experiment_id"])


def _start(http: httpx.Client, experiment_id: str) -> str:
    response = http.post("/experiment/run", json={"experiment_id": experiment_id})
    response.raise_for_status()
    return str(response.json()["run_id"])


def _cancel_all(http: httpx.Client) -> None:
    """Queued runs first (so none starts meanwhile), then the one holding the slot, waiting
    until its runner is gone."""
    query: dict[str, object] = {"state": ["queued"], "limit": 1000}
    with ThreadPoolExecutor(max_workers=4) as pool:
        while pending := http.get("/runs", params=query).json():
            list(pool.map(lambda run: http.post(f"/runs/{run['run_id']}/cancel"), pending))
    query["state"] = ["queued", "running"]
    while pending := http.get("/runs", params=query).json():
        for run in pending:
            http.post(f"/runs/{run['run_id']}/cancel", params={"wait": "true"})


if __name__ == "__main__":
    main()
