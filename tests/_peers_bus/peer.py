"""One bus member in a process of its own, driven by ``tests/test_udpm.py``.

Usage::

    python -m tests._peers_bus.peer sub URL TOPIC COUNT
    python -m tests._peers_bus.peer pub URL TOPIC SIZE [SIZE ...]

It talks to the test on stdout, one JSON object per line:

* ``{"event": "ready", "sender": ADDRESS}`` once it is open (``sub``: and subscribed,
  so that everything published from now on reaches it);
* ``sub``: ``{"event": "message", ...}`` for each message received (topic, seq, sender,
  size and SHA-256 of the data), then ``{"event": "done", "statistics": {...}}`` after
  ``COUNT`` messages;
* ``pub``: publishes message ``i`` with ``payload(i, SIZE_i)``, then ``{"event": "done"}``.

Payloads never cross the pipe: both sides derive them with :func:`payload`. Every
wait has a bound, so a peer never outlives a failed test for long.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import sys
from typing import Any

import asyncbus

DEADLINE = 30.0  # seconds a peer may live


def payload(index: int, size: int) -> bytes:
    """Return deterministic, incompressible bytes for message ``index`` of ``size`` bytes.

    :param index: the message's number.
    :param size: its size.
    :return: SHAKE-256 of both.
    """
    return hashlib.shake_256(f"asyncbus-test/{index}/{size}".encode()).digest(size)


def digest(data: bytes) -> str:
    """Return the SHA-256 hex digest that peers report for ``data``.

    :param data: a payload.
    :return: the digest.
    """
    return hashlib.sha256(data).hexdigest()


def _say(**event: Any) -> None:
    print(json.dumps(event), flush=True)


async def _subscribe(url: str, topic: str, count: int) -> None:
    async with asyncbus.connect(url) as bus, bus.subscribe(topic) as sub:
        assert bus.sender is not None
        _say(event="ready", sender=bus.sender.address)
        for _ in range(count):
            msg = await sub.receive()
            _say(
                event="message",
                topic=msg.topic,
                seq=msg.seq,
                sender=msg.sender.address,
                size=len(msg.data),
                sha256=digest(bytes(msg.data)),
            )

        _say(event="done", statistics=dataclasses.asdict(bus.statistics()))


async def _publish(url: str, topic: str, sizes: list[int]) -> None:
    async with asyncbus.connect(url) as bus:
        assert bus.sender is not None
        _say(event="ready", sender=bus.sender.address)
        for index, size in enumerate(sizes):
            await bus.publish(topic, payload(index, size))

        _say(event="done")


async def _main(argv: list[str]) -> None:
    mode, url, topic, *rest = argv
    async with asyncio.timeout(DEADLINE):
        if mode == "sub":
            await _subscribe(url, topic, int(rest[0]))
        elif mode == "pub":
            await _publish(url, topic, [int(size) for size in rest])
        else:
            raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1:]))
