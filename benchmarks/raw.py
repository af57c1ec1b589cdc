"""The baseline: the same workload with plain blocking sockets and no framework.

This is as fast as a Python process can move these datagrams with the standard library,
and what asyncbus is compared with. The loops do only what a minimal receiver must: one
``recv`` per datagram, tell the end marker from data by its length, read the payload
(``zlib.crc32`` of a memoryview after the header, as every system's subscriber does),
count, take the time. The sender packs the sequence number into a reusable buffer and
calls ``sendto``. The multicast setup is the one asyncbus documents for ``ttl=0``: join
the group on 127.0.0.1, send through 127.0.0.1, TTL 0 (never leaves the host); no route
and no root needed.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Final

from .common import (
    END_PAYLOAD,
    GO,
    LC02_HEADER,
    LC02_MAGIC,
    MARKER_INTERVAL,
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
    reader_counters,
    receive_timeout,
    run_worker,
)

if TYPE_CHECKING:
    from .common import WorkerPipe

__all__ = ["run_publisher", "run_subscriber"]

LOOPBACK: Final = "127.0.0.1"
RECV_SIZE: Final = 65_536  # any UDP datagram fits (IPv4 payload limit 65,507)
SO_RCVBUFFORCE: Final = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux asm-generic/socket.h


def run_subscriber(work: Workload, conn: WorkerPipe) -> None:
    """Process entry point: receive until the end marker; report a :class:`SubscriberReport`.

    :param work: the run.
    :param conn: the pipe to the runner.
    """
    run_worker("subscriber", _subscribe, work, conn)


def run_publisher(work: Workload, conn: WorkerPipe) -> None:
    """Process entry point: send on GO, repeat the end marker until STOP; report.

    :param work: the run.
    :param conn: the pipe to the runner.
    """
    run_worker("publisher", _publish, work, conn)


def _subscribe(work: Workload, conn: WorkerPipe) -> SubscriberReport:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _receive_buffer(sock, work.recv_buf_size)
        sock.bind((work.group, work.port))  # the group address: this group's traffic only
        membership = socket.inet_aton(work.group) + socket.inet_aton(LOOPBACK)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        receive_timeout(sock, work.start_timeout)
        conn.send(READY)

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
                end_seen = True
                break

            corrupt += read(view(data)[offset:]) != expected  # every byte of the payload
            last = clock()
            if not received:
                first = last
                cpu_first = cpu_clock()
                receive_timeout(sock, work.idle_timeout)

            received += 1

        cpu = cpu_clock() - cpu_first if received else 0.0
        drops = _kernel_drops(sock)
        buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    counters = {"so_rcvbuf": buffer, "reader": reader_counters(work.size, corrupt)}
    return SubscriberReport(received, first, last, end_seen, drops, counters=counters, cpu=cpu)


def _publish(work: Workload, conn: WorkerPipe) -> PublisherReport:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        destination = (work.group, work.port)
        buffer = bytearray(lc02_datagram(0, TOPIC, work.payload))
        pack_into = LC02_HEADER.pack_into
        sendto = sock.sendto
        conn.send(READY)
        if (command := conn.recv()) != GO:
            raise RuntimeError(f"expected {GO!r} from the runner, got {command!r}")

        cpu_started = cpu_clock()
        started = clock()
        for seq in range(work.messages):
            pack_into(buffer, 0, LC02_MAGIC, seq)
            sendto(buffer, destination)

        finished = clock()
        cpu = cpu_clock() - cpu_started
        markers = 0
        deadline = finished + work.start_timeout + work.idle_timeout
        while True:
            sendto(lc02_datagram(work.messages + markers, TOPIC, END_PAYLOAD), destination)
            markers += 1
            if conn.poll(MARKER_INTERVAL) or clock() > deadline:
                break

        if (command := conn.recv()) != STOP:
            raise RuntimeError(f"expected {STOP!r} from the runner, got {command!r}")

    return PublisherReport(work.messages, started, finished, markers, cpu=cpu)


def _receive_buffer(sock: socket.socket, size: int) -> None:
    # As asyncbus does: as root SO_RCVBUFFORCE may exceed net.core.rmem_max; others
    # get at most rmem_max.
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _kernel_drops(sock: socket.socket) -> int:
    """Return how many datagrams the kernel dropped for ``sock`` (full receive queue).

    Linux only: the last column of ``/proc/net/udp``, found by the socket's inode.
    The raw loop uses plain ``recv`` (no ``SO_RXQ_OVFL``) so this is read once at
    the end instead of on every datagram. Returns -1 when it cannot be found.
    """
    inode = str(os.fstat(sock.fileno()).st_ino)
    try:
        with open("/proc/net/udp", encoding="ascii") as table:
            for line in table:
                fields = line.split()
                if len(fields) > 12 and fields[9] == inode:
                    return int(fields[12])
    except OSError:
        pass  # not Linux, or /proc not mounted

    return -1
