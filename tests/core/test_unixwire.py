"""The control frames of the AF_UNIX buses: exact bytes, round trips, garbage in, and
how a peer's compiled subscription set (`Interest`) picks a policy for a topic."""

from __future__ import annotations

import fnmatch
import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from asyncbus._core import lcm
from asyncbus._core.unixwire import (
    BATCH,
    BATCH_MAGIC,
    MAX_CONTROL_FRAME,
    MAX_RELEASES,
    PROTOCOL_VERSION,
    REPLY,
    Bye,
    ControlMagic,
    Hello,
    Interest,
    PatternKind,
    PeerPolicy,
    Release,
    Segment,
    SubscriptionEntry,
    Subscriptions,
    decode_control,
    encode_batch,
    encode_bye,
    encode_hello,
    encode_release,
    encode_segment,
    encode_subscriptions,
    is_batch,
    is_control,
    split_batch,
)
from asyncbus._exceptions import LocalProtocolError, RemoteProtocolError

HELLO = b"ABHL"
SUBSCRIBE = b"ABSB"
BYE = b"ABBY"

# A sun_path: 1 to 108 bytes, abstract ones starting with NUL.
addresses = st.binary(min_size=1, max_size=108)
# Patterns the wire can carry: UTF-8 text ("Cs", lone surrogates, is not UTF-8).
texts = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40)
policies = st.sampled_from(PeerPolicy)
entries = st.one_of(
    st.builds(SubscriptionEntry, st.just(PatternKind.EXACT), policies, texts),
    st.builds(SubscriptionEntry, st.just(PatternKind.GLOB), policies, texts),
    st.builds(SubscriptionEntry, st.just(PatternKind.ALL), policies, st.just("")),
)
entry_lists = st.lists(entries, max_size=20)
# Topics and glob patterns over a small alphabet, so that globs often match.
small_topics = st.text(st.sampled_from("ab/*?[]!^-\\x"), min_size=1, max_size=8)


def subscribe_frame(*raw_entries: tuple[int, int, bytes], count: int | None = None) -> bytes:
    """Build a SUBSCRIBE frame by hand, entry by entry (kind, policy, pattern bytes)."""
    frame = SUBSCRIBE + struct.pack(">H", len(raw_entries) if count is None else count)
    for kind, policy, pattern in raw_entries:
        frame += struct.pack(">BBH", kind, policy, len(pattern)) + pattern

    return frame


def hello_frame(
    address: bytes, *, version: int = 1, flags: int = 0, size: int | None = None
) -> bytes:
    """Build a HELLO frame by hand."""
    length = len(address) if size is None else size
    return HELLO + struct.pack(">BBH", version, flags, length) + address


class TestConstants:
    def test_magics_spell_their_names(self) -> None:
        assert ControlMagic.HELLO.to_bytes(4, "big") == HELLO
        assert ControlMagic.SUBSCRIBE.to_bytes(4, "big") == SUBSCRIBE
        assert ControlMagic.BYE.to_bytes(4, "big") == BYE

    def test_wire_values_never_change(self) -> None:
        assert [(k.name, k.value) for k in PatternKind] == [("EXACT", 1), ("GLOB", 2), ("ALL", 3)]
        assert [(p.name, p.value) for p in PeerPolicy] == [
            ("DROP_OLDEST", 0),
            ("DROP_NEWEST", 1),
            ("BLOCK", 2),
        ]
        assert (PROTOCOL_VERSION, REPLY) == (1, 0x01)

    def test_control_magics_are_not_lcm_magics(self) -> None:
        lcm_prefixes = {magic.to_bytes(4, "big") for magic in lcm.Magic}
        assert lcm_prefixes.isdisjoint({HELLO, SUBSCRIBE, BYE})

    def test_max_frame_is_one_lcm_datagram(self) -> None:
        assert lcm.MAX_SHORT_PAYLOAD + lcm.SHORT_HEADER.size == MAX_CONTROL_FRAME


class TestEncode:
    def test_hello_bytes(self) -> None:
        assert encode_hello(b"\0asyncbus/x/1-ab", reply=True) == (
            b"ABHL\x01\x01\x00\x10\0asyncbus/x/1-ab"
        )
        assert encode_hello(b"/tmp/b/7", reply=False) == b"ABHL\x01\x00\x00\x08/tmp/b/7"

    @pytest.mark.parametrize("size", [0, 109, 200], ids=["empty", "109-bytes", "200-bytes"])
    def test_hello_address_size_is_checked(self, size: int) -> None:
        with pytest.raises(LocalProtocolError, match=f"not {size}"):
            encode_hello(b"a" * size, reply=False)

    def test_subscribe_bytes(self) -> None:
        frame = encode_subscriptions(
            [
                SubscriptionEntry(PatternKind.EXACT, PeerPolicy.BLOCK, "imu"),
                SubscriptionEntry(PatternKind.GLOB, PeerPolicy.DROP_NEWEST, "s/*"),
                SubscriptionEntry(PatternKind.ALL, PeerPolicy.DROP_OLDEST, ""),
            ]
        )
        assert frame == (b"ABSB\x00\x03\x01\x02\x00\x03imu\x02\x01\x00\x03s/*\x03\x00\x00\x00")

    def test_empty_subscription_set(self) -> None:
        assert encode_subscriptions(()) == b"ABSB\x00\x00"

    def test_pattern_length_counts_utf8_bytes(self) -> None:
        frame = encode_subscriptions([SubscriptionEntry(PatternKind.EXACT, PeerPolicy.BLOCK, "é")])
        assert frame == b"ABSB\x00\x01\x01\x02\x00\x02" + "é".encode()

    def test_bye_bytes(self) -> None:
        assert encode_bye() == b"ABBY"

    def test_largest_subscription_set_fits(self) -> None:
        # 6 bytes of header, one entry of 4 + n bytes: the largest n that fits.
        pattern = "x" * (MAX_CONTROL_FRAME - 6 - 4)
        entry = SubscriptionEntry(PatternKind.EXACT, PeerPolicy.BLOCK, pattern)
        frame = encode_subscriptions([entry])
        assert len(frame) == MAX_CONTROL_FRAME
        assert decode_control(frame) == Subscriptions((entry,))

    def test_one_byte_too_many_is_refused(self) -> None:
        pattern = "x" * (MAX_CONTROL_FRAME - 6 - 4 + 1)
        entry = SubscriptionEntry(PatternKind.EXACT, PeerPolicy.BLOCK, pattern)
        with pytest.raises(LocalProtocolError, match="fewer or shorter patterns"):
            encode_subscriptions([entry])

    def test_too_many_small_entries_are_refused(self) -> None:
        entry = SubscriptionEntry(PatternKind.EXACT, PeerPolicy.BLOCK, "topic/number/0001")
        with pytest.raises(LocalProtocolError):
            encode_subscriptions([entry] * 4000)

    def test_more_than_65535_entries_are_refused(self) -> None:
        entry = SubscriptionEntry(PatternKind.ALL, PeerPolicy.BLOCK, "")
        with pytest.raises(LocalProtocolError, match="65536 subscriptions"):
            encode_subscriptions([entry] * 65_536)

    def test_pattern_over_u16_is_a_local_protocol_error(self) -> None:
        entry = SubscriptionEntry(PatternKind.GLOB, PeerPolicy.BLOCK, "x" * 65_536 + "*")
        with pytest.raises(LocalProtocolError):
            encode_subscriptions([entry])

    def test_pattern_not_utf8_is_a_local_protocol_error(self) -> None:
        entry = SubscriptionEntry(PatternKind.GLOB, PeerPolicy.BLOCK, "bad\udcff*")
        with pytest.raises(LocalProtocolError):
            encode_subscriptions([entry])

    @pytest.mark.parametrize(
        "entry",
        [
            SubscriptionEntry(PatternKind.ALL, PeerPolicy.BLOCK, "x"),
            SubscriptionEntry(PatternKind.EXACT, PeerPolicy.BLOCK, ""),
            SubscriptionEntry(PatternKind.GLOB, PeerPolicy.BLOCK, ""),
        ],
        ids=["all-with-pattern", "exact-empty", "glob-empty"],
    )
    def test_entries_peers_would_reject_are_refused(self, entry: SubscriptionEntry) -> None:
        with pytest.raises(LocalProtocolError):
            encode_subscriptions([entry])


class TestDecode:
    def test_hello(self) -> None:
        assert decode_control(b"ABHL\x01\x01\x00\x03abc") == Hello(b"abc", reply=True)
        assert decode_control(b"ABHL\x01\x00\x00\x03abc") == Hello(b"abc", reply=False)

    def test_hello_ignores_reserved_bytes_after_the_address(self) -> None:
        assert decode_control(hello_frame(b"abc") + b"future fields") == Hello(b"abc", False)

    def test_hello_ignores_unknown_flags(self) -> None:
        assert decode_control(hello_frame(b"abc", flags=0xF8)) == Hello(b"abc", reply=False)
        assert decode_control(hello_frame(b"abc", flags=0xF9)) == Hello(b"abc", reply=True)
        assert decode_control(hello_frame(b"abc", flags=0xFA)) == Hello(b"abc", False, fds=True)
        assert decode_control(hello_frame(b"abc", flags=0xFC)) == Hello(b"abc", False, batch=True)

    def test_hello_fds_flag_round_trip(self) -> None:
        frame = encode_hello(b"\0m", reply=False, fds=True)
        assert frame[5] == 0x02
        assert decode_control(frame) == Hello(b"\0m", reply=False, fds=True)

    def test_segment(self) -> None:
        frame = b"ABSG" + struct.pack(">IIQ", 7, 9, 1 << 33) + b"big\0"
        assert decode_control(frame) == Segment(seq=7, loan=9, size=1 << 33, channel="big")
        assert encode_segment(7, 9, 1 << 33, b"big\0") == frame

    @pytest.mark.parametrize(
        "frame",
        [
            b"ABSG" + struct.pack(">IIQ", 1, 2, 3),  # no channel
            b"ABSG" + struct.pack(">IIQ", 1, 2, 3) + b"\0",  # empty channel
            b"ABSG" + struct.pack(">IIQ", 1, 2, 3) + b"ch",  # no NUL
            b"ABSG" + struct.pack(">IIQ", 1, 2, 3) + b"ch\0x",  # bytes after the NUL
            b"ABSG" + struct.pack(">IIQ", 1, 2, 0) + b"ch\0",  # empty payload
            b"ABSG" + struct.pack(">II", 1, 2),  # cut short
            b"ABSG" + struct.pack(">IIQ", 1, 2, 3) + b"\xff\0",  # not UTF-8
        ],
        ids=["no-channel", "empty-channel", "no-nul", "trailing", "empty", "short", "not-utf8"],
    )
    def test_bad_segment(self, frame: bytes) -> None:
        with pytest.raises(RemoteProtocolError):
            decode_control(frame)

    def test_release(self) -> None:
        frame = b"ABRL\x00\x02" + struct.pack(">II", 5, 0xFFFFFFFF)
        assert decode_control(frame) == Release((5, 0xFFFFFFFF))
        assert encode_release([5, 0xFFFFFFFF]) == frame
        assert decode_control(encode_release([])) == Release(())

    @pytest.mark.parametrize(
        "frame",
        [b"ABRL\x00", b"ABRL\x00\x02" + b"\0" * 4, b"ABRL\x00\x01" + b"\0" * 5],
        ids=["short", "fewer-loans", "extra-bytes"],
    )
    def test_bad_release(self, frame: bytes) -> None:
        with pytest.raises(RemoteProtocolError):
            decode_control(frame)

    def test_release_encoder_bounds(self) -> None:
        assert len(encode_release(list(range(MAX_RELEASES)))) == 6 + 4 * MAX_RELEASES
        with pytest.raises(LocalProtocolError):
            encode_release(list(range(MAX_RELEASES + 1)))

    def test_segment_encoder_refuses_empty(self) -> None:
        with pytest.raises(LocalProtocolError):
            encode_segment(0, 0, 0, b"t\0")

    def test_hello_address_of_108_bytes(self) -> None:
        address = b"\0" + b"a" * 107
        assert decode_control(hello_frame(address)) == Hello(address, reply=False)

    def test_bye(self) -> None:
        assert decode_control(b"ABBY") == Bye()

    def test_subscribe(self) -> None:
        frame = subscribe_frame((1, 2, b"imu"), (2, 1, b"s/*"), (3, 0, b""))
        assert decode_control(frame) == Subscriptions(
            (
                SubscriptionEntry(PatternKind.EXACT, PeerPolicy.BLOCK, "imu"),
                SubscriptionEntry(PatternKind.GLOB, PeerPolicy.DROP_NEWEST, "s/*"),
                SubscriptionEntry(PatternKind.ALL, PeerPolicy.DROP_OLDEST, ""),
            )
        )

    def test_decoded_fields_have_their_enum_types(self) -> None:
        control = decode_control(subscribe_frame((2, 2, b"a*")))
        assert isinstance(control, Subscriptions)
        (entry,) = control.entries
        assert type(entry.kind) is PatternKind
        assert type(entry.policy) is PeerPolicy
        assert type(entry.pattern) is str

    def test_hello_address_is_bytes_even_from_a_bytearray(self) -> None:
        control = decode_control(bytearray(hello_frame(b"abc")))
        assert isinstance(control, Hello)
        assert type(control.address) is bytes

    @pytest.mark.parametrize(
        ("frame", "message"),
        [
            (b"", "0 bytes has no magic"),
            (b"ABH", "3 bytes has no magic"),
            (b"LC02", "not a control frame"),
            (b"LC03" + bytes(16), "not a control frame"),
            (b"ABXX", "not a control frame"),
            (b"\0\0\0\0", "not a control frame"),
            (b"ABHL", "HELLO of 4 bytes is too short"),
            (b"ABHL\x01\x00\x00", "HELLO of 7 bytes is too short"),
            (hello_frame(b"abc", version=0), "protocol version 0"),
            (hello_frame(b"abc", version=2), "protocol version 2"),
            (hello_frame(b""), "address of 0 bytes"),
            (hello_frame(b"a" * 109), "address of 109 bytes"),
            (hello_frame(b"ab", size=3), "address of 3 bytes"),
            (hello_frame(b"", size=0xFFFF), "address of 65535 bytes"),
            (b"ABSB", "SUBSCRIBE of 4 bytes is too short"),
            (b"ABSB\x00", "SUBSCRIBE of 5 bytes is too short"),
            (subscribe_frame(count=1), "inside an entry header"),
            (subscribe_frame((1, 0, b"a"), count=2), "inside an entry header"),
            (subscribe_frame((1, 0, b"a"), count=2) + b"\x01\x00", "inside an entry header"),
            (subscribe_frame((1, 0, b"abc"))[:-1], "inside a pattern"),
            (subscribe_frame((0, 0, b"a")), "bad SUBSCRIBE entry"),
            (subscribe_frame((4, 0, b"a")), "bad SUBSCRIBE entry"),
            (subscribe_frame((1, 3, b"a")), "bad SUBSCRIBE entry"),
            (subscribe_frame((1, 0xFF, b"a")), "bad SUBSCRIBE entry"),
            (subscribe_frame((1, 0, b"\xff\xfe")), "bad SUBSCRIBE entry"),
            (subscribe_frame((2, 0, b"\xed\xa0\x80*")), "bad SUBSCRIBE entry"),
            (subscribe_frame((3, 0, b"x")), "empty exactly when its kind is ALL"),
            (subscribe_frame((1, 0, b"")), "empty exactly when its kind is ALL"),
            (subscribe_frame((2, 0, b"")), "empty exactly when its kind is ALL"),
            (subscribe_frame((1, 0, b"a")) + b"\0", "1 bytes after the last SUBSCRIBE entry"),
            (subscribe_frame() + b"junk", "4 bytes after the last SUBSCRIBE entry"),
            (b"ABBY\0", "BYE of 5 bytes"),
            (b"ABBYABBY", "BYE of 8 bytes"),
        ],
        ids=[
            "empty",
            "three-bytes",
            "lcm-short-message",
            "lcm-fragment",
            "unknown-magic",
            "zero-magic",
            "hello-magic-only",
            "hello-header-cut",
            "hello-version-0",
            "hello-version-2",
            "hello-empty-address",
            "hello-address-109-bytes",
            "hello-address-cut",
            "hello-address-size-65535",
            "subscribe-magic-only",
            "subscribe-count-cut",
            "subscribe-count-without-entries",
            "subscribe-fewer-entries-than-count",
            "subscribe-entry-header-cut",
            "subscribe-pattern-cut",
            "subscribe-kind-0",
            "subscribe-kind-4",
            "subscribe-policy-3",
            "subscribe-policy-255",
            "subscribe-pattern-not-utf8",
            "subscribe-pattern-encoded-surrogate",
            "subscribe-all-with-pattern",
            "subscribe-exact-empty",
            "subscribe-glob-empty",
            "subscribe-trailing-byte",
            "subscribe-empty-set-trailing-bytes",
            "bye-trailing-byte",
            "bye-twice",
        ],
    )
    def test_malformed(self, frame: bytes, message: str) -> None:
        with pytest.raises(RemoteProtocolError, match=message):
            decode_control(frame)


class TestRoundTrip:
    @given(addresses, st.booleans())
    def test_hello(self, address: bytes, reply: bool) -> None:
        frame = encode_hello(address, reply=reply)
        assert is_control(frame)
        assert decode_control(frame) == Hello(address, reply)

    @given(entry_lists)
    def test_subscriptions(self, entries: list[SubscriptionEntry]) -> None:
        frame = encode_subscriptions(entries)
        assert is_control(frame)
        assert decode_control(frame) == Subscriptions(tuple(entries))

    def test_bye(self) -> None:
        assert is_control(encode_bye())
        assert decode_control(encode_bye()) == Bye()


def check_decoded(frame: Hello | Subscriptions | Bye | Segment | Release) -> None:
    """Assert what decode_control() promises about anything it returns."""
    if isinstance(frame, Hello):
        assert type(frame.address) is bytes
        assert 1 <= len(frame.address) <= 108
    elif isinstance(frame, Subscriptions):
        for item in frame.entries:
            assert (item.kind is PatternKind.ALL) == (item.pattern == "")
            Interest((item,))  # every decoded pattern compiles
    elif isinstance(frame, Segment):
        assert frame.size >= 1
        assert 1 <= len(frame.channel.encode()) <= lcm.MAX_CHANNEL_BYTES
    elif isinstance(frame, Release):
        assert all(0 <= loan <= 0xFFFFFFFF for loan in frame.loans)
    else:
        assert isinstance(frame, Bye)


class TestGarbage:
    """Any bytes give a frame or RemoteProtocolError, never another exception."""

    @given(st.binary(max_size=300))
    @example(b"")
    @example(b"ABSB\xff\xff")
    @example(b"ABHL\x01\x01\xff\xff")
    def test_any_bytes(self, data: bytes) -> None:
        self._decode(data)

    @given(st.sampled_from([HELLO, SUBSCRIBE, BYE, b"ABSG", b"ABRL"]), st.binary(max_size=300))
    def test_any_bytes_after_a_control_magic(self, magic: bytes, rest: bytes) -> None:
        self._decode(magic + rest)

    @given(
        st.one_of(
            st.builds(encode_hello, addresses, reply=st.booleans(), fds=st.booleans()),
            st.builds(encode_subscriptions, entry_lists),
            st.just(encode_bye()),
            st.builds(
                encode_segment,
                st.integers(0, 0xFFFFFFFF),
                st.integers(0, 0xFFFFFFFF),
                st.integers(1, 1 << 40),
                st.just(b"topic\0"),
            ),
            st.builds(encode_release, st.lists(st.integers(0, 0xFFFFFFFF), max_size=20)),
        ),
        st.data(),
    )
    def test_damaged_valid_frames(self, frame: bytes, data: st.DataObject) -> None:
        damaged = bytearray(frame)
        for _ in range(data.draw(st.integers(1, 4), label="changes")):
            position = data.draw(st.integers(0, len(damaged)), label="position")
            action = data.draw(st.sampled_from(["flip", "cut", "insert"]), label="action")
            if action == "cut":
                del damaged[position:]
            elif action == "insert":
                damaged[position:position] = data.draw(st.binary(min_size=1, max_size=4))
            elif position < len(damaged):
                damaged[position] ^= data.draw(st.integers(1, 255), label="mask")

        self._decode(bytes(damaged))

    @staticmethod
    def _decode(data: bytes) -> None:
        try:
            frame = decode_control(data)
        except RemoteProtocolError:
            return

        check_decoded(frame)


# Frames a BATCH may hold: anything non-empty that is not a BATCH or a SEGMENT.
inner_frames = st.binary(min_size=1, max_size=200).filter(lambda f: f[:4] not in (b"ABBT", b"ABSG"))


class TestBatch:
    def test_layout(self) -> None:
        frame = encode_batch([b"LC02abc", b"ABBY"])
        assert frame == b"ABBT" + b"\x00\x07LC02abc" + b"\x00\x04ABBY"
        assert BATCH_MAGIC.to_bytes(4, "big") == b"ABBT"
        assert is_batch(frame) and not is_batch(b"LC02abc") and not is_control(frame)

    def test_hello_flag(self) -> None:
        frame = encode_hello(b"\0m", reply=False, batch=True)
        assert frame[5] == BATCH == 0x04
        assert decode_control(frame) == Hello(b"\0m", reply=False, batch=True)

    @given(st.lists(inner_frames, min_size=1, max_size=40))
    def test_round_trip(self, frames: list[bytes]) -> None:
        assert split_batch(encode_batch(frames)) == frames

    def test_largest(self) -> None:
        one = b"x" * (MAX_CONTROL_FRAME - 4 - 2)
        assert split_batch(encode_batch([one])) == [one]
        with pytest.raises(LocalProtocolError, match="BATCH holds"):
            encode_batch([one + b"x"])

        with pytest.raises(LocalProtocolError, match="BATCH holds"):
            encode_batch([b"a" * 40_000, b"b" * 40_000])

    @pytest.mark.parametrize(
        "inner", [b"", b"ABBT\x00\x01x", b"ABSG" + bytes(20)], ids=["empty", "batch", "segment"]
    )
    def test_refuses_to_hold(self, inner: bytes) -> None:
        with pytest.raises(LocalProtocolError, match="cannot go in a BATCH"):
            encode_batch([b"LC02", inner])

    @pytest.mark.parametrize(
        ("frame", "match"),
        [
            (b"ABBT", "holds no frame"),
            (b"ABBT\x00", "ends inside a length"),
            (b"ABBT\x00\x05abc", "empty or cut"),
            (b"ABBT\x00\x00", "empty or cut"),
            (b"ABBT\x00\x01a\x00\x00", "empty or cut"),
            (b"ABBT\x00\x08ABBT\x00\x01x\x00", "ABBT"),
            (b"ABBT\x00\x05ABSG\x00", "ABSG"),
            (b"LC02\x00\x01a", "not a BATCH"),
            (b"ABBT" + b"\xff\xff" + bytes(65_535), "at most"),
        ],
        ids=[
            "no-frame",
            "cut-length",
            "cut-frame",
            "empty",
            "empty-last",
            "nested",
            "segment",
            "other",
            "too-large",
        ],
    )
    def test_malformed(self, frame: bytes, match: str) -> None:
        with pytest.raises(RemoteProtocolError, match=match):
            split_batch(frame)

    @given(st.binary(max_size=300))
    def test_garbage_after_the_magic(self, rest: bytes) -> None:
        try:
            frames = split_batch(b"ABBT" + rest)
        except RemoteProtocolError:
            return

        assert frames and all(frames) and b"".join(frames) != b"" and len(frames) <= len(rest) // 3


class TestIsControl:
    @pytest.mark.parametrize(
        ("frame", "expected"),
        [
            (b"ABHL", True),
            (b"ABSB\0\0", True),
            (b"ABBY", True),
            (b"LC02\0\0\0\0", False),
            (b"LC03", False),
            (b"ABH", False),
            (b"", False),
            (b"abhl", False),
        ],
        ids=["hello", "subscribe", "bye", "lc02", "lc03", "short", "empty", "lowercase"],
    )
    def test_by_magic(self, frame: bytes, expected: bool) -> None:
        assert is_control(frame) is expected


def entry(kind: PatternKind, policy: PeerPolicy, pattern: str = "") -> SubscriptionEntry:
    return SubscriptionEntry(kind, policy, pattern)


EXACT, GLOB, ALL = PatternKind.EXACT, PatternKind.GLOB, PatternKind.ALL
OLDEST, NEWEST, BLOCK = PeerPolicy.DROP_OLDEST, PeerPolicy.DROP_NEWEST, PeerPolicy.BLOCK
STRENGTH = {NEWEST: 0, OLDEST: 1, BLOCK: 2}  # the order the docs give: block > oldest > newest


class TestInterest:
    def test_nothing_wanted(self) -> None:
        assert Interest().policy("anything") is None

    def test_exact(self) -> None:
        interest = Interest((entry(EXACT, NEWEST, "imu"),))
        assert interest.policy("imu") is NEWEST
        assert interest.policy("imu2") is None
        assert interest.policy("IMU") is None
        assert interest.policy("im") is None

    def test_exact_with_glob_characters_is_literal(self) -> None:
        interest = Interest((entry(EXACT, BLOCK, "a*"),))
        assert interest.policy("a*") is BLOCK
        assert interest.policy("ab") is None

    def test_all(self) -> None:
        interest = Interest((entry(ALL, OLDEST),))
        assert interest.policy("x") is OLDEST
        assert interest.policy("sensors/imu/raw") is OLDEST

    @pytest.mark.parametrize(
        ("pattern", "topic", "matches"),
        [
            ("sensors/*", "sensors/imu", True),
            ("sensors/*", "sensors/imu/raw", True),  # * crosses /
            ("sensors/*", "sensors/", True),
            ("sensors/*", "sensors", False),
            ("sensors/*", "xsensors/imu", False),  # anchored at the start
            ("*imu", "sensors/imu", True),
            ("*imu", "sensors/imu/x", False),  # anchored at the end
            ("a?c", "abc", True),
            ("a?c", "ac", False),
            ("a?c", "a/c", True),
            ("[ab]x", "bx", True),
            ("[ab]x", "cx", False),
            ("[!ab]x", "cx", True),
            ("[!ab]x", "ax", False),
            ("[a-c]", "b", True),
            ("[]]", "]", True),
            ("a\\*", "a\\b", True),  # no escapes: the backslash is a character
            ("a\\*", "a*", False),
            ("[", "[", True),  # an unclosed set is a character
            ("*", "x\ny", True),  # topics may hold newlines
            ("A*", "a", False),  # case matters
        ],
        ids=lambda value: repr(value) if isinstance(value, str) else str(value),
    )
    def test_glob(self, pattern: str, topic: str, matches: bool) -> None:
        interest = Interest((entry(GLOB, BLOCK, pattern),))
        assert (interest.policy(topic) is BLOCK) is matches
        assert fnmatch.fnmatchcase(topic, pattern) is matches

    @pytest.mark.parametrize(
        ("entries", "topic", "expected"),
        [
            ((entry(EXACT, NEWEST, "t"), entry(GLOB, BLOCK, "t*")), "t", BLOCK),
            ((entry(EXACT, BLOCK, "t"), entry(GLOB, NEWEST, "t*")), "t", BLOCK),
            ((entry(EXACT, NEWEST, "t"), entry(ALL, OLDEST)), "t", OLDEST),
            ((entry(EXACT, OLDEST, "t"), entry(ALL, NEWEST)), "t", OLDEST),
            ((entry(EXACT, NEWEST, "t"), entry(EXACT, BLOCK, "t")), "t", BLOCK),
            ((entry(EXACT, BLOCK, "t"), entry(EXACT, NEWEST, "t")), "t", BLOCK),
            ((entry(EXACT, OLDEST, "t"), entry(EXACT, NEWEST, "t")), "t", OLDEST),
            ((entry(GLOB, NEWEST, "*"), entry(GLOB, OLDEST, "t?")), "tx", OLDEST),
            ((entry(GLOB, NEWEST, "*"), entry(GLOB, OLDEST, "t?")), "x", NEWEST),
            ((entry(ALL, NEWEST), entry(ALL, BLOCK), entry(ALL, OLDEST)), "x", BLOCK),
            ((entry(EXACT, BLOCK, "u"), entry(GLOB, NEWEST, "t*")), "t", NEWEST),
        ],
        ids=[
            "glob-block-beats-exact-newest",
            "exact-block-beats-glob-newest",
            "all-oldest-beats-exact-newest",
            "exact-oldest-beats-all-newest",
            "same-exact-twice-strongest",
            "same-exact-twice-strongest-first",
            "same-exact-oldest-beats-newest",
            "two-globs-both-match",
            "two-globs-one-matches",
            "three-alls",
            "only-matching-entries-count",
        ],
    )
    def test_strongest_policy_wins(
        self, entries: tuple[SubscriptionEntry, ...], topic: str, expected: PeerPolicy
    ) -> None:
        assert Interest(entries).policy(topic) is expected

    @given(
        st.lists(
            st.one_of(
                st.builds(entry, st.just(EXACT), policies, small_topics),
                st.builds(entry, st.just(GLOB), policies, small_topics),
                st.builds(entry, st.just(ALL), policies),
            ),
            max_size=6,
        ),
        small_topics,
    )
    def test_agrees_with_a_reference(self, entries: list[SubscriptionEntry], topic: str) -> None:
        matching = [
            e.policy
            for e in entries
            if e.kind is ALL
            or (e.kind is EXACT and e.pattern == topic)
            or (e.kind is GLOB and fnmatch.fnmatchcase(topic, e.pattern))
        ]
        expected = max(matching, key=STRENGTH.__getitem__) if matching else None
        assert Interest(tuple(entries)).policy(topic) is expected
