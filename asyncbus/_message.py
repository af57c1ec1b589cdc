"""What a subscriber receives: `Message`, who sent it (`Sender`), and what it owns.

A message from a unix bus may own file descriptors and a mapped shared-memory
segment. Each received descriptor has exactly one owner at a time: the
message, until someone calls `Message.take_fds` (then the caller) or the
message is released (then it is closed). `_Resources` holds them; a message
without any has none, so ordinary messages cost nothing extra.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import resource
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import final

from ._exceptions import FDBudgetError

__all__ = ["FDBudget", "Message", "Sender", "fd_budget"]


@final
class FDBudget:
    """How many received file descriptors this process's buses may hold at once.

    Every descriptor a bus receives (passed fds, and one per mapped segment)
    counts until it is taken with `Message.take_fds` or closed. A message
    that would go over the limit is dropped, its fds closed, and counted in
    `BusStatistics.fd_drops`, so a flood of descriptors cannot exhaust the
    process's ``RLIMIT_NOFILE``. Descriptors duplicated for sending count too,
    until they are sent.

    The default limit is half the soft ``RLIMIT_NOFILE``; set `limit` to change it.
    """

    __slots__ = ("_limit", "held")

    def __init__(self) -> None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self._limit = max(16, soft // 2) if soft != resource.RLIM_INFINITY else 1 << 20
        self.held = 0
        """Descriptors held now."""

    @property
    def limit(self) -> int:
        """The most descriptors held at once."""
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"an fd budget is a non-negative int, not {value!r}")

        self._limit = value

    def reserve(self, count: int) -> None:
        """Count ``count`` more descriptors as held.

        :param count: how many.
        :raises FDBudgetError: if that would go over the limit.
        """
        if self.held + count > self._limit:
            raise FDBudgetError(
                f"holding {count} more file descriptors would exceed this process's fd budget "
                f"({self.held} held, limit {self._limit}; see asyncbus.fd_budget)"
            )

        self.held += count

    def free(self, count: int) -> None:
        """Count ``count`` descriptors as no longer held."""
        self.held -= count

    def __repr__(self) -> str:
        return f"<FDBudget held={self.held} limit={self._limit}>"


fd_budget: FDBudget = FDBudget()
"""The process's `FDBudget`."""


def duplicate_fds(fds: list[int] | tuple[int, ...]) -> list[int]:
    """Duplicate descriptors (non-inheritable), counted in the budget (internal).

    :raises FDBudgetError: if the budget has no room for them.
    :raises OSError: if the kernel refuses one (e.g. ``EBADF``); none is left open.
    """
    fd_budget.reserve(len(fds))
    copies: list[int] = []
    try:
        for fd in fds:
            copies.append(os.dup(fd))  # os.dup makes the copy non-inheritable
    except BaseException:
        for fd in copies:
            os.close(fd)

        fd_budget.free(len(fds))
        raise

    return copies


def close_fds(fds: list[int] | tuple[int, ...]) -> None:
    """Close descriptors counted in the budget (internal)."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)

    fd_budget.free(len(fds))


class _Mapping:
    """A received segment, mapped read-only, shared by the messages that hold it.

    When the last holder lets go, the mapping is closed and ``on_release``
    tells the publisher it may reuse the segment. If user code still holds a
    view into it (a slice of ``msg.data``), the mapping cannot close yet; the
    publisher is told only when that view is gone, so nothing it reads changes.
    """

    __slots__ = ("_map", "_on_release", "_refs", "view")

    def __init__(self, mapped: mmap.mmap, on_release: Callable[[], None]) -> None:
        self._map: mmap.mmap | None = mapped
        self.view = memoryview(mapped)
        self._refs = 1
        self._on_release = on_release

    def acquire(self) -> None:
        self._refs += 1

    def release(self) -> None:
        self._refs -= 1
        if self._refs or self._map is None:
            return

        mapped, self._map = self._map, None
        try:
            self.view.release()
            mapped.close()
        except BufferError:
            # Someone still holds a buffer into it: finish when the map object dies.
            weakref.finalize(mapped, _finish, self._on_release)
            return

        _finish(self._on_release)


def _finish(on_release: Callable[[], None]) -> None:
    fd_budget.free(1)  # the mapping's own reference to the memfd
    on_release()


class _Resources:
    """The file descriptors and the segment one message owns (internal).

    A message with a segment reads it through its own view (``view``), so
    releasing one message makes its ``data`` unusable without touching the
    other messages that share the mapping.
    """

    __slots__ = ("fds", "mapping", "view")

    def __init__(self, fds: list[int], mapping: _Mapping | None = None) -> None:
        # The caller has counted the fds (and the mapping) in fd_budget.
        self.fds = fds
        self.mapping = mapping
        self.view = mapping.view[:] if mapping is not None else None

    def take_fds(self) -> list[int]:
        fds, self.fds = self.fds, []
        fd_budget.free(len(fds))
        return fds

    def duplicate(self) -> _Resources:
        """Make a second owner: duplicate the fds, share the mapping.

        :raises FDBudgetError: if the budget has no room for the duplicates.
        :raises OSError: if the kernel refuses a duplicate.
        """
        fds = duplicate_fds(self.fds)
        if self.mapping is not None:
            self.mapping.acquire()

        return _Resources(fds, self.mapping)

    def close(self) -> None:
        fds, self.fds = self.fds, []
        close_fds(fds)
        view, self.view = self.view, None
        if view is not None:
            with contextlib.suppress(BufferError):  # exported: the mapping waits for it
                view.release()

        mapping, self.mapping = self.mapping, None
        if mapping is not None:
            mapping.release()

    def __del__(self) -> None:
        if self.fds or self.mapping is not None:
            self.close()

    def data(self, default: bytes | memoryview) -> bytes | memoryview:
        """The payload a message owning these reads: its own view of a segment, or ``default``."""
        return self.view if self.view is not None else default


@final
@dataclass(frozen=True, slots=True)
class Sender:
    """Who sent a message.

    :ivar address: the sender's transport address, e.g. ``"127.0.0.1:40123"``
        for ``udpm`` (the sender's send socket).
    :ivar pid: process id, when the transport can attest it (not ``udpm``).
    :ivar uid: user id, when the transport can attest it (not ``udpm``).
    :ivar gid: group id, when the transport can attest it (not ``udpm``).
    """

    address: str
    pid: int | None = None
    uid: int | None = None
    gid: int | None = None

    def __str__(self) -> str:
        return self.address


@final
class Message:
    """One message received from the bus. Treat it as read-only.

    **Large payloads.** On unix buses a payload too large for one frame arrives
    in a shared-memory segment: ``data`` is then a read-only `memoryview` of
    the publisher's segment, with no copy. It is valid until the message is
    released (`release`, the end of a ``with msg:`` block, or when the
    message is garbage-collected); after that the publisher may write the next
    message into the same memory. ``bytes(msg.data)`` makes a copy that
    stays.

    **File descriptors.** A message may carry descriptors (`fds`). The
    message owns them until you call `take_fds`, which makes them yours to
    close. Whatever was not taken is closed when the message is released,
    dropped by a full subscription's policy, left in a subscription that
    closes, or garbage-collected. Received descriptors are close-on-exec.

    :ivar topic: the topic (LCM channel) it was published on.
    :ivar data: the payload: ``bytes``, or a read-only ``memoryview`` of a
        shared segment (see above).
    :ivar seq: the sender's sequence number (u32, per sender, wraps).
    :ivar sender: who sent it.
    :ivar received_at: when this process received it (``time.time()``).
    """

    # A slotted class rather than a frozen dataclass: one is built per delivered
    # message, and a frozen dataclass's __init__ costs several times more.
    __slots__ = ("_resources", "data", "received_at", "sender", "seq", "topic")

    def __init__(
        self,
        topic: str,
        data: bytes | memoryview,
        seq: int,
        sender: Sender,
        received_at: float,
        _resources: _Resources | None = None,
    ) -> None:
        """Build a message (the bus does this; users rarely need to).

        :param topic: the topic.
        :param data: the payload.
        :param seq: the sender's sequence number.
        :param sender: who sent it.
        :param received_at: receive time, seconds since the epoch.
        """
        self.topic = topic
        self.data = data
        self.seq = seq
        self.sender = sender
        self.received_at = received_at
        self._resources = _resources

    @property
    def fds(self) -> tuple[int, ...]:
        """The file descriptors this message still owns (not yet taken)."""
        resources = self._resources
        return tuple(resources.fds) if resources is not None else ()

    def take_fds(self) -> list[int]:
        """Take the message's file descriptors: from now on closing them is your job.

        :return: the descriptors, in the order they were published (empty if
            there were none, or they were taken already).
        """
        resources = self._resources
        return resources.take_fds() if resources is not None else []

    def release(self) -> None:
        """Close the descriptors nobody took and let go of a shared payload.

        After this, a shared ``data`` view is released (using it raises
        `ValueError`). Calling it again does nothing. Messages without fds or
        a shared payload need no release.
        """
        resources = self._resources
        if resources is not None:
            self._resources = None
            resources.close()

    def __enter__(self) -> Message:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented

        return (self.topic, self.data, self.seq, self.sender) == (
            other.topic,
            other.data,
            other.seq,
            other.sender,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable-by-convention, like a dataclass(eq=True)

    def __repr__(self) -> str:
        try:
            preview = bytes(self.data[:32])
            more = "..." if len(self.data) > 32 else ""
            shown = f"{preview!r}{more}"
        except ValueError:
            shown = "<released>"

        fds = f", fds={list(self.fds)}" if self.fds else ""
        return (
            f"Message(topic={self.topic!r}, data={shown}, seq={self.seq}, "
            f"sender={self.sender.address!r}{fds})"
        )
