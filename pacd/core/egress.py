"""The egress proxy's rules: which host names, ports and addresses an agent may reach.

Pure functions, no I/O; the proxy (:mod:`pacd.egress.proxy`) reads the request,
asks these rules, resolves the name and connects. A refusal is an
:class:`EgressRefusal` carrying the HTTP status the proxy answers with and a
short ``kind`` the agent (and the audit log) can tell refusals apart by.

Host names are compared after :func:`normalize_host`: lower case, one trailing
dot dropped, non-ASCII labels in their IDNA (punycode) form. A trusted domain
``example.org`` matches exactly that name; ``*.example.org`` matches any name
below it (``a.example.org``, ``a.b.example.org``) and neither ``example.org``
itself nor ``evilexample.org``. IP literals in any spelling are refused: the
policy names hosts, and an address would bypass the name check.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

#: where agents find the proxy: a listener inside their own network namespace
PROXY_HOST = "127.0.0.1"
PROXY_PORT = 3128
PROXY_URL = f"http://{PROXY_HOST}:{PROXY_PORT}"
#: the environment a networked agent gets: the proxy under every name clients read
PROXY_ENV = {name: PROXY_URL for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                                          "https_proxy")}

#: the most a request head (request line and headers) may take
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PORT = re.compile(r"[0-9]{1,5}")
_HEX = re.compile(r"0x[0-9a-f]*")
#: headers a proxy consumes or replaces; never forwarded upstream
_HOP_BY_HOP = frozenset({"host", "connection", "keep-alive", "proxy-connection",
                         "proxy-authorization", "proxy-authenticate", "te", "upgrade"})


class EgressRefusal(Exception):
    """Why the proxy refuses a connection: its HTTP status and a short kind."""

    def __init__(self, status: int, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class ProxyRequest:
    """One request to the proxy: a CONNECT tunnel, or an absolute-form HTTP request."""

    method: str
    host: str
    port: int
    #: the request target sent upstream (origin-form); empty for CONNECT
    path: str
    version: str
    headers: tuple[tuple[str, str], ...]

    @property
    def tunnel(self) -> bool:
        return self.method == "CONNECT"

    def upstream_head(self) -> bytes:
        """The head sent to the origin server: origin-form target, the proxy's hop-by-hop
        headers dropped, ``Host`` taken from the URL (never the agent's own header, so
        the name checked is the name served) and one request per connection."""
        authority = self.host if self.port == 80 else f"{self.host}:{self.port}"
        lines = [f"{self.method} {self.path} {self.version}", f"Host: {authority}"]
        lines += [f"{name}: {value}" for name, value in self.headers
                  if name.lower() not in _HOP_BY_HOP]
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def is_ip_literal(host: str) -> bool:
    """True for anything an HTTP client or resolver could take as an address.

    Besides dotted-quad IPv4 and IPv6 (bare or bracketed), this catches the
    forms ``inet_aton`` and URL parsers accept: a single decimal number
    (``2130706433``), short forms (``127.1``), octal (``0177.0.0.1``) and hex
    (``0x7f.1``). Following the URL standard, a name whose last label is a
    number (decimal or ``0x`` hex) is an address, not a host name.
    """
    if not host:
        return False
    if host.startswith("[") or ":" in host:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    labels = host.lower().split(".")
    if labels and labels[-1] == "" and len(labels) > 1:
        labels = labels[:-1]
    last = labels[-1]
    return last.isdigit() or bool(_HEX.fullmatch(last))


def normalize_host(raw: str) -> str:
    """The host name the rules compare: lower case, without one trailing dot, IDNA
    (punycode) for non-ASCII labels. ``EgressRefusal`` (400) if it is no host name;
    IP literals are refused (403) before any other check."""
    host = raw.strip()
    if is_ip_literal(host):
        raise EgressRefusal(403, "ip_literal",
                            f"{raw!r} is an IP address; only host names in the policy's "
                            "trusted_domains are reachable")
    if host.endswith("."):
        host = host[:-1]
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise EgressRefusal(400, "bad_host", f"{raw!r} is not a valid host name") from None
    host = host.lower()
    if (not host or len(host) > 253
            or not all(_LABEL.fullmatch(label) for label in host.split("."))):
        raise EgressRefusal(400, "bad_host", f"{raw!r} is not a valid host name")
    if is_ip_literal(host):  # e.g. a full-width digit that IDNA folds to an ASCII one
        raise EgressRefusal(403, "ip_literal", f"{raw!r} is an IP address")
    return host


def is_domain_pattern(value: str) -> bool:
    """A trusted-domain entry: a lowercase host name, or ``*.`` and one (at least two
    labels, so ``*.org`` cannot open a whole top-level domain)."""
    if value.startswith("*."):
        value = value[2:]
        if "." not in value:
            return False
    if not value or len(value) > 253 or is_ip_literal(value):
        return False
    return all(_LABEL.fullmatch(label) for label in value.split("."))


def domain_matches(host: str, pattern: str) -> bool:
    """Whether a normalized host name falls under one trusted-domain entry."""
    if pattern.startswith("*."):
        suffix = pattern[1:]  # ".example.org": the dot keeps evilexample.org out
        return host.endswith(suffix) and len(host) > len(suffix)
    return host == pattern


def check_target(host: str, port: int, trusted_domains: Iterable[str],
                 allowed_ports: Iterable[int]) -> None:
    """``EgressRefusal`` (403) unless ``host`` is trusted and ``port`` allowed."""
    if not any(domain_matches(host, p) for p in trusted_domains):
        raise EgressRefusal(403, "domain_not_trusted",
                            f"{host} is not in the policy's trusted_domains")
    if port not in set(allowed_ports):
        raise EgressRefusal(403, "port_not_allowed",
                            f"port {port} is not in the policy's allowed_network_ports")


def address_refusal(address: str, *, allow_loopback: bool) -> str | None:
    """Why a resolved address must not be connected to, or None.

    Only globally routable unicast addresses are targets: a trusted name that
    resolves to loopback, link-local (cloud metadata at 169.254.169.254),
    private, shared, multicast or reserved space would let an agent reach the
    owner's machine or network through the proxy (DNS rebinding). Loopback is
    allowed only with ``egress_allow_loopback`` (test daemons; off by default).
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None if allow_loopback else f"{address} is a loopback address"
    if ip.is_multicast or not ip.is_global:
        return f"{address} is not a public unicast address"
    return None


def _authority(text: str) -> tuple[str, int | None]:
    """``host[:port]`` (host possibly bracketed) split; port None if absent."""
    if "@" in text:
        raise EgressRefusal(400, "bad_request", "credentials in the request target are refused")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise EgressRefusal(400, "bad_request", f"unterminated IPv6 literal in {text!r}")
        host, rest = text[:end + 1], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise EgressRefusal(400, "bad_request", f"bad authority {text!r}")
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:
        host, port_text = text, None  # a bare IPv6 literal: refused as one below
    else:
        host, _, port_text = text.partition(":")
        if ":" not in text:
            port_text = None
    port: int | None = None
    if port_text is not None:
        if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
            raise EgressRefusal(400, "bad_port", f"bad port in {text!r}")
        port = int(port_text)
    if not host:
        raise EgressRefusal(400, "bad_host", f"no host in {text!r}")
    return host, port


def parse_request_head(head: bytes) -> ProxyRequest:
    """The request line and headers (everything up to and including the empty line).

    Accepted: ``CONNECT host:port HTTP/1.x`` and absolute-form ``http://`` requests.
    Everything else is an ``EgressRefusal``: origin-form (not a proxy request),
    ``https://`` in absolute form (use CONNECT), other schemes, folded or
    malformed headers, too many headers, non-ASCII in the head.
    """
    if len(head) > MAX_HEAD_BYTES:
        raise EgressRefusal(431, "head_too_large",
                            f"request head exceeds {MAX_HEAD_BYTES} bytes")
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise EgressRefusal(400, "bad_request", "request head is not ASCII") from None
    lines = text.split("\r\n")
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise EgressRefusal(400, "bad_request", "empty request")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
        raise EgressRefusal(400, "bad_request", f"malformed request line {lines[0][:200]!r}")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise EgressRefusal(505, "bad_version", f"unsupported protocol {version[:20]!r}")
    headers = _headers(lines[1:])
    if method == "CONNECT":
        host, port = _authority(target)
        host = normalize_host(host)  # an IP literal is refused as one, port or not
        if port is None:
            raise EgressRefusal(400, "bad_port", "CONNECT needs host:port")
        path = ""
    else:
        scheme, sep, rest = target.partition("://")
        if not sep:
            raise EgressRefusal(400, "not_proxy_request",
                                "the request target must be absolute (http://host/path) "
                                "or a CONNECT authority")
        scheme = scheme.lower()
        if scheme == "https":
            raise EgressRefusal(400, "use_connect", "https goes through CONNECT")
        if scheme != "http":
            raise EgressRefusal(400, "bad_scheme", f"scheme {scheme[:20]!r} is not proxied")
        cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
                  default=len(rest))
        raw_host, maybe_port = _authority(rest[:cut])
        host = normalize_host(raw_host)
        port = 80 if maybe_port is None else maybe_port
        path = rest[cut:].split("#", 1)[0] or "/"
        if not path.startswith("/"):
            path = "/" + path
    return ProxyRequest(method, host, port, path, version, headers)


def _headers(lines: list[str]) -> tuple[tuple[str, str], ...]:
    if len(lines) > MAX_HEADERS:
        raise EgressRefusal(431, "head_too_large", f"more than {MAX_HEADERS} headers")
    out: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            raise EgressRefusal(400, "bad_header", "folded header lines are refused")
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise EgressRefusal(400, "bad_header", f"malformed header line {line[:100]!r}")
        if any(c in value for c in "\r\n\0"):
            raise EgressRefusal(400, "bad_header", f"control character in header {name!r}")
        out.append((name, value.strip(" \t")))
    return tuple(out)
