"""Chaos: SIGKILL the service at random moments while runs are queued, launching, running
and publishing; restart it each time; then check that nothing was lost or done twice.

Used by the e2e test (a few kills, CI-sized) and by ``bench/chaos.py`` (hundreds).
Checks, once the last service has settled every run:

- every run the API accepted (202) exists and reached a final state;
- a run whose branch was published is ``succeeded`` and vice versa (its outcome is
  its publication), and every run succeeded (a kill is no reason to fail a run);
- no run was executed twice: its branch was pushed exactly once (the bare repo keeps
  a reflog of every ref update) and its log shows one ``dvc repro``.

Submissions use an ``Idempotency-Key``, so a POST whose answer the kill swallowed is
sent again without creating a second run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.bundles import small_parts
from tests.support.service import REPO_ROOT, free_port

CHAOS_DVC = """\
stages:
  work:
    cmd: >-
      python -c "import json, time, yaml; p = yaml.safe_load(open('params.yaml'));
      time.sleep(p['nap']); json.dump({'x': p['x']}, open('m.json', 'w'))"
    params: [x, nap]
    metrics:
      - m.json: {cache: false}
"""
FINAL = ("succeeded", "failed", "cancelled")


@dataclass
class ChaosReport:
    kills: int = 0
    runs: list[str] = field(default_factory=list)
    states: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    restart_seconds: list[float] = field(default_factory=list)

    def summary(self) -> str:
        restarts = sorted(self.restart_seconds)
        median = restarts[len(restarts) // 2] if restarts else 0.0
        return (
            f"{self.kills} kills, {len(self.runs)} runs, states {dict(self.states)}, "
            f"{len(self.problems)} problems, {self.seconds:.0f} s, "
            f"median restart-to-answer {median:.2f} s"
        )


class ServiceProcess:
    """``mlexp serve`` on a fixed port and data dir, killed and started again at will."""

    def __init__(self, data_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.env.update(
            MLEXP_DATA_DIR=str(data_dir), MLEXP_PORT=str(self.port), MLEXP_HOST="127.0.0.1",
            MLEXP_LOG_LEVEL="WARNING",
        )  # fmt: skip
        self.child: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start and wait until it answers; returns the seconds that took."""
        started = time.monotonic()
        log = (self.data_dir.parent / "chaos-service.log").open("ab")
        self.child = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "serve"],
            cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        with httpx.Client(base_url=self.url, timeout=5) as probe:
            while time.monotonic() - started < 120:
                if self.child.poll() is not None:
                    raise AssertionError(f"the service exited with {self.child.returncode}")
                try:
                    if probe.get("/healthz").status_code == 200:
                        return time.monotonic() - started
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        raise AssertionError("the service did not answer within 120 s")

    def kill(self) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGKILL)
            self.child.wait()

    def stop(self) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()
            self.child.wait(timeout=30)


def _post_run(
    http: httpx.Client,
    experiment_id: str,
    x: int,
    nap: float,
    extra: Mapping[str, object] | None = None,
) -> str | None:
    """Submit a run; retried with the same Idempotency-Key until the service answers."""
    key = uuid.uuid4().hex
    body = {"experiment_id": experiment_id, "resource": "local", "params": {"x": x, "nap": nap}}
    body.update(extra or {})
    for _ in range(3):
        try:
            answer = http.post("/experiment/run", json=body, headers={"Idempotency-Key": key})
        except httpx.HTTPError:
            return None  # the service is down; the caller retries after the restart
        if answer.status_code == 202:
            return str(answer.json()["run_id"])
        time.sleep(0.2)
    raise AssertionError(f"POST /experiment/run answered {answer.status_code}: {answer.text}")


def run_chaos(
    workdir: Path,
    *,
    kills: int,
    runs_per_round: int = 2,
    seed: int = 0,
    env: Mapping[str, str] | None = None,
    settle_timeout: float = 600,
    log: Callable[[str], None] = lambda _: None,
    run_body: Mapping[str, object] | None = None,
    repo_json: Mapping[str, object] | None = None,
    bare: Path | None = None,
) -> ChaosReport:
    """``run_body`` adds to each run request (``resource``, ``namespace``); ``repo_json``
    and ``bare`` (its repository on this machine, for the push count) use a remote repo."""
    rng = random.Random(seed)
    report = ChaosReport()
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    service = ServiceProcess(data_dir, env)
    began = time.monotonic()
    service.start()
    pending: list[tuple[int, float]] = []
    try:
        with httpx.Client(base_url=service.url, timeout=30) as http:
            parts = small_parts(CHAOS_DVC, "x: 0\nnap: 0\n", repo_json=dict(repo_json or {}))
            created = http.post("/experiment/create", files=parts)
            assert created.status_code == 201, created.text
            experiment = created.json()
            local = bare is None
            bare = bare or Path(str(experiment["git_url"]))
            _git(bare, "config", "core.logAllRefUpdates", "always")
            for round_no in range(kills):
                pending += [
                    (round_no * 100 + i, rng.choice([0, 0.3, 1.0])) for i in range(runs_per_round)
                ]
                still = []
                for x, nap in pending:
                    run_id = _post_run(http, str(experiment["experiment_id"]), x, nap, run_body)
                    if run_id is None:
                        still.append((x, nap))
                    else:
                        report.runs.append(run_id)
                pending = still
                time.sleep(rng.uniform(0.05, 2.5))
                service.kill()
                report.kills += 1
                report.restart_seconds.append(service.start())
                log(f"kill {report.kills}/{kills}: {len(report.runs)} runs submitted")
            for x, nap in pending:
                run_id = _post_run(http, str(experiment["experiment_id"]), x, nap, run_body)
                assert run_id is not None
                report.runs.append(run_id)
            final = _settle(http, report.runs, settle_timeout)
        _check(report, final, bare, data_dir, count_repros=local)
    finally:
        service.stop()
        report.seconds = time.monotonic() - began
    return report


def _settle(http: httpx.Client, run_ids: list[str], timeout: float) -> dict[str, dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        final: dict[str, dict[str, object]] = {}
        for run_id in run_ids:
            answer = http.get(f"/runs/{run_id}")
            if answer.status_code == 200 and answer.json()["state"] in FINAL:
                final[run_id] = answer.json()
        if len(final) == len(run_ids) or time.monotonic() > deadline:
            return final
        time.sleep(0.5)


def _check(
    report: ChaosReport,
    final: dict[str, dict[str, object]],
    bare: Path,
    data_dir: Path,
    *,
    count_repros: bool,
) -> None:
    heads = _git(bare, "for-each-ref", "--format=%(refname:short)", "refs/heads/runs").split()
    published = {h.removeprefix("runs/") for h in heads}
    for run_id in report.runs:
        run = final.get(run_id)
        if run is None:
            report.problems.append(f"{run_id}: not final (lost?)")
            continue
        report.states[str(run["state"])] += 1
        if run["state"] != "succeeded":
            report.problems.append(f"{run_id}: {run['state']}: {run.get('reason')}")
        if (run_id in published) != (run["state"] == "succeeded"):
            report.problems.append(f"{run_id}: {run['state']} but published={run_id in published}")
        if run_id in published:
            pushes = _git(
                bare, "reflog", "show", "--format=%H", f"refs/heads/runs/{run_id}"
            ).split()
            if len(pushes) != 1:
                report.problems.append(f"{run_id}: branch updated {len(pushes)} times")
        if not count_repros:  # a Job's log is followed from its pod: counted by its Jobs
            continue
        log_text = (data_dir / "logs" / f"{run_id}.log").read_text(errors="replace")
        repros = log_text.count(": dvc repro\n")
        if repros > 1:
            report.problems.append(f"{run_id}: dvc repro started {repros} times")
    stray = set(published) - set(report.runs)
    if stray:
        report.problems.append(f"branches of runs nobody submitted: {sorted(stray)}")


def _git(bare: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(bare), *args], check=True, capture_output=True, text=True
    ).stdout
