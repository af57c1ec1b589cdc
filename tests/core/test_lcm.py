"""The LCM wire codec: exact bytes, round trips for every size class, and garbage in."""

from __future__ import annotations

import array
import random
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncbus._core import lcm
from asyncbus._core.reassembly import Reassembler
from asyncbus._exceptions import LocalProtocolError, MessageTooLargeError, RemoteProtocolError

if TYPE_CHECKING:
    from collections.abc import Callable

MAX_UDP_PAYLOAD = 65_507  # IPv4: 65 535 - 20-byte IP header - 8-byte UDP header

# Channel names of 1..63 bytes of UTF-8 without NUL; "Cs" (lone surrogates) is not UTF-8.
channels = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\0"), min_size=1, max_size=63
).filter(lambda name: len(name.encode("utf-8")) <= lcm.MAX_CHANNEL_BYTES)

seqs = st.integers(0, 2**32 - 1)


def payload(size: int, seed: int = 0) -> bytes:
    """Return ``size`` bytes that differ from fragment to fragment (fixed seed)."""
    return random.Random(seed).randbytes(size)


def receive(datagrams: list[bytes]) -> lcm.CompleteMessage:
    """Decode datagrams in order, reassemble, and return the one message they carry."""
    reassembler = Reassembler()
    messages = []
    for datagram in datagrams:
        frame = lcm.decode(datagram)
        if isinstance(frame, lcm.CompleteMessage):
            messages.append(frame)
        else:
            message = reassembler.feed(("127.0.0.1", 7667), frame, now=0.0)
            if message is not None:
                messages.append(message)

    assert len(messages) == 1
    assert reassembler.statistics().in_flight == 0
    return messages[0]


def check_decoded(frame: lcm.CompleteMessage | lcm.Fragment) -> None:
    """Assert what decode() promises about anything it returns."""
    if isinstance(frame, lcm.CompleteMessage):
        assert isinstance(frame.channel, str)
    else:
        assert frame.index < frame.count
        assert frame.offset + len(frame.data) <= frame.size
        assert (frame.channel is not None) == (frame.index == 0)

    if frame.channel is not None:
        assert 1 <= len(frame.channel.encode("utf-8")) <= lcm.MAX_CHANNEL_BYTES
        assert "\0" not in frame.channel

    assert 0 <= frame.seq < 2**32


class TestConstants:
    def test_magic_spells_lc02_and_lc03(self) -> None:
        assert lcm.Magic.SHORT.to_bytes(4, "big") == b"LC02"
        assert lcm.Magic.FRAGMENT.to_bytes(4, "big") == b"LC03"

    def test_header_sizes(self) -> None:
        assert lcm.SHORT_HEADER.size == 8
        assert lcm.FRAGMENT_HEADER.size == 20

    def test_limits_fill_one_udp_datagram_exactly(self) -> None:
        assert lcm.MAX_SHORT_PAYLOAD + lcm.SHORT_HEADER.size == MAX_UDP_PAYLOAD
        assert lcm.FRAGMENT_PAYLOAD + lcm.FRAGMENT_HEADER.size == MAX_UDP_PAYLOAD


class TestEncodeChannel:
    @pytest.mark.parametrize(
        ("name", "wire"),
        [
            ("a", b"a\0"),
            ("CH", b"CH\0"),
            ("x" * 63, b"x" * 63 + b"\0"),
            ("é" * 31 + "a", "é".encode() * 31 + b"a\0"),
            ("🚀" * 15 + "abc", "🚀".encode() * 15 + b"abc\0"),
        ],
        ids=["one-byte", "two-bytes", "63-ascii", "63-bytes-2-byte-chars", "63-bytes-4-byte-chars"],
    )
    def test_valid(self, name: str, wire: bytes) -> None:
        assert lcm.encode_channel(name) == wire

    @pytest.mark.parametrize(
        "name",
        ["", "a\0b", "\0", "x" * 64, "é" * 32, "🚀" * 16, "a\ud800"],
        ids=[
            "empty",
            "nul-inside",
            "only-nul",
            "64-ascii",
            "64-bytes-2-byte-chars",
            "64-bytes-4-byte-chars",
            "lone-surrogate",
        ],
    )
    def test_invalid(self, name: str) -> None:
        with pytest.raises(LocalProtocolError):
            lcm.encode_channel(name)

    @pytest.mark.parametrize(
        "name", [b"CH", None, 5, ["C", "H"]], ids=["bytes", "none", "int", "list"]
    )
    def test_not_a_str(self, name: object) -> None:
        with pytest.raises(TypeError, match="must be str"):
            lcm.encode_channel(name)  # type: ignore[arg-type]

    def test_local_protocol_error_is_a_value_error(self) -> None:
        with pytest.raises(ValueError, match="empty"):
            lcm.encode_channel("")


class TestKnownBytes:
    """Datagrams written out by hand from the LCM UDP multicast protocol description."""

    def test_short_message(self) -> None:
        assert lcm.encode(b"CH\0", 42, b"hello") == [b"LC02\x00\x00\x00\x2aCH\x00hello"]

    def test_short_message_with_empty_payload(self) -> None:
        assert lcm.encode(b"CH\0", 0, b"") == [b"LC02\x00\x00\x00\x00CH\x00"]

    @pytest.mark.parametrize(
        ("seq", "wire"),
        [(0x01020304, b"\x01\x02\x03\x04"), (2**32 + 5, b"\x00\x00\x00\x05"), (-1, b"\xff" * 4)],
        ids=["big-endian", "wraps-past-2**32", "minus-one"],
    )
    def test_sequence_number_is_u32_big_endian(self, seq: int, wire: bytes) -> None:
        assert lcm.encode(b"CH\0", seq, b"") == [b"LC02" + wire + b"CH\0"]

    def test_fragment_headers(self) -> None:
        # "CH\0" + 65 497 bytes is 65 500 > 65 499, so two fragments. Fragment 0 carries
        # 65 487 - 3 = 65 484 payload bytes (0xFFCC); the message size is 0xFFD9.
        data = payload(65_497)
        first, second = lcm.encode(b"CH\0", 7, data)

        assert first[:23] == (
            b"LC03"
            b"\x00\x00\x00\x07"  # sequence
            b"\x00\x00\xff\xd9"  # payload size 65 497
            b"\x00\x00\x00\x00"  # offset 0
            b"\x00\x00"  # fragment 0
            b"\x00\x02"  # of 2
            b"CH\x00"
        )
        assert first[23:] == data[:65_484]
        assert len(first) == MAX_UDP_PAYLOAD
        assert second[:20] == (
            b"LC03"
            b"\x00\x00\x00\x07"
            b"\x00\x00\xff\xd9"
            b"\x00\x00\xff\xcc"  # offset 65 484
            b"\x00\x01"  # fragment 1
            b"\x00\x02"  # of 2
        )
        assert second[20:] == data[65_484:]
        assert len(second) == 20 + 13

    def test_decode_short_message(self) -> None:
        message = lcm.decode(b"LC02\x00\x00\x00\x2aCH\x00hello")

        assert isinstance(message, lcm.CompleteMessage)
        assert (message.seq, message.channel, message.data) == (42, "CH", b"hello")

    def test_decode_fragment_zero(self) -> None:
        datagram = b"LC03\x00\x00\x00\x07\x00\x00\xff\xd9\x00\x00\x00\x00\x00\x00\x00\x02CH\x00xyz"
        fragment = lcm.decode(datagram)

        assert isinstance(fragment, lcm.Fragment)
        assert (fragment.seq, fragment.size, fragment.offset) == (7, 65_497, 0)
        assert (fragment.index, fragment.count) == (0, 2)
        assert (fragment.channel, fragment.data) == ("CH", b"xyz")

    def test_decode_later_fragment_has_no_channel(self) -> None:
        datagram = b"LC03\x00\x00\x00\x07\x00\x00\xff\xd9\x00\x00\xff\xcc\x00\x01\x00\x02CH\x00"
        fragment = lcm.decode(datagram)

        assert isinstance(fragment, lcm.Fragment)
        assert (fragment.offset, fragment.index, fragment.channel) == (65_484, 1, None)
        assert fragment.data == b"CH\x00"  # only fragment 0 has a channel; this is payload


class TestRoundTrip:
    @pytest.mark.parametrize(
        "name", ["C", "CHANNEL", "x" * 63], ids=["1-byte", "7-bytes", "63-bytes"]
    )
    @pytest.mark.parametrize(
        ("size_of", "datagrams"),
        [
            (lambda head: 0, 1),
            (lambda head: 100, 1),
            (lambda head: lcm.MAX_SHORT_PAYLOAD - head, 1),
            (lambda head: lcm.MAX_SHORT_PAYLOAD - head + 1, 2),
            (lambda head: 2 * lcm.FRAGMENT_PAYLOAD - head, 2),
            (lambda head: 2 * lcm.FRAGMENT_PAYLOAD - head + 1, 3),
        ],
        ids=[
            "empty",
            "short",
            "largest-short",
            "smallest-fragmented",
            "two-full-fragments",
            "two-full-fragments-plus-one-byte",
        ],
    )
    def test_size_classes(self, name: str, size_of: Callable[[int], int], datagrams: int) -> None:
        channel = lcm.encode_channel(name)
        size = size_of(len(channel))
        data = payload(size)
        encoded = lcm.encode(channel, 99, data)

        assert len(encoded) == datagrams
        assert all(len(datagram) <= MAX_UDP_PAYLOAD for datagram in encoded)
        message = receive(encoded)
        assert (message.seq, message.channel, message.data) == (99, name, data)

    def test_several_mib(self) -> None:
        data = payload(5 * 1024 * 1024 + 3, seed=1)
        encoded = lcm.encode(lcm.encode_channel("BIG"), 2**32 - 1, data)

        # "BIG\0" + payload, 65 487 bytes at a time.
        assert len(encoded) == -(-(4 + len(data)) // lcm.FRAGMENT_PAYLOAD) == 81
        assert all(len(datagram) <= MAX_UDP_PAYLOAD for datagram in encoded)
        message = receive(encoded)
        assert (message.seq, message.channel) == (2**32 - 1, "BIG")
        assert message.data == data

    @settings(deadline=None, derandomize=True, max_examples=200)
    @given(name=channels, seq=seqs, data=st.binary(max_size=300))
    def test_any_channel_short(self, name: str, seq: int, data: bytes) -> None:
        (datagram,) = lcm.encode(lcm.encode_channel(name), seq, data)
        message = lcm.decode(datagram)

        assert isinstance(message, lcm.CompleteMessage)
        assert (message.seq, message.channel, message.data) == (seq, name, data)

    @settings(deadline=None, derandomize=True, max_examples=40)
    @given(name=channels, seq=seqs, around=st.integers(-3, 3), fragments=st.integers(1, 3))
    def test_any_channel_around_fragment_boundaries(
        self, name: str, seq: int, around: int, fragments: int
    ) -> None:
        channel = lcm.encode_channel(name)
        limit = lcm.MAX_SHORT_PAYLOAD if fragments == 1 else fragments * lcm.FRAGMENT_PAYLOAD
        data = payload(limit - len(channel) + around, seed=seq)
        encoded = lcm.encode(channel, seq, data)

        message = receive(encoded)
        assert (message.seq, message.channel, message.data) == (seq, name, data)

    @pytest.mark.parametrize(
        "wrap",
        [bytearray, memoryview, lambda raw: memoryview(array.array("d", raw))],
        ids=["bytearray", "memoryview", "memoryview-of-doubles"],
    )
    @pytest.mark.parametrize("size", [800, 80_000], ids=["short", "fragmented"])
    def test_buffers_are_measured_in_bytes(
        self, wrap: Callable[[bytes], bytearray | memoryview], size: int
    ) -> None:
        raw = payload(size)
        channel = lcm.encode_channel("BUF")

        # 80 000 bytes of doubles are 10 000 items: still too big for one datagram.
        assert lcm.encode(channel, 5, wrap(raw)) == lcm.encode(channel, 5, raw)

    def test_non_contiguous_buffer_is_refused(self) -> None:
        with pytest.raises(TypeError):
            lcm.encode(b"CH\0", 0, memoryview(b"abcdef")[::2])


class TestEncodeLimits:
    def test_payload_at_the_limit_is_accepted(self) -> None:
        assert len(lcm.encode(b"CH\0", 0, bytes(1000), max_message_size=1000)) == 1

    def test_payload_over_the_limit_is_refused(self) -> None:
        with pytest.raises(MessageTooLargeError, match="1001 bytes"):
            lcm.encode(b"CH\0", 0, bytes(1001), max_message_size=1000)

    def test_too_large_is_a_local_protocol_error(self) -> None:
        assert issubclass(MessageTooLargeError, LocalProtocolError)


class TestDecodeGarbage:
    @pytest.mark.parametrize(
        "datagram",
        [
            b"",
            b"LC0",
            b"LC02",
            b"LC02\x00\x00\x00\x01",
            b"LC02\x00\x00\x00\x01\x00payload",
            b"LC02\x00\x00\x00\x01" + b"x" * 64 + b"\x00",
            b"LC02\x00\x00\x00\x01CH",
            b"LC02\x00\x00\x00\x01\xff\xfe\x00",
            b"LC03" + bytes(15),
            b"LC03\x00\x00\x00\x01\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00\x00\x00CH\x00",
            b"LC03\x00\x00\x00\x01\x00\x00\x00\x10\x00\x00\x00\x00\x00\x02\x00\x02",
            b"LC03\x00\x00\x00\x01\x00\x00\x00\x10\x00\x00\x00\x05\x00\x00\x00\x02CH\x00",
            b"LC03\x00\x00\x00\x01\x00\x00\x00\x04\x00\x00\x00\x02\x00\x01\x00\x02abc",
            b"LC03\x00\x00\x00\x01\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00\x00\x02CH",
            b"LC04\x00\x00\x00\x01CH\x00",
            b"lc02\x00\x00\x00\x01CH\x00",
        ],
        ids=[
            "empty",
            "three-bytes",
            "magic-only",
            "short-header-only",
            "empty-channel",
            "channel-of-64-bytes",
            "channel-without-nul",
            "channel-not-utf8",
            "fragment-header-cut-short",
            "fragment-count-zero",
            "fragment-index-equals-count",
            "fragment-zero-with-offset",
            "fragment-data-past-the-end",
            "fragment-zero-channel-without-nul",
            "unknown-magic",
            "lowercase-magic",
        ],
    )
    def test_malformed(self, datagram: bytes) -> None:
        with pytest.raises(RemoteProtocolError):
            lcm.decode(datagram)

    def test_channel_of_63_bytes_is_accepted(self) -> None:
        message = lcm.decode(b"LC02\x00\x00\x00\x01" + b"x" * 63 + b"\x00")

        assert isinstance(message, lcm.CompleteMessage)
        assert message.channel == "x" * 63

    @settings(deadline=None, derandomize=True, max_examples=500)
    @given(
        datagram=st.one_of(
            st.binary(max_size=100),
            st.tuples(st.sampled_from([b"LC02", b"LC03"]), st.binary(max_size=100)).map(b"".join),
        )
    )
    def test_any_bytes(self, datagram: bytes) -> None:
        try:
            frame = lcm.decode(datagram)
        except RemoteProtocolError:
            return

        check_decoded(frame)

    @settings(deadline=None, derandomize=True, max_examples=300)
    @given(
        name=channels,
        seq=seqs,
        size=st.sampled_from([0, 10, 65_490, 70_000]),
        pick=st.integers(0, 2),
        mutation=st.sampled_from(["truncate", "flip-bit", "bad-magic", "swap-magic"]),
        where=st.integers(0, 2**20),
    )
    def test_mutated_datagrams(
        self, name: str, seq: int, size: int, pick: int, mutation: str, where: int
    ) -> None:
        encoded = lcm.encode(lcm.encode_channel(name), seq, payload(size, seed=seq))
        datagram = bytearray(encoded[pick % len(encoded)])
        if mutation == "truncate":
            del datagram[where % (len(datagram) + 1) :]
        elif mutation == "flip-bit":
            bit = where % (8 * len(datagram))
            datagram[bit // 8] ^= 1 << (bit % 8)
        elif mutation == "bad-magic":
            datagram[where % 4] ^= 0x80
        else:
            datagram[3] ^= ord("2") ^ ord("3")

        try:
            frame = lcm.decode(bytes(datagram))
        except RemoteProtocolError:
            # Only the header and the channel can be wrong; payload bits are opaque.
            if mutation == "flip-bit":
                assert where % (8 * len(datagram)) < 8 * (20 + lcm.MAX_CHANNEL_BYTES + 1)

            return

        assert mutation != "bad-magic"
        check_decoded(frame)
