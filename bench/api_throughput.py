"""Status reads and run submissions per second, with p50/p99 latency (uvicorn, one worker).

Reads: ``GET /runs/{id}`` from N client threads for a fixed time. Submissions:
``POST /experiment/run`` (accepted = 202, the run queued) from N threads, with the
executor held to one slot; queued runs are cancelled afterwards.

    .venv/bin/python bench/api_throughput.py [--seconds 10] [--clients 8]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from common import median, percentile, sample_parts, service


def hammer(
    url: str, clients: int, seconds: float, call: Callable[[httpx.Client], int]
) -> tuple[int, list[float]]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker() -> None:
        nonlocal errors
        with httpx.Client(base_url=url, timeout=30) as http:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                status = call(http)
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    errors += status >= 400

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors, latencies


def report(name: str, seconds: float, errors: int, latencies: list[float]) -> None:
    print(
        f"{name}: {len(latencies) / seconds:.0f}/s  p50 {median(latencies) * 1000:.1f} ms"
        f"  p99 {percentile(latencies, 99) * 1000:.1f} ms  errors {errors}  (n={len(latencies)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="mlexp-bench-") as tmp,
        service(Path(tmp) / "data", max_concurrent_runs="1") as http,
    ):
        url = str(http.base_url)
        experiment_id = http.post("/experiment/create", files=sample_parts()).json()[
            "experiment_id"
        ]
        run_id = http.post("/experiment/run", json={"experiment_id": experiment_id}).json()[
            "run_id"
        ]

        errors, latencies = hammer(
            url, args.clients, args.seconds, lambda c: c.get(f"/runs/{run_id}").status_code
        )
        report("status reads (GET /runs/{id})", args.seconds, errors, latencies)

        body = {"experiment_id": experiment_id, "params": {"train.C": 0.3}}
        errors, latencies = hammer(
            url,
            args.clients,
            args.seconds,
            lambda c: c.post("/experiment/run", json=body).status_code,
        )
        report("submissions (POST /experiment/run)", args.seconds, errors, latencies)

        query = {"state": ["queued", "running"], "limit": 1000}
        while pending := http.get("/runs", params=query).json():
            for run in pending:
                http.post(f"/runs/{run['run_id']}/cancel")


if __name__ == "__main__":
    main()
