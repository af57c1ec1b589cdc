"""The transports of the conformance suite, their capabilities, and test helpers.

* `Kind`: one transport and its capability flags. `KINDS` lists them; the
  ``transport`` fixture (``conftest.py``) runs each test once per kind, and the
  ``transports`` mark narrows that to the kinds with given flags.
* `Transport`: a kind bound to a private bus for one test (`Transport.url`).
* `Member`: a bus member in a separate process (``tests/conformance/member.py``).
* `RawPeer`: a socket that is no bus member, to send a member any bytes.
* `Publisher`: a task that publishes numbered messages until told to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import os
import signal
import socket
from dataclasses import dataclass

import uvloop

import asyncbus
from tests._bus_support import (
    TIMEOUT,
    Child,
    RawSender,
    group_of,
    wait_until,
)
from tests.conformance.member import index_of, payload

__all__ = [
    "CAPABILITIES",
    "KINDS",
    "TIMEOUT",
    "Kind",
    "Member",
    "Publisher",
    "RawPeer",
    "Transport",
    "drain",
    "index_of",
    "payload",
    "take_socket",
]

ABSTRACT_PREFIX = "asyncbus/"  # Linux abstract names of bus members: "\0asyncbus/NAME/..."


@dataclass(frozen=True, slots=True)
class Kind:
    """One transport of the suite and what it can do.

    :ivar id: the test id.
    :ivar scheme: the URL scheme.
    :ivar abstract: the bus lives in Linux's abstract socket namespace.
    :ivar lossless: nothing is lost between members: a full receiver makes the
        sender wait or drop by the receiver's policy, counted on both sides
        (``udpm`` is best effort: the kernel drops).
    :ivar membership: members know each other: ``wait_peers``,
        ``wait_subscribers``, ``peers``, ``peers_lost`` (``udpm`` members are
        anonymous and these raise `asyncbus.UnsupportedError`).
    :ivar credentials: ``Message.sender`` has the kernel-attested pid, uid, gid.
    :ivar peer_policies: a subscriber's overflow policy applies at the publisher
        when the subscriber's socket is full (``peer_queue``, ``stall_timeout``).
    :ivar socket_files: every member has a socket file in the bus directory.
    :ivar frames_over_64k: a raw peer can send a frame larger than any LCM
        datagram (AF_UNIX; an IPv4 UDP payload stops at 65,507 bytes).
    :ivar per_link_seq: sequence numbers count per publisher-to-subscriber link
        (what one subscriber was sent), not per publisher.
    :ivar publisher_filters: publishers send a message only to the members whose
        subscriptions match its topic (``udpm`` sends everything to everyone,
        and each member drops what it did not subscribe to).
    :ivar connections: members are connected (``seqpacket``): a member's death
        is seen at once, as the end of its connections, with nothing to send
        (``unix`` sees it at the next send to it).
    """

    id: str
    scheme: str
    abstract: bool = False
    lossless: bool = False
    membership: bool = False
    credentials: bool = False
    peer_policies: bool = False
    socket_files: bool = False
    frames_over_64k: bool = False
    per_link_seq: bool = False
    publisher_filters: bool = False
    connections: bool = False


_UNIX = {
    "lossless": True,
    "membership": True,
    "credentials": True,
    "peer_policies": True,
    "frames_over_64k": True,
    "per_link_seq": True,
    "publisher_filters": True,
}

KINDS: tuple[Kind, ...] = (
    Kind("udpm", "udpm"),
    Kind("unix-abstract", "unix", abstract=True, **_UNIX),
    Kind("unix-directory", "unix", socket_files=True, **_UNIX),
    Kind("seqpacket-abstract", "seqpacket", abstract=True, connections=True, **_UNIX),
    Kind("seqpacket-directory", "seqpacket", socket_files=True, connections=True, **_UNIX),
)

CAPABILITIES = tuple(f.name for f in dataclasses.fields(Kind) if f.type == "bool")


@dataclass(frozen=True, slots=True)
class Transport(Kind):
    """A kind bound to a bus that no other test uses.

    :ivar base: the bus URL without its query.
    :ivar directory: the bus directory (directory buses).
    :ivar name: the bus name (abstract buses).
    """

    base: str = ""
    directory: str | None = None
    name: str | None = None

    def url(self, **options: str | int | float) -> str:
        """Return the bus URL with these options in its query.

        :param options: transport options (``peer_queue``, ``stall_timeout``...).
        :return: the URL.
        """
        query: dict[str, str | int | float] = {"ttl": 0} if self.scheme == "udpm" else {}
        query.update(options)
        text = "&".join(f"{key}={value}" for key, value in query.items())
        return f"{self.base}?{text}" if text else self.base

    async def subscribed(self, bus: asyncbus.Bus, topic: str, count: int = 1) -> None:
        """Return once ``count`` members' subscriptions to ``topic`` reached ``bus``.

        Without membership there is nothing to wait for: a ``udpm`` subscriber
        hears what is sent from the moment its ``subscribe()`` returned.

        :param bus: the publishing bus.
        :param topic: the topic.
        :param count: how many subscribers.
        """
        if self.membership:
            async with asyncio.timeout(TIMEOUT):
                await bus.topic(topic).wait_subscribers(count)

    def socket_address(self, address: str) -> bytes:
        """Return the ``sun_path`` of a member from its ``Sender.address``.

        :param address: ``@name`` (abstract) or a path.
        :return: the raw address.
        """
        if address.startswith("@"):
            return b"\0" + address[1:].encode()

        return os.fsencode(address)

    def leftovers(self) -> list[str]:
        """Return what members of this bus left behind.

        :return: the member names in the bus directory or the abstract namespace
            (``PID-RANDOM``), or the bound UDP port; empty when the bus is gone.
        """
        if self.directory is not None:
            return sorted(os.listdir(self.directory))

        if self.abstract:
            prefix = f"@{ABSTRACT_PREFIX}{self.name}/"
            with open("/proc/net/unix", encoding="utf-8", errors="replace") as table:
                names = {field for line in table for field in line.split()[7:8]}

            return sorted(name[len(prefix) :] for name in names if name.startswith(prefix))

        _, port = group_of(self.url())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError as exc:
                return [f"UDP port {port} is still bound ({exc.strerror})"]

        return []

    def raw_peer(self, member: asyncbus.Bus) -> RawPeer:
        """Return a socket that is no bus member, sending to ``member``.

        :param member: an open bus.
        :return: the peer (close it).
        """
        assert member.sender is not None
        if self.scheme == "udpm":
            return RawPeer(None, RawSender(self.url()))

        kind = socket.SOCK_DGRAM if self.scheme == "unix" else socket.SOCK_SEQPACKET
        sock = socket.socket(socket.AF_UNIX, kind)
        try:
            sock.connect(self.socket_address(member.sender.address))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise

        return RawPeer(sock, None)


class RawPeer:
    """A socket sending frames to a bus member without speaking the bus protocol."""

    def __init__(self, sock: socket.socket | None, multicast: RawSender | None) -> None:
        self._sock = sock
        self._multicast = multicast

    async def send(self, frame: bytes) -> None:
        """Send one frame (datagram or record), waiting while the receiver is full.

        :param frame: the bytes.
        """
        if self._multicast is not None:
            self._multicast.send(frame)
            return

        sock = self._sock
        assert sock is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock.send(frame)  # not loop.sock_sendall: uvloop sends nothing for b""
                return
            except BlockingIOError:
                pass

            # A unix datagram receiver holds max_dgram_qlen (often 10): wait, in
            # the loop, for the member (maybe in this loop too) to read.
            writable = loop.create_future()
            loop.add_writer(sock.fileno(), _resolve, writable)
            try:
                await writable
            finally:
                loop.remove_writer(sock.fileno())

    def close(self) -> None:
        """Close the socket."""
        if self._multicast is not None:
            self._multicast.close()

        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Member(Child):
    """A bus member in a separate process, ``python -m tests.conformance.member ARGS``.

    It runs on the same kind of loop as the test, and reads commands on stdin. Use
    it as ``async with Member(...) as member``: leaving kills it if it still runs
    (resuming it first if it was stopped) and closes its pipes. Its stdout and
    stderr are one stream of lines, quoted by failures.
    """

    module = "tests.conformance.member"
    stdin = asyncio.subprocess.PIPE

    def arguments(self) -> list[str]:
        """Return the member's arguments, with the test's kind of loop first."""
        loop = "uvloop" if isinstance(asyncio.get_running_loop(), uvloop.Loop) else "asyncio"
        return ["--loop", loop, *self.args]

    @property
    def pid(self) -> int:
        """The process id."""
        assert self._process is not None
        return self._process.pid

    def send_signal(self, number: int) -> None:
        """Send the process a signal (``SIGSTOP``, ``SIGCONT``...).

        :param number: the signal.
        """
        assert self._process is not None
        self._process.send_signal(number)

    def state(self) -> str:
        """Return the process's state letter from ``/proc/PID/stat`` (``T``: stopped).

        :return: the letter.
        """
        with open(f"/proc/{self.pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rpartition(")")[2].split()[0]

    async def stop(self) -> None:
        """SIGSTOP the process and return once it is stopped (it reads nothing more)."""
        self.send_signal(signal.SIGSTOP)
        await wait_until(lambda: self.state() == "T")  # no event tells a stop

    def resume(self) -> None:
        """SIGCONT the process."""
        self.send_signal(signal.SIGCONT)

    async def kill(self) -> None:
        """SIGKILL the process and wait until it is gone (its sockets with it)."""
        assert self._process is not None
        self._process.kill()
        async with asyncio.timeout(TIMEOUT):
            await self._process.wait()

    async def command(self, line: str) -> None:
        """Write one line to the process's stdin.

        :param line: the command, without newline.
        """
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(line.encode() + b"\n")
        await self._process.stdin.drain()


class Publisher:
    """Publish ``payload(i, size)`` for i = 0, 1, 2... in a task, until `stop`.

    It yields to the loop after each message, so the test can act between two.

    :ivar started: how many ``publish()`` calls began. Every message with a
        smaller index has been handed to the kernel (or queued for the members
        known then) whenever the test runs.
    """

    def __init__(self, bus: asyncbus.Bus, topic: str, size: int = 64) -> None:
        self.started = 0
        self._topic = bus.topic(topic)
        self._size = size
        self._stop = asyncio.Event()
        self._milestones: dict[int, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            index = self.started
            self.started += 1
            await self._topic.publish(payload(index, self._size))
            for mark, event in self._milestones.items():
                if self.started >= mark:
                    event.set()

            await asyncio.sleep(0)

    def start(self) -> None:
        """Start the task."""
        self._task = asyncio.create_task(self._run())

    async def reached(self, count: int) -> None:
        """Wait until ``count`` messages were published.

        :param count: how many.
        """
        event = self._milestones.setdefault(count, asyncio.Event())
        if self.started >= count:
            event.set()

        async with asyncio.timeout(TIMEOUT):
            await event.wait()

    async def stop(self) -> int:
        """Stop publishing.

        :return: how many messages were published.
        """
        self._stop.set()
        assert self._task is not None
        async with asyncio.timeout(TIMEOUT):
            await self._task

        return self.started


_SYS_PIDFD_GETFD = 438  # include/uapi/asm-generic/unistd.h, Linux 5.6, every architecture


def take_socket(pid: int, path: str) -> socket.socket:
    """Duplicate another process's socket bound to ``path`` into this process.

    A member's socket lives on, unreachable and unused, as long as the copy
    is open; with it a test stretches the moment between a process's death
    and the kernel's release of its sockets.

    :param pid: the process (a child of this one, or run as root).
    :param path: the socket's bound path (a socket file).
    :return: the copy, which the caller closes.
    :raises OSError: if the kernel refuses (``pidfd_getfd`` needs Linux 5.6 and
        ptrace rights over the process) or no such socket exists.
    """
    # A directory member binds under a hidden name (".NAME") and renames its file
    # when ready; /proc/net/unix shows the name it was bound to.
    directory, name = os.path.split(path)
    names = {path, os.path.join(directory, "." + name)}
    with open("/proc/net/unix", encoding="utf-8", errors="replace") as table:
        rows = [f for f in (line.split() for line in table) if f[7:8] and f[7] in names]

    # Accepted connections show their listener's name too: take the listener
    # (Flags has __SO_ACCEPTCON, 0x10000) when there is one.
    rows.sort(key=lambda f: not int(f[3], 16) & 0x10000)
    inodes = [f[6] for f in rows]

    if not inodes:
        raise FileNotFoundError(errno.ENOENT, "no socket bound there", path)

    target = f"socket:[{inodes[0]}]"
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{name}") == target:
                break
    else:
        raise FileNotFoundError(errno.ENOENT, f"process {pid} holds no socket bound there", path)

    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        fd = libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(name), 0)
    finally:
        os.close(pidfd)

    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"pidfd_getfd: {os.strerror(code)}")

    return socket.socket(fileno=fd)


def drain(sub: asyncbus.Subscription) -> list[asyncbus.Message]:
    """Take everything queued in a subscription, without waiting.

    :param sub: the subscription.
    :return: the messages.
    """
    taken = []
    while True:
        try:
            taken.append(sub.receive_nowait())
        except asyncbus.WouldBlock:
            return taken
