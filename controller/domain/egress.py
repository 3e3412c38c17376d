"""Egress policy: which network addresses a URL that a caller gives may lead to.

Pure: no name resolution, no sockets. :func:`classify` puts an IP address in one
class, seeing through the IPv6 forms that carry an IPv4 address (mapped
``::ffff:a.b.c.d``, SIIT ``::ffff:0:a.b.c.d``, IPv4-compatible ``::a.b.c.d``,
NAT64 ``64:ff9b::/96`` and 6to4 ``2002::/16``), so ``[::ffff:127.0.0.1]`` is
loopback. :func:`literal_address` reads a host the way ``inet_aton`` (and so
getaddrinfo, curl and ssh) would, so ``2130706433``, ``0177.0.0.1``, ``0x7f.1``
and ``127.1`` are loopback too. :class:`EgressPolicy` decides, for the addresses a
host resolved to, whether every one may be reached; the resolving itself is
``controller.adapters.locations``.

The rules (DESIGN.md, "Egress"): in the kubernetes profile only public addresses
are reachable; the local profile also reaches loopback (the user's own machine).
Anything inside a CIDR of ``egress.allowed_networks`` is reachable in both.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from urllib.parse import urlsplit

from controller.domain.bundle import Profile

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


class AddressClass(StrEnum):
    PUBLIC = "public"
    LOOPBACK = "loopback"
    PRIVATE = "private"
    LINK_LOCAL = "link-local"
    UNSPECIFIED = "unspecified"
    MULTICAST = "multicast"
    RESERVED = "reserved"


# Words for messages: "<field> points at a <words>".
DESCRIPTION = {
    AddressClass.PUBLIC: "public address",
    AddressClass.LOOPBACK: "loopback address",
    AddressClass.PRIVATE: "private network address",
    AddressClass.LINK_LOCAL: "link-local address",
    AddressClass.UNSPECIFIED: "unspecified address",
    AddressClass.MULTICAST: "multicast address",
    AddressClass.RESERVED: "reserved address",
}

# First match wins. Explicit tables rather than ipaddress's is_private & co., whose
# meaning has changed between Python patch releases.
_IPV4_TABLE: tuple[tuple[IPv4Network, AddressClass], ...] = tuple(
    (IPv4Network(net), cls)
    for net, cls in (
        ("0.0.0.0/8", AddressClass.UNSPECIFIED),  # "this network"; 0.0.0.0 reaches the local host
        ("127.0.0.0/8", AddressClass.LOOPBACK),
        ("169.254.0.0/16", AddressClass.LINK_LOCAL),  # cloud metadata services live here
        ("10.0.0.0/8", AddressClass.PRIVATE),
        ("172.16.0.0/12", AddressClass.PRIVATE),
        ("192.168.0.0/16", AddressClass.PRIVATE),
        ("100.64.0.0/10", AddressClass.PRIVATE),  # carrier-grade NAT, also used inside clusters
        ("224.0.0.0/4", AddressClass.MULTICAST),
        ("240.0.0.0/4", AddressClass.RESERVED),  # includes the broadcast address
        ("192.0.0.0/24", AddressClass.RESERVED),
        ("192.0.2.0/24", AddressClass.RESERVED),
        ("198.51.100.0/24", AddressClass.RESERVED),
        ("203.0.113.0/24", AddressClass.RESERVED),
        ("198.18.0.0/15", AddressClass.RESERVED),
        ("192.88.99.0/24", AddressClass.RESERVED),
    )
)

# IPv6 prefixes whose low 32 bits (or, for 6to4, bits 16-48) are an IPv4 address that
# the packet really goes to (or that a translator will send it to).
_MAPPED = IPv6Network("::ffff:0:0/96")
_TRANSLATED = IPv6Network("::ffff:0:0:0/96")
_COMPATIBLE = IPv6Network("::/96")
_NAT64 = IPv6Network("64:ff9b::/96")
_GLOBAL_UNICAST = IPv6Network("2000::/3")

_IPV6_TABLE: tuple[tuple[IPv6Network, AddressClass], ...] = tuple(
    (IPv6Network(net), cls)
    for net, cls in (
        ("64:ff9b:1::/48", AddressClass.PRIVATE),  # local-use NAT64
        ("fe80::/10", AddressClass.LINK_LOCAL),
        ("fc00::/7", AddressClass.PRIVATE),  # unique local addresses
        ("fec0::/10", AddressClass.PRIVATE),  # site-local (deprecated)
        ("ff00::/8", AddressClass.MULTICAST),
        ("100::/64", AddressClass.RESERVED),  # discard-only
        ("2001:db8::/32", AddressClass.RESERVED),  # documentation
        ("3fff::/20", AddressClass.RESERVED),  # documentation
        ("2001::/23", AddressClass.RESERVED),  # IETF protocol assignments, Teredo among them
    )
)


def embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 address carries, for the forms that carry one."""
    if address.sixtofour is not None:
        return address.sixtofour
    if address in (IPv6Address("::"), IPv6Address("::1")):
        return None
    if any(address in net for net in (_MAPPED, _TRANSLATED, _COMPATIBLE, _NAT64)):
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def effective_address(address: IPAddress) -> IPAddress:
    """The address traffic really goes to: the embedded IPv4 address, if there is one."""
    if isinstance(address, IPv6Address):
        return embedded_ipv4(address) or address
    return address


def classify(address: IPAddress) -> AddressClass:
    target = effective_address(address)
    if isinstance(target, IPv4Address):
        return next((cls for net, cls in _IPV4_TABLE if target in net), AddressClass.PUBLIC)
    if target == IPv6Address("::"):
        return AddressClass.UNSPECIFIED
    if target == IPv6Address("::1"):
        return AddressClass.LOOPBACK
    found = next((cls for net, cls in _IPV6_TABLE if target in net), None)
    if found is not None:
        return found
    return AddressClass.PUBLIC if target in _GLOBAL_UNICAST else AddressClass.RESERVED


# --- hosts -------------------------------------------------------------------------------

_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_.-]{0,252})$")
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}$")
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@(?P<host>[A-Za-z0-9.-]+):")


class BadHost(ValueError):
    """The URL has no host this service would connect to."""


def literal_address(host: str) -> IPAddress | None:
    """The address a host names by itself (no DNS), in every form inet_aton accepts.

    ``host`` is as :func:`git_url_host` returns it: lower case, no brackets.
    """
    if ":" in host:
        try:
            return IPv6Address(host)
        except ValueError:
            raise BadHost("not an IPv6 address") from None
    numeric = host.removesuffix(".")
    if _NUMERIC_HOST.match(numeric):
        try:
            # inet_aton is the C library's parser (pure): it reads 127.1, 0x7f.1,
            # 0177.0.0.1 and 2130706433 the way getaddrinfo, curl and ssh do.
            return IPv4Address(socket.inet_aton(numeric))
        except OSError:
            return None  # e.g. 08.1.1.1: not an address, so the resolver decides
    return None


def _checked_host(host: str | None) -> str:
    if not host:
        raise BadHost("no host")
    host = host.lower()
    if ":" in host:
        literal_address(host)  # raises BadHost; zone ids ('%eth0') are refused here too
        if "%" in host:
            raise BadHost("zone ids are not accepted")
        return host
    if not _HOST_NAME.match(host) or ".." in host:
        raise BadHost("not a host name (use ASCII; punycode for international names)")
    return host


def git_url_host(url: str) -> str | None:
    """The host git connects to for ``url`` (https, ssh, scp-like); None for a local path.

    ``url`` has passed :func:`controller.domain.bundle.check_git_url`.
    """
    if url.startswith(("/", "file://")):
        return None
    scp = _SCP_LIKE.match(url)
    if scp and "://" not in url:
        return _checked_host(scp["host"])
    return _checked_host(_hostname(url))


def http_url_host(url: str) -> str:
    """The host of an http(s) endpoint URL (``storage.endpoint_url``, webhooks)."""
    return _checked_host(_hostname(url))


def _hostname(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:  # e.g. an unclosed '[' in the authority
        raise BadHost("not a URL with a host") from None


# --- the policy --------------------------------------------------------------------------

_REACHABLE: dict[Profile, frozenset[AddressClass]] = {
    "kubernetes": frozenset({AddressClass.PUBLIC}),
    # The local profile is one machine's service: its user's own servers on loopback
    # (a MinIO, a git daemon) are what it is for.
    "local": frozenset({AddressClass.PUBLIC, AddressClass.LOOPBACK}),
}


@dataclass(frozen=True)
class EgressPolicy:
    reachable: frozenset[AddressClass]
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def for_profile(cls, profile: Profile, allowed_networks: Sequence[str] = ()) -> EgressPolicy:
        """The policy of a profile; a bad CIDR in the settings is a ValueError naming it."""
        networks: list[IPNetwork] = []
        for text in allowed_networks:
            try:
                networks.append(ip_network(text.strip(), strict=False))
            except ValueError:
                raise ValueError(
                    f"egress.allowed_networks: {text!r} is not a CIDR (e.g. 10.0.0.0/8)"
                ) from None
        return cls(_REACHABLE[profile], tuple(networks))

    def admits(self, address: IPAddress) -> bool:
        if self._allowed(address):
            return True
        return classify(address) in self.reachable

    def refusal(self, addresses: Iterable[IPAddress]) -> AddressClass | None:
        """None if every address may be reached, else the class of the first that may not."""
        for address in addresses:
            if not self.admits(address):
                return classify(address)
        return None

    def _allowed(self, address: IPAddress) -> bool:
        # Either form matches: 127.0.0.0/8 admits ::ffff:127.0.0.1, since it is the same
        # destination, and an IPv6 CIDR admits the IPv6 form as written.
        candidates = {address, effective_address(address)}
        return any(
            candidate.version == net.version and candidate in net
            for candidate in candidates
            for net in self.allowed_networks
        )


def refusal_message(field: str, refused: AddressClass) -> str:
    """What a caller is told: the field and the class, never the address or the name."""
    return (
        f"{field} points at a {DESCRIPTION[refused]}; this service does not connect there "
        "unless egress.allowed_networks allows it"
    )


def parse_address(text: str) -> IPAddress:
    """An address as getaddrinfo reports it (an IPv6 one may carry a ``%scope``)."""
    return ip_address(text.split("%", 1)[0])
