"""Writing into a caller's repository never writes through it (issue 7, item 1).

The attack, for real: a repository on the HTTPS git test server whose ``main``
holds symlinks (``evil -> <a directory of this machine>``, ``params.yaml -> <a
file>``) or a submodule where the bundle writes. Creating an experiment on it
must be refused with 422 naming the path, and nothing outside the service's
temp dirs — nor the remote branch — may change. A repository with ordinary
files keeps them (and their modes) under the service's commit.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from controller.settings import Settings
from tests.support.bundles import QUICK_DVC, small_parts
from tests.support.gitserver import GitHttpServer, isolated_git_env
from tests.support.service import service_in_thread

pytestmark = pytest.mark.integration

TOKEN = "tok-0123456789abcdef"


def git(*args: str, cwd: Path, env: dict[str, str]) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout


def seeded_repo(server: GitHttpServer, tmp: Path, build: dict[str, str]) -> tuple[str, Path]:
    """A repo on the git server whose ``main`` holds what ``build`` describes:
    ``{path: "link:<target>" | "gitlink" | "exec:<text>" | "<text>"}``."""
    name = f"hostile-{uuid.uuid4().hex[:8]}"
    url = server.create_bare(name)
    work = tmp / name
    env = isolated_git_env(tmp / "home")
    git("init", "-q", "-b", "main", str(work), cwd=tmp, env=env)
    for path, what in build.items():
        target = work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if what.startswith("link:"):
            target.symlink_to(what.removeprefix("link:"))
        elif what == "gitlink":
            git(
                "update-index",
                "--add",
                "--cacheinfo",
                f"160000,{'a' * 40},{path}",
                cwd=work,
                env=env,
            )
            continue
        else:
            target.write_text(what.removeprefix("exec:"))
            if what.startswith("exec:"):
                target.chmod(0o755)
        git("add", path, cwd=work, env=env)
    git("-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "seed", cwd=work, env=env)
    git("push", "-q", str(server.repo_path(name)), "main", cwd=work, env=env)
    return url, server.repo_path(name)


def tip(bare: Path) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(bare), "rev-parse", "refs/heads/main"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


@pytest.fixture
def remote_settings(settings: Settings, git_server: GitHttpServer) -> Settings:
    return settings.model_copy(update={"git_ca_bundle": git_server.ca_file})


def repo_json(url: str) -> dict[str, object]:
    return {"git": {"url": url, "branch": "main", "username": "mlexp-bot", "token": TOKEN}}


def test_symlinks_where_the_bundle_writes_are_refused_and_nothing_changes(
    remote_settings: Settings, git_server: GitHttpServer, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    url, bare = seeded_repo(
        git_server, tmp_path, {"evil": f"link:{outside}", "params.yaml": f"link:{victim}"}
    )
    before = tip(bare)

    with service_in_thread(remote_settings) as service:
        parts = small_parts(QUICK_DVC, repo_json=repo_json(url))
        parts.append(("files", ("evil/x.txt", b"written through a symlink\n")))
        refused = service.http.post("/experiment/create", files=parts)
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert "'evil'" in refused.json()["detail"]
        assert "symlink" in refused.json()["detail"]

        # Without the upload the bundle still writes params.yaml, which is a symlink there.
        refused = service.http.post(
            "/experiment/create", files=small_parts(QUICK_DVC, repo_json=repo_json(url))
        )
        assert refused.status_code == 422, refused.text
        assert "'params.yaml'" in refused.json()["detail"]
        assert service.http.get("/experiments").json() == []

    assert list(outside.iterdir()) == []
    assert victim.read_text() == "precious\n"
    assert tip(bare) == before
    assert not list((remote_settings.data_dir / "secrets").glob("*.json"))


def test_a_submodule_or_a_file_in_the_way_is_refused(
    remote_settings: Settings, git_server: GitHttpServer, tmp_path: Path
) -> None:
    url, bare = seeded_repo(git_server, tmp_path, {"src": "gitlink", "notes": "a file\n"})
    before = tip(bare)
    with service_in_thread(remote_settings) as service:
        for upload, what in (("src/train.py", "a submodule"), ("notes/x.txt", "a file")):
            parts = small_parts(QUICK_DVC, repo_json=repo_json(url))
            parts.append(("files", (upload, b"print('hi')\n")))
            refused = service.http.post("/experiment/create", files=parts)
            assert refused.status_code == 422, refused.text
            assert what in refused.json()["detail"], refused.json()
    assert tip(bare) == before


def test_ordinary_files_of_the_branch_are_kept_with_their_modes(
    remote_settings: Settings, git_server: GitHttpServer, tmp_path: Path
) -> None:
    url, bare = seeded_repo(
        git_server,
        tmp_path,
        {"README.md": "hello\n", "tools/run.sh": "exec:#!/bin/sh\n", "src/old.py": "x = 1\n"},
    )
    with service_in_thread(remote_settings) as service:
        parts = small_parts(QUICK_DVC, repo_json=repo_json(url))
        parts.append(("files", ("src/new.py", b"y = 2\n")))
        created = service.http.post("/experiment/create", files=parts)
        assert created.status_code == 201, created.text
        commit = created.json()["commit"]

    listing = subprocess.run(
        ["git", "--git-dir", str(bare), "ls-tree", "-r", commit],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    modes = {line.split("\t")[1]: line.split()[0] for line in listing.splitlines()}
    assert modes["tools/run.sh"] == "100755"
    assert modes["README.md"] == modes["src/old.py"] == modes["src/new.py"] == "100644"
    assert {"dvc.yaml", "params.yaml", ".dvc/config"} <= modes.keys()
    parent = subprocess.run(
        ["git", "--git-dir", str(bare), "rev-parse", f"{commit}^"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    assert parent != commit
    assert tip(bare) == commit
