"""One bus member in a process of its own, driven by the conformance suite.

Usage::

    python -m tests.conformance.member [--loop asyncio|uvloop] MODE URL [options]

    subscribe URL TOPIC [--policy P] [--maxsize N] [--count N] [--end TOPIC] [--each]
    publish URL TOPIC --count N --size BYTES [--subscribers K]
    idle URL

It talks to the test on stdout, one JSON object per line:

* ``{"event": "ready", "address": ..., "pid": ...}`` once it is open (``subscribe``:
  and subscribed; ``publish``: and, with ``--subscribers K``, once K members have
  subscribed to TOPIC);
* ``subscribe``: with ``--each``, ``{"event": "message", "index": ..., "seq": ...}``
  for every message; then ``{"event": "done", ...}`` with what it received (see
  `Received.report`) and its statistics, after ``COUNT`` messages or the first
  message on the ``--end`` topic (subscribed with the ``block`` policy, so that a
  publisher never drops it). ``COUNT`` 0 and no ``--end``: it receives until killed;
* ``publish``: publishes message ``i`` as ``payload(i, BYTES)``, then ``done`` with
  its statistics;
* ``idle``: waits for a line ``close`` (or the end of stdin), closes its bus, then
  ``done`` with its statistics.

Payloads never cross the pipe: both sides derive them with `payload`. Every wait
has a bound, so a member never outlives a failed test for long.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import uvloop

import asyncbus

DEADLINE = 30.0  # seconds a member may live
INDEX_BYTES = 8  # a payload starts with its index (big-endian) when it has room for it


def payload(index: int, size: int) -> bytes:
    """Return deterministic, incompressible bytes for message ``index`` of ``size`` bytes.

    Payloads of at least `INDEX_BYTES` bytes start with the index, so a receiver
    can tell which message it got (`index_of`).

    :param index: the message's number.
    :param size: its size.
    :return: the payload.
    """
    head = index.to_bytes(INDEX_BYTES, "big")
    body = hashlib.shake_256(head + size.to_bytes(8, "big")).digest(max(size - INDEX_BYTES, 0))
    return (head + body)[:size]


def index_of(data: bytes) -> int | None:
    """Return the index of a payload made by `payload`.

    :param data: a received payload.
    :return: its index, or ``None`` if it is too short to carry one.
    :raises ValueError: if the payload is not what `payload` makes for that index.
    """
    if len(data) < INDEX_BYTES:
        return None

    index = int.from_bytes(data[:INDEX_BYTES], "big")
    if data != payload(index, len(data)):
        raise ValueError(f"payload of message {index} ({len(data)} bytes) is corrupt")

    return index


def digest(data: bytes) -> str:
    """Return the short digest members report for a payload.

    :param data: a payload.
    :return: 16 hex digits of its SHA-256.
    """
    return hashlib.sha256(data).hexdigest()[:16]


def _say(**event: Any) -> None:
    print(json.dumps(event), flush=True)


class Received:
    """What a subscribing member got, in order."""

    def __init__(self, each: bool) -> None:
        self.each = each
        self.indices: list[int | None] = []
        self.seqs: list[int] = []
        self.digests: list[str] = []
        self.senders: set[tuple[str, int | None, int | None, int | None]] = set()
        self.corrupt = 0

    def add(self, msg: asyncbus.Message) -> None:
        try:
            index = index_of(msg.data)
        except ValueError:
            index = None
            self.corrupt += 1

        self.indices.append(index)
        self.seqs.append(msg.seq)
        self.digests.append(digest(msg.data))
        sender = msg.sender
        self.senders.add((sender.address, sender.pid, sender.uid, sender.gid))
        if self.each:
            _say(event="message", index=index, seq=msg.seq, size=len(msg.data))

    def report(self) -> dict[str, Any]:
        """Return the ``done`` event's fields (but statistics).

        :return: indices, seqs, digests, senders (address, pid, uid, gid) and the
            number of corrupt payloads.
        """
        return {
            "indices": self.indices,
            "seqs": self.seqs,
            "digests": self.digests,
            "senders": sorted(self.senders, key=repr),
            "corrupt": self.corrupt,
        }


def _statistics(bus: asyncbus.Bus) -> dict[str, int]:
    return dataclasses.asdict(bus.statistics())


def _ready(bus: asyncbus.Bus) -> None:
    assert bus.sender is not None
    _say(event="ready", address=bus.sender.address, pid=os.getpid())


async def _subscribe(args: argparse.Namespace) -> None:
    received = Received(args.each)
    async with contextlib.AsyncExitStack() as stack:
        bus = await stack.enter_async_context(asyncbus.connect(args.url))
        sub = await stack.enter_async_context(
            bus.subscribe(args.topic, maxsize=args.maxsize, policy=args.policy)
        )
        end = None
        if args.end:
            end = await stack.enter_async_context(bus.subscribe(args.end, policy="block"))

        _ready(bus)
        if end is None:
            count = 0
            while args.count == 0 or count < args.count:
                received.add(await sub.receive())
                count += 1
        else:

            async def collect() -> None:
                async for msg in sub:
                    received.add(msg)

            collector = asyncio.create_task(collect())
            try:
                await end.receive()
            finally:
                collector.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await collector

            # receive() is cancel-atomic: what came before the end marker is queued.
            while True:
                try:
                    received.add(sub.receive_nowait())
                except asyncbus.WouldBlock:
                    break

        _say(event="done", **received.report(), statistics=_statistics(bus))


async def _publish(args: argparse.Namespace) -> None:
    async with asyncbus.connect(args.url) as bus:
        topic = bus.topic(args.topic)
        if args.subscribers:
            await topic.wait_subscribers(args.subscribers)

        _ready(bus)
        for index in range(args.count):
            await topic.publish(payload(index, args.size))

        _say(event="done", statistics=_statistics(bus))


async def _idle(args: argparse.Namespace) -> None:
    async with asyncbus.connect(args.url) as bus:
        _ready(bus)
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line or line.strip() == "close":
                break

    _say(event="done", statistics=_statistics(bus))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="A bus member for the conformance suite.")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    modes = parser.add_subparsers(dest="mode", required=True)

    subscribe = modes.add_parser("subscribe")
    subscribe.add_argument("url")
    subscribe.add_argument("topic")
    subscribe.add_argument("--policy", default="drop_oldest")
    subscribe.add_argument("--maxsize", type=int, default=4096)
    subscribe.add_argument("--count", type=int, default=0)
    subscribe.add_argument("--end", default="")
    subscribe.add_argument("--each", action="store_true")

    publish = modes.add_parser("publish")
    publish.add_argument("url")
    publish.add_argument("topic")
    publish.add_argument("--count", type=int, required=True)
    publish.add_argument("--size", type=int, required=True)
    publish.add_argument("--subscribers", type=int, default=0)

    idle = modes.add_parser("idle")
    idle.add_argument("url")
    return parser


async def _main(args: argparse.Namespace) -> None:
    modes = {"subscribe": _subscribe, "publish": _publish, "idle": _idle}
    async with asyncio.timeout(DEADLINE):
        await modes[args.mode](args)


def main(argv: list[str]) -> None:
    """Run one member.

    :param argv: the arguments (without the program name).
    """
    args = _parser().parse_args(argv)
    factory: Callable[[], asyncio.AbstractEventLoop] = (
        uvloop.new_event_loop if args.loop == "uvloop" else asyncio.new_event_loop
    )
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_main(args))


if __name__ == "__main__":
    main(sys.argv[1:])
