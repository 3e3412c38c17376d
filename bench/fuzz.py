"""Fuzzing, the long version: schemathesis against the service's own OpenAPI document.

    .venv/bin/python bench/fuzz.py [--examples 500] [--max-time 1800] [--seed 1]

Starts a service (a tokens file with one admin token, the local profile), runs
``st run`` over every operation (coverage, fuzzing and stateful phases) with the
checks no-5xx, response schema and content type, and prints operations, cases, 5xx
and failures. tests/integration/test_fuzz_api.py is the short version in CI.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import REPO_ROOT

from controller.settings import Settings
from tests.support.fuzz import fuzz
from tests.support.service import service_in_thread

TOKEN = "bench-fuzz-admin-token-0123456789"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--max-time", type=int, default=1800)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlexp-fuzz-") as tmp:
        root = Path(tmp)
        tokens = root / "tokens.yaml"
        tokens.write_text(f"tokens:\n  - {{token: {TOKEN}, name: fuzzer, admin: true}}\n")
        settings = Settings(
            data_dir=root / "data", config_file=root / "none.yaml",
            k8s_config_file=root / "none-k8s.yaml", tokens_file=tokens,
            requests_per_second=0,
        )  # fmt: skip
        with service_in_thread(settings) as service:
            report = fuzz(
                service.url, TOKEN, examples=args.examples, workdir=root, seed=args.seed,
                max_time=args.max_time,
            )  # fmt: skip
    print(f"fuzz ({REPO_ROOT.name}): {report.summary()}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
