"""The peers (issue 5): the same workload through pyzmq PUB/SUB and through LCM's binding.

What a Python program that does not use asyncbus would write, measured in the same run
as the raw udpm loops (:mod:`benchmarks.raw`), with the same payloads (64 B, 1 KiB,
16 KiB), the same runner (one process per member, READY / GO / STOP on pipes), the same
reader (``zlib.crc32`` of every payload) and the same reports. pyzmq also runs in the
large scenario (1 MiB, 64 MiB; :mod:`benchmarks.large`), with the same workers.

* **pyzmq** (``zmq``): a ``PUB`` socket bound to ``ipc://`` (a path in a short private
  directory under the temporary directory), one ``SUB`` socket per subscriber
  connected to it, subscribed to everything. Each message is one frame: the payload.
  ``sync`` uses plain blocking sockets; ``asyncio`` uses ``zmq.asyncio`` on the default
  asyncio loop (``await sock.send()``, ``await sock.recv()``).
* **LCM** (``lcm``): ``lcm.LCM(url).publish(channel, payload)`` in a loop; each
  subscriber ``subscribe(channel, handler)`` and ``handle_timeout()`` in a loop. The URL
  is the run's private group and port with ``ttl=0`` and the receive buffer the raw and
  asyncbus subscribers ask for, as in the udpm throughput cases.

PUB/SUB drops silently: a ``PUB`` socket discards a message for a subscriber whose queue
(``SNDHWM`` at the publisher plus ``RCVHWM`` at the subscriber, plus the kernel's socket
buffers) is full, and the publisher never waits. Both high-water marks are set
explicitly (:func:`high_water_mark`: :data:`HWM` messages, fewer for payloads so large
that a socket would hold more than :data:`HWM_BYTES`). Payloads of pyzmq's copy
threshold (64 KiB) or more are received with ``copy=False`` (the frame's buffer, no
copy), as pyzmq sends them and as its documentation advises for large messages. LCM over
multicast drops in the kernel when a receive queue is full. So loss is ``sent -
received`` for both; neither tells which messages.

ZeroMQ's slow joiner: a ``SUB`` socket's subscription reaches the publisher some time
after ``connect``, and until then the publisher drops everything for it. So the
publisher binds, says READY, and sends a probe (a 5-byte message) every
:data:`PROBE_INTERVAL` until GO; each subscriber says READY only once a probe has
arrived (its subscription is in place), so the runner's GO, which waits for every
READY, starts the clock only when every subscriber hears the publisher. Subscribers
skip probes still queued after GO by their length, as they tell the end marker
(3 bytes) from data by its length. LCM needs no probe: a multicast membership is in
place when ``subscribe`` returns.

Neither peer exposes kernel drop counters, so ``kernel_drops`` is -1 (unknown).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any, Final

from .common import (
    END_PAYLOAD,
    GO,
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
    reader_counters,
    run_on_loop,
    run_worker,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    import zmq
    import zmq.asyncio

    from .common import WorkerPipe

__all__ = [
    "HWM",
    "HWM_BYTES",
    "PACKAGES",
    "PROBE",
    "ZMQ_LOOPS",
    "high_water_mark",
    "ipc_address",
    "missing_packages",
    "run_lcm_publisher",
    "run_lcm_subscriber",
    "run_zmq_publisher",
    "run_zmq_subscriber",
]

# SNDHWM and RCVHWM, in messages: ZeroMQ's default (1000), set explicitly so that a
# change of default does not change the benchmark. Close to asyncbus's own bounds
# (peer_queue 1024 at the publisher, subscription maxsize 1024 at the subscriber).
HWM: Final = 1000
# ... but no more than this many payload bytes per queue (the large scenario: 16 messages
# of 64 MiB), so that a socket holds about as much as an asyncbus publisher's
# segment_memory (1 GiB).
HWM_BYTES: Final = 1 << 30
# pyzmq sends a payload of this size or more without copying it (zmq.COPY_THRESHOLD,
# 64 KiB); the subscribers receive such payloads with copy=False.
COPY_THRESHOLD: Final = 65_536
PROBE: Final = b"probe"  # 5 bytes: neither data (64) nor the end marker (3)
PROBE_INTERVAL: Final = 0.001  # seconds between two probes before GO
ZMQ_LOOPS: Final = ("sync", "asyncio")
# The Python package to install for each import the scenario needs.
PACKAGES: Final = {"zmq": "pyzmq", "lcm": "lcm"}
SUN_PATH_MAX: Final = 107  # Linux sockaddr_un.sun_path (108) minus the NUL


def missing_packages() -> list[str]:
    """Return the PyPI names of the peers that cannot be imported here.

    :return: for example ``["pyzmq"]``; empty when the scenario can run.
    """
    missing = []
    for name, package in PACKAGES.items():
        try:
            importlib.import_module(name)  # not find_spec: a binding that fails to load counts
        except ImportError:
            missing.append(package)

    return missing


def ipc_address(work: Workload) -> tuple[str, str]:
    """Return the run's private directory and the ``ipc://`` endpoint in it.

    :param work: the run (its private ``name``).
    :return: ``(directory, endpoint)``.
    :raises ValueError: if the path does not fit in an AF_UNIX address.
    """
    directory = os.path.join(tempfile.gettempdir(), work.name)
    path = os.path.join(directory, "pub")
    if len(path.encode()) > SUN_PATH_MAX:
        raise ValueError(f"ipc path longer than {SUN_PATH_MAX} bytes: {path} (set TMPDIR=/tmp)")

    return directory, f"ipc://{path}"


def high_water_mark(size: int) -> int:
    """Return ``SNDHWM`` and ``RCVHWM`` for ``size``-byte payloads.

    :param size: the payload size.
    :return: :data:`HWM`, or ``HWM_BYTES // size`` if smaller, but at least 2.
    """
    return max(2, min(HWM, HWM_BYTES // size))


def lcm_url(work: Workload) -> str:
    """Return LCM's URL for the run: the private group and port, ``ttl=0``, the receive buffer.

    :param work: the run.
    :return: ``udpm://GROUP:PORT?ttl=0&recv_buf_size=N``.
    """
    return f"udpm://{work.group}:{work.port}?ttl=0&recv_buf_size={work.recv_buf_size}"


def run_zmq_publisher(work: Workload, conn: WorkerPipe) -> None:
    """Process entry point: pyzmq PUB (``work.loop``: ``sync`` or ``asyncio``); report.

    :param work: the run.
    :param conn: the pipe to the runner.
    """
    run_worker("publisher", _zmq_publisher, work, conn)


def run_zmq_subscriber(work: Workload, conn: WorkerPipe) -> None:
    """Process entry point: pyzmq SUB (``work.loop``: ``sync`` or ``asyncio``); report.

    :param work: the run.
    :param conn: the pipe to the runner.
    """
    run_worker("subscriber", _zmq_subscriber, work, conn)


def run_lcm_publisher(work: Workload, conn: WorkerPipe) -> None:
    """Process entry point: ``lcm.LCM.publish`` in a loop on GO; report.

    :param work: the run.
    :param conn: the pipe to the runner.
    """
    run_worker("publisher", _lcm_publisher, work, conn)


def run_lcm_subscriber(work: Workload, conn: WorkerPipe) -> None:
    """Process entry point: ``lcm.LCM.handle_timeout`` until the end marker; report.

    :param work: the run.
    :param conn: the pipe to the runner.
    """
    run_worker("subscriber", _lcm_subscriber, work, conn)


def _expect(conn: WorkerPipe, command: str) -> None:
    if (answer := conn.recv()) != command:
        raise RuntimeError(f"expected {command!r} from the runner, got {answer!r}")


# pyzmq


@contextlib.contextmanager
def _private_directory(work: Workload) -> Iterator[str]:
    """Create the run's directory for the ``ipc://`` socket; remove it on the way out."""
    directory, endpoint = ipc_address(work)
    os.mkdir(directory, 0o700)
    try:
        yield endpoint
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _zmq_options(sock: zmq.Socket[Any], size: int) -> None:
    import zmq

    hwm = high_water_mark(size)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, 0)  # close() never waits for undelivered messages


def _zmq_publisher(work: Workload, conn: WorkerPipe) -> PublisherReport:
    if work.loop == "asyncio":
        return run_on_loop("asyncio", _zmq_publish_async(work, conn))

    import zmq

    payload = work.payload
    with (
        _private_directory(work) as endpoint,
        zmq.Context() as context,
        context.socket(zmq.PUB) as sock,
    ):
        _zmq_options(sock, work.size)
        sock.bind(endpoint)
        conn.send(READY)
        while not conn.poll(PROBE_INTERVAL):
            sock.send(PROBE)

        _expect(conn, GO)
        send = sock.send
        cpu_started = cpu_clock()
        started = clock()
        for _ in range(work.messages):
            send(payload)

        finished = clock()
        cpu = cpu_clock() - cpu_started
        markers = 0
        deadline = finished + work.start_timeout + work.idle_timeout
        while True:
            send(END_PAYLOAD)
            markers += 1
            if conn.poll(MARKER_INTERVAL) or clock() > deadline:
                break

        _expect(conn, STOP)

    return PublisherReport(work.messages, started, finished, markers, cpu=cpu)


async def _zmq_publish_async(work: Workload, conn: WorkerPipe) -> PublisherReport:
    import zmq
    import zmq.asyncio

    payload = work.payload
    with (
        _private_directory(work) as endpoint,
        zmq.asyncio.Context() as context,
        context.socket(zmq.PUB) as sock,
    ):
        _zmq_options(sock, work.size)
        sock.bind(endpoint)
        conn.send(READY)
        while not conn.poll(0):
            await sock.send(PROBE)
            await asyncio.sleep(PROBE_INTERVAL)

        _expect(conn, GO)
        send = sock.send
        cpu_started = cpu_clock()
        started = clock()
        for _ in range(work.messages):
            await send(payload)

        finished = clock()
        cpu = cpu_clock() - cpu_started
        markers = 0
        deadline = finished + work.start_timeout + work.idle_timeout
        while True:
            await send(END_PAYLOAD)
            markers += 1
            await asyncio.sleep(MARKER_INTERVAL)
            if conn.poll(0) or clock() > deadline:
                break

        _expect(conn, STOP)

    return PublisherReport(work.messages, started, finished, markers, cpu=cpu)


def _zmq_subscriber(work: Workload, conn: WorkerPipe) -> SubscriberReport:
    if work.loop == "asyncio":
        return run_on_loop("asyncio", _zmq_subscribe_async(work, conn))

    import zmq

    _, endpoint = ipc_address(work)
    with zmq.Context() as context, context.socket(zmq.SUB) as sock:
        _zmq_options(sock, work.size)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.setsockopt(zmq.RCVTIMEO, int(work.start_timeout * 1000))
        sock.connect(endpoint)
        recv = _receiver(sock, work.size)
        try:
            recv()  # a probe: the subscription has reached the publisher
        except zmq.Again:
            raise RuntimeError(f"no probe from the publisher in {work.start_timeout} s") from None

        conn.send(READY)
        size = work.size
        read, expected = READER, READER(work.payload)
        received = corrupt = 0
        first = last = cpu_first = 0.0
        end_seen = False
        while True:
            try:
                data = recv()
            except zmq.Again:  # RCVTIMEO expired
                break

            if len(data) != size:
                if data == END_PAYLOAD:
                    end_seen = True
                    break

                continue  # a probe sent before GO

            corrupt += read(data) != expected  # every byte
            last = clock()
            if not received:
                first = last
                cpu_first = cpu_clock()
                sock.setsockopt(zmq.RCVTIMEO, int(work.idle_timeout * 1000))

            received += 1

        cpu = cpu_clock() - cpu_first if received else 0.0

    counters = {"reader": reader_counters(size, corrupt), "hwm": high_water_mark(size)}
    return SubscriberReport(received, first, last, end_seen, -1, counters=counters, cpu=cpu)


async def _zmq_subscribe_async(work: Workload, conn: WorkerPipe) -> SubscriberReport:
    import zmq
    import zmq.asyncio

    _, endpoint = ipc_address(work)
    with zmq.asyncio.Context() as context, context.socket(zmq.SUB) as sock:
        _zmq_options(sock, work.size)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        # zmq.asyncio honours RCVTIMEO: an awaited recv raises zmq.Again after it.
        sock.setsockopt(zmq.RCVTIMEO, int(work.start_timeout * 1000))
        sock.connect(endpoint)
        recv = _async_receiver(sock, work.size)
        try:
            await recv()  # a probe: the subscription has reached the publisher
        except zmq.Again:
            raise RuntimeError(f"no probe from the publisher in {work.start_timeout} s") from None

        conn.send(READY)
        size = work.size
        read, expected = READER, READER(work.payload)
        received = corrupt = 0
        first = last = cpu_first = 0.0
        end_seen = False
        while True:
            try:
                data = await recv()
            except zmq.Again:  # RCVTIMEO expired
                break

            if len(data) != size:
                if data == END_PAYLOAD:
                    end_seen = True
                    break

                continue  # a probe sent before GO

            corrupt += read(data) != expected  # every byte
            last = clock()
            if not received:
                first = last
                cpu_first = cpu_clock()
                sock.setsockopt(zmq.RCVTIMEO, int(work.idle_timeout * 1000))

            received += 1

        cpu = cpu_clock() - cpu_first if received else 0.0

    counters = {"reader": reader_counters(size, corrupt), "hwm": high_water_mark(size)}
    return SubscriberReport(received, first, last, end_seen, -1, counters=counters, cpu=cpu)


def _receiver(sock: zmq.Socket[Any], size: int) -> Callable[[], bytes | memoryview]:
    """Return ``sock.recv``, or for payloads of :data:`COPY_THRESHOLD` or more a function
    that receives a frame without a copy and returns its buffer."""
    if size < COPY_THRESHOLD:
        return sock.recv

    def receive() -> memoryview:
        return sock.recv(copy=False).buffer

    return receive


def _async_receiver(
    sock: zmq.asyncio.Socket, size: int
) -> Callable[[], Awaitable[bytes | memoryview]]:
    """:func:`_receiver` for a ``zmq.asyncio`` socket."""
    if size < COPY_THRESHOLD:
        return sock.recv

    async def receive() -> memoryview:
        frame = await sock.recv(copy=False)
        return frame.buffer

    return receive


# LCM


def _lcm_publisher(work: Workload, conn: WorkerPipe) -> PublisherReport:
    import lcm

    bus = lcm.LCM(lcm_url(work))
    payload = work.payload
    publish = bus.publish
    conn.send(READY)
    _expect(conn, GO)
    cpu_started = cpu_clock()
    started = clock()
    for _ in range(work.messages):
        publish(TOPIC, payload)

    finished = clock()
    cpu = cpu_clock() - cpu_started
    markers = 0
    deadline = finished + work.start_timeout + work.idle_timeout
    while True:
        publish(TOPIC, END_PAYLOAD)
        markers += 1
        if conn.poll(MARKER_INTERVAL) or clock() > deadline:
            break

    _expect(conn, STOP)
    return PublisherReport(work.messages, started, finished, markers, cpu=cpu)


class _LCMCounter:
    """The subscriber's handler: reads and counts data messages, times the first and last."""

    def __init__(self, size: int, expected: int) -> None:
        self.size = size
        self.expected = expected
        self.received = self.corrupt = 0
        self.first = self.last = self.cpu_first = 0.0
        self.end_seen = False

    def handle(self, channel: str, data: bytes) -> None:
        if len(data) != self.size:
            self.end_seen = True
            return

        self.corrupt += READER(data) != self.expected  # every byte
        self.last = clock()
        if not self.received:
            self.first = self.last
            self.cpu_first = cpu_clock()

        self.received += 1


def _lcm_subscriber(work: Workload, conn: WorkerPipe) -> SubscriberReport:
    import lcm

    bus = lcm.LCM(lcm_url(work))
    counter = _LCMCounter(work.size, READER(work.payload))
    subscription = bus.subscribe(TOPIC, counter.handle)
    conn.send(READY)
    handle_timeout = bus.handle_timeout
    timeout = int(work.start_timeout * 1000)
    while not counter.end_seen:
        if handle_timeout(timeout) == 0:
            break  # nothing for `timeout` ms

        if counter.received:
            timeout = int(work.idle_timeout * 1000)

    cpu = cpu_clock() - counter.cpu_first if counter.received else 0.0
    bus.unsubscribe(subscription)
    counters = {"reader": reader_counters(work.size, counter.corrupt)}
    return SubscriberReport(
        counter.received,
        counter.first,
        counter.last,
        counter.end_seen,
        -1,
        counters=counters,
        cpu=cpu,
    )
