"""The bus: open a transport by URL, publish to topics, hand out subscriptions."""

from __future__ import annotations

import asyncio
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, final

from ._adapters.udpm import UDPMulticastProtocol
from ._adapters.unix import UNIXMemberProtocol, address_text
from ._core import lcm
from ._core.patterns import TopicPattern
from ._core.url import DEFAULT_URL, UDPMulticastAddress, UNIXAddress, parse_url
from ._exceptions import (
    BrokenTransportError,
    BusPermissionError,
    ClosedError,
    MessageTooLargeError,
    UnsupportedError,
)
from ._loan import Loan
from ._message import Sender
from ._subscription import DEFAULT_MAXSIZE, OverflowPolicy, Subscription, _Inbox, _Router
from ._transports.udpm import UDPMulticastTransport, create_udpm_endpoint
from ._transports.unix import (
    MAX_FDS,
    UNIXDatagramTransport,
    UNIXSeqpacketTransport,
    create_unix_endpoint,
)

__all__ = ["Bus", "BusStatistics", "Topic", "connect"]

_URL_VARIABLE: Final = "ASYNCBUS_URL"
_CHANNEL_CACHE_LIMIT: Final = 4096  # encoded topic names kept for publish()
# A publisher whose sends never block would starve every other task on its loop
# (a UDP send on loopback does not wait for receivers); yield this often.
_YIELD_EVERY: Final = 32
_SHORT_HEADER: Final = lcm.SHORT_HEADER
_SHORT_MAGIC: Final = lcm.Magic.SHORT

Payload = bytes | bytearray | memoryview
MAX_MESSAGE_FDS: Final = MAX_FDS - 1  # one slot of a SEGMENT frame is its memfd


@final
@dataclass(frozen=True, slots=True)
class BusStatistics:
    """Counters of one bus member; every loss it can see is here.

    :ivar published: messages this bus published.
    :ivar received: whole messages received from other members.
    :ivar delivered: messages put into subscription queues (one per subscription).
    :ivar unmatched: received messages no subscription wanted.
    :ivar datagrams: datagrams received from other members.
    :ivar own_filtered: this member's own datagrams dropped on the way back in.
    :ivar malformed: datagrams (or fragment sets) that were not valid LCM.
    :ivar oversize: messages dropped for exceeding ``max_message_size``.
    :ivar kernel_drops: datagrams the kernel dropped because the socket's receive
        buffer was full (``SO_RXQ_OVFL``).
    :ivar gaps: messages missing according to senders' sequence numbers.
    :ivar reordered: messages (or fragments) that arrived late or twice.
    :ivar errors: socket errors the kernel reported while receiving or flushing
        queued sends (counted, not raised).
    :ivar incomplete: fragmented messages dropped before all fragments arrived.
    :ivar overflow_drops: messages discarded by subscriptions' overflow policies.
    :ivar subscriptions: subscriptions open now.
    :ivar peers: other members this one knows and accepted (unix transports).
    :ivar peers_lost: members forgotten because they died or became unreachable
        (not counting those that left with BYE; unix transports).
    :ivar rejected: frames and connections refused because the sender's
        credentials are not allowed (unix transports).
    :ivar send_drops: messages this member dropped for a peer whose socket and
        queue were full, by that peer's policy, or that carried fds to a peer
        that takes none; the peer counts them as gaps (unix transports).
    :ivar fd_drops: received messages dropped with their fds because the
        process's `asyncbus.fd_budget` was full or the kernel could not pass
        every fd (``MSG_CTRUNC``), and deliveries a second local subscription
        missed because its own copies of the fds could not be made (unix
        transports).
    :ivar bad_segments: received large payloads refused because their
        descriptor was not a sealed memfd of the announced size (unix transports).
    :ivar segments_created: shared-memory segments this member created to
        publish large payloads (unix transports).
    :ivar segments_reused: large payloads published in a reused segment.
    :ivar batches_sent: BATCH frames sent: messages queued for a peer went out
        coalesced, several to a datagram (unix transports).
    :ivar batched: messages (and control frames) sent in those BATCH frames.
    :ivar batches_received: BATCH frames received.
    """

    published: int
    received: int
    delivered: int
    unmatched: int
    datagrams: int
    own_filtered: int
    malformed: int
    oversize: int
    kernel_drops: int
    gaps: int
    reordered: int
    errors: int
    incomplete: int
    overflow_drops: int
    subscriptions: int
    peers: int
    peers_lost: int
    rejected: int
    send_drops: int
    fd_drops: int
    bad_segments: int
    segments_created: int
    segments_reused: int
    batches_sent: int = 0
    batched: int = 0
    batches_received: int = 0


@final
class Topic:
    """A named topic on a bus: publish to it, or iterate over its messages.

    ``async for msg in topic`` subscribes with the default queue and policy for
    as long as the loop runs; leaving the loop (``break``, an exception,
    cancellation) removes the subscription.
    """

    __slots__ = ("_bus", "_channel", "name")

    def __init__(self, bus: Bus, name: str) -> None:
        """Bind a topic name to a bus (use `Bus.topic`).

        :param bus: the bus.
        :param name: the topic name.
        :raises LocalProtocolError: if the name cannot go on the wire.
        """
        self._channel = lcm.encode_channel(name)
        self._bus = bus
        self.name = name
        """The topic name."""

    @property
    def bus(self) -> Bus:
        """The bus this topic belongs to."""
        return self._bus

    async def publish(self, data: Payload | Loan, *, fds: Sequence[int] = ()) -> None:
        """Publish one message on this topic.

        See `Bus.publish` for large payloads, loans and ``fds``.

        :param data: the payload (bytes-like), or a `Loan` written in place.
        :param fds: file descriptors to pass (unix transports); you keep yours,
            each subscriber gets its own duplicates.
        :raises ClosedError: if the bus is closed, or the loan is not active.
        :raises BrokenTransportError: if the transport is broken or the send failed.
        :raises MessageTooLargeError: if the payload is over the bus's limit.
        :raises UnsupportedError: for ``fds`` or a loan on ``udpm``.
        :raises FDBudgetError: if duplicating ``fds`` would exceed `asyncbus.fd_budget`.
        :raises TimeoutError: if subscribers held all shared memory for ``stall_timeout``.
        :raises OSError: if an fd is not open (``EBADF``).
        :raises TypeError: if ``data`` is not bytes-like or ``fds`` are not ints.
        :raises ValueError: for more than 252 fds, or a loan of another bus.
        """
        await self._bus._publish(self.name, self._channel, data, fds)

    async def wait_subscribers(self, count: int = 1) -> None:
        """Wait until at least ``count`` other members subscribe to this topic.

        On the unix transports publishers know who wants what, so a publisher
        can wait for its audience before it starts (bound the wait with
        ``asyncio.timeout``).

        :param count: how many members (at least 1).
        :raises UnsupportedError: on ``udpm``, which has no membership.
        :raises ClosedError: if the bus is or gets closed.
        :raises ValueError: if ``count`` is not positive.
        """
        await self._bus._wait_members(count, self.name)

    def subscribe(
        self,
        *,
        maxsize: int = DEFAULT_MAXSIZE,
        policy: OverflowPolicy | str = OverflowPolicy.DROP_OLDEST,
    ) -> Subscription:
        """Subscribe to exactly this topic.

        :param maxsize: queue bound, in messages.
        :param policy: what a full queue does.
        :return: an open subscription.
        :raises ClosedError: if the bus is closed.
        :raises ValueError: for a bad ``maxsize`` or ``policy``.
        """
        return self._bus._subscribe(TopicPattern.exactly(self.name), maxsize, policy)

    def __aiter__(self) -> Subscription:
        return self._bus._subscribe(
            TopicPattern.exactly(self.name),
            DEFAULT_MAXSIZE,
            OverflowPolicy.DROP_OLDEST,
            implicit=True,
        )

    def __repr__(self) -> str:
        return f"<Topic {self.name!r} on {self._bus.url}>"


@final
class Bus:
    """One member of a bus: a transport, its subscriptions, its counters.

    Use it as ``async with asyncbus.connect(url) as bus:``, or call
    `open` and `aclose` yourself (e.g. in a web app's lifespan).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        receive_own: bool = False,
        max_message_size: int = lcm.DEFAULT_MAX_MESSAGE_SIZE,
        **options: str | int | float,
    ) -> None:
        """Describe a bus member; nothing is opened until `open`.

        :param url: the bus URL; ``None`` reads ``$ASYNCBUS_URL``, else
            `asyncbus.DEFAULT_URL`.
        :param receive_own: also deliver this member's own publications to its
            own subscriptions (in-process; the kernel's echo is always dropped).
        :param max_message_size: largest payload sent or reassembled, in bytes.
        :param options: transport options that override the URL's query
            (``ttl``, ``interface``, ``recv_buf_size`` for ``udpm``;
            ``allow_uids``, ``allow_gids``, ``peer_queue``, ``stall_timeout``,
            ``join_timeout`` for ``unix`` and ``seqpacket``).
        :raises InvalidURLError: if the URL or an option is invalid.
        :raises ValueError: if ``max_message_size`` is not positive.
        """
        if url is None:
            url = os.environ.get(_URL_VARIABLE) or DEFAULT_URL

        self._address: UDPMulticastAddress | UNIXAddress = parse_url(url, options)
        if max_message_size <= 0:
            raise ValueError(f"max_message_size must be positive, not {max_message_size}")

        self._max_message_size = max_message_size
        self._receive_own = receive_own
        self._router = _Router(self._set_blocked, self._interests_changed)
        self._transport: UDPMulticastTransport | None = None
        self._protocol: UDPMulticastProtocol | None = None
        self._unix_transport: UNIXDatagramTransport | UNIXSeqpacketTransport | None = None
        self._unix: UNIXMemberProtocol | None = None
        self._self_sender: Sender | None = None
        self._channels: dict[str, bytes] = {}
        self._seq = 0
        self._published = 0
        self._state = "new"
        self._broken: BaseException | None = None
        self._final_statistics: BusStatistics | None = None

    @property
    def url(self) -> str:
        """The bus URL in normal form."""
        return self._address.url()

    @property
    def closed(self) -> bool:
        """``True`` once `aclose` was called."""
        return self._state == "closed"

    @property
    def sender(self) -> Sender | None:
        """This member's identity as others see it in ``Message.sender`` (once open).

        Messages delivered to this bus itself (``receive_own=True``) carry it too.
        """
        return self._self_sender

    async def open(self) -> None:
        """Open the transport.

        On the unix transports this also joins the bus: it greets the members
        it finds and waits (at most ``join_timeout``) for their answers, so a
        publish right after `open` reaches every member that was subscribed.

        :raises InvalidURLError: for an unknown interface, or a bus directory
            whose socket paths would be too long.
        :raises BusPermissionError: if a bus directory is not this user's, is
            writable by others, or cannot be created.
        :raises BrokenTransportError: if the kernel refuses the sockets (the
            ``OSError`` is the ``__cause__``).
        :raises ClosedError: if `aclose` was called while opening.
        :raises RuntimeError: if the bus was opened before.
        """
        if self._state != "new":
            raise RuntimeError(f"this bus was already opened ({self._state})")

        self._state = "opening"
        if isinstance(self._address, UNIXAddress):
            await self._open_unix(self._address)
            return

        try:
            transport, protocol = await create_udpm_endpoint(
                lambda: UDPMulticastProtocol(self._router, max_message_size=self._max_message_size),
                self._address,
            )
        except OSError as exc:
            self._end_unopened()
            raise BrokenTransportError(f"cannot open {self.url}: {exc.strerror or exc}") from exc
        except BaseException:
            self._end_unopened()
            raise

        assert isinstance(protocol, UDPMulticastProtocol)
        if self._state == "closed":
            # aclose() ran while the sockets were being set up: it wins.
            transport.abort()
            await protocol.wait_closed()
            raise ClosedError("the bus was closed while it was opening")

        self._transport, self._protocol = transport, protocol
        host, port = transport.get_extra_info("sockname")
        self._self_sender = Sender(f"{host}:{port}")
        protocol.closed_with().add_done_callback(self._transport_lost)
        self._state = "open"
        if self._router.inboxes:
            try:
                self._join_group()
            except BaseException:
                await self.aclose()
                raise

    async def _open_unix(self, address: UNIXAddress) -> None:
        try:
            transport, protocol = await create_unix_endpoint(
                lambda: UNIXMemberProtocol(
                    self._router, address, max_message_size=self._max_message_size
                ),
                address,
            )
        except BusPermissionError:
            self._end_unopened()
            raise
        except OSError as exc:
            self._end_unopened()
            raise BrokenTransportError(f"cannot open {self.url}: {exc.strerror or exc}") from exc
        except BaseException:
            self._end_unopened()
            raise

        assert isinstance(protocol, UNIXMemberProtocol)
        self._unix_transport, self._unix = transport, protocol
        own = transport.get_extra_info("sockname")
        pid, uid, gid = protocol.identity
        self._self_sender = Sender(address_text(own), pid, uid, gid)
        protocol.closed_with().add_done_callback(self._transport_lost)
        try:
            await protocol.join()
        except BaseException as exc:
            transport.abort()
            await protocol.wait_closed()
            self._end_unopened()
            if isinstance(exc, OSError):
                raise BrokenTransportError(
                    f"cannot join {self.url}: {exc.strerror or exc}"
                ) from exc

            raise

        if self._state == "closed":
            transport.abort()
            await protocol.wait_closed()
            raise ClosedError("the bus was closed while it was opening")

        self._state = "open"

    def _end_unopened(self) -> None:
        """Mark a bus that never opened closed, ending subscriptions made before."""
        self._state = "closed"
        self._final_statistics = self._statistics()
        self._router.end(None)

    async def __aenter__(self) -> Bus:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the bus: sockets closed, subscriptions end (``async for`` stops).

        Idempotent. Messages already queued in subscriptions stay readable.
        """
        if self._state == "closed":
            return

        if self._state in ("new", "opening"):
            self._end_unopened()  # an open() in progress sees this and gives up
            return

        self._state = "closed"
        self._router.end(None)
        unix = self._unix
        if unix is not None:
            try:
                await unix.leave()
            finally:
                self._final_statistics = self._statistics()
                await unix.wait_closed()

            return

        self._final_statistics = self._statistics()
        transport, protocol = self._transport, self._protocol
        if transport is not None and protocol is not None:
            transport.close()
            await protocol.wait_closed()

    def _transport_lost(self, future: asyncio.Future[BaseException | None]) -> None:
        exc = None if future.cancelled() else future.result()
        if exc is not None and self._broken is None:
            self._broken = exc
            self._router.end(exc)

    def _check_open(self) -> None:
        if self._broken is not None:
            raise BrokenTransportError(f"the bus transport broke: {self._broken}") from self._broken

        if self._state != "open":
            if self._state == "closed":
                raise ClosedError("the bus is closed")

            raise RuntimeError("the bus is not open yet: use 'async with' or await bus.open()")

    def _set_blocked(self, blocked: bool) -> None:
        transport: UDPMulticastTransport | UNIXDatagramTransport | UNIXSeqpacketTransport | None
        transport = self._transport or self._unix_transport
        if transport is None or transport.is_closing():
            return

        if blocked:
            transport.pause_reading()
        else:
            transport.resume_reading()

    # -- publishing -----------------------------------------------------------

    def topic(self, name: str) -> Topic:
        """Return the topic called ``name``.

        :param name: 1 to 63 bytes of UTF-8, no NUL.
        :return: a `Topic` bound to this bus.
        :raises LocalProtocolError: if the name cannot go on the wire.
        """
        return Topic(self, name)

    async def publish(self, topic: str, data: Payload | Loan, *, fds: Sequence[int] = ()) -> None:
        """Publish one message.

        On unix transports a payload too large for one frame (about 64 KiB)
        travels in a sealed shared-memory segment: it is copied once, into the
        segment, and every subscriber maps that same memory. A `Loan` (see
        `loan`) skips even that copy. ``fds`` are passed with ``SCM_RIGHTS``:
        the bus duplicates them, so they stay yours (close them when you like),
        and each subscriber receives its own (`Message.take_fds`).

        :param topic: the topic name.
        :param data: the payload (bytes-like), or a `Loan` written in place.
        :param fds: file descriptors to pass (unix transports; at most 252).
        :raises ClosedError: if the bus is closed, or the loan is not active.
        :raises BrokenTransportError: if the transport is broken or the send failed.
        :raises LocalProtocolError: if the topic name cannot go on the wire.
        :raises MessageTooLargeError: if the payload is over the bus's limit.
        :raises UnsupportedError: for ``fds`` or a loan on ``udpm``.
        :raises FDBudgetError: if duplicating ``fds`` would exceed `asyncbus.fd_budget`.
        :raises TimeoutError: if subscribers held all shared memory for ``stall_timeout``.
        :raises OSError: if an fd is not open (``EBADF``).
        :raises TypeError: if ``data`` is not bytes-like or ``fds`` are not ints.
        :raises ValueError: for more than 252 fds, or a loan of another bus.
        """
        channel = self._channels.get(topic)
        if channel is None:
            channel = lcm.encode_channel(topic)
            if len(self._channels) >= _CHANNEL_CACHE_LIMIT:
                self._channels.clear()

            self._channels[topic] = channel

        await self._publish(topic, channel, data, fds)

    def loan(self, size: int) -> Loan:
        """Lend shared memory for a payload of ``size`` bytes, to publish with no copy.

        Use it as ``async with bus.loan(size) as loan:``, write into
        ``loan.data``, then ``await topic.publish(loan)``. Unix transports only.

        :param size: the payload's length (1 to ``max_message_size``).
        :return: a `Loan`; memory is taken when its ``async with`` block starts.
        :raises UnsupportedError: on ``udpm``.
        :raises ClosedError: if the bus is not open.
        :raises MessageTooLargeError: if ``size`` is over ``max_message_size``.
        :raises ValueError: if ``size`` is below 1.
        """
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"a loan size is an int, not {type(size).__name__}")

        if size < 1:
            raise ValueError(f"a loan holds at least 1 byte, not {size}")

        if isinstance(self._address, UDPMulticastAddress):
            raise UnsupportedError(
                "udpm has no shared memory: loans need a unix: or seqpacket: bus"
            )

        self._check_open()
        if size > self._max_message_size:
            raise MessageTooLargeError(
                f"a loan of {size} bytes exceeds this bus's limit of {self._max_message_size} bytes"
            )

        unix = self._unix
        assert unix is not None
        return Loan(unix.segments, size, self._address.stall_timeout, unix.probe_peers)

    def _interests_changed(self, added: bool) -> None:
        if self._unix is not None:
            # A new subscription goes out now, ahead of anything this member
            # publishes next (a request's reply must find it); a removal may wait
            # a loop turn (it can come from a finalizer).
            self._unix.subscriptions_changed(now=added)

    async def _wait_members(self, count: int, topic: str | None) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive int, not {count!r}")

        if isinstance(self._address, UDPMulticastAddress):
            raise UnsupportedError(
                "udpm has no membership: members are anonymous and nobody knows who listens; "
                "use a unix: or seqpacket: bus to wait for peers"
            )

        self._check_open()
        unix = self._unix
        assert unix is not None
        if topic is None:
            await unix.wait_until(lambda: unix.peer_count() >= count)
        else:
            await unix.wait_until(lambda: unix.subscriber_count(topic) >= count)

        self._check_open()

    async def wait_peers(self, count: int = 1) -> None:
        """Wait until this member knows at least ``count`` other members.

        Bound the wait with ``asyncio.timeout``.

        :param count: how many members (at least 1).
        :raises UnsupportedError: on ``udpm``, which has no membership.
        :raises ClosedError: if the bus is or gets closed.
        :raises BrokenTransportError: if the transport broke.
        :raises ValueError: if ``count`` is not positive.
        """
        await self._wait_members(count, None)

    async def _publish(
        self, topic: str, channel: bytes, data: Payload | Loan, fds: Sequence[int] = ()
    ) -> None:
        self._check_open()
        unix = self._unix
        if unix is not None and type(data) is bytes and not fds and not self._receive_own:
            backlog = unix.publish_frame(channel, topic, data)  # the lean path
            if backlog is not None:
                self._published += 1
                if backlog or self._published % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)

                return

        if fds or type(data) is Loan:
            await self._publish_special(topic, channel, data, fds)
            return

        given: object = data  # callers without type checking pass anything
        if not isinstance(given, bytes | bytearray | memoryview):
            if isinstance(given, str):
                raise TypeError("a payload must be bytes-like, not str (encode it: data.encode())")

            try:
                data = memoryview(given)  # type: ignore[arg-type]  # any buffer: array.array, ...
            except TypeError:
                raise TypeError(
                    f"a payload must be bytes-like, not {type(given).__name__}"
                ) from None

        unix = self._unix
        if unix is not None:
            backlog = await unix.publish(channel, topic, data)
            self._published += 1
            if self._receive_own:
                assert self._self_sender is not None
                await self._router.dispatch_waiting(topic, bytes(data), 0, self._self_sender)

            # A peer's socket is full: give the loop a turn to flush (and, in
            # this process, to read) before queueing more behind it.
            if backlog or self._published % _YIELD_EVERY == 0:
                await asyncio.sleep(0)

            return

        seq = self._seq
        transport, protocol = self._transport, self._protocol
        assert transport is not None and protocol is not None
        if (
            type(data) is bytes
            and len(channel) + len(data) <= lcm.MAX_SHORT_PAYLOAD
            and len(data) <= self._max_message_size
        ):
            datagrams = [_SHORT_HEADER.pack(_SHORT_MAGIC, seq) + channel + data]
            self._seq = (seq + 1) & 0xFFFFFFFF
            if not self._receive_own and transport.try_send(datagrams[0]):  # the lean path
                self._published += 1
                if self._published % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)

                return
        else:
            datagrams = lcm.encode(channel, seq, data, max_message_size=self._max_message_size)
            self._seq = (seq + 1) & 0xFFFFFFFF

        protocol.sending = True
        try:
            for datagram in datagrams:
                transport.sendto(datagram)
        finally:
            protocol.sending = False

        error = protocol.take_send_error()
        if error is not None:
            raise BrokenTransportError(f"sending on {self.url} failed: {error}") from error

        self._published += 1
        if self._receive_own:
            assert self._self_sender is not None
            await self._router.dispatch_waiting(topic, bytes(data), seq, self._self_sender)

        if transport.get_write_buffer_size():
            await protocol.wait_writable()
        elif self._published % _YIELD_EVERY == 0:
            await asyncio.sleep(0)

    async def _publish_special(
        self, topic: str, channel: bytes, data: Payload | Loan, fds: Sequence[int]
    ) -> None:
        """Publish with ``fds`` or from a loan (unix transports)."""
        if isinstance(fds, str | bytes) or not all(
            isinstance(fd, int) and not isinstance(fd, bool) for fd in fds
        ):
            raise TypeError("fds must be a sequence of int file descriptors")

        passed = tuple(fds)
        if len(passed) > MAX_MESSAGE_FDS:
            raise ValueError(
                f"a message carries at most {MAX_MESSAGE_FDS} fds (the kernel's SCM_MAX_FD "
                f"is {MAX_FDS}, one of which a large payload's segment may need), not {len(passed)}"
            )

        if any(fd < 0 for fd in passed):
            raise ValueError(f"file descriptors are not negative: {passed}")

        for fd in passed:
            os.fstat(fd)  # EBADF now, whether or not anyone subscribes

        unix = self._unix
        if unix is None:
            what = "fds" if passed else "a loan"
            raise UnsupportedError(
                f"udpm cannot carry {what}: use a unix: or seqpacket: bus to pass fds "
                "and shared memory"
            )

        if type(data) is Loan:
            if data._segments is not unix.segments:
                raise ValueError("this loan belongs to another bus")

            lent = data._publish()
            payload: Payload = lent[1].view[: data.size]
            # Our own copy first: once peers release it, the segment may be lent again.
            own = bytes(payload) if self._receive_own else b""
            backlog = await unix.publish(channel, topic, payload, passed, lent)
        else:
            given: object = data
            if isinstance(given, str) or not isinstance(given, bytes | bytearray | memoryview):
                raise TypeError(f"a payload must be bytes-like, not {type(given).__name__}")

            own = bytes(data) if self._receive_own else b""
            backlog = await unix.publish(channel, topic, data, passed)

        self._published += 1
        if self._receive_own:
            assert self._self_sender is not None
            await self._router.dispatch_waiting(topic, own, 0, self._self_sender, passed)

        if backlog or self._published % _YIELD_EVERY == 0:
            await asyncio.sleep(0)

    # -- subscribing ----------------------------------------------------------

    def subscribe(
        self,
        pattern: str | re.Pattern[str],
        *,
        regex: bool = False,
        maxsize: int = DEFAULT_MAXSIZE,
        policy: OverflowPolicy | str = OverflowPolicy.DROP_OLDEST,
    ) -> Subscription:
        """Subscribe to every topic that matches ``pattern``.

        The subscription receives what is published from now on. Close it
        with ``async with`` or `Subscription.aclose`.

        :param pattern: an exact topic, a glob (``"sensors/*"``), or a regex
            (a compiled ``re.Pattern``, or a ``str`` with ``regex=True``); a regex
            must match the whole topic, as in LCM.
        :param regex: treat a ``str`` pattern as a regular expression.
        :param maxsize: queue bound, in messages (at least 1).
        :param policy: ``"drop_oldest"`` (default), ``"drop_newest"`` or ``"block"``.
        :return: an open subscription.
        :raises ClosedError: if the bus is closed.
        :raises BrokenTransportError: if the kernel refuses to join the group.
        :raises ValueError: for an empty or invalid pattern, a bad ``maxsize``
            or an unknown ``policy``.
        :raises TypeError: if ``pattern`` is neither ``str`` nor ``re.Pattern``.
        """
        return self._subscribe(TopicPattern(pattern, regex=regex), maxsize, policy)

    def _subscribe(
        self,
        pattern: TopicPattern,
        maxsize: int,
        policy: OverflowPolicy | str,
        *,
        implicit: bool = False,
    ) -> Subscription:
        if self._state == "closed":
            raise ClosedError("the bus is closed")

        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"maxsize must be a positive int, not {maxsize!r}")

        try:
            policy = OverflowPolicy(policy)
        except ValueError:
            known = ", ".join(repr(p.value) for p in OverflowPolicy)
            raise ValueError(f"unknown overflow policy {policy!r}; known: {known}") from None

        self._join_group()
        inbox = _Inbox(pattern, maxsize, policy, self._router)
        self._router.add(inbox)
        if self._unix is not None:
            try:
                self._unix.check_interests()
            except BaseException:
                self._router.remove(inbox)
                raise

        return Subscription(inbox, implicit=implicit)

    def _join_group(self) -> None:
        # Joined at the first subscription, not at open: a member that only
        # publishes then never receives (and filters) its own datagrams.
        transport = self._transport
        if transport is None or transport.is_closing():
            return

        try:
            transport.join_group()
        except OSError as exc:
            raise BrokenTransportError(f"cannot join {self.url}: {exc.strerror or exc}") from exc

    # -- introspection --------------------------------------------------------

    def statistics(self) -> BusStatistics:
        """Return this member's counters.

        :return: a snapshot; after `aclose`, the last one taken.
        """
        if self._final_statistics is not None:
            return self._final_statistics

        return self._statistics()

    def _statistics(self) -> BusStatistics:
        adapter: dict[str, int] = {}
        if self._protocol is not None:
            adapter = self._protocol.statistics()
        elif self._unix is not None:
            adapter = self._unix.statistics()

        transport = self._transport
        delivered, dropped = self._router.totals()
        return BusStatistics(
            published=self._published,
            received=adapter.get("received", 0),
            delivered=delivered,
            unmatched=self._router.unmatched,
            datagrams=adapter.get("datagrams", 0),
            own_filtered=transport.own_filtered if transport is not None else 0,
            malformed=adapter.get("malformed", 0) + (transport.truncated if transport else 0),
            oversize=adapter.get("oversize", 0),
            kernel_drops=transport.kernel_drops if transport is not None else 0,
            gaps=adapter.get("gaps", 0),
            reordered=adapter.get("reordered", 0),
            errors=adapter.get("errors", 0),
            incomplete=adapter.get("incomplete", 0),
            overflow_drops=dropped,
            subscriptions=self._router.inboxes,
            peers=adapter.get("peers", 0),
            peers_lost=adapter.get("peers_lost", 0),
            rejected=adapter.get("rejected", 0),
            send_drops=adapter.get("send_drops", 0),
            fd_drops=adapter.get("fd_drops", 0) + self._router.fd_drops,
            bad_segments=adapter.get("bad_segments", 0),
            segments_created=adapter.get("segments_created", 0),
            segments_reused=adapter.get("segments_reused", 0),
            batches_sent=adapter.get("batches_sent", 0),
            batched=adapter.get("batched", 0),
            batches_received=adapter.get("batches_received", 0),
        )

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if getattr(self, "_state", "new") in ("open", "opening"):
            _warn(f"unclosed bus {self!r}", ResourceWarning, source=self)

    def __repr__(self) -> str:
        return f"<Bus {self._state} {self.url}>"


def connect(
    url: str | None = None,
    *,
    receive_own: bool = False,
    max_message_size: int = lcm.DEFAULT_MAX_MESSAGE_SIZE,
    **options: str | int | float,
) -> Bus:
    """Describe a bus member to open with ``async with``.

    ``async with asyncbus.connect() as bus:`` joins the default bus, LCM's
    ``udpm://239.255.76.67:7667?ttl=0`` on the loopback interface, unless
    ``$ASYNCBUS_URL`` names another.

    :param url: the bus URL; ``None`` reads ``$ASYNCBUS_URL``, else the default.
    :param receive_own: also deliver this member's own publications to itself.
    :param max_message_size: largest payload sent or reassembled, in bytes.
    :param options: transport options overriding the URL's query.
    :return: a `Bus`, not yet open.
    :raises InvalidURLError: if the URL or an option is invalid.
    """
    return Bus(url, receive_own=receive_own, max_message_size=max_message_size, **options)
