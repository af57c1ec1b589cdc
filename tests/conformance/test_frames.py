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


async def send_garbage(transport: Transport, frames: dict[str, bytes]) -> dict[str, int]:
    """Send each frame to a member, then check that it still works with its bus.

    :param frames: the frames, by name.
    :return: how much each frame raised the member's ``malformed`` counter.
    """
    url = transport.url()
    counted = {}
    async with (
        asyncbus.connect(url) as bus,
        asyncbus.connect(url) as member,
        member.subscribe("*") as sub,
    ):
        await transport.subscribed(bus, "after")
        with transport.raw_peer(member) as raw:
            for seq, (name, frame) in enumerate(frames.items()):
                before = member.statistics().malformed
                await raw.send(frame)
                # A valid frame behind it: once that is out, the garbage was handled.
                await raw.send(lc02(seq, "after", name.encode()))
                try:
                    msg = await receive(sub)
                except TimeoutError:
                    pytest.fail(f"after {name!r} the member heard nothing more from the socket")

                assert (msg.topic, msg.data) == ("after", name.encode())
                counted[name] = member.statistics().malformed - before

        await bus.publish("after", b"from a member")
        msg = await receive(sub)
        stats = member.statistics()

    assert (msg.topic, msg.data) == ("after", b"from a member")
    assert sub.statistics().delivered == len(frames) + 1  # the garbage delivered nothing
    if transport.membership:
        assert (stats.peers, stats.peers_lost, stats.rejected) == (1, 0, 0)

    return counted


async def test_each_kind_of_garbage_is_counted_and_dropped(transport: Transport) -> None:
    assert await send_garbage(transport, GARBAGE) == dict.fromkeys(GARBAGE, 1)


@transports(frames_over_64k=True)
async def test_frame_over_64_kib_is_counted_and_dropped(transport: Transport) -> None:
    frames = {"over-64-kib": lc02(0, "after", bytes(70_000))}
    assert await send_garbage(transport, frames) == {"over-64-kib": 1}
