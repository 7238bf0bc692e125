"""Webhook URLs: what may be registered, and which addresses a tenant's URL may reach.

Syntax (every door): an absolute `http` or `https` URL of at most MAX_URL_LENGTH characters,
with a host, printable ASCII, no credentials (`user:pass@`: they would be stored and shown) and
no fragment.

Addresses (URLs a tenant registers through the API, unless `webhook_allow_private`): every
address the host resolves to must be a public one: loopback, private (RFC 1918, ULA), link-local
(169.254/16: cloud metadata), multicast, unspecified, reserved and shared (CGNAT) ranges are
refused, also behind an IPv4-mapped IPv6 address. Checked at registration, and again at every
delivery, where the request goes to the very address that was checked (DNS may answer otherwise
the second time: rebinding), with the host name kept for `Host` and TLS.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from orchestrator.errors import InvalidInput

MAX_URL_LENGTH = 2048
SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeAddress(InvalidInput):
    """The URL's host is (or resolves to) an address a tenant's webhook may not reach."""


def parse_url(url: object) -> SplitResult:
    """The URL split into parts if it may be registered at all (see the module doc); else InvalidInput."""
    if not isinstance(url, str) or not url:
        raise InvalidInput("a webhook url must be a non-empty string")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidInput(f"a webhook url may be at most {MAX_URL_LENGTH} characters (got {len(url)})")
    if not url.isascii() or not url.isprintable() or any(c.isspace() for c in url):
        raise InvalidInput("a webhook url must be printable ASCII without spaces (percent-encode the rest)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"not a valid webhook url: {exc}") from None
    if parts.scheme.lower() not in SCHEMES:
        raise InvalidInput(f"a webhook url must start with http:// or https:// (got scheme {parts.scheme!r})")
    if not parts.hostname:
        raise InvalidInput("a webhook url must name a host")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidInput("a webhook url may not carry credentials (user:password@); "
                           "verify deliveries by their signature instead")
    if parts.fragment or url.endswith("#"):
        raise InvalidInput("a webhook url may not have a #fragment")
    if port == 0:
        raise InvalidInput("a webhook url's port must be 1..65535")
    return parts


def address_problem(address: IPAddress) -> str | None:
    """Why a tenant's webhook may not reach `address` (None: it is a public address)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for kind in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(address, f"is_{kind}"):
            return f"{address} is a {kind.replace('_', '-')} address"
    if not address.is_global:
        return f"{address} is not a public address"
    return None


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (an IP literal: itself); InvalidInput when none."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidInput(f"the webhook url's host {host!r} does not resolve ({exc})") from None
    found: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    if not found:
        raise InvalidInput(f"the webhook url's host {host!r} has no address")
    return found


@dataclass(frozen=True)
class Target:
    """Where one request goes: `url` as given, and the checked address to connect to (None: let
    the HTTP client resolve the host itself)."""

    url: str
    host: str
    address: IPAddress | None = None

    def connect_url(self) -> str:
        """The URL with the checked address in place of the host name (the request's `Host`
        header and TLS server name stay `host`)."""
        if self.address is None:
            return self.url
        parts = urlsplit(self.url)
        literal = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        netloc = literal if parts.port is None else f"{literal}:{parts.port}"
        return parts._replace(netloc=netloc).geturl()

    def host_header(self) -> str:
        parts = urlsplit(self.url)
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else str(parts.hostname)
        return host if parts.port is None else f"{host}:{parts.port}"


def checked_target(url: str, *, allow_private: bool) -> Target:
    """The target of a request to a tenant's `url`, pinned to the first address its host
    resolves to; unless `allow_private`, every one of them must be public (UnsafeAddress names
    the first that is not)."""
    parts = parse_url(url)
    host = str(parts.hostname)
    port = parts.port or DEFAULT_PORTS[parts.scheme.lower()]
    addresses = resolve(host, port)
    for address in [] if allow_private else addresses:
        problem = address_problem(address)
        if problem:
            raise UnsafeAddress(f"the webhook url's host {host!r} is not allowed: {problem}; a webhook "
                                "must reach a public address")
    return Target(url, host, addresses[0])
