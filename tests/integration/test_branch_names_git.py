"""Contract: ``git_branch_problem`` says exactly what ``git check-ref-format --branch``
says, for random names built from the characters and pieces git's rules are about;
and every name ``branch_name_problem`` accepts, git accepts.

Runs the real git binary (outside any repository, so ``@{-1}`` is not expanded).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.domain.bundle import branch_name_problem, git_branch_problem
from tests.support.prereqs import require_tools

pytestmark = pytest.mark.integration

PIECES = [
    *("a", "B", "z9", "_", "-", ".", "/", "@", "{", "}", "~", "^", ":", "?", "*", "[", "]"),
    *("\\", " ", "\t", "\x01", "\x1f", "\x7f", "\u00e9", "\u00a0", "\u2028", "\U0001f600"),
    *(".lock", "HEAD", "@{", "..", "//", "./", "/.", "lock", "-x", "+", "#", "!", "'", '"'),
]
NAMES = st.lists(st.sampled_from(PIECES), min_size=1, max_size=8).map("".join)


@pytest.fixture(scope="module")
def outside_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    require_tools("git")
    where = tmp_path_factory.mktemp("no-repo")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(where),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CEILING_DIRECTORIES": str(where.parent),
        "LC_ALL": "C",
    }
    return where, env


def git_accepts(name: str, where: tuple[Path, dict[str, str]]) -> bool:
    proc = subprocess.run(
        ["git", "check-ref-format", "--branch", name],
        cwd=where[0],
        env=where[1],
        capture_output=True,
        check=False,
    )
    assert proc.returncode in (0, 128), proc.stderr
    return proc.returncode == 0


@pytest.mark.parametrize(
    "name", ["a/.b", "main.", "x.lock/y", "HEAD", "@{", "a//b", "a/", "-x", "a b", "a~1", "a\x7f"]
)
def test_names_from_the_issue_are_refused_by_both(
    name: str, outside_repo: tuple[Path, dict[str, str]]
) -> None:
    assert not git_accepts(name, outside_repo)
    assert git_branch_problem(name) is not None
    assert branch_name_problem(name) is not None


def test_at_sign_alone_is_refused_by_policy_though_git_takes_it(
    outside_repo: tuple[Path, dict[str, str]],
) -> None:
    assert git_accepts("@", outside_repo)
    assert git_branch_problem("@") is None
    assert branch_name_problem("@") is not None


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(NAMES)
def test_pure_rules_agree_with_git(outside_repo: tuple[Path, dict[str, str]], name: str) -> None:
    accepted = git_accepts(name, outside_repo)
    assert (git_branch_problem(name) is None) == accepted, git_branch_problem(name)
    if branch_name_problem(name) is None:
        assert accepted
