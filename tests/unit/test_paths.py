"""validate_repo_path: what an uploaded file may be called, by example and by property."""

from __future__ import annotations

import posixpath
from pathlib import PurePosixPath

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from controller.domain.errors import InvalidBundle
from controller.domain.paths import reserved_component, validate_repo_path


@pytest.mark.parametrize(
    "name",
    [
        "train.py",
        "src/model/train.py",
        ".gitignore",
        ".gitattributes",
        "data/.gitkeep",
        ".dvcignore",
        "data/raw.csv.dvc",
        "sub/params.yaml",  # a params file for a stage with wdir: sub
        "ab:c",
        "ü/数据.csv",
        "name with spaces.txt",
        "x" * 255,
        "/".join(["d"] * 2000),
    ],
)
def test_plain_relative_paths_are_accepted_unchanged(name: str) -> None:
    assert validate_repo_path(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("C:/x", "Windows drive"),
        ("c:x", "Windows drive"),
        ("a\\b", "backslash"),
        ("a\0b", "control character"),
        ("a\nb", "control character"),
        ("a\x7fb", "control character"),
        ("a\x85b", "control character"),
        ("../x", "'..'"),
        ("a/../b", "'..'"),
        ("a/..", "'..'"),
        ("./a", "'.'"),
        ("a/./b", "'.'"),
        ("a//b", "empty path components"),
        ("a/", "empty path components"),
        (".git", "git metadata"),
        (".git/config", "git metadata"),
        ("sub/.git/hooks/post-checkout", "git metadata"),
        (".GIT/config", "git metadata"),
        (".git./config", "git metadata"),
        (".git /config", "git metadata"),
        ("GIT~1/config", "git metadata"),
        (".g\u200cit/config", "git metadata"),
        (".gitmodules", "submodule"),
        ("sub/.gitmodules", "submodule"),
        (".dvc/config", "DVC metadata"),
        (".DVC/config.local", "DVC metadata"),
        ("dvc.yaml", "written by the service"),
        ("DVC.yaml", "written by the service"),
        ("dvc.lock", "written by the service"),
        ("params.yaml", "written by the service"),
        ("sub/dvc.yaml", "collected by DVC"),
        ("sub/dvc.lock", "collected by DVC"),
        ("-rf", "start with '-'"),
        ("a" * 4097, "longer than 4096"),
        ("x" * 256, "longer than 255 bytes"),
        ("é" * 128, "longer than 255 bytes"),
    ],
)
def test_unsafe_paths_are_rejected_with_the_name_and_reason(name: str, why: str) -> None:
    with pytest.raises(InvalidBundle) as caught:
        validate_repo_path(name)
    assert repr(name)[:60] in caught.value.detail
    assert why in caught.value.detail


def test_reserved_component_is_shared_with_pipeline_checks() -> None:
    assert reserved_component("data/out.csv") is None
    assert reserved_component("x/.git/y") is not None
    assert reserved_component(".dvc/tmp") is not None


COMPONENT = st.text(
    alphabet=st.sampled_from(list("abcXYZ019._- ~üé数:@+=,")), min_size=1, max_size=12
)
NAMES = st.lists(COMPONENT, min_size=1, max_size=6).map("/".join)


def accepted(name: str) -> bool:
    try:
        validate_repo_path(name)
    except InvalidBundle:
        return False
    return True


@settings(max_examples=150)
@given(NAMES)
def test_accepted_paths_round_trip_and_stay_inside_the_root(name: str) -> None:
    assume(accepted(name))
    assert validate_repo_path(name) == name
    assert PurePosixPath(name).as_posix() == name
    root = PurePosixPath("/srv/repo")
    joined = posixpath.normpath(str(root / name))
    assert joined.startswith("/srv/repo/")
    folded = [part.rstrip(". ").lower() for part in PurePosixPath(name).parts]
    assert ".git" not in folded
    assert ".dvc" not in folded


def inject(name: str, position: int, piece: str) -> str:
    parts = name.split("/")
    index = position % (len(parts) + 1)
    return "/".join([*parts[:index], piece, *parts[index:]])


MALICIOUS_PIECES = st.sampled_from(
    ["..", ".", "", ".git", ".GIT", ".git.", ".gitmodules", ".dvc", "a\0b", "a\\b", "x\ty"]
)


@settings(max_examples=150)
@given(NAMES, st.integers(min_value=0, max_value=10), MALICIOUS_PIECES)
def test_malicious_variants_of_any_path_are_rejected(name: str, position: int, piece: str) -> None:
    with pytest.raises(InvalidBundle):
        validate_repo_path(inject(name, position, piece))


@settings(max_examples=100)
@given(NAMES, st.sampled_from(["/", "C:/", "../", "./"]))
def test_prefixes_that_escape_or_hide_are_rejected(name: str, prefix: str) -> None:
    with pytest.raises(InvalidBundle):
        validate_repo_path(prefix + name)
