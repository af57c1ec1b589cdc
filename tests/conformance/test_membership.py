"""Members coming and going on every transport: leaving, dying, closing cleanly.

On the unix transports members know each other (``wait_peers``, ``peers``,
``peers_lost``); on ``udpm`` they are anonymous, and what is left to check is
that nobody waits for a member that died and that closing leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import os

import pytest

import asyncbus
from tests._bus_support import TIMEOUT, receive, receive_many, wait_until
from tests.conformance._support import Member, Transport, index_of, payload, take_socket

transports = pytest.mark.transports


def exists(path: str) -> bool:
    """Tell whether a socket file exists (a quick stat: fine in a test's loop)."""
    return os.path.exists(path)


@transports(membership=False)
async def test_membership_is_unsupported(transport: Transport) -> None:
    async with asyncbus.connect(transport.url()) as bus:
        with pytest.raises(asyncbus.UnsupportedError, match="udpm has no membership"):
            await bus.wait_peers()

        with pytest.raises(asyncbus.UnsupportedError, match="udpm has no membership"):
            await bus.topic("anyone").wait_subscribers()

        stats = bus.statistics()

    assert (stats.peers, stats.peers_lost) == (0, 0)


@transports(membership=True)
class TestMembership:
    async def test_members_know_each_other(self, transport: Transport) -> None:
        url = transport.url()
        async with asyncbus.connect(url) as first, asyncbus.connect(url) as second:
            async with asyncio.timeout(TIMEOUT):
                await first.wait_peers(1)
                await second.wait_peers(1)

            async with second.subscribe("wanted"):
                await transport.subscribed(first, "wanted")

            counts = (first.statistics().peers, second.statistics().peers)

        assert counts == (1, 1)

    async def test_a_stopped_member_joins_when_it_resumes(self, transport: Transport) -> None:
        url = transport.url()
        async with Member("subscribe", url, "t", "--count", "3") as member:
            await member.event("ready")
            await member.stop()
            # open() waits join_timeout for the members it found, then goes on.
            async with asyncbus.connect(transport.url(join_timeout=0.1)) as bus:
                assert bus.statistics().peers == 0
                member.resume()
                await transport.subscribed(bus, "t")  # its late answer makes it a peer
                for index in range(3):
                    await bus.publish("t", payload(index, 64))

                done = await member.event("done")

        assert done["indices"] == [0, 1, 2]
        assert done["statistics"]["gaps"] == 0

    async def test_member_that_leaves_is_forgotten(self, transport: Transport) -> None:
        url = transport.url()
        async with asyncbus.connect(url) as bus, Member("idle", url) as member:
            await member.event("ready")
            async with asyncio.timeout(TIMEOUT):
                await bus.wait_peers(1)

            assert len(transport.leftovers()) == 2  # our socket and the member's
            await member.command("close")
            await member.event("done")
            assert await member.exit_code() == 0
            # Its BYE is on its way; there is no event for "one peer fewer".
            await wait_until(lambda: bus.statistics().peers == 0)
            stats = bus.statistics()
            left = transport.leftovers()

        assert stats.peers_lost == 0  # a member that says BYE is not lost
        assert bus.sender is not None
        assert left == [os.path.basename(bus.sender.address)]
        assert transport.leftovers() == []


class TestDeath:
    async def test_killed_subscriber_holds_up_nobody(self, transport: Transport) -> None:
        """A ``block`` subscriber is SIGKILLed mid-stream: publishing goes on at once."""
        # stall_timeout=0: a publisher waiting for the dead member would wait forever.
        url = transport.url(stall_timeout=0) if transport.peer_policies else transport.url()
        async with (
            asyncbus.connect(url) as bus,
            asyncbus.connect(url) as live,
            live.subscribe("beat", maxsize=4096, policy="block") as sub,
            Member("subscribe", url, "beat", "--policy", "block", "--maxsize", "1") as doomed,
        ):
            await doomed.event("ready")
            await transport.subscribed(bus, "beat", 2)
            beat = bus.topic("beat")
            published = 0
            async with asyncio.timeout(TIMEOUT):
                for _ in range(100):
                    await beat.publish(payload(published, 64))
                    published += 1

                await doomed.kill()
                if transport.membership:
                    while bus.statistics().peers_lost == 0:  # noticed at the next send, or EOF
                        await beat.publish(payload(published, 64))
                        published += 1

                for _ in range(500):
                    await beat.publish(payload(published, 64))
                    published += 1

            messages = await receive_many(sub, published)
            stats = bus.statistics()

        assert [index_of(msg.data) for msg in messages] == list(range(published))
        assert live.statistics().gaps == 0
        if transport.membership:
            assert (stats.peers_lost, stats.peers) == (1, 1)

    @transports(connections=True)
    async def test_death_is_seen_without_sending(self, transport: Transport) -> None:
        url = transport.url()
        async with asyncbus.connect(url) as bus, Member("idle", url) as doomed:
            await doomed.event("ready")
            async with asyncio.timeout(TIMEOUT):
                await bus.wait_peers(1)

            await doomed.kill()
            await wait_until(lambda: bus.statistics().peers_lost == 1)  # no event to wait on
            stats = bus.statistics()

        assert (stats.peers, stats.peers_lost, stats.published) == (0, 1, 0)

    @transports(socket_files=True)
    async def test_killed_members_file_is_removed(self, transport: Transport) -> None:
        url = transport.url()
        async with asyncbus.connect(url) as bus, Member("subscribe", url, "beat") as doomed:
            ready = await doomed.event("ready")
            await transport.subscribed(bus, "beat")
            held = None
            if transport.connections:
                # The kernel releases a killed process's sockets one by one, its
                # listener last: the bus may see the connections end while the
                # file still has a listener. Holding a copy of the listener until
                # the bus has seen the death makes that race certain.
                try:
                    held = take_socket(doomed.pid, ready["address"])
                except OSError as exc:
                    pytest.skip(f"cannot hold the member's socket: {exc}; run as root")

            try:
                await doomed.kill()
                async with asyncio.timeout(TIMEOUT):
                    while bus.statistics().peers_lost == 0:
                        await bus.publish("beat", b"are you there?")
            finally:
                if held is not None:
                    held.close()

            # Nothing announces the unlink: poll the directory, with a bound.
            await wait_until(lambda: not exists(ready["address"]), within=1.5)
            assert bus.sender is not None
            assert transport.leftovers() == [os.path.basename(bus.sender.address)]

    @transports(socket_files=True)
    async def test_joiner_removes_a_dead_members_file(self, transport: Transport) -> None:
        url = transport.url()
        async with Member("idle", url) as doomed:
            ready = await doomed.event("ready")
            await doomed.kill()

        assert exists(ready["address"])  # nobody was there to notice
        async with asyncbus.connect(url) as bus:
            stats = bus.statistics()
            left = transport.leftovers()

        assert bus.sender is not None
        assert left == [os.path.basename(bus.sender.address)]
        assert (stats.peers, stats.peers_lost) == (0, 0)  # it never was a peer


class TestClose:
    async def test_close_leaves_nothing(self, transport: Transport) -> None:
        url = transport.url()
        async with asyncbus.connect(url) as first:
            async with (
                asyncbus.connect(url) as second,
                second.subscribe("t") as sub,
                first.subscribe("t") as first_sub,
            ):
                await transport.subscribed(first, "t")
                await transport.subscribed(second, "t")
                await first.publish("t", b"to second")
                await second.publish("t", b"to first")
                assert (await receive(sub)).data == b"to second"
                assert (await receive(first_sub)).data == b"to first"
                assert transport.leftovers()  # members are visible while open

            if transport.socket_files:
                assert first.sender is not None
                assert transport.leftovers() == [os.path.basename(first.sender.address)]

        assert first.closed and second.closed
        assert transport.leftovers() == []

    async def test_many_members_open_and_close(self, transport: Transport) -> None:
        url = transport.url()
        buses = [asyncbus.connect(url) for _ in range(6)]
        for bus in buses:
            await bus.open()

        try:
            if transport.membership:
                async with asyncio.timeout(TIMEOUT):
                    for bus in buses:
                        await bus.wait_peers(len(buses) - 1)
        finally:
            for bus in buses:
                await bus.aclose()

        assert transport.leftovers() == []
        lost = [bus.statistics().peers_lost for bus in buses]
        assert lost == [0] * len(buses)
