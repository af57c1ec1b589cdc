"""Putting fragmented LCM messages (``LC03``) back together, in bounded memory (sans-I/O).

Theory of operation
-------------------
A message in flight is keyed by ``(sender, seq)``: LCM numbers messages per sender, and
one sender's fragments of different messages may interleave after reordering. A key is
in one of three states:

* **absent**: nothing is known about it.
* **partial**: some fragments are held in memory, waiting for the rest.
* **rejected**: the message was given up (too large, inconsistent, evicted or expired).
  Its later fragments are dropped without being counted again, until ``timeout`` passes
  without one. Without this a rejected message's leftovers would start a new partial
  message that can only fail, be counted a second time and, under memory pressure,
  evict other messages in turn.

`Reassembler.feed` moves absent to partial, partial to absent (complete) and
either to rejected; `Reassembler.expire` moves idle partials to rejected and old
rejected keys to absent; `Reassembler.clear` makes everything absent.

Fragment layout
---------------
LCM senders cut a message into fragments of one fixed size ``F`` counted after the
20-byte header. Fragment 0 carries the channel, its NUL and the first ``B`` payload
bytes; fragment ``i >= 1`` starts at payload offset ``B + (i - 1) * F``; every fragment
but the last carries exactly ``F`` payload bytes (fragment 0 carries ``B``), and the
last one ends at the message size. ``F`` differs between implementations (LCM's C
library uses 65 487 on Linux and 1 423 on macOS, ``udpm_util.h``; LCM Java uses 64 000,
``UDPMulticastProvider.java``), so it is learnt from the fragments rather than assumed,
and every fragment is checked against what the message's earlier fragments implied.

Memory is accounted by payload bytes actually received and stored per fragment; the
size a header claims is only compared, never allocated.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final, TypeAlias, final

from . import lcm

__all__ = ["Reassembler", "ReassemblyStatistics"]

_Key: TypeAlias = tuple[Hashable, int]

# The most payload one LC03 datagram can carry: the IPv4 UDP payload limit (65 507 bytes)
# minus the 20-byte LC03 header. LCM's LCM_FRAGMENT_MAX_PAYLOAD on Linux is exactly this.
_MAX_FRAGMENT_DATA: Final = lcm.FRAGMENT_PAYLOAD


@final
@dataclass(frozen=True, slots=True)
class ReassemblyStatistics:
    """Counters of a `Reassembler`.

    ``completed``, ``incomplete``, ``oversize`` and ``inconsistent`` count messages;
    ``duplicates`` counts fragments.
    """

    in_flight: int
    """Partial messages held now."""
    bytes_in_flight: int
    """Payload bytes held now."""
    completed: int
    """Messages put back together and returned."""
    incomplete: int
    """Partial messages given up: evicted to stay in bounds, expired, or cleared."""
    oversize: int
    """Messages refused because their size exceeds ``max_message_size``."""
    inconsistent: int
    """Messages refused because a fragment contradicted the header or the layout."""
    duplicates: int
    """Fragments received twice for a partial message (the copy is ignored)."""


class _Partial:
    """The fragments received so far for one message, and the layout they imply."""

    __slots__ = (
        "base",
        "channel",
        "count",
        "last_offset",
        "last_seen",
        "nbytes",
        "pieces",
        "size",
        "stride",
    )

    def __init__(self, size: int, count: int) -> None:
        self.size = size
        self.count = count
        self.channel: str | None = None
        self.pieces: dict[int, bytes] = {}
        self.nbytes = 0
        self.last_seen = 0.0
        self.base: int | None = None  # payload bytes in fragment 0 = offset of fragment 1
        self.stride: int | None = None  # payload bytes in every middle fragment
        self.last_offset: int | None = None  # where the last fragment starts

    def fits(self, index: int, offset: int, length: int, channel: str | None) -> bool:
        """Check one fragment against the layout seen so far, and learn from it.

        :param index: the fragment number.
        :param offset: where its data starts in the payload.
        :param length: how many payload bytes it carries.
        :param channel: the channel it carries (fragment 0 only).
        :return: ``False`` if the fragment cannot belong to this message.
        """
        count = self.count
        end = offset + length
        if not 0 <= index < count or end > self.size:
            return False

        if index == 0:
            if offset != 0 or channel is None:
                return False

            if count == 1:
                return end == self.size

            if self.base is None:
                self.base = length
            elif self.base != length:
                return False

        elif index < count - 1:
            if length == 0:
                return False

            if self.stride is None:
                self.stride = length
            elif self.stride != length:
                return False

            implied = offset - (index - 1) * length
            if implied < 0:
                return False

            if self.base is None:
                self.base = implied
            elif self.base != implied:
                return False

        else:
            if end != self.size or length == 0:
                return False

            self.last_offset = offset

        # The last fragment's offset is only checkable once the layout is known.
        last, base = self.last_offset, self.base
        if last is None or base is None:
            return True

        if count == 2:
            return last == base

        stride = self.stride
        if stride is None:
            return True

        return last == base + (count - 2) * stride and self.size - last <= stride


@final
class Reassembler:
    """Reassemble LCM messages from their fragments, in bounded memory and time.

    Feed it every `asyncbus._core.lcm.Fragment` with its sender's address;
    call `expire` when `next_deadline` is due.
    """

    def __init__(
        self,
        *,
        max_message_size: int = lcm.DEFAULT_MAX_MESSAGE_SIZE,
        max_messages: int = 1000,
        max_bytes: int | None = None,
        timeout: float = 2.0,
    ) -> None:
        """Create an empty reassembler.

        The default of 1000 partial messages is LCM's own (``MAX_NUM_FRAG_BUFS`` in
        ``udpm_util.h``).

        :param max_message_size: the largest payload accepted, in bytes.
        :param max_messages: how many partial messages may be held at once.
        :param max_bytes: how many payload bytes may be held at once; defaults to
            ``max_message_size``.
        :param timeout: seconds without a new fragment after which a partial
            message is given up.
        :raises ValueError: if a limit is not positive, ``max_bytes`` is smaller
            than ``max_message_size`` (no message of the largest allowed size could
            ever complete), or ``timeout`` is not a positive finite number.
        """
        if max_message_size < 1:
            raise ValueError(f"max_message_size must be at least 1, not {max_message_size}")

        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, not {max_messages}")

        if max_bytes is None:
            max_bytes = max_message_size
        elif max_bytes < max_message_size:
            raise ValueError(
                f"max_bytes ({max_bytes}) must be at least max_message_size "
                f"({max_message_size}), or the largest messages could never be reassembled"
            )

        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout}")

        self._max_message_size = max_message_size
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._timeout = timeout
        # Two orders over the same partial messages: first seen (which to evict when
        # full) and last activity (which to expire). OrderedDict, not dict: popping the
        # front of a dict again and again costs O(n) each time, as iteration has to skip
        # the deleted slots piling up at its front.
        self._partials: OrderedDict[_Key, _Partial] = OrderedDict()
        self._activity: OrderedDict[_Key, _Partial] = OrderedDict()
        # Rejected keys and when they may be forgotten, oldest first.
        self._rejected: OrderedDict[_Key, float] = OrderedDict()
        self._bytes = 0
        self._completed = 0
        self._incomplete = 0
        self._oversize = 0
        self._inconsistent = 0
        self._duplicates = 0

    def feed(
        self, sender: Hashable, fragment: lcm.Fragment, now: float
    ) -> lcm.CompleteMessage | None:
        """Take one fragment; return its message if this was the last piece missing.

        Fragments that cannot be used are counted in `statistics` and dropped;
        the later fragments of a message given up are dropped without counting it again.

        :param sender: who sent it (e.g. the source address); hashable.
        :param fragment: a decoded ``LC03`` datagram.
        :param now: the current time in seconds, on the clock `expire` uses.
        :return: the whole message, or ``None`` while pieces are missing or if the
            fragment was dropped.
        """
        key = (sender, fragment.seq)
        partial = self._partials.get(key)
        is_new = partial is None
        if partial is None:
            if self._rejected and self._still_rejected(key, now):
                return None

            size, count = fragment.size, fragment.count
            if size > self._max_message_size:
                self._oversize += 1
                self._reject(key, now)
                return None

            # Every fragment after the first carries at least one byte, and none can
            # carry more than a UDP datagram: a header breaking this is lying.
            if count - 1 > size or size > count * _MAX_FRAGMENT_DATA:
                self._inconsistent += 1
                self._reject(key, now)
                return None

            partial = _Partial(size, count)
        elif fragment.size != partial.size or fragment.count != partial.count:
            self._inconsistent += 1
            self._drop(key, partial, now)
            return None
        elif fragment.index in partial.pieces:
            self._duplicates += 1
            return None

        data = fragment.data
        index = fragment.index
        if not partial.fits(index, fragment.offset, len(data), fragment.channel):
            self._inconsistent += 1
            if is_new:
                self._reject(key, now)
            else:
                self._drop(key, partial, now)

            return None

        if index == 0:
            partial.channel = fragment.channel

        pieces = partial.pieces
        if len(pieces) + 1 == partial.count:
            # The last piece: no need to make room for bytes that leave at once.
            if not is_new:
                self._remove(key, partial)

            pieces[index] = data
            return self._complete(key, partial, fragment.seq, now)

        if not self._make_room(partial, is_new, len(data), now):
            return None

        pieces[index] = data
        partial.nbytes += len(data)
        partial.last_seen = now
        self._bytes += len(data)
        if is_new:
            self._partials[key] = partial
            self._activity[key] = partial
        else:
            self._activity.move_to_end(key)

        return None

    def expire(self, now: float) -> int:
        """Give up partial messages that saw no fragment for ``timeout`` seconds.

        :param now: the current time in seconds.
        :return: how many partial messages were given up.
        """
        expired = 0
        activity = self._activity
        while activity:
            key, partial = next(iter(activity.items()))
            if partial.last_seen + self._timeout > now:
                break

            self._incomplete += 1
            self._drop(key, partial, now)
            expired += 1

        rejected = self._rejected
        while rejected:
            key, until = next(iter(rejected.items()))
            if until > now:
                break

            del rejected[key]

        return expired

    def next_deadline(self) -> float | None:
        """Return when `expire` next has something to do.

        Calling ``expire(next_deadline())`` gives up at least one partial message.

        :return: a time on the clock of ``now``, or ``None`` if nothing is pending.
        """
        for partial in self._activity.values():
            return partial.last_seen + self._timeout

        return None

    def clear(self) -> int:
        """Give up every partial message and forget every rejected one.

        :return: how many partial messages were given up.
        """
        dropped = len(self._partials)
        self._incomplete += dropped
        self._partials.clear()
        self._activity.clear()
        self._rejected.clear()
        self._bytes = 0
        return dropped

    def statistics(self) -> ReassemblyStatistics:
        """Return a snapshot of the counters.

        :return: the counters as they are now.
        """
        return ReassemblyStatistics(
            in_flight=len(self._partials),
            bytes_in_flight=self._bytes,
            completed=self._completed,
            incomplete=self._incomplete,
            oversize=self._oversize,
            inconsistent=self._inconsistent,
            duplicates=self._duplicates,
        )

    def _complete(
        self, key: _Key, partial: _Partial, seq: int, now: float
    ) -> lcm.CompleteMessage | None:
        """Join a message whose every fragment arrived (already out of the tables)."""
        pieces = partial.pieces
        data = b"".join([pieces[index] for index in range(partial.count)])
        channel = partial.channel
        # fits() makes both impossible; checked anyway, as a wrong message is worse
        # than a lost one.
        if channel is None or len(data) != partial.size:
            self._inconsistent += 1
            self._reject(key, now)
            return None

        self._completed += 1
        return lcm.CompleteMessage(seq, channel, data)

    def _make_room(self, partial: _Partial, is_new: bool, length: int, now: float) -> bool:
        """Evict the oldest partial messages until ``length`` more bytes fit.

        :return: ``False`` if ``partial`` itself had to go.
        """
        if is_new:
            while len(self._partials) >= self._max_messages:
                self._evict_oldest(now)

        # length <= size <= max_message_size <= max_bytes, so this ends at worst with
        # every other message evicted.
        while self._bytes + length > self._max_bytes:
            if self._evict_oldest(now) is partial:
                return False

        return True

    def _evict_oldest(self, now: float) -> _Partial:
        """Give up the partial message seen first."""
        key, partial = self._partials.popitem(last=False)
        del self._activity[key]
        self._bytes -= partial.nbytes
        self._incomplete += 1
        self._reject(key, now)
        return partial

    def _remove(self, key: _Key, partial: _Partial) -> None:
        """Take a partial message out of the tables."""
        del self._partials[key]
        del self._activity[key]
        self._bytes -= partial.nbytes

    def _drop(self, key: _Key, partial: _Partial, now: float) -> None:
        """Take a partial message out of the tables and reject its later fragments."""
        self._remove(key, partial)
        self._reject(key, now)

    def _reject(self, key: _Key, now: float) -> None:
        """Drop the later fragments of ``key`` until ``timeout`` passes without one."""
        # Never already present: a key is rejected only when absent or partial.
        self._rejected[key] = now + self._timeout
        if len(self._rejected) > self._max_messages:
            self._rejected.popitem(last=False)

    def _still_rejected(self, key: _Key, now: float) -> bool:
        """Tell whether ``key`` is rejected; each fragment extends the rejection."""
        until = self._rejected.get(key)
        if until is None:
            return False

        if now < until:
            self._rejected[key] = now + self._timeout
            self._rejected.move_to_end(key)
            return True

        del self._rejected[key]
        return False
