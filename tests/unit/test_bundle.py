"""repo_json: the schema (unknown keys refused), URL rules per profile, no value echoed.

Also: every malformed document (deep nesting, huge integers) is an InvalidBundle, and
branch names follow ``git check-ref-format --branch`` (the same rules are checked
against the git binary itself in tests/integration/test_branch_names_git.py).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.domain.bundle import (
    branch_name_problem,
    git_branch_problem,
    parse_repo_json,
    redact_url,
)
from controller.domain.errors import InvalidBundle

FULL = {
    "git": {
        "url": "https://git.example.com/ml/wine.git",
        "branch": "main",
        "username": "bot",
        "token": "tok-SECRET-123",
        "author": {"name": "mlexp", "email": "mlexp@example.com"},
    },
    "dvc": {"remote": "storage", "url": "s3://ml-artifacts/wine"},
    "storage": {
        "endpoint_url": "https://minio.example.com",
        "access_key_id": "AKIA-SECRET",
        "secret_access_key": "SK-SECRET",
        "region": "us-east-1",
    },
    "registry": {
        "image": "registry.example.com/ml/wine-workload:1.0",
        "server": "registry.example.com",
        "username": "u",
        "password": "PW-SECRET",
    },
}


def parse(data: object, profile: str = "kubernetes") -> object:
    return parse_repo_json(json.dumps(data).encode(), profile=profile)  # type: ignore[arg-type]


def test_full_schema_parses_and_hides_secrets() -> None:
    spec = parse(FULL)
    text = repr(spec) + str(spec)
    for secret in ("tok-SECRET-123", "AKIA-SECRET", "SK-SECRET", "PW-SECRET"):
        assert secret not in text


def test_unknown_key_is_refused_and_named() -> None:
    with pytest.raises(InvalidBundle) as exc:
        parse({**FULL, "extra": 1})
    assert "extra" in exc.value.detail
    with pytest.raises(InvalidBundle, match=r"git\.tokn"):
        parse({"git": {"url": "https://h/x.git", "tokn": "x"}, "dvc": FULL["dvc"]})


def test_error_never_echoes_values() -> None:
    bad = {"git": {"url": "https://h/x.git", "token": ["tok-SECRET-123"]}, "dvc": FULL["dvc"]}
    with pytest.raises(InvalidBundle) as exc:
        parse(bad)
    assert "tok-SECRET-123" not in exc.value.detail
    assert "tok-SECRET-123" not in json.dumps(exc.value.errors)


@pytest.mark.parametrize(
    "url",
    [
        "ext::sh -c touch% /tmp/pwned",
        "fd::17",
        "--upload-pack=touch /tmp/pwned",
        "-u/x",
        "http://git.example.com/x.git",
        "https://bot:tok@git.example.com/x.git",
        "https://bot@git.example.com/x.git",
        "file:///tmp/repo.git",
        "/tmp/repo.git",
        "https://git.example.com/x.git?upload-pack=x",
        "https://git.example.com/x .git",
        "git://git.example.com/x.git",
    ],
)
def test_dangerous_or_unsupported_git_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidBundle) as exc:
        parse({**FULL, "git": {"url": url}})
    assert "tok" not in exc.value.detail.replace("token", "")


@pytest.mark.parametrize(
    "url", ["https://git.example.com/ml/wine.git", "ssh://git@git.example.com:22/ml/wine.git",
            "git@github.com:ml/wine.git"],
)  # fmt: skip
def test_https_and_ssh_are_accepted(url: str) -> None:
    parse({**FULL, "git": {"url": url}})


def test_local_profile_allows_missing_and_local_urls() -> None:
    parse({}, profile="local")
    parse({"git": {"url": "/srv/git/wine.git"}, "dvc": {"url": "/srv/dvc/wine"}}, profile="local")
    parse({"git": {"url": "file:///srv/git/wine.git"}}, profile="local")
    with pytest.raises(InvalidBundle, match="local profile"):
        parse({"git": {"url": "/srv/git/wine.git"}, "dvc": FULL["dvc"]}, profile="kubernetes")
    with pytest.raises(InvalidBundle, match="required"):
        parse({"dvc": FULL["dvc"]}, profile="kubernetes")
    with pytest.raises(InvalidBundle, match=r"\.\."):
        parse({"git": {"url": "/srv/../etc/repo.git"}}, profile="local")


@pytest.mark.parametrize(
    "dvc_url", ["s3://B/x", "gs://bucket/x", "s3://bucket/../x", "s3://bucket/x y", "-s3://b"]
)
def test_bad_dvc_urls_are_refused(dvc_url: str) -> None:
    with pytest.raises(InvalidBundle):
        parse({**FULL, "dvc": {"url": dvc_url}})


@pytest.mark.parametrize(
    ("branch", "reason"),
    [
        ("-x", "start with '-'"),
        ("a..b", "'..'"),
        ("a//b", "'//'"),
        ("a.lock", "'.lock'"),
        ("x.lock/y", "'.lock'"),
        ("x@{1}", "'@{'"),
        ("@{", "'@{'"),
        ("a b", "spaces"),
        ("/a", "start or end with '/'"),
        ("a/", "start or end with '/'"),
        ("a/.b", "start with '.'"),
        (".a", "start with '.'"),
        ("main.", "end with '.'"),
        ("a/b.", "end with '.'"),
        ("HEAD", "'HEAD'"),
        ("@", "'@'"),
        ("a\tb", "control characters"),
        ("a\x7fb", "control characters"),
        ("a~1", "~"),
        ("a^", "^"),
        ("a:b", ":"),
        ("a?", "?"),
        ("a*", "*"),
        ("a[1]", "["),
        ("a\\b", "\\"),
        ("", "1 to 200"),
        ("a" * 201, "1 to 200"),
    ],
)
def test_bad_branch_names_are_refused(branch: str, reason: str) -> None:
    with pytest.raises(InvalidBundle, match=r"git\.branch") as exc:
        parse({**FULL, "git": {"url": "https://h/x.git", "branch": branch}})
    assert "not a valid git branch name" in exc.value.detail
    assert reason in exc.value.detail


@pytest.mark.parametrize(
    "branch", ["main", "feature/x-1", "release/v1.2", "a.b/c_d", "HEAD/x", "x/HEAD", "a" * 200]
)
def test_good_branch_names_are_accepted(branch: str) -> None:
    spec = parse({**FULL, "git": {"url": "https://h/x.git", "branch": branch}})
    assert spec.git.branch == branch  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["a@b", "@a", "caf\u00e9", "a+b", "a#b", "a=b"])
def test_policy_is_narrower_than_git(name: str) -> None:
    # git takes these; our character set does not (they end up in commands and URLs).
    assert git_branch_problem(name) is None
    assert branch_name_problem(name) is not None


_BRANCH_ALPHABET = st.sampled_from(["a", "b", "/", ".", "-", "_", "lock", "HEAD", "@", "{"])


@given(st.lists(_BRANCH_ALPHABET, min_size=1, max_size=10).map("".join))
def test_git_rules_hold_for_every_accepted_name(name: str) -> None:
    # Each rule, stated independently of how git_branch_problem checks it.
    if branch_name_problem(name) is None:
        parts = name.split("/")
        assert all(parts)
        assert not name.endswith(".")
        assert name not in ("HEAD", "@")
        assert not any(p.startswith(".") or p.endswith(".lock") for p in parts)
        assert ".." not in name
        assert "@{" not in name
        assert not name.startswith("-")


def test_endpoint_with_credentials_is_refused() -> None:
    storage = {**FULL["storage"], "endpoint_url": "https://k:s@minio.example.com"}  # type: ignore[dict-item]
    with pytest.raises(InvalidBundle, match="endpoint_url"):
        parse({**FULL, "storage": storage})


@pytest.mark.parametrize("raw", [b"{", b"[]", b"\xff\xfe", b'"x"'])
def test_not_a_json_object(raw: bytes) -> None:
    with pytest.raises(InvalidBundle):
        parse_repo_json(raw, profile="local")


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"[" * 60_000, "nesting deeper than 64 levels"),
        (b'{"git": {"branch": ' + b"1" * 5000 + b"}}", "over the limit of 1000 digits"),
        (b'{"git": {"token": "a"}, "git": {}}', "duplicate key 'git'"),
        (b'{"git": {"token": tok-SECRET-123}}', "not valid JSON"),
    ],
)
def test_malformed_repo_json_is_invalid_bundle(raw: bytes, fragment: str) -> None:
    with pytest.raises(InvalidBundle) as exc:
        parse_repo_json(raw, profile="local")
    assert exc.value.detail.startswith("repo_json: ")
    assert fragment in exc.value.detail
    assert "tok-SECRET-123" not in exc.value.detail


def test_oversized_repo_json() -> None:
    with pytest.raises(InvalidBundle, match="larger"):
        parse_repo_json(b" " * 70_000 + b"{}", profile="local")


@given(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=30))
def test_redact_url_never_keeps_userinfo(user: str, password: str) -> None:
    user = user.replace("@", "").replace("/", "") or "u"
    password = password.replace("@", "").replace("/", "") or "p"
    redacted = redact_url(f"https://{user}:{password}@git.example.com/x.git")
    assert redacted == "https://git.example.com/x.git"
