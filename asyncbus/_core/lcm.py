"""LCM's UDP multicast wire format, byte for byte (sans-I/O).

Two datagram layouts, all integers big-endian (LCM "UDP Multicast Protocol"):

* short message (``LC02``)::

      u32 magic 0x4c433032 | u32 sequence | channel bytes | NUL | payload

* fragment of a large message (``LC03``)::

      u32 magic 0x4c433033 | u32 sequence | u32 payload size | u32 fragment offset
      | u16 fragment number | u16 fragment count | [channel | NUL, fragment 0 only] | data

  ``payload size`` counts payload bytes only (not the channel); ``fragment offset``
  is where this fragment's data starts within the payload. Fragment 0 carries the
  channel and NUL followed by as much payload as fits.

A message is sent short when ``len(channel) + 1 + len(payload)`` is at most
`MAX_SHORT_PAYLOAD`; otherwise it is cut into fragments that carry at
most `FRAGMENT_PAYLOAD` bytes after the 20-byte header. These are the
limits LCM's C library uses on Linux, so datagrams are the same size as LCM's.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Final

from .._exceptions import LocalProtocolError, MessageTooLargeError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "FRAGMENT_HEADER",
    "FRAGMENT_PAYLOAD",
    "MAX_CHANNEL_BYTES",
    "MAX_FRAGMENTS",
    "MAX_SHORT_PAYLOAD",
    "SHORT_HEADER",
    "CompleteMessage",
    "Decoder",
    "Fragment",
    "Magic",
    "decode",
    "decode_channel",
    "encode",
    "encode_channel",
]


class Magic(IntEnum):
    """The first four bytes of every LCM datagram. Values are on the wire."""

    SHORT = 0x4C433032  # b"LC02"
    FRAGMENT = 0x4C433033  # b"LC03"


SHORT_HEADER: Final = struct.Struct(">II")  # magic, sequence
FRAGMENT_HEADER: Final = struct.Struct(">IIIIHH")  # magic, seq, size, offset, number, count

MAX_CHANNEL_BYTES: Final = 63  # LCM_MAX_CHANNEL_NAME_LENGTH in lcm.h
MAX_SHORT_PAYLOAD: Final = 65_499  # LCM_SHORT_MESSAGE_MAX_SIZE (Linux), channel + NUL + payload
FRAGMENT_PAYLOAD: Final = 65_487  # LCM_FRAGMENT_MAX_PAYLOAD (Linux), bytes after the LC03 header
MAX_FRAGMENTS: Final = 65_535  # the fragment count is a u16
DEFAULT_MAX_MESSAGE_SIZE: Final = 256 * 1024 * 1024  # LCM_MAX_MESSAGE_SIZE (1 << 28)

_SHORT_PREFIX: Final = Magic.SHORT.to_bytes(4, "big")
_FRAGMENT_PREFIX: Final = Magic.FRAGMENT.to_bytes(4, "big")


class CompleteMessage:
    """A whole message: one ``LC02`` datagram, or ``LC03`` fragments put back together."""

    __slots__ = ("channel", "data", "seq")

    def __init__(self, seq: int, channel: str, data: bytes) -> None:
        self.seq = seq
        self.channel = channel
        self.data = data

    def __repr__(self) -> str:
        return (
            f"CompleteMessage(seq={self.seq}, channel={self.channel!r}, data=<{len(self.data)} B>)"
        )


class Fragment:
    """One ``LC03`` datagram: a piece of a large message.

    ``channel`` is the channel name on fragment 0 and ``None`` on the others.
    """

    __slots__ = ("channel", "count", "data", "index", "offset", "seq", "size")

    def __init__(
        self,
        seq: int,
        size: int,
        offset: int,
        index: int,
        count: int,
        channel: str | None,
        data: bytes,
    ) -> None:
        self.seq = seq
        self.size = size
        self.offset = offset
        self.index = index
        self.count = count
        self.channel = channel
        self.data = data

    def __repr__(self) -> str:
        return (
            f"Fragment(seq={self.seq}, size={self.size}, offset={self.offset}, "
            f"index={self.index}/{self.count}, channel={self.channel!r}, data=<{len(self.data)} B>)"
        )


def encode_channel(channel: str) -> bytes:
    """Return the on-wire form of a channel name: UTF-8 bytes and a NUL.

    :param channel: the channel (topic) name.
    :return: the encoded name with its terminating NUL.
    :raises LocalProtocolError: if the name is empty, holds a NUL or a lone
        surrogate, or is longer than `MAX_CHANNEL_BYTES` bytes of UTF-8.
    :raises TypeError: if ``channel`` is not a ``str``.
    """
    if not isinstance(channel, str):
        raise TypeError(f"a topic name must be str, not {type(channel).__name__}")

    try:
        # Strict UTF-8: "surrogatepass" would put bytes on the wire that are not UTF-8,
        # which decode() (and LCM's Python binding) refuse on the receiving side.
        raw = channel.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(
            f"a topic name must be valid Unicode (no lone surrogates): {channel!r}"
        ) from exc

    if not raw:
        raise LocalProtocolError("a topic name must not be empty")

    if len(raw) > MAX_CHANNEL_BYTES:
        raise LocalProtocolError(
            f"topic name is {len(raw)} bytes of UTF-8; LCM's wire format allows at most "
            f"{MAX_CHANNEL_BYTES}: {channel[:20]!r}..."
        )

    if b"\0" in raw:
        raise LocalProtocolError(f"a topic name must not contain NUL: {channel!r}")

    return raw + b"\0"


def encode(
    channel: bytes,
    seq: int,
    data: bytes | bytearray | memoryview,
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> list[bytes]:
    """Encode one message as the datagrams LCM would send.

    :param channel: the channel as returned by `encode_channel` (with NUL).
    :param seq: the sender's sequence number, taken modulo 2**32.
    :param data: the payload.
    :param max_message_size: the largest payload accepted.
    :return: one ``LC02`` datagram, or the ``LC03`` fragments in order.
    :raises MessageTooLargeError: if the payload exceeds ``max_message_size``
        or needs more than `MAX_FRAGMENTS` fragments.
    :raises TypeError: if ``data`` is a buffer that is not C-contiguous.
    """
    seq &= 0xFFFFFFFF
    if not isinstance(data, bytes):
        # Count bytes, not items: len() of a memoryview over array("d") is its item count.
        data = memoryview(data).cast("B")

    size = len(data)
    if size > max_message_size:
        raise MessageTooLargeError(
            f"payload of {size} bytes exceeds this bus's limit of {max_message_size} bytes"
        )

    if len(channel) + size <= MAX_SHORT_PAYLOAD:
        return [b"".join((SHORT_HEADER.pack(Magic.SHORT, seq), channel, data))]

    total = len(channel) + size
    count = -(-total // FRAGMENT_PAYLOAD)
    if count > MAX_FRAGMENTS:
        raise MessageTooLargeError(
            f"payload of {size} bytes needs {count} fragments; LCM allows {MAX_FRAGMENTS}"
        )

    first = FRAGMENT_PAYLOAD - len(channel)
    datagrams = [
        b"".join(
            (FRAGMENT_HEADER.pack(Magic.FRAGMENT, seq, size, 0, 0, count), channel, data[:first])
        )
    ]
    offset = first
    for index in range(1, count):
        end = offset + FRAGMENT_PAYLOAD
        header = FRAGMENT_HEADER.pack(Magic.FRAGMENT, seq, size, offset, index, count)
        datagrams.append(header + data[offset:end])
        offset = end

    return datagrams


def decode_channel(datagram: bytes, start: int) -> tuple[str, int]:
    """Return the channel that starts at ``start`` and the index after its NUL.

    :param datagram: a frame.
    :param start: where the NUL-terminated channel name begins.
    :return: the name and the index just after its NUL.
    :raises RemoteProtocolError: if the name is empty, not UTF-8 or unterminated.
    """
    end = datagram.find(0, start, start + MAX_CHANNEL_BYTES + 1)
    if end < 0:
        raise RemoteProtocolError("channel name is not NUL-terminated within 63 bytes")

    if end == start:
        raise RemoteProtocolError("empty channel name")

    try:
        return datagram[start:end].decode("utf-8"), end + 1
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"channel name is not UTF-8: {exc}") from exc


def decode(datagram: bytes) -> CompleteMessage | Fragment:
    """Decode one datagram.

    :param datagram: the bytes of one UDP datagram.
    :return: a `CompleteMessage` or a `Fragment`.
    :raises RemoteProtocolError: for anything that is not a valid LCM datagram;
        never any other exception.
    """
    prefix = datagram[:4]
    if prefix == _SHORT_PREFIX:
        if len(datagram) < SHORT_HEADER.size + 2:
            raise RemoteProtocolError(f"LC02 datagram of {len(datagram)} bytes is too short")

        channel, start = decode_channel(datagram, SHORT_HEADER.size)
        seq = int.from_bytes(datagram[4:8], "big")
        return CompleteMessage(seq, channel, datagram[start:])

    if prefix == _FRAGMENT_PREFIX:
        if len(datagram) < FRAGMENT_HEADER.size:
            raise RemoteProtocolError(f"LC03 datagram of {len(datagram)} bytes is too short")

        _, seq, size, offset, index, count = FRAGMENT_HEADER.unpack_from(datagram)
        if count == 0 or index >= count:
            raise RemoteProtocolError(f"fragment number {index} of {count} is impossible")

        start = FRAGMENT_HEADER.size
        name: str | None = None  # only fragment 0 carries the channel
        if index == 0:
            if offset != 0:
                raise RemoteProtocolError(f"fragment 0 has offset {offset}, not 0")

            name, start = decode_channel(datagram, start)

        data = datagram[start:]
        if offset + len(data) > size:
            raise RemoteProtocolError(
                f"fragment {index} ends at byte {offset + len(data)} of a {size}-byte message"
            )

        return Fragment(seq, size, offset, index, count, name, data)

    raise RemoteProtocolError(f"not an LCM datagram (first bytes {bytes(prefix)!r})")


_SHORT_START: Final = struct.Struct(">II")  # magic, sequence: the LC02 header in one unpack
_SHORT_MAGIC: Final = int(Magic.SHORT)  # a plain int compares faster than the enum member
_CHANNEL_CACHE_LIMIT: Final = 1024  # distinct channel names a Decoder remembers


class Decoder:
    """`decode` that remembers channel names, for the receive hot path.

    Decoding a short message is mostly finding and UTF-8-decoding its channel;
    a bus sees few distinct channels, so a known channel costs one dict lookup,
    and the channel of the previous short message one ``startswith``.
    The results are exactly those of `decode`.
    """

    __slots__ = ("_channels", "_last_channel", "_last_name", "_last_start")

    def __init__(self) -> None:
        self._channels: dict[bytes, str] = {b"?": "?"}
        # The last short message's channel with its NUL: consecutive messages mostly share it.
        # Any known channel will do to start with: a hit decodes as decode() would.
        self._last_channel = b"?\0"
        self._last_name = "?"
        self._last_start = 10  # where the payload starts after it

    def decode_short(self, datagram: bytes) -> tuple[str, int, bytes] | None:
        """Decode an ``LC02`` datagram on a known channel, without building a frame object.

        The receive hot path: what `decode` would return, as a tuple.

        :param datagram: the bytes of one datagram.
        :return: ``(channel, seq, payload)``, or ``None`` for anything else
            (a fragment, an unknown channel, garbage): then call `decode`.
        """
        magic, seq = _SHORT_START.unpack_from(datagram) if len(datagram) > 9 else (0, 0)
        if magic != _SHORT_MAGIC:
            return None

        if datagram.startswith(self._last_channel, 8):
            return self._last_name, seq, datagram[self._last_start :]

        end = datagram.find(0, 8, 8 + MAX_CHANNEL_BYTES + 1)
        name = self._channels.get(datagram[8:end]) if end > 8 else None
        if name is None:
            return None

        self._last_channel = datagram[8 : end + 1]
        self._last_name = name
        self._last_start = end + 1
        return name, seq, datagram[end + 1 :]

    def decode(self, datagram: bytes) -> CompleteMessage | Fragment:
        """Decode one datagram, as `decode` does.

        :param datagram: the bytes of one UDP datagram.
        :return: a `CompleteMessage` or a `Fragment`.
        :raises RemoteProtocolError: for anything that is not a valid LCM datagram.
        """
        short = self.decode_short(datagram)
        if short is not None:
            return CompleteMessage(short[1], short[0], short[2])

        frame = decode(datagram)
        name = frame.channel
        if name is not None:
            if len(self._channels) >= _CHANNEL_CACHE_LIMIT:
                self._channels.clear()

            self._channels[name.encode()] = name

        return frame
