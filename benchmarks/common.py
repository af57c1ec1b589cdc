"""What every benchmark process shares: the workload, the wire bytes, the reports.

The run of one case, whatever implements it (raw sockets or asyncbus)::

    runner                        publisher                     subscriber (x fan-out)
      | start processes  ------->   open socket / bus             open socket / bus, subscribe
      |  <------------------------  READY                         READY  ----------------------->
      | (all READY)  GO  -------->  send N data messages
      |                             send end markers, one per     count data messages, time the
      |                             MARKER_INTERVAL, until STOP   first and the last; stop at an
      |  <------------------------------------------------------  end marker or after idle_timeout
      | (all reported) STOP ----->  stop; report                  SubscriberReport
      |  <------------------------  PublisherReport

Nobody sleeps to wait for anybody: readiness and the end go through pipes, and the
only timeouts are bounds (``start_timeout``, ``idle_timeout``) for when a message
never comes because multicast lost it. On the AF_UNIX transports an asyncbus
publisher reports READY only once every subscriber's subscription has reached it
(``topic.wait_subscribers``), and the raw publisher connects to the subscribers'
sockets, which they bound before READY.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import os
import socket
import struct
import time
import traceback
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Mapping
    from multiprocessing.connection import Connection

    # A worker's end of its pipe: it sends READY and reports, receives GO and STOP.
    WorkerPipe: TypeAlias = Connection[object, str]

__all__ = [
    "END_PAYLOAD",
    "GO",
    "LC02_HEADER",
    "LC02_MAGIC",
    "MARKER_INTERVAL",
    "MAX_SIZE",
    "MIN_SIZE",
    "PAYLOAD_SIZE",
    "RAW_UNIX_PREFIX",
    "READER",
    "READER_NAME",
    "READY",
    "RECV_BUF_SIZE",
    "SIZES",
    "STOP",
    "TOPIC",
    "PublisherReport",
    "SubscriberReport",
    "WorkerFailed",
    "Workload",
    "clock",
    "cpu_clock",
    "lc02_datagram",
    "raw_unix_address",
    "reader_counters",
    "receive_command",
    "receive_timeout",
    "report_failure",
    "run_worker",
]

TOPIC: Final = "asyncbus.bench"  # the LCM channel of every data message
END_PAYLOAD: Final = b"end"  # payload of the end marker; its length tells it apart
LC02_MAGIC: Final = 0x4C433032  # b"LC02": LCM UDP multicast protocol, short message
LC02_HEADER: Final = struct.Struct(">II")  # magic, sequence number (LCM: big-endian u32s)

# Payload sizes of the throughput and peers scenarios: a small message, where the
# per-message overhead dominates (the first version's only size), then 1 KiB and 16 KiB.
PAYLOAD_SIZE: Final = 64
SIZES: Final = (PAYLOAD_SIZE, 1 << 10, 16 << 10)
# The largest payload that is one LC02 datagram (and one frame on the AF_UNIX buses):
# LCM_SHORT_MESSAGE_MAX_SIZE (65,499, channel + NUL + payload) minus the channel and
# NUL; 8 + 65,499 = 65,507, the IPv4 UDP payload limit. Larger payloads fragment on
# udpm, which the raw loop cannot do: the large scenario is for them.
MAX_SIZE: Final = 65_499 - len(TOPIC) - 1
# Data is told from the end marker (3 bytes) and pyzmq's probe (5 bytes) by its length;
# 8 bytes is also the header that the large scenario's loan_header mode writes.
MIN_SIZE: Final = 8

# What every subscriber of every case does with every data payload: zlib.crc32, a C
# function that touches every byte (the fastest such reader measured on the 2-core
# development machine; see benchmarks.large), compared with the expected checksum.
# The same call in every system, so that sizes and systems compare.
READER: Final[Callable[[Any], int]] = zlib.crc32
READER_NAME: Final = "zlib.crc32"

# The publisher repeats the end marker this often (seconds) until every subscriber
# has reported: a marker lost to a full receive queue is replaced 2 ms later, instead
# of every lost marker costing a whole idle timeout.
MARKER_INTERVAL: Final = 0.002

# The receive buffer every subscriber asks for: asyncbus's default (udpm
# ``recv_buf_size``), passed explicitly in the URL; the raw subscribers ask for the
# same, so that both absorb the same burst before the kernel drops.
RECV_BUF_SIZE: Final = 8 * 2**20

_TIMEVAL: Final = struct.Struct("@ll")  # struct timeval for SO_RCVTIMEO (Linux, LP64)

# Where the raw AF_UNIX subscribers bind, in Linux's abstract namespace (no file to
# clean up): "\0asyncbus-bench/<run name>/<subscriber index>". Not asyncbus's own
# prefix ("\0asyncbus/"), so that no bus ever lists these sockets as members.
RAW_UNIX_PREFIX: Final = b"\0asyncbus-bench/"

# Control messages on the runner's pipes.
READY: Final = "ready"
GO: Final = "go"
STOP: Final = "stop"

# CLOCK_MONOTONIC on Linux: one clock for the whole host, so timestamps taken in
# different processes can be compared (total rate of a fan-out).
clock: Final[Callable[[], float]] = time.monotonic

# CPU time of this process (user + system): what a message costs, whatever else the
# machine does meanwhile (wall-clock rates on a shared machine are noisy).
cpu_clock: Final[Callable[[], float]] = time.process_time


@dataclass(frozen=True)
class Workload:
    """One run of one case, as every process of it sees it.

    :param group: the IPv4 multicast group, private to this run (``udpm``).
    :param port: the UDP port, private to this run (``udpm``).
    :param messages: how many data messages the publisher sends.
    :param size: the payload size of a data message, in bytes.
    :param idle_timeout: a subscriber stops after this many seconds without a message.
    :param start_timeout: ... or this many before the first one.
    :param recv_buf_size: the receive buffer (``SO_RCVBUF``) every subscriber asks for
        (``udpm``).
    :param loop: ``"asyncio"`` or ``"uvloop"`` for asyncbus; ignored by the raw loop.
    :param profile: a directory: each worker writes its cProfile statistics there.
    :param case: the case's name, for the profile's file name.
    :param transport: ``"udpm"``, ``"unix"`` (AF_UNIX SOCK_DGRAM) or ``"seqpacket"``.
    :param name: the AF_UNIX bus name, private to this run (abstract namespace).
    :param fanout: how many subscribers the run has.
    :param index: which subscriber this process is (0 to ``fanout - 1``; the runner
        sets it for each process).
    :param policy: the overflow policy of every asyncbus subscription.
    :param slow_work: seconds the last subscriber spends on each message (0: none is
        slow); it blocks its event loop meanwhile, as a synchronous handler would.
    """

    group: str
    port: int
    messages: int
    size: int
    idle_timeout: float
    start_timeout: float
    recv_buf_size: int = RECV_BUF_SIZE
    loop: str = "asyncio"
    profile: str | None = None
    case: str = ""
    transport: str = "udpm"
    name: str = ""
    fanout: int = 1
    index: int = 0
    policy: str = "drop_oldest"
    slow_work: float = 0.0

    @property
    def url(self) -> str:
        """The asyncbus URL of this run: loopback multicast (``ttl=0``), or an abstract bus."""
        if self.transport == "udpm":
            return f"udpm://{self.group}:{self.port}?ttl=0&recv_buf_size={self.recv_buf_size}"

        return f"{self.transport}:@{self.name}"

    @property
    def payload(self) -> bytes:
        """The payload of every data message."""
        return bytes(range(256)) * (self.size // 256) + bytes(range(self.size % 256))

    @property
    def slow(self) -> bool:
        """Whether this subscriber is the slow one (the last, when ``slow_work`` is set)."""
        return self.slow_work > 0 and self.index == self.fanout - 1


@dataclass(frozen=True)
class SubscriberReport:
    """What one subscriber saw.

    :param received: data messages received.
    :param first: ``clock()`` when the first one arrived (0.0 if none did).
    :param last: ``clock()`` when the last one arrived (0.0 if none did).
    :param end_seen: whether an end marker arrived (``False``: the idle timeout ended it).
    :param kernel_drops: datagrams the kernel dropped because the receive queue was full.
    :param counters: everything else the implementation counts (asyncbus statistics).
    :param end_seq: the sequence number of the end marker that ended the run (-1: none,
        or the raw loop). On the AF_UNIX transports every publisher-to-subscriber link
        numbers its messages from 0, so it is how many messages the publisher sent *or
        dropped* for this subscriber before that marker.
    :param slow: whether this was the slow subscriber.
    :param cpu: CPU seconds this process used from the first message to the end.
    :param last_seq: the sequence number of the last data message received (-1: none,
        or not recorded: only the slow subscriber records it). With ``drop_oldest`` the
        newest messages survive (it is ``messages - 1``); ``drop_newest`` takes a new
        message only when the reader has freed room, so it is older.
    """

    received: int
    first: float
    last: float
    end_seen: bool
    kernel_drops: int
    counters: Mapping[str, object] = field(default_factory=dict)
    end_seq: int = -1
    slow: bool = False
    cpu: float = 0.0
    last_seq: int = -1

    @property
    def rate(self) -> float:
        """Delivered messages per second, from the first to the last received."""
        span = self.last - self.first
        return (self.received - 1) / span if self.received > 1 and span > 0 else 0.0


@dataclass(frozen=True)
class PublisherReport:
    """What the publisher did.

    :param sent: data messages sent.
    :param started: ``clock()`` before the first one.
    :param finished: ``clock()`` after the last one.
    :param end_markers: how many end markers it sent before STOP.
    :param counters: everything else the implementation counts (asyncbus statistics).
    :param cpu: CPU seconds this process used from ``started`` to ``finished``.
    """

    sent: int
    started: float
    finished: float
    end_markers: int
    counters: Mapping[str, object] = field(default_factory=dict)
    cpu: float = 0.0

    @property
    def rate(self) -> float:
        """Messages sent per second."""
        span = self.finished - self.started
        return self.sent / span if span > 0 else 0.0


@dataclass(frozen=True)
class WorkerFailed:
    """A worker raised; ``details`` is its traceback."""

    details: str


def lc02_datagram(seq: int, channel: str, payload: bytes) -> bytes:
    """Return one LCM short-message datagram, the bytes asyncbus puts on the wire.

    :param seq: the sequence number.
    :param channel: the channel (topic) name.
    :param payload: the message.
    :return: ``magic | seq | channel | NUL | payload``.
    """
    return LC02_HEADER.pack(LC02_MAGIC, seq) + channel.encode() + b"\0" + payload


def reader_counters(size: int, corrupt: int, checked: bool = True) -> dict[str, object]:
    """Return what a subscriber reports about its reads (``counters["reader"]``).

    :param size: the payload size every data message had.
    :param corrupt: payloads whose checksum was not the expected one.
    :param checked: whether the checksums were compared (``False``: read only).
    :return: ``{"size": ..., "corrupt": ..., "checked": ...}``.
    """
    return {"size": size, "corrupt": corrupt, "checked": checked}


def raw_unix_address(work: Workload, index: int) -> bytes:
    """Return where raw AF_UNIX subscriber ``index`` of this run binds (abstract, Linux).

    :param work: the run.
    :param index: the subscriber.
    :return: a ``sun_path`` starting with NUL.
    """
    return RAW_UNIX_PREFIX + f"{work.name}/{index}".encode()


def receive_timeout(sock: socket.socket, seconds: float) -> None:
    """Make a blocking ``recv`` on ``sock`` raise ``BlockingIOError`` after ``seconds``.

    A kernel timeout (``SO_RCVTIMEO``) rather than ``settimeout()``: ``settimeout``
    makes Python ``poll()`` before every ``recv()``, which would double the syscalls.

    :param sock: a blocking socket.
    :param seconds: the timeout.
    """
    whole = int(seconds)
    sock.setsockopt(
        socket.SOL_SOCKET,
        socket.SO_RCVTIMEO,
        _TIMEVAL.pack(whole, int((seconds - whole) * 1_000_000)),
    )


def run_worker(
    role: str,
    body: Callable[[Workload, WorkerPipe], object],
    work: Workload,
    conn: WorkerPipe,
) -> None:
    """Run a worker's ``body`` and send the runner what it returns, or its traceback.

    With ``work.profile`` set, the body runs under cProfile and the statistics go to
    ``<profile>/<case>-<role>-<pid>.prof`` (read them with ``python -m pstats``).

    :param role: ``"publisher"`` or ``"subscriber"``.
    :param body: the worker.
    :param work: the run.
    :param conn: the pipe to the runner.
    """
    profiler = cProfile.Profile() if work.profile else None
    try:
        result = body(work, conn) if profiler is None else profiler.runcall(body, work, conn)
    except Exception:
        report_failure(conn)
        raise

    if profiler is not None and work.profile:
        name = f"{work.case or 'case'}-{role}-{os.getpid()}.prof"
        profiler.dump_stats(os.path.join(work.profile, name))

    conn.send(result)


def report_failure(conn: WorkerPipe) -> None:
    """Send the exception being handled to the runner, which raises it with the traceback.

    :param conn: the worker's end of its pipe to the runner.
    """
    # OSError: the runner is gone; the traceback still goes to stderr.
    with contextlib.suppress(OSError):
        conn.send(WorkerFailed(traceback.format_exc()))


_T = TypeVar("_T")
LOOPS: Final = ("asyncio", "uvloop")


def run_on_loop(loop: str, main: Coroutine[Any, Any, _T]) -> _T:
    """Run ``main`` to completion on a new ``asyncio`` or ``uvloop`` event loop.

    :param loop: ``"asyncio"`` or ``"uvloop"``.
    :param main: the coroutine.
    :return: what it returns.
    :raises ValueError: for another loop name.
    """
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop == "uvloop":
        import uvloop  # only where it is used: the raw workers never pay for the import

        factory = uvloop.new_event_loop
    elif loop != "asyncio":
        raise ValueError(f"unknown event loop {loop!r}; expected one of {LOOPS}")

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


async def receive_command(conn: WorkerPipe, patience: float | None = None) -> str | None:
    """Return the runner's next command, or ``None`` after ``patience`` seconds.

    Waits on the pipe through the event loop, so a bus (or anything else on the loop)
    keeps running meanwhile.
    """
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(conn.fileno(), readable.set)
    try:
        async with asyncio.timeout(patience):
            await readable.wait()
    except TimeoutError:
        return None
    finally:
        loop.remove_reader(conn.fileno())

    return conn.recv()
