"""Shared by the benchmarks: a service process on a fresh data dir, and small statistics."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.support.bundles import sample_parts  # noqa: E402
from tests.support.service import free_port  # noqa: E402

# dvc and python of this venv first, for the service's runners and the by-hand steps alike.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
os.environ["DVC_NO_ANALYTICS"] = "1"
# Both sides may use (and write) compiled bytecode, as they would on a normal machine.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

__all__ = [
    "REPO_ROOT",
    "ServiceClient",
    "cpu_seconds",
    "median",
    "percentile",
    "sample_parts",
    "service",
]


class ServiceClient(httpx.Client):
    """A client of the service, knowing the service's process id."""

    pid: int


@contextmanager
def service(data_dir: Path, *, root: Path = REPO_ROOT, **settings: str) -> Iterator[ServiceClient]:
    """``mlexp serve`` (uvicorn, one worker) as a child process.

    ``root``: the source tree whose service runs (another checkout of the repository, say
    ``git archive <commit> | tar -x -C <dir>``, to compare with; this venv's packages).
    """
    port = free_port()
    env = dict(
        os.environ, MLEXP_DATA_DIR=str(data_dir), MLEXP_PORT=str(port), MLEXP_LOG_LEVEL="WARNING"
    )
    env.update({f"MLEXP_{k.upper()}": v for k, v in settings.items()})
    log = (data_dir.parent / "service.log").open("ab")
    child = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "serve"],
        cwd=root,
        env=env,
        stdout=log,
        stderr=log,
    )
    client = ServiceClient(base_url=f"http://127.0.0.1:{port}", timeout=60)
    client.pid = child.pid
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or child.poll() is not None:
                raise RuntimeError("the service did not start; see service.log")
            time.sleep(0.05)
        yield client
    finally:
        client.close()
        child.terminate()
        child.wait(timeout=30)
        log.close()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
