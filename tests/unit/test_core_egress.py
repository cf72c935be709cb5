"""The egress proxy's pure rules: names, wildcards, IP literals, addresses, request heads."""

from __future__ import annotations

import pytest

from pacd.core.egress import (
    MAX_HEAD_BYTES,
    EgressRefusal,
    address_refusal,
    check_target,
    domain_matches,
    is_domain_pattern,
    is_ip_literal,
    normalize_host,
    parse_request_head,
)
from pacd.core.models import SecurityPolicy
from pacd.errors import SpecError


def refusal(head: bytes) -> EgressRefusal:
    with pytest.raises(EgressRefusal) as info:
        parse_request_head(head)
    return info.value


@pytest.mark.parametrize(("raw", "normal"), [
    ("API.Example.ORG", "api.example.org"),
    ("api.example.org.", "api.example.org"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
])
def test_host_names_are_compared_in_one_spelling(raw: str, normal: str) -> None:
    assert normalize_host(raw) == normal


@pytest.mark.parametrize("raw", ["a..b", "exa mple.org", "-bad.org", "a_b.org", "x" * 64 + ".org",
                                 "example.org..", ""])
def test_malformed_host_names_are_a_400(raw: str) -> None:
    with pytest.raises(EgressRefusal) as info:
        normalize_host(raw)
    assert (info.value.status, info.value.kind) == (400, "bad_host")


@pytest.mark.parametrize("literal", [
    "127.0.0.1", "127.1", "2130706433", "0177.0.0.1", "0x7f.0.0.1", "0x7f000001", "1.2.3.4.",
    "::1", "[::1]", "[::ffff:127.0.0.1]", "fe80::1%25eth0", "example.0x10", "example.123",
    "\uff11\uff12\uff17.0.0.1",  # full-width digits: IDNA folds them to ASCII ones
])
def test_ip_literals_in_every_spelling_are_refused(literal: str) -> None:
    with pytest.raises(EgressRefusal) as info:
        normalize_host(literal)
    assert (info.value.status, info.value.kind) == (403, "ip_literal")


def test_names_with_digits_are_not_ip_literals() -> None:
    assert not is_ip_literal("1password.com")
    assert not is_ip_literal("a1.example.org")
    assert not is_ip_literal("0x-sites.org")


@pytest.mark.parametrize(("host", "pattern", "expected"), [
    ("example.org", "example.org", True),
    ("api.example.org", "example.org", False),
    ("api.example.org", "*.example.org", True),
    ("a.b.example.org", "*.example.org", True),
    ("example.org", "*.example.org", False),
    ("evilexample.org", "*.example.org", False),
    ("evilexample.org", "example.org", False),
    ("example.org.evil.net", "*.example.org", False),
])
def test_wildcard_covers_subdomains_only(host: str, pattern: str, expected: bool) -> None:
    assert domain_matches(host, pattern) is expected


def test_trailing_dot_and_case_cannot_escape_or_miss_the_allow_list() -> None:
    for raw in ("API.EXAMPLE.ORG.", "api.example.org"):
        check_target(normalize_host(raw), 443, ["*.example.org"], [443])
    with pytest.raises(EgressRefusal) as info:
        check_target(normalize_host("EvilExample.org."), 443, ["*.example.org"], [443])
    assert info.value.kind == "domain_not_trusted"


def test_trusted_name_on_a_port_not_allowed_is_refused() -> None:
    with pytest.raises(EgressRefusal) as info:
        check_target("api.example.org", 25, ["api.example.org"], [443])
    assert (info.value.status, info.value.kind) == (403, "port_not_allowed")


@pytest.mark.parametrize(("value", "ok"), [
    ("example.org", True), ("*.example.org", True), ("*.org", False), ("*", False),
    ("a.*.org", False), ("127.0.0.1", False), ("Example.org", False), ("localhost", True),
])
def test_trusted_domain_entries(value: str, ok: bool) -> None:
    assert is_domain_pattern(value) is ok


def test_policy_accepts_wildcards_and_refuses_ip_addresses() -> None:
    assert SecurityPolicy.custom(trusted_domains=["*.example.org"]).trusted_domains == (
        "*.example.org",)
    with pytest.raises(SpecError, match=r"trusted_domains\[0\]: '10.0.0.1' is not"):
        SecurityPolicy.custom(trusted_domains=["10.0.0.1"])


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "::ffff:127.0.0.1"])
def test_a_trusted_name_resolving_to_loopback_is_refused_unless_configured(address: str) -> None:
    assert address_refusal(address, allow_loopback=False) is not None
    assert address_refusal(address, allow_loopback=True) is None


@pytest.mark.parametrize("address", ["169.254.169.254", "10.0.0.5", "192.168.1.1", "fe80::1",
                                     "224.0.0.1", "0.0.0.0", "100.64.0.1", "fd00::1",
                                     "::ffff:10.0.0.1"])
def test_a_trusted_name_resolving_to_a_private_address_is_refused(address: str) -> None:
    assert address_refusal(address, allow_loopback=True) is not None


def test_public_addresses_are_targets() -> None:
    assert address_refusal("93.184.216.34", allow_loopback=False) is None
    assert address_refusal("2606:2800:220:1:248:1893:25c8:1946", allow_loopback=False) is None


def test_connect_request_is_parsed() -> None:
    req = parse_request_head(b"CONNECT Api.Example.org.:443 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (req.method, req.host, req.port, req.tunnel) == ("CONNECT", "api.example.org", 443,
                                                            True)


def test_absolute_form_get_is_rewritten_to_origin_form_with_the_urls_host() -> None:
    req = parse_request_head(
        b"GET http://api.example.org:8080/v1/x?q=1 HTTP/1.1\r\nHost: evil.example\r\n"
        b"Proxy-Authorization: secret\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n")
    assert (req.host, req.port, req.path, req.tunnel) == ("api.example.org", 8080, "/v1/x?q=1",
                                                          False)
    assert req.upstream_head() == (
        b"GET /v1/x?q=1 HTTP/1.1\r\nHost: api.example.org:8080\r\nAccept: */*\r\n"
        b"Connection: close\r\n\r\n")
    assert parse_request_head(b"GET http://example.org HTTP/1.0\r\n\r\n").path == "/"


@pytest.mark.parametrize(("head", "status", "kind"), [
    (b"GET /index.html HTTP/1.1\r\nHost: example.org\r\n\r\n", 400, "not_proxy_request"),
    (b"GET https://example.org/ HTTP/1.1\r\n\r\n", 400, "use_connect"),
    (b"GET ftp://example.org/ HTTP/1.1\r\n\r\n", 400, "bad_scheme"),
    (b"GET http://user:pw@example.org/ HTTP/1.1\r\n\r\n", 400, "bad_request"),
    (b"CONNECT example.org HTTP/1.1\r\n\r\n", 400, "bad_port"),
    (b"CONNECT example.org:99999 HTTP/1.1\r\n\r\n", 400, "bad_port"),
    (b"CONNECT example.org:+443 HTTP/1.1\r\n\r\n", 400, "bad_port"),
    (b"CONNECT [::1]:443 HTTP/1.1\r\n\r\n", 403, "ip_literal"),
    (b"CONNECT ::1:443 HTTP/1.1\r\n\r\n", 403, "ip_literal"),
    (b"GET http://2130706433/ HTTP/1.1\r\n\r\n", 403, "ip_literal"),
    (b"GET  http://example.org/ HTTP/1.1\r\n\r\n", 400, "bad_request"),
    (b"GET http://example.org/\r\n\r\n", 400, "bad_request"),
    (b"GET http://example.org/ HTTP/2.0\r\n\r\n", 505, "bad_version"),
    (b"G(T http://example.org/ HTTP/1.1\r\n\r\n", 400, "bad_request"),
    (b"GET http://example.org/ HTTP/1.1\r\nX-A: 1\r\n  folded\r\n\r\n", 400, "bad_header"),
    (b"GET http://example.org/ HTTP/1.1\r\nno colon\r\n\r\n", 400, "bad_header"),
    (b"GET http://\xc3\xa9.org/ HTTP/1.1\r\n\r\n", 400, "bad_request"),
    (b"\r\n\r\n", 400, "bad_request"),
])
def test_bad_request_heads_get_a_clear_status(head: bytes, status: int, kind: str) -> None:
    got = refusal(head)
    assert (got.status, got.kind) == (status, kind), got.reason


def test_oversized_heads_and_header_floods_are_a_431() -> None:
    big = b"GET http://example.org/ HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n"
    assert (refusal(big).status, refusal(big).kind) == (431, "head_too_large")
    many = b"GET http://example.org/ HTTP/1.1\r\n" + b"X: 1\r\n" * 101 + b"\r\n"
    assert refusal(many).status == 431
