"""File descriptors and large payloads on the unix buses, end to end.

What is checked here, with real processes and real sockets:

* fds of each kind (regular file, pipe, socket, memfd) travel both ways between
  processes, and the receiver owns non-inheritable duplicates (`TestBetweenProcesses`);
* no fd is left open after any way a message can end: cancelled or failed
  publishes, a dead peer, overflow, a closed subscription, nobody subscribed,
  garbage collection (`TestFDCounts`; `fds_unchanged` checks this process's fds
  and `asyncbus.fd_budget` around each scenario, conftest checks the fds again
  after every test, and the child members report theirs);
* a 64 MiB payload reaches four processes intact, from bytes and from a loan,
  and the publisher reuses its segment once they release it (`TestLargePayloads`);
* receivers cannot write the shared memory by any route, and a segment is not
  reused while anyone still reads it (`TestSharedMemoryIsReadOnly`);
* forged and hostile input from a peer speaking the wire format by hand
  (`WirePeer`) is counted and its fds closed (`TestForeignInput`);
* loans (`TestLoans`), ``receive_own`` (`TestReceiveOwn`) and udpm (`TestUDPM`).

Each test that takes ``transport`` runs on a private bus of each kind in
`FD_KINDS`, made by the conformance suite's fixture. Most scenarios start from
`pair`: a publisher and a subscriber that already know each other. The child
members are ``tests/peers/fd_member.py``; every wait is bounded by `TIMEOUT`
and nothing sleeps to wait.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import ctypes
import errno
import fcntl
import gc
import json
import mmap
import os
import re
import secrets
import signal
import socket
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import uvloop

import asyncbus
from tests._bus_support import TIMEOUT, Child, free_url, lc02, receive, receive_many, wait_until
from tests.conformance import conftest as conformance
from tests.conformance._support import KINDS, Transport
from tests.conftest import _open_fds, require
from tests.peers.fd_member import digest, is_open, pattern

MIB = 1 << 20
CONTENT = b"known content, 32 bytes long...\n"
F_SEAL_FUTURE_WRITE = 0x0010  # linux/fcntl.h; Python's fcntl lacks it
FALLOC_FL_PUNCH_HOLE = 0x02 | 0x01  # with FALLOC_FL_KEEP_SIZE, as the kernel requires
SCM_MAX_FD = 253  # include/net/scm.h
SEALED = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE

# -- the buses ------------------------------------------------------------------------

# The conformance suite's fixture: a private bus of one kind, removed after the test.
# Bound to its name here, where pytest looks for fixtures, and parametrized below.
transport = conformance.transport

FD_KINDS = tuple(
    kind for kind in KINDS if kind.id in {"unix-abstract", "seqpacket-abstract", "unix-directory"}
)
"""The kinds each test runs on: both unix schemes, both namespaces."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # The conformance conftest parametrizes ``transport`` only for its own tests.
    if "transport" in metafunc.fixturenames:
        ids = [kind.id for kind in FD_KINDS]
        metafunc.parametrize("transport", FD_KINDS, ids=ids, indirect=True)


@pytest.fixture(autouse=True)
def _linux() -> None:
    require(sys.platform.startswith("linux"), "fd passing with sealed memfds is Linux only")


# -- fds of this process ---------------------------------------------------------


@contextlib.contextmanager
def closing_fds(*fds: int) -> Iterator[tuple[int, ...]]:
    """Close ``fds`` after the block, whatever happens.

    :return: (yields) ``fds``.
    """
    try:
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def pipe() -> contextlib.AbstractContextManager[tuple[int, ...]]:
    """A new pipe for a block: ``with pipe() as (read_end, write_end):``."""
    return closing_fds(*os.pipe())


@contextlib.contextmanager
def memfd(content: bytes, seals: int = 0) -> Iterator[int]:
    """A memfd for a block, holding ``content``, with ``seals`` added."""
    fd = os.memfd_create("fdtest", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    with closing_fds(fd):
        os.write(fd, content)
        if seals:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)

        yield fd


@contextlib.contextmanager
def regular_file(content: bytes) -> Iterator[int]:
    """An unnamed regular file for a block, holding ``content``; yields its fd."""
    with tempfile.TemporaryFile() as file:
        file.write(content)
        file.flush()
        yield file.fileno()


@dataclass(frozen=True)
class Snapshot:
    """What this process had when a block started (see `fds_unchanged`).

    :ivar fds: its open fds and what each refers to.
    :ivar held: `asyncbus.fd_budget.held`.
    """

    fds: dict[int, str]
    held: int


@contextlib.contextmanager
def fds_unchanged(what: str) -> Iterator[Snapshot]:
    """Fail if a block leaves fds open or `asyncbus.fd_budget` holding more or less.

    Checked when the block ends without an exception (one would say more).

    :param what: the scenario, for the messages.
    :return: (yields) the snapshot the end is compared with, for checks in between.
    """
    before = Snapshot(_open_fds(), asyncbus.fd_budget.held)
    yield before
    gc.collect()
    extra = {fd: target for fd, target in _open_fds().items() if before.fds.get(fd) != target}
    assert not extra, f"{what}: fds left open: {extra}"
    held = asyncbus.fd_budget.held
    assert held == before.held, f"{what}: the fd budget holds {held}, not {before.held}"


def closed_fd() -> int:
    """Return an fd number that is not open (a pipe's, just closed)."""
    with pipe() as (_, write_end):
        return write_end


@contextlib.contextmanager
def raises_ebadf() -> Iterator[None]:
    """Expect the block to raise `OSError` with ``EBADF``."""
    with pytest.raises(OSError, match="Bad file descriptor") as bad:
        yield

    assert bad.value.errno == errno.EBADF


@contextlib.contextmanager
def budget_limit(limit: int) -> Iterator[None]:
    """Set `asyncbus.fd_budget`'s limit for a block, and restore it whatever happens."""
    saved = asyncbus.fd_budget.limit
    asyncbus.fd_budget.limit = limit
    try:
        yield
    finally:
        asyncbus.fd_budget.limit = saved


# -- addresses of memory, for mprotect --------------------------------------------


class _PyBuffer(ctypes.Structure):
    _fields_ = [  # ctypes wants a list
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_API = ctypes.PyDLL(None)  # our own handle: argtypes set here do not touch ctypes.pythonapi
_API.PyObject_GetBuffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_API.PyBuffer_Release.argtypes = [ctypes.POINTER(_PyBuffer)]
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_LIBC.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def buffer_address(buffer: object) -> int:
    """Return where a (read-only) buffer's memory starts."""
    view = _PyBuffer()
    if _API.PyObject_GetBuffer(buffer, ctypes.byref(view), 0) != 0:  # PyBUF_SIMPLE
        raise TypeError("not a buffer")

    try:
        assert view.buf is not None
        return int(view.buf)
    finally:
        _API.PyBuffer_Release(ctypes.byref(view))


def mprotect_errno(address: int, size: int) -> int:
    """Try to make memory writable; return the errno (0 if it worked: then undo it)."""
    if _LIBC.mprotect(address, size, mmap.PROT_READ | mmap.PROT_WRITE) == 0:
        _LIBC.mprotect(address, size, mmap.PROT_READ)
        return 0

    return ctypes.get_errno()


def punch_hole_errno(fd: int) -> int:
    """Try to zero a memfd's first page (PUNCH_HOLE); return the errno (0 if it worked)."""
    if _LIBC.fallocate(fd, FALLOC_FL_PUNCH_HOLE, 0, 4096) == 0:
        return 0

    return ctypes.get_errno()


def assert_refused(route: str, attempt: Callable[[], object]) -> None:
    """Fail unless ``attempt`` raises `PermissionError`.

    :param route: the way it tries to write, for the message.
    :param attempt: the try.
    """
    try:
        attempt()
    except PermissionError:
        return

    pytest.fail(f"a receiver could write the shared memory: {route}")


# -- a bus member in another process ---------------------------------------------


class FDMember(Child):
    """A bus member in a separate process (``tests/peers/fd_member.py``), driven by commands.

    It runs on the same kind of loop as the test.
    """

    module = "tests.peers.fd_member"
    stdin = asyncio.subprocess.PIPE

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.ready: dict[str, Any] = {}

    def arguments(self) -> list[str]:
        """Return the member's arguments, with the test's kind of loop first."""
        loop = "uvloop" if isinstance(asyncio.get_running_loop(), uvloop.Loop) else "asyncio"
        return ["--loop", loop, *self.args]

    @property
    def address(self) -> str:
        """The member's ``Sender.address``."""
        return str(self.ready["address"])

    async def start(self) -> dict[str, Any]:
        """Wait until the member's bus is open.

        :return: the ``ready`` event.
        """
        self.ready = await self.event("ready")
        return self.ready

    async def send(self, do: str, **fields: Any) -> None:
        """Send a command without waiting for its answer (see `answer`)."""
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(json.dumps({"do": do, **fields}).encode() + b"\n")
        await self._process.stdin.drain()

    async def answer(self, within: float = TIMEOUT) -> dict[str, Any]:
        """Return the answer to the last command sent; fail if it raised."""
        reply = await self.event("reply", within)
        assert "error" not in reply, f"fd_member {self.args}: {reply['error']}\n" + "\n".join(
            self.output
        )
        return reply

    async def call(self, do: str, **fields: Any) -> dict[str, Any]:
        """Run one command and return its answer."""
        await self.send(do, **fields)
        return await self.answer()

    async def close(self) -> dict[str, Any]:
        """Close the member's bus; return its final answer (``open_fds``) once it exited."""
        reply = await self.call("close")
        assert await self.exit_code() == 0, "\n".join(self.output)
        return reply

    async def kill(self) -> None:
        """SIGKILL the process and wait until it is gone."""
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        async with asyncio.timeout(TIMEOUT):
            await self._process.wait()


@contextlib.asynccontextmanager
async def members(url: str, count: int) -> AsyncIterator[list[FDMember]]:
    """Start ``count`` child members on ``url`` and wait until their buses are open."""
    async with contextlib.AsyncExitStack() as stack:
        started = [await stack.enter_async_context(FDMember(url)) for _ in range(count)]
        await asyncio.gather(*(member.start() for member in started))
        yield started


@contextlib.asynccontextmanager
async def child_not_reading(
    transport: Transport, peer_queue: int
) -> AsyncIterator[tuple[asyncbus.Bus, FDMember]]:
    """Open a bus and a child member subscribed to ``"t"`` that reads nothing until told.

    The child's subscription has the block policy and room for one message, and
    the bus queues ``peer_queue`` frames for it: soon a publish has to wait.
    """
    url = transport.url(peer_queue=peer_queue, stall_timeout=60)
    async with asyncbus.connect(url) as bus, members(url, 1) as (child,):
        await child.call("subscribe", topic="t", policy="block", maxsize=1)
        await transport.subscribed(bus, "t")
        yield bus, child


# -- two members in this process --------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """A publisher and a subscriber on one bus, each knowing the other's subscriptions.

    :ivar publisher: subscribed to ``"ack"`` (`acks`), for `released`.
    :ivar subscriber: subscribed to the topics given to `pair` (`subs`), then to
        ``"fence"`` with the block policy, for `fence`.
    """

    publisher: asyncbus.Bus
    subscriber: asyncbus.Bus
    acks: asyncbus.Subscription
    subs: list[asyncbus.Subscription]
    fences: asyncbus.Subscription

    @property
    def sub(self) -> asyncbus.Subscription:
        """The subscriber's first subscription."""
        return self.subs[0]

    async def fence(self) -> None:
        """Return once the subscriber has read every message the publisher sent so far."""
        await self.publisher.publish("fence", b"")
        await receive(self.fences)

    async def released(self) -> None:
        """Return once the publisher has read every RELEASE the subscriber sent so far.

        RELEASE goes out (batched) on the loop turn after a release; a message
        published behind it on the same link arrives after it.
        """
        await asyncio.sleep(0)  # one loop turn, for the batched RELEASE: not a wait
        await self.subscriber.publish("ack", b"ack")
        await receive(self.acks)


@contextlib.asynccontextmanager
async def pair(
    transport: Transport,
    *topics: str | re.Pattern[str],
    publisher_url: str | None = None,
    **subscribe: Any,
) -> AsyncIterator[Pair]:
    """Open a `Pair` and wait until each member knows the other's subscriptions.

    :param topics: what the subscriber subscribes to (``"t"`` if none), with
        the options ``subscribe``; the publisher waits for the first, if a string.
    :param publisher_url: the publisher's URL (default: ``transport.url()``).
    """
    topics = topics or ("t",)
    async with contextlib.AsyncExitStack() as stack:
        publisher = await stack.enter_async_context(
            asyncbus.connect(publisher_url or transport.url())
        )
        subscriber = await stack.enter_async_context(asyncbus.connect(transport.url()))
        acks = await stack.enter_async_context(publisher.subscribe("ack"))
        subs = [
            await stack.enter_async_context(subscriber.subscribe(topic, **subscribe))
            for topic in topics
        ]
        fences = await stack.enter_async_context(subscriber.subscribe("fence", policy="block"))
        if isinstance(topics[0], str):
            await transport.subscribed(publisher, topics[0])

        await transport.subscribed(publisher, "fence")
        await transport.subscribed(subscriber, "ack")
        yield Pair(publisher, subscriber, acks, subs, fences)


async def publish_payload(bus: asyncbus.Bus, topic: str, data: bytes, *, loan: bool) -> None:
    """Publish ``data`` from bytes, or (``loan``) written into a `Bus.loan`."""
    if not loan:
        await bus.publish(topic, data)
        return

    async with bus.loan(len(data)) as lent:
        lent.data[:] = data
        await bus.publish(topic, lent)


async def expect_payload(sub: asyncbus.Subscription, data: bytes) -> None:
    """Receive one message, check it maps ``data`` (shared memory), and release it."""
    with await receive(sub) as msg:
        assert isinstance(msg.data, memoryview)
        assert digest(msg.data) == digest(data)


def assert_segments(bus: asyncbus.Bus, created: int, reused: int, when: str = "") -> None:
    """Check how many segments ``bus`` made and how many times it reused one."""
    stats = bus.statistics()
    assert (stats.segments_created, stats.segments_reused) == (created, reused), f"{when} {stats}"


async def publish_until_blocked(
    bus: asyncbus.Bus, fds: list[int]
) -> tuple[int, asyncio.Future[None]]:
    """Publish fd messages on ``"t"`` until one has not gone out within half a second.

    :return: how many went out, and the publish that waits (for a subscriber that
        does not read).
    """
    for published in range(5000):
        publishing = asyncio.ensure_future(bus.publish("t", b"fds", fds=fds))
        done, _ = await asyncio.wait({publishing}, timeout=0.5)
        if not done:
            return published, publishing

        publishing.result()

    pytest.fail("publish() never blocked on a block subscriber that does not read")


# -- a peer that speaks the wire format by hand ------------------------------------

HELLO = struct.Struct(">4sBBH")  # magic, version, flags, address length
SEGMENT = struct.Struct(">4sIIQ")  # magic, seq, loan, size
RELEASE = struct.Struct(">4sH")  # magic, count
LC03 = struct.Struct(">4sIIIHH")  # magic, seq, size, offset, index, count
FLAG_REPLY, FLAG_FDS = 0x01, 0x02


def hello_frame(address: bytes, *, reply: bool, fds: bool) -> bytes:
    """Build a HELLO frame."""
    flags = (FLAG_REPLY if reply else 0) | (FLAG_FDS if fds else 0)
    return HELLO.pack(b"ABHL", 1, flags, len(address)) + address


def subscribe_frame(*topics: str) -> bytes:
    """Build a SUBSCRIBE frame: each topic exact, with the drop_oldest policy."""
    entries = b"".join(struct.pack(">BBH", 1, 0, len(t.encode())) + t.encode() for t in topics)
    return b"ABSB" + struct.pack(">H", len(topics)) + entries


def segment_frame(seq: int, loan: int, size: int, topic: str) -> bytes:
    """Build a SEGMENT frame (to send with a memfd)."""
    return SEGMENT.pack(b"ABSG", seq, loan, size) + topic.encode() + b"\0"


def release_frame(*loans: int) -> bytes:
    """Build a RELEASE frame."""
    return RELEASE.pack(b"ABRL", len(loans)) + struct.pack(f">{len(loans)}I", *loans)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def wait_ready(sockets: list[socket.socket], *, writing: bool = False) -> None:
    """Return once one of ``sockets`` can be read (``writing``: written)."""
    loop = asyncio.get_running_loop()
    watch, unwatch = (
        (loop.add_writer, loop.remove_writer) if writing else (loop.add_reader, loop.remove_reader)
    )
    ready = loop.create_future()
    for sock in sockets:
        watch(sock.fileno(), _wake, ready)

    try:
        await ready
    finally:
        for sock in sockets:
            unwatch(sock.fileno())


class WirePeer:
    """A bus member made of raw sockets: it builds and reads every frame by hand.

    It joins one member (``HELLO`` with REPLY, with or without the FDS flag),
    and can then subscribe, send any frame with any fds, and read what the
    member sends it. Its own address is outside the bus's namespace, so no
    other member finds it.

    :ivar seq: the number of its next message frame (``LC02``/``SEGMENT``).
    :ivar released: loans named in the RELEASE frames it received so far.
    """

    def __init__(self, transport: Transport, member: str, *, fds: bool = True) -> None:
        self.kind = socket.SOCK_DGRAM if transport.scheme == "unix" else socket.SOCK_SEQPACKET
        self.address = f"\0fdtest-wire/{secrets.token_hex(6)}".encode()
        self.member = transport.socket_address(member)
        self.fds = fds
        self.seq = 0
        self.released: set[int] = set()
        self._sockets: list[socket.socket] = []
        self._inbound: list[socket.socket] = []  # where frames from the member arrive
        self._listener: socket.socket | None = None
        self._link: socket.socket | None = None

    def _socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, self.kind)
        self._sockets.append(sock)
        return sock

    async def __aenter__(self) -> WirePeer:
        try:
            if self.kind == socket.SOCK_DGRAM:
                inbox = self._socket()
                inbox.bind(self.address)
                inbox.setblocking(False)
                self._inbound.append(inbox)
                link = self._socket()
                # As the bus does: with SO_PASSCRED the kernel autobinds the link, so
                # the member can tell our frames from an unnamed sender's.
                link.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            else:
                self._listener = self._socket()
                self._listener.bind(self.address)
                self._listener.listen(8)
                self._listener.setblocking(False)
                link = self._socket()

            link.connect(self.member)  # AF_UNIX connects at once (or fails)
            link.setblocking(False)
            self._link = link
            await self.send(hello_frame(self.address, reply=True, fds=self.fds))
            await self.receive_where(lambda frame: frame[:4] == b"ABHL")
        except BaseException:
            self.close()
            raise

        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with contextlib.suppress(OSError):
            assert self._link is not None
            self._link.send(b"ABBY")

        self.close()

    def close(self) -> None:
        """Close every socket."""
        for sock in self._sockets:
            sock.close()

    async def send(self, frame: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
        """Send one frame to the member, with ``fds`` attached (SCM_RIGHTS)."""
        link = self._link
        assert link is not None
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        async with asyncio.timeout(TIMEOUT):
            while True:
                try:
                    link.sendmsg([frame], ancillary if fds else [])
                    return
                except BlockingIOError:
                    pass

                # The member (in this loop) has to read first: wait until it did.
                await wait_ready([link], writing=True)

    async def send_message(
        self, topic: str, data: bytes, fds: list[int] | tuple[int, ...] = ()
    ) -> None:
        """Send an ``LC02`` message with the next sequence number."""
        await self.send(lc02(self.seq, topic, data), fds)
        self.seq += 1

    async def send_segment(self, loan: int, size: int, topic: str, fds: list[int]) -> None:
        """Send a SEGMENT frame with the next sequence number; ``fds[0]`` is its memfd."""
        await self.send(segment_frame(self.seq, loan, size, topic), fds)
        self.seq += 1

    async def subscribe(self, *topics: str) -> None:
        """Replace this peer's subscriptions."""
        await self.send(subscribe_frame(*topics))

    def _accept(self) -> None:
        listener = self._listener
        while listener is not None:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                return

            conn.setblocking(False)
            self._sockets.append(conn)
            self._inbound.append(conn)

    def _read_one(self) -> tuple[bytes, list[int]] | None:
        for sock in list(self._inbound):
            try:
                frame, ancillary, flags, _ = sock.recvmsg(
                    1 << 17, socket.CMSG_SPACE(SCM_MAX_FD * 4), socket.MSG_CMSG_CLOEXEC
                )
            except BlockingIOError:
                continue

            fds: list[int] = []
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(array.array("i", data[: len(data) - len(data) % 4]))

            if not frame and not fds and self.kind == socket.SOCK_SEQPACKET:
                self._inbound.remove(sock)  # end of file: the member closed this link
                continue

            assert not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC), "a frame was cut short"
            if frame[:4] == b"ABRL":
                count = RELEASE.unpack_from(frame)[1]
                self.released.update(struct.unpack_from(f">{count}I", frame, RELEASE.size))

            return frame, fds

        return None

    async def receive(self) -> tuple[bytes, list[int]]:
        """Return the next frame from the member and the fds that came with it (now ours)."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                self._accept()
                got = self._read_one()
                if got is not None:
                    return got

                await wait_ready([*self._inbound, *([self._listener] if self._listener else [])])

    async def receive_where(self, wanted: Callable[[bytes], bool]) -> tuple[bytes, list[int]]:
        """Return the next frame for which ``wanted`` holds; close the fds of those skipped."""
        while True:
            frame, fds = await self.receive()
            if wanted(frame):
                return frame, fds

            for fd in fds:
                os.close(fd)

    async def receive_fragments(self, topic: str) -> tuple[int, bytes]:
        """Receive one message sent as ``LC03`` fragments; return its number and payload."""
        body = bytearray()
        fragments, count, number = 0, None, None
        while count is None or fragments < count:
            frame, fds = await self.receive_where(is_message(topic))
            assert frame[:4] == b"LC03" and not fds, f"not a fragment: {frame[:40]!r} {fds}"
            seq, total, offset, index, count = LC03.unpack_from(frame)[1:]
            assert index == fragments and number in (None, seq), "fragments out of order"
            number = seq
            body.extend(bytes(total - len(body)))
            chunk = frame[LC03.size :]
            if index == 0:
                chunk = chunk[chunk.index(b"\0") + 1 :]

            body[offset : offset + len(chunk)] = chunk
            fragments += 1

        assert number is not None
        return number, bytes(body)

    async def wait_released(self, *loans: int) -> None:
        """Return once RELEASE frames named all ``loans``."""
        while not set(loans) <= self.released:
            await self.receive_where(lambda frame: frame[:4] == b"ABRL")


def is_message(topic: str) -> Callable[[bytes], bool]:
    """Return a test for an ``LC02``, ``LC03`` (first fragment) or SEGMENT frame on ``topic``."""
    name = topic.encode() + b"\0"

    def wanted(frame: bytes) -> bool:
        if frame[:4] == b"LC02":
            return frame[8 : 8 + len(name)] == name

        if frame[:4] == b"ABSG":
            return frame[SEGMENT.size : SEGMENT.size + len(name)] == name

        return frame[:4] == b"LC03"

    return wanted


@contextlib.asynccontextmanager
async def wired(
    transport: Transport, **options: Any
) -> AsyncIterator[tuple[asyncbus.Bus, asyncbus.Subscription, WirePeer]]:
    """Open a bus (with ``options``) subscribed to ``"t"``, and a `WirePeer` joined to it."""
    async with asyncbus.connect(transport.url(), **options) as bus, bus.subscribe("t") as sub:
        assert bus.sender is not None
        async with WirePeer(transport, bus.sender.address) as wire:
            yield bus, sub, wire


# -- 1. between processes ------------------------------------------------------------


class TestBetweenProcesses:
    """fds of every kind, both ways, between this process and a child member."""

    async def test_each_kind_of_fd_reaches_a_child(self, transport: Transport) -> None:
        url = transport.url()
        async with asyncbus.connect(url) as bus, members(url, 1) as (child,):
            await child.call("subscribe", topic="fds")
            await transport.subscribed(bus, "fds")
            child_before = await child.call("stats")
            ours, theirs = socket.socketpair()
            with (
                ours,
                theirs,
                regular_file(CONTENT) as file,
                pipe() as (read_end, write_end),
                memfd(CONTENT) as shared,
            ):
                ours.setblocking(False)
                passed = [file, write_end, theirs.fileno(), shared]
                await bus.topic("fds").publish(b"four fds", fds=passed)
                assert all(is_open(fd) for fd in passed), "the publisher keeps its own fds"
                uses = [
                    ["pread", 100],
                    ["write", b"via pipe".hex()],
                    ["write", b"via socket".hex()],
                ]
                reply = await child.call(
                    "receive", topic="fds", take=True, uses=[*uses, ["pread", 100]]
                )
                assert reply["fds"] == 4
                assert reply["kinds"] == ["file", "fifo", "socket", "file"]  # a memfd is a file
                assert reply["inheritable"] == [False] * 4
                assert reply["results"] == [CONTENT.hex(), 8, 10, CONTENT.hex()]
                assert reply["left_after_take"] == 0, "take_fds() leaves the message none"
                assert reply["taken_open"], "release() closed fds the caller had taken"
                assert os.read(read_end, 100) == b"via pipe"
                assert ours.recv(100) == b"via socket"

                # Not taken: release() closes them.
                await bus.topic("fds").publish(b"again", fds=passed)
                reply = await child.call("receive", topic="fds")
                assert reply["fds"] == 4
                assert reply["closed_by_release"], "release() left untaken fds open"

            child_after = await child.call("stats")
            assert child_after["open_fds"] == child_before["open_fds"]
            assert child_after["budget_held"] == 0
            await child.close()

    async def test_a_child_passes_each_kind_of_fd(self, transport: Transport) -> None:
        url = transport.url()
        async with (
            asyncbus.connect(url) as bus,
            bus.subscribe("back") as sub,
            members(url, 1) as (child,),
        ):
            await child.call("wait_subscribers", topic="back")
            with fds_unchanged("after taking and closing a child's fds") as start:
                kinds = ["pipe", "memfd", "file", "socket"]
                await child.call("publish", topic="back", fds=kinds, content=CONTENT.hex())
                msg = await receive(sub)
                assert list(map(is_open, msg.fds)) == [True] * 4
                assert asyncbus.fd_budget.held == start.held + 4, "received fds count in the budget"
                assert [os.get_inheritable(fd) for fd in msg.fds] == [False] * 4

                fds = msg.take_fds()
                assert not msg.fds and msg.take_fds() == [], "the fds were taken"
                assert asyncbus.fd_budget.held == start.held, (
                    "taken fds are the caller's, not counted"
                )
                msg.release()
                assert all(is_open(fd) for fd in fds), "release() closed taken fds"
                with closing_fds(*fds) as (pipe_end, shared, file, sock):
                    assert os.read(pipe_end, 100) == CONTENT and os.read(pipe_end, 100) == b"", (
                        "pipe"
                    )
                    assert os.pread(shared, 100, 0) == CONTENT, "memfd"
                    assert os.pread(file, 100, 0) == CONTENT, "regular file"
                    with socket.socket(fileno=os.dup(sock)) as received:
                        assert received.recv(100) == CONTENT and received.recv(100) == b"", "socket"

            await child.close()


# -- 2. fd counts whatever happens ------------------------------------------------


class TestFDCounts:
    """Every way a message with fds can end closes them: nothing is left open."""

    async def test_publish_errors_open_nothing(self, transport: Transport) -> None:
        async with pair(transport) as p:
            with pipe() as (read_end, write_end):
                with fds_unchanged("after failed publishes"):
                    with raises_ebadf():
                        await p.publisher.publish("t", b"x", fds=[write_end, closed_fd()])
                    with pytest.raises(ValueError, match="252"):
                        await p.publisher.publish("t", b"x", fds=[write_end] * 253)
                    with pytest.raises(ValueError, match="not negative"):
                        await p.publisher.publish("t", b"x", fds=[-1])
                    with pytest.raises(TypeError):
                        await p.publisher.publish("t", b"x", fds=[True])  # a bool is no fd
                    with (
                        budget_limit(asyncbus.fd_budget.held + 1),
                        pytest.raises(asyncbus.FDBudgetError),
                    ):
                        await p.publisher.publish("t", b"x", fds=[write_end, read_end])

                # Nothing of those reached the subscriber, and the bus still works.
                await p.publisher.publish("t", b"fine", fds=[write_end])
                msg = await receive(p.sub)
                assert msg.data == b"fine" and len(msg.fds) == 1
                msg.release()
                assert is_open(write_end) and is_open(read_end)
                stats = p.subscriber.statistics()
                assert (stats.gaps, stats.fd_drops) == (0, 0)

    async def test_a_bad_fd_is_refused_with_nobody_subscribed(self, transport: Transport) -> None:
        async with asyncbus.connect(transport.url()) as bus:
            with raises_ebadf():
                await bus.publish("nobody", b"x", fds=[closed_fd()])

    async def test_252_fds_with_a_large_payload(self, transport: Transport) -> None:
        # segment_cache=0: the publisher closes a segment once it is released, so
        # this process's fds (publisher and subscriber) come back to where they were.
        async with pair(transport, publisher_url=transport.url(segment_cache=0)) as p:
            with fds_unchanged("after 252 fds"):
                data = pattern(MIB, 7)
                with pipe() as (read_end, write_end):
                    # 252 fds and the segment's memfd: SCM_MAX_FD (253) in one frame.
                    await p.publisher.publish("t", data, fds=[write_end] * 252)
                    with await receive(p.sub) as msg:
                        assert isinstance(msg.data, memoryview)
                        assert digest(msg.data) == digest(data)
                        assert len(set(msg.fds)) == 252
                        os.write(msg.fds[251], b"!")
                        assert os.read(read_end, 1) == b"!"

                await p.released()

    async def test_cancelled_blocked_publish(self, transport: Transport) -> None:
        async with child_not_reading(transport, peer_queue=2) as (bus, child):
            with (
                pipe() as (_, write_end),
                memfd(CONTENT) as shared,
                fds_unchanged("after a cancelled publish and a drain"),
            ):
                published, publishing = await publish_until_blocked(bus, [write_end, shared])
                publishing.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await publishing  # cancelled while it waited for the child

                assert is_open(write_end) and is_open(shared), "cancelling closed the caller's fds"
                assert bus.statistics().send_drops == 0

                # The child drains: everything queued arrives with its fds, and then
                # nothing is left open here.
                await child.send("drain", topic="t")
                async with asyncio.timeout(TIMEOUT):
                    await bus.publish("t", b"end")
                reply = await child.answer()
                assert published <= reply["count"] <= published + 1
                assert reply["fds"] == [2] * reply["count"]

            stats = await child.call("stats")
            assert (stats["gaps"], stats["budget_held"]) == (0, 0)
            await child.close()

    async def test_peer_killed_with_fd_messages_queued(self, transport: Transport) -> None:
        async with child_not_reading(transport, peer_queue=4) as (bus, child):
            with (
                pipe() as (_, write_end),
                fds_unchanged("after the peer died with fd messages queued"),
            ):
                # It waits for the child: fd messages are queued for it.
                _, publishing = await publish_until_blocked(bus, [write_end] * 3)
                await child.kill()
                async with asyncio.timeout(TIMEOUT):
                    await publishing  # the dead peer no longer holds it up

                await wait_until(lambda: bus.statistics().peers_lost == 1)  # no event tells
                assert bus.statistics().peers == 0
                assert is_open(write_end)

    @pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
    async def test_overflow_closes_dropped_fds(self, transport: Transport, policy: str) -> None:
        async with pair(transport, policy=policy, maxsize=2) as p:
            with (
                pipe() as (read_end, write_end),
                fds_unchanged(f"after {policy} dropped fd messages") as start,
            ):
                for index in range(5):
                    await p.publisher.publish("t", bytes([index]), fds=[write_end, read_end])

                await p.fence()  # all five were delivered (or dropped) before it
                stats = p.subscriber.statistics()
                assert stats.overflow_drops == 3 and p.sub.statistics().dropped == 3
                assert asyncbus.fd_budget.held == start.held + 4, (
                    "only the two kept messages hold fds"
                )
                assert len(_open_fds()) == len(start.fds) + 4, (
                    "the dropped messages' fds are closed"
                )

                kept = await receive_many(p.sub, 2)
                expected = [b"\3", b"\4"] if policy == "drop_oldest" else [b"\0", b"\1"]
                assert [msg.data for msg in kept] == expected
                for msg in kept:
                    assert len(msg.fds) == 2
                    msg.release()

    async def test_closed_subscription_closes_queued_fds(self, transport: Transport) -> None:
        async with pair(transport, publisher_url=transport.url(segment_cache=0)) as p:
            with (
                pipe() as (_, write_end),
                fds_unchanged("after closing a subscription with fd messages queued") as start,
            ):
                for index in range(3):
                    await p.publisher.publish("t", bytes([index]), fds=[write_end])
                await p.publisher.publish("t", pattern(MIB, 1))  # and a mapped segment

                await p.fence()
                assert p.sub.statistics().queued == 4
                assert asyncbus.fd_budget.held == start.held + 4
                p.sub.close()
                assert p.sub.statistics().dropped == 4
                await p.released()

    async def test_unmatched_fd_messages_are_closed(self, transport: Transport) -> None:
        # A regex subscription is announced as "every topic" and filtered here,
        # so the publisher sends "other" and this member matches nothing.
        url = transport.url(segment_cache=0)
        async with pair(transport, re.compile("wanted"), publisher_url=url) as p:
            await transport.subscribed(p.publisher, "other")
            with (
                pipe() as (read_end, write_end),
                fds_unchanged("after messages nobody here wanted"),
            ):
                await p.publisher.publish("other", b"x", fds=[write_end, read_end])
                await p.publisher.publish("other", pattern(MIB, 2), fds=[write_end])
                await p.fence()
                assert p.subscriber.statistics().unmatched == 2
                await p.released()

    async def test_garbage_collected_message_closes_fds_and_releases(
        self, transport: Transport
    ) -> None:
        async with pair(transport) as p:
            # A first payload makes the publisher's segment (kept in its pool, with fds).
            await p.publisher.publish("t", pattern(MIB, 3))
            (await receive(p.sub)).release()
            await p.released()
            with pipe() as (read_end, write_end):
                with fds_unchanged("after a message was garbage-collected") as start:
                    await p.publisher.publish("t", pattern(MIB, 3), fds=[write_end, read_end])
                    msg: asyncbus.Message | None = await receive(p.sub)
                    assert msg is not None and len(msg.fds) == 2
                    assert asyncbus.fd_budget.held == start.held + 3  # two fds and the mapping
                    msg = None  # dropped without release()
                    gc.collect()

                # Its segment was released too: the next payload reuses it.
                await p.released()
                await p.publisher.publish("t", pattern(MIB, 4))
                await expect_payload(p.sub, pattern(MIB, 4))
                assert_segments(p.publisher, 1, 2)

    async def test_two_local_subscriptions_get_their_own_fds(self, transport: Transport) -> None:
        async with pair(transport, "t", "t*") as p:
            first, second = p.subs
            with (
                pipe() as (read_end, write_end),
                fds_unchanged("after two local subscriptions released"),
            ):
                await p.publisher.publish("t", b"x", fds=[write_end])
                one, two = await receive(first), await receive(second)
                assert len(one.fds) == len(two.fds) == 1
                assert one.fds[0] != two.fds[0] != write_end
                assert os.fstat(one.fds[0]).st_ino == os.fstat(two.fds[0]).st_ino
                one.release()
                os.write(two.fds[0], b"2")  # the other's fd stays open
                assert os.read(read_end, 1) == b"2"
                two.release()

    async def test_a_duplicate_over_the_fd_budget_is_an_fd_drop(self, transport: Transport) -> None:
        async with pair(transport, "t", "t*") as p:
            first, second = p.subs
            with pipe() as (read_end, write_end), budget_limit(asyncbus.fd_budget.held + 2):
                await p.publisher.publish("t", b"x", fds=[write_end, read_end])
                (await receive(first)).release()  # the second got none: no room for copies

            assert second.statistics().queued == 0
            stats = p.subscriber.statistics()
            assert (stats.fd_drops, stats.overflow_drops) == (1, 0), stats

    @pytest.mark.parametrize(
        "topics", [["t"], ["t", "t*"]], ids=["alone", "while-a-sibling-holds-it"]
    )
    async def test_released_message_data_is_unusable(
        self, transport: Transport, topics: list[str]
    ) -> None:
        async with pair(transport, *topics) as p:
            await p.publisher.publish("t", pattern(MIB, 5))
            msg, *siblings = [await receive(sub) for sub in p.subs]
            try:
                assert isinstance(msg.data, memoryview)
                msg.release()
                with pytest.raises(ValueError, match="released"):
                    bytes(msg.data)
                msg.release()  # again: nothing happens
            finally:
                for sibling in siblings:
                    sibling.release()


# -- 3. large payloads to several processes ------------------------------------------


class TestLargePayloads:
    """A 64 MiB payload in shared memory, to four processes at once."""

    async def test_64_mib_to_four_children(self, transport: Transport) -> None:
        size = 64 * MIB
        url = transport.url()
        async with (
            asyncbus.connect(url) as bus,
            bus.subscribe("ack", maxsize=64) as acks,
            members(url, 4) as children,
        ):
            await asyncio.gather(*(child.call("subscribe", topic="big") for child in children))
            await transport.subscribed(bus, "big", 4)
            for index, how in enumerate(["bytes", "loan", "bytes"]):
                data = pattern(size, index % 2)
                receiving = [
                    asyncio.ensure_future(child.call("receive", topic="big", ack="ack"))
                    for child in children
                ]
                await publish_payload(bus, "big", data, loan=how == "loan")
                replies = await asyncio.gather(*receiving)
                for reply in replies:
                    assert (reply["size"], reply["view"], reply["readonly"]) == (size, True, True)
                    assert reply["hash"] == digest(data), f"message {index} ({how}) is corrupt"

                for _ in children:
                    await receive(acks)  # each child's RELEASE arrived before its ack

                assert_segments(bus, 1, index, f"after {index + 1} payloads, released each time:")

            finals = await asyncio.gather(*(child.close() for child in children))
            assert [final["budget_held"] for final in finals] == [0] * 4


# -- 4. receivers cannot modify ---------------------------------------------------------


class TestSharedMemoryIsReadOnly:
    """No receiver can write what the publisher shares, and nothing changes while it reads."""

    async def test_no_route_to_write(self, transport: Transport) -> None:
        url = transport.url()
        size = MIB
        first = pattern(size, 11)
        async with (
            asyncbus.connect(url) as bus,
            bus.subscribe("big") as sub,
            members(url, 1) as (child,),
        ):
            await child.call("subscribe", topic="fence")
            async with WirePeer(transport, child.address) as wire:
                await wire.subscribe("big")
                await child.call("wait_subscribers", topic="big", count=2)
                await child.call("publish", topic="big", size=size, seed=11)

                # An asyncbus subscriber: a read-only view, and the mapping stays read-only.
                held = await receive(sub)
                assert isinstance(held.data, memoryview) and held.data.readonly
                with pytest.raises(TypeError):
                    held.data[0] = 1
                assert mprotect_errno(buffer_address(held.data), size) == errno.EACCES

                # A raw receiver holds the memfd itself: every way to write is refused.
                frame, fds = await wire.receive_where(is_message("big"))
                _, _, loan, announced = SEGMENT.unpack_from(frame)
                assert announced == size and len(fds) == 1
                with (
                    closing_fds(*fds) as (shared,),
                    closing_fds(os.open(f"/proc/self/fd/{shared}", os.O_RDWR)) as (reopened,),
                ):
                    writable = mmap.PROT_READ | mmap.PROT_WRITE
                    routes: dict[str, Callable[[], object]] = {
                        "write": lambda: os.write(shared, b"x"),
                        "pwrite": lambda: os.pwrite(shared, b"x", 0),
                        "write, reopened O_RDWR": lambda: os.write(reopened, b"x"),
                        "mmap writable": lambda: mmap.mmap(shared, size, mmap.MAP_SHARED, writable),
                        "ftruncate": lambda: os.ftruncate(shared, 0),
                        # F_SEAL_SEAL: no undoing
                        "add seals": lambda: fcntl.fcntl(
                            shared, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE
                        ),
                    }
                    for route, attempt in routes.items():
                        assert_refused(route, attempt)

                    assert punch_hole_errno(shared) == errno.EPERM
                    mapped = mmap.mmap(shared, size, mmap.MAP_SHARED, mmap.PROT_READ)
                    with contextlib.closing(mapped):
                        assert mprotect_errno(buffer_address(mapped), size) == errno.EACCES
                    flags = fcntl.fcntl(shared, fcntl.F_GET_SEALS)
                    assert flags & F_SEAL_FUTURE_WRITE or flags & fcntl.F_SEAL_WRITE

                await wire.send(release_frame(loan))
                assert digest(held.data) == digest(first), "a receiver changed the payload"

                # While this process holds the first payload, the next one goes elsewhere.
                await child.call("publish", topic="big", size=size, seed=12)
                await expect_payload(sub, pattern(size, 12))
                frame, fds = await wire.receive_where(is_message("big"))
                for fd in fds:
                    os.close(fd)
                await wire.send(release_frame(SEGMENT.unpack_from(frame)[2]))
                assert digest(held.data) == digest(first), "the publisher reused a held segment"
                stats = await child.call("stats")
                assert (stats["segments_created"], stats["segments_reused"]) == (2, 0)

                # Released by all: now it is reused. (Both releases went out before each
                # fence, and each link keeps its order.)
                held.release()
                await asyncio.sleep(0)  # one loop turn, for the batched RELEASE: not a wait
                await wire.send_message("fence", b"")
                await child.call("receive", topic="fence")
                await bus.publish("fence", b"")
                await child.call("receive", topic="fence")
                await child.call("publish", topic="big", size=size, seed=13)
                await expect_payload(sub, pattern(size, 13))
                stats = await child.call("stats")
                assert (stats["segments_created"], stats["segments_reused"]) == (2, 1)

            await child.close()

    async def test_a_payload_outlives_its_publisher(self, transport: Transport) -> None:
        held = asyncbus.fd_budget.held
        async with (
            asyncbus.connect(transport.url()) as subscriber,
            subscriber.subscribe("t") as sub,
        ):
            async with asyncbus.connect(transport.url()) as publisher:
                await transport.subscribed(publisher, "t")
                await publisher.publish("t", pattern(MIB, 25))
                msg = await receive(sub)

            # The publisher closed its segments and left: the mapping stays readable.
            assert digest(msg.data) == digest(pattern(MIB, 25))
            msg.release()  # a RELEASE for nobody: dropped quietly
            assert asyncbus.fd_budget.held == held

    async def test_a_slice_kept_after_release_holds_the_segment(self, transport: Transport) -> None:
        async with pair(transport) as p:
            await p.publisher.publish("t", pattern(MIB, 21))
            msg = await receive(p.sub)
            assert isinstance(msg.data, memoryview)
            kept: memoryview | None = msg.data[:4096]
            msg.release()
            await p.released()

            await p.publisher.publish("t", pattern(MIB, 22))
            (await receive(p.sub)).release()
            assert kept is not None and bytes(kept) == pattern(MIB, 21)[:4096], "the slice changed"
            assert_segments(p.publisher, 2, 0)

            kept = None  # the last reference into the first segment goes
            gc.collect()
            await p.released()
            await p.publisher.publish("t", pattern(MIB, 23))
            (await receive(p.sub)).release()
            assert p.publisher.statistics().segments_reused == 1


# -- 5. foreign and bad input ---------------------------------------------------------


class TestForeignInput:
    """A peer that speaks the wire format by hand sends what no asyncbus member would."""

    async def test_bad_segments_are_refused(self, transport: Transport) -> None:
        size = 8192
        async with wired(transport, max_message_size=4 * MIB) as (bus, sub, wire):
            await wire.subscribe()
            with fds_unchanged("after bad segments"):
                with contextlib.ExitStack() as stack:
                    read_end, write_end = stack.enter_context(pipe())
                    bad = {
                        "a pipe": read_end,
                        "a regular file": stack.enter_context(regular_file(bytes(size))),
                        "an unsealed memfd": stack.enter_context(memfd(bytes(size))),
                        "a memfd that can still be written": stack.enter_context(
                            memfd(bytes(size), fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
                        ),
                        "a sealed memfd too short": stack.enter_context(
                            memfd(bytes(size // 2), SEALED)
                        ),
                    }
                    for loan, fd in enumerate(bad.values(), start=100):
                        await wire.send_segment(loan, size, "t", [fd, write_end])
                    oversize = stack.enter_context(memfd(bytes(8 * MIB), SEALED))
                    await wire.send_segment(200, 8 * MIB, "t", [oversize])  # > max_message_size
                    await wire.send_segment(201, size, "t", [])  # no memfd at all
                    good = stack.enter_context(memfd(CONTENT + bytes(size - len(CONTENT)), SEALED))
                    await wire.send_segment(300, size, "t", [good, write_end])

                # Only the good one arrives; the others were counted, and their fds closed.
                with await receive(sub) as msg:
                    assert isinstance(msg.data, memoryview) and len(msg.data) == size
                    assert bytes(msg.data[: len(CONTENT)]) == CONTENT
                    assert len(msg.fds) == 1
                stats = bus.statistics()
                assert stats.bad_segments == 5, stats
                # Each message dropped here is a gap in the peer's numbers.
                assert (stats.oversize, stats.malformed, stats.gaps) == (1, 1, 7), stats

            # A refused segment is released too, so its publisher may reuse it.
            await wire.wait_released(100, 101, 102, 103, 104, 200, 300)
            await wire.send_message("t", b"still working")
            assert (await receive(sub)).data == b"still working"

    async def test_fds_on_control_frames_are_closed(self, transport: Transport) -> None:
        async with wired(transport) as (bus, sub, wire):
            with pipe() as fds, fds_unchanged("after fds on control frames"):
                frames = {
                    "HELLO": hello_frame(wire.address, reply=False, fds=True),
                    "SUBSCRIBE": subscribe_frame("t"),
                    "RELEASE": release_frame(1, 2),
                    "LC03 fragment": LC03.pack(b"LC03", 0, 4, 0, 0, 2) + b"t\0ab",
                    "LC02 without a channel end": b"LC02" + struct.pack(">I", 0) + b"t",
                    "BYE": b"ABBY",
                }
                for frame in frames.values():
                    await wire.send(frame, fds)
                await wire.send_message("t", b"after")
                assert (await receive(sub)).data == b"after"
                stats = bus.statistics()
                assert stats.malformed == len(frames), stats
                assert stats.peers == 1, "a BYE that carried fds was acted on"

    async def test_fd_budget_drops_received_fds(self, transport: Transport) -> None:
        async with wired(transport) as (bus, sub, wire):
            with (
                pipe() as (read_end, write_end),
                memfd(bytes(8192), SEALED) as segment,
                fds_unchanged("after messages over the fd budget"),
            ):
                with budget_limit(asyncbus.fd_budget.held + 2):
                    await wire.send_message("t", b"five", [write_end] * 5)
                    await wire.send_segment(1, 8192, "t", [segment, write_end, read_end])
                    await wire.send_message("t", b"many", [write_end] * SCM_MAX_FD)
                    await wire.send_message("t", b"two", [write_end, read_end])
                    with await receive(sub) as msg:
                        assert msg.data == b"two" and len(msg.fds) == 2
                    stats = bus.statistics()
                    assert (stats.fd_drops, stats.gaps) == (3, 3), stats
                await wire.wait_released(1)

    async def test_receiver_at_its_rlimit_drops_fds(self, transport: Transport) -> None:
        async with members(transport.url(), 1) as (child,):
            await child.call("subscribe", topic="t")
            async with WirePeer(transport, child.address) as wire:
                with pipe() as (_, write_end), memfd(b"s" * 8192) as segment:
                    before = await child.call("stats")
                    await child.call("setrlimit", headroom=3)
                    await wire.send_message("t", b"eight", [write_end] * 8)
                    # A SEGMENT cut short is lost too, but its publisher must get it back.
                    await wire.send_segment(7, 8192, "t", [segment] + [write_end] * 7)
                    await wire.send_message("t", b"none")
                    reply = await child.call("receive", topic="t")
                    assert reply["size"] == 4 and reply["fds"] == 0, "the message with fds came"
                    await wire.wait_released(7)
                    after = await child.call("stats")
                    await child.call("restore_rlimit")
                    assert after["fd_drops"] == 2, after
                    assert after["open_fds"] == before["open_fds"], "the fds that came are closed"
                    assert after["budget_held"] == 0

            await child.close()

    async def test_release_of_a_loan_never_received_is_ignored(self, transport: Transport) -> None:
        async with pair(transport, "big") as p:
            assert p.publisher.sender is not None
            async with WirePeer(transport, p.publisher.sender.address) as wire:
                await p.publisher.publish("big", pattern(MIB, 31))
                held = await receive(p.sub)
                # Loans are numbered from 0: claim to release the ones that exist.
                await wire.send(release_frame(*range(16)))
                await wire.send_message("ack", b"")  # the publisher's "ack" serves as a fence
                await receive(p.acks)  # the RELEASE was read before

                await p.publisher.publish("big", pattern(MIB, 32))
                await expect_payload(p.sub, pattern(MIB, 32))
                assert digest(held.data) == digest(pattern(MIB, 31)), "the held segment was reused"
                assert_segments(p.publisher, 2, 0)
                held.release()

    async def test_peer_without_the_fds_flag(self, transport: Transport) -> None:
        async with pair(transport, "big") as p:
            assert p.publisher.sender is not None
            async with WirePeer(transport, p.publisher.sender.address, fds=False) as old:
                await old.subscribe("big", "fds")
                await transport.subscribed(p.publisher, "big", 2)
                await transport.subscribed(p.publisher, "fds")
                # The modern member maps the segment; the old one gets LC03 fragments,
                # from bytes and from a loan alike.
                for seq, how in enumerate(["bytes", "loan"]):
                    data = pattern(MIB, 41 + seq)
                    await publish_payload(p.publisher, "big", data, loan=how == "loan")
                    await expect_payload(p.sub, data)
                    assert await old.receive_fragments("big") == (seq, data), how

                # fds cannot go to it: counted at the publisher, a gap for the peer.
                with pipe() as (_, write_end):
                    await p.publisher.publish("fds", b"with fds", fds=[write_end])
                    assert p.publisher.statistics().send_drops == 1
                    await p.publisher.publish("fds", b"plain")
                    frame, fds = await old.receive_where(is_message("fds"))
                    assert frame == lc02(3, "fds", b"plain") and not fds


# -- 6. loans ------------------------------------------------------------------------


class TestLoans:
    """`Bus.loan`: its errors, its lifecycle, and memory held by subscribers."""

    async def test_loan_errors(self, transport: Transport) -> None:
        async with (
            asyncbus.connect(transport.url(), max_message_size=MIB) as bus,
            asyncbus.connect(transport.url()) as other,
        ):
            with pytest.raises(ValueError, match="at least 1 byte"):
                bus.loan(0)
            with pytest.raises(ValueError, match="at least 1 byte"):
                bus.loan(-1)
            with pytest.raises(TypeError):
                bus.loan(True)
            with pytest.raises(asyncbus.MessageTooLargeError):
                bus.loan(MIB + 1)

            loan = bus.loan(100)
            with pytest.raises(asyncbus.ClosedError):
                loan.data  # noqa: B018  # not lent yet
            async with loan:
                loan.data[:] = bytes(range(100))
                await bus.publish("t", loan)
                with pytest.raises(asyncbus.ClosedError):
                    loan.data  # noqa: B018  # published
                with pytest.raises(asyncbus.ClosedError):
                    await bus.publish("t", loan)
            with pytest.raises(asyncbus.ClosedError):
                loan.data  # noqa: B018  # after the block
            with pytest.raises(RuntimeError):
                async with loan:
                    pass

            async with other.loan(100) as foreign:
                with pytest.raises(ValueError, match="another bus"):
                    await bus.publish("t", foreign)

        with pytest.raises(asyncbus.ClosedError):
            bus.loan(100)

    async def test_unpublished_loans_return_to_the_pool(self, transport: Transport) -> None:
        async with pair(transport) as p:
            bus = p.publisher
            async with bus.loan(MIB):
                pass  # not published
            async with bus.loan(MIB) as loan:
                loan.data[:4] = b"nope"
                await bus.publish("nobody", loan)  # published to no one
            with pytest.raises(ZeroDivisionError):
                async with bus.loan(MIB):
                    1 / 0  # noqa: B018  # the block fails
            assert_segments(bus, 1, 2)

            await publish_payload(bus, "t", pattern(MIB, 51), loan=True)
            await expect_payload(p.sub, pattern(MIB, 51))
            await p.released()
            async with bus.loan(MIB):
                pass
            assert_segments(bus, 1, 4)

    async def test_held_messages_exhaust_segment_memory(self, transport: Transport) -> None:
        stall = 0.3
        url = transport.url(segment_memory=2 * MIB, stall_timeout=stall)
        async with pair(transport, publisher_url=url, maxsize=8) as p:
            held = []
            for seed in (61, 62):
                await p.publisher.publish("t", pattern(MIB, seed))
                held.append(await receive(p.sub))

            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await p.publisher.publish("t", pattern(MIB, 63))
            assert time.monotonic() - started >= stall * 0.9
            with pytest.raises(TimeoutError):
                async with p.publisher.loan(MIB):
                    pass
            assert [digest(msg.data) for msg in held] == [
                digest(pattern(MIB, 61)),
                digest(pattern(MIB, 62)),
            ]

            for msg in held:
                msg.release()
            await p.released()
            await p.publisher.publish("t", pattern(MIB, 64))
            await expect_payload(p.sub, pattern(MIB, 64))
            assert_segments(p.publisher, 2, 1)
            assert p.subscriber.statistics().gaps == 0, "a publish that timed out used a number"

    async def test_segments_of_a_killed_subscriber_come_back(self, transport: Transport) -> None:
        # Room for one segment: the one the child holds when it dies.
        url = transport.url(segment_memory=MIB, stall_timeout=1)
        async with pair(transport, "big", publisher_url=url) as p, members(url, 1) as (child,):
            await child.call("subscribe", topic="big")
            await transport.subscribed(p.publisher, "big", 2)
            await p.publisher.publish("big", pattern(MIB, 71))
            await child.call("receive", topic="big", hold=True)
            (await receive(p.sub)).release()
            await child.kill()

            # The dead child's hold must not block the live subscriber for good.
            await p.publisher.publish("big", pattern(MIB, 72))
            await expect_payload(p.sub, pattern(MIB, 72))


# -- 7. receive_own ------------------------------------------------------------------------


class TestReceiveOwn:
    """A member's own subscriptions get their own duplicates of what it publishes."""

    async def test_own_subscriptions_get_their_own_fds(self, transport: Transport) -> None:
        async with (
            asyncbus.connect(transport.url(), receive_own=True) as bus,
            asyncbus.connect(transport.url()) as remote,
            bus.subscribe("t") as first,
            bus.subscribe("t*") as second,
            remote.subscribe("t") as far,
        ):
            await transport.subscribed(bus, "t")
            with pipe() as (read_end, write_end), fds_unchanged("after own messages with fds"):
                await bus.publish("t", b"own", fds=[write_end])
                messages = [await receive(first), await receive(second), await receive(far)]
                fds = [msg.fds[0] for msg in messages]
                assert all(len(msg.fds) == 1 for msg in messages)
                assert len({write_end, *fds}) == 4, "each subscription owns its own fd"
                for index, (msg, fd) in enumerate(zip(messages, fds, strict=True)):
                    assert not os.get_inheritable(fd)
                    os.write(fd, bytes([index]))
                    msg.release()
                    assert not is_open(fd), "release() left the fd open"

                assert os.read(read_end, 3) == b"\0\1\2"
                assert is_open(write_end), "the publisher keeps its own"

    async def test_own_subscription_and_a_bad_fd(self, transport: Transport) -> None:
        async with (
            asyncbus.connect(transport.url(), receive_own=True) as bus,
            bus.subscribe("t") as sub,
        ):
            with raises_ebadf():
                await bus.publish("t", b"x", fds=[closed_fd()])
            assert sub.statistics().dropped == 0


# -- 8. udpm ----------------------------------------------------------------------------


class TestUDPM:
    """udpm has no fds and no shared memory, and says so."""

    async def test_fds_and_loans_are_unsupported(self) -> None:
        async with asyncbus.connect(free_url()) as bus:
            with pytest.raises(asyncbus.UnsupportedError, match="unix"):
                await bus.publish("t", b"x", fds=[0])
            with pytest.raises(asyncbus.UnsupportedError, match="unix"):
                await bus.topic("t").publish(b"x", fds=[0])
            with pytest.raises(asyncbus.UnsupportedError, match="unix"):
                bus.loan(100)
            assert bus.statistics().published == 0
