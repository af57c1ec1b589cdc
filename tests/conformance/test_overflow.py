"""Overflow policies: subscription queues on every transport, and on the unix
transports what a publisher does when a subscriber's socket is full.

A subscriber stops reading in one of two ways: a member process that is
SIGSTOPped, or a bus in this process whose ``block`` subscription is full (the
bus then stops reading its socket). The publisher first queues ``peer_queue``
messages for it, then applies the subscriber's policy: ``block`` waits (at most
``stall_timeout``), the drop policies drop for that subscriber alone, and every
drop shows on both sides (``send_drops`` at the publisher, ``gaps`` at the
subscriber).
"""

from __future__ import annotations

import asyncio

import pytest

import asyncbus
from tests._bus_support import TIMEOUT, receive, receive_many, wait_until
from tests.conformance._support import Member, Transport, drain, index_of, payload

transports = pytest.mark.transports

LOCAL = 10  # messages sent to a subscription of MAXSIZE
MAXSIZE = 4
PEER_QUEUE = 16
# 300 messages of 2 KiB: more than a seqpacket connection buffers (about 200 KiB,
# the sender's SO_SNDBUF) plus PEER_QUEUE, and far more than max_dgram_qlen (10).
BURST = 300
BURST_SIZE = 2048
STALL = 0.25  # seconds: stall_timeout
WAIT_PROOF = 0.1  # seconds a publish() must go on waiting to count as waiting


class TestSubscriptionQueue:
    @pytest.mark.parametrize(
        ("policy", "kept"),
        [("drop_oldest", range(LOCAL - MAXSIZE, LOCAL)), ("drop_newest", range(MAXSIZE))],
        ids=["drop_oldest", "drop_newest"],
    )
    async def test_drop_policy(self, transport: Transport, policy: str, kept: range) -> None:
        url = transport.url()
        async with (
            asyncbus.connect(url) as publisher,
            asyncbus.connect(url) as subscriber,
            subscriber.subscribe("queue", maxsize=MAXSIZE, policy=policy) as sub,
            subscriber.subscribe("fence") as fence,
        ):
            await transport.subscribed(publisher, "queue")
            await transport.subscribed(publisher, "fence")
            for index in range(LOCAL):
                await publisher.publish("queue", payload(index, 64))

            # One publisher's messages arrive in order: after the fence, all are in.
            await publisher.publish("fence", b"")
            await receive(fence)
            queue, stats = sub.statistics(), subscriber.statistics()
            indices = [index_of(msg.data) for msg in drain(sub)]

        assert indices == list(kept)
        assert (queue.queued, queue.dropped) == (MAXSIZE, LOCAL - MAXSIZE)
        assert stats.overflow_drops == LOCAL - MAXSIZE
        assert (stats.gaps, publisher.statistics().send_drops) == (0, 0)  # nothing lost on the way

    async def test_block_keeps_everything(self, transport: Transport) -> None:
        url = transport.url()
        async with (
            asyncbus.connect(url) as publisher,
            asyncbus.connect(url) as subscriber,
            subscriber.subscribe("queue", maxsize=MAXSIZE, policy="block") as sub,
        ):
            await transport.subscribed(publisher, "queue")
            for index in range(LOCAL):
                await publisher.publish("queue", payload(index, 64))

            messages = await receive_many(sub, LOCAL)
            queue, stats = sub.statistics(), subscriber.statistics()

        assert [index_of(msg.data) for msg in messages] == list(range(LOCAL))
        assert (queue.delivered, queue.dropped, stats.overflow_drops) == (LOCAL, 0, 0)
        assert (stats.gaps, stats.kernel_drops, publisher.statistics().send_drops) == (0, 0, 0)


async def publish_burst(bus: asyncbus.Bus, topic: str = "data") -> None:
    for index in range(BURST):
        await bus.publish(topic, payload(index, BURST_SIZE))


@transports(peer_policies=True)
class TestPublisherSide:
    @pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
    async def test_drop_policy_drops_for_the_slow_subscriber_only(
        self, transport: Transport, policy: str
    ) -> None:
        url = transport.url(peer_queue=PEER_QUEUE)
        async with (
            asyncbus.connect(url) as bus,
            asyncbus.connect(url) as fast,
            fast.subscribe("data", maxsize=BURST, policy="block") as fast_sub,
            Member("subscribe", url, "data", "--policy", policy, "--end", "end") as slow,
        ):
            await slow.event("ready")
            await transport.subscribed(bus, "data", 2)
            await transport.subscribed(bus, "end")
            await slow.stop()
            # Neither publish() nor the fast subscriber waits for the stopped one.
            async with asyncio.timeout(TIMEOUT):
                await publish_burst(bus)
                fast_got = await receive_many(fast_sub, BURST)

            drops = bus.statistics().send_drops
            slow.resume()
            await bus.publish("end", b"")  # "end" is a block subscription: never dropped
            done = await slow.event("done")
            assert await slow.exit_code() == 0

        assert [index_of(msg.data) for msg in fast_got] == list(range(BURST))
        assert fast.statistics().gaps == 0
        got = done["indices"]
        assert 0 < drops < BURST
        assert done["statistics"]["gaps"] == drops  # counted alike on both sides
        assert len(got) == BURST - drops
        assert done["seqs"] == got  # the link numbered the dropped messages too
        assert done["corrupt"] == 0
        if policy == "drop_newest":
            assert got == list(range(BURST - drops))  # what fit; the rest was dropped
        else:
            # What the kernel took at once, then the newest PEER_QUEUE.
            head = len(got) - PEER_QUEUE
            assert got == [*range(head), *range(BURST - PEER_QUEUE, BURST)]

    async def test_block_makes_publish_wait_and_loses_nothing(self, transport: Transport) -> None:
        url = transport.url(peer_queue=PEER_QUEUE, stall_timeout=0)  # 0: wait as long as it takes
        async with (
            asyncbus.connect(url) as bus,
            asyncbus.connect(url) as slow,
            slow.subscribe("data", maxsize=MAXSIZE, policy="block") as sub,
        ):
            await transport.subscribed(bus, "data")
            publishing = asyncio.create_task(publish_burst(bus))
            # Nobody reads: the subscription fills, the subscriber stops reading its
            # socket, the socket and the publisher's queue fill, and publish() waits.
            # Only a bound tells "waits" from "is slow"; a slow host can only pass it.
            waited, _ = await asyncio.wait({publishing}, timeout=WAIT_PROOF)
            published_while_waiting = bus.statistics().published
            messages = await receive_many(sub, BURST)  # reading makes room
            async with asyncio.timeout(TIMEOUT):
                await publishing

            sent, stats = bus.statistics(), slow.statistics()

        assert not waited, "publish() did not wait for a full block subscriber"
        assert published_while_waiting < BURST
        assert [index_of(msg.data) for msg in messages] == list(range(BURST))
        assert [msg.seq for msg in messages] == list(range(BURST))
        assert (sent.published, sent.send_drops) == (BURST, 0)
        assert (stats.gaps, stats.overflow_drops) == (0, 0)

    async def test_the_strongest_policy_of_a_member_wins(self, transport: Transport) -> None:
        """A member with a ``drop_newest`` and a ``block`` subscription on a topic: block."""
        url = transport.url(peer_queue=PEER_QUEUE, stall_timeout=STALL)
        async with (
            asyncbus.connect(url) as bus,
            asyncbus.connect(url) as slow,
            slow.subscribe("data", maxsize=BURST, policy="drop_newest") as dropping,
            slow.subscribe("d*", maxsize=BURST, policy="block") as blocking,
            slow.subscribe("stuck", maxsize=1, policy="block") as stuck,
        ):
            await transport.subscribed(bus, "data")
            await transport.subscribed(bus, "stuck")
            await bus.publish("stuck", b"fills it")  # the slow bus stops reading
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with asyncio.timeout(TIMEOUT):
                await publish_burst(bus)

            elapsed = loop.time() - started
            await receive(stuck)
            drops = bus.statistics().send_drops
            both = [await receive_many(sub, BURST - drops) for sub in (dropping, blocking)]

        assert elapsed >= STALL * 0.9, "publish() dropped at once: drop_newest won over block"
        assert both[0] == both[1]

    async def test_stall_timeout_bounds_the_wait(self, transport: Transport) -> None:
        url = transport.url(peer_queue=PEER_QUEUE, stall_timeout=STALL)
        async with (
            asyncbus.connect(url) as bus,
            asyncbus.connect(url) as slow,
            slow.subscribe("data", maxsize=MAXSIZE, policy="block") as sub,
            slow.subscribe("end", policy="block") as end,
        ):
            await transport.subscribed(bus, "data")
            await transport.subscribed(bus, "end")
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with asyncio.timeout(TIMEOUT):
                await publish_burst(bus)

            elapsed = loop.time() - started
            drops = bus.statistics().send_drops
            # Reading drains the publisher's queue for it: it is no longer stalled.
            messages = await receive_many(sub, BURST - drops)
            await bus.publish("end", b"")
            await receive(end)
            stats = slow.statistics()

        # One wait of stall_timeout, then the stalled subscriber is dropped for.
        assert STALL * 0.9 <= elapsed < STALL + 1.5
        assert 0 < drops < BURST
        assert [index_of(msg.data) for msg in messages] == list(range(BURST - drops))
        assert stats.gaps == drops

    async def test_close_with_a_stalled_peer_is_bounded(self, transport: Transport) -> None:
        """aclose() gives queued messages up after stall_timeout (and its BYE a short grace)."""
        url = transport.url(peer_queue=PEER_QUEUE, stall_timeout=STALL)
        async with (
            asyncbus.connect(url) as slow,
            slow.subscribe("data", maxsize=MAXSIZE, policy="drop_newest") as sub,
            slow.subscribe("stuck", maxsize=1, policy="block") as stuck,
        ):
            bus = asyncbus.connect(url)
            await bus.open()
            try:
                await transport.subscribed(bus, "data")
                await transport.subscribed(bus, "stuck")
                await bus.publish("stuck", b"fills it")  # the slow bus stops reading
                await publish_burst(bus)  # its socket fills, then the queue; then drops
                dropped_by_policy = bus.statistics().send_drops
            finally:
                loop = asyncio.get_running_loop()
                started = loop.time()
                async with asyncio.timeout(TIMEOUT):
                    await bus.aclose()

                elapsed = loop.time() - started

            await receive(stuck)  # the slow bus reads again
            got = [index_of(msg.data) for msg in await receive_many(sub, MAXSIZE)]

        assert STALL * 0.9 <= elapsed < STALL + 1.5
        # What never left the publisher's queue is counted when it gives up.
        assert bus.statistics().send_drops - dropped_by_policy == PEER_QUEUE
        assert got == list(range(MAXSIZE))

    async def test_bye_reaches_a_peer_that_was_slow(self, transport: Transport) -> None:
        """A member closes while a peer's socket is full, and the peer then reads again."""
        url = transport.url(peer_queue=PEER_QUEUE, stall_timeout=STALL)
        async with (
            asyncbus.connect(url) as slow,
            slow.subscribe("data", maxsize=MAXSIZE, policy="drop_newest") as sub,
            slow.subscribe("stuck", maxsize=1, policy="block") as stuck,
        ):
            bus = asyncbus.connect(url)
            await bus.open()
            try:
                await transport.subscribed(bus, "data")
                await transport.subscribed(bus, "stuck")
                await bus.publish("stuck", b"fills it")  # the slow bus stops reading
                await publish_burst(bus)
                dropped_by_policy = bus.statistics().send_drops
            finally:
                closing = asyncio.create_task(bus.aclose())

            async with asyncio.timeout(TIMEOUT):
                # After stall_timeout the closing member gives the queued messages up
                # (a counter, no event). Then the slow peer reads again.
                await wait_until(
                    lambda: closing.done() or bus.statistics().send_drops > dropped_by_policy
                )
                await receive(stuck)
                await closing

            await receive_many(sub, MAXSIZE)
            await wait_until(lambda: slow.statistics().peers == 0, within=0.5)
            assert slow.statistics().peers_lost == 0  # it left: it was not lost
