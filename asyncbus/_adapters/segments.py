"""A publisher's shared-memory segments: the core's pool plus the memfds (internal).

`SegmentSender` keeps the `asyncbus._core.segments.SegmentPool` bookkeeping
and the `WritableSegment` each slot stands for, creates and closes memfds
when the pool says so, and lets a publisher wait (bounded) for a peer to
release memory when every byte under ``segment_memory`` is in use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Iterable
from typing import Final

from .._core.segments import PoolStatistics, SegmentPool
from .._exceptions import ClosedError, MessageTooLargeError
from .._transports.memfd import WritableSegment

__all__ = ["SegmentSender"]

# While waiting for memory, check this often that the holders are alive: on unix:
# a dead peer is noticed only when a send to it fails.
_PROBE_INTERVAL: Final = 0.25


class SegmentSender:
    """The segments one bus member publishes from (internal)."""

    def __init__(self, *, limit: int, keep: int) -> None:
        self._pool = SegmentPool(limit=limit, keep=keep)
        self._segments: dict[int, WritableSegment] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False

    async def lend(
        self, size: int, stall_timeout: float, probe: Callable[[], None] | None = None
    ) -> tuple[int, WritableSegment]:
        """Get a segment to write a ``size``-byte payload into.

        :param size: the payload length.
        :param stall_timeout: seconds to wait for peers to release memory (0: forever).
        :param probe: called before each wait (and every 0.25 s of it) to find
            holders that died: their memory comes back when they are forgotten.
        :return: the slot and its segment (give it back or publish it).
        :raises MessageTooLargeError: if no segment under ``segment_memory`` can hold it.
        :raises TimeoutError: if peers held every segment for ``stall_timeout`` seconds.
        :raises ClosedError: if the bus closes meanwhile.
        :raises OSError: if the kernel refuses a new memfd.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + stall_timeout if stall_timeout else None
        if self._pool.reuse_pending(size):
            # Releases may wait unread in our socket: read them (one loop turn)
            # rather than fault in a new segment's pages.
            await asyncio.sleep(0)

        while True:
            if self._closed:
                raise ClosedError("the bus was closed while publishing")

            try:
                lending = self._pool.lend(size)
            except ValueError as exc:
                raise MessageTooLargeError(
                    f"{exc} (raise the bus's segment_memory option to send it)"
                ) from None

            if lending is not None:
                break

            if deadline is not None and loop.time() >= deadline:
                stats = self._pool.statistics()
                raise TimeoutError(
                    f"no shared memory for a {size}-byte payload after {stall_timeout:g} s: "
                    f"peers hold {stats.published} segments of this publisher "
                    f"({stats.bytes} bytes, limit {self._pool.limit}); "
                    "they release them as they drop their messages"
                )

            if probe is not None:
                probe()

            waiter = loop.create_future()
            self._waiters.append(waiter)
            wake_at = loop.time() + _PROBE_INTERVAL
            if deadline is not None:
                wake_at = min(wake_at, deadline)

            handle = loop.call_at(wake_at, _wake, waiter)
            try:
                await waiter
            finally:
                handle.cancel()

        self._destroy(lending.destroy)
        if lending.create:
            try:
                self._segments[lending.slot] = WritableSegment(lending.capacity)
            except BaseException:
                self._pool.discard(lending.slot)
                raise

        return lending.slot, self._segments[lending.slot]

    def give_back(self, slot: int) -> None:
        """Return a segment that was not published."""
        if not self._closed:
            self._destroy(self._pool.give_back(slot))
            self._wake()

    def publish(self, slot: int, holders: Iterable[Hashable]) -> int:
        """Hand a lent segment to the peers it goes to; return its loan number."""
        loan, destroy = self._pool.publish(slot, holders)
        self._destroy(destroy)
        if destroy or not self._pool.holders(loan):
            self._wake()

        return loan

    def release(self, loan: int, holder: Hashable) -> None:
        """A peer released a loan (or its frame was never sent)."""
        if not self._closed:
            self._destroy(self._pool.release(loan, holder))
            if not self._pool.holders(loan):
                self._wake()

    def drop_holder(self, holder: Hashable) -> None:
        """A peer left or died: release all it holds."""
        if not self._closed:
            self._destroy(self._pool.drop_holder(holder))
            self._wake()

    def statistics(self) -> PoolStatistics:
        """Return the pool's counters."""
        return self._pool.statistics()

    def close(self) -> None:
        """Close every memfd (receivers keep their mappings) and wake waiters."""
        if self._closed:
            return

        self._closed = True
        self._destroy(self._pool.clear())
        self._wake()

    def _destroy(self, slots: Iterable[int]) -> None:
        for slot in slots:
            segment = self._segments.pop(slot, None)
            if segment is not None:
                segment.close()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            _wake(waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
