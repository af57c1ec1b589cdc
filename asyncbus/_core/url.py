"""Bus URLs: parsing and validation, no I/O (sans-I/O).

One URL picks the transport and its options::

    udpm://239.255.76.67:7667?ttl=0&recv_buf_size=8388608&interface=lo
    unix:NAME            unix:@NAME            unix:///absolute/directory
    seqpacket:NAME       seqpacket:@NAME       seqpacket:///absolute/directory

For the AF_UNIX schemes a bare ``NAME`` is a directory bus in a per-user
directory that the transport resolves (``$XDG_RUNTIME_DIR/asyncbus/NAME``), an
``@NAME`` is a bus in Linux's abstract socket namespace, and an absolute path
is a directory bus there. Parsing does no I/O: the directory is found and
checked when the bus opens.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl, urlsplit

from .._exceptions import InvalidURLError

__all__ = ["DEFAULT_URL", "BusAddress", "UDPMulticastAddress", "UNIXAddress", "parse_url"]

DEFAULT_URL: Final = "udpm://239.255.76.67:7667?ttl=0"  # LCM's default bus
"""The bus used when neither a URL nor ``$ASYNCBUS_URL`` is given: LCM's default."""
DEFAULT_GROUP: Final = "239.255.76.67"  # LCM's default group, administratively scoped (RFC 2365)
DEFAULT_PORT: Final = 7667  # LCM's default port
DEFAULT_RECV_BUF_SIZE: Final = 8 * 1024 * 1024  # enough for a burst of ~120 full-size fragments
_MAX_TTL: Final = 255  # IP_MULTICAST_TTL is one byte
_MULTICAST: Final = ipaddress.IPv4Network("224.0.0.0/4")  # RFC 5771
UNIX_SCHEMES: Final = ("unix", "seqpacket")
DEFAULT_PEER_QUEUE: Final = 1024  # messages a publisher holds for one slow peer (as a queue)
DEFAULT_STALL_TIMEOUT: Final = 5.0  # seconds a publisher waits for one blocked peer
DEFAULT_JOIN_TIMEOUT: Final = 1.0  # seconds open() waits for members to answer
# Shared memory for large payloads: room for 16 messages of 64 MiB in flight, all of
# it kept for reuse: reused pages fill ~9x faster than a new memfd's (0.99 vs 9.1
# GB/s for 64 MiB, benchmarks/large.py), and trimming the cache to 256 MiB made a
# 64 MiB 1->1 publisher create 3 of every 4 segments anew.
DEFAULT_SEGMENT_MEMORY: Final = 1 << 30
DEFAULT_SEGMENT_CACHE: Final = 1 << 30
_MIN_SEGMENT_MEMORY: Final = 64 << 10  # one segment of the smallest class
_MAX_SEGMENT_MEMORY: Final = 1 << 40
_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# sockaddr_un.sun_path is 108 bytes; a directory bus needs room for "/" and a
# member file name (at most 23 bytes, see MEMBER_NAME_MAX), and a NUL.
MEMBER_NAME_MAX: Final = 23
MAX_DIRECTORY: Final = 108 - 1 - MEMBER_NAME_MAX - 1


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


@dataclass(frozen=True, slots=True)
class UNIXAddress:
    """Where an AF_UNIX bus lives and how its members treat each other.

    :ivar scheme: ``"unix"`` (SOCK_DGRAM) or ``"seqpacket"`` (SOCK_SEQPACKET).
    :ivar name: the bus name for a per-user directory bus or an abstract bus,
        else ``None``.
    :ivar directory: the absolute directory of a directory bus given by path,
        else ``None``.
    :ivar abstract: ``True`` for a bus in the abstract namespace (Linux only).
    :ivar allow_uids: user ids accepted besides this process's own.
    :ivar allow_gids: group ids whose members are accepted too.
    :ivar peer_queue: messages a publisher holds for one peer whose socket is
        full before that peer's overflow policy applies.
    :ivar stall_timeout: seconds ``publish()`` waits for one peer with a
        ``block`` subscription before dropping for it (0 waits forever).
    :ivar join_timeout: seconds ``open()`` waits for the members it found to answer.
    :ivar segment_memory: bytes of shared-memory segments a publisher may have
        at once (large payloads; free, being written, or held by receivers).
    :ivar segment_cache: bytes of free segments a publisher keeps for reuse.
    """

    scheme: str
    name: str | None = None
    directory: str | None = None
    abstract: bool = False
    allow_uids: frozenset[int] = field(default_factory=frozenset)
    allow_gids: frozenset[int] = field(default_factory=frozenset)
    peer_queue: int = DEFAULT_PEER_QUEUE
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    join_timeout: float = DEFAULT_JOIN_TIMEOUT
    segment_memory: int = DEFAULT_SEGMENT_MEMORY
    segment_cache: int = DEFAULT_SEGMENT_CACHE

    def url(self) -> str:
        """Return the URL in normal form.

        :return: a URL that parses back to an equal address.
        """
        if self.abstract:
            url = f"{self.scheme}:@{self.name}"
        elif self.directory is not None:
            url = f"{self.scheme}://{self.directory}"
        else:
            url = f"{self.scheme}:{self.name}"

        query = []
        if self.allow_uids:
            query.append("allow_uids=" + ",".join(map(str, sorted(self.allow_uids))))

        if self.allow_gids:
            query.append("allow_gids=" + ",".join(map(str, sorted(self.allow_gids))))

        if self.peer_queue != DEFAULT_PEER_QUEUE:
            query.append(f"peer_queue={self.peer_queue}")

        if self.stall_timeout != DEFAULT_STALL_TIMEOUT:
            query.append(f"stall_timeout={_number(self.stall_timeout)}")

        if self.join_timeout != DEFAULT_JOIN_TIMEOUT:
            query.append(f"join_timeout={_number(self.join_timeout)}")

        if self.segment_memory != DEFAULT_SEGMENT_MEMORY:
            query.append(f"segment_memory={self.segment_memory}")

        if self.segment_cache != DEFAULT_SEGMENT_CACHE:
            query.append(f"segment_cache={self.segment_cache}")

        return url + ("?" + "&".join(query) if query else "")


BusAddress = UDPMulticastAddress | UNIXAddress


def _number(value: float) -> str:
    # Every digit (repr round-trips a float), but "2" rather than "2.0".
    return str(int(value)) if value.is_integer() else repr(value)


def _integer(name: str, value: str | int | float, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidURLError(f"option {name}={value!r} is not an integer") from None

    if not low <= number <= high:
        raise InvalidURLError(f"option {name}={number} is out of range {low}..{high}")

    return number


def _seconds(name: str, value: str | int | float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidURLError(f"option {name}={value!r} is not a number of seconds") from None

    if not 0 <= number <= 86_400:  # a day: anything longer is a typo
        raise InvalidURLError(f"option {name}={number:g} is out of range 0..86400 seconds")

    return number


def _ids(name: str, value: str | int | float) -> frozenset[int]:
    text = str(value).strip()
    if not text:
        return frozenset()

    ids = set()
    for item in text.split(","):
        ids.add(_integer(name, item.strip(), 0, 2**32 - 2))  # (u32)-1 means "no id"

    return frozenset(ids)


def parse_url(
    url: str, overrides: dict[str, str | int | float] | None = None
) -> UDPMulticastAddress | UNIXAddress:
    """Parse a bus URL.

    :param url: the URL, e.g. ``udpm://239.255.76.67:7667?ttl=0`` or ``unix:@sensors``.
    :param overrides: options that replace those in the URL's query.
    :return: the transport address it names.
    :raises InvalidURLError: for an unknown scheme, a malformed address, an
        unknown option, or an option value out of range.
    """
    if not isinstance(url, str):
        raise InvalidURLError(f"a bus URL must be a str, not {type(url).__name__}")

    parts = urlsplit(url)
    if parts.scheme in UNIX_SCHEMES:
        return _parse_unix(url, overrides)

    if parts.scheme != "udpm":
        scheme = parts.scheme or "(none)"
        raise InvalidURLError(
            f"unknown bus URL scheme {scheme!r} in {url!r}; supported: udpm://, unix:, seqpacket:"
        )

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

    options: dict[str, str | int | float] = dict(parse_qsl(parts.query, keep_blank_values=True))
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


_UNIX_OPTIONS: Final = (
    "allow_uids",
    "allow_gids",
    "peer_queue",
    "stall_timeout",
    "join_timeout",
    "segment_memory",
    "segment_cache",
)


def _parse_unix(url: str, overrides: dict[str, str | int | float] | None) -> UNIXAddress:
    scheme, _, rest = url.partition(":")
    scheme = scheme.lower()  # schemes are case-insensitive (RFC 3986, section 3.1)
    target, _, query = rest.partition("?")
    if "#" in target or "#" in query:
        raise InvalidURLError(f"a {scheme} URL has no fragment: {url!r}")

    name: str | None = None
    directory: str | None = None
    abstract = False
    if target.startswith("//"):
        # unix:///abs/dir: an empty authority, then an absolute path.
        if not target.startswith("///"):
            raise InvalidURLError(
                f"a {scheme} URL names no host: write {scheme}:///absolute/dir, not {url!r}"
            )

        directory = target[2:]
    elif target.startswith("/"):
        directory = target
    elif target.startswith("@"):
        name, abstract = target[1:], True
    else:
        name = target

    if directory is not None:
        directory = "/" + "/".join(part for part in directory.split("/") if part)
        if directory == "/" or "\0" in directory or ".." in directory.split("/"):
            raise InvalidURLError(f"bad bus directory {directory!r} in {url!r}")

        if len(directory.encode("utf-8", "surrogateescape")) > MAX_DIRECTORY:
            raise InvalidURLError(
                f"bus directory {directory!r} is too long for a unix socket path "
                f"(at most {MAX_DIRECTORY} bytes, as sun_path holds 108)"
            )
    elif name is None or not _NAME.fullmatch(name) or name in (".", ".."):
        raise InvalidURLError(
            f"bad bus name {name!r} in {url!r}: use 1 to 64 of A-Z a-z 0-9 _ . - (not . or ..), "
            f"e.g. {scheme}:sensors, {scheme}:@sensors or {scheme}:///run/user/1000/bus"
        )

    options: dict[str, str | int | float] = dict(parse_qsl(query, keep_blank_values=True))
    options.update(overrides or {})
    unknown = sorted(set(options) - set(_UNIX_OPTIONS))
    if unknown:
        raise InvalidURLError(
            f"unknown {scheme} option(s) {', '.join(unknown)}; known: {', '.join(_UNIX_OPTIONS)}"
        )

    return UNIXAddress(
        scheme=scheme,
        name=name,
        directory=directory,
        abstract=abstract,
        allow_uids=_ids("allow_uids", options.get("allow_uids", "")),
        allow_gids=_ids("allow_gids", options.get("allow_gids", "")),
        peer_queue=_integer("peer_queue", options.get("peer_queue", DEFAULT_PEER_QUEUE), 1, 65536),
        stall_timeout=_seconds(
            "stall_timeout", options.get("stall_timeout", DEFAULT_STALL_TIMEOUT)
        ),
        join_timeout=_seconds("join_timeout", options.get("join_timeout", DEFAULT_JOIN_TIMEOUT)),
        segment_memory=_integer(
            "segment_memory",
            options.get("segment_memory", DEFAULT_SEGMENT_MEMORY),
            _MIN_SEGMENT_MEMORY,
            _MAX_SEGMENT_MEMORY,
        ),
        segment_cache=_integer(
            "segment_cache",
            options.get("segment_cache", DEFAULT_SEGMENT_CACHE),
            0,
            _MAX_SEGMENT_MEMORY,
        ),
    )
