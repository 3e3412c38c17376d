"""Who is calling: bearer tokens from the tokens file, checked in constant time.

Tokens file (YAML)::

    tokens:
      - token: "<long random string>"
        name: ci-bot
        namespaces: ["ml-*", "team-a"]
        admin: false

Without a tokens file the service listens on loopback only, and every caller
is the local administrator.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from controller.domain.errors import Unauthorized
from controller.domain.safeyaml import load_yaml


@dataclass(frozen=True)
class Principal:
    name: str
    namespaces: tuple[str, ...] = ()
    admin: bool = False

    def may_see(self, owner: str) -> bool:
        return self.admin or owner == self.name

    def may_use_namespace(self, namespace: str) -> bool:
        return self.admin or any(fnmatch.fnmatchcase(namespace, p) for p in self.namespaces)


LOCAL_ADMIN = Principal(name="local", namespaces=("*",), admin=True)


def is_loopback(host: str | None) -> bool:
    """Whether a listen address or client host is this machine only."""
    if host is None:
        return False
    if host in ("localhost", "testclient"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TokenRegistry:
    """Maps a presented token to its principal; compares digests in constant time."""

    def __init__(self, entries: list[tuple[str, Principal]]) -> None:
        self._entries = [(_digest(token), principal) for token, principal in entries]

    @classmethod
    def from_file(cls, path: Path) -> TokenRegistry:
        raw = load_yaml(path.read_bytes(), source=str(path))
        items = raw.get("tokens") if isinstance(raw, dict) else None
        if not isinstance(items, list) or not items:
            raise ValueError(f"{path}: expected a non-empty 'tokens' list")
        entries: list[tuple[str, Principal]] = []
        for index, item in enumerate(items):
            if not isinstance(item, dict) or not item.get("token") or not item.get("name"):
                raise ValueError(f"{path}: tokens[{index}] needs 'token' and 'name'")
            if len(str(item["token"])) < 16:
                raise ValueError(f"{path}: tokens[{index}] is shorter than 16 characters")
            namespaces = tuple(str(ns) for ns in item.get("namespaces") or ())
            principal = Principal(str(item["name"]), namespaces, bool(item.get("admin", False)))
            entries.append((str(item["token"]), principal))
        return cls(entries)

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthorized("a bearer token is required (Authorization: Bearer <token>)")
        presented = _digest(token)
        found: Principal | None = None
        for digest, principal in self._entries:
            # Look at every entry, so the time taken does not tell which one matched.
            if hmac.compare_digest(digest, presented):
                found = principal
        if found is None:
            raise Unauthorized("the bearer token is not valid")
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
