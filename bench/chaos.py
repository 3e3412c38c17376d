"""Chaos, the long version: SIGKILL the service many times while local runs are queued,
launching, running and publishing; restart it each time; then check every run.

    .venv/bin/python bench/chaos.py --kills 200 [--runs-per-round 2] [--seed 1]

Prints the kills, runs, final states, the problems found (lost runs, runs done twice,
outcome not matching publication) and the median time from restart to answering.
The checks are those of tests/support/chaos.py (the e2e test is the short version).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import REPO_ROOT

from tests.support.chaos import run_chaos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--runs-per-round", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlexp-chaos-") as tmp:
        try:
            report = run_chaos(
                Path(tmp), kills=args.kills, runs_per_round=args.runs_per_round,
                seed=args.seed, settle_timeout=3600, log=lambda line: print(line, flush=True),
            )  # fmt: skip
        except AssertionError:
            service_log = Path(tmp) / "chaos-service.log"
            if service_log.exists():  # what the service said before it would not start
                print(service_log.read_text(errors="replace")[-4000:], file=sys.stderr)
            raise
    print(f"chaos ({REPO_ROOT.name}): {report.summary()}")
    for problem in report.problems:
        print(f"  problem: {problem}")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
