#!/usr/bin/env python3
"""The runner: runs one experiment run where the work happens, and publishes it.

The same program runs as a local subprocess, in a Kubernetes Job's container and
inside a pod reached by ``exec``. It needs only python3 (stdlib), ``git`` and
``dvc`` on PATH, so any workload image can run it. Steps, each idempotent:

1. clone the experiment repo and check out the experiment's commit;
2. write the run's parameter files (overrides already applied by the service);
3. ``dvc pull`` what exists, run-cache included (missing data is fine);
4. ``dvc repro``;
5. commit ``dvc.lock``, params and metrics to the run branch;
6. ``dvc push`` (outputs and run-cache), then ``git push`` of the branch — data
   first, so a branch never points at data the remote lacks;
7. write ``status.json`` (state, branch, commit, metrics files) in the work dir.

If the run branch already exists in the remote, an earlier attempt published the
run: the runner reports that commit instead of running again.

The repository is the caller's: its tree may hold symlinks. Every file the runner
writes or reads in it is opened component by component without following
symlinks (:func:`open_beneath`), so nothing in the tree can redirect a write or a
read outside the clone. Pipeline stages (``dvc repro``) get an environment without
any credential, and the runner makes itself non-dumpable, so stage code cannot read
the credentials from ``/proc/<runner>/environ`` or its memory either.

Credentials come only from the environment: ``MLEXP_GIT_USERNAME`` and
``MLEXP_GIT_TOKEN`` become an HTTP ``Authorization`` header passed to git through
``GIT_CONFIG_*`` variables (never a URL, never ``.git/config``); S3 keys are the
standard ``AWS_*`` variables DVC reads. Nothing here prints them.

Usage: ``python3 runner.py --spec SPEC.json --workdir DIR [--detach] [--env-stdin]``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

STATUS_FILE = "status.json"
LOG_FILE = "runner.log"
PID_FILE = "runner.pid"
MAX_METRICS_BYTES = 1024 * 1024


# What carries a credential in the runner's environment; stages get none of it.
CREDENTIAL_PREFIXES = ("MLEXP_GIT_", "GIT_CONFIG_", "AWS_")
CREDENTIAL_NAMES = frozenset({"AWS_DEFAULT_REGION"})  # not secret; stages may use it
PR_SET_DUMPABLE = 4
_DIR_NOFOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


class StepFailed(Exception):
    """A step failed; the message is safe to show (no credentials)."""


def open_beneath(root: Path, rel: str, flags: int, mode: int = 0o644) -> int:
    """Open ``root/rel`` without following a symlink in any component of ``rel``.

    With ``os.O_CREAT`` in ``flags`` missing parent directories are created. A
    symlink (or a non-directory) on the way is refused with :class:`StepFailed`.
    """
    parts = [p for p in rel.split("/") if p]
    if not parts or rel.startswith("/") or any(p in (".", "..") for p in parts):
        raise StepFailed(f"refusing the path {rel!r}: not a plain relative path")
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            try:
                child = os.open(part, _DIR_NOFOLLOW, dir_fd=directory)
            except FileNotFoundError:
                if not flags & os.O_CREAT:
                    raise
                os.mkdir(part, 0o755, dir_fd=directory)
                child = os.open(part, _DIR_NOFOLLOW, dir_fd=directory)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise StepFailed(
                        f"refusing {rel!r}: {part!r} in it is a symlink or not a directory"
                    ) from None
                raise
            os.close(directory)
            directory = child
        try:
            return os.open(parts[-1], flags | os.O_NOFOLLOW, mode, dir_fd=directory)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StepFailed(f"refusing {rel!r}: it is a symlink") from None
            raise
    finally:
        os.close(directory)


def write_beneath(root: Path, rel: str, data: bytes) -> None:
    fd = open_beneath(root, rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def read_beneath(root: Path, rel: str, limit: int) -> bytes | None:
    """The file's bytes, or None if it is missing, not a regular file, or over ``limit``."""
    try:
        fd = open_beneath(root, rel, os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, StepFailed):
        return None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
        os.close(fd)
        return None
    with os.fdopen(fd, "rb") as src:
        return src.read(limit + 1)[:limit]


def without_credentials(env: Mapping[str, str]) -> dict[str, str]:
    """The environment for pipeline stages: no token, no S3 key, no git auth header."""
    return {
        k: v
        for k, v in env.items()
        if k in CREDENTIAL_NAMES or not k.startswith(CREDENTIAL_PREFIXES)
    }


def make_undumpable() -> None:
    """Keep same-user processes (stage code) out of our ``/proc/<pid>/environ`` and memory.

    Without CAP_SYS_PTRACE nobody may then read them; children become dumpable again
    when they exec, which is why stages also get an environment without credentials.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        log("warning: could not make the runner non-dumpable")


def git_environment(base: Mapping[str, str]) -> dict[str, str]:
    """Environment for git: auth header from MLEXP_GIT_* env, no hooks, no prompts.

    The header travels in ``GIT_CONFIG_*`` variables, which git reads as
    command-line config: nothing is written to ``.git/config`` or a URL.
    """
    env = dict(base)
    config = [
        ("core.hooksPath", os.devnull),
        ("credential.helper", ""),
        ("protocol.ext.allow", "never"),
        ("protocol.fd.allow", "never"),
        ("submodule.recurse", "false"),
        # A redirect could send git past the egress check of the URL it was given.
        ("http.followRedirects", "false"),
        ("advice.detachedHead", "false"),
        ("init.defaultBranch", "main"),
    ]
    username = env.get("MLEXP_GIT_USERNAME", "")
    token = env.get("MLEXP_GIT_TOKEN", "")
    if token:
        basic = base64.b64encode(f"{username or 'git'}:{token}".encode()).decode()
        config.append(("http.extraHeader", f"Authorization: Basic {basic}"))
    ca_bundle = env.get("MLEXP_GIT_CA_BUNDLE")
    if ca_bundle:
        # The variable, not http.sslCAInfo: a GIT_SSL_CAINFO in the environment would win.
        env["GIT_SSL_CAINFO"] = ca_bundle
    offset = int(env.get("GIT_CONFIG_COUNT", "0") or "0")
    for index, (key, value) in enumerate(config, start=offset):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    env["GIT_CONFIG_COUNT"] = str(offset + len(config))
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    return env


class Runner:
    def __init__(self, spec: Mapping[str, object], workdir: Path) -> None:
        self.spec = spec
        self.workdir = workdir
        self.repo = workdir / "repo"
        self.branch = str(spec["branch"])
        self.env = git_environment(os.environ)
        author = spec.get("author") or {}
        assert isinstance(author, dict)
        name = str(author.get("name") or "mlexp")
        email = str(author.get("email") or "mlexp@example.com")
        self.env.update(
            GIT_AUTHOR_NAME=name,
            GIT_AUTHOR_EMAIL=email,
            GIT_COMMITTER_NAME=name,
            GIT_COMMITTER_EMAIL=email,
            DVC_NO_ANALYTICS="1",
        )
        self.step_no = 0

    # -- plumbing ----------------------------------------------------------

    def step(self, title: str) -> None:
        self.step_no += 1
        log(f"step {self.step_no}: {title}")
        self.write_status("running", step=title)

    def run(
        self,
        *argv: str,
        cwd: Path | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> str:
        log("$ " + " ".join(argv))
        proc = subprocess.run(
            argv,
            cwd=cwd or self.repo,
            env=self.env if env is None else env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        if proc.stdout:
            sys.stdout.write(proc.stdout)
            sys.stdout.flush()
        if check and proc.returncode != 0:
            raise StepFailed(f"{argv[0]} {argv[1]} exited with {proc.returncode}")
        return proc.stdout

    def write_status(self, state: str, **fields: object) -> None:
        status = {"state": state, "run_id": self.spec.get("run_id"), "pid": os.getpid()}
        status.update(fields)
        tmp = self.workdir / (STATUS_FILE + ".tmp")
        # The work dir is writable by stage code: never write through what it left there.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(status, indent=2))
        tmp.replace(self.workdir / STATUS_FILE)

    # -- steps -------------------------------------------------------------

    def main(self) -> int:
        started = time.monotonic()
        try:
            commit = self.published_commit()
            if commit is None:
                commit = self.execute()
            else:
                log(f"run branch {self.branch} already published at {commit}; reporting it")
            self.write_status(
                "succeeded",
                branch=self.branch,
                commit=commit,
                metrics_files=self.read_metrics(),
                seconds=round(time.monotonic() - started, 3),
            )
            log(f"succeeded: {self.branch} at {commit}")
            return 0
        except StepFailed as exc:
            log(f"failed: {exc}")
            self.write_status("failed", error=str(exc), step_no=self.step_no)
            return 1

    def published_commit(self) -> str | None:
        """Clone, and return the run branch's commit if an earlier attempt pushed it."""
        self.step("clone experiment repository")
        if self.repo.exists():
            shutil.rmtree(self.repo)
        url = str(self.spec["repo_url"])
        base_branch = str(self.spec["base_branch"])
        self.run(
            "git", "clone", "--quiet", "--no-checkout", "--no-recurse-submodules",
            "--branch", base_branch, "--", url, str(self.repo),
            cwd=self.workdir,
        )  # fmt: skip
        remote = self.run("git", "ls-remote", "--heads", "origin", self.branch).split()
        if remote:
            self.run("git", "fetch", "--quiet", "origin", self.branch)
            self.run("git", "checkout", "--quiet", "-B", self.branch, remote[0])
            return remote[0]
        self.run("git", "checkout", "--quiet", "-b", self.branch, str(self.spec["base_commit"]))
        return None

    def execute(self) -> str:
        self.step("apply parameters")
        files = self.spec.get("files") or {}
        assert isinstance(files, dict)
        for rel, text in files.items():
            write_beneath(self.repo, str(rel), str(text).encode())
            log(f"wrote {rel}")
        self.configure_cache()

        self.step("dvc pull")
        self.run("dvc", "pull", "--run-cache", "--allow-missing")

        self.step("dvc repro")
        # Stage code is the caller's: it runs without any credential in its environment.
        self.run("dvc", "repro", env=without_credentials(self.env))

        self.step("commit results")
        self.run("git", "add", "--all")
        message = str(self.spec.get("message") or f"mlexp run {self.spec.get('run_id')}")
        self.run("git", "commit", "--quiet", "--allow-empty", "-m", message)
        commit = self.run("git", "rev-parse", "HEAD").strip()

        self.step("dvc push")
        self.run("dvc", "push", "--run-cache")

        self.step("git push")
        # A rejected push is not fatal yet: a twin attempt may have published first.
        self.run("git", "push", "--quiet", "origin", f"HEAD:refs/heads/{self.branch}", check=False)
        remote = self.run("git", "ls-remote", "--heads", "origin", self.branch).split()
        if not remote:
            raise StepFailed(f"git push of {self.branch} failed")
        if remote[0] != commit:
            # A twin attempt published first; its commit is the run's result.
            log(f"{self.branch} was published by another attempt at {remote[0]}")
            self.run("git", "fetch", "--quiet", "origin", self.branch)
            self.run("git", "checkout", "--quiet", "-B", self.branch, remote[0])
            return remote[0]
        return commit

    def configure_cache(self) -> None:
        """Point DVC at a shared cache (local profile) through the uncommitted config.local."""
        cache_dir = self.spec.get("cache_dir")
        if not cache_dir:
            return
        write_beneath(self.repo, ".dvc/config.local", f"[cache]\n    dir = {cache_dir}\n".encode())

    def read_metrics(self) -> dict[str, str]:
        metrics: dict[str, str] = {}
        names = self.spec.get("metrics_files") or []
        assert isinstance(names, list)
        for rel in names:
            data = read_beneath(self.repo, str(rel), MAX_METRICS_BYTES)
            if data is not None:
                metrics[str(rel)] = data.decode(errors="replace")
        return metrics


def log(message: str) -> None:
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    sys.stdout.write(f"[mlexp {stamp}] {message}\n")
    sys.stdout.flush()


def detach(workdir: Path) -> None:
    """Become a daemon in ``workdir``: survives the exec session that started it.

    The caller returns only once ``runner.pid`` names the daemon, so it can be read
    right away.
    """
    middle = os.fork()
    if middle > 0:
        os.waitpid(middle, 0)
        os._exit(0)
    os.setsid()
    daemon = os.fork()
    if daemon > 0:
        (workdir / PID_FILE).write_text(str(daemon))
        os._exit(0)
    log_fd = os.open(workdir / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run and publish one mlexp run.")
    parser.add_argument("--spec", type=Path, required=True, help="runner spec (JSON)")
    parser.add_argument("--workdir", type=Path, required=True, help="this run's work dir")
    parser.add_argument("--detach", action="store_true", help="run as a daemon (exec mode)")
    parser.add_argument(
        "--env-stdin",
        action="store_true",
        help="read one line of JSON, environment variables (credentials), from stdin",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    spec = json.loads(args.spec.read_text())
    if args.env_stdin:
        # Credentials arrive on stdin in exec mode (one JSON line): never on a command line
        # or in a file.
        os.environ.update({str(k): str(v) for k, v in json.loads(sys.stdin.readline()).items()})
    make_undumpable()
    if args.detach:
        detach(args.workdir)
    return Runner(spec, args.workdir.resolve()).main()


if __name__ == "__main__":
    sys.exit(main())
