"""The AF_UNIX transports follow asyncio's transport/protocol contract.

These drive ``UNIXDatagramTransport`` and ``UNIXSeqpacketTransport`` directly with a
recording protocol (no bus): call order, ``get_extra_info``, reading and its pause,
per-link queues and ``pause_writing``/``resume_writing``, ``close`` and ``abort``
(files unlinked, ``connection_lost`` once), and a peer that dies. Like
``tests/test_udpm.py::TestTransport`` they import the private modules on purpose.
"""

from __future__ import annotations

import array
import asyncio
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Hashable

import pytest

from asyncbus._core.url import UNIXAddress, parse_url
from asyncbus._transports.unix import (
    Credentials,
    FDFrame,
    UNIXDatagramTransport,
    UNIXSeqpacketTransport,
    create_unix_endpoint,
)

TIMEOUT = 5.0
Transport = UNIXDatagramTransport | UNIXSeqpacketTransport


def _exists(path: bytes) -> bool:
    """Tell whether a socket file exists (a sync helper: lint keeps file I/O out of async code)."""
    return os.path.lexists(path)


class Recorder:
    """A protocol that records every callback, with events to wait on."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.frames: list[tuple[bytes, Hashable, Credentials | None]] = []
        self.fds: list[list[int] | None] = []
        self.lost_links: list[bytes] = []
        self.allowed = True
        self.changed = asyncio.Event()
        self.closed = asyncio.Event()
        self.transport: asyncio.BaseTransport | None = None

    def _note(self, name: str) -> None:
        self.calls.append(name)
        self.changed.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._note("connection_made")

    def frame_received(
        self, frame: bytes, source: Hashable, creds: Credentials | None, fds: list[int] | None
    ) -> None:
        self.frames.append((frame, source, creds))
        self.fds.append(fds)
        self._note("frame_received")

    def connection_allowed(self, creds: Credentials) -> bool:
        return self.allowed

    def source_closed(self, source: Hashable) -> None:
        self._note("source_closed")

    def link_drained(self, address: bytes, queued: int) -> None:
        self._note("link_drained")

    def link_lost(self, address: bytes, exc: OSError | None) -> None:
        self.lost_links.append(address)
        self._note("link_lost")

    def pause_writing(self) -> None:
        self._note("pause_writing")

    def resume_writing(self) -> None:
        self._note("resume_writing")

    def error_received(self, exc: OSError) -> None:
        self._note("error_received")

    def connection_lost(self, exc: BaseException | None) -> None:
        self._note("connection_lost")
        self.closed.set()

    async def wait_for(self, condition: str) -> None:
        async with asyncio.timeout(TIMEOUT):
            while condition not in self.calls:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def bus_dir() -> AsyncIterator[str]:
    # Short: socket paths are limited to 108 bytes.
    with tempfile.TemporaryDirectory(prefix="abt-", dir="/tmp") as directory:
        os.chmod(directory, 0o700)
        yield directory


def _buses(scheme: str, directory: str) -> list[UNIXAddress]:
    name = f"transport-test-{os.getpid()}"
    parsed = [parse_url(f"{scheme}:@{name}"), parse_url(f"{scheme}://{directory}")]
    return [address for address in parsed if isinstance(address, UNIXAddress)]


@pytest.fixture(
    params=[
        ("unix", 0),
        ("unix", 1),
        ("seqpacket", 0),
        ("seqpacket", 1),
    ],
    ids=["unix-abstract", "unix-directory", "seqpacket-abstract", "seqpacket-directory"],
)
def bus(request: pytest.FixtureRequest, bus_dir: str) -> UNIXAddress:
    scheme, index = request.param
    return _buses(scheme, bus_dir)[index]


async def _open(bus: UNIXAddress) -> tuple[Transport, Recorder]:
    recorder = Recorder()
    transport, protocol = await create_unix_endpoint(lambda: recorder, bus)
    assert protocol is recorder
    return transport, recorder


async def _close(*transports: Transport) -> None:
    for transport in transports:
        transport.close()

    for transport in transports:
        recorder = transport.get_protocol()
        assert isinstance(recorder, Recorder)
        async with asyncio.timeout(TIMEOUT):
            await recorder.closed.wait()


class TestLifecycle:
    async def test_connection_made_first_and_lost_once(self, bus: UNIXAddress) -> None:
        transport, recorder = await _open(bus)
        assert recorder.calls == ["connection_made"]
        assert recorder.transport is transport
        address = transport.get_extra_info("sockname")
        assert isinstance(address, bytes)
        assert isinstance(transport.get_extra_info("socket"), socket.socket)
        assert transport.get_extra_info("nothing", 42) == 42
        assert transport.is_reading() and not transport.is_closing()
        transport.close()
        transport.close()  # idempotent
        assert transport.is_closing()
        await recorder.wait_for("connection_lost")
        assert recorder.calls == ["connection_made", "connection_lost"]
        if bus.directory is not None:
            assert not _exists(address), "close must unlink the socket file"

    async def test_abort_unlinks_and_reports_once(self, bus: UNIXAddress) -> None:
        transport, recorder = await _open(bus)
        transport.abort()
        transport.close()
        await recorder.wait_for("connection_lost")
        assert recorder.calls.count("connection_lost") == 1
        if bus.directory is not None:
            assert os.listdir(bus.directory) == []


class TestFrames:
    async def test_frames_arrive_in_order_with_credentials(self, bus: UNIXAddress) -> None:
        a, ra = await _open(bus)
        b, _rb = await _open(bus)
        try:
            assert b.discover() == [a.get_extra_info("sockname")]
            b.open_link(a.get_extra_info("sockname"))
            for n in range(300):  # more than max_dgram_qlen and one read budget
                b.send(a.get_extra_info("sockname"), n.to_bytes(2, "big"))

            async with asyncio.timeout(TIMEOUT):
                while len(ra.frames) < 300:
                    ra.changed.clear()
                    await ra.changed.wait()

            assert [int.from_bytes(f[0], "big") for f in ra.frames] == list(range(300))
            assert {f[2] for f in ra.frames} == {(os.getpid(), os.geteuid(), os.getegid())}
            assert len({f[1] for f in ra.frames}) == 1, "one link is one source"
        finally:
            await _close(a, b)

    async def test_pause_reading_holds_frames_back(self, bus: UNIXAddress) -> None:
        a, ra = await _open(bus)
        b, rb = await _open(bus)
        try:
            target = a.get_extra_info("sockname")
            b.open_link(target)
            a.pause_reading()
            assert not a.is_reading()
            b.send(target, b"held")
            # A round trip through the loop in the other direction proves time passed.
            a.open_link(b.get_extra_info("sockname"))
            a.send(b.get_extra_info("sockname"), b"ping")
            await rb.wait_for("frame_received")
            assert ra.frames == []
            a.resume_reading()
            await ra.wait_for("frame_received")
            assert ra.frames[0][0] == b"held"
        finally:
            await _close(a, b)


class TestFlowControl:
    async def test_full_peer_queues_then_drains_with_pause_and_resume(
        self, bus: UNIXAddress
    ) -> None:
        a, ra = await _open(bus)
        b, rb = await _open(bus)
        try:
            target = a.get_extra_info("sockname")
            b.open_link(target)
            b.set_write_buffer_limits(high=4096, low=1024)
            assert b.get_write_buffer_limits() == (1024, 4096)
            a.pause_reading()
            frame = b"x" * 1000
            sent = 0
            while "pause_writing" not in rb.calls:
                b.send(target, frame)
                sent += 1
                assert sent < 10_000, "the peer's socket never filled"

            assert b.queued(target) > 0
            assert b.get_write_buffer_size() > 4096
            a.resume_reading()
            await rb.wait_for("resume_writing")
            async with asyncio.timeout(TIMEOUT):
                while len(ra.frames) < sent:
                    ra.changed.clear()
                    await ra.changed.wait()

            assert len(ra.frames) == sent, "nothing is lost"
            assert b.queued(target) == 0
            assert b.get_write_buffer_size() == 0
            assert "link_drained" in rb.calls
        finally:
            await _close(a, b)

    async def test_discard_oldest_drops_a_queued_message(self, bus: UNIXAddress) -> None:
        a, _ra = await _open(bus)
        b, _rb = await _open(bus)
        try:
            target = a.get_extra_info("sockname")
            b.open_link(target)
            a.pause_reading()
            n = 0
            while not b.queued(target):
                b.send(target, n.to_bytes(4, "big") + b"y" * 2000)
                n += 1

            b.send(target, n.to_bytes(4, "big"))  # a second queued message
            size = b.get_write_buffer_size()
            assert b.discard_oldest(target)
            assert b.get_write_buffer_size() < size
            assert b.queued(target) == 1
            assert not b.discard_oldest(b"\0nobody")
        finally:
            await _close(a, b)


def _pipe_frame(tag: bytes, done: list[tuple[bytes, bool]]) -> tuple[FDFrame, int]:
    """An FDFrame carrying a pipe's write end; return it and the read end."""
    read, write = os.pipe()
    fds = array.array("i", [write]).tobytes()

    def finished(sent: bool) -> None:
        done.append((tag, sent))
        os.close(write)  # what a sender does once the kernel has its copy (or never will)

    return FDFrame(tag, fds, finished), read


class TestFileDescriptors:
    async def test_fds_arrive_with_their_frame(self, bus: UNIXAddress) -> None:
        a, ra = await _open(bus)
        b, _rb = await _open(bus)
        done: list[tuple[bytes, bool]] = []
        frame, read = _pipe_frame(b"with a pipe", done)
        try:
            target = a.get_extra_info("sockname")
            b.open_link(target)
            b.send(target, b"plain")
            b.send(target, frame)
            async with asyncio.timeout(TIMEOUT):
                while len(ra.frames) < 2:
                    ra.changed.clear()
                    await ra.changed.wait()

            assert done == [(b"with a pipe", True)]
            assert ra.fds[0] is None
            received = ra.fds[1]
            assert received is not None and len(received) == 1
            assert not os.get_inheritable(received[0]), "MSG_CMSG_CLOEXEC"
            os.write(received[0], b"through the copy")
            os.close(received[0])
            assert os.read(read, 100) == b"through the copy"
        finally:
            os.close(read)
            await _close(a, b)

    async def test_done_is_called_once_when_dropped_unsent(self, bus: UNIXAddress) -> None:
        a, _ra = await _open(bus)
        b, _rb = await _open(bus)
        done: list[tuple[bytes, bool]] = []
        reads = []
        try:
            target = a.get_extra_info("sockname")
            b.open_link(target)
            a.pause_reading()
            while not b.queued(target):
                b.send(target, b"z" * 2000)

            for tag in (b"oldest", b"cleared", b"link closed"):
                frame, read = _pipe_frame(tag, done)
                reads.append(read)
                b.send(target, frame)

            frame, read = _pipe_frame(b"no link", done)
            reads.append(read)
            assert not b.send(b"\0nobody", frame)
            assert done == [(b"no link", False)]
            while b.queued(target) > 3:
                assert b.discard_oldest(target)  # the plain frames queued before them

            assert b.discard_oldest(target)
            assert done[-1] == (b"oldest", False)
            b.close_link(target)
            assert sorted(done) == sorted(
                [
                    (b"no link", False),
                    (b"oldest", False),
                    (b"cleared", False),
                    (b"link closed", False),
                ]
            )
        finally:
            for read in reads:
                os.close(read)

            await _close(a, b)


@pytest.mark.parametrize("index", [0, 1], ids=["abstract", "directory"])
async def test_fds_on_a_truncated_datagram_are_closed(bus_dir: str, index: int) -> None:
    # Only SOCK_DGRAM can truncate: a seqpacket record is bounded by our own frames.
    a, ra = await _open(_buses("unix", bus_dir)[index])
    try:
        target = a.get_extra_info("sockname")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as raw:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            raw.connect(target)
            read, write = os.pipe()
            try:
                rights = array.array("i", [read]).tobytes()
                raw.sendmsg([b"x" * 70_000], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
                raw.send(b"after")
            finally:
                os.close(read)

            try:
                await ra.wait_for("frame_received")
                assert [f[0] for f in ra.frames] == [b"after"]
                assert a.truncated == 1
                with pytest.raises(BrokenPipeError):
                    os.write(write, b"?")  # the copy of the read end that came along is closed
            finally:
                os.close(write)
    finally:
        await _close(a)


class TestDeadPeer:
    async def test_link_to_a_killed_peer_is_lost_and_its_file_removed(
        self, bus: UNIXAddress
    ) -> None:
        a, _ra = await _open(bus)
        b, rb = await _open(bus)
        try:
            target = a.get_extra_info("sockname")
            b.open_link(target)
            # Close a's sockets without its cleanup: what SIGKILL leaves behind.
            a._stop_reading()
            a._close_inbound()
            if bus.directory is not None:
                assert _exists(target)

            if bus.scheme == "unix":
                b.send(target, b"to the dead")  # ECONNREFUSED

            await rb.wait_for("link_lost")
            assert rb.lost_links == [target]
            assert not b.has_link(target)
            if bus.directory is not None:
                assert not _exists(target), "the stale file must go"
        finally:
            await _close(a, b)


@pytest.mark.parametrize("index", [0, 1], ids=["abstract", "directory"])
async def test_seqpacket_refused_credentials_close_the_link(bus_dir: str, index: int) -> None:
    # (On unix: every datagram's credentials are checked by the protocol instead.)
    bus = _buses("seqpacket", bus_dir)[index]
    a, _ = await _open(bus)
    b, rb = await _open(bus)
    try:
        rb.allowed = False
        with pytest.raises(PermissionError):
            b.open_link(a.get_extra_info("sockname"))

        assert not b.has_link(a.get_extra_info("sockname"))
        assert b.rejected == 1
    finally:
        await _close(a, b)


async def test_write_buffer_limits_are_checked(bus_dir: str) -> None:
    transport, _ = await _open(_buses("unix", bus_dir)[0])
    try:
        with pytest.raises(ValueError, match="must be >="):
            transport.set_write_buffer_limits(high=1, low=2)
    finally:
        await _close(transport)
