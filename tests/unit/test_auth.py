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


# -- tokens file rules: duplicates, unknown keys, quotas ----------------------------------

TOKEN_A = "aaaaaaaaaaaaaaaaaaaa"
TOKEN_B = "bbbbbbbbbbbbbbbbbbbb"


def load(tmp_path: Path, body: str) -> TokenRegistry:
    path = tmp_path / "tokens.yaml"
    path.write_text(body)
    return TokenRegistry.from_file(path)


def refused(tmp_path: Path, body: str) -> str:
    with pytest.raises(ValueError) as raised:
        load(tmp_path, body)
    message = str(raised.value)
    assert TOKEN_A not in message
    assert TOKEN_B not in message
    return message


def test_a_duplicate_token_is_a_start_up_error(tmp_path: Path) -> None:
    # The copy-pasted admin entry must not win silently.
    message = refused(
        tmp_path,
        "tokens:\n"
        f"  - {{token: {TOKEN_A}, name: ci}}\n"
        f"  - {{token: {TOKEN_B}, name: dev}}\n"
        f"  - {{token: {TOKEN_A}, name: root, admin: true}}\n",
    )
    assert "tokens[2]" in message
    assert "tokens[0]" in message
    assert "same token" in message


def test_a_duplicate_name_is_a_start_up_error(tmp_path: Path) -> None:
    message = refused(
        tmp_path,
        f"tokens:\n  - {{token: {TOKEN_A}, name: ci}}\n  - {{token: {TOKEN_B}, name: ci}}\n",
    )
    assert "tokens[1]" in message
    assert "'ci'" in message


def test_unknown_keys_are_an_error_and_the_key_is_not_echoed(tmp_path: Path) -> None:
    message = refused(tmp_path, f"tokens:\n  - {{token: {TOKEN_A}, name: ci, max_active_run: 3}}\n")
    assert "tokens[0]" in message
    assert "did you mean max_active_runs" in message
    # A token pasted where a key belongs is not repeated in the message.
    message = refused(tmp_path, f"tokens:\n  - {{token: {TOKEN_B}, name: ci, {TOKEN_A}: x}}\n")
    assert "unknown key" in message


def test_unknown_top_level_keys_are_an_error(tmp_path: Path) -> None:
    refused(tmp_path, f"tokens:\n  - {{token: {TOKEN_A}, name: ci}}\nadmins: [ci]\n")


@pytest.mark.parametrize(
    "entry",
    [
        "max_active_runs: 0",
        "max_active_runs: -1",
        "max_active_runs: 1.5",
        "max_active_runs: true",
        "max_active_runs: '3'",
        "requests_per_second: -0.5",
        "requests_per_second: fast",
        "requests_per_second: .inf",
        "requests_per_second: .nan",
        "requests_per_second: false",
        "admin: 'false'",  # a string would have been truthy: an accidental admin
        "namespaces: ml-*",
    ],
)
def test_bad_quota_and_typed_values_are_refused(tmp_path: Path, entry: str) -> None:
    message = refused(tmp_path, f"tokens:\n  - {{token: {TOKEN_A}, name: ci, {entry}}}\n")
    assert f"tokens[0]: '{entry.split(':')[0]}'" in message


def test_a_token_that_is_not_a_string_is_refused(tmp_path: Path) -> None:
    # YAML reads an unquoted number as an int: the token would never match as written.
    message = refused(tmp_path, "tokens:\n  - {token: 12345678901234567890, name: ci}\n")
    assert "quote it" in message


def test_quotas_and_principal_names(tmp_path: Path) -> None:
    reg = load(
        tmp_path,
        "tokens:\n"
        f"  - {{token: {TOKEN_A}, name: ci, max_active_runs: 3, requests_per_second: 0}}\n"
        f"  - {{token: {TOKEN_B}, name: dev, requests_per_second: 2.5}}\n",
    )
    assert reg.principals == ("ci", "dev")
    ci, dev = reg.authenticate(TOKEN_A), reg.authenticate(TOKEN_B)
    assert (ci.max_active_runs, ci.requests_per_second) == (3, 0.0)
    assert (dev.max_active_runs, dev.requests_per_second) == (None, 2.5)  # None: the setting


def test_the_template_loads() -> None:
    reg = TokenRegistry.from_file(Path(__file__).parents[2] / "config.templ" / "tokens.yaml")
    assert len(reg.principals) == 2
    assert reg.authenticate("replace-me-with-a-long-random-string").max_active_runs == 20
