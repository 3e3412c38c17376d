"""What a web browser may ask of this service: the rules against DNS rebinding and CSRF.

* **Host**: a page on ``evil.example`` whose name is re-pointed at 127.0.0.1 reaches
  the service with ``Host: evil.example``; only names the service is configured for
  are answered (loopback names, the configured ``host``, ``allowed_hosts``).
* **Origin**: a page may POST a multipart form to any address without a CORS
  preflight; a state-changing request that carries a foreign ``Origin`` (or
  ``Sec-Fetch-Site: cross-site`` and no allowed Origin) is refused. Same-origin
  requests (Swagger UI at ``/docs``) and clients that send no Origin (curl, the
  CLI) pass.
* **CORS** headers go only to origins listed in ``allowed_origins``.

Pure functions over header values; ``api.middleware.BrowserSafety`` applies them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from controller.settings import Settings

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})
# A listen address that means "every interface" names no host a client would use.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "[::]"})  # noqa: S104 - compared, never bound
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": "80", "https": "443"}
_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")


def split_host(value: str) -> tuple[str, str | None] | None:
    """A Host header (an authority without user info) as ``(name, port)``.

    The name is lower-cased with one trailing dot dropped, an IPv6 address is kept in
    brackets in its compressed form; ``None`` when the value is malformed.
    """
    if value.startswith("["):
        close = value.find("]")
        if close < 0:
            return None
        try:
            address = ipaddress.IPv6Address(value[1:close])
        except ValueError:
            return None
        name, rest = f"[{address.compressed}]", value[close + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:] if rest else None
    else:
        name, colon, port_text = value.partition(":")
        name = name.lower().removesuffix(".")
        if not _NAME.fullmatch(name):
            return None
        port = port_text if colon else None
    if port == "":
        port = None  # "host:" is allowed by RFC 9110 (an empty port)
    if port is not None and not (port.isascii() and port.isdigit() and len(port) <= 5):
        return None
    return name, port


def host_name(entry: str) -> str:
    """A configured host name in the form :func:`split_host` gives (raises ValueError)."""
    try:
        return f"[{ipaddress.IPv6Address(entry).compressed}]"  # "::1" written without brackets
    except ValueError:
        pass
    parsed = split_host(entry.strip())
    if parsed is None:
        raise ValueError(f"{entry!r} is not a host name (expected e.g. mlexp.example.com)")
    return parsed[0]


def split_origin(value: str) -> tuple[str, str, str | None] | None:
    """An Origin as ``(scheme, name, port)`` with the scheme's default port dropped.

    ``None`` for ``null`` (sandboxed frames, file:// pages) and anything malformed.
    """
    scheme, sep, authority = value.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        return None
    parsed = split_host(authority)
    if parsed is None:
        return None
    name, port = parsed
    return scheme, name, None if port == DEFAULT_PORTS[scheme] else port


def origin_text(scheme: str, name: str, port: str | None) -> str:
    return f"{scheme}://{name}" + (f":{port}" if port else "")


@dataclass(frozen=True)
class BrowserPolicy:
    hosts: frozenset[str]
    any_host: bool
    origins: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> BrowserPolicy:
        return cls.build(settings.host, settings.allowed_hosts, settings.allowed_origins)

    @classmethod
    def build(
        cls, host: str, allowed_hosts: Iterable[str], allowed_origins: Iterable[str]
    ) -> BrowserPolicy:
        """From the settings; a malformed entry raises ValueError (so start-up stops)."""
        names = set(LOOPBACK_NAMES)
        if host.strip() and (configured := host_name(host)) not in WILDCARD_HOSTS:
            names.add(configured)
        extra = [entry.strip() for entry in allowed_hosts]
        names.update(host_name(entry) for entry in extra if entry != "*")
        origins: set[str] = set()
        for entry in allowed_origins:
            if entry.strip() in ("*", "null"):
                raise ValueError(
                    f"allowed_origins: {entry.strip()!r} is never allowed; list each origin "
                    "(e.g. https://ui.example.com)"
                )
            parsed = split_origin(entry.strip().removesuffix("/"))
            if parsed is None:
                raise ValueError(
                    f"allowed_origins: {entry!r} is not an origin (scheme://host[:port])"
                )
            origins.add(origin_text(*parsed))
        return cls(frozenset(names), "*" in extra, frozenset(origins))

    def host_allowed(self, header: str | None, http_version: str = "1.1") -> bool:
        """Whether a request with this Host header (None: none sent) is answered."""
        if header is None:
            # HTTP/1.0 clients may omit it; a browser never does, so no page gets through.
            return http_version == "1.0"
        parsed = split_host(header)
        return parsed is not None and (self.any_host or parsed[0] in self.hosts)

    def allowed_origin(self, origin: str) -> str | None:
        """The origin in canonical form if ``allowed_origins`` lists it (CORS goes to it)."""
        parsed = split_origin(origin)
        if parsed is None:
            return None
        text = origin_text(*parsed)
        return text if text in self.origins else None

    def refusal(
        self, method: str, origin: str | None, fetch_site: str | None, host: str | None
    ) -> str | None:
        """Why a request must be refused as cross-origin (a 403 detail), or None."""
        if method in SAFE_METHODS:
            return None
        if origin is not None:
            if self.allowed_origin(origin) or self._same_origin(origin, host):
                return None
            return (
                f"cross-origin request refused: the Origin {origin[:100]!r} may not change "
                "anything here; add it to allowed_origins if it is a trusted web UI"
            )
        if fetch_site is not None and fetch_site.lower() == "cross-site":
            return (
                "cross-site request refused (Sec-Fetch-Site: cross-site without an allowed "
                "Origin); add the web UI's origin to allowed_origins"
            )
        return None

    def _same_origin(self, origin: str, host: str | None) -> bool:
        """The page was served by this very service, under a name it is configured for.

        A name let in only by ``allowed_hosts: ['*']`` does not count: with a rebound DNS
        name, the attacker's page is "same-origin" too.
        """
        parsed_origin = split_origin(origin)
        parsed_host = split_host(host) if host is not None else None
        if parsed_origin is None or parsed_host is None or parsed_host[0] not in self.hosts:
            return False
        scheme, name, port = parsed_origin
        host_port = None if parsed_host[1] == DEFAULT_PORTS[scheme] else parsed_host[1]
        return (name, port) == (parsed_host[0], host_port)
