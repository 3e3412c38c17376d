"""Egress policy and git failure classes.

Covers: the address classifier over generated IPv4/IPv6 addresses (loopback, private,
link-local, multicast, reserved) and through the IPv6 forms that carry an IPv4 address
(mapped, SIIT, compatible, NAT64, 6to4); hosts written as decimal, octal, hex and short
IPv4 numbers; hosts out of git URLs (https, ssh, scp-like) and endpoint URLs; the policy
per profile and the precedence of egress.allowed_networks; the location guard with an
injected resolver (names that resolve to loopback, mixed answers, names that do not
resolve) and its messages, which never carry an address or a name; git's stderr reduced
to a class without a word of git's text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from controller.adapters.locations import LocationGuard, Unresolvable
from controller.domain.bundle import Profile, parse_repo_json
from controller.domain.egress import (
    AddressClass,
    BadHost,
    EgressPolicy,
    IPAddress,
    classify,
    effective_address,
    git_url_host,
    http_url_host,
    literal_address,
)
from controller.domain.errors import InvalidBundle
from controller.domain.gitfailures import (
    AUTHENTICATION_FAILED,
    COULD_NOT_CONNECT,
    NOT_FOUND,
    describe_git_failure,
)

C = AddressClass


def v4(network: str) -> st.SearchStrategy[IPv4Address]:
    return st.ip_addresses(v=4, network=network)  # type: ignore[return-value]


def v6(network: str) -> st.SearchStrategy[IPv6Address]:
    return st.ip_addresses(v=6, network=network)  # type: ignore[return-value]


PRIVATE_V4 = st.one_of(
    v4("10.0.0.0/8"), v4("172.16.0.0/12"), v4("192.168.0.0/16"), v4("100.64.0.0/10")
)
ANY_V4: st.SearchStrategy[IPv4Address] = st.ip_addresses(v=4)  # type: ignore[assignment]


# --- the classifier ------------------------------------------------------------------------


@given(v4("127.0.0.0/8"))
def test_ipv4_loopback(address: IPv4Address) -> None:
    assert classify(address) is C.LOOPBACK


@given(PRIVATE_V4)
def test_ipv4_private_including_cgnat(address: IPv4Address) -> None:
    assert classify(address) is C.PRIVATE


@given(v4("169.254.0.0/16"))
def test_ipv4_link_local(address: IPv4Address) -> None:
    assert classify(address) is C.LINK_LOCAL


@given(v4("0.0.0.0/8"))
def test_ipv4_this_network_is_unspecified(address: IPv4Address) -> None:
    assert classify(address) is C.UNSPECIFIED


@given(v4("224.0.0.0/4"))
def test_ipv4_multicast(address: IPv4Address) -> None:
    assert classify(address) is C.MULTICAST


@given(st.one_of(v4("240.0.0.0/4"), v4("192.0.2.0/24"), v4("198.18.0.0/15")))
def test_ipv4_reserved(address: IPv4Address) -> None:
    assert classify(address) is C.RESERVED


@given(st.ip_addresses())
def test_public_is_only_said_of_global_addresses(address: IPAddress) -> None:
    # Python's own tables as an independent oracle, in the one direction that matters:
    # whatever is called public must be globally routable.
    if classify(address) is C.PUBLIC:
        assert effective_address(address).is_global


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8.8.8.8", C.PUBLIC),
        ("2606:4700::1111", C.PUBLIC),
        ("::1", C.LOOPBACK),
        ("::", C.UNSPECIFIED),
        ("255.255.255.255", C.RESERVED),
        ("2001:db8::1", C.RESERVED),
        ("5f00::1", C.RESERVED),  # outside global unicast
        ("64:ff9b:1::a", C.PRIVATE),  # local-use NAT64
    ],
)
def test_known_addresses(text: str, expected: AddressClass) -> None:
    assert classify(ip_address(text)) is expected


@given(v6("fe80::/10"))
def test_ipv6_link_local(address: IPv6Address) -> None:
    assert classify(address) is C.LINK_LOCAL


@given(v6("fc00::/7"))
def test_ipv6_unique_local_is_private(address: IPv6Address) -> None:
    assert classify(address) is C.PRIVATE


@given(v6("ff00::/8"))
def test_ipv6_multicast(address: IPv6Address) -> None:
    assert classify(address) is C.MULTICAST


EMBEDDINGS = {
    "mapped": lambda a: IPv6Address(f"::ffff:{a}"),
    "siit": lambda a: IPv6Address(f"::ffff:0:{a}"),
    "nat64": lambda a: IPv6Address(f"64:ff9b::{a}"),
    "6to4": lambda a: IPv6Address((0x2002 << 112) | (int(a) << 80) | 1),
}


@pytest.mark.parametrize("form", list(EMBEDDINGS))
@given(address=ANY_V4)
def test_ipv6_forms_that_carry_ipv4_are_classified_as_the_ipv4(
    form: str, address: IPv4Address
) -> None:
    wrapped = EMBEDDINGS[form](address)
    assert effective_address(wrapped) == address
    assert classify(wrapped) is classify(address)


@given(st.one_of(v4("127.0.0.0/8"), PRIVATE_V4, v4("169.254.0.0/16")))
def test_ipv4_compatible_form_is_seen_through(address: IPv4Address) -> None:
    assert classify(IPv6Address(f"::{address}")) is classify(address)


# --- hosts ---------------------------------------------------------------------------------


def _short(address: IPv4Address) -> str:
    a, b, c, d = address.packed
    return f"{a}.{b}.{c * 256 + d}"


NUMERIC_FORMS = {
    "decimal": lambda a: str(int(a)),
    "hex": lambda a: hex(int(a)),
    "octal dotted": lambda a: ".".join(f"0{octet:o}" for octet in a.packed),
    "hex dotted": lambda a: ".".join(f"0x{octet:x}" for octet in a.packed),
    "short": _short,
    "first octet and rest": lambda a: f"{a.packed[0]}.{int(a) & 0xFFFFFF}",
}


@pytest.mark.parametrize("form", list(NUMERIC_FORMS))
@given(address=ANY_V4)
def test_numeric_host_forms_are_the_address_they_mean(form: str, address: IPv4Address) -> None:
    host = NUMERIC_FORMS[form](address)
    assert literal_address(host) == address


@pytest.mark.parametrize(
    "host", ["2130706433", "0177.0.0.1", "0x7f.1", "127.1", "0x7f000001", "127.0.0.1."]
)
def test_the_usual_loopback_disguises(host: str) -> None:
    found = literal_address(host)
    assert found is not None
    assert classify(found) is C.LOOPBACK


@pytest.mark.parametrize("host", ["git.example.com", "08.1.1.1", "1.2.3.4.5", "x127.0.0.1"])
def test_names_are_not_literals(host: str) -> None:
    assert literal_address(host) is None


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://git.example.com/ml/wine.git", "git.example.com"),
        ("https://GIT.Example.com:8443/x.git", "git.example.com"),
        ("https://[::ffff:127.0.0.1]/x.git", "::ffff:127.0.0.1"),
        ("ssh://git@10.1.2.3:2222/x.git", "10.1.2.3"),
        ("git@2130706433:ml/wine.git", "2130706433"),
        ("git@github.com:ml/wine.git", "github.com"),
        ("/srv/git/wine.git", None),
        ("file:///srv/git/wine.git", None),
    ],
)
def test_git_url_host(url: str, host: str | None) -> None:
    assert git_url_host(url) == host


@pytest.mark.parametrize(
    "url",
    ["https://[fe80::1%25eth0]/x.git", "https://127.0.0.1%2e/x.git", "https://[::1/x.git",
     "https://xn--ls8h\u00e9.example/x.git", "https:///x.git"],
)  # fmt: skip
def test_hosts_that_cannot_be_checked_are_refused(url: str) -> None:
    with pytest.raises(BadHost):
        git_url_host(url)


def test_http_url_host() -> None:
    assert http_url_host("http://169.254.169.254/latest/meta-data/") == "169.254.169.254"
    assert http_url_host("https://minio.example.com:9000") == "minio.example.com"


# --- the policy ----------------------------------------------------------------------------


@given(ANY_V4)
def test_profiles_differ_only_in_loopback(address: IPv4Address) -> None:
    local = EgressPolicy.for_profile("local").admits(address)
    kubernetes = EgressPolicy.for_profile("kubernetes").admits(address)
    assert kubernetes == (classify(address) is C.PUBLIC)
    assert local == (classify(address) in (C.PUBLIC, C.LOOPBACK))


@given(
    network=st.builds(
        lambda a, prefix: IPv4Network(f"{a}/{prefix}", strict=False),
        st.one_of(v4("127.0.0.0/8"), PRIVATE_V4, v4("169.254.0.0/16")),
        st.integers(min_value=8, max_value=32),
    ),
    address=st.one_of(v4("127.0.0.0/8"), PRIVATE_V4, v4("169.254.0.0/16"), v4("0.0.0.0/8")),
    profile=st.sampled_from(["local", "kubernetes"]),
)
def test_allowed_networks_admit_exactly_their_cidr(
    network: IPv4Network, address: IPv4Address, profile: Profile
) -> None:
    assume(not (profile == "local" and classify(address) is C.LOOPBACK))
    policy = EgressPolicy.for_profile(profile, [str(network)])
    assert policy.admits(address) == (address in network)
    # The same destination written as an IPv4-mapped IPv6 address is the same decision.
    assert policy.admits(IPv6Address(f"::ffff:{address}")) == (address in network)


def test_allowed_ipv6_network() -> None:
    policy = EgressPolicy.for_profile("kubernetes", ["fd00:1::/32"])
    assert policy.admits(ip_address("fd00:1::5"))
    assert not policy.admits(ip_address("fd00:2::5"))


def test_every_address_must_pass() -> None:
    policy = EgressPolicy.for_profile("kubernetes")
    assert policy.refusal([ip_address("8.8.8.8"), ip_address("2606:4700::1")]) is None
    assert policy.refusal([ip_address("8.8.8.8"), ip_address("10.0.0.1")]) is C.PRIVATE


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "ten", "fd00::/129", ""])
def test_bad_allowed_network_is_a_start_up_error_naming_it(bad: str) -> None:
    with pytest.raises(ValueError, match=r"egress\.allowed_networks") as exc:
        EgressPolicy.for_profile("kubernetes", [bad])
    assert repr(bad) in str(exc.value)


# --- the guard, with an injected resolver ----------------------------------------------------


class FakeDns:
    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def __call__(self, host: str) -> Sequence[IPAddress]:
        self.asked.append(host)
        if host not in self.answers:
            raise Unresolvable(host)
        return [ip_address(a) for a in self.answers[host]]


DNS = {
    "git.example.com": ["93.184.216.34", "2606:2800:220:1::1"],
    "rebind.example.com": ["93.184.216.34", "127.0.0.1"],
    "internal.example.com": ["10.20.30.40"],
    "metadata.example.com": ["169.254.169.254"],
    "mapped.example.com": ["::ffff:127.0.0.1"],
    "nowhere.example.com": [],
}


def guard(profile: Profile = "kubernetes", allowed: Sequence[str] = ()) -> LocationGuard:
    return LocationGuard(
        profile=profile,
        policy=EgressPolicy.for_profile(profile, allowed),
        data_dir=Path("/nonexistent/mlexp-data"),
        resolver=FakeDns(DNS),
    )


def check(g: LocationGuard, git_url: str, endpoint: str | None = None) -> None:
    repo: dict[str, object] = {"git": {"url": git_url}, "dvc": {"url": "s3://bucket-x/p"}}
    if endpoint:
        repo["storage"] = {"endpoint_url": endpoint}
    g.check(parse_repo_json(json.dumps(repo).encode(), profile=g.profile))


@pytest.mark.parametrize(
    ("host", "words"),
    [
        ("rebind.example.com", "loopback address"),
        ("internal.example.com", "private network address"),
        ("metadata.example.com", "link-local address"),
        ("mapped.example.com", "loopback address"),
        ("2130706433", "loopback address"),
        ("0x7f.1", "loopback address"),
        ("[::ffff:10.0.0.1]:443", "private network address"),
    ],
)
def test_names_and_literals_that_lead_inside_are_refused(host: str, words: str) -> None:
    with pytest.raises(InvalidBundle) as exc:
        check(guard(), f"https://{host}/ml/wine.git")
    detail = exc.value.detail
    assert detail.startswith(f"git.url points at a {words};")
    assert "egress.allowed_networks" in detail
    for leak in (host, "127.0.0.1", "10.20.30.40", "169.254", "10.0.0.1", "example"):
        assert leak not in detail


def test_public_names_pass_and_literals_skip_the_resolver() -> None:
    g = guard()
    check(g, "https://git.example.com/ml/wine.git", endpoint="https://8.8.8.8:9000")
    assert g.resolver.asked == ["git.example.com"]  # type: ignore[attr-defined]


def test_endpoint_url_is_checked_too() -> None:
    with pytest.raises(InvalidBundle, match=r"^storage\.endpoint_url points at a link-local"):
        check(guard(), "https://git.example.com/x.git", endpoint="http://metadata.example.com")


def test_local_profile_reaches_loopback_but_not_private() -> None:
    check(guard("local"), "https://rebind.example.com/x.git", endpoint="http://127.0.0.1:9000")
    with pytest.raises(InvalidBundle, match="private network"):
        check(guard("local"), "ssh://git@internal.example.com/x.git")


def test_allowed_networks_open_exactly_what_they_name() -> None:
    check(guard(allowed=["10.20.0.0/16"]), "git@internal.example.com:x/y.git")
    with pytest.raises(InvalidBundle, match="private network"):
        check(guard(allowed=["10.21.0.0/16"]), "git@internal.example.com:x/y.git")


@pytest.mark.parametrize("host", ["does-not-exist.example.com", "nowhere.example.com"])
def test_a_name_that_does_not_resolve_is_422_without_the_name(host: str) -> None:
    with pytest.raises(InvalidBundle) as exc:
        check(guard(), f"https://{host}/x.git")
    assert "does not resolve" in exc.value.detail
    assert host not in exc.value.detail


def test_local_paths_are_refused_outside_the_local_profile() -> None:
    with pytest.raises(InvalidBundle, match="local profile"):
        guard().check_local_path("/srv/git/x.git", "git.url", git_repository=True)


# --- git failure classes ---------------------------------------------------------------------

STDERR = {
    "fatal: unable to access 'https://127.0.0.1:45678/x.git/': Failed to connect to "
    "127.0.0.1 port 45678 after 0 ms: Couldn't connect to server": COULD_NOT_CONNECT,
    "fatal: unable to access 'https://git.internal/x.git/': Could not resolve host: "
    "git.internal": COULD_NOT_CONNECT,
    "fatal: unable to access 'https://10.0.0.5/x.git/': Connection timed out after 300001 "
    "milliseconds": COULD_NOT_CONNECT,
    "fatal: unable to access 'https://h/x.git/': server certificate verification failed. "
    "CAfile: none CRLfile: none": COULD_NOT_CONNECT,
    "ssh: connect to host 10.0.0.5 port 22: Connection refused\r\nfatal: Could not read from "
    "remote repository.": COULD_NOT_CONNECT,
    "ssh: Could not resolve hostname git.internal: Name or service not known": COULD_NOT_CONNECT,
    "fatal: Authentication failed for 'https://127.0.0.1:1/x.git/'": AUTHENTICATION_FAILED,
    "fatal: could not read Username for 'https://127.0.0.1:1': terminal prompts disabled":
        AUTHENTICATION_FAILED,
    "fatal: unable to access 'https://h/x.git/': The requested URL returned error: 403":
        AUTHENTICATION_FAILED,
    "git@10.0.0.5: Permission denied (publickey).\r\nfatal: Could not read from remote "
    "repository.": AUTHENTICATION_FAILED,
    "remote: Not Found\nfatal: repository 'https://127.0.0.1:1/missing.git/' not found":
        NOT_FOUND,
    "fatal: unable to access 'https://h/x.git/': The requested URL returned error: 404":
        NOT_FOUND,
    "fatal: '/srv/data/repos/exp-1.git' does not appear to be a git repository\nfatal: Could "
    "not read from remote repository.": NOT_FOUND,
    "fatal: couldn't find remote ref refs/heads/main": NOT_FOUND,
    "remote: The project you were looking for could not be found or you don't have "
    "permission to view it.\nfatal: repository 'https://h/g/p.git/' not found": NOT_FOUND,
}  # fmt: skip


@pytest.mark.parametrize("stderr", list(STDERR))
def test_git_stderr_maps_to_its_class(stderr: str) -> None:
    assert describe_git_failure("fetch", stderr) == f"git fetch failed: {STDERR[stderr]}"


@pytest.mark.parametrize(
    "stderr",
    [
        "",
        " ! [remote rejected] main -> main (pre-receive hook declined)",
        "warning: templates not found in /usr/share/git-core/templates",
        "error: RPC failed; HTTP 413 curl 22 The requested URL returned error: 413\n"
        "send-pack: unexpected disconnect while reading sideband packet\n"
        "fatal: the remote end hung up unexpectedly",
        # a URL or path that spells a class must not choose it
        "fatal: unable to access 'https://h/ssl/not found/x.git/': weird",
        "error: something at /srv/timeout/Authentication failed/x",
    ],
)
def test_unknown_failures_are_the_generic_message(stderr: str) -> None:
    assert describe_git_failure("push", stderr) == "git push failed"


def test_operation_is_never_echoed_unless_a_plain_word() -> None:
    assert describe_git_failure("ls-remote", "") == "git ls-remote failed"
    assert describe_git_failure("push https://10.0.0.1/x", "") == "git command failed"


MESSAGES = {
    f"git fetch failed{suffix}"
    for suffix in ("", *(f": {m}" for m in (COULD_NOT_CONNECT, AUTHENTICATION_FAILED, NOT_FOUND)))
}

_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=6, max_size=12)


@given(
    before=st.text(max_size=80),
    after=st.text(max_size=80),
    host=_label,
    port=st.integers(min_value=1, max_value=65535),
    segment=_label,
    kind=st.sampled_from(["url", "path", "ip"]),
    octets=st.tuples(*[st.integers(0, 255)] * 4),
)
def test_git_failure_never_echoes_urls_paths_or_addresses(
    before: str,
    after: str,
    host: str,
    port: int,
    segment: str,
    kind: str,
    octets: tuple[int, int, int, int],
) -> None:
    secret = {
        "url": f"https://{host}.internal:{port}/{segment}.git",
        "path": f"/srv/{host}/{segment}.git",
        "ip": ".".join(map(str, octets)) + f":{port}",
    }[kind]
    out = describe_git_failure("fetch", f"{before}'{secret}' {after} {secret}")
    assert out in MESSAGES
    assert secret not in out
