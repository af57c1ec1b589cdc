"""Helpers shared by ``tests/test_api.py`` and ``tests/test_udpm.py``.

* :func:`free_url`: a private loopback bus per test, so tests never hear each other
  (nor other test runs on the same host).
* :func:`receive`, :func:`fence`, :func:`wait_until`: waiting with a bound, never a
  blind sleep.
* :class:`RawSender`, :class:`RawListener`, :func:`lc02`, :func:`lc03`: a foreign
  peer made of a plain UDP socket, for byte-level checks.
* :class:`Child`: a bus member in a separate process (``tests/_peers_bus/peer.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import itertools
import json
import os
import random
import select
import signal
import socket
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import uvloop

import asyncbus
from tests._peers_bus.peer import digest, payload

# libuv opens a process-wide pipe (its signal lock) when the first uvloop loop is made,
# and never closes it. Made during a test, it looks like a leak to conftest's fd check;
# make it now, at import, before any test counts descriptors.
uvloop.new_event_loop().close()

__all__ = [
    "GROUP",
    "NO_LOOPBACK_MULTICAST",
    "TIMEOUT",
    "Child",
    "RawListener",
    "RawSender",
    "can_buffer",
    "digest",
    "fence",
    "free_port",
    "free_url",
    "lc02",
    "lc03",
    "loopback_multicast_works",
    "payload",
    "receive",
    "wait_until",
]

GROUP = "239.255.76.67"  # LCM's default group; every test gets a port of its own
TIMEOUT = 10.0  # seconds one step may take on a loaded 2-core machine
ROOT = Path(__file__).resolve().parent.parent
LC02 = struct.Struct(">4sI")  # magic, seq (LCM short message header)
LC03 = struct.Struct(">4sIIIHH")  # magic, seq, size, offset, index, count

_ports_given: set[int] = set()
_random = random.SystemRandom()  # not seeded: parallel test runs must not pick alike
_fences = itertools.count()


def free_port() -> int:
    """Return a UDP port in 20000-60000 that nothing on this host is bound to now.

    A port is free if a socket without ``SO_REUSEADDR`` can bind it: a bus's receive
    socket (``SO_REUSEADDR``, bound to the group) makes that fail. Ports already
    handed out in this session are not handed out again.

    :return: the port.
    """
    for _ in range(1000):
        port = _random.randint(20000, 60000)
        if port in _ports_given:
            continue

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    continue

                raise

        _ports_given.add(port)
        return port

    raise RuntimeError("no free UDP port in 20000-60000")


def free_url(**options: str | int) -> str:
    """Return the URL of a loopback bus that no other test uses.

    :param options: extra query options, e.g. ``recv_buf_size=4096``.
    :return: ``udpm://239.255.76.67:PORT?ttl=0[&option=value...]``.
    """
    query = "".join(f"&{name}={value}" for name, value in options.items())
    return f"udpm://{GROUP}:{free_port()}?ttl=0{query}"


def group_of(url: str) -> tuple[str, int]:
    """Return the ``(group, port)`` a ``udpm`` URL names.

    :param url: a URL from :func:`free_url`.
    :return: the multicast destination.
    """
    host, _, rest = url.removeprefix("udpm://").partition(":")
    return host, int(rest.partition("?")[0])


async def receive(sub: asyncbus.Subscription, within: float = TIMEOUT) -> asyncbus.Message:
    """Receive one message, failing the test if none comes within ``within`` seconds.

    :param sub: the subscription.
    :param within: seconds.
    :return: the message.
    """
    async with asyncio.timeout(within):
        return await sub.receive()


async def receive_many(
    sub: asyncbus.Subscription, count: int, within: float = TIMEOUT
) -> list[asyncbus.Message]:
    """Receive ``count`` messages within ``within`` seconds in all.

    :param sub: the subscription.
    :param count: how many.
    :param within: seconds.
    :return: the messages, in order.
    """
    async with asyncio.timeout(within):
        return [await sub.receive() for _ in range(count)]


async def fence(receiver: asyncbus.Bus, sender: asyncbus.Bus) -> None:
    """Return once ``receiver`` has processed every datagram that reached it before now.

    ``sender`` publishes on a fresh topic that ``receiver`` subscribed to; a socket
    is a FIFO, so when that message comes out, everything queued before it has been
    read (and delivered, filtered or counted). On loopback a datagram is in the
    receiving socket by the time ``sendto`` returns.

    The fence message itself counts in ``receiver``'s statistics (one ``received``,
    one ``datagrams``, one ``delivered``).

    :param receiver: the bus to synchronize with.
    :param sender: another bus on the same URL.
    """
    topic = f"fence/{next(_fences)}"
    async with receiver.subscribe(topic) as sub:
        await sender.publish(topic, b"")
        await receive(sub)


async def wait_until(condition: Callable[[], bool], within: float = TIMEOUT) -> None:
    """Poll ``condition`` until it holds, failing the test after ``within`` seconds.

    Only for conditions with no event to wait on (a timer inside the bus, say).

    :param condition: returns ``True`` when done.
    :param within: seconds.
    """
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110  # polling is the point: there is no event
            await asyncio.sleep(0.02)


@contextlib.contextmanager
def capture_loop_errors() -> Iterator[list[dict[str, Any]]]:
    """Collect what reaches the running loop's exception handler, to assert on it in a test.

    (conftest fails a test with such errors only after it ended, which an ``xfail``
    mark does not cover.)

    :return: the list that the handler's contexts are appended to.
    """
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        yield errors
    finally:
        loop.set_exception_handler(previous)


def lc02(seq: int, channel: str | bytes, data: bytes = b"") -> bytes:
    """Build an LCM short message (``LC02``) datagram.

    :param seq: the sequence number.
    :param channel: the channel (bytes are used as they are).
    :param data: the payload.
    :return: the datagram.
    """
    raw = channel.encode() if isinstance(channel, str) else channel
    return LC02.pack(b"LC02", seq) + raw + b"\0" + data


def lc03(
    seq: int, size: int, offset: int, index: int, count: int, body: bytes, channel: str | None
) -> bytes:
    """Build an LCM fragment (``LC03``) datagram.

    :param seq: the message's sequence number.
    :param size: the whole payload's size.
    :param offset: where ``body`` starts in the payload.
    :param index: the fragment's number.
    :param count: how many fragments the message has.
    :param body: the fragment's payload bytes.
    :param channel: the channel, for fragment 0 (``None`` for the others).
    :return: the datagram.
    """
    prefix = b"" if channel is None else channel.encode() + b"\0"
    return LC03.pack(b"LC03", seq, size, offset, index, count) + prefix + body


class RawSender:
    """A foreign bus member: a plain UDP socket sending to the group on loopback."""

    def __init__(self, url: str) -> None:
        """Open the socket.

        :param url: the bus to send to.
        """
        self.destination = group_of(url)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        self.socket.setsockopt(
            socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1")
        )
        self.socket.bind(("127.0.0.1", 0))
        host, port = self.socket.getsockname()
        self.address = f"{host}:{port}"

    def send(self, datagram: bytes) -> None:
        """Send one datagram to the group.

        :param datagram: the bytes.
        """
        self.socket.sendto(datagram, self.destination)

    def close(self) -> None:
        """Close the socket."""
        self.socket.close()

    def __enter__(self) -> RawSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RawListener:
    """A foreign bus member that receives: a plain UDP socket joined to the group."""

    def __init__(self, url: str, recv_buf_size: int = 8 * 2**20) -> None:
        """Bind to the group's port and join the group on loopback.

        :param url: the bus to listen to.
        :param recv_buf_size: the receive buffer to ask for.
        """
        group, port = group_of(url)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with contextlib.suppress(OSError):  # SO_RCVBUFFORCE needs CAP_NET_ADMIN
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buf_size)
                self.socket.setsockopt(socket.SOL_SOCKET, 33, recv_buf_size)  # SO_RCVBUFFORCE
            self.socket.bind((group, port))
            membership = socket.inet_aton(group) + socket.inet_aton("127.0.0.1")
            self.socket.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
            self.socket.setblocking(False)
        except BaseException:
            self.socket.close()
            raise

    async def receive(self, within: float = TIMEOUT) -> tuple[bytes, str]:
        """Receive one datagram.

        :param within: seconds to wait for it.
        :return: ``(datagram, "host:port" of its sender)``.
        """
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(within):
            while True:
                try:
                    data, (host, port) = self.socket.recvfrom(2**16)
                except BlockingIOError:
                    pass
                else:
                    return data, f"{host}:{port}"

                readable = loop.create_future()
                loop.add_reader(self.socket.fileno(), _set_once, readable)
                try:
                    await readable
                finally:
                    loop.remove_reader(self.socket.fileno())

    def close(self) -> None:
        """Close the socket."""
        self.socket.close()

    def __enter__(self) -> RawListener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@functools.cache
def loopback_multicast_works() -> bool:
    """Tell whether a datagram sent to a multicast group on loopback comes back here.

    Checked once per session, with plain sockets.

    :return: ``True`` if it does.
    """
    url = free_url()
    try:
        with RawListener(url) as listener, RawSender(url) as sender:
            sender.send(b"probe")
            readable, _, _ = select.select([listener.socket], [], [], 2.0)
            return bool(readable) and listener.socket.recv(16) == b"probe"
    except OSError:
        return False


NO_LOOPBACK_MULTICAST = (
    "multicast on the loopback interface does not work here: bring lo up "
    "(ip link set lo up) and allow IPv4 multicast on it (no firewall dropping 224.0.0.0/4)"
)


def can_buffer(size: int) -> bool:
    """Tell whether a bus here can get a receive buffer of ``size`` bytes.

    As root ``SO_RCVBUFFORCE`` gets any size; otherwise ``net.core.rmem_max`` caps
    ``SO_RCVBUF`` (and the kernel doubles what it grants).

    :param size: bytes a burst needs.
    :return: ``True`` if a socket can hold that much.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, 33, size)  # SO_RCVBUFFORCE
        except OSError:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

        granted: int = probe.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        return granted >= size


def child_environment() -> dict[str, str]:
    """Return the environment of a child process: this checkout importable, no stray URL.

    :return: the environment.
    """
    env = {key: value for key, value in os.environ.items() if key != "ASYNCBUS_URL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class Child:
    """A bus member in a separate process, ``python -m tests._peers_bus.peer ARGS``.

    Use it as ``async with Child(...) as child``: leaving kills it if it still runs
    and closes its pipe. Its stdout and stderr are one stream of lines: the JSON
    events of ``tests/_peers_bus/peer.py`` and anything else (a traceback), which
    failures quote.
    """

    def __init__(self, *args: str) -> None:
        """Describe the process; it starts on entering the context.

        :param args: the peer's arguments (``sub URL TOPIC COUNT`` or ``pub URL TOPIC SIZE...``).
        """
        self.args = args
        self.output: list[str] = []
        self._process: asyncio.subprocess.Process | None = None

    module = "tests._peers_bus.peer"
    """The module the process runs (``python -m``)."""
    stdin: int = asyncio.subprocess.DEVNULL
    """What the process reads: ``asyncio.subprocess.PIPE`` to send it commands."""

    def arguments(self) -> list[str]:
        """Return the process's arguments after the module (subclasses add options)."""
        return list(self.args)

    async def __aenter__(self) -> Self:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-W",
            "error::ResourceWarning",
            "-m",
            self.module,
            *self.arguments(),
            stdin=self.stdin,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=ROOT,
            env=child_environment(),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)  # a stopped process dies only when resumed
                process.kill()

        if process.stdin is not None:
            process.stdin.close()

        await process.stdout.read()
        await process.wait()

    async def event(self, name: str, within: float = TIMEOUT) -> dict[str, Any]:
        """Return the next event called ``name``, skipping other events.

        :param name: ``"ready"``, ``"message"`` or ``"done"``.
        :param within: seconds to wait for it.
        :return: the event.
        """
        process = self._process
        assert process is not None and process.stdout is not None
        try:
            async with asyncio.timeout(within):
                while True:
                    line = await process.stdout.readline()
                    if not line:
                        break

                    text = line.decode(errors="replace").rstrip("\n")
                    self.output.append(text)
                    try:
                        event = json.loads(text)
                    except ValueError:
                        continue

                    if isinstance(event, dict) and event.get("event") == name:
                        return event
        except TimeoutError:
            pass

        output = "\n".join(self.output)
        raise AssertionError(
            f"{self.module} {self.args} never said {name!r}; its output:\n{output}"
        )

    async def events(self, name: str, count: int, within: float = TIMEOUT) -> list[dict[str, Any]]:
        """Return the next ``count`` events called ``name``.

        :param name: the event.
        :param count: how many.
        :param within: seconds for all of them.
        :return: the events, in order.
        """
        async with asyncio.timeout(within):
            return [await self.event(name, within) for _ in range(count)]

    async def exit_code(self, within: float = TIMEOUT) -> int:
        """Wait for the process to end.

        :param within: seconds.
        :return: its exit code.
        """
        process = self._process
        assert process is not None and process.stdout is not None
        async with asyncio.timeout(within):
            for line in (await process.stdout.read()).decode(errors="replace").splitlines():
                self.output.append(line)

            return await process.wait()
