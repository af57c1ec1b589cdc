"""Bus URLs: parsing and validation, no I/O (sans-I/O).

One URL picks the transport and its options::

    udpm://239.255.76.67:7667?ttl=0&recv_buf_size=8388608&interface=lo

Only ``udpm`` exists so far; the AF_UNIX schemes come with their transports.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, urlsplit

from .._exceptions import InvalidURLError

__all__ = ["DEFAULT_URL", "UDPMulticastAddress", "parse_url"]

DEFAULT_URL: Final = "udpm://239.255.76.67:7667?ttl=0"  # LCM's default bus
"""The bus used when neither a URL nor ``$ASYNCBUS_URL`` is given: LCM's default."""
DEFAULT_GROUP: Final = "239.255.76.67"  # LCM's default group, administratively scoped (RFC 2365)
DEFAULT_PORT: Final = 7667  # LCM's default port
DEFAULT_RECV_BUF_SIZE: Final = 8 * 1024 * 1024  # enough for a burst of ~120 full-size fragments
_MAX_TTL: Final = 255  # IP_MULTICAST_TTL is one byte
_MULTICAST: Final = ipaddress.IPv4Network("224.0.0.0/4")  # RFC 5771


@dataclass(frozen=True, slots=True)
class UDPMulticastAddress:
    """Where and how a ``udpm`` bus sends and listens.

    :ivar group: the IPv4 multicast group.
    :ivar port: the UDP port.
    :ivar ttl: multicast TTL; 0 keeps packets on this host (loopback).
    :ivar interface: interface name or IPv4 address; ``None`` means loopback
        for ``ttl=0`` and the kernel's route to the group otherwise.
    :ivar recv_buf_size: requested kernel receive buffer (``SO_RCVBUF``) in bytes.
    """

    group: str = DEFAULT_GROUP
    port: int = DEFAULT_PORT
    ttl: int = 0
    interface: str | None = None
    recv_buf_size: int = DEFAULT_RECV_BUF_SIZE

    def url(self) -> str:
        """Return the URL in normal form.

        :return: a URL that parses back to an equal address.
        """
        query = f"ttl={self.ttl}"
        if self.interface is not None:
            query += f"&interface={self.interface}"

        if self.recv_buf_size != DEFAULT_RECV_BUF_SIZE:
            query += f"&recv_buf_size={self.recv_buf_size}"

        return f"udpm://{self.group}:{self.port}?{query}"


def _integer(name: str, value: str | int, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidURLError(f"option {name}={value!r} is not an integer") from None

    if not low <= number <= high:
        raise InvalidURLError(f"option {name}={number} is out of range {low}..{high}")

    return number


def parse_url(url: str, overrides: dict[str, str | int] | None = None) -> UDPMulticastAddress:
    """Parse a bus URL.

    :param url: the URL, e.g. ``udpm://239.255.76.67:7667?ttl=0``.
    :param overrides: options that replace those in the URL's query.
    :return: the transport address it names.
    :raises InvalidURLError: for an unknown scheme, a malformed address, an
        unknown option, or an option value out of range.
    """
    if not isinstance(url, str):
        raise InvalidURLError(f"a bus URL must be a str, not {type(url).__name__}")

    parts = urlsplit(url)
    if parts.scheme != "udpm":
        scheme = parts.scheme or "(none)"
        raise InvalidURLError(f"unknown bus URL scheme {scheme!r} in {url!r}; supported: udpm://")

    if parts.path not in ("", "/") or parts.fragment:
        raise InvalidURLError(f"a udpm URL has no path or fragment: {url!r}")

    try:
        host = parts.hostname or DEFAULT_GROUP
        port = parts.port if parts.port is not None else DEFAULT_PORT
        group = ipaddress.IPv4Address(host)
    except ValueError as exc:
        raise InvalidURLError(f"bad multicast address in {url!r}: {exc}") from None

    if group not in _MULTICAST:
        raise InvalidURLError(f"{group} is not an IPv4 multicast group (224.0.0.0/4) in {url!r}")

    if port == 0:
        raise InvalidURLError(f"port 0 is not a bus port in {url!r}")

    options: dict[str, str | int] = dict(parse_qsl(parts.query, keep_blank_values=True))
    options.update(overrides or {})
    unknown = sorted(set(options) - {"ttl", "interface", "recv_buf_size"})
    if unknown:
        raise InvalidURLError(
            f"unknown udpm option(s) {', '.join(unknown)}; known: ttl, interface, recv_buf_size"
        )

    interface = options.get("interface")
    if interface is not None:
        interface = str(interface)
        if not interface or "\0" in interface:
            raise InvalidURLError(f"bad interface {interface!r}")

    return UDPMulticastAddress(
        group=str(group),
        port=port,
        ttl=_integer("ttl", options.get("ttl", 0), 0, _MAX_TTL),
        interface=interface,
        recv_buf_size=_integer(
            "recv_buf_size", options.get("recv_buf_size", DEFAULT_RECV_BUF_SIZE), 1, 2**31 - 1
        ),
    )
