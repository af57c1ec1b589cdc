"""What every ``asyncbus`` command shares: exit statuses, errors, argument types,
opening the bus, and writing lines on stdout and stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
from typing import TYPE_CHECKING, Final, NoReturn

import asyncbus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from typing import TextIO


EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1  # the command ran and failed
EXIT_USAGE: Final = 2  # argparse's status for a bad command line
EXIT_INTERRUPTED: Final = 130  # 128 + SIGINT, what a shell reports after Ctrl-C
EXIT_BROKEN_PIPE: Final = 141  # 128 + SIGPIPE, what a shell reports for `cmd | head`

_PROG: Final = "asyncbus"
_GLOB_CHARACTERS: Final = frozenset("*?[")  # fnmatch's metacharacters: the API's glob rule
_READ_SIZE: Final = 65_536  # bytes per read from stdin: one pipe buffer on Linux

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


# --- the bus and the terminal ---------------------------------------------------------


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


def _printable(data: bytes | memoryview | str) -> str:
    """Return ``data`` as text fit for one line of a terminal.

    :param data: a payload (decoded as UTF-8 with ``backslashreplace``) or a topic.
    :return: the text, control characters written as backslash escapes.
    """
    text = data if isinstance(data, str) else bytes(data).decode("utf-8", "backslashreplace")
    return text.translate(_ESCAPES)
