"""``repo_json``: the repository, DVC remote, storage and registry an experiment uses.

Parsing is strict (unknown keys are an error) and never echoes an input value
in a message, since any value may be a credential. Which URLs are acceptable
depends on the profile: the local profile (no Kubernetes configured) also takes
local paths and ``file://`` URLs and may leave ``git.url`` / ``dvc.url`` out.
``git.branch`` must be a name ``git check-ref-format --branch`` accepts (see
:func:`branch_name_problem`), so a bad one is refused before anything is created.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from controller.domain.errors import InvalidBundle, InvalidInput, summary, validation_details
from controller.domain.safeyaml import load_json

MAX_REPO_JSON_BYTES = 64 * 1024

MAX_BRANCH_LENGTH = 200
# Our own policy, narrower than git's: branch names travel into commands, URLs, logs and
# shell snippets (the clone command), so only these characters are accepted.
_BRANCH_CHARS = re.compile(r"^[A-Za-z0-9._/-]*$")
# Characters git refuses anywhere in a ref name (refs.c: refname_disposition).
_GIT_BAD_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_REMOTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_S3_URL = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9._/-]*)?$")
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[A-Za-z0-9._/~-]+$")
_HOST = re.compile(r"^[A-Za-z0-9.-]+$|^\[[0-9A-Fa-f:.]+\]$")
_SAFE_TEXT = re.compile(r"^[^\x00-\x1f\x7f]*$")

Profile = Literal["local", "kubernetes"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GitAuthor(_Strict):
    name: str = Field(default="mlexp", min_length=1, max_length=100, pattern=_SAFE_TEXT.pattern)
    email: str = Field(
        default="mlexp@example.com", min_length=3, max_length=200, pattern=r"^[^\s<>@]+@[^\s<>@]+$"
    )


class GitSpec(_Strict):
    url: str | None = Field(default=None, max_length=2048)
    branch: str = "main"
    username: str | None = Field(default=None, max_length=200, pattern=_SAFE_TEXT.pattern)
    token: SecretStr | None = None
    author: GitAuthor = GitAuthor()

    @field_validator("branch")
    @classmethod
    def _branch_is_a_ref_name(cls, value: str) -> str:
        problem = branch_name_problem(value)
        if problem is not None:
            raise ValueError(f"not a valid git branch name: {problem}")
        return value


class DvcSpec(_Strict):
    remote: str = Field(default="storage", pattern=_REMOTE_NAME.pattern)
    url: str | None = Field(default=None, max_length=2048)


class StorageSpec(_Strict):
    endpoint_url: str | None = Field(default=None, max_length=2048)
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    region: str | None = Field(default=None, pattern=r"^[a-z0-9-]{1,50}$")


class RegistrySpec(_Strict):
    image: str | None = Field(default=None, max_length=500, pattern=r"^[^\s\x00-\x1f]+$")
    server: str | None = Field(default=None, max_length=500, pattern=r"^[^\s\x00-\x1f/]+$")
    username: str | None = Field(default=None, max_length=200, pattern=_SAFE_TEXT.pattern)
    password: SecretStr | None = None


class RepoSpec(_Strict):
    git: GitSpec = GitSpec()
    dvc: DvcSpec = DvcSpec()
    storage: StorageSpec | None = None
    registry: RegistrySpec | None = None


def branch_name_problem(name: str) -> str | None:
    """Why ``name`` is no acceptable branch name, or ``None``: the rules of
    ``git check-ref-format --branch`` (see :func:`git_branch_problem`), within our
    character set and length, and not ``@`` (which git reads as ``HEAD`` in revisions)."""
    if not 1 <= len(name) <= MAX_BRANCH_LENGTH:
        return f"it must have 1 to {MAX_BRANCH_LENGTH} characters"
    if name == "@":
        # git takes it as a branch, but in a revision '@' means HEAD.
        return "'@' alone is not a branch name"
    problem = git_branch_problem(name)
    if problem is None and not _BRANCH_CHARS.match(name):
        problem = "only letters, digits, '.', '_', '-' and '/' are accepted"
    return problem


def git_branch_problem(name: str) -> str | None:
    """Why ``git check-ref-format --branch <name>`` (outside a repository) refuses
    ``name``, or ``None`` if git accepts it. Pure: git's refs.c rules, checked on the
    UTF-8 bytes as git does (bytes from 0x80 up are allowed)."""
    if name.startswith("-"):
        return "it must not start with '-'"
    if name == "HEAD":
        return "'HEAD' is not a branch name"
    if _GIT_BAD_CHARS.search(name):
        return "it must not contain spaces, control characters or any of ~ ^ : ? * [ \\"
    if ".." in name:
        return "it must not contain '..'"
    if "@{" in name:
        return "it must not contain '@{'"
    for component in name.split("/"):
        if not component:
            return "it must not start or end with '/' or contain '//'"
        if component.startswith("."):
            return "no part between slashes may start with '.'"
        if component.endswith(".lock"):
            return "no part between slashes may end with '.lock'"
    if name.endswith("."):
        return "it must not end with '.'"
    return None


def parse_repo_json(data: bytes, *, profile: Profile) -> RepoSpec:
    """Parse and validate ``repo_json``; every failure is an :class:`InvalidBundle`."""
    if len(data) > MAX_REPO_JSON_BYTES:
        raise InvalidBundle(f"repo_json is larger than {MAX_REPO_JSON_BYTES} bytes")
    try:
        raw = load_json(data, source="repo_json", max_bytes=MAX_REPO_JSON_BYTES)
    except InvalidInput as exc:
        raise InvalidBundle(exc.detail) from None
    if not isinstance(raw, dict):
        raise InvalidBundle("repo_json must be a JSON object")
    try:
        spec = RepoSpec.model_validate(raw)
    except ValidationError as exc:
        errors = validation_details(exc)
        raise InvalidBundle(f"repo_json is invalid: {summary(errors)}", errors=errors) from None
    check_locations(spec, profile=profile)
    return spec


def check_locations(spec: RepoSpec, *, profile: Profile) -> None:
    """URL rules of DESIGN.md's security section, for the given profile."""
    local = profile == "local"
    if spec.git.url is None:
        if not local:
            raise InvalidBundle("git.url is required unless the service runs in the local profile")
    else:
        check_git_url(spec.git.url, allow_local=local)
    if spec.dvc.url is None:
        if not local:
            raise InvalidBundle("dvc.url is required unless the service runs in the local profile")
    else:
        check_dvc_url(spec.dvc.url, allow_local=local)
    if spec.storage is not None and spec.storage.endpoint_url is not None:
        check_endpoint_url(spec.storage.endpoint_url)
    if spec.git.token is not None and spec.git.url is not None and is_local_url(spec.git.url):
        raise InvalidBundle("git.token is meaningless for a local repository path")


def is_local_url(url: str) -> bool:
    return url.startswith(("/", "file://"))


def check_git_url(url: str, *, allow_local: bool) -> None:
    """Accept https, ssh (URL or scp-like) and, in the local profile, local paths."""
    _reject_dangerous(url, "git.url")
    if is_local_url(url):
        if not allow_local:
            raise InvalidBundle("git.url: local paths are accepted only in the local profile")
        _check_local_path(url, "git.url")
        return
    if _SCP_LIKE.match(url):
        return
    parts = urlsplit(url)
    if parts.scheme not in ("https", "ssh"):
        raise InvalidBundle("git.url must use https or ssh")
    if parts.password is not None or (parts.scheme == "https" and parts.username is not None):
        raise InvalidBundle(
            "git.url must not contain credentials; put them in git.username and git.token"
        )
    if not parts.hostname or not _HOST.match(parts.netloc.rsplit("@", 1)[-1].rsplit(":", 1)[0]):
        raise InvalidBundle("git.url has no valid host")
    if parts.query or parts.fragment:
        raise InvalidBundle("git.url must not have a query or fragment")


def check_dvc_url(url: str, *, allow_local: bool) -> None:
    _reject_dangerous(url, "dvc.url")
    if is_local_url(url):
        if not allow_local:
            raise InvalidBundle("dvc.url: local paths are accepted only in the local profile")
        _check_local_path(url, "dvc.url")
        return
    if not _S3_URL.match(url) or ".." in url:
        raise InvalidBundle("dvc.url must be s3://<bucket>/<prefix> (or a local path locally)")


def check_endpoint_url(url: str) -> None:
    _reject_dangerous(url, "storage.endpoint_url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidBundle("storage.endpoint_url must be an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidBundle("storage.endpoint_url must not contain credentials")
    if parts.query or parts.fragment:
        raise InvalidBundle("storage.endpoint_url must not have a query or fragment")


def _reject_dangerous(url: str, field: str) -> None:
    if url.startswith("-"):
        raise InvalidBundle(f"{field} must not look like a command-line option")
    if "::" in url.split("/", 1)[0] or url.lower().startswith(("ext:", "fd:")):
        raise InvalidBundle(f"{field} uses a forbidden git transport")
    if not _SAFE_TEXT.match(url) or any(c.isspace() for c in url):
        raise InvalidBundle(f"{field} must not contain whitespace or control characters")


def _check_local_path(url: str, field: str) -> None:
    path = url.removeprefix("file://")
    if not path.startswith("/") or "/../" in f"{path}/":
        raise InvalidBundle(f"{field}: a local path must be absolute and must not contain '..'")


def redact_url(url: str) -> str:
    """The URL without any userinfo, for logs and responses.

    Works on the text rather than a parsed URL: a password holding ``#`` or ``?``
    would make a parser end the authority early and leave the rest in place.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = authority.rsplit("@", 1)[1]
    return f"{scheme}://{authority}{slash}{path}"
