"""The ``asyncbus`` command line: publish, subscribe, chat, and a multi-process demo.

It uses only the public API (``import asyncbus``), like any other program would.

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
import base64
import collections
import contextlib
import io
import json
import math
import os
import queue
import re
import secrets
import stat
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, NoReturn, Protocol

import asyncbus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
    from typing import TextIO

    _Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]

__all__ = ["build_parser", "main"]

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1  # the command ran and failed
EXIT_USAGE: Final = 2  # argparse's status for a bad command line
EXIT_INTERRUPTED: Final = 130  # 128 + SIGINT, what a shell reports after Ctrl-C
EXIT_BROKEN_PIPE: Final = 141  # 128 + SIGPIPE, what a shell reports for `cmd | head`

_PROG: Final = "asyncbus"
_GLOB_CHARACTERS: Final = frozenset("*?[")  # fnmatch's metacharacters: the API's glob rule
_READ_SIZE: Final = 65_536  # bytes per read from stdin: one pipe buffer on Linux
_MAX_LINE: Final = 1 << 20  # a stdin "line" longer than this is sent in pieces

# Every C0 control character except TAB, DEL, and the C1 controls (U+0080..U+009F, e.g.
# U+009B, a one-character CSI on some terminals) are shown as escapes: one message stays
# one line, and bytes from the bus cannot move the cursor or retitle the terminal.
_ESCAPES: Final[dict[int, str]] = {
    code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0)) if code != 0x09
}
_ESCAPES.update({0x0A: "\\n", 0x0D: "\\r"})


# --- errors ---------------------------------------------------------------------------


class _CommandError(Exception):
    """A failure to report as one line on stderr; ``status`` is the exit status."""

    status: int = EXIT_FAILURE


class _UsageError(_CommandError):
    """The command line cannot be run as written."""

    status = EXIT_USAGE


class _ArgumentParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose errors are one line, not usage plus error."""

    def error(self, message: str) -> NoReturn:
        """Raise `_UsageError` instead of printing usage and exiting.

        :param message: argparse's description of what is wrong.
        :raises _UsageError: always.
        """
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def _describe(exc: BaseException) -> str:
    """Return a one-line description of ``exc`` for ``asyncbus: error: ...``.

    :param exc: the exception to describe.
    :return: its message on one line, with the `OSError` behind it if there is one.
    """
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror if exc.filename is None else f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__

    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.strerror and cause.strerror not in text:
        text = f"{text}: {cause.strerror}"

    return " ".join(text.split())


def _leaves(exc: BaseException) -> list[BaseException]:
    """Return the exceptions inside ``exc``, looking through exception groups.

    :param exc: an exception or an exception group (``TaskGroup`` raises those).
    :return: the non-group exceptions it contains, depth first.
    """
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]

    return [exc]


def _exit_status(exc: BaseException) -> int | None:
    """Report an expected failure on stderr and return the exit status it deserves.

    :param exc: what escaped the command.
    :return: the exit status, or ``None`` when ``exc`` is a bug or a ``SystemExit`` that
        must propagate (with its traceback, if it is a bug).
    """
    leaves = _leaves(exc)
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        return EXIT_INTERRUPTED

    if any(isinstance(leaf, BrokenPipeError) for leaf in leaves):
        # Whoever read our stdout has gone (`asyncbus sub x | head`). Point stdout at
        # /dev/null so the interpreter's final flush does not complain, and go quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        with contextlib.suppress(OSError, ValueError):  # stdout may not be a real file
            os.dup2(devnull, sys.stdout.fileno())

        os.close(devnull)
        return EXIT_BROKEN_PIPE

    expected = (_CommandError, asyncbus.AsyncBusError, OSError)
    if not all(isinstance(leaf, expected) for leaf in leaves):
        return None

    first = leaves[0]
    _print_error(_describe(first))
    if isinstance(first, _CommandError):
        return first.status

    # InvalidURLError and LocalProtocolError are ValueErrors: the command line asked for
    # something that cannot work (a bad URL, a topic the wire format cannot carry).
    return EXIT_USAGE if isinstance(first, ValueError) else EXIT_FAILURE


def _print_error(text: str) -> None:
    """Print ``asyncbus: error: TEXT`` on stderr.

    :param text: one line saying what went wrong.
    """
    print(f"{_PROG}: error: {text}", file=sys.stderr, flush=True)


def _note(text: str) -> None:
    """Print ``asyncbus: TEXT`` on stderr, for humans.

    :param text: one line of information.
    """
    print(f"{_PROG}: {text}", file=sys.stderr, flush=True)


# --- argument types -------------------------------------------------------------------


def _integer(minimum: int) -> Callable[[str], int]:
    """Return an argparse ``type`` accepting integers of at least ``minimum``.

    :param minimum: the smallest value allowed.
    :return: a converter raising `argparse.ArgumentTypeError` on bad input.
    """

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None

        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")

        return value

    return convert


def _seconds(*, allow_zero: bool) -> Callable[[str], float]:
    """Return an argparse ``type`` accepting a finite number of seconds.

    :param allow_zero: whether 0 is allowed (it is for intervals, not for timeouts).
    :return: a converter raising `argparse.ArgumentTypeError` on bad input.
    """

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None

        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            bound = "at least 0" if allow_zero else "more than 0"
            raise argparse.ArgumentTypeError(f"must be {bound} seconds, not {text}")

        return value

    return convert


def _rate(text: str) -> float:
    """Convert a ``--rate`` argument: messages per second, more than 0.

    :param text: the argument.
    :return: the rate.
    :raises argparse.ArgumentTypeError: if it is not a positive finite number.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None

    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be more than 0 messages/s, not {text}")

    return value


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


@contextlib.asynccontextmanager
async def _open_bus(url: str | None) -> AsyncIterator[asyncbus.Bus]:
    """Open the bus at ``url``, saying which bus when that fails.

    :param url: the bus URL, or ``None`` for ``$ASYNCBUS_URL`` / the default.
    :return: a context manager yielding the open bus and closing it on exit.
    :raises asyncbus.InvalidURLError: if the URL cannot be used.
    :raises asyncbus.BrokenTransportError: if the kernel refuses the sockets (its
        message names the bus).
    :raises _CommandError: if opening fails with a bare `OSError`.
    """
    where = url or os.environ.get("ASYNCBUS_URL") or asyncbus.DEFAULT_URL
    async with contextlib.AsyncExitStack() as stack:
        try:
            bus = await stack.enter_async_context(asyncbus.connect(url))
        except OSError as exc:
            raise _CommandError(f"cannot open the bus {where}: {_describe(exc)}") from exc

        yield bus


def _check_topic(topic: str, what: str) -> None:
    """Reject a topic that no message can have, before touching the network.

    The bus checks this too; checking here gives the user the option's name.

    :param topic: the topic name.
    :param what: how the command line calls it (``TOPIC``, ``--room``).
    :raises _UsageError: if the topic is not UTF-8, is empty, has a NUL or is over 63
        bytes.
    """
    try:
        encoded = topic.encode("utf-8")
    except UnicodeEncodeError:  # argv bytes that are not UTF-8 come as lone surrogates
        raise _UsageError(f"{what} {topic!r} is not valid UTF-8") from None

    if not encoded or b"\0" in encoded or len(encoded) > 63:  # LCM_MAX_CHANNEL_NAME_LENGTH
        raise _UsageError(
            f"{what} {topic!r}: a topic must be 1 to 63 bytes of UTF-8 without NUL"
            f" (this one has {len(encoded)})"
        )


def _exactly(topic: str) -> str | re.Pattern[str]:
    """Return a subscription pattern matching ``topic`` and nothing else.

    :param topic: a topic name, which may contain glob characters.
    :return: the name itself, or an escaped regex if a glob would read it as a pattern.
    """
    if _GLOB_CHARACTERS.isdisjoint(topic):
        return topic

    return re.compile(re.escape(topic))


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


class _Lines:
    """Write whole lines to a text stream and flush each one.

    Subscribers are often piped into other programs, which want each line as it comes.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, line: str) -> None:
        """Write ``line`` and a newline, then flush.

        :param line: text without a newline.
        :raises BrokenPipeError: if the reader has gone.
        """
        self._stream.write(line + "\n")
        self._stream.flush()


def _printable(data: bytes | str) -> str:
    """Return ``data`` as text fit for one line of a terminal.

    :param data: a payload (decoded as UTF-8 with ``backslashreplace``) or a topic.
    :return: the text, control characters written as backslash escapes.
    """
    text = data if isinstance(data, str) else data.decode("utf-8", "backslashreplace")
    return text.translate(_ESCAPES)


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


# --- stdin ----------------------------------------------------------------------------


class _ChunkReader(Protocol):
    """Where stdin's bytes come from: the event loop (pipes) or a thread (the rest)."""

    async def read(self) -> bytes:
        """Return the next bytes from stdin, ``b""`` at end of input."""
        ...

    def close(self) -> None:
        """Stop reading and release what the reader holds."""
        ...


class _PipeReader:
    """Read a pipe or socket on stdin with the event loop (``connect_read_pipe``)."""

    def __init__(self, reader: asyncio.StreamReader, transport: asyncio.BaseTransport) -> None:
        self._reader = reader
        self._transport = transport

    async def read(self) -> bytes:
        """Return the next bytes from stdin, ``b""`` at end of input.

        :return: up to 64 KiB.
        """
        return await self._reader.read(_READ_SIZE)

    def close(self) -> None:
        """Close the transport (and our duplicate of fd 0), and make stdin blocking again."""
        self._transport.close()
        # O_NONBLOCK belongs to the open file, shared with whoever else has this pipe.
        with contextlib.suppress(OSError):
            os.set_blocking(0, True)


class _ThreadReader:
    """Read stdin in a daemon thread: for terminals, files and ``/dev/null``.

    epoll refuses regular files and ``/dev/null``, and making a terminal non-blocking would
    also make stdout non-blocking (they are usually one open file), so these are read by
    a thread. It is a daemon thread: one blocked in ``read()`` must not keep the process
    alive after Ctrl-C. It reads only when asked, so a large file is not read ahead.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._requests: queue.SimpleQueue[asyncio.Future[bytes] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="asyncbus-stdin", daemon=True)
        self._thread.start()

    async def read(self) -> bytes:
        """Return the next bytes from stdin, ``b""`` at end of input.

        :return: up to 64 KiB.
        :raises OSError: if reading fails.
        """
        future: asyncio.Future[bytes] = self._loop.create_future()
        self._requests.put(future)
        return await future

    def close(self) -> None:
        """Let the thread end after its current read, if any."""
        self._requests.put(None)

    def _run(self) -> None:
        while (future := self._requests.get()) is not None:
            try:
                data = os.read(0, _READ_SIZE)
            except OSError as exc:
                self._hand_over(future.set_exception, future, exc)
                return

            self._hand_over(future.set_result, future, data)
            if not data:
                return

    def _hand_over(
        self, setter: Callable[[Any], None], future: asyncio.Future[bytes], value: object
    ) -> None:
        def deliver() -> None:
            if not future.done():  # cancelled while we were reading
                setter(value)

        # The loop may be closed by now (the command ended while we were reading):
        # nobody is waiting for this, so dropping it is right.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(deliver)


class _EmptyReader:
    """Stdin that is closed (fd 0 not open): end of input at once."""

    async def read(self) -> bytes:
        """Return ``b""``: there is nothing to read.

        :return: ``b""``.
        """
        return b""

    def close(self) -> None:
        """Do nothing; nothing was opened."""


async def _open_stdin() -> _ChunkReader:
    """Start reading stdin without blocking the event loop.

    :return: a reader; close it when done.
    """
    loop = asyncio.get_running_loop()
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return _EmptyReader()

    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return _ThreadReader(loop)

    reader = asyncio.StreamReader(limit=_MAX_LINE)
    # The transport closes the file it is given: give it a duplicate, keep fd 0.
    pipe = os.fdopen(os.dup(0), "rb", buffering=0)
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
    except BaseException:
        pipe.close()
        raise

    return _PipeReader(reader, transport)


class _LineReader:
    """Split what a `_ChunkReader` returns into lines."""

    def __init__(self, chunks: _ChunkReader) -> None:
        self._chunks = chunks
        self._pending = bytearray()
        self._lines: collections.deque[bytes] = collections.deque()
        self._eof = False

    async def readline(self) -> bytes | None:
        """Return the next line without its newline, or ``None`` at end of input.

        A line longer than 1 MiB comes in pieces; a last line without newline counts.

        :return: the line, or ``None``.
        :raises OSError: if reading stdin fails.
        """
        while not self._lines:
            if self._eof:
                return None

            chunk = await self._chunks.read()
            if not chunk:
                self._eof = True
                if self._pending:
                    self._lines.append(bytes(self._pending))
                    self._pending.clear()

                continue

            self._pending += chunk
            *complete, rest = self._pending.split(b"\n")
            self._lines.extend(bytes(line) for line in complete)
            self._pending = bytearray(rest)
            while len(self._pending) > _MAX_LINE:
                self._lines.append(bytes(self._pending[:_MAX_LINE]))
                del self._pending[:_MAX_LINE]

        return self._lines.popleft()


# --- chat -----------------------------------------------------------------------------


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


# --- demo -----------------------------------------------------------------------------

# The first bytes of every demo payload: kind (b"D" data, b"E" end), the run's id (to
# ignore another demo on the same bus), and the message counter (the total, for b"E").
_DEMO_HEADER: Final = struct.Struct(">cIQ")
_DEMO_DATA: Final = b"D"
_DEMO_END: Final = b"E"

_DEMO_READY_TIMEOUT: Final = 30.0  # starting Python on a loaded 2-core CI machine
_DEMO_STALL_TIMEOUT: Final = 2.0  # a subscriber silent this long no longer paces us
_DEMO_END_TIMEOUT: Final = 5.0  # time for every subscriber to report after the end
_DEMO_END_RESEND: Final = 0.1  # the end marker can be lost too: repeat it this often
_DEMO_KILL_TIMEOUT: Final = 5.0  # bound on reaping a killed child
_DEMO_RECEIVE_BUFFER: Final = 160_000  # bytes of a default 208 KiB SO_RCVBUF we plan to use
_DEMO_DATAGRAM_OVERHEAD: Final = 1024  # kernel bookkeeping (skb truesize) per datagram


def _default_window(size: int) -> int:
    """Return how many messages the demo publisher may be ahead of its slowest subscriber.

    Enough to keep everyone busy, few enough that a default socket receive buffer
    (``net.core.rmem_default``, 212992 bytes on Linux) holds them all when a subscriber is
    briefly not scheduled, as happens with more processes than cores.

    :param size: the payload size.
    :return: the window, in messages.
    """
    return max(2, min(128, _DEMO_RECEIVE_BUFFER // (size + _DEMO_DATAGRAM_OVERHEAD)))


@dataclass(eq=False)
class _DemoChild:
    """One demo subscriber process, as the publisher sees it."""

    number: int
    process: asyncio.subprocess.Process
    changed: asyncio.Event
    ready: bool = False
    gone: bool = False
    progress: int = 0  # every message below this counter has reached it, or never will
    paced: bool = True  # whether the publisher waits for it
    stalled: bool = False
    report: dict[str, Any] | None = None
    stderr: bytes = b""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def read_stdout(self) -> None:
        """Follow the child's stdout: ``ready``, ``progress N``, ``report {...}``."""
        assert self.process.stdout is not None
        try:
            while line := await self.process.stdout.readline():
                word, _, rest = line.decode("ascii", "replace").strip().partition(" ")
                with contextlib.suppress(ValueError):  # a garbled line means no news
                    if word == "ready":
                        self.ready = True
                    elif word == "progress":
                        self.progress = max(self.progress, int(rest))
                    elif word == "report":
                        self.report = json.loads(rest)

                self.changed.set()
        finally:
            self.gone = True
            self.changed.set()

    async def read_stderr(self) -> None:
        """Keep the end of the child's stderr, to explain a failure."""
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.read(_READ_SIZE):
            self.stderr = (self.stderr + chunk)[-4096:]

    def failure(self) -> str:
        """Say why this child did not report.

        :return: one line.
        """
        lines = self.stderr.decode("utf-8", "replace").strip().splitlines()
        why = f": {lines[-1]}" if lines else ""
        status = self.process.returncode
        if not self.gone or status is None:
            return f"subscriber {self.number} did not report in time{why}"

        return f"subscriber {self.number} exited with status {status} without a report{why}"


async def _wait_until(
    changed: asyncio.Event, condition: Callable[[], bool], seconds: float
) -> bool:
    """Wait until ``condition()`` holds, re-checking each time ``changed`` is set.

    :param changed: set whenever a child's state changes.
    :param condition: what to wait for.
    :param seconds: how long to wait at most.
    :return: whether the condition holds.
    """
    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            while not condition():
                changed.clear()
                await changed.wait()
    except TimeoutError:
        if not deadline.expired():
            raise

    return condition()


async def _demo(args: argparse.Namespace) -> int:
    """Run ``asyncbus demo``.

    :param args: the parsed command line.
    :return: 0 when it ran (losses included), 1 if a subscriber failed.
    :raises _CommandError: if the bus cannot be opened or the subscribers do not start.
    """
    _check_topic(args.topic, "--topic")
    window = _default_window(args.size) if args.window is None else args.window
    run_id = secrets.randbits(32)
    changed = asyncio.Event()
    children: list[_DemoChild] = []
    async with _open_bus(args.url) as bus:
        topic = bus.topic(args.topic)
        try:
            await _start_children(args, bus.url, run_id, window, changed, children)
            if args.verbose:
                _note(f"all {len(children)} subscribers listen; publishing {args.messages}")

            started = time.perf_counter()
            await _publish_demo(args, topic, run_id, window, changed, children)
            elapsed = time.perf_counter() - started
            await _end_demo(
                topic, _DEMO_HEADER.pack(_DEMO_END, run_id, args.messages), changed, children
            )
        finally:
            await _stop_children(children)

        report = _demo_report(args, bus.url, window, elapsed, children)

    out = _Lines(sys.stdout)
    if args.json:
        out.write(json.dumps(report))
    else:
        for line in _demo_table(report):
            out.write(line)

    failures = [child.failure() for child in children if child.report is None]
    for failure in failures:
        _print_error(failure)

    return EXIT_FAILURE if failures else EXIT_OK


async def _end_demo(
    topic: asyncbus.Topic, end: bytes, changed: asyncio.Event, children: list[_DemoChild]
) -> None:
    """Publish the end marker until every subscriber has reported, for a bounded time.

    Subscribers that do not report in time are reported as failures by the caller.

    :param topic: the demo's topic.
    :param end: the end marker.
    :param changed: set whenever a child's state changes.
    :param children: the subscribers.
    :raises asyncbus.AsyncBusError: if publishing fails.
    """

    def all_reported() -> bool:
        return all(child.report is not None or child.gone for child in children)

    deadline = asyncio.get_running_loop().time() + _DEMO_END_TIMEOUT
    while not all_reported() and asyncio.get_running_loop().time() < deadline:
        # Sent through the same socket after the data, so it arrives after it; but it
        # can be lost like any datagram, hence the repeats.
        await topic.publish(end)
        await _wait_until(changed, all_reported, _DEMO_END_RESEND)


async def _start_children(
    args: argparse.Namespace,
    url: str,
    run_id: int,
    window: int,
    changed: asyncio.Event,
    children: list[_DemoChild],
) -> None:
    """Start the subscriber processes and wait until each is subscribed.

    :param args: the parsed command line.
    :param url: the bus, as the publisher opened it.
    :param run_id: this run's id.
    :param window: the flow control window (0: none).
    :param changed: set whenever a child's state changes.
    :param children: filled with the children as they start (for the caller to stop).
    :raises _CommandError: if a child fails to start or to subscribe in time.
    """
    command = [
        sys.executable,
        "-m",
        "asyncbus",
        "demo-subscriber",
        *("--url", url, "--loop", args.loop, "--topic", args.topic),
        *("--run-id", str(run_id), "--expected", str(args.messages)),
        *("--ack-every", str(max(1, window // 4) if window else 0)),
        *("--queue", str(max(1024, 4 * window))),
    ]
    env = _child_environment()
    for number in range(1, args.subscribers + 1):
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        child = _DemoChild(number, process, changed)
        children.append(child)
        child.tasks = [
            asyncio.create_task(child.read_stdout()),
            asyncio.create_task(child.read_stderr()),
        ]

    if args.verbose:
        _note(f"started {len(children)} subscriber processes, waiting until they listen")

    def settled() -> bool:
        return all(child.ready for child in children) or any(c.gone for c in children)

    await _wait_until(changed, settled, _DEMO_READY_TIMEOUT)
    for child in children:
        if not child.ready:
            await _stop_children(children)  # so that their stderr is complete
            raise _CommandError(f"demo {child.failure()} (it never listened)")


def _child_environment() -> dict[str, str]:
    """Return the environment for the demo's children.

    :return: ours, with the directory holding this asyncbus first on ``PYTHONPATH``, so
        that ``python -m asyncbus`` in the child runs this very code, installed or not.
    """
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(asyncbus.__file__ or "")))
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, path]))}


async def _publish_demo(
    args: argparse.Namespace,
    topic: asyncbus.Topic,
    run_id: int,
    window: int,
    changed: asyncio.Event,
    children: list[_DemoChild],
) -> None:
    """Publish the numbered messages, paced by the window and by ``--rate``.

    :param args: the parsed command line.
    :param topic: where to publish.
    :param run_id: this run's id.
    :param window: most messages ahead of the slowest subscriber (0: no limit).
    :param changed: set whenever a child's state changes.
    :param children: the subscribers.
    :raises asyncbus.AsyncBusError: if publishing fails.
    """
    loop = asyncio.get_running_loop()
    padding = bytes(args.size - _DEMO_HEADER.size)
    started = loop.time()
    floor = 0  # the slowest paced subscriber's progress, as last computed
    for counter in range(args.messages):
        if window and counter - floor >= window:
            floor = await _wait_window(counter, window, changed, children)
        elif not window and counter % 256 == 0:
            await asyncio.sleep(0)  # unpaced: still let Ctrl-C and pipes through

        if args.rate is not None:
            delay = started + counter / args.rate - loop.time()
            if delay > 0.001:  # finer sleeps are not worth a trip through the loop
                await asyncio.sleep(delay)

        await topic.publish(_DEMO_HEADER.pack(_DEMO_DATA, run_id, counter) + padding)


async def _wait_window(
    counter: int, window: int, changed: asyncio.Event, children: list[_DemoChild]
) -> int:
    """Wait until message ``counter`` is within ``window`` of every paced subscriber.

    A subscriber that acknowledges nothing for a while is no longer waited for (and the
    report says so), so a stuck one cannot stop the demo.

    :param counter: the next message's counter.
    :param window: the window, more than 0.
    :param changed: set whenever a child's state changes.
    :param children: the subscribers.
    :return: the slowest paced subscriber's progress now.
    """
    while True:
        paced = [child for child in children if child.paced and not child.gone]
        if not paced:
            return counter

        slowest = min(paced, key=lambda child: child.progress)
        if counter - slowest.progress < window:
            return slowest.progress

        changed.clear()
        try:
            async with asyncio.timeout(_DEMO_STALL_TIMEOUT):
                await changed.wait()
        except TimeoutError:
            slowest.paced = False
            slowest.stalled = True


async def _stop_children(children: list[_DemoChild]) -> None:
    """Kill the children still running and wait for them and their pipes.

    :param children: the subscribers.
    """
    for child in children:
        if child.process.stdin is not None:
            child.process.stdin.close()  # end of input tells a child we are gone

        if child.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()

    if not children:
        return

    async with asyncio.timeout(_DEMO_KILL_TIMEOUT):
        await asyncio.gather(*(child.process.wait() for child in children))
        # The pipes end when the processes do; reading them to the end closes them.
        await asyncio.gather(*(task for child in children for task in child.tasks))


def _rates(messages: int, size: int, seconds: float | None) -> tuple[float | None, float | None]:
    """Return messages/s and MB/s (10**6 bytes) for ``messages`` of ``size`` bytes.

    :param messages: how many messages.
    :param size: bytes each.
    :param seconds: over how long, ``None`` or 0 if unknown.
    :return: both rates, ``None`` when there is no time to divide by.
    """
    if not seconds or seconds <= 0:
        return None, None

    return messages / seconds, messages * size / seconds / 1e6


def _demo_report(
    args: argparse.Namespace,
    url: str,
    window: int,
    elapsed: float,
    children: list[_DemoChild],
) -> dict[str, Any]:
    """Put the children's reports together.

    :param args: the parsed command line.
    :param url: the bus.
    :param window: the flow control window used.
    :param elapsed: seconds the publisher took to send the messages.
    :param children: the subscribers.
    :return: the report (as ``--json`` prints it).
    """
    subscribers: list[dict[str, Any]] = []
    for child in children:
        entry: dict[str, Any] = {"subscriber": child.number, "reported": child.report is not None}
        if child.report is None:
            entry["error"] = child.failure()
        else:
            entry.update(child.report)
            entry["msg_per_s"], entry["mb_per_s"] = _rates(
                child.report["received"], args.size, child.report["seconds"]
            )

        entry["stalled"] = child.stalled
        subscribers.append(entry)

    expected = args.messages * len(children)
    received = sum(entry.get("unique", 0) for entry in subscribers)
    msg_per_s, mb_per_s = _rates(args.messages, args.size, elapsed)
    total_msg_per_s, total_mb_per_s = _rates(received, args.size, elapsed)
    return {
        "url": url,
        "topic": args.topic,
        "messages": args.messages,
        "size": args.size,
        "window": window,
        "rate": args.rate,
        "publisher": {
            "sent": args.messages,
            "seconds": elapsed,
            "msg_per_s": msg_per_s,
            "mb_per_s": mb_per_s,
        },
        "subscribers": subscribers,
        "total": {
            "received": received,
            "expected": expected,
            "lost": expected - received,
            "msg_per_s": total_msg_per_s,
            "mb_per_s": total_mb_per_s,
        },
    }


def _demo_table(report: dict[str, Any]) -> list[str]:
    """Format the demo's report for people.

    :param report: what `_demo_report` returned.
    :return: the lines to print.
    """

    def number(value: float | None, digits: int = 0) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    publisher = report["publisher"]
    pacing = (
        f"at most {report['window']} messages ahead of the slowest subscriber"
        if report["window"]
        else "none"
    )
    if report["rate"]:
        pacing += f", at most {report['rate']:g} messages/s"

    lines = [
        f"{len(report['subscribers'])} subscriber processes, {report['messages']} messages "
        f"of {report['size']} B on {report['topic']!r} via {report['url']}",
        f"publisher: {publisher['sent']} messages in {publisher['seconds']:.3f} s: "
        f"{number(publisher['msg_per_s'])} msg/s, {number(publisher['mb_per_s'], 2)} MB/s "
        f"(flow control: {pacing})",
        f"{'subscriber':>10}  {'received/expected':>17}  {'lost':>6}  {'loss':>7}  "
        f"{'first':>7}  {'last':>7}  {'gaps':>5}  {'drops':>5}  {'msg/s':>9}  {'MB/s':>7}",
    ]
    for entry in report["subscribers"]:
        if not entry["reported"]:
            lines.append(f"{entry['subscriber']:>10}  {entry['error']}")
            continue

        bus = entry["bus"]
        drops = bus["kernel_drops"] + bus["overflow_drops"] + bus["incomplete"]
        stalled = "  (stalled: not waited for)" if entry["stalled"] else ""
        lines.append(
            f"{entry['subscriber']:>10}  "
            f"{str(entry['unique']) + '/' + str(entry['expected']):>17}  "
            f"{entry['lost']:>6}  {entry['lost'] / entry['expected']:>7.2%}  "
            f"{_or_dash(entry['first']):>7}  {_or_dash(entry['last']):>7}  "
            f"{bus['gaps']:>5}  {drops:>5}  "
            f"{number(entry['msg_per_s']):>9}  {number(entry['mb_per_s'], 2):>7}{stalled}"
        )

    total = report["total"]
    loss = total["lost"] / total["expected"] if total["expected"] else 0.0
    lines.append(
        f"{'all':>10}  {str(total['received']) + '/' + str(total['expected']):>17}  "
        f"{total['lost']:>6}  {loss:>7.2%}  {'':>7}  {'':>7}  {'':>5}  {'':>5}  "
        f"{number(total['msg_per_s']):>9}  {number(total['mb_per_s'], 2):>7}"
    )
    lines.append(
        "lost: expected minus distinct messages received; gaps: sequence gaps seen by the"
        " bus; drops: kernel, queue and incomplete-message drops"
    )
    lines.append(
        "msg/s, MB/s: from a subscriber's first message to its last; all: deliveries"
        " while the publisher was sending"
    )
    return lines


def _or_dash(value: object) -> str:
    """Return ``str(value)``, or ``-`` for ``None``.

    :param value: a value that may be missing.
    :return: the text for a table cell.
    """
    return "-" if value is None else str(value)


@dataclass(eq=False)
class _Tally:
    """What a demo subscriber counts."""

    run_id: int
    expected: int
    ack_every: int
    out: _Lines
    seen: bytearray = field(init=False)
    received: int = 0
    unique: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    foreign: int = 0
    first: int | None = None
    last: int | None = None
    highest: int = -1
    acknowledged: int = 0
    started: float = 0.0
    finished: float = 0.0
    activity: float = field(default_factory=time.monotonic)
    end_marker: bool = False

    def __post_init__(self) -> None:
        self.seen = bytearray(self.expected)

    async def run(self, subscription: asyncbus.Subscription) -> None:
        """Count messages until the end marker comes (or the subscription ends).

        :param subscription: the demo topic's subscription.
        :raises BrokenPipeError: if the publisher stopped reading our progress.
        """
        async for message in subscription:
            now = time.monotonic()
            self.activity = now
            data = message.data
            if len(data) < _DEMO_HEADER.size:
                self.foreign += 1
                continue

            kind, run_id, counter = _DEMO_HEADER.unpack_from(data)
            if run_id != self.run_id:
                self.foreign += 1
            elif kind == _DEMO_END:
                self.end_marker = True
                return
            elif kind != _DEMO_DATA or counter >= self.expected:
                self.foreign += 1
            else:
                self._count(counter, now)

    def _count(self, counter: int, now: float) -> None:
        if self.first is None:
            self.first = counter
            self.started = now

        self.received += 1
        self.last = counter
        self.finished = now
        if self.seen[counter]:
            self.duplicates += 1
        else:
            self.seen[counter] = 1
            self.unique += 1

        if counter < self.highest:
            self.out_of_order += 1
        else:
            self.highest = counter

        if self.ack_every and counter + 1 >= self.acknowledged + self.ack_every:
            self.acknowledged = counter + 1
            self.out.write(f"progress {self.acknowledged}")

    async def watch_idle(self, silence: float) -> None:
        """Return once nothing has arrived for ``silence`` seconds.

        :param silence: seconds without a message that end the count.
        """
        # Polling on purpose: every message moves the deadline, and storing a float per
        # message is cheaper than rescheduling a timer (or setting an Event) per message.
        while (left := self.activity + silence - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(left)


async def _wait_end_of_input(stdin: _ChunkReader) -> None:
    """Return at end of input: the demo publisher closed our stdin, or died.

    :param stdin: the reader.
    """
    while await stdin.read():
        pass


async def _demo_subscriber(args: argparse.Namespace) -> int:
    """Run one demo subscriber (a child of ``asyncbus demo``).

    Talks to the publisher on stdout: ``ready`` once subscribed, ``progress N`` every
    ``--ack-every`` messages, and ``report {json}`` at the end marker. Stops early when
    stdin ends (the publisher has gone) or after ``--idle-timeout`` seconds of silence.

    :param args: the parsed command line.
    :return: the exit status.
    :raises _CommandError: if the publisher went away.
    """
    out = _Lines(sys.stdout)
    tally = _Tally(args.run_id, args.expected, args.ack_every, out)
    async with _open_bus(args.url) as bus:
        subscription = bus.subscribe(_exactly(args.topic), maxsize=args.queue)
        async with subscription:
            stdin = await _open_stdin()
            try:
                out.write("ready")
                tally.activity = time.monotonic()
                counting = asyncio.create_task(tally.run(subscription))
                idle = asyncio.create_task(tally.watch_idle(args.idle_timeout))
                orphaned = asyncio.create_task(_wait_end_of_input(stdin))
                tasks = {counting, idle, orphaned}
                try:
                    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in tasks:
                        task.cancel()

                    await asyncio.wait(tasks)

                for task in done:
                    task.result()  # raise what failed
            finally:
                stdin.close()

            if orphaned in done and counting not in done:
                raise _CommandError("the demo publisher went away")

            statistics = bus.statistics()
            report = {
                "received": tally.received,
                "unique": tally.unique,
                "expected": tally.expected,
                "lost": tally.expected - tally.unique,
                "duplicates": tally.duplicates,
                "out_of_order": tally.out_of_order,
                "foreign": tally.foreign,
                "first": tally.first,
                "last": tally.last,
                "seconds": tally.finished - tally.started,
                "end_marker": tally.end_marker,
                "bus": {
                    "gaps": statistics.gaps,
                    "kernel_drops": statistics.kernel_drops,
                    "overflow_drops": statistics.overflow_drops,
                    "incomplete": statistics.incomplete,
                    "malformed": statistics.malformed,
                    "reordered": statistics.reordered,
                },
                "queue_dropped": subscription.statistics().dropped,
            }
            out.write(f"report {json.dumps(report)}")

    return EXIT_OK
