"""Reading stdin without blocking the event loop, whatever stdin is: a pipe, a
terminal, a file, or nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import queue
import stat
import threading
from typing import TYPE_CHECKING, Any, Final, Protocol

from ._common import _READ_SIZE

if TYPE_CHECKING:
    from collections.abc import Callable


_MAX_LINE: Final = 1 << 20  # a stdin "line" longer than this is sent in pieces


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
