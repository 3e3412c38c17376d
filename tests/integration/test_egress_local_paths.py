"""Local paths and egress on a real service: the attacks of issue 7, performed and refused.

Covers: a second experiment whose git.url is the first experiment's bare repo in the data
dir — by path, file:// URL, a symlink, a ``x`` beside a ``x.git`` symlink (git opens
``x.git`` itself), the data dir's parent — refused with 422 whether or not local_roots
contains the data dir, the first repo's ``main`` unchanged and nothing created; the seed
form of /experiment/run refused the same way; a run of an experiment whose path the
settings no longer allow refused at submit; dvc.url outside local_roots refused and
inside one accepted, with a run that pushes its data there; git failures reported as
their class ("could not connect", "authentication failed", "not found") without the
address, port or server path.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controller.settings import Settings
from tests.support.bundles import QUICK_DVC, create, small_parts, start
from tests.support.gitserver import GitHttpServer
from tests.support.prereqs import require_tools
from tests.support.service import RunningService, free_port, service_in_thread

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _git_and_dvc() -> None:
    require_tools("git", "dvc")


TOKEN = "tok-0123456789abcdef"  # the session git server's password (tests/conftest.py)

PUSHING_DVC = """\
stages:
  write:
    cmd: python -c "import pathlib; pathlib.Path('out.txt').write_text('pushed data')"
    outs: [out.txt]
"""


def snapshot(service: RunningService) -> tuple[list[str], int, int]:
    """Every file of the data dir (but the database), and how many experiments and runs."""
    root = service.settings.data_dir
    files = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("state.db")
    )
    experiments = len(service.http.get("/experiments").json())
    runs = len(service.http.get("/runs").json())
    return files, experiments, runs


def rev_parse(repo: Path, ref: str = "refs/heads/main") -> str:
    done = subprocess.run(
        ["git", "--git-dir", str(repo), "rev-parse", "--verify", ref],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def refused(response: httpx.Response, status: int = 422) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    detail = str(response.json()["detail"])
    assert detail
    return detail


def victim(service: RunningService) -> tuple[str, Path]:
    """The first tenant's experiment, in the service's own repo; its id and bare repo."""
    first = create(service.http, small_parts(QUICK_DVC))
    repo = service.settings.repos_dir / f"{first['experiment_id']}.git"
    assert repo.is_dir()
    return str(first["experiment_id"]), repo


@pytest.fixture
def rooted(settings: Settings, tmp_path: Path) -> Iterator[RunningService]:
    """local_roots = tmp_path, which contains the data dir (tmp_path/data)."""
    assert settings.data_dir.is_relative_to(tmp_path)
    with service_in_thread(settings.model_copy(update={"local_roots": [tmp_path]})) as running:
        yield running


# --- (a) another experiment's repository -------------------------------------------------


def test_default_refuses_another_experiments_repo_and_any_local_path(
    service: RunningService, tmp_path: Path
) -> None:
    _, repo = victim(service)
    main_before = rev_parse(repo)
    mine = tmp_path / "mine.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(mine)], check=True)
    before = snapshot(service)
    for url in (str(repo), f"file://{repo}", str(mine)):
        response = service.http.post(
            "/experiment/create", files=small_parts(QUICK_DVC, repo_json={"git": {"url": url}})
        )
        detail = refused(response)
        assert "local_roots" in detail  # says how to allow it
        assert str(tmp_path) not in detail
    assert rev_parse(repo) == main_before
    assert snapshot(service) == before
    assert (
        subprocess.run(
            ["git", "--git-dir", str(mine), "rev-parse", "--verify", "-q", "refs/heads/main"],
            check=False,
        ).returncode
        != 0
    )  # nothing was pushed to the caller's own repo either


def _aliases(repo: Path, root: Path) -> dict[str, str]:
    """Ways to name ``repo`` (in the data dir) from inside the local root ``root``."""
    (root / "link.git").symlink_to(repo)
    (root / "alias.git").symlink_to(repo)  # git.url ".../alias" makes git open alias.git
    return {
        "path": str(repo),
        "file url": f"file://{repo}",
        "symlink": str(root / "link.git"),
        "git suffix": str(root / "alias"),
        "data dir parent": str(root),
    }


def test_a_local_root_around_the_data_dir_still_refuses_the_data_dir(
    rooted: RunningService, tmp_path: Path
) -> None:
    _, repo = victim(rooted)
    main_before = rev_parse(repo)
    aliases = _aliases(repo, tmp_path)
    before = snapshot(rooted)
    for how, url in aliases.items():
        response = rooted.http.post(
            "/experiment/create", files=small_parts(QUICK_DVC, repo_json={"git": {"url": url}})
        )
        detail = refused(response)
        assert "data dir" in detail, how
        assert str(tmp_path) not in detail, how
    assert rev_parse(repo) == main_before
    assert snapshot(rooted) == before

    # The rule is about the data dir, not every local path: a repo of the caller's own in
    # the same root is accepted, and gets the experiment's commit.
    mine = tmp_path / "mine.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(mine)], check=True)
    own = create(rooted.http, small_parts(QUICK_DVC, repo_json={"git": {"url": str(mine)}}))
    assert rev_parse(mine) == own["commit"]
    assert rev_parse(repo) == main_before


def test_seed_form_cannot_name_another_experiments_repo(rooted: RunningService) -> None:
    _, repo = victim(rooted)
    before = snapshot(rooted)
    response = rooted.http.post(
        "/experiment/run",
        data={"resource": "local"},
        files={"repo_json": ("repo.json", json.dumps({"git": {"url": str(repo)}}).encode())},
    )
    assert "data dir" in refused(response)
    assert snapshot(rooted) == before


def test_a_run_is_refused_when_the_settings_no_longer_allow_its_path(
    settings: Settings, tmp_path: Path
) -> None:
    roots = tmp_path / "local"
    mine = roots / "mine.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(mine)], check=True)
    with service_in_thread(settings.model_copy(update={"local_roots": [roots]})) as first:
        experiment = create(
            first.http, small_parts(QUICK_DVC, repo_json={"git": {"url": str(mine)}})
        )
    with service_in_thread(settings) as second:  # same data dir, no local_roots
        response = second.http.post(
            "/experiment/run", json={"experiment_id": experiment["experiment_id"]}
        )
        detail = refused(response)
        assert "local_roots" in detail
        assert second.http.get("/runs").json() == []
    assert rev_parse(mine) == experiment["commit"]


# --- (b) dvc.url ---------------------------------------------------------------------------


def test_dvc_url_outside_local_roots_is_refused(settings: Settings, tmp_path: Path) -> None:
    roots = tmp_path / "local"
    roots.mkdir()
    outside = tmp_path / "elsewhere" / "remote"
    with service_in_thread(settings.model_copy(update={"local_roots": [roots]})) as service:
        before = snapshot(service)
        for url in (str(outside), f"file://{outside}", str(service.settings.remotes_dir)):
            response = service.http.post(
                "/experiment/create",
                files=small_parts(PUSHING_DVC, repo_json={"dvc": {"url": url}}),
            )
            assert "dvc.url" in refused(response)
        assert snapshot(service) == before
    assert not outside.exists()


def test_dvc_url_inside_a_local_root_is_used_by_a_run(settings: Settings, tmp_path: Path) -> None:
    roots = tmp_path / "local"
    remote = roots / "team" / "remote"
    with service_in_thread(settings.model_copy(update={"local_roots": [roots]})) as service:
        experiment = create(
            service.http, small_parts(PUSHING_DVC, repo_json={"dvc": {"url": str(remote)}})
        )
        run_id = start(service.http, experiment["experiment_id"])
        run = service.wait_run(run_id)
        assert run["state"] == "succeeded", service.http.get(f"/runs/{run_id}/logs").text
    pushed = [p for p in remote.rglob("*") if p.is_file()]
    assert b"pushed data" in [p.read_bytes() for p in pushed]


# --- (c) git failures, as classes ----------------------------------------------------------


def test_closed_port_is_could_not_connect_without_the_address(service: RunningService) -> None:
    port = free_port()  # bound and released: nothing listens there now
    before = snapshot(service)
    url = f"https://127.0.0.1:{port}/ml/wine.git"
    response = service.http.post(
        "/experiment/create", files=small_parts(QUICK_DVC, repo_json={"git": {"url": url}})
    )
    detail = refused(response, 502)
    assert "could not connect" in detail
    assert str(port) not in detail
    assert "127.0.0.1" not in detail
    assert snapshot(service) == before


@pytest.fixture
def remote_service(settings: Settings, git_server: GitHttpServer) -> Iterator[RunningService]:
    with service_in_thread(settings.model_copy(update={"git_ca_bundle": git_server.ca_file})) as s:
        yield s


def test_wrong_token_is_authentication_failed(
    remote_service: RunningService, git_server: GitHttpServer
) -> None:
    url = git_server.create_bare(f"auth-{os.urandom(4).hex()}")
    repo_json = {"git": {"url": url, "username": "mlexp-bot", "token": "tok-wrong-0123456789"}}
    before = snapshot(remote_service)
    response = remote_service.http.post(
        "/experiment/create", files=small_parts(QUICK_DVC, repo_json=repo_json)
    )
    detail = refused(response, 502)
    assert "authentication failed" in detail
    assert url.split("//", 1)[1].split("/", 1)[0] not in detail  # host:port
    assert "tok-wrong" not in response.text
    assert snapshot(remote_service) == before


def test_missing_repo_is_not_found_without_the_server_path(
    remote_service: RunningService, git_server: GitHttpServer
) -> None:
    name = f"missing-{os.urandom(4).hex()}"
    url = f"{git_server.base_url}/{name}.git"
    repo_json = {"git": {"url": url, "username": "mlexp-bot", "token": TOKEN}}
    response = remote_service.http.post(
        "/experiment/create", files=small_parts(QUICK_DVC, repo_json=repo_json)
    )
    detail = refused(response, 502)
    assert "not found" in detail
    assert name not in detail
    assert str(git_server.repos_dir) not in detail
