"""``asyncbus pub`` and ``asyncbus sub``."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import sys

import asyncbus

from ._common import (
    _GLOB_CHARACTERS,
    EXIT_OK,
    _check_topic,
    _CommandError,
    _describe,
    _Lines,
    _note,
    _open_bus,
    _printable,
    _UsageError,
)


def _ready(fd: int | None, verbose: bool, what: str) -> None:
    """Tell whoever waits that we are subscribed.

    :param fd: ``--ready-fd``: write ``ready`` there and close it.
    :param verbose: also print ``asyncbus: ready: WHAT`` on stderr.
    :param what: what we are listening to.
    """
    if verbose:
        _note(f"ready: {what}")

    if fd is not None:
        try:
            os.write(fd, b"ready\n")
        finally:
            os.close(fd)


def _text_line(message: asyncbus.Message) -> str:
    """Format a message for ``sub``: ``TOPIC DATA``.

    :param message: the message.
    :return: one line.
    """
    return f"{_printable(message.topic)} {_printable(message.data)}"


def _json_line(message: asyncbus.Message) -> str:
    """Format a message for ``sub --json``: one JSON object, ASCII only.

    :param message: the message.
    :return: one line of JSON.
    """
    data = bytes(message.data)
    try:
        text, encoding = data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(data).decode("ascii"), "base64"

    record = {
        "topic": message.topic,
        "data": text,
        "encoding": encoding,
        "seq": message.seq,
        "sender": str(message.sender),
        "received_at": message.received_at,
    }
    return json.dumps(record)


# --- pub ------------------------------------------------------------------------------


async def _pub(args: argparse.Namespace) -> int:
    """Run ``asyncbus pub``.

    :param args: the parsed command line.
    :return: the exit status.
    """
    _check_topic(args.topic, "TOPIC")
    # os.fsencode undoes the surrogateescape decoding of argv: DATA goes out byte for byte.
    data = os.fsencode(args.data)
    async with _open_bus(args.url) as bus:
        topic = bus.topic(args.topic)
        for number in range(args.repeat):
            if number and args.interval:
                await asyncio.sleep(args.interval)

            await topic.publish(data)

        if args.verbose:
            _note(f"published {args.repeat} message(s) on {args.topic!r} via {bus.url}")

    return EXIT_OK


# --- sub ------------------------------------------------------------------------------


async def _sub(args: argparse.Namespace) -> int:
    """Run ``asyncbus sub``.

    :param args: the parsed command line.
    :return: the exit status.
    :raises _CommandError: if ``--timeout`` expires first (see the option's help).
    """
    if args.regex:
        try:
            re.compile(args.pattern)
        except re.error as exc:
            raise _UsageError(
                f"PATTERN {args.pattern!r} is not a regular expression: {exc}"
            ) from exc

    elif _GLOB_CHARACTERS.isdisjoint(args.pattern):
        _check_topic(args.pattern, "PATTERN")

    if args.ready_fd is not None:
        try:
            os.fstat(args.ready_fd)
        except OSError as exc:
            raise _UsageError(f"--ready-fd {args.ready_fd}: {_describe(exc)}") from exc

    out = _Lines(sys.stdout)
    format_line = _json_line if args.json else _text_line
    received = 0
    async with _open_bus(args.url) as bus:
        subscription = bus.subscribe(args.pattern, regex=args.regex)
        async with subscription:
            _ready(args.ready_fd, args.verbose, f"listening on {bus.url} for {args.pattern!r}")
            deadline = asyncio.timeout(args.timeout)
            try:
                async with deadline:
                    async for message in subscription:
                        out.write(format_line(message))
                        received += 1
                        if received == args.count:
                            return EXIT_OK

            except TimeoutError:
                if not deadline.expired():
                    raise

                if args.count is None and received:
                    return EXIT_OK  # --timeout alone: listen for S seconds

                wanted = "a message" if args.count is None else f"{args.count} messages"
                raise _CommandError(
                    f"timed out after {args.timeout:g} s waiting for {wanted} on "
                    f"{args.pattern!r} (received {received})"
                ) from None

    if args.count is not None:
        raise _CommandError(f"the bus closed after {received} of {args.count} messages")

    return EXIT_OK
