"""The asyncio protocol on a ``udpm`` transport.

`UDPMulticastProtocol` sits on a
`asyncbus._transports.udpm.UDPMulticastTransport`: each datagram goes through
`asyncbus._adapters.common.MessageReceiver` (decode, reassemble, sequence,
route), keyed by the sender's (address, port). Malformed datagrams are counted
and dropped; nothing a peer sends can raise out of ``datagram_received``.
"""

from __future__ import annotations

import asyncio
from typing import Final

from .._message import Sender
from .._subscription import _Router
from .common import MessageReceiver

__all__ = ["UDPMulticastProtocol"]

_SENDER_CACHE_LIMIT: Final = 4096  # distinct peers whose Sender objects are reused


class UDPMulticastProtocol(MessageReceiver, asyncio.DatagramProtocol):
    """Decode LCM datagrams and route the messages (internal)."""

    def __init__(self, router: _Router, *, max_message_size: int) -> None:
        super().__init__(router, max_message_size=max_message_size)
        self._senders: dict[tuple[str, int], Sender] = {}
        self._transport: asyncio.BaseTransport | None = None
        self._writable: asyncio.Event | None = None
        self._send_error: OSError | None = None
        self.sending = False

    # -- asyncio protocol callbacks -------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport = transport
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed = self._loop.create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams += 1
        sender = self._senders.get(addr)
        if sender is None:
            sender = self._sender_for(addr)

        # receive_lcm's hot path, inlined: one datagram is one message here, so the
        # call it saves is a good part of the per-message cost.
        short = self._decode_short(data)
        if short is not None:
            topic, seq, payload = short
            if len(payload) <= self._max_message_size:
                last = self._last_seq.get(addr)
                if last is not None and seq - last == 1:
                    self._last_seq[addr] = seq  # what observe() does in order
                else:
                    self._sequences.observe(addr, seq)

                self.received += 1
                self._dispatch(topic, payload, seq, sender, None)
                return

        self.receive_lcm(data, addr, sender)

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
        self.stop_receiving()
        if self._writable is not None:
            self._writable.set()

        self._report_closed(exc)

    # -- used by the bus ------------------------------------------------------

    def take_send_error(self) -> OSError | None:
        """Return and forget the error of the last send, if any."""
        error, self._send_error = self._send_error, None
        return error

    async def wait_writable(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        assert self._writable is not None
        await self._writable.wait()

    def statistics(self) -> dict[str, int]:
        """Return the adapter's counters, merged with the core's."""
        return self.receive_statistics()

    # -- internals ------------------------------------------------------------

    def _sender_for(self, addr: tuple[str, int]) -> Sender:
        if len(self._senders) >= _SENDER_CACHE_LIMIT:
            self._senders.clear()

        sender = self._senders[addr] = Sender(f"{addr[0]}:{addr[1]}")
        return sender
