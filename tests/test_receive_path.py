"""The receive hot path gives what the general path gives.

`MessageReceiver.receive_lcm` has a fast path for short messages on known
channels, `receive_lcm_frames` handles many frames in one call, and the udpm
protocol's ``datagram_received`` inlines the fast path; all must
deliver the same messages, in the same order, with the same counters as
decoding each frame with the general path (``_receive_frame``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncbus._adapters.udpm import UDPMulticastProtocol
from asyncbus._core import lcm
from asyncbus._core.patterns import TopicPattern
from asyncbus._exceptions import WouldBlock
from asyncbus._message import Sender
from asyncbus._subscription import OverflowPolicy, Subscription, _Inbox, _Router

SOURCES = [("127.0.0.1", 1), ("127.0.0.1", 2)]  # as udpm keys its sources
SENDER = Sender("peer", 1, 2, 3)

frames = st.one_of(
    st.builds(
        lambda channel, seq, size: lcm.encode(lcm.encode_channel(channel), seq, bytes(size))[0],
        st.sampled_from(["x", "y", "z"]),
        st.one_of(st.integers(0, 8), st.integers(2**32 - 3, 2**32 - 1)),
        st.sampled_from([0, 5, 40]),
    ),
    st.binary(max_size=20),  # garbage
    st.builds(  # a fragment: goes to the reassembler
        lambda seq: lcm.encode(lcm.encode_channel("x"), seq, bytes(70_000))[0], st.integers(0, 8)
    ),
)
batches = st.lists(st.tuples(st.sampled_from(SOURCES), st.lists(frames, max_size=8)), max_size=8)


Source = tuple[str, int]
Feed = Callable[[UDPMulticastProtocol, Source, list[bytes]], None]


def _one_by_one(receiver: UDPMulticastProtocol, source: Source, batch: list[bytes]) -> None:
    for frame in batch:
        receiver.receive_lcm(frame, source, SENDER)


def _general(receiver: UDPMulticastProtocol, source: Source, batch: list[bytes]) -> None:
    for frame in batch:
        receiver._receive_frame(frame, source, SENDER, None)


def _datagrams(receiver: UDPMulticastProtocol, source: Source, batch: list[bytes]) -> None:
    for frame in batch:
        receiver.datagram_received(frame, source)


def _batched(receiver: UDPMulticastProtocol, source: Source, batch: list[bytes]) -> None:
    def other(frame: bytes) -> None:
        receiver.receive_lcm(frame, source, SENDER)

    receiver.receive_lcm_frames(batch, source, SENDER, other)


async def _run(
    feed: Feed, work: list[tuple[Source, list[bytes]]], max_message_size: int
) -> tuple[list[tuple[str, bytes | memoryview, int]], dict[str, int], tuple[int, int, int]]:
    router = _Router(lambda _: None)
    receiver = UDPMulticastProtocol(router, max_message_size=max_message_size)
    receiver._loop = asyncio.get_running_loop()
    inbox = _Inbox(TopicPattern("[xy]"), 16, OverflowPolicy.DROP_OLDEST, router)
    router.add(inbox)
    subscription = Subscription(inbox)
    got = []
    for source, batch in work:
        feed(receiver, source, batch)
        if source == SOURCES[1]:  # sometimes drain, sometimes let the queue overflow
            while True:
                try:
                    message = subscription.receive_nowait()
                except WouldBlock:
                    break

                got.append((message.topic, message.data, message.seq))

    statistics = receiver.receive_statistics()
    del statistics["datagrams"]  # counted by datagram_received only
    receiver.stop_receiving()
    subscription.close()
    closed = subscription.statistics()
    return got, statistics, (closed.delivered, closed.received, closed.dropped)


@pytest.mark.parametrize("max_message_size", [lcm.DEFAULT_MAX_MESSAGE_SIZE, 20], ids=["big", "20B"])
@pytest.mark.parametrize(
    "feed", [_one_by_one, _batched, _datagrams], ids=["receive_lcm", "frames", "udpm"]
)
@settings(deadline=None, max_examples=150, derandomize=True)
@given(work=batches)
def test_fast_paths_agree_with_the_general_path(
    feed: Feed, max_message_size: int, work: list[tuple[Source, list[bytes]]]
) -> None:
    expected = asyncio.run(_run(_general, work, max_message_size))
    assert asyncio.run(_run(feed, work, max_message_size)) == expected


@pytest.mark.parametrize("policy", list(OverflowPolicy), ids=str)
def test_subscription_counters(policy: OverflowPolicy) -> None:
    router = _Router(lambda _: None)
    inbox = _Inbox(TopicPattern("x"), 3, policy, router)
    router.add(inbox)
    subscription = Subscription(inbox)
    for seq in range(5):
        router.dispatch("x", b"", seq, SENDER)

    kept = 5 if policy is OverflowPolicy.BLOCK else 3
    assert [subscription.receive_nowait().seq for _ in range(2)] == (
        [2, 3] if policy is OverflowPolicy.DROP_OLDEST else [0, 1]
    )
    statistics = subscription.statistics()
    assert (statistics.delivered, statistics.received, statistics.queued) == (
        5 if policy is not OverflowPolicy.DROP_NEWEST else 3,
        2,
        kept - 2,
    )
    assert statistics.dropped == 5 - kept
    subscription.close()
    closed = subscription.statistics()
    assert (closed.received, closed.queued, closed.dropped) == (2, 0, 5 - 2)
