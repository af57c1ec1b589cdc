"""Reassembly of LCM fragments: order, loss, duplicates, bounds, timeouts, hostile headers."""

from __future__ import annotations

import dataclasses
import math
import random
import tracemalloc
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncbus._core import lcm
from asyncbus._core.reassembly import Reassembler, ReassemblyStatistics

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Sequence

A = ("127.0.0.1", 40001)
B = ("127.0.0.1", 40002)


def payload(size: int, seed: int = 0) -> bytes:
    """Return ``size`` bytes of a fixed pseudo-random pattern."""
    return random.Random(seed).randbytes(size)


def split(channel: str, seq: int, data: bytes, stride: int) -> list[lcm.Fragment]:
    """Cut a message the way LCM senders do, ``stride`` bytes after each header.

    Fragment 0 carries the channel, its NUL and ``stride - len(channel) - 1`` payload
    bytes; the others carry ``stride`` bytes, the last one what is left.
    """
    head = len(channel.encode()) + 1
    count = -(-(head + len(data)) // stride)
    first = stride - head
    fragments = [lcm.Fragment(seq, len(data), 0, 0, count, channel, data[:first])]
    for index in range(1, count):
        offset = first + (index - 1) * stride
        piece = data[offset : offset + stride]
        fragments.append(lcm.Fragment(seq, len(data), offset, index, count, None, piece))

    return fragments


def encoded(channel: str, seq: int, data: bytes) -> list[lcm.Fragment]:
    """Return the fragments ``lcm.encode`` sends for a message, decoded."""
    fragments = []
    for datagram in lcm.encode(lcm.encode_channel(channel), seq, data):
        fragment = lcm.decode(datagram)
        assert isinstance(fragment, lcm.Fragment)
        fragments.append(fragment)

    return fragments


def replace(fragment: lcm.Fragment, **changes: object) -> lcm.Fragment:
    """Return a copy of ``fragment`` with some fields changed."""
    fields = {
        name: getattr(fragment, name)
        for name in ("seq", "size", "offset", "index", "count", "channel", "data")
    }
    fields.update(changes)
    return lcm.Fragment(**fields)


def vars_of(fragment: lcm.Fragment) -> tuple[object, ...]:
    """Every field of a fragment, for comparisons."""
    return tuple(
        getattr(fragment, name)
        for name in ("seq", "size", "offset", "index", "count", "channel", "data")
    )


def feed_all(
    reassembler: Reassembler,
    sender: Hashable,
    fragments: Sequence[lcm.Fragment],
    now: float = 0.0,
) -> list[lcm.CompleteMessage]:
    """Feed fragments in the order given; return the messages that came out."""
    messages = []
    for fragment in fragments:
        message = reassembler.feed(sender, fragment, now)
        if message is not None:
            messages.append(message)

    return messages


def stats(reassembler: Reassembler) -> dict[str, int]:
    """Return the statistics as a dict, for comparisons that show every field."""
    return dataclasses.asdict(reassembler.statistics())


def zero(**counts: int) -> dict[str, int]:
    """Return statistics with every counter 0 except those given."""
    fields = dict.fromkeys(f.name for f in dataclasses.fields(ReassemblyStatistics))
    return {name: counts.get(name, 0) for name in fields}


class TestComplete:
    def test_in_order(self) -> None:
        data = payload(1000)
        fragments = split("CH", 5, data, stride=300)
        reassembler = Reassembler()

        assert len(fragments) == 4
        for fragment in fragments[:-1]:
            assert reassembler.feed(A, fragment, now=0.0) is None

        assert stats(reassembler) == zero(in_flight=1, bytes_in_flight=297 + 300 + 300)
        message = reassembler.feed(A, fragments[-1], now=0.0)
        assert message is not None
        assert (message.seq, message.channel, message.data) == (5, "CH", data)
        assert type(message.data) is bytes
        assert stats(reassembler) == zero(completed=1)

    def test_single_fragment_message(self) -> None:
        # LCM never sends this (it would fit in LC02) but it is well-formed.
        fragment = lcm.Fragment(1, 3, 0, 0, 1, "CH", b"abc")
        message = Reassembler().feed(A, fragment, now=0.0)

        assert message is not None
        assert (message.channel, message.data) == ("CH", b"abc")

    @pytest.mark.parametrize(
        "stride",
        [lcm.FRAGMENT_PAYLOAD, 64_000, 1_423, 100],
        ids=["lcm-c-linux", "lcm-java", "lcm-c-macos", "tiny"],
    )
    def test_any_sender_fragment_size(self, stride: int) -> None:
        data = payload(3 * stride + 17)
        messages = feed_all(Reassembler(), A, split("CHANNEL", 9, data, stride))

        assert [(m.channel, m.data) for m in messages] == [("CHANNEL", data)]

    def test_split_matches_lcm_encode(self) -> None:
        data = payload(200_000)
        ours = split("CH", 3, data, lcm.FRAGMENT_PAYLOAD)
        theirs = encoded("CH", 3, data)

        assert [vars_of(f) for f in ours] == [vars_of(f) for f in theirs]

    @settings(deadline=None, derandomize=True, max_examples=100)
    @given(order=st.permutations(range(6)))
    def test_any_order(self, order: list[int]) -> None:
        data = payload(510)
        fragments = split("CH", 1, data, stride=100)
        reassembler = Reassembler()

        assert len(fragments) == 6
        results = [reassembler.feed(A, fragments[index], now=0.0) for index in order]
        assert results[:-1] == [None] * 5
        last = results[-1]
        assert last is not None
        assert (last.channel, last.data) == ("CH", data)
        assert stats(reassembler) == zero(completed=1)

    @settings(deadline=None, derandomize=True, max_examples=20)
    @given(order=st.permutations(range(3)))
    def test_any_order_of_real_datagrams(self, order: list[int]) -> None:
        data = payload(2 * lcm.FRAGMENT_PAYLOAD + 1000)
        fragments = encoded("REAL", 77, data)

        assert len(fragments) == 3
        messages = feed_all(Reassembler(), A, [fragments[index] for index in order])
        assert [(m.seq, m.channel, m.data) for m in messages] == [(77, "REAL", data)]

    @settings(deadline=None, derandomize=True, max_examples=100)
    @given(st.data())
    def test_duplicates_are_ignored(self, data: st.DataObject) -> None:
        body = payload(510)
        fragments = split("CH", 1, body, stride=100)
        order = data.draw(st.permutations(range(6)))
        feed = list(order[:-1])
        extras = data.draw(st.lists(st.sampled_from(feed), max_size=6))
        for extra in extras:
            position = data.draw(st.integers(feed.index(extra) + 1, len(feed)))
            feed.insert(position, extra)

        feed.append(order[-1])
        reassembler = Reassembler()
        messages = feed_all(reassembler, A, [fragments[index] for index in feed])

        assert [m.data for m in messages] == [body]
        assert stats(reassembler) == zero(completed=1, duplicates=len(extras))

    @settings(deadline=None, derandomize=True, max_examples=50)
    @given(st.randoms(use_true_random=False))
    def test_interleaved_senders_and_sequence_numbers(self, rng: random.Random) -> None:
        # The same sequence number from two senders, two numbers from one sender:
        # four messages whose fragments must not mix.
        bodies = {(s, q): payload(450 + 10 * q, seed=s[1] + q) for s in (A, B) for q in (7, 8)}
        tagged = [
            (sender, fragment)
            for (sender, seq), body in bodies.items()
            for fragment in split(f"CH{seq}", seq, body, stride=100)
        ]
        rng.shuffle(tagged)
        reassembler = Reassembler()
        received = {}
        for sender, fragment in tagged:
            message = reassembler.feed(sender, fragment, now=0.0)
            if message is not None:
                assert (sender, message.seq) not in received
                received[sender, message.seq] = message

        assert {key: m.data for key, m in received.items()} == bodies
        assert all(m.channel == f"CH{m.seq}" for m in received.values())
        assert stats(reassembler) == zero(completed=4)

    def test_same_message_again_after_completion(self) -> None:
        # A sender may reuse a sequence number after 2**32 messages: a finished
        # message leaves nothing behind that would block the next one.
        reassembler = Reassembler()
        first = feed_all(reassembler, A, split("CH", 1, payload(300, 1), stride=100))
        second = feed_all(reassembler, A, split("CH", 1, payload(300, 2), stride=100))

        assert [m.data for m in first + second] == [payload(300, 1), payload(300, 2)]


class TestTimeout:
    def test_missing_fragment_expires(self) -> None:
        fragments = split("CH", 1, payload(510), stride=100)
        reassembler = Reassembler(timeout=2.0)
        feed_all(reassembler, A, fragments[:2] + fragments[3:], now=10.0)

        assert reassembler.next_deadline() == 12.0
        assert reassembler.expire(11.999) == 0
        assert reassembler.statistics().in_flight == 1
        assert reassembler.expire(12.0) == 1
        assert stats(reassembler) == zero(incomplete=1)
        assert reassembler.next_deadline() is None

    def test_late_fragment_of_expired_message_is_dropped(self) -> None:
        fragments = split("CH", 1, payload(510), stride=100)
        reassembler = Reassembler(timeout=2.0)
        feed_all(reassembler, A, fragments[:-1], now=0.0)
        reassembler.expire(2.0)

        # Too late: the rest of the message is gone; no new partial message starts.
        assert reassembler.feed(A, fragments[-1], now=2.5) is None
        assert stats(reassembler) == zero(incomplete=1)

    def test_every_fragment_extends_the_deadline(self) -> None:
        fragments = split("CH", 1, payload(510), stride=100)
        reassembler = Reassembler(timeout=2.0)
        reassembler.feed(A, fragments[0], now=0.0)
        reassembler.feed(A, fragments[1], now=1.5)

        assert reassembler.next_deadline() == 3.5
        assert reassembler.expire(3.0) == 0
        assert [m.data for m in feed_all(reassembler, A, fragments[2:], now=3.4)] == [payload(510)]

    def test_deadline_follows_least_recent_activity(self) -> None:
        first = split("ONE", 1, payload(510), stride=100)
        second = split("TWO", 2, payload(510), stride=100)
        reassembler = Reassembler(timeout=1.0)
        reassembler.feed(A, first[0], now=0.0)
        reassembler.feed(A, second[0], now=0.5)

        assert reassembler.next_deadline() == 1.0
        reassembler.feed(A, first[1], now=0.8)
        assert reassembler.next_deadline() == 1.5
        assert reassembler.expire(1.5) == 1
        assert reassembler.next_deadline() == 1.8
        assert reassembler.statistics().in_flight == 1

    def test_expire_drops_only_what_is_due(self) -> None:
        reassembler = Reassembler(timeout=1.0)
        for seq in range(10):
            reassembler.feed(A, split("CH", seq, payload(300), stride=100)[0], now=seq)

        assert reassembler.expire(5.0) == 5
        assert stats(reassembler)["in_flight"] == 5
        assert reassembler.next_deadline() == 6.0

    def test_rejection_lasts_while_fragments_keep_coming(self) -> None:
        # An oversize message's fragments keep being dropped, counted once, as long
        # as they arrive within the timeout of each other.
        reassembler = Reassembler(max_message_size=400, timeout=2.0)
        fragments = split("CH", 1, payload(510), stride=100)
        for step, fragment in enumerate(fragments):
            assert reassembler.feed(A, fragment, now=1.5 * step) is None

        assert stats(reassembler) == zero(oversize=1)
        # Long after the last one, the key is free again (and counted again).
        reassembler.expire(100.0)
        reassembler.feed(A, fragments[0], now=100.0)
        assert stats(reassembler) == zero(oversize=2)

    def test_clear(self) -> None:
        reassembler = Reassembler(max_message_size=400)
        reassembler.feed(A, split("CH", 1, payload(300), stride=100)[0], now=0.0)
        reassembler.feed(B, split("CH", 1, payload(300), stride=100)[0], now=0.0)
        oversize = split("CH", 2, payload(500), stride=100)
        reassembler.feed(A, oversize[0], now=0.0)

        assert reassembler.clear() == 2
        assert stats(reassembler) == zero(incomplete=2, oversize=1)
        assert reassembler.next_deadline() is None
        # Rejections are forgotten too.
        reassembler.feed(A, oversize[1], now=0.0)
        assert stats(reassembler) == zero(incomplete=2, oversize=2)


class TestBounds:
    def test_max_messages_evicts_first_seen(self) -> None:
        messages = [split(f"M{seq}", seq, payload(300, seq), stride=100) for seq in range(3)]
        reassembler = Reassembler(max_messages=2)
        reassembler.feed(A, messages[0][0], now=0.0)
        reassembler.feed(A, messages[1][0], now=1.0)
        reassembler.feed(A, messages[0][1], now=2.0)  # M0 active more recently than M1

        reassembler.feed(A, messages[2][0], now=3.0)
        # M0 goes: it was seen first, even though M1 has been idle longer.
        assert stats(reassembler) == zero(in_flight=2, bytes_in_flight=2 * 97, incomplete=1)
        assert [m.channel for m in feed_all(reassembler, A, messages[1][1:])] == ["M1"]
        assert [m.channel for m in feed_all(reassembler, A, messages[2][1:])] == ["M2"]
        # M0's leftovers neither come back to life nor evict anything.
        assert feed_all(reassembler, A, messages[0][2:]) == []
        assert stats(reassembler) == zero(completed=2, incomplete=1)

    def test_max_bytes(self) -> None:
        reassembler = Reassembler(max_message_size=1000, max_bytes=1000)
        first = split("AAA", 1, payload(1000, 1), stride=300)  # 296, 300, 300, 104 bytes
        second = split("BBB", 2, payload(1000, 2), stride=300)
        feed_all(reassembler, A, first[:3])

        assert stats(reassembler) == zero(in_flight=1, bytes_in_flight=896)
        reassembler.feed(A, second[0], now=0.0)  # 896 + 296 > 1000: AAA goes
        assert stats(reassembler) == zero(in_flight=1, bytes_in_flight=296, incomplete=1)
        assert [m.data for m in feed_all(reassembler, A, second[1:])] == [payload(1000, 2)]
        assert feed_all(reassembler, A, first[3:]) == []
        assert stats(reassembler) == zero(completed=1, incomplete=1)

    def test_max_bytes_evicts_first_seen(self) -> None:
        reassembler = Reassembler(max_message_size=1000, max_bytes=1000)
        first = split("AAA", 1, payload(1000, 1), stride=300)  # 296, 300, 300, 104 bytes
        second = split("BBB", 2, payload(700, 2), stride=300)  # 296, 300, 104 bytes
        third = split("CCC", 3, payload(700, 3), stride=300)
        reassembler.feed(A, first[0], now=0.0)
        reassembler.feed(A, second[0], now=1.0)
        reassembler.feed(A, first[1], now=2.0)  # AAA active more recently than BBB
        reassembler.feed(A, third[0], now=3.0)  # 892 + 296 > 1000

        # AAA goes (596 bytes), as it was seen first, though BBB has been idle longer.
        assert stats(reassembler) == zero(in_flight=2, bytes_in_flight=592, incomplete=1)
        assert [m.channel for m in feed_all(reassembler, A, second[1:])] == ["BBB"]
        assert feed_all(reassembler, A, first[2:]) == []

    def test_a_fragment_of_the_oldest_message_evicts_it(self) -> None:
        reassembler = Reassembler(max_message_size=1000, max_bytes=1000)
        first = split("AAA", 1, payload(1000, 1), stride=300)
        second = split("BBB", 2, payload(1000, 2), stride=300)
        reassembler.feed(A, first[0], now=0.0)  # 296 bytes
        feed_all(reassembler, A, second[:2])  # 596 more: 892

        # AAA is the oldest, so its own next fragment must evict AAA itself.
        assert reassembler.feed(A, first[1], now=0.0) is None
        assert stats(reassembler) == zero(in_flight=1, bytes_in_flight=596, incomplete=1)
        assert feed_all(reassembler, A, first[2:]) == []
        assert [m.data for m in feed_all(reassembler, A, second[2:])] == [payload(1000, 2)]

    def test_completing_fragment_needs_no_room(self) -> None:
        reassembler = Reassembler(max_message_size=1000, max_bytes=1000)
        first = split("AAA", 1, payload(1000, 1), stride=300)  # 296, 300, 300, 104 bytes
        second = split("BBB", 2, payload(1000, 2), stride=300)
        feed_all(reassembler, A, first[1:])  # 704 bytes, AAA seen first
        reassembler.feed(A, second[0], now=0.0)  # 296 more: exactly full

        # AAA's last piece would need room (and evict AAA itself) if it were stored.
        assert [m.data for m in feed_all(reassembler, A, first[:1])] == [payload(1000, 1)]
        assert stats(reassembler) == zero(in_flight=1, bytes_in_flight=296, completed=1)

    def test_oversize(self) -> None:
        reassembler = Reassembler(max_message_size=1000)
        at_limit = split("CH", 1, payload(1000), stride=300)
        over = split("CH", 2, payload(1001), stride=300)

        assert feed_all(reassembler, A, over) == []
        assert stats(reassembler) == zero(oversize=1)
        assert [m.data for m in feed_all(reassembler, A, at_limit)] == [payload(1000)]
        assert stats(reassembler) == zero(oversize=1, completed=1)

    def test_rejected_keys_are_bounded(self) -> None:
        reassembler = Reassembler(max_message_size=100, max_messages=2)
        fragments = [split("CH", seq, payload(200), stride=100) for seq in range(3)]
        for message in fragments:
            reassembler.feed(A, message[0], now=0.0)

        assert stats(reassembler) == zero(oversize=3)
        # Only the two latest rejections are remembered: seq 0 is counted again.
        reassembler.feed(A, fragments[2][1], now=0.0)
        reassembler.feed(A, fragments[0][1], now=0.0)
        assert stats(reassembler) == zero(oversize=4)

    def test_hostile_size_allocates_only_what_arrives(self) -> None:
        # Each header claims 256 MiB in 65 535 fragments; each fragment fits a layout.
        size, count = lcm.DEFAULT_MAX_MESSAGE_SIZE, 65_535
        kilobyte = b"x" * 1000
        fragments = [
            lcm.Fragment(0, size, 0, 0, count, "CH", kilobyte),
            lcm.Fragment(1, size, 5000, 5, count, None, kilobyte),
            lcm.Fragment(2, size, size - 1, count - 1, count, None, b"x"),
        ]
        reassembler = Reassembler()
        tracemalloc.start()
        try:
            feed_all(reassembler, A, fragments)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

        assert stats(reassembler) == zero(in_flight=3, bytes_in_flight=2001)
        assert peak < 64 * 1024

    @settings(deadline=None, derandomize=True, max_examples=200)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from([A, B]),
                st.integers(0, 3),  # seq
                st.integers(0, 600),  # size
                st.integers(0, 700),  # offset
                st.integers(0, 7),  # index
                st.integers(1, 8),  # count
                st.binary(max_size=300),
                st.floats(0, 10),
            ),
            max_size=60,
        )
    )
    def test_garbage_keeps_bounds(
        self, feeds: list[tuple[Hashable, int, int, int, int, int, bytes, float]]
    ) -> None:
        reassembler = Reassembler(max_message_size=500, max_messages=3, max_bytes=800, timeout=1)
        for sender, seq, size, offset, index, count, data, now in feeds:
            channel = "CH" if index == 0 else None
            fragment = lcm.Fragment(seq, size, offset, index, count, channel, data)
            message = reassembler.feed(sender, fragment, now)
            if message is not None:
                assert len(message.data) == size
                assert message.channel == "CH"

            statistics = reassembler.statistics()
            assert statistics.in_flight <= 3
            assert 0 <= statistics.bytes_in_flight <= 800
            deadline = reassembler.next_deadline()
            assert (deadline is None) == (statistics.in_flight == 0)
            if deadline is not None:
                reassembler.expire(deadline)
                assert reassembler.statistics().in_flight < statistics.in_flight

        reassembler.clear()
        assert reassembler.statistics().bytes_in_flight == 0


def _shift_middle(fragments: list[lcm.Fragment]) -> None:
    fragments[2] = replace(fragments[2], offset=fragments[2].offset + 1)


def _shorter_middle(fragments: list[lcm.Fragment]) -> None:
    fragments[2] = replace(fragments[2], data=fragments[2].data[:-1])


def _shorter_first(fragments: list[lcm.Fragment]) -> None:
    fragments[0] = replace(fragments[0], data=fragments[0].data[:-1])


def _short_last(fragments: list[lcm.Fragment]) -> None:
    fragments[-1] = replace(fragments[-1], data=fragments[-1].data[:-1])


def _last_moved_back(fragments: list[lcm.Fragment]) -> None:
    last = fragments[-1]
    fragments[-1] = replace(last, offset=last.offset - 1, data=b"?" + last.data)


def _other_size(fragments: list[lcm.Fragment]) -> None:
    fragments[1] = replace(fragments[1], size=fragments[1].size + 1)


def _other_count(fragments: list[lcm.Fragment]) -> None:
    fragments[1] = replace(fragments[1], count=fragments[1].count + 1)


def _past_the_end(fragments: list[lcm.Fragment]) -> None:
    fragments[-1] = replace(fragments[-1], data=fragments[-1].data + b"!")


def _index_out_of_range(fragments: list[lcm.Fragment]) -> None:
    fragments[1] = replace(fragments[1], index=fragments[1].count)


def _first_without_channel(fragments: list[lcm.Fragment]) -> None:
    fragments[0] = replace(fragments[0], channel=None)


def _first_with_offset(fragments: list[lcm.Fragment]) -> None:
    fragments[0] = replace(fragments[0], offset=1, data=fragments[0].data[:-1])


class TestInconsistent:
    @pytest.mark.parametrize(
        "corrupt",
        [
            _shift_middle,
            _shorter_middle,
            _shorter_first,
            _short_last,
            _last_moved_back,
            _other_size,
            _other_count,
            _past_the_end,
            _index_out_of_range,
            _first_without_channel,
            _first_with_offset,
        ],
        ids=lambda corrupt: corrupt.__name__.strip("_").replace("_", "-"),
    )
    @pytest.mark.parametrize("reverse", [False, True], ids=["in-order", "reversed"])
    def test_whole_message_dropped(
        self, corrupt: Callable[[list[lcm.Fragment]], None], reverse: bool
    ) -> None:
        fragments = split("CH", 1, payload(450), stride=100)  # 97, 100, 100, 100, 53
        corrupt(fragments)
        if reverse:
            fragments.reverse()

        reassembler = Reassembler()
        assert feed_all(reassembler, A, fragments) == []
        assert stats(reassembler) == zero(inconsistent=1)

    @pytest.mark.parametrize(
        "corrupt",
        [_shift_middle, _shorter_middle, _shorter_first, _last_moved_back],
        ids=lambda corrupt: corrupt.__name__.strip("_").replace("_", "-"),
    )
    def test_detected_before_the_message_could_complete(
        self, corrupt: Callable[[list[lcm.Fragment]], None]
    ) -> None:
        # Caught as soon as the fragments seen contradict each other, not by a length
        # check at the end: the memory is freed and the rest of the message dropped.
        fragments = split("CH", 1, payload(450), stride=100)
        corrupt(fragments)
        del fragments[3]  # never arrives
        reassembler = Reassembler()

        assert feed_all(reassembler, A, fragments) == []
        assert stats(reassembler) == zero(inconsistent=1)

    @pytest.mark.parametrize(
        "corrupt", [_shorter_first, _last_moved_back], ids=["first-shorter", "last-moved-back"]
    )
    def test_two_fragment_message(self, corrupt: Callable[[list[lcm.Fragment]], None]) -> None:
        fragments = split("CH", 1, payload(150), stride=100)  # 97, 53
        corrupt(fragments)
        reassembler = Reassembler()

        assert len(fragments) == 2
        assert feed_all(reassembler, A, fragments) == []
        assert stats(reassembler) == zero(inconsistent=1)

    @pytest.mark.parametrize(
        ("size", "count"),
        [(10 * 1024 * 1024, 1), (lcm.FRAGMENT_PAYLOAD * 2 + 1, 2), (3, 10)],
        ids=["10-mib-in-one-fragment", "more-than-udp-can-carry", "more-fragments-than-bytes"],
    )
    def test_impossible_header(self, size: int, count: int) -> None:
        reassembler = Reassembler()
        reassembler.feed(A, lcm.Fragment(1, size, 0, 0, count, "CH", b"x"), now=0.0)

        assert stats(reassembler) == zero(inconsistent=1)

    def test_only_the_bad_message_is_dropped(self) -> None:
        good = split("GOOD", 1, payload(450, 1), stride=100)
        bad = split("BAD", 2, payload(450, 2), stride=100)
        _shift_middle(bad)
        reassembler = Reassembler()
        messages = feed_all(
            reassembler, A, [f for pair in zip(good, bad, strict=True) for f in pair]
        )

        assert [m.channel for m in messages] == ["GOOD"]
        assert stats(reassembler) == zero(completed=1, inconsistent=1)


class TestArguments:
    @pytest.mark.parametrize(
        "arguments",
        [
            {"max_message_size": 0},
            {"max_messages": 0},
            {"max_message_size": 1000, "max_bytes": 999},
            {"timeout": 0.0},
            {"timeout": -1.0},
            {"timeout": math.nan},
            {"timeout": math.inf},
        ],
        ids=[
            "no-message-size",
            "no-messages",
            "bytes-below-message-size",
            "zero-timeout",
            "negative-timeout",
            "nan-timeout",
            "infinite-timeout",
        ],
    )
    def test_invalid(self, arguments: dict[str, float]) -> None:
        with pytest.raises(ValueError, match=next(iter(arguments)).split("_")[-1]):
            Reassembler(**arguments)  # type: ignore[arg-type]

    def test_max_bytes_defaults_to_max_message_size(self) -> None:
        reassembler = Reassembler(max_message_size=1000)
        first = split("AAA", 1, payload(1000, 1), stride=300)
        second = split("BBB", 2, payload(1000, 2), stride=300)
        feed_all(reassembler, A, first[:3])
        feed_all(reassembler, A, second[:1])

        assert stats(reassembler) == zero(in_flight=1, bytes_in_flight=296, incomplete=1)

    def test_statistics_are_a_frozen_snapshot(self) -> None:
        reassembler = Reassembler()
        snapshot = reassembler.statistics()
        reassembler.feed(A, split("CH", 1, payload(300), stride=100)[0], now=0.0)

        assert snapshot.in_flight == 0
        with pytest.raises(dataclasses.FrozenInstanceError):
            snapshot.in_flight = 5  # type: ignore[misc]

        assert not hasattr(snapshot, "__dict__")
