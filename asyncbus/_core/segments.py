"""A publisher's shared-memory segments: which are free, lent, or held (sans-I/O).

Theory of operation
-------------------
A payload too large for one frame travels in a *segment*: a memfd the publisher
keeps mapped writable and sends, sealed against shrinking, growing and new
writers, to every peer that wants the message. Peers map it read-only and send
RELEASE when they no longer read it. Writing a new payload into a segment
that a peer still reads would change what it reads, so a segment is reused
only once every peer it went to has released it (or left, or died).

This module decides; the adapter creates, maps and closes the memfds. Slots
are the adapter's handles for segments (small ints handed out here).

A segment is in one of three states:

==============  ==========================================  ===================
state           meaning                                     leaves by
==============  ==========================================  ===================
free            mapped, nobody writes or reads it           `lend` (LIFO: warm
                                                            pages first), trim
lent            a publish() or a user's loan writes into    `publish`,
                it                                          `give_back`
published       peers hold it under a loan number           the last `release`
                                                            or `drop_holder`
==============  ==========================================  ===================

Sizes come in classes (powers of two from `MIN_CAPACITY`), so a segment
serves any payload of its class. ``limit`` bounds the bytes of all segments;
``keep`` bounds the bytes of free ones (the least recently used go first).
Pages of a memfd are allocated when written, so a class's unused tail costs
address space, not memory.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Final

__all__ = ["MIN_CAPACITY", "Lending", "PoolStatistics", "SegmentPool", "capacity_for"]

MIN_CAPACITY: Final = 64 * 1024  # below this a payload fits in a frame anyway
_LOAN_MASK: Final = 0xFFFFFFFF  # loan numbers are u32 on the wire


def capacity_for(size: int) -> int:
    """Return the capacity of the segment class that holds ``size`` bytes.

    :param size: the payload length.
    :return: the smallest power of two at least ``size`` and `MIN_CAPACITY`.
    :raises ValueError: if ``size`` is negative.
    """
    if size < 0:
        raise ValueError(f"a payload has no negative size: {size}")

    return max(MIN_CAPACITY, 1 << max(0, size - 1).bit_length())


@dataclass(frozen=True, slots=True)
class Lending:
    """The answer to `SegmentPool.lend`.

    :ivar slot: the segment to write into.
    :ivar capacity: its size in bytes.
    :ivar create: the slot is new: the adapter must create a memfd of ``capacity``.
    :ivar destroy: free slots the adapter must close first to stay under the limit.
    """

    slot: int
    capacity: int
    create: bool
    destroy: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """How a pool is doing.

    :ivar segments: segments that exist (free, lent or published).
    :ivar bytes: their total capacity.
    :ivar free: segments ready for reuse.
    :ivar published: segments peers still hold.
    :ivar created: loans that asked for a new segment since the start (a reuse
        creates none; one whose memfd could not be made still counts).
    :ivar reused: loans served by a free segment.
    """

    segments: int
    bytes: int
    free: int
    published: int
    created: int
    reused: int


class SegmentPool:
    """The state of one publisher's segments."""

    def __init__(self, *, limit: int, keep: int) -> None:
        """Make an empty pool.

        :param limit: most bytes in all segments together.
        :param keep: most bytes in free segments.
        :raises ValueError: if ``limit`` is below `MIN_CAPACITY` or ``keep`` is negative.
        """
        if limit < MIN_CAPACITY:
            raise ValueError(f"segment limit must be at least {MIN_CAPACITY} bytes, not {limit}")

        if keep < 0:
            raise ValueError(f"bytes kept free must not be negative, not {keep}")

        self.limit = limit
        self.keep = keep
        self._capacity: dict[int, int] = {}  # slot -> capacity, for every segment
        self._free: collections.OrderedDict[int, None] = collections.OrderedDict()  # LRU first
        self._lent: set[int] = set()
        self._loans: dict[int, tuple[int, set[Hashable]]] = {}  # loan -> (slot, holders)
        self._held: dict[Hashable, set[int]] = {}  # holder -> its loans
        self._bytes = 0
        self._free_bytes = 0
        self._next_slot = 0
        self._next_loan = 0
        self._created = 0
        self._reused = 0

    def lend(self, size: int) -> Lending | None:
        """Find a segment for a payload of ``size`` bytes and mark it lent.

        :param size: the payload length (at most ``limit``).
        :return: where to write it, or ``None`` if every byte under the limit is
            lent or published: wait for a release and ask again.
        :raises ValueError: if the size class of ``size`` is over the limit (no
            segment could ever hold it).
        """
        capacity = capacity_for(size)
        if capacity > self.limit:
            raise ValueError(
                f"a payload of {size} bytes needs a {capacity}-byte segment; "
                f"the limit is {self.limit} bytes"
            )

        for slot in reversed(self._free):  # the most recently freed: its pages are warm
            if self._capacity[slot] == capacity:
                self._take_free(slot)
                self._lent.add(slot)
                self._reused += 1
                return Lending(slot, capacity, create=False, destroy=())

        if self._bytes - self._free_bytes + capacity > self.limit:
            return None  # even with every free segment closed it would not fit

        destroy: list[int] = []
        while self._bytes + capacity > self.limit:
            slot = next(iter(self._free))  # least recently used
            self._take_free(slot)
            self._forget(slot)
            destroy.append(slot)

        slot = self._next_slot
        self._next_slot += 1
        self._capacity[slot] = capacity
        self._bytes += capacity
        self._lent.add(slot)
        self._created += 1
        return Lending(slot, capacity, create=True, destroy=tuple(destroy))

    def reuse_pending(self, size: int) -> bool:
        """Tell whether no segment of ``size``'s class is free but one is published.

        A release for it may already be on its way: worth a look before `lend`
        creates a new segment (new pages are many times slower to fill).

        :param size: the payload length.
        :return: ``True`` if a release would let `lend` reuse a segment.
        """
        capacity = capacity_for(size)
        if any(self._capacity[slot] == capacity for slot in self._free):
            return False

        return any(self._capacity[slot] == capacity for slot, _ in self._loans.values())

    def give_back(self, slot: int) -> tuple[int, ...]:
        """Return a lent segment that was not published (`discard` one that was never made).

        :param slot: a lent slot.
        :return: free slots to close (over ``keep``).
        """
        self._lent.remove(slot)
        return self._make_free(slot)

    def discard(self, slot: int) -> None:
        """Forget a lent slot whose memfd could not be created.

        :param slot: a lent slot.
        """
        self._lent.remove(slot)
        self._forget(slot)

    def publish(self, slot: int, holders: Iterable[Hashable]) -> tuple[int, tuple[int, ...]]:
        """Hand a lent segment to the peers it goes to.

        :param slot: a lent slot.
        :param holders: the peers that will hold it (none: it is free at once).
        :return: the loan number for the SEGMENT frames, and free slots to close.
        """
        self._lent.remove(slot)
        loan = self._next_loan
        while loan in self._loans:  # after the u32 wraps, a loan may still be held
            loan = (loan + 1) & _LOAN_MASK

        self._next_loan = (loan + 1) & _LOAN_MASK
        held = set(holders)
        if not held:
            return loan, self._make_free(slot)

        self._loans[loan] = (slot, held)
        for holder in held:
            self._held.setdefault(holder, set()).add(loan)

        return loan, ()

    def release(self, loan: int, holder: Hashable) -> tuple[int, ...]:
        """A holder no longer reads a loan (RELEASE, or its frame was never sent).

        Unknown loans and holders that do not hold the loan are ignored: a peer
        can only release what it holds.

        :param loan: the loan number.
        :param holder: the peer.
        :return: free slots to close.
        """
        entry = self._loans.get(loan)
        if entry is None or holder not in entry[1]:
            return ()

        slot, holders = entry
        holders.discard(holder)
        loans = self._held.get(holder)
        if loans is not None:
            loans.discard(loan)
            if not loans:
                del self._held[holder]

        if holders:
            return ()

        del self._loans[loan]
        return self._make_free(slot)

    def drop_holder(self, holder: Hashable) -> tuple[int, ...]:
        """Release everything a peer holds (it left or died).

        :param holder: the peer.
        :return: free slots to close.
        """
        destroy: list[int] = []
        for loan in list(self._held.get(holder, ())):
            destroy.extend(self.release(loan, holder))

        return tuple(destroy)

    def clear(self) -> tuple[int, ...]:
        """Forget every segment (the bus is closing).

        :return: every slot, to close.
        """
        slots = tuple(self._capacity)
        self._capacity.clear()
        self._free.clear()
        self._lent.clear()
        self._loans.clear()
        self._held.clear()
        self._bytes = self._free_bytes = 0
        return slots

    def holders(self, loan: int) -> frozenset[Hashable]:
        """Return who still holds a loan (empty if it is over).

        :param loan: the loan number.
        :return: the holders.
        """
        entry = self._loans.get(loan)
        return frozenset(entry[1]) if entry is not None else frozenset()

    def statistics(self) -> PoolStatistics:
        """Return the pool's counters.

        :return: a snapshot.
        """
        return PoolStatistics(
            segments=len(self._capacity),
            bytes=self._bytes,
            free=len(self._free),
            published=len(self._loans),
            created=self._created,
            reused=self._reused,
        )

    def _take_free(self, slot: int) -> None:
        del self._free[slot]
        self._free_bytes -= self._capacity[slot]

    def _make_free(self, slot: int) -> tuple[int, ...]:
        self._free[slot] = None
        self._free_bytes += self._capacity[slot]
        destroy: list[int] = []
        while self._free_bytes > self.keep:
            oldest = next(iter(self._free))
            self._take_free(oldest)
            self._forget(oldest)
            destroy.append(oldest)

        return tuple(destroy)

    def _forget(self, slot: int) -> None:
        self._bytes -= self._capacity.pop(slot)
