"""A bus member in a process of its own that passes and receives fds (``tests/test_fds_bus.py``).

Usage::

    python -m tests.peers.fd_member [--loop asyncio|uvloop] URL

It opens the bus and prints ``{"event": "ready", "address", "pid", "open_fds"}``,
then reads one JSON command per line on stdin and answers each with one
``{"event": "reply", ...}`` line (``{"event": "reply", "error": TEXT}`` if the
command raised). Commands (``"do"``):

* ``subscribe`` ``topic`` [``policy``, ``maxsize``]: subscribe;
* ``wait_subscribers`` ``topic`` [``count``]: wait until that many others subscribe;
* ``receive`` ``topic`` [``uses``, ``take``, ``hold``, ``ack``]: receive one
  message and describe it (`describe`): its size, ``hash`` (`digest`),
  whether ``data`` is a read-only ``memoryview``, its fds' kinds and
  inheritability. ``uses`` is one action per fd: ``["pread", N]`` (answer the
  first N bytes, hex) or ``["write", HEX]`` (write the bytes). Then, unless
  ``hold``: with ``take`` the fds are taken (`asyncbus.Message.take_fds`), the
  message released, and ``taken_open`` tells whether the taken fds were still
  open after the release (they are closed after that); without ``take`` the
  message is released and ``closed_by_release`` tells whether its fds were
  closed. ``hold`` keeps the message (see ``release_held``). With ``ack``, a
  message is published on that topic after the release went out, so a peer
  that receives it knows the RELEASE arrived before;
* ``drain`` ``topic``: receive until a message whose data is ``b"end"``;
  answer ``count`` (messages before it) and ``fds`` (how many each had; all
  are taken and closed);
* ``held_hashes``: the `digest` of each held message, as it reads now;
* ``release_held`` [``ack``]: release the held messages;
* ``publish`` ``topic`` [``size``, ``seed``, ``loan``, ``fds``, ``content``]: publish
  `pattern(size, seed)` (from a loan with ``loan``) with new fds of the kinds
  listed in ``fds`` (``pipe``: a read end, ``memfd``, ``file``: a regular file,
  ``socket``: one end of a socketpair), each holding ``content`` (hex) to read;
  this member closes its own copies after publishing;
* ``stats``: `asyncbus.BusStatistics` fields, ``open_fds`` and ``budget_held``;
* ``setrlimit`` ``headroom``: lower the soft ``RLIMIT_NOFILE`` to the open fds
  plus ``headroom``; ``restore_rlimit`` sets it back;
* ``close``: close the bus and answer with ``open_fds``, then exit.

Payloads never cross the pipe: both sides make them with `pattern` and
compare `digest` values.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import random
import resource
import socket
import stat
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import uvloop

import asyncbus

DEADLINE = 10.0  # seconds one command may take
LIFETIME = 90.0  # seconds this process may live
_PAGE = 4096


@functools.lru_cache(maxsize=8)
def pattern(size: int, seed: int) -> bytes:
    """Return ``size`` deterministic bytes: a random block, each 4 KiB page stamped with its index.

    :param size: the length.
    :param seed: which pattern.
    :return: the bytes.
    """
    block = random.Random(seed).randbytes(min(size, 1 << 20))
    data = bytearray((block * (size // len(block) + 1))[:size]) if size else bytearray()
    for page, offset in enumerate(range(0, size - 8, _PAGE)):
        data[offset : offset + 8] = (seed << 40 | page).to_bytes(8, "big")

    return bytes(data)


def digest(data: bytes | bytearray | memoryview) -> str:
    """Return the digest members report for a payload (BLAKE2b, 16 bytes, hex).

    :param data: the payload.
    :return: the hex digest.
    """
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def open_fds() -> int:
    """Return how many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd")) - 1  # the listing's own


def _say(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def _kind(fd: int) -> str:
    mode = os.fstat(fd).st_mode
    for name, test in (("fifo", stat.S_ISFIFO), ("socket", stat.S_ISSOCK), ("file", stat.S_ISREG)):
        if test(mode):
            return name

    return "other"


def is_open(fd: int) -> bool:
    """Tell whether ``fd`` is open in this process.

    :param fd: the descriptor.
    :return: ``True`` if it is.
    """
    try:
        os.fstat(fd)
    except OSError:
        return False

    return True


def describe(msg: asyncbus.Message) -> dict[str, Any]:
    """Describe a received message.

    :param msg: the message.
    :return: ``size``, ``hash``, ``view`` (data is a memoryview), ``readonly``,
        ``fds`` (count), ``kinds`` and ``inheritable`` (one per fd).
    """
    data = msg.data
    view = isinstance(data, memoryview)
    return {
        "size": len(data),
        "hash": digest(data),
        "view": view,
        "readonly": data.readonly if isinstance(data, memoryview) else True,
        "fds": len(msg.fds),
        "kinds": [_kind(fd) for fd in msg.fds],
        "inheritable": [os.get_inheritable(fd) for fd in msg.fds],
    }


def _use(fd: int, action: list[Any]) -> Any:
    name, argument = action
    if name == "pread":
        return os.pread(fd, int(argument), 0).hex()

    if name == "write":
        return os.write(fd, bytes.fromhex(argument))

    raise ValueError(f"unknown use {name!r}")


class Member:
    """The state of this member: its bus, subscriptions and held messages."""

    def __init__(self, bus: asyncbus.Bus) -> None:
        self.bus = bus
        self.subscriptions: dict[str, asyncbus.Subscription] = {}
        self.held: list[asyncbus.Message] = []
        self.rlimit = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def receive(self, topic: str) -> asyncbus.Message:
        async with asyncio.timeout(DEADLINE):
            return await self.subscriptions[topic].receive()

    async def ack(self, topic: str | None) -> None:
        if topic is None:
            return

        # RELEASE goes out on the next loop turn (batched): let it, then publish
        # behind it on the same link.
        await asyncio.sleep(0)
        await self.bus.publish(topic, b"ack")

    async def do_subscribe(
        self, topic: str, policy: str = "drop_oldest", maxsize: int = 1024
    ) -> dict[str, Any]:
        self.subscriptions[topic] = self.bus.subscribe(topic, policy=policy, maxsize=maxsize)
        return {}

    async def do_wait_subscribers(self, topic: str, count: int = 1) -> dict[str, Any]:
        async with asyncio.timeout(DEADLINE):
            await self.bus.topic(topic).wait_subscribers(count)

        return {}

    async def do_receive(
        self,
        topic: str,
        uses: list[list[Any]] | None = None,
        take: bool = False,
        hold: bool = False,
        ack: str | None = None,
    ) -> dict[str, Any]:
        msg = await self.receive(topic)
        answer = describe(msg)
        answer["results"] = [_use(fd, use) for fd, use in zip(msg.fds, uses or [], strict=False)]
        if hold:
            self.held.append(msg)
            return answer

        if take:
            taken = msg.take_fds()
            answer["left_after_take"] = len(msg.fds)
            msg.release()
            answer["taken_open"] = all(is_open(fd) for fd in taken)
            for fd in taken:
                os.close(fd)
        else:
            fds = msg.fds
            msg.release()
            answer["closed_by_release"] = not any(is_open(fd) for fd in fds)

        await self.ack(ack)
        return answer

    async def do_drain(self, topic: str) -> dict[str, Any]:
        counts: list[int] = []
        while True:
            msg = await self.receive(topic)
            if msg.data == b"end":
                msg.release()
                return {"count": len(counts), "fds": counts}

            fds = msg.take_fds()
            counts.append(len(fds))
            for fd in fds:
                os.close(fd)

            msg.release()

    async def do_held_hashes(self) -> dict[str, Any]:
        return {"hashes": [digest(msg.data) for msg in self.held]}

    async def do_release_held(self, ack: str | None = None) -> dict[str, Any]:
        held, self.held = self.held, []
        for msg in held:
            msg.release()

        await self.ack(ack)
        return {"released": len(held)}

    async def do_publish(
        self,
        topic: str,
        size: int = 1,
        seed: int = 0,
        loan: bool = False,
        fds: list[str] | None = None,
        content: str = "",
    ) -> dict[str, Any]:
        data = pattern(size, seed)
        raw = bytes.fromhex(content)
        with contextlib.ExitStack() as stack:
            passed = [_make_fd(kind, raw, stack) for kind in fds or []]
            if loan:
                async with self.bus.loan(size) as lent:
                    lent.data[:] = data
                    await self.bus.publish(topic, lent, fds=passed)
            else:
                await self.bus.publish(topic, data, fds=passed)

        return {"hash": digest(data)}

    async def do_stats(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self.bus.statistics()),
            "open_fds": open_fds(),
            "budget_held": asyncbus.fd_budget.held,
        }

    async def do_setrlimit(self, headroom: int) -> dict[str, Any]:
        soft = open_fds() + headroom
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, self.rlimit[1]))
        return {"soft": soft}

    async def do_restore_rlimit(self) -> dict[str, Any]:
        resource.setrlimit(resource.RLIMIT_NOFILE, self.rlimit)
        return {}


def _make_fd(kind: str, content: bytes, stack: contextlib.ExitStack) -> int:
    """Make an fd of ``kind`` from which a receiver reads ``content``; ``stack`` closes ours."""
    if kind == "pipe":
        read_end, write_end = os.pipe()
        stack.callback(os.close, read_end)
        with open(write_end, "wb") as writer:  # closed: the reader sees the end of file
            writer.write(content)

        return read_end

    if kind == "memfd":
        fd = os.memfd_create("fd_member", os.MFD_CLOEXEC)
        stack.callback(os.close, fd)
        os.write(fd, content)
        return fd

    if kind == "file":
        fd, path = tempfile.mkstemp()
        stack.callback(os.close, fd)
        os.unlink(path)  # nobody else can open it
        os.write(fd, content)
        return fd

    if kind == "socket":
        ours, theirs = socket.socketpair()
        stack.callback(theirs.close)
        with ours:
            ours.sendall(content)

        return theirs.fileno()

    raise ValueError(f"unknown fd kind {kind!r}")


async def _serve(url: str) -> None:
    async with asyncbus.connect(url) as bus:
        member = Member(bus)
        assert bus.sender is not None
        _say(event="ready", address=bus.sender.address, pid=os.getpid(), open_fds=open_fds())
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

        member.held.clear()

    _say(event="reply", open_fds=open_fds(), budget_held=asyncbus.fd_budget.held)


def main(argv: list[str]) -> None:
    """Run the member.

    :param argv: the arguments (without the program name).
    """
    parser = argparse.ArgumentParser(description="A bus member that passes fds.")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("url")
    args = parser.parse_args(argv)
    factory: Callable[[], asyncio.AbstractEventLoop] = (
        uvloop.new_event_loop if args.loop == "uvloop" else asyncio.new_event_loop
    )

    async def run() -> None:
        async with asyncio.timeout(LIFETIME):
            await _serve(args.url)

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(run())


if __name__ == "__main__":
    main(sys.argv[1:])
