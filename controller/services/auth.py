"""Who is calling: bearer tokens from the tokens file, checked in constant time.

Tokens file (YAML)::

    tokens:
      - token: "<long random string>"
        name: ci-bot
        namespaces: ["ml-*", "team-a"]
        admin: false
        max_active_runs: 10          # optional; default: the setting of the same name
        requests_per_second: 5       # optional; 0 = unlimited; default: the setting

Each token and each name appears once, and an entry has no other keys: a file
that breaks either rule stops the service at start-up (the message names the
entry's index, never a token), so a copy-pasted entry can never silently
shadow another (an admin, say).

Without a tokens file the service listens on loopback only, and every caller
is the local administrator.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import hashlib
import hmac
import ipaddress
import math
from dataclasses import dataclass
from pathlib import Path

from controller.domain.errors import Unauthorized
from controller.domain.safeyaml import load_yaml
from controller.services.quotas import RequestRates


@dataclass(frozen=True)
class Principal:
    name: str
    namespaces: tuple[str, ...] = ()
    admin: bool = False
    # Quotas from the tokens file; None: the service-wide setting applies.
    max_active_runs: int | None = None
    requests_per_second: float | None = None

    def may_see(self, owner: str) -> bool:
        return self.admin or owner == self.name

    def may_use_namespace(self, namespace: str) -> bool:
        return self.admin or any(fnmatch.fnmatchcase(namespace, p) for p in self.namespaces)


LOCAL_ADMIN = Principal(name="local", namespaces=("*",), admin=True)


@functools.lru_cache(maxsize=1024)
def is_loopback(host: str | None) -> bool:
    """Whether a listen address or client host is this machine only.

    Asked for every request without a tokens file: answers are cached (a pure function of
    the text; the cache is bounded, so many client addresses only cost a re-parse).
    """
    if host is None:
        return False
    if host in ("localhost", "testclient"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


ENTRY_KEYS = frozenset(
    {"token", "name", "namespaces", "admin", "max_active_runs", "requests_per_second"}
)


class TokenRegistry:
    """Maps a presented token to its principal; compares digests in constant time.

    It also keeps each token principal's request-rate bucket (:attr:`rates`).
    """

    def __init__(self, entries: list[tuple[str, Principal]]) -> None:
        self._entries = [(_digest(token), principal) for token, principal in entries]
        # Duplicates would let one entry silently shadow another (the last one wins).
        first_of_token: dict[bytes, int] = {}
        first_of_name: dict[str, int] = {}
        for index, (digest, principal) in enumerate(self._entries):
            if digest in first_of_token:
                raise ValueError(
                    f"tokens[{index}] has the same token as tokens[{first_of_token[digest]}]; "
                    "every token must be unique"
                )
            if principal.name in first_of_name:
                raise ValueError(
                    f"tokens[{index}] has the same name {principal.name!r} as "
                    f"tokens[{first_of_name[principal.name]}]; every name must be unique"
                )
            first_of_token[digest] = index
            first_of_name[principal.name] = index
        self.rates = RequestRates()

    @property
    def principals(self) -> tuple[str, ...]:
        """The principals' names, in file order (each appears once)."""
        return tuple(principal.name for _, principal in self._entries)

    def principal(self, name: str) -> Principal | None:
        """The principal of that name (a sweep's trials run as their owner after a restart)."""
        return next((p for _, p in self._entries if p.name == name), None)

    @classmethod
    def from_file(cls, path: Path) -> TokenRegistry:
        raw = load_yaml(path.read_bytes(), source=str(path))
        if not isinstance(raw, dict) or set(raw) != {"tokens"}:
            raise ValueError(f"{path}: expected a mapping with one key, 'tokens'")
        items = raw["tokens"]
        if not isinstance(items, list) or not items:
            raise ValueError(f"{path}: expected a non-empty 'tokens' list")
        try:
            return cls([_entry(item, f"tokens[{index}]") for index, item in enumerate(items)])
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

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


def _entry(item: object, where: str) -> tuple[str, Principal]:
    """One entry of the tokens file, checked key by key; messages never carry the token."""
    if not isinstance(item, dict):
        raise ValueError(f"{where} must be a mapping with 'token' and 'name'")
    unknown = [str(key) for key in item if key not in ENTRY_KEYS]
    if unknown:
        # The unknown key itself is not echoed: a misplaced token could be one.
        close = {m for key in unknown for m in difflib.get_close_matches(key, ENTRY_KEYS, n=1)}
        hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
        raise ValueError(
            f"{where} has {len(unknown)} unknown key(s){hint}; "
            f"allowed keys: {', '.join(sorted(ENTRY_KEYS))}"
        )
    token, name = item.get("token"), item.get("name")
    if not isinstance(token, str) or not token:
        raise ValueError(f"{where} needs 'token', a string (quote it in YAML)")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where} needs 'name', a string")
    if len(token) < 16:
        raise ValueError(f"{where} has a token shorter than 16 characters")
    namespaces = item.get("namespaces") or []
    if not isinstance(namespaces, list) or not all(isinstance(n, str) for n in namespaces):
        raise ValueError(f"{where}: 'namespaces' must be a list of strings")
    admin = item.get("admin", False)
    if not isinstance(admin, bool):
        raise ValueError(f"{where}: 'admin' must be true or false")
    max_runs = item.get("max_active_runs")
    if max_runs is not None and (
        not isinstance(max_runs, int) or isinstance(max_runs, bool) or max_runs < 1
    ):
        raise ValueError(f"{where}: 'max_active_runs' must be an integer of at least 1")
    rate = item.get("requests_per_second")
    if rate is not None and (
        not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate < math.inf
    ):
        raise ValueError(f"{where}: 'requests_per_second' must be a number of at least 0")
    principal = Principal(
        name,
        tuple(namespaces),
        admin,
        max_active_runs=max_runs,
        requests_per_second=float(rate) if rate is not None else None,
    )
    return token, principal


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
