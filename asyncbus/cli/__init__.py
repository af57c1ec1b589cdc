"""The ``asyncbus`` command line: publish, subscribe, chat, and a multi-process demo.

It uses only the public API (``import asyncbus``), like any other program would.
This module parses the command line and runs a command; the commands live beside it:
``_pubsub`` (``pub``, ``sub``), ``_chat``, ``_demo`` (``demo``, ``demo-subscriber``),
with ``_stdin`` (reading stdin without blocking) and ``_common`` (errors, argument
types, opening the bus, output) shared between them.

Commands::

    asyncbus pub TOPIC DATA [--repeat N] [--interval S]
    asyncbus sub PATTERN [--count N] [--timeout S] [--json] [--regex] [--ready-fd FD]
    asyncbus chat NAME [--room TOPIC]
    asyncbus demo [--subscribers N] [--messages N] [--size BYTES] [--rate R] [--window N] [--json]

Every command also takes ``--url URL`` (default: ``$ASYNCBUS_URL``, else
`asyncbus.DEFAULT_URL`), ``-v/--verbose`` (progress and readiness on stderr) and
``--loop {auto,asyncio,uvloop}`` (``auto`` uses uvloop when it is installed).

Output contract (scripts may rely on it):

* stdout carries data only; anything for humans goes to stderr.
* ``sub`` prints one line per message and flushes it: ``TOPIC DATA``, the data decoded as
  UTF-8 with ``backslashreplace``, and control characters (newlines, escape sequences)
  written as backslash escapes so that a message is always exactly one line and cannot
  drive the terminal. With ``--json``, one JSON object per line (ASCII only)::

      {"topic": "t", "data": "text or base64", "encoding": "utf-8" | "base64",
       "seq": 7, "sender": "127.0.0.1:40123", "received_at": 1700000000.0}

  ``encoding`` is ``"base64"`` exactly when the payload is not valid UTF-8.
* ``sub`` is ready (subscribed) when it writes ``ready\\n`` to ``--ready-fd FD`` (which it
  then closes), or, with ``--verbose``, when it prints ``asyncbus: ready: ...`` on stderr.
* ``chat`` payloads are plain UTF-8 text, one line per message, so ``pub`` and ``sub``
  (or any LCM program) can take part: ``NAME: TEXT`` for a line, ``* NAME joined`` and
  ``* NAME left`` for arrivals and departures. ``chat`` prints what others send, never
  its own lines, and tells on stderr (``asyncbus: joined ...``) when it is listening.
* Errors: exactly one line on stderr, ``asyncbus: error: ...``.

Exit status: 0 success; 1 the command failed at run time (the bus cannot be opened, a
timeout expired, a demo subscriber failed); 2 the command line is wrong (bad option, bad
URL, a topic the wire format cannot carry); 130 interrupted (Ctrl-C); 141 stdout was
closed by the reader (``asyncbus sub x | head``).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
from typing import TYPE_CHECKING, Any

import asyncbus

from ._chat import _chat
from ._common import (
    _PROG,
    EXIT_USAGE,
    _ArgumentParser,
    _exit_status,
    _integer,
    _print_error,
    _rate,
    _seconds,
    _UsageError,
)
from ._demo import _DEMO_HEADER, _demo, _demo_subscriber
from ._pubsub import _pub, _sub

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Sequence

    _Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]

__all__ = ["build_parser", "main"]


# --- the parser -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Build the ``asyncbus`` argument parser.

    :return: the parser; each command's namespace has a ``handler`` coroutine function.
    """
    common = _ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        help=f"the bus (default: $ASYNCBUS_URL, else {asyncbus.DEFAULT_URL})",
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", help="tell on stderr what is happening"
    )
    common.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop (default: auto, uvloop when installed)",
    )

    parser = _ArgumentParser(
        prog=_PROG,
        description="Publish, subscribe and chat on an asyncbus (LCM-compatible) bus.",
        epilog="Exit status: 0 ok, 1 failed, 2 bad command line, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", required=True
    )

    pub = commands.add_parser(
        "pub",
        parents=[common],
        help="publish a message",
        description="Publish DATA (its UTF-8 bytes) on TOPIC.",
    )
    pub.add_argument("topic", metavar="TOPIC", help="topic (LCM channel), at most 63 bytes")
    pub.add_argument("data", metavar="DATA", help="the payload, sent as UTF-8")
    pub.add_argument(
        "--repeat", type=_integer(1), default=1, metavar="N", help="send it N times (default 1)"
    )
    pub.add_argument(
        "--interval",
        type=_seconds(allow_zero=True),
        default=0.0,
        metavar="S",
        help="wait S seconds between repeats (default 0)",
    )
    pub.set_defaults(handler=_pub)

    sub = commands.add_parser(
        "sub",
        parents=[common],
        help="print messages",
        description="Print the messages whose topic matches PATTERN, one line each.",
    )
    sub.add_argument(
        "pattern", metavar="PATTERN", help="a topic, or a glob (* ? [...]) matching topics"
    )
    sub.add_argument("--regex", action="store_true", help="PATTERN is a regular expression")
    sub.add_argument(
        "--count", type=_integer(1), metavar="N", help="exit (status 0) after N messages"
    )
    sub.add_argument(
        "--timeout",
        type=_seconds(allow_zero=False),
        metavar="S",
        help="stop after S seconds; status 1 if fewer than --count (or no) messages came",
    )
    sub.add_argument(
        "--json", action="store_true", help="one JSON object per line (data base64 if binary)"
    )
    sub.add_argument(
        "--ready-fd",
        type=_integer(0),
        metavar="FD",
        help="write 'ready' to file descriptor FD and close it once subscribed",
    )
    sub.set_defaults(handler=_sub)

    chat = commands.add_parser(
        "chat",
        parents=[common],
        help="chat with others in a terminal",
        description=(
            "Send each line read from stdin as 'NAME: line' and print the lines others "
            "send. End of input (Ctrl-D) leaves the room."
        ),
    )
    chat.add_argument("name", metavar="NAME", help="your name in the room")
    chat.add_argument(
        "--room", default="chat", metavar="TOPIC", help="the room's topic (default: chat)"
    )
    chat.set_defaults(handler=_chat)

    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="measure fan-out to subscriber processes",
        description=(
            "Start subscriber processes, publish numbered messages to all of them at once, "
            "and report what each received: loss, gaps and delivered rate. Multicast is "
            "best effort, so loss is reported, not fatal. The publisher stays at most "
            "--window messages ahead of the slowest subscriber (acknowledged over the "
            "subscribers' stdout pipes: the bus itself has no flow control)."
        ),
    )
    demo.add_argument(
        "--subscribers",
        type=_integer(1),
        default=3,
        metavar="N",
        help="subscriber processes (default 3)",
    )
    demo.add_argument(
        "--messages",
        type=_integer(1),
        default=20_000,
        metavar="N",
        help="messages to publish (default 20000)",
    )
    demo.add_argument(
        "--size",
        type=_integer(_DEMO_HEADER.size),
        default=64,
        metavar="BYTES",
        help=f"payload size, at least {_DEMO_HEADER.size} (default 64)",
    )
    demo.add_argument("--topic", default="demo", help="topic to publish on (default: demo)")
    demo.add_argument(
        "--rate", type=_rate, metavar="R", help="publish at most R messages/s (default: no limit)"
    )
    demo.add_argument(
        "--window",
        type=_integer(0),
        metavar="N",
        help="most messages ahead of the slowest subscriber; 0: no flow control "
        "(default: from --size, to fit a default socket receive buffer)",
    )
    demo.add_argument("--json", action="store_true", help="print the report as JSON")
    demo.set_defaults(handler=_demo)

    # The demo's child processes; not for people (no help= keeps it out of the list).
    child = commands.add_parser("demo-subscriber", parents=[common])
    child.add_argument("--topic", required=True)
    child.add_argument("--run-id", type=_integer(0), required=True)
    child.add_argument("--expected", type=_integer(1), required=True)
    child.add_argument("--ack-every", type=_integer(0), default=0)
    child.add_argument("--queue", type=_integer(1), default=65_536)
    child.add_argument("--idle-timeout", type=_seconds(allow_zero=False), default=10.0)
    child.set_defaults(handler=_demo_subscriber)
    return parser


def _version() -> str:
    """Return the installed version of asyncbus.

    :return: the distribution's version, or ``"unknown"`` when it is not installed.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("asyncbus")
    except PackageNotFoundError:
        return str(getattr(asyncbus, "__version__", "unknown"))


# --- running --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``asyncbus`` command line.

    :param argv: the arguments after the program name (default: ``sys.argv[1:]``).
    :return: the exit status (see the module docstring).
    """
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as exc:
        _print_error(str(exc))
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version print, then exit 0
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE

    if isinstance(sys.stdout, io.TextIOWrapper):
        # Topics and text from the bus may not fit a non-UTF-8 locale: escape, don't die.
        sys.stdout.reconfigure(errors="backslashreplace")

    try:
        factory = _loop_factory(args.loop)
        handler: _Handler = args.handler
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(handler(args))
    except BaseException as exc:
        status = _exit_status(exc)
        if status is None:
            raise

        return status


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Return the event loop factory for ``--loop NAME``.

    :param name: ``auto``, ``asyncio`` or ``uvloop``.
    :return: a loop factory, or ``None`` for asyncio's default loop.
    :raises _UsageError: if ``uvloop`` is asked for but not installed.
    """
    if name == "asyncio":
        return None

    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise _UsageError("--loop uvloop: uvloop is not installed") from None

        return None

    return uvloop.new_event_loop
