"""Experiment bundles for tests: the sample one (client_ref.templ + workload_example), and
small ones whose stages sleep or fail on purpose."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx

from controller import templates
from tests.support.gitserver import GitHttpServer, basic_auth_header, isolated_git_env
from tests.support.s3server import S3Server
from tests.support.waiting import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]

SLEEPY_DVC = """\
stages:
  wait:
    cmd: python -c "import time, pathlib; pathlib.Path('started').write_text('x'); time.sleep(600)"
    outs: [started]
"""

QUICK_DVC = """\
stages:
  write:
    cmd: >-
      python -c "import yaml, json; p = yaml.safe_load(open('params.yaml'));
      json.dump({'x': p['x']}, open('m.json', 'w'))"
    params: [x]
    metrics:
      - m.json: {cache: false}
"""

FAILING_DVC = """\
stages:
  boom:
    cmd: python -c "import sys; print('stage is failing on purpose'); sys.exit(3)"
    outs: [never]
"""


def sample_parts(repo_json: dict[str, object] | None = None) -> list[tuple[str, tuple[str, bytes]]]:
    """The multipart body of ``POST /experiment/create`` for the sample bundle."""
    bundle = REPO_ROOT / "client_ref.templ"
    src = REPO_ROOT / "workload_example" / "src"
    repo = (
        json.dumps(repo_json).encode()
        if repo_json is not None
        else (bundle / "repo.json").read_bytes()
    )
    parts = [
        ("repo_json", ("repo.json", repo)),
        ("dvc_yaml_file", ("dvc.yaml", (bundle / "dvc.yaml").read_bytes())),
        ("hyperparams_file", ("params.yaml", (bundle / "params.yaml").read_bytes())),
    ]
    parts += [("files", (f"src/{p.name}", p.read_bytes())) for p in sorted(src.glob("*.py"))]
    return parts


def small_parts(
    dvc_yaml: str, params: str = "x: 1\n", repo_json: dict[str, object] | None = None
) -> list[tuple[str, tuple[str, bytes]]]:
    return [
        ("repo_json", ("repo.json", json.dumps(repo_json or {}).encode())),
        ("dvc_yaml_file", ("dvc.yaml", dvc_yaml.encode())),
        ("hyperparams_file", ("params.yaml", params.encode())),
    ]


def template_parts(name: str) -> list[tuple[str, tuple[str, bytes]]]:
    """A project template's bundle as ``mlexp experiment create DIR`` posts it."""
    files = templates.get(name).files
    parts = [
        ("repo_json", ("repo.json", files["repo.json"])),
        ("dvc_yaml_file", ("dvc.yaml", files["dvc.yaml"])),
        ("hyperparams_file", ("params.yaml", files["params.yaml"])),
    ]
    parts += [("files", (path, data)) for path, data in files.items() if path.startswith("src/")]
    return parts


def create(http: httpx.Client, parts: list[tuple[str, tuple[str, bytes]]]) -> dict[str, object]:
    response = http.post("/experiment/create", files=parts)
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


def start(http: httpx.Client, experiment_id: object, **params: object) -> str:
    response = http.post(
        "/experiment/run",
        json={"experiment_id": experiment_id, "resource": "local", "params": params},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["run_id"])


GATED_DVC = """\
stages:
  gated:
    cmd: >-
      python -c "import pathlib, time, yaml;
      gate = pathlib.Path(yaml.safe_load(open('params.yaml'))['gate']);
      pathlib.Path('started').write_text('x');
      [time.sleep(0.05) for _ in iter(gate.exists, True)];
      pathlib.Path('done').write_text('ok')"
    params: [gate]
    outs: [done]
"""
"""A stage that starts, then waits until the file named by ``gate`` exists."""


def clone_run(
    *, url: str, run_id: str, dest: Path, git: GitHttpServer, s3: S3Server, token: str
) -> Path:
    """What a client does for a run's results: git clone -b runs/<id>, then dvc pull,
    with its own credentials (an auth header for git, AWS_* for DVC)."""
    env = isolated_git_env(dest.parent / "client-home")
    env.update(
        GIT_SSL_CAINFO=str(git.ca_file),
        GIT_CONFIG_COUNT="1",
        GIT_CONFIG_KEY_0="http.extraHeader",
        GIT_CONFIG_VALUE_0=f"Authorization: {basic_auth_header('mlexp-bot', token)}",
    )
    env = s3.subprocess_env(env)
    subprocess.run(
        ["git", "clone", "-q", "-b", f"runs/{run_id}", url, str(dest)], env=env, check=True
    )
    subprocess.run(["dvc", "pull", "-q"], cwd=dest, env=env, check=True)
    return dest


def provision_ready(http: httpx.Client, spec: dict[str, object], timeout: float = 60) -> None:
    """POST /resource/k8s/create, then wait until its first pod is ready."""
    response = http.post("/resource/k8s/create", json=spec)
    assert response.status_code == 201, response.text
    short = {"StatefulSet": "sts", "Deployment": "deploy"}[str(spec["kind"])]
    path = f"/resources/{spec['namespace']}/{short}/{spec['name']}"

    def ready() -> bool:
        readiness = http.get(path).json()["readiness"]
        return bool(readiness and readiness["ready"] >= 1)

    wait_for(ready, timeout, what=f"{short}/{spec['name']} ready")


def wait_for_stage(http: httpx.Client, run_id: str, timeout: float = 120) -> None:
    """Until the run's log shows that ``dvc repro`` has started."""
    wait_for(
        lambda: "step 4: dvc repro" in http.get(f"/runs/{run_id}/logs").text,
        timeout,
        what=f"run {run_id} to reach dvc repro",
    )


def plot_row_count(http: httpx.Client, run_id: str, path: str) -> tuple[int, bool]:
    """How many rows ``GET /runs/{id}/plots`` has of the plot file ``path`` (0 while it has
    none), and whether they are live (read while the run runs)."""
    response = http.get(f"/runs/{run_id}/plots")
    assert response.status_code == 200, response.text
    body = response.json()
    rows = [len(plot["data"][path]["rows"]) for plot in body["plots"] if path in plot["data"]]
    return (rows[0] if rows else 0), body["live"]
