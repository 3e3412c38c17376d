"""Webhooks' I/O: the HTTP POST of one signed delivery, and where secrets are kept.

:class:`WebhookPoster` makes one attempt: it resolves the URL's host, checks every
address against the egress policy (a refusal is final: not retried), then connects to
the address it checked (the name is not resolved again, so a DNS answer that changes
in between cannot redirect the POST; TLS still verifies the certificate for the name).
Redirects are not followed, timeouts bound connecting and waiting for the answer, and
no more of the response than a short excerpt is read. Errors say what kind of failure
happened, never the address, the secret or the signature.

:class:`WebhookSecrets` keeps each webhook's signing secret in a file of its own under
the data dir (mode 0600), never in the database, whose rows are listed.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv6Address
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from controller.adapters.locations import LocationGuard, Unresolvable
from controller.domain.egress import (
    DESCRIPTION,
    BadHost,
    IPAddress,
    http_url_host,
    literal_address,
)
from controller.domain.webhooks import WEBHOOK_ID

EXCERPT_BYTES = 200
USER_AGENT = "mlexp-ctrl-webhooks/1"
_PRINTABLE = re.compile(r"[^\x20-\x7e]+")


@dataclass(frozen=True)
class PostResult:
    """One attempt: ``ok`` (a 2xx answer), the status, and why not."""

    ok: bool
    status: int | None = None
    error: str | None = None
    retry: bool = True


class WebhookPoster:
    def __init__(
        self,
        guard: LocationGuard,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
    ) -> None:
        self.guard = guard
        timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        # trust_env=False: no proxy from the environment may take the POST elsewhere.
        self._http = httpx.Client(
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )

    def close(self) -> None:
        self._http.close()

    def check(self, url: str) -> str | None:
        """Why ``url`` may not be used now (egress, DNS), or None; blocking (resolves)."""
        try:
            self.addresses(url)
        except Refused as exc:
            return str(exc)
        return None

    def addresses(self, url: str) -> Sequence[IPAddress]:
        """Every address the URL's host resolves to, all allowed; else :class:`Refused`."""
        try:
            host = http_url_host(url)
        except BadHost:
            raise Refused("the URL has no valid host") from None
        literal = literal_address(host)
        if literal is not None:
            addresses: Sequence[IPAddress] = [literal]
        else:
            try:
                addresses = self.guard.resolver(host)
            except Unresolvable:
                addresses = []
            if not addresses:
                raise Refused("the URL's host name does not resolve from this service")
        refused = self.guard.policy.refusal(addresses)
        if refused is not None:
            raise Refused(
                f"the URL points at a {DESCRIPTION[refused]}; this service does not connect "
                "there unless egress.allowed_networks allows it"
            )
        return addresses

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> PostResult:
        try:
            addresses = self.addresses(url)
        except Refused as exc:
            return PostResult(ok=False, error=str(exc), retry=False)
        pinned, host_header = _pinned(url, addresses[0])
        request_headers = {**headers, "host": host_header, "user-agent": USER_AGENT}
        extensions = {"sni_hostname": http_url_host(url)}
        try:
            with self._http.stream(
                "POST", pinned, content=body, headers=request_headers, extensions=extensions
            ) as response:
                excerpt = b""
                if not response.is_success:
                    for chunk in response.iter_raw():
                        excerpt += chunk
                        if len(excerpt) >= EXCERPT_BYTES:
                            break
        except httpx.TimeoutException as exc:
            return PostResult(ok=False, error=f"timed out ({_timeout_kind(exc)})")
        except httpx.HTTPError as exc:
            return PostResult(ok=False, error=f"request failed ({_error_kind(exc)})")
        status = response.status_code
        if response.is_success:
            return PostResult(ok=True, status=status)
        text = _PRINTABLE.sub(" ", excerpt[:EXCERPT_BYTES].decode("utf-8", "replace")).strip()
        error = f"HTTP {status}" + (f": {text}" if text else "")
        if response.is_redirect:
            error = f"HTTP {status}: redirects are not followed"
        return PostResult(ok=False, status=status, error=error)


class Refused(Exception):
    """The URL may not be reached (egress policy, or its host does not resolve)."""


def _pinned(url: str, address: IPAddress) -> tuple[str, str]:
    """``url`` with its host replaced by ``address``, and the Host header to send."""
    parts = urlsplit(url)
    host = f"[{address}]" if isinstance(address, IPv6Address) else str(address)
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    original = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")), original


def _timeout_kind(exc: httpx.TimeoutException) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return "connecting"
    if isinstance(exc, httpx.ReadTimeout):
        return "waiting for the answer"
    return "sending"


def _error_kind(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        text = str(exc).lower()
        if "certificate" in text or "ssl" in text:
            return "TLS handshake or certificate"
        return "cannot connect"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the receiver broke the protocol or closed the connection"
    return type(exc).__name__


class WebhookSecrets:
    """One file per webhook, ``<root>/<webhook id>``, readable by the service's user only."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, webhook_id: str) -> Path:
        if not WEBHOOK_ID.match(webhook_id):  # a file name: never a path from elsewhere
            raise ValueError("not a webhook id")
        return self.root / webhook_id

    def put(self, webhook_id: str, secret: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(webhook_id)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secret)
        tmp.replace(path)

    def get(self, webhook_id: str) -> str | None:
        try:
            return self._path(webhook_id).read_text().strip() or None
        except FileNotFoundError:
            return None

    def delete(self, webhook_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(webhook_id).unlink()
