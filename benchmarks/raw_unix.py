"""The AF_UNIX baselines: the same workload with plain blocking sockets and no framework.

What a Python process moves over AF_UNIX with the standard library alone, and what
asyncbus's ``unix:`` and ``seqpacket:`` buses are compared with:

* ``unix`` (SOCK_DGRAM): each subscriber binds a socket; the publisher connects one
  socket to each and ``send``-s every frame to each in turn;
* ``seqpacket`` (SOCK_SEQPACKET): each subscriber listens and accepts one
  connection; the publisher connects to each and ``send``-s every frame to each.

The frames are the ones asyncbus sends (an LCM ``LC02`` datagram, 87 bytes for a
64-byte payload), with one sequence number for all subscribers. Sends block, so a
full receiver makes the publisher wait: nothing is lost, as on asyncbus's buses with
``block`` subscriptions. The receive loop does only what a minimal receiver must: one
``recv`` per frame, tell the end marker from data by its length, read the payload
(``zlib.crc32`` of a memoryview after the header, as every system's subscriber does),
count, take the time. Unlike asyncbus it receives no credentials (asyncbus's ``unix:`` receiving
socket has ``SO_PASSCRED`` and reads each datagram with ``recvmsg``).

The sockets live in Linux's abstract namespace (:data:`~benchmarks.common.RAW_UNIX_PREFIX`),
so nothing is left on disk. Since the transport is lossless, the publisher sends one
end marker to each subscriber, behind its data.
"""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING, Final

from .common import (
    END_PAYLOAD,
    GO,
    LC02_HEADER,
    LC02_MAGIC,
    READER,
    READY,
    STOP,
    TOPIC,
    PublisherReport,
    SubscriberReport,
    Workload,
    clock,
    cpu_clock,
    lc02_datagram,
    raw_unix_address,
    reader_counters,
    receive_timeout,
    run_worker,
)

if TYPE_CHECKING:
    from .common import WorkerPipe

__all__ = ["SOCKET_TYPES", "run_publisher", "run_subscriber"]

SOCKET_TYPES: Final = {"unix": socket.SOCK_DGRAM, "seqpacket": socket.SOCK_SEQPACKET}
RECV_SIZE: Final = 65_536  # any frame an asyncbus member sends fits (at most 65,507 bytes)


def run_subscriber(work: Workload, conn: WorkerPipe) -> None:
    """Process entry point: receive until the end marker; report a :class:`SubscriberReport`.

    :param work: the run (``work.transport`` picks the socket type).
    :param conn: the pipe to the runner.
    """
    run_worker("subscriber", _subscribe, work, conn)


def run_publisher(work: Workload, conn: WorkerPipe) -> None:
    """Process entry point: send on GO, then one end marker to each subscriber; report.

    :param work: the run (``work.transport`` picks the socket type).
    :param conn: the pipe to the runner.
    """
    run_worker("publisher", _publish, work, conn)


def _subscribe(work: Workload, conn: WorkerPipe) -> SubscriberReport:
    kind = SOCKET_TYPES[work.transport]
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(socket.socket(socket.AF_UNIX, kind))
        sock.bind(raw_unix_address(work, work.index))
        if kind == socket.SOCK_SEQPACKET:
            sock.listen(1)

        conn.send(READY)
        if kind == socket.SOCK_SEQPACKET:
            sock.settimeout(work.start_timeout)  # for accept() only
            try:
                accepted, _ = sock.accept()  # blocking, without a timeout (CPython)
            except TimeoutError:
                return SubscriberReport(0, 0.0, 0.0, False, 0)

            sock = stack.enter_context(accepted)

        report = _receive(sock, work)

    return report


def _receive(sock: socket.socket, work: Workload) -> SubscriberReport:
    receive_timeout(sock, work.start_timeout)
    size = len(lc02_datagram(0, TOPIC, work.payload))
    offset = size - work.size  # where the payload starts, after the LC02 header
    recv, view = sock.recv, memoryview
    read, expected = READER, READER(work.payload)
    received = corrupt = 0
    first = last = cpu_first = 0.0
    end_seen = False
    while True:
        try:
            data = recv(RECV_SIZE)
        except BlockingIOError:  # EAGAIN: SO_RCVTIMEO expired
            break

        if len(data) != size:
            end_seen = bool(data)  # b"": the publisher's connection ended (seqpacket)
            break

        corrupt += read(view(data)[offset:]) != expected  # every byte of the payload
        last = clock()
        if not received:
            first = last
            cpu_first = cpu_clock()
            receive_timeout(sock, work.idle_timeout)

        received += 1

    cpu = cpu_clock() - cpu_first if received else 0.0
    # The kernel never drops AF_UNIX datagrams: a full receiver makes the sender wait.
    counters = {"reader": reader_counters(work.size, corrupt)}
    return SubscriberReport(received, first, last, end_seen, 0, counters=counters, cpu=cpu)


def _publish(work: Workload, conn: WorkerPipe) -> PublisherReport:
    kind = SOCKET_TYPES[work.transport]
    with contextlib.ExitStack() as stack:
        conn.send(READY)
        if (command := conn.recv()) != GO:
            raise RuntimeError(f"expected {GO!r} from the runner, got {command!r}")

        # The subscribers bound (and listen) before they said READY.
        sends = []
        for index in range(work.fanout):
            sock = stack.enter_context(socket.socket(socket.AF_UNIX, kind))
            sock.connect(raw_unix_address(work, index))
            sends.append(sock.send)

        buffer = bytearray(lc02_datagram(0, TOPIC, work.payload))
        pack_into = LC02_HEADER.pack_into
        cpu_started = cpu_clock()
        started = clock()
        for seq in range(work.messages):
            pack_into(buffer, 0, LC02_MAGIC, seq)
            for send in sends:
                send(buffer)

        finished = clock()
        cpu = cpu_clock() - cpu_started
        marker = lc02_datagram(work.messages, TOPIC, END_PAYLOAD)
        for send in sends:
            send(marker)

        if (command := conn.recv()) != STOP:
            raise RuntimeError(f"expected {STOP!r} from the runner, got {command!r}")

    return PublisherReport(work.messages, started, finished, 1, cpu=cpu)
