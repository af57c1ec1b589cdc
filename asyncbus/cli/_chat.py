"""``asyncbus chat``: lines from stdin to a room, and the room's lines to stdout."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

import asyncbus

from ._common import (
    EXIT_OK,
    _check_topic,
    _exactly,
    _Lines,
    _note,
    _open_bus,
    _printable,
    _UsageError,
)
from ._stdin import _LineReader, _open_stdin


async def _chat(args: argparse.Namespace) -> int:
    """Run ``asyncbus chat``.

    :param args: the parsed command line.
    :return: the exit status.
    """
    name = " ".join(args.name.split())
    if not name or not name.isprintable():
        raise _UsageError(f"NAME {args.name!r}: use printable characters")

    _check_topic(args.room, "--room")
    out = _Lines(sys.stdout)
    async with _open_bus(args.url) as bus:
        room = bus.topic(args.room)
        stdin = await _open_stdin()
        try:
            async with (
                bus.subscribe(_exactly(args.room)) as subscription,
                asyncio.TaskGroup() as tasks,
            ):
                shower = tasks.create_task(_show_chat(subscription, out))
                await room.publish(f"* {name} joined".encode())
                _note(
                    f"joined {args.room!r} on {bus.url} as {name!r}; "
                    "type lines to send them, Ctrl-D to leave"
                )
                try:
                    await _send_chat(_LineReader(stdin), room, name)
                except asyncio.CancelledError:
                    # Ctrl-C: still say goodbye. Best effort, and the cancellation
                    # goes on; a bus too broken to publish has its own error already.
                    with contextlib.suppress(asyncbus.AsyncBusError, OSError):
                        await room.publish(f"* {name} left".encode())

                    raise

                await room.publish(f"* {name} left".encode())
                shower.cancel()

        finally:
            stdin.close()

    return EXIT_OK


async def _send_chat(lines: _LineReader, room: asyncbus.Topic, name: str) -> None:
    """Publish every non-blank line of stdin as ``NAME: line`` until end of input.

    :param lines: stdin, by lines.
    :param room: the room's topic.
    :param name: who speaks.
    :raises asyncbus.AsyncBusError: if publishing fails.
    :raises OSError: if stdin cannot be read.
    """
    while (line := await lines.readline()) is not None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if text.strip():
            await room.publish(f"{name}: {text}".encode())


async def _show_chat(subscription: asyncbus.Subscription, out: _Lines) -> None:
    """Print what others say in the room, one line each.

    :param subscription: the room's subscription.
    :param out: stdout.
    """
    async for message in subscription:
        out.write(_printable(message.data))
