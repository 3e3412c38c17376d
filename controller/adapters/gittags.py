"""An experiment repository's registry tags, read and written with the ``git`` CLI.

A :class:`TagRepo` is a temporary bare repository that mirrors the remote's registry
tags (those in GTO's grammar, see :mod:`controller.domain.registry`): ``ls-remote``
names them, one shallow ``fetch`` brings their annotations, ``for-each-ref`` reads them.
A new tag is made there on the commit it names and pushed without force: a push that
finds the tag already on the remote reports so (:meth:`TagRepo.push_tag` returns False)
and the caller decides (another ``n``, or a conflict). Credentials reach git through
the environment only (:class:`~controller.adapters.gitrepo.GitAccess`); git's own
text goes to the log, callers get :class:`~controller.domain.errors.ExternalError`.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType

from controller.adapters.gitrepo import MAX_LOGGED, GitAccess, _git, _no_remote_hooks
from controller.domain.errors import ExternalError
from controller.domain.gitfailures import describe_git_failure
from controller.domain.registry import TagRecord, parse_tag

log = logging.getLogger("mlexp.git")

MAX_TAGS = 20_000  # registry tags read from one repository
MAX_MESSAGE_BYTES = 8192
# for-each-ref: fields split by NUL, records ended by NUL + newline (a message holds neither)
_FORMAT = (
    "%00".join(
        (
            "%(refname)",
            "%(objecttype)",
            "%(*objecttype)",
            "%(*objectname)",
            "%(taggerdate:iso-strict)",
            "%(taggername)",
            "%(taggeremail:trim)",
            "%(contents)",
        )
    )
    + "%00"
)


class TagRepo:
    """A scratch bare repository holding the remote's registry tags; use with ``with``."""

    def __init__(
        self, access: GitAccess, *, base_env: Mapping[str, str], tagger: tuple[str, str]
    ) -> None:
        self.access = access
        self.env = access.environment(base_env)
        name, email = tagger
        # The tagger of every tag made here (GTO reads it as the event's author).
        self.env.update(GIT_COMMITTER_NAME=name, GIT_COMMITTER_EMAIL=email)
        self.env.pop("GIT_COMMITTER_DATE", None)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.git_dir = Path()
        self._read = False

    def __enter__(self) -> TagRepo:
        self._tmp = tempfile.TemporaryDirectory(prefix="mlexp-tags-")
        self.git_dir = Path(self._tmp.name) / "repo.git"
        _git(["init", "--quiet", "--bare", str(self.git_dir)], env=self.env)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def tags(self) -> list[TagRecord]:
        """The remote's registry tags as they are now (annotated ones; lightweight tags
        are no registry events, as for GTO)."""
        url = self.access.url
        listed = _git(["ls-remote", "--tags", "--refs", "--", url], env=self.env, cwd=self.git_dir)
        names = []
        for line in listed.stdout.splitlines():
            ref = line.partition("\t")[2]
            name = ref.removeprefix("refs/tags/")
            if ref.startswith("refs/tags/") and parse_tag(name) is not None:
                names.append(name)
        if len(names) > MAX_TAGS:
            raise ExternalError(
                f"the repository holds more than {MAX_TAGS} registry tags; "
                "this service reads at most that many"
            )
        if self._read:
            # Drop what the last read left, so a tag deleted on the remote is gone here too.
            stale = _git(["for-each-ref", "--format=delete %(refname)", "refs/tags"],
                         env=self.env, cwd=self.git_dir).stdout  # fmt: skip
            if stale:
                _git(["update-ref", "--stdin"], env=self.env, cwd=self.git_dir, stdin=stale)
        self._read = True
        if names:
            refspecs = "".join(f"+refs/tags/{n}:refs/tags/{n}\n" for n in names)
            _git(
                ["fetch", "--quiet", "--depth=1", "--no-tags", "--stdin", "--", url],
                env=self.env, cwd=self.git_dir, stdin=refspecs,
            )  # fmt: skip
        return self.local_tags()

    def local_tags(self) -> list[TagRecord]:
        """The tags as last read, and those made here since (no network)."""
        out = _git(
            ["for-each-ref", f"--format={_FORMAT}", "refs/tags"], env=self.env, cwd=self.git_dir
        ).stdout
        return _records(out)

    def push_tag(self, name: str, commit: str, message: str) -> bool:
        """Make the annotated tag ``name`` on ``commit`` and push it; False when the remote
        has a tag of that name already (another writer got there first)."""
        env, cwd = self.env, self.git_dir
        present = _git(["cat-file", "-e", f"{commit}^{{commit}}"], env=env, cwd=cwd, check=False)
        if present.returncode != 0:
            _git(["fetch", "--quiet", "--depth=1", "--no-tags", "--", self.access.url, commit],
                 env=env, cwd=cwd)  # fmt: skip
        _git(["tag", "--force", "--annotate", "--file=-", "--", name, commit],
             env=env, cwd=cwd, stdin=message)  # fmt: skip
        push = _git(
            ["push", "--quiet", *_no_remote_hooks(self.access.url), "--", self.access.url,
             f"refs/tags/{name}:refs/tags/{name}"],
            env=env, cwd=cwd, check=False,
        )  # fmt: skip
        if push.returncode == 0:
            log.info("tag pushed", extra={"tag": name, "commit": commit})
            return True
        if "already exists" in push.stderr or "[rejected]" in push.stderr:
            log.info("tag exists on the remote", extra={"tag": name})
            return False
        log.warning("git failed", extra={"command": "push", "stderr": push.stderr[-MAX_LOGGED:]})
        raise ExternalError(describe_git_failure("push", push.stderr))


def _records(out: str) -> list[TagRecord]:
    records = []
    for chunk in out.split("\0\n"):
        fields = chunk.split("\0")
        if len(fields) != 8:
            continue
        ref, kind, target_kind, target, date, tagger, email, message = fields
        if kind != "tag" or target_kind != "commit" or not date:
            continue  # a lightweight tag, or a tag of something else than a commit
        records.append(
            TagRecord(
                name=ref.removeprefix("refs/tags/"),
                commit=target,
                created_at=datetime.fromisoformat(date),
                message=message[:MAX_MESSAGE_BYTES],
                tagger=tagger,
                tagger_email=email,
            )
        )
    return records
