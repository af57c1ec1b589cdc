"""UDP multicast transport, on any asyncio loop (default loop and uvloop).

Theory of operation
-------------------
Two sockets per bus, as LCM uses:

* the *receive* socket binds the group's address and port with ``SO_REUSEADDR``
  (so every process on the host can), joins the group on the chosen interface
  and reports kernel drops through ``SO_RXQ_OVFL``;
* the *send* socket is bound to the interface's address and an ephemeral port.
  That ``(address, port)`` identifies this process on the bus: the kernel loops
  every multicast datagram back to every member, including the sender, and
  ``IP_MULTICAST_LOOP`` cannot be turned off usefully on ``lo``, so the
  transport drops datagrams whose source is its own send socket.

With ``ttl=0`` the interface is loopback (127.0.0.1): joining and sending there
needs no route and no root, even in a network namespace where only ``lo`` is up.

Reading uses ``add_reader``: each wakeup drains up to ``budget`` datagrams into
one preallocated 64 KiB buffer, then copies each datagram out at its own size.
Writing sends at once; only if the kernel says ``EAGAIN`` are datagrams queued
and flushed from ``add_writer``, with ``pause_writing``/``resume_writing`` on
the protocol around the usual high/low water marks.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import fcntl
import socket
import struct
import warnings
from collections.abc import Callable
from typing import Any, Final

from .._core.url import UDPMulticastAddress
from .._exceptions import InvalidURLError

__all__ = ["UDPMulticastTransport", "create_udpm_endpoint", "open_udpm_sockets"]

SO_RXQ_OVFL: Final = getattr(socket, "SO_RXQ_OVFL", 40)  # Linux include/uapi/asm-generic/socket.h
IP_MULTICAST_ALL: Final = getattr(socket, "IP_MULTICAST_ALL", 49)  # Linux include/uapi/linux/in.h
SO_RCVBUFFORCE: Final = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux, needs CAP_NET_ADMIN
SIOCGIFADDR: Final = 0x8915  # Linux include/uapi/linux/sockios.h
MAX_DATAGRAM: Final = 65_535  # largest UDP payload the IPv4 length field allows
_MSG_TRUNC: Final = int(socket.MSG_TRUNC)  # a plain int: IntFlag's & costs ~1 us per datagram
_ANCILLARY_SIZE: Final = socket.CMSG_SPACE(4)  # one u32: the SO_RXQ_OVFL drop counter
_DEFAULT_BUDGET: Final = 256  # datagrams per wakeup before yielding to other callbacks
_HIGH_WATER: Final = 64 * 1024  # asyncio's default for its own transports
_LOOPBACK: Final = "127.0.0.1"


def _interface_address(interface: str) -> str:
    """Resolve an interface name or IPv4 address to an IPv4 address (Linux ioctl)."""
    try:
        socket.inet_aton(interface)
    except OSError:
        pass
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((interface, 0))
            except OSError:
                raise InvalidURLError(f"no interface has the address {interface}") from None

        return interface

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        request = struct.pack("256s", interface.encode()[:15])
        try:
            reply = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, request)
        except OSError as exc:
            reason = "no such interface" if exc.errno == errno.ENODEV else "it has no IPv4 address"
            raise InvalidURLError(f"unknown interface {interface!r}: {reason}") from None

    return socket.inet_ntoa(reply[20:24])


def _routed_source(group: str, port: int) -> str | None:
    """Return the source address the routing table picks for ``group``, if any route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((group, port))
        except OSError:
            return None  # no route: a namespace with only lo up

        host: str = probe.getsockname()[0]
        return host


def _set_receive_buffer(sock: socket.socket, size: int) -> None:
    # As root, SO_RCVBUFFORCE may exceed net.core.rmem_max; others get at most rmem_max.
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


Membership = tuple[bytes, bool]  # an ip_mreq, and whether failing to join is acceptable


def open_udpm_sockets(
    address: UDPMulticastAddress,
) -> tuple[socket.socket, socket.socket, list[Membership]]:
    """Create the receive and send sockets of a ``udpm`` bus member.

    The receive socket is bound but has not joined the group yet (see
    `UDPMulticastTransport.join_group`).

    :param address: the bus address.
    :return: ``(receive_socket, send_socket, memberships)``, sockets non-blocking.
    :raises InvalidURLError: if the interface does not exist or has no IPv4 address.
    :raises OSError: if the kernel refuses (no route to the group, port in use
        without ``SO_REUSEADDR`` by another program, ...).
    """
    if address.interface is not None:
        local = _interface_address(address.interface)
    elif address.ttl == 0:
        local = _LOOPBACK
    else:
        local = ""

    group = (address.group, address.port)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _set_receive_buffer(receiver, address.recv_buf_size)
        receiver.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        # Bound to the group's address, the socket only gets that group's datagrams;
        # without IP_MULTICAST_ALL=0 Linux would also deliver them while we have not
        # joined, whenever another socket on the host has (we join lazily).
        receiver.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        receiver.bind(group)
        memberships = [
            (socket.inet_aton(address.group) + socket.inet_aton(local or "0.0.0.0"), False)
        ]
        if address.ttl == 0 and address.interface is None:
            # LCM sends through whatever interface the route to the group names (on a
            # networked host, not lo); with ttl=0 the kernel loops that copy back on
            # that interface only. Join there too, so LCM peers are heard both ways.
            routed = _routed_source(address.group, address.port)
            if routed is not None and routed != _LOOPBACK:
                memberships.append(
                    (socket.inet_aton(address.group) + socket.inet_aton(routed), True)
                )

        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, address.ttl)
        if local:
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local))
            sender.bind((local, 0))
        else:
            # Let the routing table pick the source address, then pin it: our own
            # datagrams are recognised by exactly this (address, port).
            routed = _routed_source(address.group, address.port)
            if routed is None:
                raise OSError(errno.ENETUNREACH, f"no route to {address.group}; pass interface=")

            sender.bind((routed, 0))

        # The kernel loops a multicast datagram back to local listeners only if the
        # sending interface is a member of the group. Our receive socket joins lazily,
        # and a listener such as LCM may have joined on another interface (relying on
        # IP_MULTICAST_ALL), so the send socket joins on its own interface. Bound to
        # an ephemeral port, it never receives the group's datagrams itself.
        sender.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        source = sender.getsockname()[0]
        sender.setsockopt(
            socket.IPPROTO_IP,
            socket.IP_ADD_MEMBERSHIP,
            socket.inet_aton(address.group) + socket.inet_aton(source),
        )

        receiver.setblocking(False)
        sender.setblocking(False)
    except BaseException:
        receiver.close()
        sender.close()
        raise

    return receiver, sender, memberships


class UDPMulticastTransport(asyncio.DatagramTransport):
    """An asyncio datagram transport over a multicast group.

    ``datagram_received(data, addr)`` is called for every datagram from another
    sender; this process's own datagrams are dropped (and counted in
    `own_filtered`). Kernel drops reported by ``SO_RXQ_OVFL`` accumulate in
    `kernel_drops`.

    Nothing arrives until `join_group` is called: a member that only publishes
    never joins, so the kernel does not loop its own traffic back to it.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        receiver: socket.socket,
        sender: socket.socket,
        protocol: asyncio.DatagramProtocol,
        group: tuple[str, int],
        memberships: list[Membership],
        *,
        budget: int = _DEFAULT_BUDGET,
    ) -> None:
        super().__init__({"group": group})
        self._memberships = memberships
        self._joined = False
        self._loop = loop
        self._receiver: socket.socket | None = receiver
        self._sender: socket.socket | None = sender
        self._protocol = protocol
        self._group = group
        self._own = sender.getsockname()
        self._budget = budget
        self._buffer = bytearray(MAX_DATAGRAM + 1)
        self._view = memoryview(self._buffer)
        self._write_queue: collections.deque[tuple[bytes, tuple[str, int]]] = collections.deque()
        self._write_queued_bytes = 0
        self._high_water = _HIGH_WATER
        self._low_water = _HIGH_WATER // 4
        self._writing_paused = False
        self._reading = False
        self._closing = False
        self._made = False
        self._lost = False
        self.own_filtered = 0
        self.kernel_drops = 0
        self.truncated = 0
        loop.call_soon(self._start)

    def _start(self) -> None:
        if self._closing:
            return

        try:
            self._made = True
            self._protocol.connection_made(self)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "connection_made() failed")
            return

        if not self._closing:
            self.resume_reading()

    # -- reading ------------------------------------------------------------

    def join_group(self) -> None:
        """Join the multicast group, so that datagrams start to arrive. Idempotent.

        :raises OSError: if the kernel refuses the membership.
        """
        receiver = self._receiver
        if self._joined or receiver is None:
            return

        for membership, optional in self._memberships:
            try:
                receiver.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
            except OSError:
                if not optional:
                    raise

        self._joined = True

    def _read_ready(self) -> None:
        receiver = self._receiver
        if receiver is None:
            return

        buffers = (self._buffer,)
        view = self._view
        own = self._own
        protocol = self._protocol
        for _ in range(self._budget):
            try:
                size, ancillary, flags, address = receiver.recvmsg_into(buffers, _ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                protocol.error_received(exc)
                return

            if ancillary:
                self._note_drops(ancillary)

            if address == own:
                self.own_filtered += 1
                continue

            if flags & _MSG_TRUNC:
                self.truncated += 1
                continue

            try:
                protocol.datagram_received(bytes(view[:size]), address)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "datagram_received() failed")
                return

            if not self._reading:
                return

    def _note_drops(self, ancillary: list[tuple[int, int, bytes]]) -> None:
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(data) >= 4:
                # The kernel reports the socket's total drop count so far.
                self.kernel_drops = max(self.kernel_drops, int.from_bytes(data[:4], "little"))

    def pause_reading(self) -> None:
        """Stop calling ``datagram_received`` until `resume_reading`."""
        if self._reading and self._receiver is not None:
            self._reading = False
            self._loop.remove_reader(self._receiver.fileno())

    def resume_reading(self) -> None:
        """Resume reading after `pause_reading`."""
        if not self._reading and not self._closing and self._receiver is not None:
            self._reading = True
            self._loop.add_reader(self._receiver.fileno(), self._read_ready)

    def is_reading(self) -> bool:
        """Tell whether the transport is reading.

        :return: ``True`` unless paused or closing.
        """
        return self._reading

    # -- writing ------------------------------------------------------------

    def sendto(self, data: Any, addr: Any = None) -> None:
        """Send one datagram to the group (or to ``addr``).

        Errors from the kernel go to the protocol's ``error_received``.

        :param data: the datagram.
        :param addr: destination; the group when ``None``.
        :raises RuntimeError: if the transport is closing.
        """
        sender = self._sender
        if self._closing or sender is None:
            raise RuntimeError("sendto() on a closing UDPMulticastTransport")

        destination = self._group if addr is None else addr
        if not self._write_queue:
            try:
                sender.sendto(data, destination)
                return
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(sender.fileno(), self._write_ready)
            except OSError as exc:
                self._protocol.error_received(exc)
                return

        self._write_queue.append((bytes(data), destination))
        self._write_queued_bytes += len(data)
        self._maybe_pause_protocol()

    def try_send(self, data: bytes) -> bool:
        """Send one datagram to the group now, if nothing is queued and the kernel takes it.

        :return: ``False`` if it was not sent (queued datagrams, a full socket, an
            error, closing): send it with `sendto`, which queues or reports.
        """
        sender = self._sender
        if self._write_queue or self._closing or sender is None:
            return False

        try:
            sender.sendto(data, self._group)
        except OSError:
            return False

        return True

    def _write_ready(self) -> None:
        sender = self._sender
        queue = self._write_queue
        while queue and sender is not None:
            data, destination = queue[0]
            try:
                sender.sendto(data, destination)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._protocol.error_received(exc)

            queue.popleft()
            self._write_queued_bytes -= len(data)

        if sender is not None:
            self._loop.remove_writer(sender.fileno())

        self._maybe_resume_protocol()
        if self._closing:
            self._loop.call_soon(self._connection_lost, None)

    def _maybe_pause_protocol(self) -> None:
        if not self._writing_paused and self._write_queued_bytes > self._high_water:
            self._writing_paused = True
            self._protocol.pause_writing()

    def _maybe_resume_protocol(self) -> None:
        if self._writing_paused and self._write_queued_bytes <= self._low_water:
            self._writing_paused = False
            self._protocol.resume_writing()

    def get_write_buffer_size(self) -> int:
        """Return the bytes queued because the kernel said ``EAGAIN``.

        :return: queued bytes.
        """
        return self._write_queued_bytes

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """Return ``(low, high)`` water marks for ``pause_writing``.

        :return: the water marks in bytes.
        """
        return self._low_water, self._high_water

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the water marks, as asyncio's transports do.

        :param high: pause the protocol above this many queued bytes.
        :param low: resume it at or below this many.
        :raises ValueError: unless ``0 <= low <= high``.
        """
        high = _HIGH_WATER if high is None else high
        low = high // 4 if low is None else low
        if not 0 <= low <= high:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")

        self._high_water, self._low_water = high, low
        self._maybe_pause_protocol()
        self._maybe_resume_protocol()

    # -- closing ------------------------------------------------------------

    def is_closing(self) -> bool:
        """Tell whether `close` or `abort` was called.

        :return: ``True`` once closing.
        """
        return self._closing

    def close(self) -> None:
        """Stop reading, flush queued datagrams, then close (``connection_lost(None)``)."""
        if self._closing:
            return

        self.pause_reading()
        self._closing = True
        if not self._write_queue:
            self._loop.call_soon(self._connection_lost, None)

    def abort(self) -> None:
        """Close at once, dropping queued datagrams."""
        self._force_close(None)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._lost:
            return

        self.pause_reading()
        if self._sender is not None and self._write_queue:
            self._loop.remove_writer(self._sender.fileno())

        self._write_queue.clear()
        self._write_queued_bytes = 0
        if not self._closing:
            self._closing = True
            self._loop.call_soon(self._connection_lost, exc)

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        # Nowhere to raise to from a loop callback: report to the loop's exception
        # handler and close, so the protocol sees connection_lost(exc).
        self._loop.call_exception_handler(
            {"message": f"UDPMulticastTransport: {message}", "exception": exc, "transport": self}
        )
        self._force_close(exc)

    def _connection_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return

        self._lost = True
        if exc is not None and not isinstance(exc, Exception):
            exc = RuntimeError(f"transport failed: {exc!r}")

        try:
            if self._made:  # asyncio's contract: no connection_lost without connection_made
                self._protocol.connection_lost(exc)
        finally:
            self._close_sockets()

    def _close_sockets(self) -> None:
        for sock in (self._receiver, self._sender):
            if sock is not None:
                sock.close()

        self._receiver = self._sender = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Return transport details, as asyncio transports do.

        Known names: ``group``, ``sockname`` (this member's send address, the
        identity others see), ``socket`` (the receive socket), ``send_socket``,
        ``recv_buf_size`` (the kernel's actual receive buffer).

        :param name: the detail's name.
        :param default: returned for unknown names.
        :return: the value.
        """
        if name == "sockname":
            return self._own

        if name == "socket":
            return self._receiver

        if name == "send_socket":
            return self._sender

        if name == "recv_buf_size" and self._receiver is not None:
            return self._receiver.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

        return super().get_extra_info(name, default)

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if self._receiver is not None or self._sender is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._close_sockets()

    def __repr__(self) -> str:
        state = "closed" if self._lost else "closing" if self._closing else "open"
        return f"<UDPMulticastTransport {state} group={self._group} own={self._own}>"


async def create_udpm_endpoint(
    protocol_factory: Callable[[], asyncio.DatagramProtocol],
    address: UDPMulticastAddress,
) -> tuple[UDPMulticastTransport, asyncio.DatagramProtocol]:
    """Open a multicast bus member on the running loop.

    :param protocol_factory: makes the protocol that receives datagrams.
    :param address: the bus address.
    :return: ``(transport, protocol)`` once ``connection_made`` has been called.
    :raises InvalidURLError: for an unknown interface.
    :raises OSError: if the kernel refuses the sockets.
    """
    loop = asyncio.get_running_loop()
    receiver, sender, memberships = open_udpm_sockets(address)
    try:
        protocol = protocol_factory()
        transport = UDPMulticastTransport(
            loop, receiver, sender, protocol, (address.group, address.port), memberships
        )
    except BaseException:
        receiver.close()
        sender.close()
        raise

    started: asyncio.Future[None] = loop.create_future()

    def _started() -> None:
        if not started.done():  # it is cancelled if our caller was
            started.set_result(None)

    loop.call_soon(_started)  # runs after the transport's _start
    try:
        await started
    except BaseException:
        transport.abort()
        raise

    return transport, protocol
