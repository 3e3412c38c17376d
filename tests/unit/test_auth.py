"""Bearer tokens: the right principal for the right token, nothing for others."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.domain.errors import Unauthorized
from controller.services.auth import Principal, TokenRegistry


def registry(tmp_path: Path) -> TokenRegistry:
    path = tmp_path / "tokens.yaml"
    path.write_text(
        "tokens:\n"
        "  - {token: aaaaaaaaaaaaaaaaaaaa, name: ci, namespaces: ['ml-*']}\n"
        "  - {token: bbbbbbbbbbbbbbbbbbbb, name: ops, admin: true}\n"
    )
    return TokenRegistry.from_file(path)


def test_tokens_map_to_principals(tmp_path: Path) -> None:
    reg = registry(tmp_path)
    ci = reg.authenticate("aaaaaaaaaaaaaaaaaaaa")
    assert ci == Principal("ci", ("ml-*",), False)
    assert ci.may_use_namespace("ml-team")
    assert not ci.may_use_namespace("kube-system")
    assert reg.authenticate("bbbbbbbbbbbbbbbbbbbb").admin


@pytest.mark.parametrize("token", [None, "", "aaaaaaaaaaaaaaaaaaab", "a"])
def test_unknown_tokens_are_refused(tmp_path: Path, token: str | None) -> None:
    with pytest.raises(Unauthorized):
        registry(tmp_path).authenticate(token)


def test_short_tokens_are_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text("tokens:\n  - {token: short, name: x}\n")
    with pytest.raises(ValueError, match="shorter than 16"):
        TokenRegistry.from_file(path)
