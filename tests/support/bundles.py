"""Experiment bundles for tests: the sample one (client_ref.templ + workload_example), and
small ones whose stages sleep or fail on purpose."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

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
