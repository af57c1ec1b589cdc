"""Awaitable ``sendmsg``/``recvmsg``, and file descriptor passing (``SCM_RIGHTS``).

Why this exists: asyncio's event loops await ``recv``, ``sendall``, ``recvfrom``
and ``sendto`` on a non-blocking socket (``loop.sock_recv`` and friends), but not
``recvmsg`` or ``sendmsg``, so ancillary data (file descriptors, credentials) has
no awaitable path. A CPython pull request adding ``loop.sock_recvmsg`` and
``loop.sock_sendmsg`` (https://github.com/python/cpython/pull/114857) was closed
without being merged, the advice being that user-level coroutines could do it;
uvloop does not have them either. These functions are those coroutines, built on
the one primitive both loops share: ``add_reader``/``add_writer``. If a loop ever
grows its own ``sock_recvmsg``/``sock_sendmsg`` method, it is used instead.

Theory of operation (cancellation). Each call loops over two steps:

1. The coroutine itself makes the system call. Success, or any error other than
   "would block", is the answer.
2. On ``BlockingIOError``/``InterruptedError`` it waits for *readiness* only: a
   future that an ``add_reader``/``add_writer`` callback resolves, and nothing
   more. The reader or writer is removed in ``finally``, whatever ends the wait.
   Then back to 1.

The system call never runs in the loop's callback. If it did, a task cancelled
after the callback ran but before the task resumed would lose what the callback
received: bytes, and file descriptors that no one would ever close. Here
cancellation can only land on the readiness wait, and readiness consumes
nothing, so a cancelled call has received (or sent) nothing and left no reader or
writer behind.

A loop holds one reader and one writer callback per file descriptor; a second
``add_reader`` silently replaces the first. So the descriptors these functions
wait on are tracked per loop, and a second task that would wait to receive (or
send) on the same socket gets `BusyError` instead of stealing the first task's
wakeups.
"""

from __future__ import annotations

import array
import asyncio
import os
import resource
import socket
import struct
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from .._exceptions import AncillaryTruncatedError, BusyError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["SCM_MAX_FD", "recv_fds", "send_fds", "sock_recvmsg", "sock_sendmsg"]

SCM_MAX_FD: Final = 253  # Linux include/net/scm.h: most fds one message can carry
_FD_SIZE: Final = array.array("i").itemsize  # fds travel as C ints
_MAX_FD: Final = 2**31 - 1  # an fd is a non-negative C int
_CREDENTIALS_SPACE: Final = socket.CMSG_SPACE(struct.calcsize("=iII"))  # struct ucred

# Per loop, the fds that a call of this module is waiting on (readable, writable).
# Weak keys: a loop that is gone takes its sets with it.
_receiving: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, set[int]] = (
    weakref.WeakKeyDictionary()
)
_sending: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, set[int]] = (
    weakref.WeakKeyDictionary()
)


def _check_nonblocking(sock: socket.socket) -> None:
    """Refuse a blocking socket (or one with a timeout), as ``loop.sock_recv`` does.

    :param sock: the socket to check.
    :raises ValueError: if ``sock`` is not in non-blocking mode.
    """
    if sock.gettimeout() != 0:
        raise ValueError("the socket must be non-blocking: call sock.setblocking(False)")


def _check_idle(
    waiting: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, set[int]],
    loop: asyncio.AbstractEventLoop,
    fd: int,
    action: str,
) -> None:
    """Raise `BusyError` if another task waits on ``fd`` in ``waiting`` on ``loop``.

    :param waiting: `_receiving` or `_sending`.
    :param loop: the running loop.
    :param fd: the socket's file descriptor.
    :param action: what the other task is doing, for the message.
    :raises BusyError: if another task is waiting on ``fd``.
    """
    if fd in waiting.get(loop, ()):
        raise BusyError(action)


def _wake(ready: asyncio.Future[None]) -> None:
    """Resolve a readiness future: the whole job of a reader or writer callback.

    The selector loop is level-triggered and may call this again before the
    waiting task runs, hence the check.

    :param ready: the future the waiting task awaits.
    """
    if not ready.done():
        ready.set_result(None)


async def _wait_ready(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, *, writable: bool
) -> None:
    """Wait until ``sock`` is readable (or writable), with nothing left registered after.

    :param loop: the running loop.
    :param sock: the socket.
    :param writable: wait for room to send instead of something to receive.
    :raises BusyError: if another task already waits on ``sock`` the same way.
    :raises RuntimeError: if the loop refuses to watch ``sock`` (it belongs to a transport).
    :raises asyncio.CancelledError: if cancelled; the reader or writer is removed.
    """
    fd = sock.fileno()
    registry = _sending if writable else _receiving
    _check_idle(registry, loop, fd, "sending on" if writable else "receiving on")
    waiting = registry.setdefault(loop, set())

    # Registered with the socket object, removed by number. uvloop then holds a
    # reference that defers a close() of the socket until the removal; with a bare
    # number, libuv aborts the process if the socket is closed before its next poll.
    # asyncio maps the object to its number at once, so removal works after a close.
    ready: asyncio.Future[None] = loop.create_future()
    if writable:
        loop.add_writer(sock, _wake, ready)
    else:
        loop.add_reader(sock, _wake, ready)

    waiting.add(fd)
    try:
        await ready
    finally:
        waiting.discard(fd)
        if writable:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def sock_recvmsg(
    sock: socket.socket, bufsize: int, ancbufsize: int = 0, flags: int = 0
) -> tuple[bytes, list[tuple[int, int, bytes]], int, Any]:
    """Receive a message and its ancillary data: an awaitable `socket.socket.recvmsg`.

    Cancel-atomic: if cancelled, nothing was received and no reader is left on
    the loop. Runs on the default asyncio loop and on uvloop; a loop with its own
    ``sock_recvmsg`` method gets the call instead.

    :param sock: a non-blocking socket.
    :param bufsize: the most bytes of data to receive.
    :param ancbufsize: the size of the buffer for ancillary data, in bytes
        (use `socket.CMSG_SPACE`/`socket.CMSG_LEN` to size it).
    :param flags: ``MSG_*`` flags for ``recvmsg(2)``.
    :return: ``(data, ancdata, msg_flags, address)`` as `socket.socket.recvmsg`
        returns them; ``data`` is ``b""`` at the end of a stream.
    :raises ValueError: if ``sock`` is blocking (or has a timeout).
    :raises BusyError: if another task is already waiting here to receive on ``sock``.
    :raises RuntimeError: if the loop refuses to watch ``sock`` (it belongs to a
        transport), or if there is no running loop.
    :raises OSError: what ``recvmsg(2)`` reports, e.g. ``ECONNRESET``.
    """
    _check_nonblocking(sock)
    loop = asyncio.get_running_loop()
    native = getattr(loop, "sock_recvmsg", None)
    if native is not None:
        received: tuple[bytes, list[tuple[int, int, bytes]], int, Any]
        received = await native(sock, bufsize, ancbufsize, flags)
        return received

    fd = sock.fileno()
    _check_idle(_receiving, loop, fd, "receiving on")
    while True:
        try:
            return sock.recvmsg(bufsize, ancbufsize, flags)
        except (BlockingIOError, InterruptedError):
            pass

        await _wait_ready(loop, sock, writable=False)


async def sock_sendmsg(
    sock: socket.socket,
    buffers: Iterable[ReadableBuffer],
    ancdata: Iterable[tuple[int, int, ReadableBuffer]] = (),
    flags: int = 0,
    address: str | bytes | tuple[Any, ...] | None = None,
) -> int:
    """Send a message with ancillary data: an awaitable `socket.socket.sendmsg`.

    Waits while the socket has no room. Like ``sendmsg(2)`` it may send only part
    of the data on a stream socket; the return value says how much (ancillary
    data travels with the first byte). Cancel-atomic: if cancelled, nothing was
    sent and no writer is left on the loop. A loop with its own ``sock_sendmsg``
    method gets the call instead.

    Linux only: an unconnected AF_UNIX datagram socket sending to a full receiver
    polls writable while ``sendmsg`` fails with ``EAGAIN``, so this retries in a
    busy loop until the receiver reads; ``connect()`` such a socket instead.

    :param sock: a non-blocking socket.
    :param buffers: the data, as bytes-like objects sent back to back.
    :param ancdata: ``(cmsg_level, cmsg_type, cmsg_data)`` items.
    :param flags: ``MSG_*`` flags for ``sendmsg(2)``.
    :param address: where to send, for an unconnected datagram socket.
    :return: how many bytes of data were sent.
    :raises ValueError: if ``sock`` is blocking (or has a timeout).
    :raises BusyError: if another task is already waiting here to send on ``sock``.
    :raises RuntimeError: if the loop refuses to watch ``sock`` (it belongs to a
        transport), or if there is no running loop.
    :raises OSError: what ``sendmsg(2)`` reports, e.g. ``EPIPE``, ``ECONNREFUSED``,
        ``EMSGSIZE``, or ``EINVAL`` for bad ancillary data.
    """
    _check_nonblocking(sock)
    loop = asyncio.get_running_loop()
    # Iterables may be one-shot, and a send that would block is tried again.
    data = list(buffers)
    control = list(ancdata)
    native = getattr(loop, "sock_sendmsg", None)
    if native is not None:
        sent: int = await native(sock, data, control, flags, address)
        return sent

    fd = sock.fileno()
    _check_idle(_sending, loop, fd, "sending on")
    while True:
        try:
            return sock.sendmsg(data, control, flags, address)
        except (BlockingIOError, InterruptedError):
            pass

        await _wait_ready(loop, sock, writable=True)


async def send_fds(
    sock: socket.socket,
    buffers: Iterable[ReadableBuffer],
    fds: Iterable[int],
    address: str | bytes | tuple[Any, ...] | None = None,
) -> int:
    """Send data with file descriptors attached (``SCM_RIGHTS``): an awaitable `socket.send_fds`.

    For AF_UNIX sockets of any type (stream, datagram, seqpacket). The receiver
    gets new descriptors for the same open files; the sender's stay open and
    remain the sender's to close. With no fds, no control message is sent. Like
    `sock_sendmsg` it may send only part of the data on a stream socket: the fds
    go with the part that was sent.

    :param sock: a non-blocking AF_UNIX socket.
    :param buffers: the data, as bytes-like objects sent back to back.
    :param fds: the descriptors to send, at most 253 (the kernel's ``SCM_MAX_FD``).
    :param address: where to send, for an unconnected datagram socket.
    :return: how many bytes of data were sent.
    :raises TypeError: if an fd is not an int.
    :raises ValueError: if an fd is negative or too large, if there are more than
        253 fds (the kernel's ``SCM_MAX_FD``), if fds would go on a stream socket
        with no data (the kernel would drop them), or if ``sock`` is blocking.
    :raises BusyError: if another task is already waiting here to send on ``sock``.
    :raises RuntimeError: if the loop refuses to watch ``sock`` (it belongs to a
        transport), or if there is no running loop.
    :raises OSError: what ``sendmsg(2)`` reports, e.g. ``EBADF`` for an fd that is
        not open, ``EPIPE``, ``ECONNREFUSED``.
    """
    data = list(buffers)
    descriptors = list(fds)
    for fd in descriptors:
        if not isinstance(fd, int) or isinstance(fd, bool):
            raise TypeError(f"a file descriptor must be an int, not {type(fd).__name__}")

        if not 0 <= fd <= _MAX_FD:
            raise ValueError(f"{fd} is not a file descriptor")

    if len(descriptors) > SCM_MAX_FD:
        raise ValueError(
            f"{len(descriptors)} fds in one message: Linux takes at most {SCM_MAX_FD} "
            "(SCM_MAX_FD); send them in several messages"
        )

    if not descriptors:
        return await sock_sendmsg(sock, data, (), 0, address)

    if sock.type == socket.SOCK_STREAM and not any(memoryview(b).nbytes for b in data):
        # unix_stream_sendmsg() sends nothing for no data, and the fds with it.
        raise ValueError("fds on a stream socket travel with data: send at least one byte")

    control = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", descriptors).tobytes())]
    return await sock_sendmsg(sock, data, control, 0, address)


def _close_all(fds: list[int]) -> None:
    """Close every fd in ``fds``, even if closing one fails.

    :param fds: descriptors this module received and now gives up.
    :raises OSError: the first error from ``close(2)``, once all were closed
        (Linux frees the descriptor even then).
    """
    failure: OSError | None = None
    for fd in fds:
        try:
            os.close(fd)
        except OSError as exc:
            failure = failure or exc

    if failure is not None:
        raise failure


def _truncation_message(arrived: int, maxfds: int) -> str:
    """Say why a message's fds were cut short (``MSG_CTRUNC``) and what happened to them.

    :param arrived: how many fds did arrive (now closed).
    :param maxfds: how many the caller made room for.
    :return: the message for `AncillaryTruncatedError`.
    """
    if arrived >= maxfds:
        why = f"the sender attached more file descriptors than maxfds={maxfds} has room for"
    else:
        # The buffer had room, so the kernel failed to install one: EMFILE.
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        why = f"this process may be out of file descriptors (RLIMIT_NOFILE is {limit})"

    return f"control data truncated (MSG_CTRUNC): {why}; {arrived} arrived and were closed"


async def recv_fds(
    sock: socket.socket, bufsize: int, maxfds: int, flags: int = 0
) -> tuple[bytes, list[int], int, Any]:
    """Receive data and the file descriptors attached to it: an awaitable `socket.recv_fds`.

    For AF_UNIX sockets of any type (stream, datagram, seqpacket). The received
    descriptors belong to the caller, who must close them; they are close-on-exec
    (``MSG_CMSG_CLOEXEC``), so they are not inherited by child processes. Room is
    made for the sender's credentials too when ``SO_PASSCRED`` is on. If the fds
    did not all arrive (``MSG_CTRUNC``), those that did are closed and
    `AncillaryTruncatedError` is raised; no path leaks a descriptor.
    Cancel-atomic: if cancelled, nothing was received.

    :param sock: a non-blocking AF_UNIX socket.
    :param bufsize: the most bytes of data to receive.
    :param maxfds: the most descriptors to receive (0 or more).
    :param flags: ``MSG_*`` flags for ``recvmsg(2)``; ``MSG_CMSG_CLOEXEC`` is always added.
    :return: ``(data, fds, msg_flags, address)``, ``msg_flags`` as the kernel sets
        them (it echoes ``MSG_CMSG_CLOEXEC``); ``data`` is ``b""`` and ``fds`` empty
        at the end of a stream.
    :raises ValueError: if ``maxfds`` is negative, or if ``sock`` is blocking.
    :raises AncillaryTruncatedError: if some fds did not arrive (``maxfds`` too small,
        or this process at its ``RLIMIT_NOFILE``); the data is in its ``data``.
    :raises BusyError: if another task is already waiting here to receive on ``sock``.
    :raises RuntimeError: if the loop refuses to watch ``sock`` (it belongs to a
        transport), or if there is no running loop.
    :raises OSError: what ``recvmsg(2)`` reports, e.g. ``ECONNRESET``.
    """
    if maxfds < 0:
        raise ValueError(f"maxfds must be 0 or more, not {maxfds}")

    _check_nonblocking(sock)
    # Room for exactly maxfds: CMSG_SPACE's padding could take one more.
    ancbufsize = socket.CMSG_LEN(maxfds * _FD_SIZE) if maxfds else 0
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED):
        # The kernel puts SCM_CREDENTIALS first; without room for it, MSG_CTRUNC.
        ancbufsize += _CREDENTIALS_SPACE

    data, ancdata, msg_flags, address = await sock_recvmsg(
        sock, bufsize, ancbufsize, flags | socket.MSG_CMSG_CLOEXEC
    )
    fds: list[int] = []
    try:
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                whole = len(payload) - len(payload) % _FD_SIZE  # a partial int is no fd
                fds.extend(array.array("i", payload[:whole]))

        if msg_flags & socket.MSG_CTRUNC:
            message = _truncation_message(len(fds), maxfds)
            raise AncillaryTruncatedError(message, data=data, closed_fds=len(fds))
    except BaseException:
        _close_all(fds)
        raise

    return data, fds, msg_flags, address
