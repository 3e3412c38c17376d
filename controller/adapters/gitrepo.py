"""Publishing an experiment's files to its git repository, with the ``git`` CLI.

Credentials reach git only through the environment (see
:func:`controller.runner.git_environment`); nothing is written to a URL or to
``.git/config``. Nothing of a caller's repository is ever checked out here: commits
are built with plumbing (see :func:`publish`). Failures reach the caller as a class
("could not connect", "authentication failed", "not found"), as :class:`ExternalError`;
git's own text, which may name internal addresses or paths, goes to the log only.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from controller.domain.bundle import is_local_url
from controller.domain.errors import ExternalError, InvalidBundle
from controller.domain.gitfailures import describe_git_failure
from controller.runner import git_environment

log = logging.getLogger("mlexp.git")

MAX_LOGGED = 2000
PUSH_ATTEMPTS = 3
GIT_TIMEOUT = 600  # seconds; a remote that stalls must not hold a request forever


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

    The commit is built with plumbing in a bare repository — blobs, an index, a tree,
    ``commit-tree`` — so nothing of the caller's repository is ever checked out and no
    symlink in it can redirect a write. A tip that holds a symlink, a submodule or a
    file where the bundle writes (or a directory where it writes a file) is refused.
    A push that loses a race with another writer is retried on the new tip.
    """
    env = access.environment(base_env)
    name, email = author
    env.update(
        GIT_AUTHOR_NAME=name, GIT_AUTHOR_EMAIL=email,
        GIT_COMMITTER_NAME=name, GIT_COMMITTER_EMAIL=email,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="mlexp-publish-") as tmp:
        git_dir = Path(tmp) / "repo.git"
        _git(["init", "--quiet", "--bare", str(git_dir)], env=env)
        blobs = _write_blobs(git_dir, Path(tmp), files, env)
        env["GIT_INDEX_FILE"] = str(Path(tmp) / "index")
        for attempt in range(1, PUSH_ATTEMPTS + 1):
            tip = _fetch_tip(git_dir, access.url, branch, env)
            entries = _tree_entries(git_dir, tip, env) if tip else {}
            check_writable(entries, files.keys(), branch=branch)
            _git(["read-tree", *([tip] if tip else ["--empty"])], env=env, cwd=git_dir)
            index = "".join(
                f"{_file_mode(entries.get(path))} {blobs[path]}\t{path}\0" for path in files
            )
            _git(["update-index", "-z", "--index-info"], env=env, cwd=git_dir, stdin=index)
            tree = _git(["write-tree"], env=env, cwd=git_dir).stdout.strip()
            parents = ["-p", tip] if tip else []
            commit = _git(
                ["commit-tree", tree, *parents, "-m", message], env=env, cwd=git_dir
            ).stdout.strip()
            push = _git(
                ["push", "--quiet", *_no_remote_hooks(access.url), "--", access.url,
                 f"{commit}:refs/heads/{branch}"],
                env=env, cwd=git_dir, check=False,
            )  # fmt: skip
            if push.returncode == 0:
                return commit
            if "rejected" not in push.stderr or attempt == PUSH_ATTEMPTS:
                raise ExternalError(describe_git_failure("push", push.stderr))
    raise AssertionError("unreachable")


# Modes in a git tree: what the bundle may replace, and what makes a path unusable.
_REGULAR = ("100644", "100755")
_KIND = {"120000": "a symlink", "160000": "a submodule", "040000": "a directory"}


def check_writable(entries: Mapping[str, str], paths: Iterable[str], *, branch: str) -> None:
    """Refuse when the tip would turn a write into something else than a plain file write.

    ``entries`` maps every path of the tip's tree (directories included) to its mode.
    A parent directory must be a directory; the path itself absent or a regular file.
    """
    for path in sorted(paths):
        parts = path.split("/")
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            mode = entries.get(prefix)
            if mode is None:
                break
            last = depth == len(parts)
            if (last and mode in _REGULAR) or (not last and mode == "040000"):
                continue
            what = _KIND.get(mode, f"an entry of mode {mode}")
            if not last and mode in _REGULAR:
                what = "a file"
            raise InvalidBundle(
                f"branch {branch!r} has {what} at {prefix!r}, where the bundle writes "
                f"{path!r}; remove it from the branch or use another branch",
                errors=[{"loc": path, "msg": f"{prefix} is {what}", "type": "path_conflict"}],
            )


def _write_blobs(
    git_dir: Path, tmp: Path, files: Mapping[str, bytes], env: Mapping[str, str]
) -> dict[str, str]:
    """Store every file as a blob in one ``hash-object`` call; the files it reads are ours
    (numbered, in our temp dir), never paths of the caller's tree."""
    staged = tmp / "blobs"
    staged.mkdir()
    names = []
    for number, data in enumerate(files.values()):
        blob = staged / str(number)
        blob.write_bytes(data)
        names.append(str(blob))
    if not names:
        return {}
    hashed = _git(
        ["hash-object", "-w", "--no-filters", "--stdin-paths"],
        env=env, cwd=git_dir, stdin="\n".join(names) + "\n",
    ).stdout.split()  # fmt: skip
    shutil.rmtree(staged)
    return dict(zip(files, hashed, strict=True))


def _fetch_tip(git_dir: Path, url: str, branch: str, env: dict[str, str]) -> str | None:
    heads = _git(["ls-remote", "--heads", "--", url, branch], env=env, cwd=git_dir).stdout
    wanted = f"refs/heads/{branch}"
    if not any(line.split("\t")[-1] == wanted for line in heads.splitlines()):
        return None
    _git(["fetch", "--quiet", "--depth=1", "--", url, wanted], env=env, cwd=git_dir)
    return _git(["rev-parse", "FETCH_HEAD"], env=env, cwd=git_dir).stdout.strip()


def _tree_entries(git_dir: Path, commit: str, env: Mapping[str, str]) -> dict[str, str]:
    """Every path in ``commit``'s tree (recursively, directories included) -> its mode."""
    listed = _git(["ls-tree", "-r", "-t", "-z", "--full-tree", commit], env=env, cwd=git_dir)
    entries: dict[str, str] = {}
    for record in listed.stdout.split("\0"):
        if record:
            meta, _, path = record.partition("\t")
            entries[path] = meta.split(" ", 1)[0]
    return entries


def _file_mode(existing: str | None) -> str:
    return existing if existing == "100755" else "100644"


def _no_remote_hooks(url: str) -> list[str]:
    """For a repository on this machine, git starts ``receive-pack`` itself, without the
    ``GIT_CONFIG_*`` settings that disable hooks: pass the setting on its command line, so
    hooks that a run could have planted in a local repository never run as the service."""
    if is_local_url(url):
        return ["--receive-pack=git -c core.hooksPath=/dev/null receive-pack"]
    return []


def read_published(
    access: GitAccess,
    *,
    branch: str,
    paths: Sequence[str],
    base_env: Mapping[str, str],
    max_bytes: int = 8 << 20,
) -> tuple[str, dict[str, str]] | None:
    """The run branch's commit and the text of ``paths`` in it; None if it was not pushed.

    Paths that are absent, not files, or larger than ``max_bytes`` are left out. Two
    ``cat-file`` calls read them all: sizes first, then the contents of those that fit.
    """
    env = access.environment(base_env)
    with tempfile.TemporaryDirectory(prefix="mlexp-result-") as tmp:
        work = Path(tmp)
        _git(["init", "--quiet", "--bare", str(work)], env=env)
        heads = _git(["ls-remote", "--heads", "--", access.url, branch], env=env, cwd=work)
        if not heads.stdout.split():
            return None
        _git(["fetch", "--quiet", "--depth=1", "--", access.url, branch], env=env, cwd=work)
        commit = _git(["rev-parse", "FETCH_HEAD"], env=env, cwd=work).stdout.strip()
        wanted = [p for p in dict.fromkeys(paths) if "\n" not in p]
        if not wanted:
            return commit, {}
        names = "".join(f"{commit}:{path}\n" for path in wanted)
        checked = _git(["cat-file", "--batch-check"], env=env, cwd=work, stdin=names)
        fitting = []
        for path, line in zip(wanted, checked.stdout.splitlines(), strict=False):
            fields = line.split()
            if len(fields) == 3 and fields[1] == "blob" and int(fields[2]) <= max_bytes:
                fitting.append((path, fields[0]))
        files: dict[str, str] = {}
        if fitting:
            batch = subprocess.run(
                ["git", "cat-file", "--batch"],
                input="".join(f"{sha}\n" for _, sha in fitting).encode(),
                cwd=work, env=env, capture_output=True, check=True, timeout=GIT_TIMEOUT,
            )  # fmt: skip
            data = batch.stdout
            at = 0
            for path, _ in fitting:
                header_end = data.index(b"\n", at)
                size = int(data[at:header_end].split()[2])
                start = header_end + 1
                files[path] = data[start : start + size].decode(errors="replace")
                at = start + size + 1
        return commit, files


def _git(
    args: list[str],
    *,
    env: Mapping[str, str] | None,
    cwd: Path | None = None,
    check: bool = True,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=env,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            timeout=GIT_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise ExternalError(
            f"git {args[0]} did not finish within {GIT_TIMEOUT} s (could not connect "
            "to the git server, or it stalled)"
        ) from None
    if check and proc.returncode != 0:
        # git's own text may name internal addresses or server paths: log it, answer a class.
        log.warning("git failed", extra={"command": args[0], "stderr": proc.stderr[-MAX_LOGGED:]})
        raise ExternalError(describe_git_failure(args[0], proc.stderr))
    return proc
