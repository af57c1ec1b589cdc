"""The async ancillary-data primitives: sock_sendmsg, sock_recvmsg, send_fds, recv_fds.

Every async test runs on the default loop and on uvloop (conftest), and fails on
a leaked file descriptor, so every test also checks that received fds are closed.

* Round trips of data and fds on stream, datagram and seqpacket socketpairs, for
  each kind of open object (a regular file, a pipe, a socket, a memfd): the copy
  is the same object (fstat, and a write through one end seen at the other) and
  is not inheritable.
* Other processes: a C program (``tests/peers/fd_peer.c``, sendmsg/recvmsg with
  SCM_RIGHTS) and its Python twin (``tests/peers/fd_peer.py``, the standard
  library's blocking send_fds/recv_fds) receive and use fds that asyncbus sent,
  and send fds that asyncbus receives.
* Cancellation consumes nothing and leaves no reader or writer on the loop, even
  when the readiness callback already ran.
* Writing waits for room; datagrams keep their boundaries; MSG_CTRUNC closes what
  arrived; errors are the documented ones; a loop's own ``sock_recvmsg`` is used.
* ``examples/pass_fd.py`` runs and prints what the docs say.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

import asyncbus
from asyncbus._exceptions import AncillaryTruncatedError
from asyncbus._transports import sockio

from .conftest import require

TIMEOUT = 10.0  # seconds any one step may take on a loaded machine
ROOT = Path(__file__).resolve().parent.parent
C_SOURCE = ROOT / "tests" / "peers" / "fd_peer.c"
KINDS = {
    "stream": socket.SOCK_STREAM,
    "dgram": socket.SOCK_DGRAM,
    "seqpacket": socket.SOCK_SEQPACKET,
}
OBJECTS = ["file", "pipe", "socket", "memfd"]

Prove = Callable[[int], None]  # checks that a received fd works on the object sent


def _open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def _socketpair(kind: str) -> Iterator[tuple[socket.socket, socket.socket]]:
    """Yield a non-blocking AF_UNIX socketpair of ``kind``; close both ends after."""
    try:
        ends = socket.socketpair(socket.AF_UNIX, KINDS[kind])
    except OSError as exc:
        require(False, f"this kernel cannot make an AF_UNIX {kind} socketpair ({exc})")
        raise

    first, second = ends
    with first, second:
        first.setblocking(False)
        second.setblocking(False)
        yield first, second


@pytest.fixture(params=list(KINDS))
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected, non-blocking AF_UNIX socketpair of each type."""
    with _socketpair(request.param) as ends:
        yield ends


def _make_object(what: str, stack: contextlib.ExitStack, directory: Path) -> tuple[int, Prove]:
    """Open a ``what`` to send; return its fd and a check that a received copy works on it.

    Everything opened is closed by ``stack``.
    """
    message = f"through the copy of a {what}".encode()
    if what in ("file", "memfd"):
        if what == "file":
            fd = os.open(directory / "shared.txt", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        else:
            fd = os.memfd_create("asyncbus-test", os.MFD_CLOEXEC)

        stack.callback(os.close, fd)

        def prove_file(copy: int) -> None:
            os.pwrite(copy, message, 0)
            assert os.pread(fd, 100, 0) == message

        return fd, prove_file

    if what == "pipe":
        read_end, write_end = os.pipe()
        stack.callback(os.close, read_end)
        stack.callback(os.close, write_end)

        def prove_pipe(copy: int) -> None:
            os.write(copy, message)
            assert os.read(read_end, 100) == message

        return write_end, prove_pipe

    assert what == "socket"
    near, far = socket.socketpair()
    stack.enter_context(near)
    stack.enter_context(far)

    def prove_socket(copy: int) -> None:
        os.write(copy, message)
        assert far.recv(100) == message

    return near.fileno(), prove_socket


def _check_copy(original: int, copy: int) -> None:
    """Check that ``copy`` is a new, non-inheritable fd for the object behind ``original``."""
    assert copy != original
    assert not os.get_inheritable(copy)
    mine, theirs = os.fstat(original), os.fstat(copy)
    assert (theirs.st_dev, theirs.st_ino) == (mine.st_dev, mine.st_ino)


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _watched_fds() -> set[int]:
    """Return the fds that some epoll instance of this process watches.

    Both loops wait in epoll on Linux, so this is the kernel's own answer to "is a
    reader or writer left on this fd?", which uvloop's ``remove_reader`` does not
    give (it returns None where asyncio's returns whether one was registered).
    """
    watched: set[int] = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") != "anon_inode:[eventpoll]":
                continue

            with open(f"/proc/self/fdinfo/{name}") as info:
                watched.update(int(line.split()[1]) for line in info if line.startswith("tfd:"))
        except OSError:  # the fd of the listdir itself, gone by now
            continue

    return watched


def _check_unwatched(fd: int, *, writable: bool) -> None:
    """Check that no loop watches ``fd`` any more."""
    assert fd not in _watched_fds()
    loop = asyncio.get_running_loop()
    # asyncio says False (nothing was registered); uvloop always says None.
    assert not (loop.remove_writer(fd) if writable else loop.remove_reader(fd))


def _fill(sock: socket.socket) -> int:
    """Send filler bytes until the socket would block; return how many bytes went."""
    chunk = b"x" * (65_536 if sock.type == socket.SOCK_STREAM else 1_000)
    total = 0
    while True:
        try:
            total += sock.send(chunk)
        except BlockingIOError:
            return total


def _drain(sock: socket.socket) -> list[bytes]:
    """Receive until the socket would block; return what arrived, one item per receive."""
    received: list[bytes] = []
    while True:
        try:
            received.append(sock.recv(65_536))
        except BlockingIOError:
            return received


class TestRoundTrip:
    @pytest.mark.parametrize("what", OBJECTS)
    async def test_one_fd(
        self, pair: tuple[socket.socket, socket.socket], what: str, tmp_path: Path
    ) -> None:
        sender, receiver = pair
        with contextlib.ExitStack() as stack:
            fd, prove = _make_object(what, stack, tmp_path)
            assert await asyncbus.send_fds(sender, [b"with ", b"one fd"], [fd]) == 11
            async with asyncio.timeout(TIMEOUT):
                data, fds, flags, _ = await asyncbus.recv_fds(receiver, 100, maxfds=4)

            stack.callback(_close, fds)
            assert (data, len(fds), flags & socket.MSG_CTRUNC) == (b"with one fd", 1, 0)
            _check_copy(fd, fds[0])
            prove(fds[0])

    async def test_every_kind_in_one_message(
        self, pair: tuple[socket.socket, socket.socket], tmp_path: Path
    ) -> None:
        sender, receiver = pair
        with contextlib.ExitStack() as stack:
            objects = [_make_object(what, stack, tmp_path) for what in OBJECTS]
            await asyncbus.send_fds(sender, [b"four"], [fd for fd, _ in objects])
            async with asyncio.timeout(TIMEOUT):
                data, fds, _, _ = await asyncbus.recv_fds(receiver, 100, maxfds=len(OBJECTS))

            stack.callback(_close, fds)
            assert (data, len(fds)) == (b"four", len(OBJECTS))
            for (fd, prove), copy in zip(objects, fds, strict=True):  # in the order sent
                _check_copy(fd, copy)
                prove(copy)

    async def test_the_kernel_limit_of_253(self, pair: tuple[socket.socket, socket.socket]) -> None:
        sender, receiver = pair
        read_end, write_end = os.pipe()
        try:
            await asyncbus.send_fds(sender, [b"many"], [read_end] * 253)
            async with asyncio.timeout(TIMEOUT):
                data, fds, _, _ = await asyncbus.recv_fds(receiver, 100, maxfds=253)

            _close(fds)
            assert (data, len(fds)) == (b"many", 253)
        finally:
            _close([read_end, write_end])

    @pytest.mark.parametrize("kind", ["dgram", "seqpacket"])
    async def test_messages_keep_their_boundaries_and_fds(self, kind: str) -> None:
        read_end, write_end = os.pipe()
        messages = [(b"none", []), (b"one", [read_end]), (b"", [read_end, write_end])]
        with _socketpair(kind) as (sender, receiver), contextlib.ExitStack() as stack:
            stack.callback(_close, [read_end, write_end])
            for data, fds in messages:
                await asyncbus.send_fds(sender, [data], fds)

            for data, sent in messages:
                async with asyncio.timeout(TIMEOUT):
                    got, fds, _, _ = await asyncbus.recv_fds(receiver, 100, maxfds=4)

                stack.callback(_close, fds)
                assert (got, len(fds)) == (data, len(sent))

    async def test_a_stream_receive_ends_with_the_bytes_that_carried_fds(self) -> None:
        # unix_stream_read_generic() joins earlier plain bytes but stops after fds.
        read_end, write_end = os.pipe()
        with _socketpair("stream") as (sender, receiver), contextlib.ExitStack() as stack:
            stack.callback(_close, [read_end, write_end])
            await asyncbus.sock_sendmsg(sender, [b"plain "])
            await asyncbus.send_fds(sender, [b"with fd"], [read_end])
            await asyncbus.send_fds(sender, [b"next"], [write_end])
            got = []
            for _ in range(2):
                async with asyncio.timeout(TIMEOUT):
                    data, fds, _, _ = await asyncbus.recv_fds(receiver, 100, maxfds=4)

                stack.callback(_close, fds)
                got.append((data, len(fds)))

            assert got == [(b"plain with fd", 1), (b"next", 1)]

    async def test_to_an_address(self, tmp_path: Path) -> None:
        read_end, write_end = os.pipe()
        address = f"\0asyncbus-test-sockio-{os.getpid()}"  # Linux abstract namespace
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver,
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender,
            contextlib.ExitStack() as stack,
        ):
            stack.callback(_close, [read_end, write_end])
            receiver.bind(address)
            receiver.setblocking(False)
            sender.setblocking(False)
            await asyncbus.send_fds(sender, [b"addressed"], [write_end], address)
            async with asyncio.timeout(TIMEOUT):
                data, fds, _, _ = await asyncbus.recv_fds(receiver, 100, maxfds=1)

            stack.callback(_close, fds)
            assert (data, len(fds)) == (b"addressed", 1)
            _check_copy(write_end, fds[0])

    async def test_room_for_credentials_with_so_passcred(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        # The kernel puts SCM_CREDENTIALS before the fds; without room: MSG_CTRUNC.
        sender, receiver = pair
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        read_end, write_end = os.pipe()
        try:
            await asyncbus.send_fds(sender, [b"credentials too"], [read_end])
            async with asyncio.timeout(TIMEOUT):
                data, fds, flags, _ = await asyncbus.recv_fds(receiver, 100, maxfds=1)

            _close(fds)
            assert (data, len(fds), flags & socket.MSG_CTRUNC) == (b"credentials too", 1, 0)
        finally:
            _close([read_end, write_end])

    async def test_sock_sendmsg_and_sock_recvmsg_carry_raw_ancillary_data(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        sender, receiver = pair
        read_end, write_end = os.pipe()
        try:
            rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, read_end.to_bytes(4, sys.byteorder))
            assert await asyncbus.sock_sendmsg(sender, [b"raw"], [rights]) == 3
            async with asyncio.timeout(TIMEOUT):
                data, ancdata, _, _ = await asyncbus.sock_recvmsg(
                    receiver, 100, socket.CMSG_SPACE(4), socket.MSG_CMSG_CLOEXEC
                )

            [(level, kind, payload)] = ancdata
            copy = int.from_bytes(payload, sys.byteorder)
            try:
                assert (data, level, kind) == (b"raw", socket.SOL_SOCKET, socket.SCM_RIGHTS)
                _check_copy(read_end, copy)
            finally:
                os.close(copy)
        finally:
            _close([read_end, write_end])


class TestEndOfStream:
    @pytest.mark.parametrize("kind", ["stream", "seqpacket"])
    @pytest.mark.parametrize("when", ["before", "while-waiting"])
    async def test_peer_closed(self, kind: str, when: str) -> None:
        with _socketpair(kind) as (peer, receiver):
            if when == "before":
                peer.close()

            receiving = asyncio.create_task(asyncbus.recv_fds(receiver, 100, maxfds=4))
            await asyncio.sleep(0)  # let it try, and wait if it must
            peer.close()
            async with asyncio.timeout(TIMEOUT):
                data, fds, _, _ = await receiving
                assert (data, fds) == (b"", [])
                data, ancdata, _, _ = await asyncbus.sock_recvmsg(receiver, 100, 64)
                assert (data, ancdata) == (b"", [])


RECEIVERS: dict[str, Callable[[socket.socket], Coroutine[Any, Any, object]]] = {
    "sock_recvmsg": lambda sock: asyncbus.sock_recvmsg(sock, 100, socket.CMSG_SPACE(16)),
    "recv_fds": lambda sock: asyncbus.recv_fds(sock, 100, maxfds=4),
}


class TestCancellation:
    @pytest.mark.parametrize("receive", list(RECEIVERS))
    @pytest.mark.parametrize(
        "when",
        [
            "waiting",  # nothing arrived yet: the message comes after the cancel
            "message-arrived",  # sent before the cancel, which the task has not seen
            "readiness-reported",  # the loop's callback ran, the task had not resumed
        ],
    )
    async def test_a_cancelled_receive_consumes_nothing(
        self,
        pair: tuple[socket.socket, socket.socket],
        receive: str,
        when: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        sender, receiver = pair
        read_end, write_end = os.pipe()
        woken: list[bool] = []
        task = asyncio.create_task(RECEIVERS[receive](receiver))
        if when == "readiness-reported":
            wake = sockio._wake

            def wake_then_cancel(ready: asyncio.Future[None]) -> None:
                wake(ready)  # the readiness future now has its result...
                woken.append(True)
                task.cancel()  # ...and the task is cancelled before it resumes

            monkeypatch.setattr(sockio, "_wake", wake_then_cancel)

        try:
            await asyncio.sleep(0)  # the task tries, then waits for readiness
            assert not task.done()
            if when != "waiting":
                await asyncbus.send_fds(sender, [b"kept"], [read_end, write_end])

            if when != "readiness-reported":
                task.cancel()

            async with asyncio.timeout(TIMEOUT):
                with pytest.raises(asyncio.CancelledError):
                    await task

            assert woken == ([True] if when == "readiness-reported" else [])
            _check_unwatched(receiver.fileno(), writable=False)
            if when == "waiting":
                await asyncbus.send_fds(sender, [b"kept"], [read_end, write_end])

            async with asyncio.timeout(TIMEOUT):
                data, fds, _, _ = await asyncbus.recv_fds(receiver, 100, maxfds=4)

            _close(fds)
            assert (data, len(fds)) == (b"kept", 2)
        finally:
            _close([read_end, write_end])

    @pytest.mark.parametrize("kind", ["stream", "dgram"])
    async def test_a_cancelled_send_sends_nothing(self, kind: str) -> None:
        with _socketpair(kind) as (sender, receiver):
            filled = _fill(sender)
            sending = asyncio.create_task(asyncbus.sock_sendmsg(sender, [b"cancelled"]))
            await asyncio.sleep(0)
            assert not sending.done()
            sending.cancel()
            async with asyncio.timeout(TIMEOUT):
                with pytest.raises(asyncio.CancelledError):
                    await sending

            _check_unwatched(sender.fileno(), writable=True)
            drained = _drain(receiver)
            assert sum(map(len, drained)) == filled
            assert b"c" not in b"".join(drained)


class TestWriting:
    async def test_a_full_socket_waits_for_the_peer_to_read(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        sender, receiver = pair
        filled = _fill(sender)
        sending = asyncio.create_task(asyncbus.sock_sendmsg(sender, [b"la", b"st"]))
        await asyncio.sleep(0)
        assert not sending.done()
        received: list[bytes] = []
        async with asyncio.timeout(TIMEOUT):
            while sum(map(len, received)) < filled + 4:
                data, _, _, _ = await asyncbus.sock_recvmsg(receiver, 65_536)
                received.append(data)

            assert await sending == 4

        assert b"".join(received).endswith(b"xlast")
        if sender.type != socket.SOCK_STREAM:
            assert received[-1] == b"last"  # one datagram, as sent


class TestBusy:
    async def test_a_second_receiver_is_busy(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        sender, receiver = pair
        first = asyncio.create_task(asyncbus.recv_fds(receiver, 100, maxfds=1))
        await asyncio.sleep(0)
        with pytest.raises(asyncbus.BusyError, match="already receiving on"):
            await asyncbus.sock_recvmsg(receiver, 100)

        with pytest.raises(asyncbus.BusyError):
            await asyncbus.recv_fds(receiver, 100, maxfds=1)

        await asyncbus.sock_sendmsg(sender, [b"for the first"])
        async with asyncio.timeout(TIMEOUT):
            data, fds, _, _ = await first

        assert (data, fds) == (b"for the first", [])

    async def test_a_second_sender_is_busy(self, pair: tuple[socket.socket, socket.socket]) -> None:
        sender, _ = pair
        _fill(sender)
        first = asyncio.create_task(asyncbus.sock_sendmsg(sender, [b"one"]))
        await asyncio.sleep(0)
        try:
            with pytest.raises(asyncbus.BusyError, match="already sending on"):
                await asyncbus.send_fds(sender, [b"two"], [])
        finally:
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first

    async def test_one_receiver_and_one_sender_wait_side_by_side(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        near, far = pair
        filled = _fill(near)
        receiving = asyncio.create_task(asyncbus.sock_recvmsg(near, 100))
        sending = asyncio.create_task(asyncbus.sock_sendmsg(near, [b"last"]))
        await asyncio.sleep(0)
        assert not receiving.done()
        assert not sending.done()
        async with asyncio.timeout(TIMEOUT):
            await asyncbus.sock_sendmsg(far, [b"to near"])
            assert (await receiving)[0] == b"to near"
            drained = 0
            while drained < filled + 4:
                data, _, _, _ = await asyncbus.sock_recvmsg(far, 65_536)
                drained += len(data)

            assert await sending == 4


class TestTruncation:
    @pytest.mark.parametrize(
        ("sent", "maxfds"),
        [(3, 1), (3, 0), (2, 1)],
        ids=["3-fds-room-for-1", "3-fds-room-for-0", "2-fds-room-for-1"],
    )
    async def test_maxfds_too_small(
        self, pair: tuple[socket.socket, socket.socket], sent: int, maxfds: int
    ) -> None:
        sender, receiver = pair
        read_end, write_end = os.pipe()
        try:
            await asyncbus.send_fds(sender, [b"cut short"], [read_end] * sent)
            before = _open_fd_count()
            with pytest.raises(AncillaryTruncatedError, match=f"maxfds={maxfds}") as caught:
                await asyncbus.recv_fds(receiver, 100, maxfds)

            assert _open_fd_count() == before  # what arrived was closed
            error = caught.value
            assert (error.data, error.closed_fds) == (b"cut short", maxfds)
            assert f"{maxfds} arrived and were closed" in str(error)
            assert isinstance(error, OSError)
            assert isinstance(error, asyncbus.AsyncBusError)
            # The socket still works, and the next message is whole.
            await asyncbus.send_fds(sender, [b"next"], [read_end])
            async with asyncio.timeout(TIMEOUT):
                data, fds, _, _ = await asyncbus.recv_fds(receiver, 100, maxfds=1)

            _close(fds)
            assert (data, len(fds)) == (b"next", 1)
        finally:
            _close([read_end, write_end])

    async def test_out_of_file_descriptors(self, pair: tuple[socket.socket, socket.socket]) -> None:
        sender, receiver = pair
        read_end, write_end = os.pipe()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        try:
            await asyncbus.send_fds(sender, [b"three"], [read_end] * 3)
            before = _open_fd_count()
            lowest_free = os.dup(read_end)  # the kernel gives the lowest free number
            os.close(lowest_free)
            # Leave exactly one free descriptor: one of the three arrives, then EMFILE.
            resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free + 1, hard))
            try:
                with pytest.raises(AncillaryTruncatedError, match="RLIMIT_NOFILE") as caught:
                    await asyncbus.recv_fds(receiver, 100, maxfds=3)
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

            assert (caught.value.data, caught.value.closed_fds) == (b"three", 1)
            assert _open_fd_count() == before
        finally:
            _close([read_end, write_end])


FUNCTIONS: dict[str, Callable[[socket.socket], Coroutine[Any, Any, object]]] = {
    "sock_recvmsg": lambda sock: asyncbus.sock_recvmsg(sock, 100),
    "sock_sendmsg": lambda sock: asyncbus.sock_sendmsg(sock, [b"x"]),
    "recv_fds": lambda sock: asyncbus.recv_fds(sock, 100, maxfds=1),
    "send_fds": lambda sock: asyncbus.send_fds(sock, [b"x"], []),
}


class TestErrors:
    @pytest.mark.parametrize("function", list(FUNCTIONS))
    async def test_a_blocking_socket_is_refused(self, function: str) -> None:
        with _socketpair("stream") as (sock, _):
            for seconds in (None, 1.0):  # blocking, and blocking with a timeout
                sock.settimeout(seconds)
                with pytest.raises(ValueError, match="must be non-blocking"):
                    await FUNCTIONS[function](sock)

    async def test_more_than_253_fds(self) -> None:
        with _socketpair("dgram") as (sender, receiver):
            with pytest.raises(ValueError, match=r"at most 253 \(SCM_MAX_FD\)"):
                await asyncbus.send_fds(sender, [b"too many"], [0] * 254)

            with pytest.raises(BlockingIOError):
                receiver.recv(100)  # nothing was sent

    @pytest.mark.parametrize(
        ("fd", "error"),
        [
            (-1, ValueError),
            (2**31, ValueError),
            ("0", TypeError),
            (1.0, TypeError),
            (True, TypeError),
        ],
        ids=["negative", "over-int-max", "str", "float", "bool"],
    )
    async def test_bad_fds(self, fd: object, error: type[Exception]) -> None:
        with _socketpair("dgram") as (sender, receiver):
            with pytest.raises(error):
                await asyncbus.send_fds(sender, [b"bad"], [fd])

            with pytest.raises(BlockingIOError):
                receiver.recv(100)  # nothing was sent

    async def test_fds_with_no_data_on_a_stream(self) -> None:
        with _socketpair("stream") as (sender, receiver):
            with pytest.raises(ValueError, match="at least one byte"):
                await asyncbus.send_fds(sender, [b""], [receiver.fileno()])

            assert await asyncbus.send_fds(sender, [], []) == 0  # no fds: nothing to lose

    async def test_negative_maxfds(self) -> None:
        with _socketpair("dgram") as (sender, receiver):
            await asyncbus.sock_sendmsg(sender, [b"stays"])
            with pytest.raises(ValueError, match="maxfds must be 0 or more"):
                await asyncbus.recv_fds(receiver, 100, maxfds=-1)

            assert receiver.recv(100) == b"stays"  # nothing was received

    async def test_an_error_from_the_kernel(self) -> None:
        with _socketpair("dgram") as (sender, receiver):
            receiver.close()
            with pytest.raises(ConnectionRefusedError):
                await asyncbus.sock_sendmsg(sender, [b"to nobody"])


_CLOSE_WHILE_WAITING = """
import asyncio, os, socket, sys, uvloop
import asyncbus

async def main():
    peer, sock = socket.socketpair()
    with peer, sock:
        sock.setblocking(False)
        fd = sock.fileno()
        receiving = asyncio.create_task(asyncbus.sock_recvmsg(sock, 10))
        await asyncio.sleep(0)  # the task registered its reader; the loop has not polled
        sock.close()
        receiving.cancel()
        try:
            await receiving
        except asyncio.CancelledError:
            pass
        try:
            os.fstat(fd)
            print("still open")
        except OSError:
            print("closed")

factory = uvloop.new_event_loop if sys.argv[1] == "uvloop" else asyncio.new_event_loop
with asyncio.Runner(loop_factory=factory) as runner:
    runner.run(main())
"""


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_closing_the_socket_while_a_receive_waits(loop: str) -> None:
    # In a process of its own: with add_reader(fd_number), libuv aborted the process
    # when the socket was closed before the loop polled again.
    ran = subprocess.run(
        [sys.executable, "-W", "error", "-c", _CLOSE_WHILE_WAITING, loop],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=ROOT,
    )
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "closed\n", "")


class _NativeLoop(asyncio.SelectorEventLoop):
    """A loop with its own ``sock_recvmsg``/``sock_sendmsg``, as a future CPython might have."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    async def sock_recvmsg(
        self, sock: socket.socket, bufsize: int, ancbufsize: int = 0, flags: int = 0
    ) -> tuple[bytes, list[tuple[int, int, bytes]], int, Any]:
        self.calls.append(("sock_recvmsg", flags))
        return sock.recvmsg(bufsize, ancbufsize, flags)  # the test sent before receiving

    async def sock_sendmsg(
        self,
        sock: socket.socket,
        buffers: list[bytes],
        ancdata: list[tuple[int, int, bytes]],
        flags: int = 0,
        address: Any = None,
    ) -> int:
        self.calls.append(("sock_sendmsg", len(ancdata)))
        return sock.sendmsg(buffers, ancdata, flags, address)


def test_the_loops_own_methods_are_used() -> None:
    async def main() -> None:
        read_end, write_end = os.pipe()
        with _socketpair("dgram") as (sender, receiver), contextlib.ExitStack() as stack:
            stack.callback(_close, [read_end, write_end])
            await asyncbus.send_fds(sender, [b"native"], [read_end])
            data, fds, _, _ = await asyncbus.recv_fds(receiver, 100, maxfds=1)
            _close(fds)
            assert (data, len(fds)) == (b"native", 1)

    with asyncio.Runner(loop_factory=_NativeLoop) as runner:
        runner.run(main())
        loop = runner.get_loop()
        assert isinstance(loop, _NativeLoop)
        assert loop.calls == [("sock_sendmsg", 1), ("sock_recvmsg", socket.MSG_CMSG_CLOEXEC)]


@pytest.fixture(scope="module")
def c_peer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Compile the C peer once per module."""
    gcc = shutil.which("gcc")
    require(gcc, "gcc is missing: install it (apt-get install gcc) to build the C fd peer")
    assert gcc is not None
    program = tmp_path_factory.mktemp("fd-peer") / "fd_peer"
    flags = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"]
    compiled = subprocess.run(
        [gcc, *flags, "-o", str(program), str(C_SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert compiled.returncode == 0, f"gcc failed:\n{compiled.stderr}"
    return program


@pytest.fixture(params=["c", "python"])
def peer_command(request: pytest.FixtureRequest) -> list[str]:
    """How to start the peer: the C program, or its Python twin (stdlib send_fds/recv_fds)."""
    if request.param == "c":
        return [str(request.getfixturevalue("c_peer"))]

    return [sys.executable, "-m", "tests.peers.fd_peer"]


@contextlib.asynccontextmanager
async def _peer(command: list[str], sock: socket.socket, *args: str) -> AsyncIterator[list[str]]:
    """Run the peer on ``sock`` (closed here once the peer has it); yield its stdout lines.

    The lines are filled in when the peer exits, which the block must let it do:
    on leaving, the peer is waited for (killed if it takes too long) and must exit 0.
    """
    sock.setblocking(True)  # the peer's own business (O_NONBLOCK is shared)
    process = await asyncio.create_subprocess_exec(
        *command,
        str(sock.fileno()),
        *args,
        pass_fds=[sock.fileno()],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    sock.close()
    lines: list[str] = []
    try:
        yield lines
        async with asyncio.timeout(TIMEOUT):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()

    assert process.returncode == 0, f"{command} exited {process.returncode}: {err.decode()}"
    lines.extend(out.decode().splitlines())


FILE_TEXT = b"file written by Python\n"
MEMFD_TEXT = b"memfd written by Python\n"


class TestOtherProcesses:
    @pytest.mark.parametrize("kind", list(KINDS))
    async def test_the_peer_uses_fds_that_asyncbus_sent(
        self, peer_command: list[str], kind: str, tmp_path: Path
    ) -> None:
        with _socketpair(kind) as (ours, theirs), contextlib.ExitStack() as stack:
            read_end, write_end = os.pipe()
            stack.callback(_close, [read_end, write_end])
            file = os.open(tmp_path / "from-python.txt", os.O_RDWR | os.O_CREAT, 0o600)
            stack.callback(os.close, file)
            os.write(file, FILE_TEXT)
            memfd = os.memfd_create("asyncbus-test")
            stack.callback(os.close, memfd)
            os.write(memfd, MEMFD_TEXT)
            near, far = socket.socketpair()
            stack.enter_context(near)
            stack.enter_context(far)
            sent = [write_end, file, memfd, near.fileno()]
            async with _peer(peer_command, theirs, "receive", "8") as lines:
                await asyncbus.send_fds(ours, [b"to the peer"], sent)

            identities = [f"ino {os.fstat(fd).st_ino} dev {os.fstat(fd).st_dev}" for fd in sent]
            assert lines == [
                f"data 11 {b'to the peer'.hex()}",
                "fds 4",
                "truncated 0",
                f"fd 0 {identities[0]} wrote",
                f"fd 1 {identities[1]} content {FILE_TEXT.hex()}",
                f"fd 2 {identities[2]} content {MEMFD_TEXT.hex()}",
                f"fd 3 {identities[3]} wrote",
            ]
            assert os.read(read_end, 100) == b"C wrote to fd 0\n"
            assert far.recv(100) == b"C wrote to fd 3\n"

    @pytest.mark.parametrize("kind", list(KINDS))
    async def test_asyncbus_receives_fds_that_the_peer_sent(
        self, peer_command: list[str], kind: str, tmp_path: Path
    ) -> None:
        with _socketpair(kind) as (ours, theirs), contextlib.ExitStack() as stack:
            async with _peer(peer_command, theirs, "send", str(tmp_path)) as lines:
                async with asyncio.timeout(TIMEOUT):
                    data, fds, _, _ = await asyncbus.recv_fds(ours, 100, maxfds=4)

                stack.callback(_close, fds)

            assert lines == ["sent 2"]
            assert (data, len(fds)) == (b"from C", 2)
            pipe, file = fds
            assert not os.get_inheritable(pipe)
            assert not os.get_inheritable(file)
            assert os.fstat(file).st_ino == (tmp_path / "from-c.txt").stat().st_ino
            assert os.pread(file, 100, 0) == b"file written by C\n"
            # The peer wrote into the pipe after sending it, then exited: all, then EOF.
            assert os.read(pipe, 100) == b"pipe written by C\n"
            assert os.read(pipe, 100) == b""


def test_the_pass_fd_example() -> None:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    ran = subprocess.run(
        [sys.executable, "-W", "error", str(ROOT / "examples" / "pass_fd.py")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "PYTHONPATH": path, "PYTHONDEVMODE": "1"},
        cwd=ROOT,
    )
    assert ran.returncode == 0, ran.stderr
    assert "Warning" not in ran.stderr, ran.stderr
    assert ran.stdout.splitlines() == [
        "child: got 'here is a file' and 1 fd, inheritable: False",
        "child: the file holds ['written by the parent']",
        "parent: child said 'done'; the file holds "
        "['written by the parent', 'appended by the child']",
    ]
