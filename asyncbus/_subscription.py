"""Subscriptions: bounded queues with an overflow policy, and the router that fills them.

Theory of operation
-------------------
A `Subscription` is what users hold; behind it an ``_Inbox`` holds the
queue, the counters and at most one waiting receiver. The ``_Router`` maps a
topic to the inboxes whose pattern matches it (cached per topic) and appends
each message to them from the transport's callback, without awaiting.

When an inbox is full its policy decides: ``drop_oldest`` discards the head,
``drop_newest`` discards the arriving message, ``block`` accepts it and tells
the bus to stop reading the socket until the inbox drains below half; so a
``block`` queue may exceed ``maxsize`` by at most one read batch. Every discard
is counted.

``receive()`` is cancel-atomic: it only takes a message off the queue after its
wait is over, never before, so a cancelled ``receive()`` consumes nothing.

The router holds inboxes, never subscriptions. A subscription that nobody
references any more (the user broke out of ``async for msg in topic``) is
collected at once by CPython's reference counting, and its finalizer removes its
inbox: nothing is left behind. An explicit subscription collected unclosed also
emits a ``ResourceWarning``.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, final

import anyio
from anyio.abc import ObjectReceiveStream

from ._core.patterns import TopicPattern
from ._exceptions import BrokenTransportError, BusyError, ClosedError, WouldBlock
from ._message import Message, Sender, _Resources, duplicate_fds

__all__ = ["OverflowPolicy", "Subscription", "SubscriptionStatistics"]

DEFAULT_MAXSIZE: Final = 1024  # messages per subscription queue
_CACHE_LIMIT: Final = 4096  # distinct topics remembered by the router's match cache
_time: Final = time.time  # a global name, not an attribute lookup, per message


class OverflowPolicy(enum.StrEnum):
    """What a full subscription queue does with the next message."""

    DROP_OLDEST = "drop_oldest"
    """Discard the oldest queued message to make room (counted)."""

    DROP_NEWEST = "drop_newest"
    """Discard the arriving message (counted)."""

    BLOCK = "block"
    """Keep everything: stop reading the transport until the queue drains."""


@final
@dataclass(frozen=True, slots=True)
class SubscriptionStatistics:
    """Counters of one subscription.

    :ivar pattern: the pattern as given.
    :ivar policy: the overflow policy.
    :ivar maxsize: the queue bound.
    :ivar queued: messages waiting in the queue now.
    :ivar delivered: messages put in the queue so far.
    :ivar received: messages taken out by ``receive()`` so far.
    :ivar dropped: messages discarded by the overflow policy, or still queued
        when the subscription was closed.
    """

    pattern: str
    policy: OverflowPolicy
    maxsize: int
    queued: int
    delivered: int
    received: int
    dropped: int


class _Ended:
    """Why an inbox will never get more messages."""

    __slots__ = ("cause",)

    def __init__(self, cause: BaseException | None) -> None:
        self.cause = cause

    def error(self) -> BaseException:
        if self.cause is None:
            return anyio.EndOfStream()

        error = BrokenTransportError(f"the bus transport broke: {self.cause}")
        error.__cause__ = self.cause
        return error


class _Inbox:
    """The queue behind a subscription (internal)."""

    __slots__ = (
        "blocking",
        "delivered",
        "dropped",
        "ended",
        "evicted",
        "maxsize",
        "pattern",
        "policy",
        "queue",
        "room",
        "router",
        "space_waiters",
        "waiter",
    )

    def __init__(
        self, pattern: TopicPattern, maxsize: int, policy: OverflowPolicy, router: _Router
    ) -> None:
        self.pattern = pattern
        self.maxsize = maxsize
        self.policy = policy
        # Below this many queued, an arriving message needs none of put()'s decisions:
        # no policy applies, and a ``block`` queue does not fill up with it.
        self.room = maxsize - 1 if policy is OverflowPolicy.BLOCK else maxsize
        self.blocking = False  # in the router's blocked set: take() may unblock it
        self.router: _Router | None = router
        self.queue: collections.deque[Message] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.space_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.ended: _Ended | None = None
        self.delivered = 0
        self.dropped = 0
        # Queued messages that left other than by a take: `received` is what remains.
        # Counting these rare ones, not every take, saves the hot path a counter.
        self.evicted = 0

    @property
    def received(self) -> int:
        """Messages taken out so far."""
        return self.delivered - len(self.queue) - self.evicted

    def put(self, message: Message) -> None:
        queue = self.queue
        if len(queue) >= self.maxsize:
            policy = self.policy
            if policy is OverflowPolicy.DROP_NEWEST:
                self.dropped += 1
                message.release()  # its fds and segment go with it
                return

            if policy is OverflowPolicy.DROP_OLDEST:
                queue.popleft().release()
                self.dropped += 1
                self.evicted += 1

        queue.append(message)
        self.delivered += 1
        if self.policy is OverflowPolicy.BLOCK and len(queue) == self.maxsize and self.router:
            self.router.block(self)

        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self) -> Message:
        message = self.queue.popleft()
        if self.blocking or self.space_waiters:  # only ever so with the ``block`` policy
            self.made_room()

        return message

    def made_room(self) -> None:
        """After a take from a ``block`` queue: wake a local publisher, resume the socket."""
        queue = self.queue
        # A waiting local publisher needs one free slot; the socket is resumed only
        # at half, so that reading does not flap on and off with every message.
        if len(queue) < self.maxsize:
            # Skip waiters whose publish() was cancelled: the room must go to a live one.
            waiters = self.space_waiters
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    break

        if self.blocking and len(queue) <= self.maxsize // 2 and self.router is not None:
            self.router.unblock(self)

    def end(self, ended: _Ended) -> None:
        if self.ended is None:
            self.ended = ended

        for waiter in (self.waiter, *self.space_waiters):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

        self.space_waiters.clear()

    def statistics(self) -> SubscriptionStatistics:
        return SubscriptionStatistics(
            pattern=self.pattern.text,
            policy=self.policy,
            maxsize=self.maxsize,
            queued=len(self.queue),
            delivered=self.delivered,
            received=self.received,
            dropped=self.dropped,
        )


class _Router:
    """Finds the inboxes for a topic and fills them (internal)."""

    def __init__(
        self,
        set_blocked: Callable[[bool], None],
        changed: Callable[[bool], None] | None = None,
    ) -> None:
        self._set_blocked = set_blocked
        self._changed = changed
        self._exact: dict[str, list[_Inbox]] = {}
        self._patterns: list[_Inbox] = []
        self._cache: dict[str, tuple[_Inbox, ...]] = {}
        self._blocked: set[_Inbox] = set()
        self._ended: _Ended | None = None
        self.inboxes = 0
        self.unmatched = 0
        self.fd_drops = 0  # messages a subscription missed: no fds left to duplicate
        # Counters of inboxes already removed, so bus totals never go backwards.
        self.retired_delivered = 0
        self.retired_dropped = 0

    def add(self, inbox: _Inbox) -> None:
        exact = inbox.pattern.exact
        if exact is not None:
            self._exact.setdefault(exact, []).append(inbox)
        else:
            self._patterns.append(inbox)

        self._cache.clear()
        self.inboxes += 1
        if self._ended is not None:
            inbox.end(self._ended)
        elif self._changed is not None:
            self._changed(True)

    def remove(self, inbox: _Inbox) -> None:
        if inbox.router is not self:
            return

        inbox.router = None
        exact = inbox.pattern.exact
        if exact is not None:
            siblings = self._exact[exact]
            siblings.remove(inbox)
            if not siblings:
                del self._exact[exact]
        else:
            self._patterns.remove(inbox)

        self._cache.clear()
        self.inboxes -= 1
        self.retired_delivered += inbox.delivered
        self.retired_dropped += inbox.dropped
        self.unblock(inbox)
        if self._changed is not None and self._ended is None:
            self._changed(False)

    def interests(self) -> list[tuple[TopicPattern, OverflowPolicy]]:
        """Return the pattern and policy of every open subscription."""
        inboxes = [*self._patterns, *(i for group in self._exact.values() for i in group)]
        return [(inbox.pattern, inbox.policy) for inbox in inboxes]

    def match(self, topic: str) -> tuple[_Inbox, ...]:
        inboxes = self._cache.get(topic)
        if inboxes is None:
            found = list(self._exact.get(topic, ()))
            found.extend(inbox for inbox in self._patterns if inbox.pattern.matches(topic))
            inboxes = tuple(found)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()

            self._cache[topic] = inboxes

        return inboxes

    def dispatch(
        self,
        topic: str,
        data: bytes | memoryview,
        seq: int,
        sender: Sender,
        resources: _Resources | None = None,
    ) -> None:
        """Deliver one message to every matching subscription (never awaits).

        A message with ``resources`` (fds, a segment) goes to each subscription
        with its own: the first gets these, the others duplicates, so each has
        one owner. Nobody wanting it closes them.
        """
        inboxes = self._cache.get(topic)
        if inboxes is None:
            inboxes = self.match(topic)

        if not inboxes:
            self.unmatched += 1
            if resources is not None:
                resources.close()

            return

        if resources is None:
            message = Message(topic, data, seq, sender, _time())
            for inbox in inboxes:
                # put(), inlined for a queue with room: the case of almost every message.
                queue = inbox.queue
                queued = len(queue)
                if queued < inbox.room:
                    queue.append(message)
                    inbox.delivered += 1
                    # Only an empty queue can have a receiver waiting (it waits for one).
                    if not queued and inbox.waiter is not None and not inbox.waiter.done():
                        inbox.waiter.set_result(None)
                else:
                    inbox.put(message)

            return

        now = time.time()
        for inbox in inboxes[1:]:
            try:
                copy = resources.duplicate()
            except OSError:  # the fd budget or the kernel's limit: this one misses it
                self.fd_drops += 1
                continue

            inbox.put(Message(topic, copy.data(data), seq, sender, now, copy))

        inboxes[0].put(Message(topic, resources.data(data), seq, sender, now, resources))

    async def dispatch_waiting(
        self, topic: str, data: bytes, seq: int, sender: Sender, fds: tuple[int, ...] = ()
    ) -> None:
        """Deliver this member's own message, waiting for room in ``block`` subscriptions.

        Each subscription gets its own duplicates of ``fds`` (the caller keeps
        the originals); one that cannot get them misses the message (counted).
        Not counted in ``unmatched``, which is about messages received from others.
        """
        inboxes = self.match(topic)
        if not inboxes:
            return

        message = Message(topic, data, seq, sender, time.time())
        loop = asyncio.get_running_loop()
        for inbox in inboxes:
            while (
                inbox.policy is OverflowPolicy.BLOCK
                and len(inbox.queue) >= inbox.maxsize
                and inbox.ended is None
                and inbox.router is self
            ):
                waiter = loop.create_future()
                inbox.space_waiters.append(waiter)
                await waiter

            if inbox.router is not self or inbox.ended is not None:
                continue

            if not fds:
                inbox.put(message)
                continue

            try:
                resources = _Resources(duplicate_fds(fds))
            except OSError:  # the fd budget or the kernel's limit: this one misses it
                self.fd_drops += 1
                continue

            inbox.put(Message(topic, data, seq, sender, message.received_at, resources))

    def block(self, inbox: _Inbox) -> None:
        if not self._blocked:
            self._set_blocked(True)

        self._blocked.add(inbox)
        inbox.blocking = True

    def unblock(self, inbox: _Inbox) -> None:
        if inbox in self._blocked:
            self._blocked.discard(inbox)
            inbox.blocking = False
            if not self._blocked:
                self._set_blocked(False)

    def end(self, cause: BaseException | None) -> None:
        """No more messages will come: wake every receiver."""
        if self._ended is None:
            self._ended = _Ended(cause)

        inboxes = [*self._patterns, *(i for group in self._exact.values() for i in group)]
        for inbox in inboxes:
            inbox.end(self._ended)

    def totals(self) -> tuple[int, int]:
        """Return (delivered, dropped) over all inboxes, past and present."""
        delivered, dropped = self.retired_delivered, self.retired_dropped
        for inbox in (*self._patterns, *(i for group in self._exact.values() for i in group)):
            delivered += inbox.delivered
            dropped += inbox.dropped

        return delivered, dropped


@final
class Subscription(ObjectReceiveStream[Message]):
    """A bounded stream of the messages whose topic matches a pattern.

    Create one with `Bus.subscribe` or
    `Topic.subscribe`. It is an async iterator
    (``async for msg in sub``, which ends when the bus closes), an async context
    manager that closes it, and an ``anyio.abc.ObjectReceiveStream``.
    """

    def __init__(self, inbox: _Inbox, *, implicit: bool = False) -> None:
        """Wrap an inbox (internal: use ``Bus.subscribe``).

        :param inbox: the queue this subscription reads.
        :param implicit: created by ``async for msg in topic``: collected
            silently when the loop is left.
        """
        self._inbox: _Inbox | None = inbox
        self._statistics_at_close: SubscriptionStatistics | None = None
        self._implicit = implicit

    @property
    def pattern(self) -> str:
        """The pattern as given to ``subscribe``."""
        return self._live_statistics().pattern

    @property
    def closed(self) -> bool:
        """``True`` once `aclose` was called."""
        return self._inbox is None

    def _live_statistics(self) -> SubscriptionStatistics:
        if self._inbox is not None:
            return self._inbox.statistics()

        assert self._statistics_at_close is not None
        return self._statistics_at_close

    def statistics(self) -> SubscriptionStatistics:
        """Return this subscription's counters.

        :return: a snapshot; still available after closing.
        """
        return self._live_statistics()

    async def receive(self) -> Message:
        """Wait for the next message.

        Cancel-atomic: if cancelled, no message is consumed.

        :return: the next message.
        :raises ClosedError: if this subscription was closed.
        :raises BusyError: if another task is already waiting here.
        :raises anyio.EndOfStream: when the bus has closed and the queue is empty.
        :raises BrokenTransportError: when the transport broke and the queue is empty.
        """
        inbox = self._inbox
        if inbox is None:
            raise ClosedError("the subscription is closed")

        while not inbox.queue:
            if inbox.ended is not None:
                raise inbox.ended.error()

            if inbox.waiter is not None:
                raise BusyError("receiving")

            waiter = asyncio.get_running_loop().create_future()
            inbox.waiter = waiter
            try:
                await waiter
            finally:
                inbox.waiter = None

            if self._inbox is None:
                raise ClosedError("the subscription was closed while waiting")

        return inbox.take()

    async def __anext__(self) -> Message:
        # Fast path for a backlog: take(), inlined, and no coroutine for receive().
        inbox = self._inbox
        if inbox is not None and inbox.queue:
            message = inbox.queue.popleft()
            if inbox.blocking or inbox.space_waiters:
                inbox.made_room()

            return message

        try:
            return await self.receive()
        except anyio.EndOfStream:
            if self._implicit:
                self.close()

            raise StopAsyncIteration from None
        except BaseException:
            # ``async for msg in topic`` is the only user of an implicit subscription,
            # and an exception here (cancellation, above all) ends that loop. Close now:
            # a cancelled task keeps its traceback, and with it this object, alive.
            if self._implicit:
                self.close()

            raise

    def receive_nowait(self) -> Message:
        """Take the next message if one is queued.

        :return: the next message.
        :raises WouldBlock: if the queue is empty.
        :raises ClosedError: if this subscription was closed.
        :raises anyio.EndOfStream: when the bus has closed and the queue is empty.
        :raises BrokenTransportError: when the transport broke and the queue is empty.
        """
        inbox = self._inbox
        if inbox is None:
            raise ClosedError("the subscription is closed")

        queue = inbox.queue
        if queue:
            # take(), inlined.
            message = queue.popleft()
            if inbox.blocking or inbox.space_waiters:
                inbox.made_room()

            return message

        if inbox.ended is not None:
            raise inbox.ended.error()

        raise WouldBlock

    def close(self) -> None:
        """Close now: stop queueing, drop what is queued (counted as dropped)."""
        inbox = self._inbox
        if inbox is None:
            return

        inbox.dropped += len(inbox.queue)
        inbox.evicted += len(inbox.queue)
        for message in inbox.queue:
            message.release()

        inbox.queue.clear()
        if inbox.router is not None:
            inbox.router.remove(inbox)

        self._statistics_at_close = inbox.statistics()
        self._inbox = None
        inbox.end(_Ended(None))

    async def aclose(self) -> None:
        """Close the subscription; a waiting ``receive()`` raises `ClosedError`."""
        self.close()

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if getattr(self, "_inbox", None) is None:
            return

        if not self._implicit:
            _warn(f"unclosed subscription {self!r}", ResourceWarning, source=self)

        self.close()

    def __repr__(self) -> str:
        stats = self._live_statistics()
        state = "closed" if self._inbox is None else "open"
        return f"<Subscription {state} {stats.pattern!r} queued={stats.queued}>"
