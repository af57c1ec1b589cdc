"""`Loan`: shared memory a unix bus lends, to publish a large payload with no copy."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, final

from ._exceptions import ClosedError

if TYPE_CHECKING:
    from ._adapters.segments import SegmentSender
    from ._transports.memfd import WritableSegment

__all__ = ["Loan"]


@final
class Loan:
    """Shared memory to write a payload into, then publish with no copy.

    Get one from `Bus.loan` (unix transports only) and use it in an
    ``async with`` block: write the payload into `data`, then pass the loan
    itself to ``publish()``::

        async with bus.loan(len(frame)) as loan:
            camera.read_into(loan.data)
            await bus.topic("frames").publish(loan)

    Every subscriber maps the same memory read-only: nothing is copied, not
    for one subscriber, not for a hundred. A loan is published at most once.
    If the block ends without a publish, the memory goes back to the bus's
    pool. Do not keep `data` (or slices of it) past the block: after
    publishing, the bus may lend the same memory again once every subscriber
    has released the message.

    Lifecycle of the memory: *free* in the bus's pool → *lent* to this block
    → *published*, held by each subscriber until it releases the message →
    *free* again (see ``docs/fds.md``).
    """

    __slots__ = ("_lent", "_probe", "_published", "_segments", "_size", "_timeout", "_view")

    def __init__(
        self,
        segments: SegmentSender,
        size: int,
        timeout: float,
        probe: Callable[[], None] | None = None,
    ) -> None:
        """Describe a loan (use `Bus.loan`).

        :param segments: the bus's segment pool.
        :param size: the payload's length in bytes.
        :param timeout: seconds to wait for memory (0: forever).
        :param probe: finds peers that died holding memory, while waiting.
        """
        self._segments = segments
        self._probe = probe
        self._size = size
        self._timeout = timeout
        self._lent: tuple[int, WritableSegment] | None = None
        self._view: memoryview | None = None
        self._published = False

    @property
    def size(self) -> int:
        """The payload's length in bytes."""
        return self._size

    @property
    def data(self) -> memoryview:
        """The writable memory, exactly `size` bytes (only inside the ``async with`` block).

        :raises ClosedError: outside the block, or after it was published.
        """
        if self._view is None:
            state = "published" if self._published else "not lent (use async with)"
            raise ClosedError(f"the loan is {state}")

        return self._view

    async def __aenter__(self) -> Loan:
        """Take memory from the pool (waiting at most ``stall_timeout`` for some).

        :return: the loan.
        :raises RuntimeError: if the loan was already used.
        :raises MessageTooLargeError: if no segment under ``segment_memory`` holds `size`.
        :raises TimeoutError: if subscribers held all the memory for ``stall_timeout``.
        :raises ClosedError: if the bus closes meanwhile.
        :raises OSError: if the kernel refuses a new memfd.
        """
        if self._lent is not None or self._published:
            raise RuntimeError("a loan can be used once")

        self._lent = await self._segments.lend(self._size, self._timeout, self._probe)
        self._view = self._lent[1].view[: self._size]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Give the memory back if it was not published."""
        lent = self._take()
        if lent is not None:
            self._segments.give_back(lent[0])

    def _take(self) -> tuple[int, WritableSegment] | None:
        """Hand the memory over (to publish() or back to the pool); the loan is done."""
        lent, self._lent = self._lent, None
        if self._view is not None:
            self._view.release()
            self._view = None

        return lent

    def _publish(self) -> tuple[int, WritableSegment]:
        """Take the memory for publishing.

        :raises ClosedError: if the loan is not active.
        """
        if self._lent is None:
            state = "published already" if self._published else "not lent (use async with)"
            raise ClosedError(f"the loan is {state}")

        lent = self._take()
        assert lent is not None
        self._published = True
        return lent

    def __repr__(self) -> str:
        state = "published" if self._published else "lent" if self._lent else "idle"
        return f"<Loan {state} size={self._size}>"
