"""AF_UNIX bus transports: ``unix:`` (SOCK_DGRAM) and ``seqpacket:`` (SOCK_SEQPACKET).

asyncio has no SOCK_SEQPACKET transport and uvloop refuses AF_UNIX datagram
endpoints, so both are built here on ``add_reader``/``add_writer``; they run on
the default loop and on uvloop alike.

A member owns one receiving socket (bound in the bus directory or in the
abstract namespace) and one *link* per peer: a socket connected to that peer's
receiving socket. Each link has its own write queue, so a full peer makes only
its own link wait (``sendto`` on one shared socket could not tell which peer is
full). The transport moves frames and reports what the kernel says; what to
send, to whom, and what to do with a full peer is the protocol's business.

* ``unix:`` receives every frame on its one socket with ``SO_PASSCRED``, so the
  kernel attaches the sender's pid, uid and gid (``SCM_CREDENTIALS``) to each.
  A link is a SOCK_DGRAM socket ``connect``-ed to the peer: it polls writable
  when the peer's queue (``max_dgram_qlen``) has room, and a send to a peer that
  died fails with ``ECONNREFUSED``.
* ``seqpacket:`` listens; each accepted connection is a source whose peer
  credentials (``SO_PEERCRED``) were checked once, at accept. A link is a
  connection to the peer's listener, whose credentials are checked at connect.
  The peer never writes on our link, so reading it shows at once when the
  peer dies (end of file).
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import errno
import os
import secrets
import select
import socket
import stat
import struct
import sys
import warnings
from collections.abc import Callable, Hashable
from typing import Any, Final, Protocol

from .._core.unixwire import MAX_CONTROL_FRAME, encode_batch
from .._core.url import UNIXAddress
from .._exceptions import BusPermissionError

__all__ = [
    "MAX_FDS",
    "Credentials",
    "FDFrame",
    "UNIXBusProtocol",
    "UNIXDatagramTransport",
    "UNIXSeqpacketTransport",
    "bus_directory",
    "create_unix_endpoint",
]

Credentials = tuple[int, int, int]  # pid, uid, gid as the kernel attests them

MAX_FDS: Final = 253  # SCM_MAX_FD (include/net/scm.h): descriptors in one sendmsg()
_UCRED: Final = struct.Struct("=iII")  # struct ucred: pid_t, uid_t, gid_t (Linux)
_CREDENTIALS_SPACE: Final = socket.CMSG_SPACE(_UCRED.size)
_FDS_SPACE: Final = socket.CMSG_SPACE(MAX_FDS * 4)  # room for the most a sender can attach
_CMSG_CLOEXEC: Final = int(socket.MSG_CMSG_CLOEXEC)  # received fds are close-on-exec
_MSG_CTRUNC: Final = int(socket.MSG_CTRUNC)
_MAX_FRAME: Final = 65_536  # every frame we send is at most an LCM datagram (65,507 bytes)
# A BATCH is built from what is queued for a peer, up to this many bytes (the
# receivers' limit is MAX_CONTROL_FRAME).
BATCH_BYTES: Final = 16 * 1024
_READ_BUDGET: Final = 256  # frames read per wakeup before other callbacks get a turn
_ACCEPT_BUDGET: Final = 64  # connections accepted per wakeup
_LISTEN_BACKLOG: Final = 4096  # joiners connect to every member at once
_SO_ACCEPTCON: Final = 0x10000  # __SO_ACCEPTCON in /proc/net/unix "Flags": a listener
_SOCKET_TYPES: Final = {"unix": socket.SOCK_DGRAM, "seqpacket": socket.SOCK_SEQPACKET}
_PROC_TYPES: Final = {socket.SOCK_DGRAM: "0002", socket.SOCK_SEQPACKET: "0005"}
# Errors that mean the peer's socket is gone: forget the peer, not the bus.
_MSG_TRUNC: Final = int(socket.MSG_TRUNC)  # a plain int: IntFlag's & costs ~0.6 us
_HIGH_WATER: Final = 256 * 1024  # bytes queued in all links before pause_writing()
# A killed process's sockets close one by one: probe its file again after these.
_REAP_DELAYS: Final = (0.05, 0.25, 1.0)
_PEER_GONE: Final = frozenset(
    {errno.ECONNREFUSED, errno.ENOENT, errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN}
)


class FDFrame:
    """A frame sent with file descriptors attached (``SCM_RIGHTS``).

    The transport calls ``done(sent)`` exactly once: with ``True`` when the
    kernel took the frame (the peer now has its own copies of the fds), with
    ``False`` when the frame was dropped unsent (a policy, a broken link,
    closing). The sender keeps its fds open until then.
    """

    __slots__ = ("ancdata", "done", "frame")

    def __init__(self, frame: bytes, fds: bytes, done: Callable[[bool], None]) -> None:
        """Describe the frame.

        :param frame: the bytes.
        :param fds: the descriptors, as a native int array (``array("i", fds).tobytes()``).
        :param done: told whether the frame went out.
        """
        self.frame = frame
        self.ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]
        self.done = done

    def __len__(self) -> int:
        return len(self.frame)


# One message: a frame, fragments sent back to back, or a frame with fds.
Frames = bytes | list[bytes] | FDFrame


def _dropped(message: Frames) -> None:
    """A queued message will not be sent: let an FDFrame's owner know."""
    if type(message) is FDFrame:
        message.done(False)


class UNIXBusProtocol(Protocol):
    """The callbacks a unix bus transport makes (the protocol side)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The transport is ready."""

    def frame_received(
        self, frame: bytes, source: Hashable, creds: Credentials | None, fds: list[int] | None
    ) -> None:
        """One frame arrived from ``source`` with the sender's credentials.

        ``fds`` are the descriptors that came with it (close-on-exec); from
        now on the protocol owns them and must close what it does not keep.
        """

    def connection_allowed(self, creds: Credentials) -> bool:
        """Tell whether a peer with these credentials may connect (seqpacket)."""

    def source_closed(self, source: Hashable) -> None:
        """An inbound connection ended (seqpacket)."""

    def link_drained(self, address: bytes, queued: int) -> None:
        """A link sent queued frames; ``queued`` messages are still waiting."""

    def link_lost(self, address: bytes, exc: OSError | None) -> None:
        """A link broke (the peer died or left); it is closed."""

    def pause_writing(self) -> None:
        """The bytes queued in all links went over the high-water mark."""

    def resume_writing(self) -> None:
        """The bytes queued in all links drained to the low-water mark."""

    def error_received(self, exc: OSError) -> None:
        """The kernel reported an error that broke no link (counted)."""

    def connection_lost(self, exc: BaseException | None) -> None:
        """The transport is closed."""


def bus_directory(address: UNIXAddress, environ: dict[str, str] | None = None) -> str:
    """Find (and create) the directory of a directory bus, and check it is safe.

    A bare name lives in ``$XDG_RUNTIME_DIR/asyncbus/NAME``, else in
    ``/tmp/asyncbus-UID/NAME``; missing directories are created with mode 0700.

    :param address: a directory bus (not abstract).
    :param environ: the environment (default ``os.environ``).
    :return: the absolute directory.
    :raises BusPermissionError: if the directory (or the per-user base) is not
        owned by this user or is writable by group or others, or cannot be made.
    :raises InvalidURLError: if the resulting socket paths would be too long.
    """
    from .._core.url import MAX_DIRECTORY
    from .._exceptions import InvalidURLError

    env = os.environ if environ is None else environ
    if address.directory is not None:
        directory = address.directory
        _make_private(directory)
    else:
        assert address.name is not None
        runtime = env.get("XDG_RUNTIME_DIR")
        if runtime and os.path.isabs(runtime) and os.path.isdir(runtime):
            base = os.path.join(runtime, "asyncbus")
        else:
            base = f"/tmp/asyncbus-{os.geteuid()}"

        _make_private(base)
        directory = os.path.join(base, address.name)
        _make_private(directory)

    if len(os.fsencode(directory)) > MAX_DIRECTORY:
        raise InvalidURLError(
            f"bus directory {directory!r} is too long for a unix socket path "
            f"(at most {MAX_DIRECTORY} bytes)"
        )

    return directory


def _make_private(path: str) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise BusPermissionError(f"cannot create bus directory {path!r}: {exc.strerror}") from exc

    try:
        info = os.lstat(path)  # not stat: another user's symlink must not lead us elsewhere
    except OSError as exc:
        raise BusPermissionError(f"cannot use bus directory {path!r}: {exc.strerror}") from exc

    if stat.S_ISLNK(info.st_mode):
        raise BusPermissionError(
            f"bus directory {path!r} is a symbolic link; refusing it (whoever made it "
            f"chose where the bus lives): name the real directory"
        )

    if not stat.S_ISDIR(info.st_mode):
        raise BusPermissionError(f"bus directory {path!r} is not a directory")

    if info.st_uid != os.geteuid():
        raise BusPermissionError(
            f"bus directory {path!r} belongs to uid {info.st_uid}, not to this user "
            f"(uid {os.geteuid()}); refusing it, since its owner could read or fake the bus"
        )

    if info.st_mode & 0o022:
        raise BusPermissionError(
            f"bus directory {path!r} has mode {stat.S_IMODE(info.st_mode):04o}: other users "
            f"could add or replace members; make it 0700 (chmod go-w {path})"
        )


def _member_name() -> str:
    # Short, unique, and tells a human which process it is. At most 7 + 1 + 8
    # bytes (pid_max is 2**22), within MEMBER_NAME_MAX.
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def _abstract_prefix(address: UNIXAddress) -> bytes:
    assert address.name is not None
    return b"\0asyncbus/" + address.name.encode() + b"/"


def list_members(address: UNIXAddress, directory: str | None, own: bytes) -> list[bytes]:
    """Return the receiving addresses of the members of a bus, except ``own``.

    :param address: the bus.
    :param directory: the bus directory, for a directory bus.
    :param own: this member's address.
    :return: ``sun_path`` values to connect to.
    :raises OSError: if the directory or ``/proc/net/unix`` cannot be read.
    """
    kind = _SOCKET_TYPES[address.scheme]
    found: list[bytes] = []
    if directory is not None:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue  # a member still setting up (see _bind)

                path = os.fsencode(entry.path)
                try:
                    is_socket = stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode)
                except OSError:
                    continue  # removed while listing

                if path != own and is_socket:
                    found.append(path)

        return found

    # Linux only: the abstract namespace has no directory; /proc/net/unix lists
    # every AF_UNIX socket of this network namespace, "@" standing for the NUL.
    prefix = "@" + _abstract_prefix(address)[1:].decode()
    wanted_type = _PROC_TYPES[kind]
    seen = set()
    with open("/proc/net/unix", encoding="utf-8", errors="surrogateescape") as table:
        next(table, None)  # header
        for line in table:
            fields = line.split()
            if len(fields) < 8 or fields[4] != wanted_type or not fields[7].startswith(prefix):
                continue

            if kind == socket.SOCK_SEQPACKET and not int(fields[3], 16) & _SO_ACCEPTCON:
                continue  # an accepted connection shows its listener's name

            path = b"\0" + fields[7][1:].encode("utf-8", "surrogateescape")
            if path != own and path not in seen:
                seen.add(path)
                found.append(path)

    return found


def remove_if_stale(path: bytes, kind: int) -> bool:
    """Unlink a socket file nobody listens on any more (a member that was killed).

    Connecting tells: ``ECONNREFUSED`` means no socket is bound to the file. No
    one can bind a new socket there while the file exists, so the unlink cannot
    remove a live member's file.

    :param path: the socket file (a pathname address).
    :param kind: ``SOCK_DGRAM`` or ``SOCK_SEQPACKET``.
    :return: ``True`` if the file was removed.
    """
    if not path or path[0] == 0:
        return False  # abstract names vanish with their socket

    probe = socket.socket(socket.AF_UNIX, kind)
    try:
        probe.setblocking(False)
        probe.connect(path)
    except ConnectionRefusedError:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False  # another member cleaned up first

        return True
    except OSError:
        return False
    finally:
        probe.close()

    return False


def _hung_up(sock: socket.socket) -> bool:
    # recv() returns 0 both for an empty seqpacket record and at end of file;
    # only the poll state tells them apart.
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLRDHUP)
    return any(events & (select.POLLHUP | select.POLLRDHUP) for _, events in poller.poll(0))


def _size(message: Frames) -> int:
    if type(message) is list:
        return sum(len(frame) for frame in message)

    return len(message)


def _received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """Return every descriptor in ``SCM_RIGHTS`` control messages."""
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(array.array("i", data[:usable]))

    return fds


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _credentials(sock: socket.socket) -> Credentials:
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return pid, uid, gid


class _Link:
    """One peer: the socket connected to its receiving socket, and a write queue."""

    __slots__ = ("address", "batch", "corked", "fd", "queue", "size", "sock", "writing")

    def __init__(self, address: bytes, sock: socket.socket) -> None:
        self.address = address
        self.sock = sock
        self.fd = sock.fileno()
        # Items are whole messages: a frame, or a list of fragments (sent from the front).
        self.queue: collections.deque[Frames] = collections.deque()
        self.size = 0  # bytes in the queue
        self.writing = False
        self.batch = False  # the peer takes BATCH frames
        self.corked = False  # a frame went out this loop turn: queue the next ones


class _UNIXBusTransport(asyncio.BaseTransport):
    """What both unix transports share: links, queues, lifecycle (internal)."""

    _kind: int = socket.SOCK_DGRAM

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: UNIXBusProtocol,
        *,
        address: bytes,
        directory: str | None,
        bus: UNIXAddress,
    ) -> None:
        super().__init__()
        self._loop = loop
        self._sock: socket.socket | None = sock
        self._protocol = protocol
        self._address = address
        self._directory = directory
        self._bus = bus
        self._links: dict[bytes, _Link] = {}
        self._buffered = 0  # bytes queued in all links
        self._high_water = _HIGH_WATER
        self._low_water = _HIGH_WATER // 4
        self._writing_paused = False
        self._reading = True
        self._closing = False
        self._made = False
        self._reaping: dict[bytes, asyncio.TimerHandle] = {}
        self._corked: list[_Link] = []  # links to flush at the end of this loop turn
        self._uncork: asyncio.Handle | None = None
        self._batch_bytes = BATCH_BYTES
        self.batches = 0  # BATCH frames sent
        self.batched = 0  # frames sent in them
        self._extra: dict[str, Any] = {"sockname": address, "socket": sock}
        self._view = memoryview(bytearray(_MAX_FRAME))  # every frame is read into it
        self.received = 0
        self.truncated = 0
        self.rejected = 0
        self.removed_stale = 0
        self._setup()

    def _setup(self) -> None:
        """Make the state the socket type needs."""

    # -- asyncio transport interface ----------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Return ``sockname`` (our address), ``socket``, or ``default``."""
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        """Tell whether `close` or `abort` was called."""
        return self._closing

    def is_reading(self) -> bool:
        """Tell whether the transport reads frames."""
        return self._reading and not self._closing

    def pause_reading(self) -> None:
        """Stop reading frames until `resume_reading` (peers then wait or drop)."""
        if self._closing or not self._reading:
            return

        self._reading = False
        self._stop_reading()

    def resume_reading(self) -> None:
        """Read frames again."""
        if self._closing or self._reading:
            return

        self._reading = True
        self._start_reading()

    def get_write_buffer_size(self) -> int:
        """Return the bytes queued in all links (peers whose socket is full)."""
        return self._buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """Return the (low, high) water marks of `get_write_buffer_size`."""
        return self._low_water, self._high_water

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set when the protocol's ``pause_writing``/``resume_writing`` are called.

        :param high: pause above this many queued bytes (default 256 KiB).
        :param low: resume at or below this many (default ``high // 4``).
        :raises ValueError: unless ``high >= low >= 0``.
        """
        if high is None:
            high = _HIGH_WATER if low is None else 4 * low

        if low is None:
            low = high // 4

        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")

        self._high_water, self._low_water = high, low
        self._check_water()

    def _check_water(self) -> None:
        if not self._writing_paused and self._buffered > self._high_water:
            self._writing_paused = True
            self._protocol.pause_writing()
        elif self._writing_paused and self._buffered <= self._low_water:
            self._writing_paused = False
            self._protocol.resume_writing()

    def _enqueue(self, link: _Link, message: Frames) -> None:
        link.queue.append(message)
        size = _size(message)
        link.size += size
        self._buffered += size
        if self._buffered > self._high_water and not self._writing_paused:
            self._check_water()

    def _dequeued(self, link: _Link, size: int) -> None:
        link.size -= size
        self._buffered -= size
        if self._writing_paused and self._buffered <= self._low_water:
            self._check_water()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Replace the protocol."""
        self._protocol = protocol  # type: ignore[assignment]  # a UNIXBusProtocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        """Return the protocol."""
        return self._protocol  # type: ignore[return-value]  # a UNIXBusProtocol

    def close(self) -> None:
        """Close every socket now and unlink our socket file; queued frames are dropped.

        The protocol should flush (and say BYE) before: the bus does.
        """
        if self._closing:
            return

        self._closing = True
        self._teardown()
        self._loop.call_soon(self._call_connection_lost, None)

    def abort(self) -> None:
        """Close at once (the same as `close`: nothing is flushed on close)."""
        self.close()

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        if self._made:
            self._made = False
            self._protocol.connection_lost(exc)

    def _teardown(self) -> None:
        if self._directory is not None and self._address[:1] != b"\0":
            with contextlib.suppress(OSError):  # gone already: a peer took us for dead
                os.unlink(self._address)

        self._stop_reading()
        if self._uncork is not None:
            self._uncork.cancel()
            self._uncork = None

        self._corked.clear()
        for handle in self._reaping.values():
            handle.cancel()

        self._reaping.clear()
        for link in list(self._links.values()):
            self._close_link(link)

        self._close_inbound()

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if getattr(self, "_sock", None) is not None and not self._closing:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._closing = True
            self._teardown()

    def __repr__(self) -> str:
        state = "closing" if self._closing else "open"
        return f"<{type(self).__name__} {self._address!r} {state}>"

    # -- membership ---------------------------------------------------------

    def discover(self) -> list[bytes]:
        """List the other members' addresses (directory or ``/proc/net/unix``).

        :return: addresses to link to.
        :raises OSError: if the listing cannot be read.
        """
        return list_members(self._bus, self._directory, self._address)

    def has_link(self, address: bytes) -> bool:
        """Tell whether a link to ``address`` is open."""
        return address in self._links

    def open_link(self, address: bytes) -> None:
        """Connect a link to a peer's receiving socket.

        :param address: the peer's ``sun_path``.
        :raises PermissionError: if the peer's credentials are refused (seqpacket).
        :raises OSError: if the peer cannot be reached; a dead member's socket
            file is removed first.
        """
        if address in self._links or self._closing:
            return

        sock = socket.socket(socket.AF_UNIX, self._kind)
        try:
            sock.setblocking(False)
            self._prepare_link(sock)
            sock.connect(address)
            self._check_link(sock)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.ECONNREFUSED and remove_if_stale(address, self._kind):
                self.removed_stale += 1

            raise

        link = self._links[address] = _Link(address, sock)
        self._watch_link(link)

    def close_link(self, address: bytes) -> None:
        """Close the link to a peer (it left); its queued frames are dropped."""
        link = self._links.get(address)
        if link is not None:
            self._close_link(link)

    def queued(self, address: bytes) -> int:
        """Return how many messages wait in a link's queue (0 if no link)."""
        link = self._links.get(address)
        return len(link.queue) if link is not None else 0

    def discard_oldest(self, address: bytes) -> bool:
        """Drop the oldest queued message not yet started (for ``drop_oldest``).

        :return: ``True`` if one was dropped.
        """
        link = self._links.get(address)
        if link is None or not link.queue:
            return False

        queue = link.queue
        head = queue[0]
        if type(head) is list:
            if len(queue) < 2:
                return False

            victim = queue[1]  # the head's first fragments are already out
            del queue[1]
        else:
            victim = queue.popleft()

        self._dequeued(link, _size(victim))
        _dropped(victim)
        return True

    def clear_queue(self, address: bytes) -> int:
        """Drop every message queued for a peer (one partly sent is cut short).

        :return: how many were dropped.
        """
        link = self._links.get(address)
        if link is None:
            return 0

        dropped = len(link.queue)
        self._drop_queue(link)
        return dropped

    def send(self, address: bytes, message: Frames) -> bool:
        """Send one message to a peer, or queue it behind what is waiting.

        Never raises for a peer's trouble: a broken link is closed and reported
        by ``link_lost`` (soon, not from inside this call).

        :param address: the peer.
        :param message: a frame, or a list of fragments.
        :return: ``False`` if there is no link to ``address``.
        """
        link = self._links.get(address)
        if link is None:
            _dropped(message)
            return False

        if type(message) is bytes:
            self.send_frame(address, message)
            return True

        if link.queue:
            self._enqueue(link, message)
            return True

        if type(message) is FDFrame:
            try:
                link.sock.sendmsg([message.frame], message.ancdata)
            except (BlockingIOError, InterruptedError):
                self._enqueue(link, message)
                self._start_writing(link)
            except OSError as exc:
                message.done(False)
                self._send_failed(link, exc)
            else:
                message.done(True)

            return True

        assert isinstance(message, list)
        self._enqueue(link, list(message))  # sent from the front: our own copy
        self._flush(link)
        if link.queue and link.address in self._links:
            self._start_writing(link)

        return True

    def send_frame(self, address: bytes, frame: bytes) -> int:
        """Send one frame (no fds, no fragments) to a peer, or queue it: `send` made lean.

        :return: how many messages wait for that peer now (0 also if there is no link).
        """
        link = self._links.get(address)
        if link is None:
            return 0

        queue = link.queue
        if queue or link.corked:
            # Frames wait (the socket was full), or one went out to this peer this
            # loop turn: gather this one, to go out with them (coalesced) when the
            # socket has room or the turn ends. The first frame of a turn is never
            # held back.
            queue.append(frame)
            size = len(frame)
            link.size += size
            self._buffered += size
            if self._buffered > self._high_water and not self._writing_paused:
                self._check_water()

            return len(queue)

        try:
            link.sock.send(frame)
        except (BlockingIOError, InterruptedError):
            self._enqueue(link, frame)
            self._start_writing(link)
        except OSError as exc:
            self._send_failed(link, exc)
        else:
            if link.batch:
                self._cork(link)

        return len(queue)

    def flush_now(self, address: bytes) -> int:
        """Send what waits for a peer now if its socket may have room (not at the turn's end).

        Frames gathered in this loop turn are queued only to be coalesced: before
        a full queue makes a policy drop or wait, they go out.

        :return: how many messages still wait for that peer (0 if there is no link).
        """
        link = self._links.get(address)
        if link is None:
            return 0

        if link.queue and not link.writing:
            self._flush(link)
            if self._links.get(address) is not link:
                return 0  # the send failed and the link was closed

            if link.queue:
                self._start_writing(link)

        return len(link.queue)

    def set_batching(self, address: bytes, batch: bool) -> None:
        """Say whether the peer at ``address`` takes BATCH frames (its HELLO says).

        Frames for such a peer that are queued (its socket was full, or a frame
        already went to it this loop turn) go out coalesced, several to a BATCH.
        """
        link = self._links.get(address)
        if link is not None:
            link.batch = batch

    def set_batch_bytes(self, size: int) -> None:
        """Set the largest BATCH to build (bytes; at most `MAX_CONTROL_FRAME`; 0 never batches)."""
        if not 0 <= size <= MAX_CONTROL_FRAME:
            raise ValueError(f"a BATCH holds 0 to {MAX_CONTROL_FRAME} bytes, not {size}")

        self._batch_bytes = size

    def send_all(self, message: bytes) -> None:
        """Send one frame to every linked peer (control frames)."""
        for address in list(self._links):
            self.send(address, message)

    def total_queued(self) -> int:
        """Return the messages waiting in all link queues."""
        return sum(len(link.queue) for link in self._links.values())

    # -- internals ----------------------------------------------------------

    def _prepare_link(self, sock: socket.socket) -> None:
        """Set options on a link socket before it connects."""

    def _check_link(self, sock: socket.socket) -> None:
        """Check a freshly connected link (seqpacket: the listener's credentials)."""

    def _watch_link(self, link: _Link) -> None:
        """Start whatever reading a link needs (seqpacket: end-of-file)."""

    def _start_reading(self) -> None:
        raise NotImplementedError

    def _stop_reading(self) -> None:
        raise NotImplementedError

    def _close_inbound(self) -> None:
        raise NotImplementedError

    def _start_writing(self, link: _Link) -> None:
        if not link.writing:
            link.writing = True
            self._loop.add_writer(link.fd, self._write_ready, link)

    def _cork(self, link: _Link) -> None:
        link.corked = True
        self._corked.append(link)
        if self._uncork is None:
            self._uncork = self._loop.call_soon(self._uncork_links)

    def _uncork_links(self) -> None:
        """The loop turn ended: send what the corked links gathered."""
        self._uncork = None
        corked, self._corked = self._corked, []
        for link in corked:
            link.corked = False
            if link.writing or not link.queue or self._links.get(link.address) is not link:
                continue  # the writer sends it when the socket has room

            sent = self._flush(link)
            if self._links.get(link.address) is not link:
                continue  # the send failed and the link was closed

            if link.queue:
                self._start_writing(link)

            if sent:
                self._protocol.link_drained(link.address, len(link.queue))

    def _take_batch(self, link: _Link) -> tuple[int, int, bytes]:
        """Coalesce the frames at the head of the queue: (how many, their bytes, the BATCH).

        ``(0, 0, b"")`` if fewer than two frames fit one BATCH.
        """
        room = self._batch_bytes - 4  # the magic
        frames: list[bytes] = []
        size = 0
        for item in link.queue:
            if type(item) is not bytes:
                break

            room -= 2 + len(item)  # a length, the frame
            if room < 0:
                break

            frames.append(item)
            size += len(item)

        if len(frames) < 2:
            return 0, 0, b""

        return len(frames), size, encode_batch(frames)

    def _flush(self, link: _Link) -> bool:
        """Send queued messages until the socket is full; return whether any went."""
        queue = link.queue
        sock = link.sock
        sent = False
        while queue:
            item = queue[0]
            try:
                if type(item) is bytes:
                    count, size, batch = 0, 0, b""
                    if link.batch and len(queue) > 1:
                        count, size, batch = self._take_batch(link)

                    if count:
                        sock.send(batch)
                        for _ in range(count):
                            queue.popleft()

                        self._dequeued(link, size)
                        self.batches += 1
                        self.batched += count
                    else:
                        sock.send(item)
                        queue.popleft()
                        self._dequeued(link, len(item))
                elif type(item) is FDFrame:
                    sock.sendmsg([item.frame], item.ancdata)
                    queue.popleft()
                    self._dequeued(link, len(item))
                    item.done(True)
                else:
                    assert isinstance(item, list)
                    while item:
                        sock.send(item[0])
                        self._dequeued(link, len(item[0]))
                        del item[0]

                    queue.popleft()
            except (BlockingIOError, InterruptedError):
                return sent
            except OSError as exc:
                self._send_failed(link, exc)
                return sent

            sent = True

        return sent

    def _write_ready(self, link: _Link) -> None:
        if self._links.get(link.address) is not link:
            return

        sent = self._flush(link)
        if self._links.get(link.address) is not link:
            return  # the send failed and the link was closed

        if not link.queue:
            link.writing = False
            self._loop.remove_writer(link.fd)

        if sent:
            self._protocol.link_drained(link.address, len(link.queue))

    def _send_failed(self, link: _Link, exc: OSError) -> None:
        if exc.errno not in _PEER_GONE:
            # Not the peer's death (e.g. ENOBUFS): drop this message, keep the link.
            if link.queue:
                head = link.queue.popleft()
                self._dequeued(link, _size(head))
                _dropped(head)

            self._loop.call_soon(self._protocol.error_received, exc)
            return

        self._close_link(link)
        self.reap(link.address)
        self._loop.call_soon(self._report_link_lost, link.address, exc)

    def reap(self, address: bytes) -> None:
        """Remove a dead peer's socket file once nothing listens on it any more.

        A peer that leaves cleanly unlinks its file first; one that was killed
        leaves it. The kernel closes a dying process's sockets one by one, so its
        listener may still accept for a moment after its connections ended: probe
        now, and again after `_REAP_DELAYS` seconds if the file still answers.

        :param address: the peer's ``sun_path`` (abstract names are left alone).
        """
        if address[:1] in (b"", b"\0") or address in self._reaping or self._closing:
            return

        self._probe(address, 0)

    def _probe(self, address: bytes, attempt: int) -> None:
        self._reaping.pop(address, None)
        if self._closing:
            return

        if remove_if_stale(address, self._kind):
            self.removed_stale += 1
            return

        if attempt < len(_REAP_DELAYS) and os.path.lexists(address):
            delay = _REAP_DELAYS[attempt]
            self._reaping[address] = self._loop.call_later(delay, self._probe, address, attempt + 1)

    def _report_link_lost(self, address: bytes, exc: OSError | None) -> None:
        if not self._closing:
            self._protocol.link_lost(address, exc)

    def _close_link(self, link: _Link) -> None:
        if self._links.get(link.address) is link:
            del self._links[link.address]

        if link.writing:
            link.writing = False
            self._loop.remove_writer(link.fd)

        self._unwatch_link(link)
        self._drop_queue(link)
        link.sock.close()

    def _drop_queue(self, link: _Link) -> None:
        queue = list(link.queue)
        link.queue.clear()
        self._dequeued(link, link.size)
        for message in queue:
            _dropped(message)

    def _unwatch_link(self, link: _Link) -> None:
        """Stop reading a link (seqpacket)."""

    def _truncated(self, flags: int, fds: list[int] | None) -> bool:
        """Handle a frame cut short; return whether it is dropped.

        A frame larger than any a member sends is dropped. A frame whose fds
        did not all arrive (``MSG_CTRUNC``: our ``RLIMIT_NOFILE``, most likely)
        goes on with an empty fd list, the ones that came closed: the protocol
        counts it, and may owe its sender an answer (a SEGMENT's RELEASE).
        """
        if fds:
            _close_all(fds)
            fds.clear()

        if flags & _MSG_TRUNC:
            self.truncated += 1
            return True

        return False


class UNIXDatagramTransport(_UNIXBusTransport):
    """A ``unix:`` bus member: one SOCK_DGRAM receiving socket and a link per peer."""

    _kind = socket.SOCK_DGRAM

    def _setup(self) -> None:
        self._creds_cache: dict[bytes, Credentials] = {}

    def _prepare_link(self, sock: socket.socket) -> None:
        # With SO_PASSCRED the kernel binds the link to a unique abstract name on
        # connect ("autobind"), so the receiver can tell our frames from others'.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    def _start_reading(self) -> None:
        if self._sock is not None:
            self._loop.add_reader(self._sock.fileno(), self._read_ready)

    def _stop_reading(self) -> None:
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())

    def _close_inbound(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _read_ready(self) -> None:
        sock = self._sock
        if sock is None:
            return

        view = self._view
        buffers = [view]
        protocol = self._protocol
        cache = self._creds_cache
        for _ in range(_READ_BUDGET):
            if not self._reading:
                return

            try:
                size, ancdata, flags, source = sock.recvmsg_into(
                    buffers, _CREDENTIALS_SPACE + _FDS_SPACE, _CMSG_CLOEXEC
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                protocol.error_received(exc)
                return

            creds = None
            fds = None
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    creds = cache.get(data)
                    if creds is None:
                        if len(cache) >= 1024:
                            cache.clear()

                        creds = cache[data] = _UCRED.unpack_from(data)
                else:
                    fds = _received_fds(ancdata)

            if flags & (_MSG_TRUNC | _MSG_CTRUNC):
                if self._truncated(flags, fds):
                    continue

                fds = []

            self.received += 1
            protocol.frame_received(view[:size].tobytes(), source, creds, fds)
            if self._sock is None:
                return  # the protocol closed us


class _Inbound:
    """An accepted seqpacket connection (a source of frames)."""

    __slots__ = ("creds", "fd", "sock")

    def __init__(self, sock: socket.socket, creds: Credentials) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.creds = creds

    def __repr__(self) -> str:
        return f"<connection fd={self.fd} pid={self.creds[0]}>"


class UNIXSeqpacketTransport(_UNIXBusTransport):
    """A ``seqpacket:`` bus member: a listener, accepted connections, a link per peer."""

    _kind = socket.SOCK_SEQPACKET

    def _setup(self) -> None:
        self._inbound: dict[int, _Inbound] = {}
        self._scratch = bytearray(1)

    def _check_link(self, sock: socket.socket) -> None:
        creds = _credentials(sock)
        if not self._protocol.connection_allowed(creds):
            self.rejected += 1
            raise PermissionError(
                errno.EACCES, f"peer pid {creds[0]} uid {creds[1]} gid {creds[2]} is not allowed"
            )

    def _watch_link(self, link: _Link) -> None:
        self._loop.add_reader(link.fd, self._link_readable, link)

    def _unwatch_link(self, link: _Link) -> None:
        self._loop.remove_reader(link.fd)

    def _link_readable(self, link: _Link) -> None:
        # Peers never write on our link: readable means end of file or an error.
        try:
            size = link.sock.recv_into(self._scratch)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._send_failed(link, exc)
            return

        if size == 0:
            self._send_failed(link, ConnectionResetError(errno.ECONNRESET, "peer closed"))

    def _start_reading(self) -> None:
        if self._sock is None:
            return

        self._loop.add_reader(self._sock.fileno(), self._accept_ready)
        for inbound in self._inbound.values():
            self._loop.add_reader(inbound.fd, self._read_ready, inbound)

    def _stop_reading(self) -> None:
        if self._sock is None:
            return

        self._loop.remove_reader(self._sock.fileno())
        for inbound in self._inbound.values():
            self._loop.remove_reader(inbound.fd)

    def _close_inbound(self) -> None:
        for inbound in self._inbound.values():
            inbound.sock.close()

        self._inbound.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _accept_ready(self) -> None:
        listener = self._sock
        if listener is None:
            return

        for _ in range(_ACCEPT_BUDGET):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: leave it queued, report it
                self._protocol.error_received(exc)
                return

            try:
                conn.setblocking(False)
                creds = _credentials(conn)
            except OSError as exc:
                conn.close()
                self._protocol.error_received(exc)
                continue

            if not self._protocol.connection_allowed(creds):
                self.rejected += 1
                conn.close()
                continue

            inbound = self._inbound[conn.fileno()] = _Inbound(conn, creds)
            if self._reading:
                self._loop.add_reader(inbound.fd, self._read_ready, inbound)

    def _read_ready(self, inbound: _Inbound) -> None:
        sock = inbound.sock
        view = self._view
        buffers = [view]
        protocol = self._protocol
        for _ in range(_READ_BUDGET):
            if not self._reading or self._inbound.get(inbound.fd) is not inbound:
                return

            try:
                size, ancdata, flags, _ = sock.recvmsg_into(buffers, _FDS_SPACE, _CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._end_inbound(inbound, exc)
                return

            fds = _received_fds(ancdata) if ancdata else None
            if flags & (_MSG_TRUNC | _MSG_CTRUNC):
                if self._truncated(flags, fds):
                    continue

                fds = []

            if size == 0 and not fds and _hung_up(sock):
                self._end_inbound(inbound, None)
                return

            self.received += 1
            protocol.frame_received(view[:size].tobytes(), inbound, inbound.creds, fds)

    def _end_inbound(self, inbound: _Inbound, exc: OSError | None) -> None:
        if self._inbound.pop(inbound.fd, None) is not inbound:
            return

        self._loop.remove_reader(inbound.fd)
        inbound.sock.close()
        if exc is not None and exc.errno not in _PEER_GONE:
            self._protocol.error_received(exc)

        self._protocol.source_closed(inbound)


async def create_unix_endpoint(
    protocol_factory: Callable[[], UNIXBusProtocol],
    bus: UNIXAddress,
) -> tuple[UNIXDatagramTransport | UNIXSeqpacketTransport, UNIXBusProtocol]:
    """Bind this member's receiving socket on a unix bus and make its transport.

    Nothing is sent: the protocol discovers and greets the other members.

    :param protocol_factory: makes the protocol.
    :param bus: the bus address.
    :return: the transport and its protocol (``connection_made`` was called).
    :raises BusPermissionError: for an unsafe or inaccessible bus directory.
    :raises InvalidURLError: if socket paths would be too long.
    :raises OSError: if the kernel refuses the socket.
    """
    if not sys.platform.startswith("linux") and bus.abstract:
        raise OSError(errno.EAFNOSUPPORT, "abstract unix sockets exist on Linux only")

    loop = asyncio.get_running_loop()
    directory = None if bus.abstract else bus_directory(bus)
    kind = _SOCKET_TYPES[bus.scheme]
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        sock.setblocking(False)
        if kind == socket.SOCK_DGRAM:
            # Before bind: no frame may arrive without its sender's credentials.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

        address, bound = _bind(sock, bus, directory)
        try:
            if kind == socket.SOCK_SEQPACKET:
                sock.listen(_LISTEN_BACKLOG)

            if bound != address:
                os.rename(bound, address)  # ready: now members may find it
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(bound)

            raise
    except BaseException:
        sock.close()
        raise

    protocol = protocol_factory()
    cls = UNIXDatagramTransport if kind == socket.SOCK_DGRAM else UNIXSeqpacketTransport
    try:
        transport = cls(loop, sock, protocol, address=address, directory=directory, bus=bus)
    except BaseException:
        sock.close()
        if directory is not None:
            with contextlib.suppress(OSError):
                os.unlink(address)

        raise

    transport._made = True
    protocol.connection_made(transport)
    transport._start_reading()
    return transport, protocol


def _bind(sock: socket.socket, bus: UNIXAddress, directory: str | None) -> tuple[bytes, bytes]:
    """Bind a member socket; return (its address, the path it is bound to now).

    In a directory the socket is bound under a hidden name (``.NAME``), which
    members do not list, and renamed once it is ready: a seqpacket socket that is
    bound but not yet listening refuses connections like a dead one, and a
    member probing it would remove its file.
    """
    for _ in range(8):  # a clash of random names is all but impossible; retry anyway
        name = _member_name()
        if directory is None:
            address = bound = _abstract_prefix(bus) + name.encode()
        else:
            address = os.fsencode(os.path.join(directory, name))
            bound = os.fsencode(os.path.join(directory, "." + name))
            if os.path.lexists(address):
                continue

        try:
            sock.bind(bound)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                continue

            if exc.errno in (errno.EACCES, errno.EPERM):
                raise BusPermissionError(
                    f"cannot create a socket in bus directory {directory!r}: {exc.strerror}"
                ) from exc

            raise

        if directory is not None:
            os.chmod(bound, 0o600)  # only this user may connect (and the dir is 0700)

        return address, bound

    raise OSError(errno.EADDRINUSE, "no free member name on this bus")
