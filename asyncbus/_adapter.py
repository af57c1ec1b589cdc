"""Where the sans-I/O core, a transport and the event loop meet.

`UDPMulticastProtocol` is the asyncio protocol on a
`asyncbus._transports.udpm.UDPMulticastTransport`: it decodes each
datagram with the core, reassembles fragments (driving the core's timeouts from
the loop's clock), tracks per-sender sequence numbers, and hands whole messages
to the router. Malformed datagrams are counted and dropped here; nothing a peer
sends can raise out of ``datagram_received``.
"""

from __future__ import annotations

import asyncio
from typing import Final

from ._core import lcm
from ._core.reassembly import Reassembler
from ._core.sequence import SequenceTracker
from ._exceptions import RemoteProtocolError
from ._message import Sender
from ._subscription import _Router

__all__ = ["UDPMulticastProtocol"]

_SENDER_CACHE_LIMIT: Final = 4096  # distinct peers whose Sender objects are reused
_TIMER_SLACK: Final = 0.002  # uvloop rounds timers to 1 ms


class UDPMulticastProtocol(asyncio.DatagramProtocol):
    """Decode LCM datagrams and route the messages (internal)."""

    def __init__(self, router: _Router, *, max_message_size: int) -> None:
        self._router = router
        self._decoder = lcm.Decoder()
        self._reassembler = Reassembler(max_message_size=max_message_size)
        self._max_message_size = max_message_size
        self._sequences = SequenceTracker()
        self._senders: dict[tuple[str, int], Sender] = {}
        self._expiry: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._writable: asyncio.Event | None = None
        self._send_error: OSError | None = None
        self._closed: asyncio.Future[BaseException | None] | None = None
        self.sending = False
        self.datagrams = 0
        self.received = 0
        self.malformed = 0
        self.oversize = 0
        self.receive_errors = 0

    # -- asyncio protocol callbacks -------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport = transport
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed = self._loop.create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams += 1
        try:
            frame = self._decoder.decode(data)
        except RemoteProtocolError:
            self.malformed += 1
            return

        if type(frame) is lcm.Fragment:
            assert self._loop is not None
            complete = self._reassembler.feed(addr, frame, self._loop.time())
            self._schedule_expiry()
            if complete is None:
                return

            frame = complete

        assert type(frame) is lcm.CompleteMessage
        if len(frame.data) > self._max_message_size:
            self.oversize += 1
            return

        self._sequences.observe(addr, frame.seq)
        sender = self._senders.get(addr)
        if sender is None:
            sender = self._sender_for(addr)

        self.received += 1
        self._router.dispatch(frame.channel, frame.data, frame.seq, sender)

    def error_received(self, exc: Exception) -> None:
        if self.sending and isinstance(exc, OSError):
            self._send_error = exc
        else:
            self.receive_errors += 1

    def pause_writing(self) -> None:
        assert self._writable is not None
        self._writable.clear()

    def resume_writing(self) -> None:
        assert self._writable is not None
        self._writable.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

        self._reassembler.clear()
        if self._writable is not None:
            self._writable.set()

        if self._closed is not None and not self._closed.done():
            self._closed.set_result(exc)

    # -- used by the bus ------------------------------------------------------

    def take_send_error(self) -> OSError | None:
        """Return and forget the error of the last send, if any."""
        error, self._send_error = self._send_error, None
        return error

    async def wait_writable(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        assert self._writable is not None
        await self._writable.wait()

    async def wait_closed(self) -> BaseException | None:
        """Wait for ``connection_lost``.

        :return: the exception the transport broke with, or ``None``.
        """
        assert self._closed is not None
        return await asyncio.shield(self._closed)

    def closed_with(self) -> asyncio.Future[BaseException | None]:
        """The future that ``connection_lost`` resolves."""
        assert self._closed is not None
        return self._closed

    def statistics(self) -> dict[str, int]:
        """Return the adapter's counters, merged with the core's."""
        reassembly = self._reassembler.statistics()
        sequences = self._sequences.statistics()
        return {
            "datagrams": self.datagrams,
            "received": self.received,
            "malformed": self.malformed + reassembly.inconsistent,
            "oversize": self.oversize + reassembly.oversize,
            "gaps": sequences.gaps,
            "reordered": sequences.reordered + sequences.duplicates + reassembly.duplicates,
            "errors": self.receive_errors,
            "incomplete": reassembly.incomplete,
        }

    # -- internals ------------------------------------------------------------

    def _sender_for(self, addr: tuple[str, int]) -> Sender:
        if len(self._senders) >= _SENDER_CACHE_LIMIT:
            self._senders.clear()

        sender = self._senders[addr] = Sender(f"{addr[0]}:{addr[1]}")
        return sender

    def _schedule_expiry(self) -> None:
        deadline = self._reassembler.next_deadline()
        if deadline is None or self._loop is None:
            return

        if self._expiry is not None:
            if self._expiry.when() <= deadline:
                return

            self._expiry.cancel()

        self._expiry = self._loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        assert self._loop is not None
        deadline = self._reassembler.next_deadline()
        # uvloop's timers have millisecond resolution and may fire a hair early;
        # expiring "at the deadline" then avoids re-arming for a sub-ms spin.
        now = self._loop.time()
        if deadline is not None and 0 < deadline - now < _TIMER_SLACK:
            now = deadline

        self._reassembler.expire(now)
        self._schedule_expiry()
