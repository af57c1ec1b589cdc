"""Bad frames on every transport: counted in ``malformed``, dropped, harmless.

A raw socket that is no bus member sends a member garbage: on ``udpm`` a UDP
socket sending to the group, on the unix transports an AF_UNIX socket connected
to the member's own socket (its ``Sender.address``; ``@name`` is abstract). Then
it sends a valid LCM frame: once that arrives, the garbage before it has been
handled, and the member must still work with the real members of its bus.
"""

from __future__ import annotations

import struct

import pytest

import asyncbus
from tests._bus_support import LC02, lc02, lc03, receive
from tests.conformance._support import Transport

transports = pytest.mark.transports

HELLO = struct.Struct(">IBBH")  # magic, version, flags, address length
HELLO_MAGIC, SUBSCRIBE_MAGIC = 0x4142484C, 0x41425342

GARBAGE = {
    "text": b"hello, world",
    "empty": b"",  # seqpacket: an empty record, not the end of the connection
    "magic-only": b"LC02",
    "lc02-channel-without-nul": LC02.pack(b"LC02", 1) + b"x" * 80,
    "lc02-channel-not-utf8": LC02.pack(b"LC02", 1) + b"\xff\xfe\0data",
    "lc03-truncated-header": b"LC03" + bytes(10),
    "lc03-index-not-below-count": lc03(1, 10, 5, 2, 2, b"12345", None),
    "hello-unknown-version": HELLO.pack(HELLO_MAGIC, 9, 0, 1) + b"x",
    "hello-truncated": HELLO.pack(HELLO_MAGIC, 1, 0, 1)[:6],
    "hello-address-cut-short": HELLO.pack(HELLO_MAGIC, 1, 0, 50) + b"abc",
    "subscribe-before-hello": struct.pack(">IH", SUBSCRIBE_MAGIC, 0),
    "subscribe-entry-cut-short": struct.pack(">IHBB", SUBSCRIBE_MAGIC, 1, 1, 0),
    "bye-with-a-tail": b"ABBY\0",
}


async def send_garbage(transport: Transport, frames: list[bytes]) -> asyncbus.BusStatistics:
    """Send ``frames`` to a member, then check that it counted them and still works.

    :return: the member's statistics after the raw frames and one real message.
    """
    url = transport.url()
    async with (
        asyncbus.connect(url) as bus,
        asyncbus.connect(url) as member,
        member.subscribe("*") as sub,
    ):
        await transport.subscribed(bus, "after")
        with transport.raw_peer(member) as raw:
            for frame in frames:
                await raw.send(frame)

            await raw.send(lc02(0, "after", b"from the raw socket"))
            raw_msg = await receive(sub)

        await bus.publish("after", b"from a member")
        member_msg = await receive(sub)
        stats = member.statistics()

    assert (raw_msg.topic, raw_msg.data) == ("after", b"from the raw socket")
    assert (member_msg.topic, member_msg.data) == ("after", b"from a member")
    assert sub.statistics().delivered == 2  # the garbage delivered nothing
    if transport.membership:
        assert (stats.peers, stats.peers_lost, stats.rejected) == (1, 0, 0)

    return stats


@pytest.mark.parametrize("frame", GARBAGE.values(), ids=GARBAGE.keys())
async def test_garbage_is_counted_and_dropped(transport: Transport, frame: bytes) -> None:
    stats = await send_garbage(transport, [frame])
    assert stats.malformed == 1


async def test_all_garbage_at_once(transport: Transport) -> None:
    frames = [frame for frame in GARBAGE.values() if frame]
    stats = await send_garbage(transport, frames)
    assert stats.malformed == len(frames)


@transports(frames_over_64k=True)
async def test_frame_over_64_kib_is_counted_and_dropped(transport: Transport) -> None:
    stats = await send_garbage(transport, [lc02(0, "after", bytes(70_000))])
    assert stats.malformed == 1
