"""A bus member in a process of its own for ``tests/test_batching.py``.

Usage::

    python -m tests.peers.batch_member URL

It opens the bus and prints ``{"event": "ready", "pid", "address"}``, then reads
one JSON command per line on stdin and answers each with one
``{"event": "reply", ...}`` line (``{"event": "reply", "error": TEXT}`` if the
command raised). Message payloads start with their index (u32, big-endian).
Commands (``"do"``):

* ``subscribe`` ``topic`` [``policy``, ``maxsize``]: subscribe;
* ``drain`` ``topic`` ``count``: receive ``count`` messages; answer ``indexes``
  summarized as ``received``, ``in_order`` (each index one more than the last),
  ``first`` and ``last``;
* ``echo`` ``topic`` ``reply``: receive one message and publish its payload on ``reply``;
* ``unplug`` ``plug`` ``topic``: receive two messages from ``plug`` (the one that
  stopped this member reading, then the end marker published behind everything
  else), then take every message waiting on ``topic`` without waiting; answer
  as ``drain`` (``in_order`` here: strictly increasing);
* ``stats``: `asyncbus.BusStatistics` fields;
* ``close``: close the bus, answer, exit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import sys
from typing import Any

import asyncbus

DEADLINE = 20.0  # seconds one command may take
LIFETIME = 90.0  # seconds this process may live


def _say(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def _summary(indexes: list[int], *, consecutive: bool) -> dict[str, Any]:
    pairs = list(itertools.pairwise(indexes))
    step = (lambda a, b: b == a + 1) if consecutive else (lambda a, b: b > a)
    in_order = all(step(a, b) for a, b in pairs)

    return {
        "received": len(indexes),
        "in_order": in_order,
        "first": indexes[0] if indexes else None,
        "last": indexes[-1] if indexes else None,
    }


class Member:
    """This member's bus and subscriptions."""

    def __init__(self, bus: asyncbus.Bus) -> None:
        self.bus = bus
        self.subscriptions: dict[str, asyncbus.Subscription] = {}

    async def do_subscribe(
        self, topic: str, policy: str = "drop_oldest", maxsize: int = 1024
    ) -> dict[str, Any]:
        self.subscriptions[topic] = self.bus.subscribe(topic, policy=policy, maxsize=maxsize)
        return {}

    async def do_drain(self, topic: str, count: int) -> dict[str, Any]:
        sub = self.subscriptions[topic]
        indexes: list[int] = []
        async with asyncio.timeout(DEADLINE):
            while len(indexes) < count:
                msg = await sub.receive()
                indexes.append(int.from_bytes(msg.data[:4], "big"))

        return _summary(indexes, consecutive=True)

    async def do_echo(self, topic: str, reply: str) -> dict[str, Any]:
        async with asyncio.timeout(DEADLINE):
            msg = await self.subscriptions[topic].receive()

        await self.bus.publish(reply, bytes(msg.data))
        return {}

    async def do_unplug(self, plug: str, topic: str) -> dict[str, Any]:
        async with asyncio.timeout(DEADLINE):
            for _ in range(2):
                await self.subscriptions[plug].receive()

        # Frames of one link are handled in order: everything published on
        # ``topic`` before the end marker is in that subscription already.
        sub = self.subscriptions[topic]
        indexes: list[int] = []
        while True:
            try:
                msg = sub.receive_nowait()
            except asyncbus.WouldBlock:
                break

            indexes.append(int.from_bytes(msg.data[:4], "big"))

        return _summary(indexes, consecutive=False)

    async def do_stats(self) -> dict[str, Any]:
        return dataclasses.asdict(self.bus.statistics())


async def _serve(url: str) -> None:
    async with asyncbus.connect(url) as bus:
        member = Member(bus)
        assert bus.sender is not None
        _say(event="ready", address=bus.sender.address, pid=os.getpid())
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                return

            command: dict[str, Any] = json.loads(line)
            action = command.pop("do")
            if action == "close":
                break

            try:
                answer = await getattr(member, f"do_{action}")(**command)
            except Exception as exc:  # reported to the test, which fails with it
                _say(event="reply", error=f"{type(exc).__name__}: {exc}")
            else:
                _say(event="reply", **answer)

        for sub in member.subscriptions.values():
            sub.close()

    _say(event="reply", closed=True)


def main(argv: list[str]) -> None:
    """Run the member.

    :param argv: the arguments (without the program name): the bus URL.
    """

    async def run() -> None:
        async with asyncio.timeout(LIFETIME):
            await _serve(argv[0])

    asyncio.run(run())


if __name__ == "__main__":
    main(sys.argv[1:])
