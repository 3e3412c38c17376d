"""The integration tier's servers, proven with the real command-line clients.

Covers `tests.support.gitserver.GitHttpServer` (git over HTTPS with basic auth: clone of an
empty repo, a push of a few MB and a clone back, a gzip'd fetch negotiation, refusal of a
wrong password with nothing written) and `tests.support.s3server.S3Server` (``dvc push`` to
moto's S3 and ``dvc pull`` into a fresh clone, credentials in the dvc process's env only).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gitserver import GitHttpServer, basic_auth_header, isolated_git_env
from tests.support.prereqs import require, require_tools
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration

USERNAME = "mlexp-bot"
PASSWORD = "correct horse battery staple"
AUTH_ERROR = re.compile(r"Authentication failed|could not read Username|401")
DVC = Path(sys.executable).parent / "dvc"


def _run(args: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _ok(args: list[str], *, cwd: Path, env: dict[str, str]) -> str:
    done = _run(args, cwd=cwd, env=env)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def https_git(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHttpServer]:
    require_tools("git")
    exec_path = subprocess.run(["git", "--exec-path"], capture_output=True, text=True).stdout
    require((Path(exec_path.strip()) / "git-http-backend").exists(), "git http-backend is missing")
    root = tmp_path_factory.mktemp("git-server")
    with GitHttpServer(root, username=USERNAME, password=PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


def _git_env(server: GitHttpServer, home: Path, password: str | None) -> dict[str, str]:
    """A git client that trusts the server's CA; credentials, if any, as an extra header."""
    env = isolated_git_env(home, os.environ) | {"GIT_SSL_CAINFO": str(server.ca_file)}
    if password is not None:
        env |= {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: {basic_auth_header(USERNAME, password)}",
        }
    return env


def _statuses(server: GitHttpServer, repo: str) -> list[int]:
    return [status for _, path, status in server.requests if path.startswith(f"/{repo}.git/")]


def _commit_files(repo: Path, files: dict[str, bytes], env: dict[str, str]) -> str:
    """Init ``repo`` on main, commit ``files``, return the commit id."""
    _ok(["git", "init", "--quiet", "--initial-branch=main", str(repo)], cwd=repo.parent, env=env)
    for name, content in files.items():
        (repo / name).write_bytes(content)
    _ok(["git", "add", "--all"], cwd=repo, env=env)
    _ok(["git", "commit", "--quiet", "--message", "test commit"], cwd=repo, env=env)
    return _ok(["git", "rev-parse", "HEAD"], cwd=repo, env=env).strip()


def test_clone_of_empty_repo_needs_credentials_and_works_with_them(
    https_git: GitHttpServer, tmp_path: Path
) -> None:
    url = https_git.create_bare("empty")
    assert url == f"{https_git.base_url}/empty.git"
    assert url.startswith("https://127.0.0.1:")

    anonymous = _run(
        ["git", "clone", url, "anon"], cwd=tmp_path, env=_git_env(https_git, tmp_path, None)
    )
    assert anonymous.returncode != 0
    assert AUTH_ERROR.search(anonymous.stderr), anonymous.stderr
    assert _statuses(https_git, "empty") == [401]

    env = _git_env(https_git, tmp_path, PASSWORD)
    done = _run(["git", "clone", url, "clone"], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "empty repository" in done.stderr
    after_anonymous = _statuses(https_git, "empty")[1:]
    assert after_anonymous
    assert set(after_anonymous) == {200}
    config = (tmp_path / "clone" / ".git" / "config").read_text()
    assert f"url = {url}\n" in config
    assert PASSWORD not in config
    assert basic_auth_header(USERNAME, PASSWORD).split()[1] not in config


def test_push_of_a_few_mb_then_clone_back_is_identical(
    https_git: GitHttpServer, tmp_path: Path
) -> None:
    url = https_git.create_bare("roundtrip")
    env = _git_env(https_git, tmp_path, PASSWORD)
    # Incompressible, so the pack outgrows http.postBuffer and git sends it chunked.
    blob = random.Random(7).randbytes(3 * 1024 * 1024)
    commit = _commit_files(tmp_path / "work", {"model.bin": blob, "README": b"hi\n"}, env)

    _ok(["git", "push", url, "main"], cwd=tmp_path / "work", env=env)
    served = https_git.repo_path("roundtrip")
    assert _ok(["git", "--git-dir", str(served), "rev-parse", "main"], cwd=tmp_path, env=env) == (
        f"{commit}\n"
    )
    assert ("POST", "/roundtrip.git/git-receive-pack", 200) in https_git.requests

    _ok(["git", "clone", "--quiet", url, "back"], cwd=tmp_path, env=env)
    back = tmp_path / "back"
    assert _ok(["git", "rev-parse", "HEAD"], cwd=back, env=env).strip() == commit
    assert (back / "model.bin").read_bytes() == blob
    assert (back / "README").read_bytes() == b"hi\n"


def test_fetch_with_a_gzipped_request_body_works(https_git: GitHttpServer, tmp_path: Path) -> None:
    url = https_git.create_bare("many-refs")
    env = _git_env(https_git, tmp_path, PASSWORD)
    source = tmp_path / "source"
    _ok(["git", "init", "--quiet", str(source)], cwd=tmp_path, env=env)
    # 40 distinct branch tips: the clone's "want" list tops 1 KiB, so git gzips the request.
    stream = "".join(
        f"commit refs/heads/b{i}\ncommitter t <t@e> {1_700_000_000 + i} +0000\ndata 2\n{i % 10}\n\n"
        for i in range(40)
    )
    subprocess.run(
        ["git", "fast-import", "--quiet"], cwd=source, env=env, input=stream.encode(), check=True
    )
    _ok(["git", "push", "--quiet", url, "refs/heads/*:refs/heads/*"], cwd=source, env=env)

    trace = tmp_path / "curl.trace"
    traced = env | {"GIT_TRACE_CURL": str(trace), "GIT_TRACE_CURL_NO_DATA": "1"}
    _ok(["git", "clone", "--quiet", "--mirror", url, "mirror"], cwd=tmp_path, env=traced)

    assert "Send header: Content-Encoding: gzip" in trace.read_text(errors="replace")
    refs = _ok(["git", "for-each-ref", "--format=%(refname)"], cwd=tmp_path / "mirror", env=env)
    assert sorted(refs.split()) == sorted(f"refs/heads/b{i}" for i in range(40))


def test_wrong_password_is_refused_and_nothing_is_written(
    https_git: GitHttpServer, tmp_path: Path
) -> None:
    url = https_git.create_bare("guarded")
    wrong = _git_env(https_git, tmp_path, "not the password")
    _commit_files(tmp_path / "work", {"params.yaml": b"train:\n  C: 1.0\n"}, wrong)

    push = _run(["git", "push", url, "main"], cwd=tmp_path / "work", env=wrong)
    clone = _run(["git", "clone", url, "clone"], cwd=tmp_path, env=wrong)

    for done in (push, clone):
        assert done.returncode != 0
        assert AUTH_ERROR.search(done.stderr), done.stderr
    assert set(_statuses(https_git, "guarded")) == {401}
    assert not (tmp_path / "clone").exists()
    served = https_git.repo_path("guarded")
    assert _ok(["git", "--git-dir", str(served), "for-each-ref"], cwd=tmp_path, env=wrong) == ""
    counts = _ok(["git", "--git-dir", str(served), "count-objects", "-v"], cwd=tmp_path, env=wrong)
    assert "count: 0\n" in counts
    assert "in-pack: 0\n" in counts


def _dvc_env(home: Path, pycache: Path) -> dict[str, str]:
    """dvc with nothing of the developer's: no global or system config, no analytics.

    Bytecode goes to ``pycache`` (outside the venv) even where PYTHONDONTWRITEBYTECODE is
    set, so only the first dvc command of the module pays for compiling dvc's imports.
    """
    base = {key: value for key, value in os.environ.items() if not key.startswith("DVC_")}
    base.pop("PYTHONDONTWRITEBYTECODE", None)
    return isolated_git_env(home, base) | {
        "PATH": f"{DVC.parent}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
        "PYTHONPYCACHEPREFIX": str(pycache),
        "DVC_NO_ANALYTICS": "1",
        "DVC_GLOBAL_CONFIG_DIR": str(home / "dvc-global"),
        "DVC_SYSTEM_CONFIG_DIR": str(home / "dvc-system"),
        "DVC_SITE_CACHE_DIR": str(home / "dvc-site-cache"),
    }


def test_dvc_push_to_moto_s3_and_pull_into_a_fresh_clone(
    moto_s3: S3Server, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    require(DVC.exists(), f"dvc is not installed next to {sys.executable}")
    moto_s3.create_bucket("dvc-roundtrip")
    local = _dvc_env(tmp_path, tmp_path_factory.mktemp("pycache"))
    with_s3 = moto_s3.subprocess_env(local)
    work = tmp_path / "work"
    data = random.Random(11).randbytes(300_000)
    _ok(["git", "init", "--quiet", "--initial-branch=main", str(work)], cwd=tmp_path, env=local)
    _ok([str(DVC), "init", "--quiet"], cwd=work, env=local)
    (work / ".dvc" / "config").write_text(
        "[core]\n"
        "    remote = storage\n"
        "['remote \"storage\"']\n"
        "    url = s3://dvc-roundtrip/wine\n"
        f"    endpointurl = {moto_s3.endpoint_url}\n"
    )
    (work / "blob.bin").write_bytes(data)
    _ok([str(DVC), "add", "--quiet", "blob.bin"], cwd=work, env=local)
    _ok(["git", "add", "--all"], cwd=work, env=local)
    _ok(["git", "commit", "--quiet", "--message", "track blob"], cwd=work, env=local)
    assert moto_s3.list_keys("dvc-roundtrip") == []

    _ok([str(DVC), "push"], cwd=work, env=with_s3)

    md5 = hashlib.md5(data).hexdigest()  # noqa: S324 - DVC's content address, not security
    key = f"wine/files/md5/{md5[:2]}/{md5[2:]}"
    assert moto_s3.list_keys("dvc-roundtrip") == [key]
    assert moto_s3.get("dvc-roundtrip", key) == data
    config = (work / ".dvc" / "config").read_text()
    assert moto_s3.access_key_id not in config
    assert moto_s3.secret_access_key not in config
    assert os.environ.get("AWS_ACCESS_KEY_ID") != moto_s3.access_key_id

    _ok(["git", "clone", "--quiet", str(work), "fresh"], cwd=tmp_path, env=local)
    fresh = tmp_path / "fresh"
    assert not (fresh / "blob.bin").exists()
    _ok([str(DVC), "pull"], cwd=fresh, env=with_s3)
    assert (fresh / "blob.bin").read_bytes() == data
