"""The control frames of the AF_UNIX buses (sans-I/O).

Messages on ``unix:`` and ``seqpacket:`` buses are LCM frames (`asyncbus._core.lcm`);
these frames let members find each other and tell each other what they want.
Every frame is one datagram (``unix:``) or one record (``seqpacket:``) and starts
with a big-endian u32 magic. ``docs/protocol.md`` is the normative description;
this module is its implementation. All integers are big-endian::

    HELLO      u32 0x4142484c "ABHL" | u8 version (1) | u8 flags | u16 n | n bytes address
    SUBSCRIBE  u32 0x41425342 "ABSB" | u16 count | count x entry
       entry:  u8 kind | u8 policy | u16 n | n bytes UTF-8 pattern
    BYE        u32 0x41424259 "ABBY"
    SEGMENT    u32 0x41425347 "ABSG" | u32 seq | u32 loan | u64 size | channel NUL
    RELEASE    u32 0x4142524c "ABRL" | u16 count | count x u32 loan
    BATCH      u32 0x41424254 "ABBT" | count x (u16 n | n bytes frame)

HELLO's address is the ``sun_path`` of the member's receiving socket, exactly
as bound (an abstract address starts with a NUL byte). Flag bit 0 (`REPLY`)
asks the receiver to answer with a HELLO of its own; flag bit 1 (`FDS`) says
the sender accepts file descriptors (``SCM_RIGHTS``) on message frames and
SEGMENT frames; flag bit 2 (`BATCH`) says it accepts BATCH frames. Bytes after the address
are reserved: receivers ignore them, so a later version can append fields.

SUBSCRIBE replaces the sender's whole subscription set. ``kind`` is
`PatternKind`; ``policy`` is `PeerPolicy`, what a publisher does when this
member's socket is full.

SEGMENT is a message whose payload is not in the frame: it is the first
``size`` bytes of a sealed memfd that travels with the frame as its first
``SCM_RIGHTS`` descriptor (any further descriptors are the message's own).
``seq`` is the link's sequence number, as in an ``LC02`` frame; ``loan``
names this publication of the segment. A receiver that no longer reads it
sends RELEASE with that loan number to the publisher, which may then write
the next message into the same memfd.

BATCH carries several frames in one datagram or record, to a member whose
HELLO had the `BATCH` flag; a publisher coalesces the frames it has queued
for a peer when it produces faster than it can send them one by one. Each
inner frame is handled as if it had arrived alone, in order, from the same
sender. An inner frame is never empty, never a BATCH and never a SEGMENT (a
SEGMENT needs its memfd); the whole BATCH is at most `MAX_CONTROL_FRAME`
bytes. A receiver drops a malformed BATCH whole.
"""

from __future__ import annotations

import fnmatch
import re
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from .._exceptions import LocalProtocolError, RemoteProtocolError
from .lcm import decode_channel

__all__ = [
    "BATCH",
    "BATCH_MAGIC",
    "FDS",
    "MAX_CONTROL_FRAME",
    "MAX_RELEASES",
    "PROTOCOL_VERSION",
    "REPLY",
    "Bye",
    "ControlMagic",
    "Hello",
    "Interest",
    "PatternKind",
    "PeerPolicy",
    "Release",
    "Segment",
    "SubscriptionEntry",
    "Subscriptions",
    "decode_control",
    "encode_batch",
    "encode_bye",
    "encode_hello",
    "encode_release",
    "encode_segment",
    "encode_subscriptions",
    "is_batch",
    "is_control",
    "split_batch",
]


class ControlMagic(IntEnum):
    """The first four bytes of a control frame. Values are on the wire."""

    HELLO = 0x4142484C  # b"ABHL"
    SUBSCRIBE = 0x41425342  # b"ABSB"
    BYE = 0x41424259  # b"ABBY"
    SEGMENT = 0x41425347  # b"ABSG"
    RELEASE = 0x4142524C  # b"ABRL"


class PatternKind(IntEnum):
    """How a SUBSCRIBE entry's pattern matches a topic. Values are on the wire."""

    EXACT = 1
    """The topic equals the pattern."""

    GLOB = 2
    """The pattern is a glob, with Python's `fnmatch` rules: ``*`` any run (also
    across ``/``), ``?`` one character, ``[...]`` a set, ``[!...]`` its
    complement; ``^`` in a set is an ordinary character, there are no escapes
    and no ``[:class:]`` names."""

    ALL = 3
    """Every topic (the pattern is empty). A regex subscription is announced as
    this and filtered by its owner, since regex dialects differ by language."""


class PeerPolicy(IntEnum):
    """What a publisher does when a member's socket is full. Values are on the wire."""

    DROP_OLDEST = 0
    """Discard the oldest message still queued for that member."""

    DROP_NEWEST = 1
    """Discard the new message for that member."""

    BLOCK = 2
    """Queue it, and make ``publish()`` wait until the member drains."""


PROTOCOL_VERSION: Final = 1
REPLY: Final = 0x01  # HELLO flag: answer with a HELLO
FDS: Final = 0x02  # HELLO flag: the sender takes SCM_RIGHTS and SEGMENT frames
BATCH: Final = 0x04  # HELLO flag: the sender takes BATCH frames
BATCH_MAGIC: Final = 0x41424254  # b"ABBT": not a ControlMagic, it holds other frames
MAX_RELEASES: Final = 4096  # loans in one RELEASE frame (16 KiB: fits every buffer)
MAX_CONTROL_FRAME: Final = 65_507  # the LCM datagram size: every frame fits any member's buffer
_HELLO: Final = struct.Struct(">IBBH")
_SUBSCRIBE: Final = struct.Struct(">IH")
_ENTRY: Final = struct.Struct(">BBH")
_MAGIC: Final = struct.Struct(">I")
_SEGMENT: Final = struct.Struct(">IIIQ")
_RELEASE: Final = struct.Struct(">IH")
_CONTROL_PREFIXES: Final = frozenset(m.to_bytes(4, "big") for m in ControlMagic)
_BATCH_PREFIX: Final = BATCH_MAGIC.to_bytes(4, "big")
_SEGMENT_PREFIX: Final = ControlMagic.SEGMENT.to_bytes(4, "big")
_LENGTH: Final = struct.Struct(">H")
_NOT_BATCHED: Final = frozenset({_BATCH_PREFIX, _SEGMENT_PREFIX})


@dataclass(frozen=True, slots=True)
class Hello:
    """A member says who it is.

    :ivar address: the ``sun_path`` of its receiving socket.
    :ivar reply: it asks for a HELLO back.
    :ivar fds: it accepts file descriptors and SEGMENT frames.
    :ivar batch: it accepts BATCH frames.
    """

    address: bytes
    reply: bool
    fds: bool = False
    batch: bool = False


@dataclass(frozen=True, slots=True)
class SubscriptionEntry:
    """One pattern in a SUBSCRIBE frame.

    :ivar kind: how the pattern matches.
    :ivar policy: what a publisher does when the member is full.
    :ivar pattern: the pattern (empty for `PatternKind.ALL`).
    """

    kind: PatternKind
    policy: PeerPolicy
    pattern: str


@dataclass(frozen=True, slots=True)
class Subscriptions:
    """A member's whole subscription set.

    :ivar entries: its patterns, in any order.
    """

    entries: tuple[SubscriptionEntry, ...]


@dataclass(frozen=True, slots=True)
class Bye:
    """A member leaves the bus."""


@dataclass(frozen=True, slots=True)
class Segment:
    """A message whose payload is in the memfd that came with the frame.

    :ivar seq: the link's sequence number.
    :ivar loan: the publisher's number for this publication (for RELEASE).
    :ivar size: the payload's length: the memfd's first ``size`` bytes.
    :ivar channel: the topic.
    """

    seq: int
    loan: int
    size: int
    channel: str


@dataclass(frozen=True, slots=True)
class Release:
    """A member no longer reads these segments.

    :ivar loans: the loan numbers from the SEGMENT frames.
    """

    loans: tuple[int, ...]


def encode_hello(address: bytes, *, reply: bool, fds: bool = False, batch: bool = False) -> bytes:
    """Encode a HELLO frame.

    :param address: this member's receiving ``sun_path``.
    :param reply: ask the receiver to answer.
    :param fds: say this member accepts file descriptors and SEGMENT frames.
    :param batch: say this member accepts BATCH frames.
    :return: the frame.
    :raises LocalProtocolError: if the address is empty or longer than 108 bytes.
    """
    if not 0 < len(address) <= 108:  # sizeof(sockaddr_un.sun_path)
        raise LocalProtocolError(f"a member address has 1 to 108 bytes, not {len(address)}")

    flags = (REPLY if reply else 0) | (FDS if fds else 0) | (BATCH if batch else 0)
    return _HELLO.pack(ControlMagic.HELLO, PROTOCOL_VERSION, flags, len(address)) + address


def encode_subscriptions(entries: list[SubscriptionEntry] | tuple[SubscriptionEntry, ...]) -> bytes:
    """Encode a SUBSCRIBE frame.

    :param entries: the whole subscription set.
    :return: the frame.
    :raises LocalProtocolError: if the set does not fit one frame.
    """
    if len(entries) > 0xFFFF:
        raise LocalProtocolError(f"{len(entries)} subscriptions do not fit a SUBSCRIBE frame")

    parts = [_SUBSCRIBE.pack(ControlMagic.SUBSCRIBE, len(entries))]
    size = _SUBSCRIBE.size
    for entry in entries:
        if (entry.kind is PatternKind.ALL) != (not entry.pattern):
            raise LocalProtocolError(
                f"a {entry.kind.name} entry with pattern {entry.pattern!r}: the pattern "
                "is empty exactly when the kind is ALL"
            )

        try:
            raw = entry.pattern.encode()
        except UnicodeEncodeError as exc:
            raise LocalProtocolError(f"pattern {entry.pattern!r} is not valid Unicode") from exc

        size += _ENTRY.size + len(raw)
        if len(raw) > 0xFFFF or size > MAX_CONTROL_FRAME:
            break  # reported below

        parts.append(_ENTRY.pack(entry.kind, entry.policy, len(raw)))
        parts.append(raw)

    if size > MAX_CONTROL_FRAME:
        raise LocalProtocolError(
            f"the subscription set needs {size} bytes; a SUBSCRIBE frame holds "
            f"{MAX_CONTROL_FRAME}: use fewer or shorter patterns"
        )

    return b"".join(parts)


def encode_segment(seq: int, loan: int, size: int, channel: bytes) -> bytes:
    """Encode a SEGMENT frame (send it with the memfd as its first descriptor).

    :param seq: the link's sequence number (u32).
    :param loan: the publication's number (u32).
    :param size: the payload's length, at least 1.
    :param channel: the encoded channel, NUL included (`lcm.encode_channel`).
    :return: the frame.
    :raises LocalProtocolError: if ``size`` is not positive.
    """
    if size < 1:
        raise LocalProtocolError(f"a segment holds at least 1 byte, not {size}")

    return _SEGMENT.pack(ControlMagic.SEGMENT, seq, loan, size) + channel


def encode_release(loans: list[int] | tuple[int, ...]) -> bytes:
    """Encode a RELEASE frame.

    :param loans: at most `MAX_RELEASES` loan numbers (u32 each).
    :return: the frame.
    :raises LocalProtocolError: for too many loans.
    """
    if len(loans) > MAX_RELEASES:
        raise LocalProtocolError(f"a RELEASE frame holds at most {MAX_RELEASES} loans")

    return _RELEASE.pack(ControlMagic.RELEASE, len(loans)) + struct.pack(f">{len(loans)}I", *loans)


def encode_bye() -> bytes:
    """Encode a BYE frame.

    :return: the frame.
    """
    return _MAGIC.pack(ControlMagic.BYE)


def encode_batch(frames: list[bytes] | tuple[bytes, ...]) -> bytes:
    """Encode a BATCH frame holding ``frames``, in order.

    :param frames: message or control frames, none empty, none a BATCH or SEGMENT.
    :return: the frame.
    :raises LocalProtocolError: if a frame cannot go in a batch, or they do not
        fit one (`MAX_CONTROL_FRAME` bytes in all).
    """
    parts = [_BATCH_PREFIX]
    size = 4
    pack = _LENGTH.pack
    for frame in frames:
        prefix = frame[:4]
        if not frame or prefix in _NOT_BATCHED:
            raise LocalProtocolError(f"a frame starting {prefix!r} cannot go in a BATCH")

        size += 2 + len(frame)
        if size > MAX_CONTROL_FRAME:
            raise LocalProtocolError(
                f"these frames need at least {size} bytes; a BATCH holds {MAX_CONTROL_FRAME}"
            )

        parts.append(pack(len(frame)))
        parts.append(frame)

    return b"".join(parts)


def is_batch(frame: bytes) -> bool:
    """Tell whether a frame is a BATCH (by its magic).

    :param frame: a received frame.
    :return: ``True`` for a BATCH.
    """
    return frame[:4] == _BATCH_PREFIX


def split_batch(frame: bytes) -> list[bytes]:
    """Return the frames in a BATCH, in order.

    :param frame: a received frame whose magic is `BATCH_MAGIC`.
    :return: the inner frames (at least one).
    :raises RemoteProtocolError: for anything malformed (the whole BATCH is);
        never any other exception.
    """
    if frame[:4] != _BATCH_PREFIX:
        raise RemoteProtocolError(f"not a BATCH frame (starts {frame[:4]!r})")

    end = len(frame)
    if end > MAX_CONTROL_FRAME:
        raise RemoteProtocolError(f"BATCH of {end} bytes; at most {MAX_CONTROL_FRAME}")

    frames: list[bytes] = []
    append = frames.append
    offset = 4
    while offset < end:
        if offset + 2 > end:
            raise RemoteProtocolError("BATCH ends inside a length")

        start = offset + 2
        offset = start + ((frame[offset] << 8) | frame[offset + 1])
        if offset > end or offset == start:
            raise RemoteProtocolError("BATCH holds an empty or cut frame")

        inner = frame[start:offset]
        prefix = inner[:4]
        if prefix in _NOT_BATCHED:
            raise RemoteProtocolError(f"BATCH holds a frame starting {prefix!r}")

        append(inner)

    if not frames:
        raise RemoteProtocolError("BATCH holds no frame")

    return frames


def is_control(frame: bytes) -> bool:
    """Tell whether a frame is a control frame (by its magic).

    :param frame: a received frame.
    :return: ``True`` for HELLO, SUBSCRIBE and BYE.
    """
    return frame[:4] in _CONTROL_PREFIXES


def decode_control(frame: bytes) -> Hello | Subscriptions | Bye | Segment | Release:
    """Decode a control frame.

    :param frame: one received frame whose magic is a `ControlMagic`.
    :return: the frame.
    :raises RemoteProtocolError: for anything malformed; never any other exception.
    """
    if len(frame) < 4:
        raise RemoteProtocolError(f"a frame of {len(frame)} bytes has no magic")

    magic = _MAGIC.unpack_from(frame)[0]
    if magic == ControlMagic.HELLO:
        if len(frame) < _HELLO.size:
            raise RemoteProtocolError(f"HELLO of {len(frame)} bytes is too short")

        _, version, flags, size = _HELLO.unpack_from(frame)
        if version != PROTOCOL_VERSION:
            raise RemoteProtocolError(f"HELLO of protocol version {version}; this speaks 1")

        address = frame[_HELLO.size : _HELLO.size + size]
        if not 0 < size <= 108 or len(address) != size:
            raise RemoteProtocolError(f"HELLO address of {size} bytes is impossible")

        return Hello(bytes(address), bool(flags & REPLY), bool(flags & FDS), bool(flags & BATCH))

    if magic == ControlMagic.SUBSCRIBE:
        return _decode_subscriptions(frame)

    if magic == ControlMagic.BYE:
        if len(frame) != 4:
            raise RemoteProtocolError(f"BYE of {len(frame)} bytes; it has 4")

        return Bye()

    if magic == ControlMagic.SEGMENT:
        if len(frame) < _SEGMENT.size + 2:
            raise RemoteProtocolError(f"SEGMENT of {len(frame)} bytes is too short")

        _, seq, loan, size = _SEGMENT.unpack_from(frame)
        channel, end = decode_channel(bytes(frame), _SEGMENT.size)
        if end != len(frame):
            raise RemoteProtocolError("SEGMENT has bytes after its channel name")

        if size == 0:
            raise RemoteProtocolError("SEGMENT of an empty payload")

        return Segment(seq, loan, size, channel)

    if magic == ControlMagic.RELEASE:
        if len(frame) < _RELEASE.size:
            raise RemoteProtocolError(f"RELEASE of {len(frame)} bytes is too short")

        count = _RELEASE.unpack_from(frame)[1]
        if len(frame) != _RELEASE.size + 4 * count:
            raise RemoteProtocolError(f"RELEASE of {len(frame)} bytes cannot hold {count} loans")

        return Release(struct.unpack_from(f">{count}I", frame, _RELEASE.size))

    raise RemoteProtocolError(f"not a control frame (magic {magic:#010x})")


def _decode_subscriptions(frame: bytes) -> Subscriptions:
    if len(frame) < _SUBSCRIBE.size:
        raise RemoteProtocolError(f"SUBSCRIBE of {len(frame)} bytes is too short")

    count = _SUBSCRIBE.unpack_from(frame)[1]
    offset = _SUBSCRIBE.size
    entries = []
    for _ in range(count):
        if offset + _ENTRY.size > len(frame):
            raise RemoteProtocolError("SUBSCRIBE ends inside an entry header")

        kind, policy, size = _ENTRY.unpack_from(frame, offset)
        offset += _ENTRY.size
        raw = frame[offset : offset + size]
        offset += size
        if len(raw) != size:
            raise RemoteProtocolError("SUBSCRIBE ends inside a pattern")

        try:
            entry = SubscriptionEntry(PatternKind(kind), PeerPolicy(policy), raw.decode())
        except ValueError as exc:  # unknown kind or policy, or not UTF-8
            raise RemoteProtocolError(f"bad SUBSCRIBE entry: {exc}") from None

        if (entry.kind is PatternKind.ALL) != (not entry.pattern):
            raise RemoteProtocolError("a SUBSCRIBE pattern is empty exactly when its kind is ALL")

        entries.append(entry)

    if offset != len(frame):
        raise RemoteProtocolError(f"{len(frame) - offset} bytes after the last SUBSCRIBE entry")

    return Subscriptions(tuple(entries))


class Interest:
    """A peer's subscription set, compiled: which topics it wants, and how.

    When several entries match a topic the strongest policy wins:
    ``BLOCK`` over ``DROP_OLDEST`` over ``DROP_NEWEST``.
    """

    __slots__ = ("_exact", "_patterns")

    def __init__(self, entries: tuple[SubscriptionEntry, ...] = ()) -> None:
        """Compile a subscription set.

        :param entries: the entries of a SUBSCRIBE frame.
        """
        self._exact: dict[str, PeerPolicy] = {}
        self._patterns: list[tuple[re.Pattern[str] | None, PeerPolicy]] = []
        for entry in entries:
            if entry.kind is PatternKind.EXACT:
                known = self._exact.get(entry.pattern)
                self._exact[entry.pattern] = _stronger(known, entry.policy)
            elif entry.kind is PatternKind.GLOB:
                self._patterns.append((re.compile(fnmatch.translate(entry.pattern)), entry.policy))
            else:
                self._patterns.append((None, entry.policy))

    def policy(self, topic: str) -> PeerPolicy | None:
        """Return how the peer wants ``topic``, or ``None`` if it does not.

        :param topic: a topic name.
        :return: the strongest matching policy, or ``None``.
        """
        policy = self._exact.get(topic)
        for regex, entry_policy in self._patterns:
            if regex is None or regex.fullmatch(topic) is not None:
                policy = _stronger(policy, entry_policy)

        return policy


_STRENGTH: Final = {PeerPolicy.DROP_NEWEST: 0, PeerPolicy.DROP_OLDEST: 1, PeerPolicy.BLOCK: 2}


def _stronger(known: PeerPolicy | None, other: PeerPolicy) -> PeerPolicy:
    if known is None or _STRENGTH[other] > _STRENGTH[known]:
        return other

    return known
