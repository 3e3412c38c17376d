"""Browser safety decisions (api/browser.py): which Host names are answered, which Origins
may change state, and how configured names and origins are read."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.browser import BrowserPolicy, split_host, split_origin

DEFAULT = BrowserPolicy.build("127.0.0.1", [], [])


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("localhost", ("localhost", None)),
        ("LocalHost:8080", ("localhost", "8080")),
        ("localhost.:8080", ("localhost", "8080")),
        ("127.0.0.1:80", ("127.0.0.1", "80")),
        ("[::1]:8080", ("[::1]", "8080")),
        ("[0:0:0:0:0:0:0:1]", ("[::1]", None)),
        ("[::1]", ("[::1]", None)),
        ("example.com:", ("example.com", None)),
        ("", None),
        ("::1", None),  # IPv6 without brackets is not a Host header
        ("::1:8080", None),
        ("[::1", None),
        ("[::1]x", None),
        ("[not-ipv6]:80", None),
        ("evil.example:80:80", None),
        ("evil.example:http", None),
        ("evil.example:123456", None),
        ("user@localhost", None),
        ("localhost/x", None),
        ("local host", None),
        ("localhost, evil.example", None),
        ("localhost:\uff18\uff10", None),  # non-ASCII (fullwidth) digits
    ],
)
def test_host_headers_are_parsed_strictly(
    header: str, expected: tuple[str, str | None] | None
) -> None:
    assert split_host(header) == expected


@pytest.mark.parametrize(
    "header",
    ["127.0.0.1", "127.0.0.1:8080", "localhost:1", "LOCALHOST", "[::1]:8080", "[::1]"],
)
def test_loopback_names_are_answered_by_default(header: str) -> None:
    assert DEFAULT.host_allowed(header)


@pytest.mark.parametrize(
    "header",
    [
        "evil.example",
        "evil.example:8080",
        "127.0.0.2",  # loopback, but not a name the service is configured for
        "2130706433",  # 127.0.0.1 in decimal, as a rebinding page could spell it
        "localhost.evil.example",
        "[::2]",
        "0.0.0.0:8080",
        "",
        "localhost, evil.example",
    ],
)
def test_other_names_are_refused_by_default(header: str) -> None:
    assert not DEFAULT.host_allowed(header)


def test_a_missing_host_is_refused_on_http_1_1_only() -> None:
    assert not DEFAULT.host_allowed(None, "1.1")
    assert not DEFAULT.host_allowed(None, "2")
    assert DEFAULT.host_allowed(None, "1.0")


def test_configured_host_and_allowed_hosts() -> None:
    policy = BrowserPolicy.build("mlexp.internal", ["ML.Example.COM", "fd00::7", "[fd00::8]"], [])
    for header in ("mlexp.internal:8080", "ml.example.com", "[fd00::7]:1", "[fd00::8]"):
        assert policy.host_allowed(header), header
    assert policy.host_allowed("localhost:8080")
    assert not policy.host_allowed("example.com")


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::", "[::]"])  # noqa: S104
def test_a_wildcard_listen_address_is_not_a_host_name(wildcard: str) -> None:
    policy = BrowserPolicy.build(wildcard, [], [])
    assert not policy.host_allowed("0.0.0.0:8080")
    assert not policy.host_allowed("[::]:8080")
    assert not policy.host_allowed("evil.example")
    assert policy.host_allowed("localhost:8080")


def test_star_accepts_any_well_formed_host() -> None:
    policy = BrowserPolicy.build("127.0.0.1", ["*"], [])
    assert policy.host_allowed("anything.example:8443")
    assert not policy.host_allowed("bad host")
    assert not policy.host_allowed(None)


@pytest.mark.parametrize("entry", ["http://x.example", "x.example/path", "a b", ""])
def test_malformed_allowed_hosts_stop_start_up(entry: str) -> None:
    with pytest.raises(ValueError, match="not a host name"):
        BrowserPolicy.build("127.0.0.1", [entry], [])


@given(
    name=st.sampled_from(["localhost", "127.0.0.1", "[::1]"]),
    port=st.none() | st.integers(min_value=1, max_value=65535),
    upper=st.lists(st.booleans(), min_size=9, max_size=9),
)
def test_loopback_any_port_any_case(name: str, port: int | None, upper: list[bool]) -> None:
    cased = "".join(c.upper() if up else c for c, up in zip(name, upper, strict=False))
    assert DEFAULT.host_allowed(cased if port is None else f"{cased}:{port}")


@given(label=st.from_regex(r"[a-z][a-z0-9-]{0,20}\.example", fullmatch=True))
def test_unconfigured_dns_names_are_refused(label: str) -> None:
    assert not DEFAULT.host_allowed(label)
    assert not DEFAULT.host_allowed(f"{label}:8080")


# -- Origin ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://ui.example", ("http", "ui.example", None)),
        ("HTTPS://UI.Example:443", ("https", "ui.example", None)),
        ("http://ui.example:80", ("http", "ui.example", None)),
        ("https://ui.example:8443", ("https", "ui.example", "8443")),
        ("http://[::1]:8080", ("http", "[::1]", "8080")),
        ("null", None),
        ("file://", None),
        ("ftp://ui.example", None),
        ("ui.example", None),
        ("http://ui.example/path", None),
        ("http://user@ui.example", None),
    ],
)
def test_origins_are_parsed_strictly(
    value: str, expected: tuple[str, str, str | None] | None
) -> None:
    assert split_origin(value) == expected


UI = BrowserPolicy.build("127.0.0.1", [], ["https://ui.example", "http://localhost:3000/"])


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_safe_methods_pass_whatever_the_origin(method: str) -> None:
    assert DEFAULT.refusal(method, "http://evil.example", "cross-site", "127.0.0.1:8080") is None


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize(
    "origin", ["http://evil.example", "null", "http://127.0.0.1:9999", "http://localhost:8080"]
)
def test_foreign_origins_may_not_change_state(method: str, origin: str) -> None:
    reason = DEFAULT.refusal(method, origin, None, "127.0.0.1:8080")
    assert reason is not None
    assert "allowed_origins" in reason


def test_same_origin_passes_under_a_configured_name_only() -> None:
    # Swagger UI at http://127.0.0.1:8080/docs posts with its own origin.
    assert DEFAULT.refusal("POST", "http://127.0.0.1:8080", None, "127.0.0.1:8080") is None
    assert DEFAULT.refusal("POST", "http://[::1]:8080", None, "[::1]:8080") is None
    assert DEFAULT.refusal("POST", "http://localhost", None, "localhost:80") is None
    # Only this service listens on the request's host and port: behind a TLS proxy the
    # page's scheme differs from the one the service sees, and it is still its own page.
    assert DEFAULT.refusal("POST", "https://127.0.0.1:8080", None, "127.0.0.1:8080") is None
    # With allowed_hosts ['*'], a rebound name is "same-origin" too: it does not count.
    star = BrowserPolicy.build("127.0.0.1", ["*"], [])
    assert star.refusal("POST", "http://evil.example:8080", None, "evil.example:8080")
    assert star.refusal("POST", "http://127.0.0.1:8080", None, "127.0.0.1:8080") is None


def test_allowed_origins_pass_and_others_do_not() -> None:
    assert UI.refusal("POST", "https://ui.example", "cross-site", "127.0.0.1:8080") is None
    assert UI.refusal("POST", "HTTPS://UI.EXAMPLE:443", None, "127.0.0.1:8080") is None
    assert UI.refusal("DELETE", "http://localhost:3000", "same-site", "localhost:8080") is None
    assert UI.refusal("POST", "http://ui.example", None, "127.0.0.1:8080")  # other scheme
    assert UI.refusal("POST", "https://ui.example:8443", None, "127.0.0.1:8080")  # other port
    assert UI.allowed_origin("https://ui.example") == "https://ui.example"
    assert UI.allowed_origin("https://evil.example") is None
    assert DEFAULT.allowed_origin("https://ui.example") is None


def test_cross_site_fetch_without_origin_is_refused() -> None:
    assert DEFAULT.refusal("POST", None, "cross-site", "127.0.0.1:8080")
    assert DEFAULT.refusal("POST", None, "Cross-Site", "127.0.0.1:8080")
    for site in (None, "same-origin", "none"):
        assert DEFAULT.refusal("POST", None, site, "127.0.0.1:8080") is None  # curl, the CLI


@pytest.mark.parametrize("entry", ["*", "null", "ui.example", "https://ui.example/app"])
def test_unusable_allowed_origins_stop_start_up(entry: str) -> None:
    with pytest.raises(ValueError, match="allowed_origins"):
        BrowserPolicy.build("127.0.0.1", [], [entry])
