"""Run schemathesis' CLI against a running service and read its JSON-lines report."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

CHECKS = "not_a_server_error,response_schema_conformance,content_type_conformance"


@dataclass
class FuzzReport:
    operations: int = 0
    cases: int = 0
    server_errors: int = 0
    failures: list[str] = field(default_factory=list)
    output: str = ""

    def summary(self) -> str:
        text = (
            f"{self.operations} operations, {self.cases} cases, "
            f"{self.server_errors} 5xx, {len(self.failures)} failures"
        )
        if self.failures:
            text += "\n" + "\n".join(self.failures[:20]) + "\n" + self.output[-4000:]
        return text


def fuzz(
    url: str,
    token: str,
    *,
    examples: int,
    workdir: Path,
    seed: int = 1,
    max_time: int | None = None,
) -> FuzzReport:
    events = workdir / "fuzz-events.ndjson"
    argv = [
        str(Path(sys.executable).parent / "st"), "run", f"{url}/openapi.json",
        "--header", f"Authorization: Bearer {token}",
        "--checks", CHECKS, "--max-examples", str(examples), "--seed", str(seed),
        "--workers", "1", "--request-timeout", "60", "--continue-on-failure",
        "--report", "ndjson", "--report-ndjson-path", str(events),
        "--suppress-health-check", "all", "--warnings", "off",
    ]  # fmt: skip
    if max_time is not None:
        argv += ["--max-time", str(max_time)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=3600)
    out = proc.stdout + proc.stderr
    report = FuzzReport(output=out)
    for line in events.read_text().splitlines() if events.exists() else []:
        loaded = json.loads(line).get("LoadingFinished")
        if loaded:
            report.operations = int(loaded["statistic"]["operations"]["selected"])
    generated = re.search(r"(\d+) generated", out)
    report.cases = int(generated.group(1)) if generated else 0
    section = out.split("Failures:", 1)[1].split("Test cases:", 1)[0] if "Failures:" in out else ""
    for line in section.splitlines():
        line = line.strip()
        if line.startswith("❌"):
            report.failures.append(line.lstrip("❌ ").strip())
            if "Server error" in line:
                report.server_errors += int(line.rsplit(":", 1)[-1].strip() or 0)
    if proc.returncode != 0 and not report.failures:
        report.failures.append(f"schemathesis exited with {proc.returncode}")
    return report
