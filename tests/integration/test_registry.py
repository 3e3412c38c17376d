"""The model registry for real: two local runs of the sample workload, registered and
promoted through the API (GTO's git tags in the experiment's bare repo), then read back
by the tools users have — a plain ``git clone`` checked with the ``gto`` CLI, and
``dvc get --rev <stage tag>`` fetching the model from the local DVC remote.

Covers: promote-best (register + promote, ties as ``rank``), register with and without a
version or path, promote and rollback (latest assignment wins), ``gto show``/``gto
history`` agreeing with ``GET .../registry``, the model's bytes at a stage tag, two
promotions at once (distinct ``n``), a push that loses the race retried with the next
``n`` (or version), 409/422/404 answers, and the CLI commands.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from controller.adapters import gittags
from controller.adapters.gitrepo import GitAccess
from controller.cli import main as cli_main
from controller.domain.errors import Conflict
from controller.domain.models import Experiment, Run
from controller.services.registry import assign_stage, build, register_version
from controller.settings import load_settings
from tests.support.bundles import FAILING_DVC, sample_parts, small_parts
from tests.support.gitserver import isolated_git_env
from tests.support.prereqs import require_tools
from tests.support.service import RunningService, service_in_thread
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

TOKEN_A = "registry-tenant-a-0123456789"
TOKEN_B = "registry-tenant-b-9876543210"
MODEL = "models/model.pkl"
TAGGER = ("mlexp", "mlexp@example.com")


@dataclass
class World:
    service: RunningService
    a: httpx.Client
    b: httpx.Client
    experiment: dict[str, object]
    runs: list[dict[str, object]]  # the two succeeded runs, as GET /runs/{id} answers
    tmp: Path

    @property
    def experiment_id(self) -> str:
        return str(self.experiment["experiment_id"])

    @property
    def repo(self) -> str:
        return str(self.experiment["git_url"])


def wait_run(http: httpx.Client, run_id: str) -> dict[str, object]:
    def finished() -> dict[str, object] | None:
        run: dict[str, object] = http.get(f"/runs/{run_id}").json()
        return run if run["state"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(finished, 300, what=f"run {run_id} to finish", max_interval=0.5)


def start(http: httpx.Client, experiment_id: object, **params: object) -> str:
    body = {"experiment_id": experiment_id, "resource": "local", "params": params}
    response = http.post("/experiment/run", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["run_id"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_tools("git", "dvc")
    tmp = tmp_path_factory.mktemp("registry")
    tokens = tmp / "tokens.yaml"
    tokens.write_text(
        f"tokens:\n  - {{token: {TOKEN_A}, name: tenant-a}}\n"
        f"  - {{token: {TOKEN_B}, name: tenant-b}}\n"
    )
    settings = load_settings(
        data_dir=tmp / "data",
        config_file=tmp / "no-config.yaml",
        k8s_config_file=tmp / "no-k8s-config.yaml",
        max_upload_bytes=2 * 1024 * 1024,
        tokens_file=tokens,
    )
    with service_in_thread(settings) as service:
        a = httpx.Client(
            base_url=service.url, timeout=120, headers={"Authorization": f"Bearer {TOKEN_A}"}
        )
        b = httpx.Client(
            base_url=service.url, timeout=120, headers={"Authorization": f"Bearer {TOKEN_B}"}
        )
        with a, b:
            created = a.post("/experiment/create", files=sample_parts())
            assert created.status_code == 201, created.text
            experiment = created.json()
            run_ids = [start(a, experiment["experiment_id"], **{"train.C": c}) for c in (0.01, 1.0)]
            runs = [wait_run(a, run_id) for run_id in run_ids]
            for run in runs:
                assert run["state"] == "succeeded", a.get(f"/runs/{run['run_id']}/logs").text
            yield World(service, a, b, experiment, runs, tmp)


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def remote_tags(repo: str) -> set[str]:
    return {
        line.split("\t")[1].removeprefix("refs/tags/")
        for line in git("ls-remote", "--tags", "--refs", repo).splitlines()
    }


def pause() -> None:
    """GTO orders events by tagger date (whole seconds): keep ours in distinct seconds."""
    time.sleep(1.1)


def model_md5(run: dict[str, object]) -> str:
    result = run["result"]
    assert isinstance(result, dict)
    digest = result["stages"]["train"]["outs"][MODEL]
    assert isinstance(digest, str)
    return digest


def best_of(runs: list[dict[str, object]], metric: str) -> dict[str, object]:
    """The rule promote-best follows: greatest value, ties to the earliest finished."""

    def key(run: dict[str, object]) -> tuple[float, str]:
        result = run["result"]
        assert isinstance(result, dict)
        return (-float(result["flat_metrics"][metric]), str(run["finished_at"]))

    return sorted(runs, key=key)[0]


def test_sample_bundle_declares_its_artifact(world: World) -> None:
    artifacts = world.experiment["artifacts"]
    assert isinstance(artifacts, dict)
    assert artifacts["wine-model"]["path"] == MODEL
    assert artifacts["wine-model"]["type"] == "model"


def test_register_promote_rollback_and_gto_on_a_clone_agrees(world: World) -> None:
    a, exp = world.a, world.experiment_id
    best = best_of(world.runs, "accuracy")
    other = next(r for r in world.runs if r["run_id"] != best["run_id"])

    # promote-best: nothing registered yet, so it registers the best run, then promotes it.
    response = a.post(
        f"/experiments/{exp}/promote-best",
        json={"artifact": "wine-model", "metric": "accuracy", "goal": "max", "stage": "staging"},
    )
    assert response.status_code == 201, response.text
    promoted = response.json()
    assert promoted["registered"] is True
    assert promoted["assigned"] is True
    assert promoted["version"]["version"] == "v0.0.1"
    assert promoted["version"]["run_id"] == best["run_id"]
    assert promoted["version"]["path"] == MODEL
    assert promoted["stage"]["tag"] == "wine-model#staging#1"
    assert promoted["value"] == best["result"]["flat_metrics"]["accuracy"]  # type: ignore[index]
    assert remote_tags(world.repo) == {"wine-model@v0.0.1", "wine-model#staging#1"}

    # register the other run with a version of its own; the path comes from dvc.yaml.
    pause()
    response = a.post(
        f"/runs/{other['run_id']}/register", json={"artifact": "wine-model", "version": "v1.2.0"}
    )
    assert response.status_code == 201, response.text
    registered = response.json()
    assert registered["version"] == "v1.2.0"
    assert registered["tag"] == "wine-model@v1.2.0"
    assert registered["commit"] == other["result"]["commit"]  # type: ignore[index]
    assert registered["run_id"] == other["run_id"]
    assert registered["metrics"] == other["result"]["flat_metrics"]  # type: ignore[index]

    # A commit has one version; a version one commit.
    again = a.post(f"/runs/{best['run_id']}/register", json={"artifact": "wine-model"})
    assert again.status_code == 409, again.text
    assert "v0.0.1" in again.json()["detail"]

    # promote v1.2.0 to prod, then roll back to v0.0.1: the latest assignment wins.
    promote = f"/experiments/{exp}/registry/wine-model/promote"
    for version, n in (("v1.2.0", 2), ("v0.0.1", 3)):
        pause()
        response = a.post(promote, json={"version": version, "stage": "prod"})
        assert response.status_code == 201, response.text
        assert response.json()["stage"]["version"] == version
        assert response.json()["stage"]["tag"] == f"wine-model#prod#{n}"
    same = a.post(promote, json={"version": "v0.0.1", "stage": "prod"})
    assert same.status_code == 201, same.text
    assert same.json()["assigned"] is False  # it is prod already: no new tag
    assert "wine-model#prod#4" not in remote_tags(world.repo)

    view = a.get(f"/experiments/{exp}/registry")
    assert view.status_code == 200, view.text
    (artifact,) = view.json()["artifacts"]
    assert artifact["name"] == "wine-model"
    assert artifact["latest"] == "v1.2.0"
    assert {s: v["version"] for s, v in artifact["stages"].items()} == {
        "prod": "v0.0.1",
        "staging": "v0.0.1",
    }
    prod = artifact["stages"]["prod"]
    assert prod["tag"] == "wine-model#prod#3"
    assert prod["run_id"] == best["run_id"]
    assert [e["tag"] for e in prod["history"]] == ["wine-model#prod#3", "wine-model#prod#2"]
    versions = {v["version"]: v for v in artifact["versions"]}
    assert versions["v0.0.1"]["stages"] == ["prod", "staging"]
    assert versions["v1.2.0"]["stages"] == []
    assert versions["v1.2.0"]["metrics"]["accuracy"] == other["result"]["flat_metrics"]["accuracy"]  # type: ignore[index]
    plain_repo = world.repo.removeprefix("file://")
    assert prod["get_command"] == (
        f"dvc get {shlex.quote(plain_repo)} {MODEL} --rev 'wine-model#prod#3'"
    )

    # A plain clone, read by GTO itself.
    env = isolated_git_env(world.tmp / "client-home")
    clone = world.tmp / "clone"
    subprocess.run(["git", "clone", "-q", world.repo, str(clone)], env=env, check=True)
    gto = str(Path(sys.executable).parent / "gto")

    def gto_json(*args: str) -> object:
        out = subprocess.run(
            [gto, *args, "--json", "-r", str(clone)],
            env=env, check=True, capture_output=True, text=True,
        )  # fmt: skip
        return json.loads(out.stdout)

    shown = gto_json("show")
    assert shown == {
        "wine-model": {
            "version": "v1.2.0",
            "stage": {"prod": "v0.0.1", "staging": "v0.0.1"},
            "registered": True,
            "active": True,
        }
    }
    gto_versions = gto_json("show", "wine-model")
    assert isinstance(gto_versions, list)
    assert [(v["version"], v["commit_hexsha"]) for v in gto_versions] == [
        (v["version"], v["commit"]) for v in artifact["versions"]
    ]
    history = gto_json("history", "wine-model")
    assert isinstance(history, list)
    assert [
        (h["ref"], h["event"], h["version"], h["stage"], h["commit"], h["author"]) for h in history
    ] == [
        (e["tag"], e["event"], e["version"], e["stage"], e["commit"], e["author"])
        for e in artifact["history"]
    ]
    assert [h["timestamp"][:19] for h in history] == [
        e["created_at"][:19] for e in artifact["history"]
    ]
    assert {h["author"] for h in history} == {"mlexp"}  # the experiment's git.author

    # The model at the prod tag is the best run's, byte for byte (dvc.lock's md5).
    fetched = world.tmp / "fetched"
    fetched.mkdir()
    subprocess.run(prod["get_command"], shell=True, cwd=fetched, check=True, capture_output=True)
    data = (fetched / "model.pkl").read_bytes()
    assert hashlib.md5(data, usedforsecurity=False).hexdigest() == model_md5(best)
    assert model_md5(best) != model_md5(other)
    by_branch = world.tmp / "by-branch.pkl"
    subprocess.run(
        ["dvc", "get", plain_repo, MODEL, "--rev", f"runs/{best['run_id']}", "-o", str(by_branch)],
        check=True,
        capture_output=True,
    )
    assert by_branch.read_bytes() == data


def test_two_promotions_at_once_both_land_with_distinct_n(world: World) -> None:
    a, exp = world.a, world.experiment_id
    for run, version in zip(world.runs, ("v1.0.0", "v2.0.0"), strict=True):
        body = {"artifact": "twin-model", "version": version, "path": MODEL}
        response = a.post(f"/runs/{run['run_id']}/register", json=body)
        assert response.status_code == 201, response.text

    answers: list[httpx.Response] = []
    gate = threading.Barrier(2)

    def promote(version: str, stage: str) -> None:
        with httpx.Client(base_url=world.service.url, timeout=120, headers=a.headers) as http:
            gate.wait()
            answers.append(
                http.post(
                    f"/experiments/{exp}/registry/twin-model/promote",
                    json={"version": version, "stage": stage},
                )
            )

    threads = [
        threading.Thread(target=promote, args=("v1.0.0", "staging")),
        threading.Thread(target=promote, args=("v2.0.0", "prod")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [r.status_code for r in answers] == [201, 201], [r.text for r in answers]
    tags = {r.json()["stage"]["tag"] for r in answers}
    counters = sorted(int(t.rsplit("#", 1)[1]) for t in tags)
    assert counters == [1, 2]
    assert tags <= remote_tags(world.repo)
    view = a.get(f"/experiments/{exp}/registry").json()
    twin = next(x for x in view["artifacts"] if x["name"] == "twin-model")
    assert {s: v["version"] for s, v in twin["stages"].items()} == {
        "staging": "v1.0.0",
        "prod": "v2.0.0",
    }


class LosingRepo(gittags.TagRepo):
    """A repository whose first push loses: a rival pushes a tag of that name first (on
    ``rival_commit``, else on the same commit)."""

    def __init__(
        self, access: GitAccess, rival: gittags.TagRepo, rival_commit: str | None = None
    ) -> None:
        super().__init__(access, base_env={"PATH": os.environ["PATH"]}, tagger=TAGGER)
        self.rival = rival
        self.rival_commit = rival_commit
        self.lost: list[str] = []

    def push_tag(self, name: str, commit: str, message: str) -> bool:
        if not self.lost:
            self.lost.append(name)
            assert self.rival.push_tag(name, self.rival_commit or commit, "the rival's\n")
        return super().push_tag(name, commit, message)


def test_a_push_that_loses_the_race_takes_the_next_n_or_version(world: World) -> None:
    access = GitAccess(url=world.repo)
    env = {"PATH": os.environ["PATH"]}
    experiment = Experiment.model_validate(world.experiment)
    first, second = (Run.model_validate(r) for r in world.runs)
    assert first.result is not None
    assert second.result is not None
    mine, theirs = first.result.commit, second.result.commit
    with gittags.TagRepo(access, base_env=env, tagger=TAGGER) as rival:
        # The rival registers the version this call chose (v0.0.1) on its own commit.
        with LosingRepo(access, rival, rival_commit=theirs) as repo:
            view = register_version(
                repo, repo.tags(), experiment, first, mine, "race-model", None, MODEL
            )
        assert repo.lost == ["race-model@v0.0.1"]
        assert [(v.version, v.commit) for v in view.versions] == [
            ("v0.0.2", mine),
            ("v0.0.1", theirs),
        ]

        # A version named by the caller that a rival takes meanwhile is a conflict.
        with LosingRepo(access, rival, rival_commit=theirs) as repo, pytest.raises(Conflict):
            register_version(
                repo, repo.tags(), experiment, first, mine, "race-model-2", "v3.0.0", MODEL
            )
        assert repo.lost == ["race-model-2@v3.0.0"]

        # An assignment that loses its n (the rival's puts v0.0.1 in prod) takes the next one.
        with LosingRepo(access, rival, rival_commit=theirs) as repo:
            found = build(repo.tags(), "race-model")
            assert found is not None
            version = next(v for v in found.versions if v.version == "v0.0.2")
            after, assigned = assign_stage(repo, "race-model", version, "prod", run_id=None)
        assert assigned is True
        assert repo.lost == ["race-model#prod#1"]
        assert after.stages["prod"].tag == "race-model#prod#2"
        assert after.stages["prod"].version == "v0.0.2"
    assert {"race-model#prod#1", "race-model#prod#2"} <= remote_tags(world.repo)


def test_refusals(world: World) -> None:
    a, b, exp = world.a, world.b, world.experiment_id
    run_id = str(world.runs[0]["run_id"])

    failing = a.post("/experiment/create", files=small_parts(FAILING_DVC))
    assert failing.status_code == 201, failing.text
    failed = start(a, failing.json()["experiment_id"])
    assert wait_run(a, failed)["state"] == "failed"
    refused = a.post(f"/runs/{failed}/register", json={"artifact": "m", "path": "never"})
    assert refused.status_code == 409, refused.text
    assert "failed" in refused.json()["detail"]

    before = remote_tags(world.repo)
    for body in (
        {"artifact": "Wine_Model"},
        {"artifact": "wine-model", "version": "1.2"},
        {"artifact": "not-in-dvc-yaml"},
        {"artifact": "wine-model", "path": "../outside"},
        {"artifact": "wine-model", "extra": 1},
    ):
        response = a.post(f"/runs/{run_id}/register", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    promote = f"/experiments/{exp}/registry/wine-model/promote"
    assert a.post(promote, json={"version": "v0.0.1", "stage": "a/b"}).status_code == 422
    assert a.post(promote, json={"version": "v9.9.9", "stage": "prod"}).status_code == 404
    best = {"artifact": "wine-model", "metric": "no-such-metric", "stage": "prod"}
    assert a.post(f"/experiments/{exp}/promote-best", json=best).status_code == 422
    assert remote_tags(world.repo) == before  # bad input changed nothing

    # Another tenant: the run and the experiment do not exist for them.
    assert b.post(f"/runs/{run_id}/register", json={"artifact": "wine-model"}).status_code == 404
    assert b.post(promote, json={"version": "v0.0.1", "stage": "prod"}).status_code == 404
    best["metric"] = "accuracy"
    assert b.post(f"/experiments/{exp}/promote-best", json=best).status_code == 404
    assert b.get(f"/experiments/{exp}/registry").status_code == 404
    assert remote_tags(world.repo) == before


def test_cli_commands(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--url", world.service.url, "--token", TOKEN_A]
    best = best_of(world.runs, "accuracy")
    other = str(next(r for r in world.runs if r["run_id"] != best["run_id"])["run_id"])
    exp = world.experiment_id
    assert cli_main([*common, "register", other, "--artifact", "cli-model", "--path", MODEL]) == 0
    assert "registered cli-model v0.0.1 (cli-model@v0.0.1)" in capsys.readouterr().out
    argv = [*common, "promote", exp, "cli-model", "--version", "v0.0.1", "--stage", "prod"]
    assert cli_main(argv) == 0
    assert "promoted cli-model v0.0.1 -> prod (cli-model#prod#1)" in capsys.readouterr().out
    # --best: the best run is not registered yet; cli-model is not in dvc.yaml, so its
    # path is the one v0.0.1 was registered with.
    argv = [*common, "promote", exp, "cli-model", "--best", "--metric", "accuracy", "--stage", "qa"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "registered cli-model v0.0.2 (cli-model@v0.0.2)" in out
    assert f"best run {best['run_id']}: accuracy = " in out
    assert "promoted cli-model v0.0.2 -> qa (cli-model#qa#2)" in out
    assert cli_main([*common, "registry", exp]) == 0
    table = capsys.readouterr().out
    assert "cli-model  latest=v0.0.2  prod=v0.0.1, qa=v0.0.2" in table
    assert other in table
    assert cli_main([*common, "registry", exp, "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    cli_model = next(x for x in view["artifacts"] if x["name"] == "cli-model")
    assert [v["path"] for v in cli_model["versions"]] == [MODEL, MODEL]
    argv = [*common, "promote", exp, "cli-model", "--version", "v7.0.0", "--stage", "x"]
    assert cli_main(argv) == 1
    assert "v7.0.0" in capsys.readouterr().err
