"""The large-payload scenario: 1 MiB and 64 MiB messages, every byte read by every subscriber.

Two ways to move a large payload from one process to N others, with the same
payload, the same reader and the same accounting:

* **asyncbus** on a ``unix:`` or ``seqpacket:`` bus, on asyncio or uvloop. A payload
  larger than one frame travels in a sealed memfd segment from the publisher's pool;
  each subscriber maps it read-only (``msg.data`` is a memoryview of the shared
  memory), reads every byte, and calls ``msg.release()`` so that the publisher can
  reuse the segment. Three publisher modes (:data:`MODES`):

  - ``publish``: ``await topic.publish(payload)`` with ``bytes``: the bus copies the
    payload into a segment once (for all subscribers);
  - ``loan_copy``: ``async with bus.loan(size) as loan: loan.data[:] = payload``, then
    ``await topic.publish(loan)``: the same one copy, written by the user;
  - ``loan_header``: the same loan, but only an 8-byte header (the message number) is
    written: the zero-copy path, as for a producer that fills the memory in place
    (a camera, a decoder). The rest of the segment holds whatever it held (zeros in
    a new segment, an old payload in a reused one), so its checksum is not checked.

* **stream** (the baseline, no framework): one blocking AF_UNIX ``SOCK_STREAM``
  connection per subscriber. The publisher sends an 8-byte length prefix, then the
  payload in :data:`STREAM_CHUNK` pieces to each subscriber in turn (``sendall`` of
  a memoryview slice: every subscriber reads while the publisher writes); each
  subscriber ``recv_into``-s a preallocated buffer until the whole payload arrived.
  Every byte is copied twice per subscriber (into the kernel, out of it).

* **pyzmq** ``PUB``/``SUB`` over ``ipc://``, sync and ``zmq.asyncio``: the workers of
  :mod:`benchmarks.peers` (they run in this scenario's cases with its sizes and idle
  timeout), with high-water marks of ``max(2, 1 GiB // size)`` messages so that a
  socket never queues more than about 1 GiB, and ``copy=False`` receives.

Every subscriber runs :data:`READER` (``zlib.crc32``) over each whole payload, the
same C function on both systems, and compares it with the checksum of the payload
it expects (except in ``loan_header`` mode): a payload overwritten while a subscriber
still read it would show as ``corrupt``. ``zlib.crc32`` was the fastest reader that
touches every byte measured on the 2-core development machine (CPU time, one core):
about 4.2 GB/s on 1 MiB and 3.7 GB/s on 64 MiB, against 3.5 for ``zlib.adler32`` and
0.9 for ``hashlib.blake2b``; :func:`calibrate` measures it again on each run.

The runner's protocol is the one of :mod:`benchmarks.common`: READY, GO, N data
messages, one end marker (both transports are lossless: asyncbus subscriptions have
the ``block`` policy), STOP. Like :mod:`benchmarks.bus`, only the public ``asyncbus``
API is used; the stream workers do not import asyncbus at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import mmap
import resource
import socket
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from .common import (
    END_PAYLOAD,
    GO,
    READER,
    READER_NAME,
    READY,
    STOP,
    TOPIC,
    PublisherReport,
    SubscriberReport,
    Workload,
    clock,
    cpu_clock,
    raw_unix_address,
    reader_counters,
    receive_timeout,
    run_on_loop,
    run_worker,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import asyncbus

    from .common import WorkerPipe

__all__ = [
    "IDLE_TIMEOUT",
    "MODES",
    "READER",
    "READER_NAME",
    "SIZES",
    "STREAM_CHUNK",
    "LargeWorkload",
    "calibrate",
    "run_publisher",
    "run_subscriber",
    "size_label",
    "workload",
]

SIZES: Final = (1 << 20, 64 << 20)  # 1 MiB and 64 MiB (issue 4)
MODES: Final = ("publish", "loan_copy", "loan_header")
# The stream publisher's piece: every subscriber gets 1 MiB in turn, so that all
# of them read while the publisher writes. Whole 64 MiB payloads to one subscriber
# after the other left three of four idle (1.04 against 0.89 GB/s in total at 1->4,
# one measurement on a busy 2-core machine); a 4 MiB SO_SNDBUF was not faster.
STREAM_CHUNK: Final = 1 << 20
LENGTH: Final = struct.Struct("<Q")  # the stream's length prefix; 0 is the end marker
HEADER: Final = struct.Struct("<Q")  # what loan_header writes: the message number
# A subscriber gives up after this long without a message. Both transports are
# lossless, so it only bounds a broken run; a 64 MiB message to 4 subscribers on a
# busy 2-core machine can take a second.
IDLE_TIMEOUT: Final = 30.0


@dataclass(frozen=True)
class LargeWorkload(Workload):
    """A :class:`~benchmarks.common.Workload` with the publisher's mode.

    :param mode: one of :data:`MODES` (asyncbus); ignored by the stream baseline
        (``transport="stream"``).
    """

    mode: str = "publish"

    @property
    def checked(self) -> bool:
        """Whether subscribers can compare each payload's checksum with the expected one."""
        return self.transport == "stream" or self.mode != "loan_header"


def workload(base: Workload, mode: str | None) -> LargeWorkload:
    """Return ``base`` with the publisher's ``mode``.

    :param base: the run's settings (``size`` is the payload size).
    :param mode: one of :data:`MODES`, or ``None`` for the stream baseline.
    :return: the large workload.
    """
    return LargeWorkload(**vars(base), mode=mode or "publish")


def size_label(size: int) -> str:
    """Return ``1MiB``, ``64MiB``, ``512KiB`` or ``1000B``: a size for names and tables.

    :param size: bytes.
    :return: the shortest exact binary unit.
    """
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"

    return f"{size}B"


def calibrate(sizes: Sequence[int], seconds: float = 0.1) -> dict[str, dict[str, float]]:
    """Measure the reader and a plain copy on one core of this process, for each size.

    The ceilings of the scenario: a subscriber cannot read faster than the reader,
    and a copy (what the publisher does per payload, and the stream does twice per
    subscriber) costs about what ``memcpy`` costs: ``copy_gbps`` into memory used
    before, ``fresh_copy_gbps`` into new shared memory (an anonymous shared mapping,
    shmem like a memfd, made and unmapped for each copy: every page faults once, as
    in a new segment). CPU time, so other processes on the machine matter less.

    :param sizes: payload sizes in bytes.
    :param seconds: CPU time to spend on each measurement (at least one pass).
    :return: ``{size label: {"reader_gbps": ..., "copy_gbps": ..., "fresh_copy_gbps":
        ...}}``, GB = 10**9 bytes.
    """
    result: dict[str, dict[str, float]] = {}
    for size in sizes:
        source = memoryview(_payload(size))
        target = memoryview(bytearray(size))
        result[size_label(size)] = {
            "reader_gbps": _speed(functools.partial(READER, source), size, seconds),
            "copy_gbps": _speed(functools.partial(_copy, source, target), size, seconds),
            "fresh_copy_gbps": _speed(functools.partial(_copy_fresh, source), size, seconds),
        }

    return result


def _speed(work: Callable[[], object], size: int, seconds: float) -> float:
    work()  # warm: pages faulted in, caches filled
    passes = 0
    started = cpu_clock()
    while (spent := cpu_clock() - started) < seconds or not passes:
        work()
        passes += 1

    return passes * size / spent / 1e9 if spent > 0 else 0.0


def _copy(source: memoryview, target: memoryview) -> None:
    target[:] = source


def _copy_fresh(source: memoryview) -> None:
    with mmap.mmap(-1, len(source)) as target:  # MAP_SHARED | MAP_ANONYMOUS: shmem
        target[:] = source


def _payload(size: int) -> bytes:
    """The bytes of ``Workload(size=size).payload``."""
    return bytes(range(256)) * (size // 256) + bytes(range(size % 256))


def run_subscriber(work: Workload, conn: WorkerPipe) -> None:
    """Process entry point: receive and read until the end marker; report.

    :param work: a :class:`LargeWorkload` (``work.transport``: ``stream``, ``unix`` or
        ``seqpacket``).
    :param conn: the pipe to the runner.
    """
    if work.transport == "stream":
        run_worker("subscriber", _stream_subscriber, work, conn)
    else:
        run_worker("subscriber", _bus_subscriber, work, conn)


def run_publisher(work: Workload, conn: WorkerPipe) -> None:
    """Process entry point: publish on GO, one end marker, wait for STOP; report.

    :param work: a :class:`LargeWorkload` (``work.transport``: ``stream``, ``unix`` or
        ``seqpacket``).
    :param conn: the pipe to the runner.
    """
    if work.transport == "stream":
        run_worker("publisher", _stream_publisher, work, conn)
    else:
        run_worker("publisher", _bus_publisher, work, conn)


# -- the stream baseline ----------------------------------------------------------------


def _stream_subscriber(work: Workload, conn: WorkerPipe) -> SubscriberReport:
    assert isinstance(work, LargeWorkload)
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        listener.bind(raw_unix_address(work, work.index))
        listener.listen(1)
        conn.send(READY)
        listener.settimeout(work.start_timeout)  # for accept() only
        try:
            accepted, _ = listener.accept()  # blocking, without a timeout (CPython)
        except TimeoutError:
            return SubscriberReport(0, 0.0, 0.0, False, 0)

        sock = stack.enter_context(accepted)
        return _stream_receive(sock, work)


def _stream_receive(sock: socket.socket, work: LargeWorkload) -> SubscriberReport:
    receive_timeout(sock, work.start_timeout)
    size = work.size
    expected = READER(work.payload)
    buffer = memoryview(bytearray(size))
    prefix = memoryview(bytearray(LENGTH.size))
    recv_into, read = sock.recv_into, READER
    received = corrupt = 0
    first = last = cpu_first = 0.0
    usage_first = None
    end_seen = False
    try:
        while True:
            if not _receive_exactly(recv_into, prefix, LENGTH.size):
                break  # the publisher went away

            (length,) = LENGTH.unpack(prefix)
            if length != size:
                end_seen = length == 0
                break

            if not received:
                cpu_first, usage_first = cpu_clock(), _usage()
                receive_timeout(sock, work.idle_timeout)

            if not _receive_exactly(recv_into, buffer, size):
                break

            corrupt += read(buffer) != expected
            last = clock()
            if not received:
                first = last

            received += 1
    except BlockingIOError:  # EAGAIN: SO_RCVTIMEO expired
        pass

    cpu = cpu_clock() - cpu_first if received else 0.0
    counters = {
        "reader": reader_counters(size, corrupt),
        "process": _usage_since(usage_first),
    }
    return SubscriberReport(received, first, last, end_seen, 0, counters=counters, cpu=cpu)


def _receive_exactly(recv_into: Callable[[memoryview], int], buffer: memoryview, size: int) -> bool:
    """Fill ``buffer[:size]``; return ``False`` at the end of the stream."""
    done = 0
    while done < size:
        count = recv_into(buffer[done:size])
        if not count:
            return False

        done += count

    return True


def _stream_publisher(work: Workload, conn: WorkerPipe) -> PublisherReport:
    with contextlib.ExitStack() as stack:
        conn.send(READY)
        if (command := conn.recv()) != GO:
            raise RuntimeError(f"expected {GO!r} from the runner, got {command!r}")

        # The subscribers listen since before they said READY.
        sendalls = []
        for index in range(work.fanout):
            sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            sock.connect(raw_unix_address(work, index))
            sendalls.append(sock.sendall)

        payload = memoryview(work.payload)
        pieces = [
            payload[start : start + STREAM_CHUNK] for start in range(0, work.size, STREAM_CHUNK)
        ]
        prefix = LENGTH.pack(work.size)
        usage = _usage()
        cpu_started = cpu_clock()
        started = clock()
        for _ in range(work.messages):
            for sendall in sendalls:
                sendall(prefix)

            for piece in pieces:
                for sendall in sendalls:
                    sendall(piece)

        finished = clock()
        cpu = cpu_clock() - cpu_started
        process = _usage_since(usage)
        for sendall in sendalls:
            sendall(LENGTH.pack(0))

        if (command := conn.recv()) != STOP:
            raise RuntimeError(f"expected {STOP!r} from the runner, got {command!r}")

    counters = {"process": process}
    return PublisherReport(work.messages, started, finished, 1, counters=counters, cpu=cpu)


# -- asyncbus ---------------------------------------------------------------------------


def _bus_subscriber(work: Workload, conn: WorkerPipe) -> SubscriberReport:
    assert isinstance(work, LargeWorkload)
    return run_on_loop(work.loop, _subscribe(work, conn))


def _bus_publisher(work: Workload, conn: WorkerPipe) -> PublisherReport:
    assert isinstance(work, LargeWorkload)
    return run_on_loop(work.loop, _publish(work, conn))


async def _subscribe(work: LargeWorkload, conn: WorkerPipe) -> SubscriberReport:
    import asyncbus

    async with (
        asyncbus.connect(work.url) as bus,
        bus.subscribe(TOPIC, policy=work.policy) as subscription,
    ):
        conn.send(READY)
        size = work.size
        expected = READER(work.payload) if work.checked else None
        read = READER
        loop = asyncio.get_running_loop()
        received = corrupt = 0
        first = last = cpu_first = 0.0
        usage_first = None
        end_seen = False
        end_seq = -1
        try:
            async with asyncio.timeout(work.start_timeout) as deadline:
                async for message in subscription:
                    data = message.data
                    if len(data) != size:
                        end_seen, end_seq = True, message.seq
                        message.release()
                        break

                    if not received:
                        cpu_first, usage_first = cpu_clock(), _usage()

                    checksum = read(data)  # every byte, straight from the shared memory
                    message.release()  # the publisher may reuse the segment
                    last = clock()
                    if not received:
                        first = last

                    received += 1
                    corrupt += expected is not None and checksum != expected
                    deadline.reschedule(loop.time() + work.idle_timeout)
        except TimeoutError:
            pass  # nothing arrived for idle_timeout seconds: the report shows the loss

        cpu = cpu_clock() - cpu_first if received else 0.0
        statistics = bus.statistics()
        counters = {
            "bus": _counters(statistics),
            "subscription": _counters(subscription.statistics()),
            "reader": reader_counters(size, corrupt, checked=expected is not None),
            "process": _usage_since(usage_first),
        }

    return SubscriberReport(
        received,
        first,
        last,
        end_seen,
        statistics.kernel_drops,
        counters=counters,
        end_seq=end_seq,
        cpu=cpu,
    )


async def _publish(work: LargeWorkload, conn: WorkerPipe) -> PublisherReport:
    import asyncbus

    async with asyncbus.connect(work.url) as bus:
        topic = bus.topic(TOPIC)
        async with asyncio.timeout(work.start_timeout):
            await topic.wait_subscribers(work.fanout)

        conn.send(READY)
        if (command := await _receive_command(conn)) != GO:
            raise RuntimeError(f"expected {GO!r} from the runner, got {command!r}")

        usage = _usage()
        cpu_started = cpu_clock()
        started = clock()
        await _send(bus, topic, work)
        finished = clock()
        cpu = cpu_clock() - cpu_started
        process = _usage_since(usage)
        after_data = _counters(bus.statistics())
        # One end marker: the AF_UNIX buses lose nothing with `block` subscriptions,
        # and it queues behind the data on every link.
        await topic.publish(END_PAYLOAD)
        if (command := await _receive_command(conn)) != STOP:
            raise RuntimeError(f"expected {STOP!r} from the runner, got {command!r}")

        counters = {
            "bus": _counters(bus.statistics()),
            "bus_after_data": after_data,
            "process": process,
        }

    return PublisherReport(work.messages, started, finished, 1, counters=counters, cpu=cpu)


async def _send(bus: asyncbus.Bus, topic: asyncbus.Topic, work: LargeWorkload) -> None:
    """The measured loop: ``work.messages`` payloads in ``work.mode``."""
    publish, size = topic.publish, work.size
    if work.mode == "publish":
        payload = work.payload
        for _ in range(work.messages):
            await publish(payload)  # one copy, into a segment
    elif work.mode == "loan_copy":
        source = memoryview(work.payload)
        for _ in range(work.messages):
            async with bus.loan(size) as loan:
                loan.data[:] = source  # the same one copy, written by the user
                await publish(loan)
    elif work.mode == "loan_header":
        pack_into = HEADER.pack_into
        for number in range(work.messages):
            async with bus.loan(size) as loan:
                pack_into(loan.data, 0, number)  # 8 bytes; the rest is not written
                await publish(loan)
    else:
        raise ValueError(f"unknown publisher mode {work.mode!r}; expected one of {MODES}")


async def _receive_command(conn: WorkerPipe) -> object:
    """Return the runner's next command; the bus keeps running meanwhile."""
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(conn.fileno(), readable.set)
    try:
        await readable.wait()
    finally:
        loop.remove_reader(conn.fileno())

    return conn.recv()


def _usage() -> resource.struct_rusage:
    return resource.getrusage(resource.RUSAGE_SELF)


def _usage_since(before: resource.struct_rusage | None) -> dict[str, int]:
    """Page faults and context switches of this process since ``before`` (none: zeros).

    Minor faults are where fresh shared memory shows: each first touch of a page
    (writing a new segment, reading a freshly mapped one) is one, or one per
    ``fault_around_bytes`` (64 KiB) for reads of pages that already exist.
    """
    if before is None:
        return {
            "minor_faults": 0,
            "major_faults": 0,
            "voluntary_switches": 0,
            "involuntary_switches": 0,
        }

    now = _usage()
    return {
        "minor_faults": now.ru_minflt - before.ru_minflt,
        "major_faults": now.ru_majflt - before.ru_majflt,
        "voluntary_switches": now.ru_nvcsw - before.ru_nvcsw,
        "involuntary_switches": now.ru_nivcsw - before.ru_nivcsw,
    }


def _counters(statistics: object) -> dict[str, object]:
    """Return a statistics dataclass's numbers (and enums, as their values) for the JSON."""
    if not dataclasses.is_dataclass(statistics) or isinstance(statistics, type):
        return {"repr": repr(statistics)}

    counters: dict[str, object] = {}
    for field in dataclasses.fields(statistics):
        value = getattr(statistics, field.name)
        if isinstance(value, enum.Enum):
            value = value.value

        if value is None or isinstance(value, (bool, int, float, str)):
            counters[field.name] = value

    return counters
