"""Delivery on every transport: order, fan-out to processes, late joiners, sizes.

Each test runs on every transport (``transport`` fixture) and loop. Publishers
wait for their audience with `Transport.subscribed` (``wait_subscribers`` on the
unix transports; on ``udpm`` a subscriber hears everything sent after its
``subscribe()`` returned), and receivers wait on messages with a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re

import pytest

import asyncbus
from tests._bus_support import can_buffer, receive, receive_many
from tests.conformance._support import Member, Publisher, Transport, drain, index_of, payload
from tests.conformance.member import digest

ORDERED = 2000  # messages in the ordering tests
MIB = 2**20
BIG_BUFFER = 4 * MIB  # what a udpm receiver needs to hold a burst of 1 MiB or 2000 small ones
NEED_BIG_BUFFER = (
    f"udpm loses a burst unless the receive buffer holds it: run as root, or raise "
    f"net.core.rmem_max to at least {BIG_BUFFER} (sysctl -w net.core.rmem_max={BIG_BUFFER})"
)
LARGEST_SHORT = 65_499 - len("size") - 1  # LCM's short-message limit, less topic and NUL
SIZES = [0, 1, 8, LARGEST_SHORT, LARGEST_SHORT + 1, MIB, 100]
FAN_OUT_SIZES = [0, 7, 8, 1000, 60_000, MIB, 64]


def need_buffer(transport: Transport) -> None:
    if not transport.lossless and not can_buffer(BIG_BUFFER):
        pytest.skip(NEED_BIG_BUFFER)


def expected_sender(transport: Transport, bus: asyncbus.Bus) -> asyncbus.Sender:
    """Return the ``Message.sender`` that others see for ``bus`` (in this process)."""
    assert bus.sender is not None
    if not transport.credentials:
        return asyncbus.Sender(bus.sender.address)

    return asyncbus.Sender(bus.sender.address, os.getpid(), os.geteuid(), os.getegid())


class TestOrder:
    """A ``block`` subscription: what makes a unix link lossless end to end.

    (With a drop policy a unix publisher that outruns its subscriber drops for
    it, counted on both sides: see ``test_overflow.py``.)
    """

    async def test_one_publisher_in_order(self, transport: Transport) -> None:
        need_buffer(transport)
        url = transport.url()
        async with (
            asyncbus.connect(url) as publisher,
            asyncbus.connect(url) as subscriber,
            subscriber.subscribe("order", maxsize=ORDERED, policy="block") as sub,
        ):
            await transport.subscribed(publisher, "order")
            for index in range(ORDERED):
                await publisher.publish("order", payload(index, 64))

            messages = await receive_many(sub, ORDERED)
            received, sent = subscriber.statistics(), publisher.statistics()

        assert [index_of(msg.data) for msg in messages] == list(range(ORDERED))
        assert [msg.seq for msg in messages] == list(range(ORDERED))
        assert {msg.sender for msg in messages} == {expected_sender(transport, publisher)}
        assert (received.received, received.gaps, received.reordered) == (ORDERED, 0, 0)
        assert (received.kernel_drops, received.overflow_drops, sent.send_drops) == (0, 0, 0)

    async def test_from_another_process_in_order(self, transport: Transport) -> None:
        need_buffer(transport)
        url = transport.url()
        wait = ["--subscribers", "1"] if transport.membership else []
        args = ["publish", url, "order", "--count", str(ORDERED), "--size", "64", *wait]
        async with (
            asyncbus.connect(url) as bus,
            bus.subscribe("order", maxsize=ORDERED, policy="block") as sub,
        ):
            async with Member(*args) as member:
                ready = await member.event("ready")
                messages = await receive_many(sub, ORDERED)
                sent = (await member.event("done"))["statistics"]
                assert await member.exit_code() == 0

            stats = bus.statistics()

        assert [index_of(msg.data) for msg in messages] == list(range(ORDERED))
        assert [msg.seq for msg in messages] == list(range(ORDERED))
        senders = {msg.sender for msg in messages}
        if transport.credentials:
            uid, gid = os.geteuid(), os.getegid()
            assert senders == {asyncbus.Sender(ready["address"], member.pid, uid, gid)}
        else:
            assert senders == {asyncbus.Sender(ready["address"])}

        assert (stats.received, stats.gaps, stats.reordered) == (ORDERED, 0, 0)
        assert (stats.kernel_drops, sent["published"], sent["send_drops"]) == (0, ORDERED, 0)

    async def test_several_publishers_each_in_order(self, transport: Transport) -> None:
        count, publishers = 300, 3
        url = transport.url()
        async with (
            asyncbus.connect(url) as subscriber,
            subscriber.subscribe("many", maxsize=count * publishers, policy="block") as sub,
            contextlib.AsyncExitStack() as stack,
        ):
            buses = [asyncbus.connect(url) for _ in range(publishers)]
            for bus in buses:
                await stack.enter_async_context(bus)

            for bus in buses:
                await transport.subscribed(bus, "many")

            async def publish(bus: asyncbus.Bus) -> None:
                for index in range(count):
                    await bus.publish("many", payload(index, 64))

            async with asyncio.TaskGroup() as tasks:
                for bus in buses:
                    tasks.create_task(publish(bus))

            messages = await receive_many(sub, count * publishers)
            stats = subscriber.statistics()

        by_sender: dict[asyncbus.Sender, list[int | None]] = {}
        for msg in messages:
            by_sender.setdefault(msg.sender, []).append(index_of(msg.data))

        assert set(by_sender) == {expected_sender(transport, bus) for bus in buses}
        assert all(indices == list(range(count)) for indices in by_sender.values())
        assert (stats.received, stats.gaps, stats.reordered) == (count * publishers, 0, 0)


class TestFanOut:
    async def test_three_processes_get_everything(self, transport: Transport) -> None:
        need_buffer(transport)
        url = transport.url()
        count = str(len(FAN_OUT_SIZES))
        expected = [digest(payload(i, size)) for i, size in enumerate(FAN_OUT_SIZES)]
        async with (
            asyncbus.connect(url) as bus,
            Member("subscribe", url, "fan", "--count", count) as first,
            Member("subscribe", url, "fan", "--count", count) as second,
            Member("subscribe", url, "fan", "--count", count) as third,
        ):
            members = (first, second, third)
            for member in members:
                await member.event("ready")

            await transport.subscribed(bus, "fan", 3)
            for index, size in enumerate(FAN_OUT_SIZES):
                await bus.publish("fan", payload(index, size))

            sender = expected_sender(transport, bus)
            for member in members:
                done = await member.event("done")
                assert await member.exit_code() == 0
                assert done["digests"] == expected
                assert done["seqs"] == list(range(len(FAN_OUT_SIZES)))
                assert done["corrupt"] == 0
                assert done["senders"] == [[sender.address, sender.pid, sender.uid, sender.gid]]
                stats = done["statistics"]
                assert (stats["gaps"], stats["incomplete"], stats["malformed"]) == (0, 0, 0)

            assert bus.statistics().send_drops == 0


class TestPatterns:
    async def test_exact_glob_and_regex_match_alike(self, transport: Transport) -> None:
        topics = ["sensors/temp1", "sensors/temp2", "sensors/humidity", "status", "other"]
        url = transport.url()
        async with (
            asyncbus.connect(url) as publisher,
            asyncbus.connect(url) as subscriber,
            subscriber.subscribe("status") as exact,
            subscriber.subscribe("sensors/*") as glob,
            subscriber.subscribe(re.compile(r"sensors/temp\d+")) as regex,
            subscriber.subscribe("fence") as fence,
        ):
            for topic in ["status", "sensors/temp1", "fence"]:
                await transport.subscribed(publisher, topic)

            for topic in topics:
                await publisher.publish(topic, topic.encode())

            await publisher.publish("fence", b"")
            await receive(fence)  # one publisher's messages arrive in order
            got = {
                name: [msg.topic for msg in drain(sub)]
                for name, sub in [("exact", exact), ("glob", glob), ("regex", regex)]
            }

        assert got == {
            "exact": ["status"],
            "glob": ["sensors/temp1", "sensors/temp2", "sensors/humidity"],
            "regex": ["sensors/temp1", "sensors/temp2"],
        }

    async def test_any_topic_name_the_wire_carries(self, transport: Transport) -> None:
        names = ["a", "x" * 63, "température/é", "with space", "日本語", "a.b-c_d/e:f"]
        url = transport.url()
        async with (
            asyncbus.connect(url) as publisher,
            asyncbus.connect(url) as subscriber,
            contextlib.AsyncExitStack() as stack,
        ):
            subs = [await stack.enter_async_context(subscriber.subscribe(n)) for n in names]
            for name in names:
                await transport.subscribed(publisher, name)
                await publisher.publish(name, name.encode())

            got = [(await receive(sub)).topic for sub in subs]

        assert got == names

    async def test_a_member_gets_only_what_it_wants(self, transport: Transport) -> None:
        url = transport.url()
        async with (
            asyncbus.connect(url) as publisher,
            asyncbus.connect(url) as subscriber,
            subscriber.subscribe("wanted") as sub,
        ):
            await transport.subscribed(publisher, "wanted")
            for _ in range(5):
                await publisher.publish("unwanted", b"no")

            await publisher.publish("wanted", b"yes")
            msg = await receive(sub)
            stats = subscriber.statistics()

        assert msg.data == b"yes"
        if transport.publisher_filters:
            assert (stats.received, stats.unmatched) == (1, 0)  # never sent to it
        else:
            assert (stats.received, stats.unmatched) == (6, 5)  # received, then dropped

    async def test_unsubscribing_stops_the_traffic(self, transport: Transport) -> None:
        url = transport.url()
        async with (
            asyncbus.connect(url) as publisher,
            asyncbus.connect(url) as subscriber,
            subscriber.subscribe("marker") as marker,
        ):
            async with subscriber.subscribe("t") as sub:
                await transport.subscribed(publisher, "t")
                await publisher.publish("t", b"wanted")
                assert (await receive(sub)).data == b"wanted"

            async with subscriber.subscribe("marker2") as marker2:
                # One SUBSCRIBE frame carries the whole set, in order after the
                # last: once "marker2" is known there, so is the end of "t".
                await transport.subscribed(publisher, "marker2")
                await publisher.publish("t", b"unwanted")
                await publisher.publish("marker2", b"fence")
                await receive(marker2)

            stats = subscriber.statistics()

        assert marker.statistics().delivered == 0  # (it keeps a udpm member in the group)
        if transport.publisher_filters:
            assert (stats.received, stats.unmatched) == (2, 0)
        else:
            assert (stats.received, stats.unmatched) == (3, 1)


class TestLateJoin:
    async def test_gets_what_follows_its_join_and_nothing_before(
        self, transport: Transport
    ) -> None:
        url = transport.url()
        async with asyncbus.connect(url) as bus:
            publisher = Publisher(bus, "late")
            publisher.start()
            await publisher.reached(20)
            async with asyncbus.connect(url) as late:
                before = publisher.started  # these went out before the subscription existed
                async with late.subscribe("late", maxsize=4096) as sub:
                    await transport.subscribed(bus, "late")
                    joined = publisher.started  # the publisher knows it: all from here arrive
                    await publisher.reached(joined + 50)
                    total = await publisher.stop()
                    messages = [await receive(sub)]
                    while index_of(messages[-1].data) != total - 1:
                        messages.append(await receive(sub))

                stats = late.statistics()

        indices = [index_of(msg.data) for msg in messages]
        first = indices[0]
        assert first is not None
        assert before <= first <= joined
        assert indices == list(range(first, total))
        # A link (unix) numbers what it carried from 0; udpm numbers per publisher.
        assert messages[0].seq == (0 if transport.per_link_seq else first)
        assert (stats.gaps, stats.reordered) == (0, 0)


class TestOwnMessages:
    async def test_never_echoed_and_delivered_once_with_receive_own(
        self, transport: Transport
    ) -> None:
        url = transport.url()
        async with (
            asyncbus.connect(url) as plain,
            asyncbus.connect(url, receive_own=True) as own,
            plain.subscribe("echo") as plain_sub,
            own.subscribe("echo") as own_sub,
        ):
            await transport.subscribed(plain, "echo")
            await transport.subscribed(own, "echo")
            await plain.publish("echo", b"plain")
            await own.publish("echo", b"own")
            await own.publish("echo", b"own fence")
            await plain.publish("echo", b"plain fence")
            # Each publisher's messages arrive in order: after its fence, nothing more.
            plain_got = [msg.data for msg in await receive_many(plain_sub, 2)]
            own_got = sorted(msg.data for msg in await receive_many(own_sub, 4))

        assert plain_got == [b"own", b"own fence"]
        assert own_got == [b"own", b"own fence", b"plain", b"plain fence"]


class TestSizes:
    async def test_every_size_arrives_intact(self, transport: Transport) -> None:
        need_buffer(transport)
        url = transport.url()
        async with (
            asyncbus.connect(url) as publisher,
            asyncbus.connect(url) as subscriber,
            subscriber.subscribe("size") as sub,
        ):
            await transport.subscribed(publisher, "size")
            for index, size in enumerate(SIZES):
                await publisher.publish("size", payload(index, size))

            messages = await receive_many(sub, len(SIZES))
            stats = subscriber.statistics()

        assert [len(msg.data) for msg in messages] == SIZES
        assert [msg.data for msg in messages] == [payload(i, size) for i, size in enumerate(SIZES)]
        assert (stats.received, stats.gaps, stats.incomplete) == (len(SIZES), 0, 0)
        assert (stats.malformed, stats.oversize) == (0, 0)

    async def test_publish_over_max_message_size_is_refused(self, transport: Transport) -> None:
        url = transport.url()
        async with (
            asyncbus.connect(url, max_message_size=1000) as publisher,
            asyncbus.connect(url) as subscriber,
            subscriber.subscribe("limit") as sub,
        ):
            await transport.subscribed(publisher, "limit")
            with pytest.raises(asyncbus.MessageTooLargeError) as raised:
                await publisher.publish("limit", bytes(1001))

            await publisher.publish("limit", payload(0, 1000))  # the limit itself is fine
            msg = await receive(sub)
            sent, received = publisher.statistics(), subscriber.statistics()

        assert isinstance(raised.value, asyncbus.LocalProtocolError)
        assert "1001 bytes" in str(raised.value)
        assert "limit of 1000 bytes" in str(raised.value)
        assert msg.data == payload(0, 1000)
        assert msg.seq == 0  # the refused message took no sequence number
        assert (sent.published, sent.send_drops, received.gaps) == (1, 0, 0)

    async def test_receiver_drops_messages_over_its_limit(self, transport: Transport) -> None:
        need_buffer(transport)
        url = transport.url()
        async with (
            asyncbus.connect(url) as publisher,
            asyncbus.connect(url, max_message_size=1000) as subscriber,
            subscriber.subscribe("limit") as sub,
        ):
            await transport.subscribed(publisher, "limit")
            await publisher.publish("limit", payload(0, 10))
            await publisher.publish("limit", payload(1, 1001))  # one frame
            await publisher.publish("limit", payload(2, 200_000))  # fragments
            await publisher.publish("limit", payload(3, 1000))
            messages = await receive_many(sub, 2)
            stats = subscriber.statistics()

        assert [index_of(msg.data) for msg in messages] == [0, 3]
        assert (stats.oversize, stats.received, stats.malformed, stats.incomplete) == (2, 2, 0, 0)
        # Oversize messages never complete, so the sequence numbers show them as gaps too.
        assert stats.gaps == 2
