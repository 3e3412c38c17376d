"""A run through the service against the same steps done by hand, alternating, same machine.

For each repetition: one run of the sample bundle through the service (from
``POST /experiment/run`` to ``succeeded`` seen by ``GET /runs/{id}``), then the same
steps by hand with git and dvc (bench/manual_run.sh) on a twin repository with its own
DVC remote, with the same ``train.C``. Prints each pair, the medians, the ratio and the
seconds added. Target (issue 2): ratio <= 1.15 and <= 1.5 s added at the median.

    .venv/bin/python bench/run_overhead.py [--reps 5]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, median, sample_parts, service


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="mlexp-bench-") as tmp,
        service(Path(tmp) / "data") as http,
    ):
        ours = http.post("/experiment/create", files=sample_parts()).json()
        twin = http.post("/experiment/create", files=sample_parts()).json()
        through_service, by_hand = [], []
        for rep in range(args.reps):
            c = round(0.05 * (rep + 1), 3)
            started = time.perf_counter()
            run_id = http.post(
                "/experiment/run",
                json={"experiment_id": ours["experiment_id"], "params": {"train.C": c}},
            ).json()["run_id"]
            while (run := http.get(f"/runs/{run_id}").json())["state"] not in (
                "succeeded",
                "failed",
            ):
                time.sleep(0.05)
            through_service.append(time.perf_counter() - started)
            assert run["state"] == "succeeded", run

            started = time.perf_counter()
            subprocess.run(
                [str(REPO_ROOT / "bench" / "manual_run.sh"), twin["git_url"], "main",
                 f"manual/{rep}", str(c), str(Path(tmp) / f"manual-{rep}")],
                check=True,
            )  # fmt: skip
            by_hand.append(time.perf_counter() - started)
            print(f"rep {rep}: service {through_service[-1]:.2f} s   by hand {by_hand[-1]:.2f} s")
    s, h = median(through_service), median(by_hand)
    print(f"median through the service: {s:.2f} s")
    print(f"median by hand (git + dvc): {h:.2f} s")
    print(f"ratio service/by hand: {s / h:.3f}   (target <= 1.15)")
    print(f"added at the median: {s - h:+.2f} s   (target <= 1.5 s)")


if __name__ == "__main__":
    main()
