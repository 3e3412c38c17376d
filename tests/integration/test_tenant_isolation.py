"""Tenants are strangers on the local executor (issue 7, items 2 and 3), done for real.

Two principals share one service. Tenant B's run holds credentials (git over
HTTPS with a token, S3 keys) and is kept running; tenant A's stage then tries
what an attacker would — read B's secret file, the tokens file, ``state.db``,
B's work dir, the data dir, and every ``/proc/<pid>/environ`` it can see — and
reports everything it found as its metrics. The test asserts it found nothing.

The cache-poisoning sequence: A and B post the same pipeline; A's stage code
(not a declared dependency) writes a poisoned model. With one shared run-cache,
B's ``train`` would be "cached" and B would publish A's model; with caches per
experiment, B's ``train`` really runs.

And a run's processes cannot outlive its cancel, even ones that left its
process group (``setsid``): the sandbox's PID namespace ends with the run.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controller.settings import Settings
from tests.support.bundles import GATED_DVC, small_parts
from tests.support.gitserver import GitHttpServer
from tests.support.s3server import S3Server
from tests.support.service import RunningService, service_in_thread
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

TOKEN_A = "tenant-a-token-0123456789"
TOKEN_B = "tenant-b-token-9876543210"
GIT_TOKEN_B = "tok-0123456789abcdef"  # the git test server's password: B's credential

PROBE = r"""
import json, os, pathlib, sys
targets = json.loads(pathlib.Path("targets.json").read_text())
needles = targets.pop("needles")
found, listed = [], {}
for label, path in targets.items():
    p = pathlib.Path(path)
    try:
        if p.is_dir():
            listed[label] = sorted(x.name for x in p.iterdir())
        elif p.exists():
            found.append(f"{label}: read {p.read_bytes()[:40]!r}")
    except OSError:
        pass
pids = [d for d in os.listdir("/proc") if d.isdigit()]
for pid in pids:
    try:
        environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        continue
    for needle in needles:
        if needle in environ:
            found.append(f"/proc/{pid}/environ holds {needle[:12]}")
    if pid != str(os.getpid()) and ("MLEXP_TOKENS_FILE" in environ or "MLEXP_DATA_DIR" in environ):
        found.append(f"/proc/{pid}/environ is the service's")
json.dump({"found": found, "listed": listed, "pids_seen": len(pids)}, open("found.json", "w"))
"""

PROBE_DVC = """\
stages:
  probe:
    cmd: python probe.py
    deps: [probe.py, targets.json]
    metrics:
      - found.json: {cache: false}
"""

POISON_DVC = """\
stages:
  train:
    cmd: python train.py
    deps: [data.txt]
    outs: [model.txt]
  report:
    cmd: >-
      python -c "import json;
      json.dump({'model': open('model.txt').read()}, open('m.json', 'w'))"
    deps: [model.txt]
    metrics:
      - m.json: {cache: false}
"""


@pytest.fixture
def tenants(
    settings: Settings, git_server: GitHttpServer, tmp_path: Path
) -> Iterator[tuple[RunningService, httpx.Client, httpx.Client]]:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        f"tokens:\n  - {{token: {TOKEN_A}, name: tenant-a}}\n"
        f"  - {{token: {TOKEN_B}, name: tenant-b}}\n"
    )
    configured = settings.model_copy(
        update={"tokens_file": tokens, "git_ca_bundle": git_server.ca_file}
    )
    with service_in_thread(configured) as service:
        a = httpx.Client(
            base_url=service.url, timeout=120, headers={"Authorization": f"Bearer {TOKEN_A}"}
        )
        b = httpx.Client(
            base_url=service.url, timeout=120, headers={"Authorization": f"Bearer {TOKEN_B}"}
        )
        with a, b:
            yield service, a, b


def create(http: httpx.Client, parts: list[tuple[str, tuple[str, bytes]]]) -> str:
    response = http.post("/experiment/create", files=parts)
    assert response.status_code == 201, response.text
    return str(response.json()["experiment_id"])


def start(http: httpx.Client, experiment_id: str, **params: object) -> str:
    response = http.post("/experiment/run", json={"experiment_id": experiment_id, "params": params})
    assert response.status_code == 202, response.text
    return str(response.json()["run_id"])


def wait_run(http: httpx.Client, run_id: str) -> dict[str, object]:
    def finished() -> dict[str, object] | None:
        run: dict[str, object] = http.get(f"/runs/{run_id}").json()
        return run if run["state"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(finished, 240, what=f"run {run_id} to finish", max_interval=0.25)


def test_a_stage_finds_nothing_of_another_tenant_or_the_service(
    tenants: tuple[RunningService, httpx.Client, httpx.Client],
    git_server: GitHttpServer,
    s3_server: S3Server,
) -> None:
    service, a, b = tenants
    data = service.settings.data_dir
    # B: remote repository with a token, S3 with keys; its run waits at a gate, alive.
    bucket = f"b-{uuid.uuid4().hex[:8]}"
    s3_server.create_bucket(bucket)
    repo_b = {
        "git": {
            "url": git_server.create_bare(f"b-{uuid.uuid4().hex[:8]}"),
            "username": "mlexp-bot",
            "token": GIT_TOKEN_B,
        },
        "dvc": {"url": f"s3://{bucket}/b"},
        "storage": {
            "endpoint_url": s3_server.endpoint_url,
            "access_key_id": s3_server.access_key_id,
            "secret_access_key": s3_server.secret_access_key,
            "region": s3_server.region,
        },
    }
    exp_b = create(b, small_parts(GATED_DVC, "gate: unset\n", repo_json=repo_b))
    # The gate must be where B's sandbox can see it: its experiment's cache dir.
    gate = data / "dvc-cache" / exp_b / "gate"
    run_b = start(b, exp_b, gate=str(gate))
    wait_for(
        lambda: (data / "work" / run_b / "repo" / "started").exists(),
        120,
        what="B's stage to run",
    )

    targets = {
        "B's secret file": str(data / "secrets" / f"{exp_b}.json"),
        "secrets dir": str(data / "secrets"),
        "tokens file": str(service.settings.tokens_file),
        "state.db": str(data / "state.db"),
        "B's work dir": str(data / "work" / run_b),
        "work dirs": str(data / "work"),
        "logs": str(data / "logs"),
        "data dir": str(data),
        "needles": [GIT_TOKEN_B, s3_server.secret_access_key, TOKEN_A, TOKEN_B],
    }
    parts = small_parts(PROBE_DVC)
    parts += [
        ("files", ("probe.py", PROBE.encode())),
        ("files", ("targets.json", json.dumps(targets).encode())),
    ]
    exp_a = create(a, parts)
    run_a = start(a, exp_a)
    result = wait_run(a, run_a)
    assert result["state"] == "succeeded", a.get(f"/runs/{run_a}/logs").text
    report = result["result"]["metrics"]["found.json"]  # type: ignore[index]
    assert report["found"] == [], report
    # Directories it can list are only the mount points of its own run: its work dir,
    # its experiment's cache, repo and remote — nothing of B's, no secrets, db or logs.
    seen = json.dumps(report["listed"])
    for foreign in (run_b, exp_b, "secrets", "state.db", "logs", "tokens"):
        assert foreign not in seen, report
    assert report["listed"].get("work dirs", [run_a]) == [run_a], report
    # It did look: its own processes are there (sandbox init, runner, dvc, the probe).
    assert 2 <= report["pids_seen"] < 20, report
    assert (data / "work" / run_b / "repo" / "started").exists()  # B was running meanwhile

    # A cannot see B's run or experiment through the API either.
    assert a.get(f"/runs/{run_b}").status_code == 404
    assert a.get(f"/experiments/{exp_b}").status_code == 404
    gate.write_text("go")
    assert wait_run(b, run_b)["state"] == "succeeded", b.get(f"/runs/{run_b}/logs").text
    assert GIT_TOKEN_B not in a.get(f"/runs/{run_a}/logs").text


def test_one_tenant_cannot_poison_another_tenants_run_cache(
    tenants: tuple[RunningService, httpx.Client, httpx.Client],
) -> None:
    _, a, b = tenants

    def bundle(model: str) -> list[tuple[str, tuple[str, bytes]]]:
        parts = small_parts(POISON_DVC)
        parts += [
            ("files", ("data.txt", b"the same data\n")),
            ("files", ("train.py", f"open('model.txt', 'w').write({model!r})\n".encode())),
        ]
        return parts

    exp_a = create(a, bundle("POISONED BY A"))
    run_a = start(a, exp_a)
    assert wait_run(a, run_a)["state"] == "succeeded", a.get(f"/runs/{run_a}/logs").text

    exp_b = create(b, bundle("B's own model"))
    run_b = start(b, exp_b)
    result = wait_run(b, run_b)
    log_b = b.get(f"/runs/{run_b}/logs").text
    assert result["state"] == "succeeded", log_b
    assert "Running stage 'train'" in log_b
    assert "is cached" not in log_b
    assert result["result"]["metrics"]["m.json"] == {"model": "B's own model"}  # type: ignore[index]

    # Runs of one experiment still share their cache: a second run of B's is a cache hit.
    again = start(b, exp_b)
    assert wait_run(b, again)["state"] == "succeeded"
    assert "Stage 'train' didn't change, skipping" in b.get(f"/runs/{again}/logs").text or (
        "is cached" in b.get(f"/runs/{again}/logs").text
    )


ESCAPE_DVC = """\
stages:
  escape:
    cmd: >-
      python -c "import subprocess, time, pathlib;
      subprocess.Popen(['setsid', 'python', '-c', 'import time; time.sleep(900)', '{marker}'],
      start_new_session=True); pathlib.Path('started').write_text('x'); time.sleep(900)"
    outs: [started]
"""


def test_cancel_ends_every_process_of_the_run_even_those_that_left_its_group(
    tenants: tuple[RunningService, httpx.Client, httpx.Client],
) -> None:
    _, a, _ = tenants
    marker = f"escape-{uuid.uuid4().hex}"
    exp = create(a, small_parts(ESCAPE_DVC.replace("{marker}", marker)))
    run_id = start(a, exp)

    def marked() -> list[str]:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and marker in (entry / "cmdline").read_text():
                    found.append(entry.name)
            except OSError:
                continue
        return found

    wait_for(lambda: bool(marked()), 120, what="the escaped process to start")
    cancelled = a.post(f"/runs/{run_id}/cancel")
    assert cancelled.status_code in (200, 202), cancelled.text
    wait_for(lambda: a.get(f"/runs/{run_id}").json()["state"] == "cancelled", 60, what="cancel")
    wait_for(lambda: not marked(), 10, what="the escaped process to be gone")
    assert not marked()
    assert os.getpid()  # the test process itself is untouched
