"""Publishing an experiment's files to its git repository, with the ``git`` CLI.

Credentials reach git only through the environment (see
:func:`controller.runner.git_environment`); nothing is written to a URL or to
``.git/config``. Git's own messages are passed on (they never carry the auth
header), shortened, as :class:`ExternalError`.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from controller.domain.errors import ExternalError
from controller.runner import git_environment

MAX_MESSAGE = 600
PUSH_ATTEMPTS = 3


@dataclass(frozen=True)
class GitAccess:
    """Where a repository is and how to authenticate; ``token`` is secret."""

    url: str
    username: str | None = None
    token: str | None = None
    ca_bundle: str | None = None

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        env = {k: v for k, v in base.items() if not k.startswith(("GIT_", "MLEXP_GIT_"))}
        if self.token:
            env["MLEXP_GIT_TOKEN"] = self.token
            env["MLEXP_GIT_USERNAME"] = self.username or "git"
        if self.ca_bundle:
            env["MLEXP_GIT_CA_BUNDLE"] = self.ca_bundle
        return git_environment(env)


def init_bare(path: Path, branch: str) -> None:
    """A new bare repository (the local profile's repo when ``git.url`` is left out)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _git(["init", "--quiet", "--bare", f"--initial-branch={branch}", str(path)], env=None)


def publish(
    access: GitAccess,
    *,
    branch: str,
    files: Mapping[str, bytes],
    author: tuple[str, str],
    message: str,
    base_env: Mapping[str, str],
) -> str:
    """Commit ``files`` on top of ``branch`` (or as its first commit) and push; returns the sha.

    A push that loses a race with another writer is retried on the new tip.
    """
    env = access.environment(base_env)
    name, email = author
    env.update(
        GIT_AUTHOR_NAME=name, GIT_AUTHOR_EMAIL=email,
        GIT_COMMITTER_NAME=name, GIT_COMMITTER_EMAIL=email,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="mlexp-publish-") as tmp:
        work = Path(tmp)
        _git(["init", "--quiet", f"--initial-branch={branch}", str(work)], env=env)
        for attempt in range(1, PUSH_ATTEMPTS + 1):
            _checkout_tip(work, access.url, branch, env)
            for rel, data in files.items():
                target = work / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            _git(["add", "--all"], env=env, cwd=work)
            _git(["commit", "--quiet", "--allow-empty", "-m", message], env=env, cwd=work)
            push = _git(
                ["push", "--quiet", "--", access.url, f"HEAD:refs/heads/{branch}"],
                env=env, cwd=work, check=False,
            )  # fmt: skip
            if push.returncode == 0:
                return _git(["rev-parse", "HEAD"], env=env, cwd=work).stdout.strip()
            if "rejected" not in push.stderr or attempt == PUSH_ATTEMPTS:
                raise ExternalError(_failure("git push", access.url, push.stderr))
    raise AssertionError("unreachable")


def read_published(
    access: GitAccess, *, branch: str, paths: Sequence[str], base_env: Mapping[str, str]
) -> tuple[str, dict[str, str]] | None:
    """The run branch's commit and the text of ``paths`` in it; None if it was not pushed."""
    env = access.environment(base_env)
    with tempfile.TemporaryDirectory(prefix="mlexp-result-") as tmp:
        work = Path(tmp)
        _git(["init", "--quiet", "--bare", str(work)], env=env)
        heads = _git(["ls-remote", "--heads", "--", access.url, branch], env=env, cwd=work)
        if not heads.stdout.split():
            return None
        _git(["fetch", "--quiet", "--depth=1", "--", access.url, branch], env=env, cwd=work)
        commit = _git(["rev-parse", "FETCH_HEAD"], env=env, cwd=work).stdout.strip()
        files: dict[str, str] = {}
        for path in paths:
            shown = _git(["show", f"{commit}:{path}"], env=env, cwd=work, check=False)
            if shown.returncode == 0:
                files[path] = shown.stdout
        return commit, files


def _checkout_tip(work: Path, url: str, branch: str, env: dict[str, str]) -> None:
    """Reset the work tree to the remote branch's tip, or to an unborn branch."""
    heads = _git(["ls-remote", "--heads", "--", url, branch], env=env, cwd=work).stdout.split()
    if heads:
        _git(["fetch", "--quiet", "--depth=1", "--", url, branch], env=env, cwd=work)
        _git(["checkout", "--quiet", "--force", "-B", branch, "FETCH_HEAD"], env=env, cwd=work)
    else:
        _git(["symbolic-ref", "HEAD", f"refs/heads/{branch}"], env=env, cwd=work)


def _git(
    args: list[str],
    *,
    env: Mapping[str, str] | None,
    cwd: Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        url = next((a for a in args if "://" in a or a.startswith("/")), "")
        raise ExternalError(_failure(f"git {args[0]}", url, proc.stderr))
    return proc


def _failure(what: str, url: str, stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    text = "; ".join(lines)[-MAX_MESSAGE:] or "no output"
    return f"{what} failed for {url}: {text}"
