"""A member that was not reading while another joined still ends up its peer, both ways.

The joiner gives up on it after ``join_timeout`` and closes its link; when the slow
member reads again it finds the joiner's HELLO and links back. On ``seqpacket`` the
end of the joiner's first connection must not make the slow member forget a live
peer.
"""

from __future__ import annotations

import asyncio
import os
import secrets

import pytest

import asyncbus

TIMEOUT = 10.0


@pytest.mark.parametrize("scheme", ["unix", "seqpacket"])
async def test_slow_member_and_joiner_become_peers(scheme: str) -> None:
    url = f"{scheme}:@rejoin-{os.getpid()}-{secrets.token_hex(4)}?join_timeout=0.2"
    async with (
        asyncbus.connect(url) as slow,
        # A full block subscription stops the slow member reading its socket(s).
        slow.subscribe("hold", maxsize=1, policy="block") as hold,
    ):
        async with asyncbus.connect(url) as helper:
            async with asyncio.timeout(TIMEOUT):
                await helper.topic("hold").wait_subscribers(1)

            await helper.publish("hold", b"1")
            await helper.publish("hold", b"2")  # the queue is full: reading stops

        async with asyncbus.connect(url) as joiner:
            # The joiner gave up waiting for the slow member (join_timeout).
            assert joiner.statistics().peers == 0
            async with joiner.subscribe("news") as news:
                async with asyncio.timeout(TIMEOUT):
                    assert (await hold.receive()).data == b"1"  # reading resumes
                    assert (await hold.receive()).data == b"2"
                    await joiner.wait_peers(1)
                    await slow.topic("news").wait_subscribers(1)

                await slow.publish("news", b"hello")
                async with asyncio.timeout(TIMEOUT):
                    msg = await news.receive()

                assert msg.data == b"hello"
                assert slow.statistics().peers == 1
                assert slow.statistics().peers_lost == 0
