"""A bus member that is not asyncbus: ``tests/peers/unix_peer.c`` against asyncbus.

The C program is written from ``docs/protocol.md`` alone (plain POSIX and Linux
calls, no libraries), so these tests check that the page says enough to join a
``unix:`` or ``seqpacket:`` bus, abstract or in a directory, and that asyncbus
keeps to it: discovery, HELLO and its answer, SUBSCRIBE, per-link sequence numbers
from 0, ``LC02`` and ``LC03`` both ways, kernel-attested credentials, BYE, a gap
where a publisher dropped, death and stale socket files.

The peer runs as a separate process and talks to the test on its stdout, one line
per event (see the comment at the top of the C file). Every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

import asyncbus
from tests.conftest import require

TIMEOUT = 10.0  # seconds one step may take on a loaded 2-core machine
SOURCE = Path(__file__).resolve().parent / "peers" / "unix_peer.c"
C_SIZES = [5, 100_000, 0]  # what the C peer publishes: short, fragmented (LC03), empty
TO_C = [b"hello", bytes(range(256)) * 300, b""]  # short, fragmented (76,800 bytes), empty
URLS = [
    ("unix", "abstract"),
    ("unix", "directory"),
    ("seqpacket", "abstract"),
    ("seqpacket", "directory"),
]
URL_IDS = [f"{scheme}-{kind}" for scheme, kind in URLS]
_names = itertools.count()


@pytest.fixture(scope="module")
def peer_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Compile the C peer once per module."""
    gcc = shutil.which("gcc")
    require(gcc, "gcc is missing: install it (apt-get install gcc) to build the C peer")
    assert gcc is not None
    program = tmp_path_factory.mktemp("unix-peer") / "unix_peer"
    flags = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"]
    compiled = subprocess.run(
        [gcc, *flags, "-o", str(program), str(SOURCE)], capture_output=True, text=True, check=False
    )
    assert compiled.returncode == 0, f"gcc failed:\n{compiled.stderr}"
    return program


@pytest.fixture
def bus_dir() -> Iterator[str]:
    # Short: socket paths are limited to 108 bytes.
    with tempfile.TemporaryDirectory(prefix="abc-", dir="/tmp") as directory:
        os.chmod(directory, 0o700)
        yield directory


@pytest.fixture(params=URLS, ids=URL_IDS)
def url(request: pytest.FixtureRequest, bus_dir: str) -> str:
    scheme, kind = request.param
    if kind == "directory":
        return f"{scheme}://{bus_dir}"

    return f"{scheme}:@cpeer-{os.getpid()}-{next(_names)}"


def _exists(path: str) -> bool:
    """Tell whether a file exists (sync: lint keeps file I/O out of async code)."""
    return os.path.lexists(path)


def payload(index: int, size: int) -> bytes:
    """What the C peer publishes as message ``index``: byte k is (7 * index + k) mod 256."""
    return bytes((7 * index + k) % 256 for k in range(size))


def members_left(url: str) -> list[str]:
    """Return the socket files or abstract names still on a bus (none after a clean end)."""
    target = url.partition(":")[2]
    if target.startswith("//"):
        return sorted(os.listdir(target[2:]))

    prefix = f"@asyncbus/{target[1:]}/"
    with open("/proc/net/unix") as table:
        paths = {line.split()[7] for line in table if len(line.split()) >= 8}

    # A set: a seqpacket listener's accepted connections show its name too.
    return sorted(path for path in paths if path.startswith(prefix))


async def settled_members(url: str, expected: list[str], within: float = 3.0) -> list[str]:
    """Return ``members_left(url)`` once it is ``expected``, or as it is after ``within`` s.

    A dead member's file may go a moment after the member is forgotten (its listener
    can close after its connections), and no event tells when: this polls.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (found := members_left(url)) != expected and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)  # polling is the point: a file going away is no event

    return found


async def wait_peers_below(bus: asyncbus.Bus, count: int) -> None:
    """Wait until ``bus`` knows fewer than ``count`` peers.

    The public API waits only for peers to come (``wait_peers``); the member
    protocol's ``wait_until`` wakes at every membership change, leaving included.
    """
    unix = bus._unix
    assert unix is not None
    async with asyncio.timeout(TIMEOUT):
        await unix.wait_until(lambda: unix.peer_count() < count)


class CPeer:
    """The C peer as a child process; ``async with`` kills it if still running and reaps it."""

    def __init__(self, program: Path, url: str, *args: str) -> None:
        self.argv = [str(program), url, "--deadline", str(3 * TIMEOUT), *args]
        self.lines: list[str] = []
        self.address = ""
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def __aenter__(self) -> CPeer:
        self._process = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=1 << 20,  # a "msg" line holds its payload in hex
        )
        self.address = (await self.line("ready")).split(" ", 1)[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        process = self._process
        assert process is not None
        assert process.stdin is not None and process.stdout is not None
        assert process.stderr is not None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()

        process.stdin.close()
        await process.stdout.read()
        await process.stderr.read()
        await process.wait()

    def _failure(self, what: str) -> AssertionError:
        output = "\n".join(line[:200] for line in self.lines)
        return AssertionError(f"{self.argv}: {what}; its output so far:\n{output}")

    async def line(self, prefix: str, within: float = TIMEOUT) -> str:
        """Return the next line that starts with ``prefix`` (other lines are kept in ``lines``)."""
        process = self._process
        assert process is not None and process.stdout is not None
        try:
            async with asyncio.timeout(within):
                while raw := await process.stdout.readline():
                    text = raw.decode().rstrip("\n")
                    self.lines.append(text)
                    if text.split(" ", 1)[0] == prefix:
                        return text
        except TimeoutError:
            raise self._failure(f"no {prefix!r} line within {within} s") from None

        assert process.stderr is not None
        stderr = (await process.stderr.read()).decode(errors="replace")
        raise self._failure(f"exited before a {prefix!r} line; stderr: {stderr}")

    async def message(self) -> tuple[int, str, bytes]:
        """Return the next message the peer printed: sequence number, topic, payload."""
        _, seq, topic, size, *data = (await self.line("msg")).split(" ")
        body = bytes.fromhex(data[0] if data else "")
        assert len(body) == int(size)
        return int(seq), topic, body

    def say(self, text: str) -> None:
        """Write a line to the peer's stdin (``--hold`` waits for one)."""
        process = self._process
        assert process is not None and process.stdin is not None
        process.stdin.write(text.encode() + b"\n")

    async def finish(self) -> None:
        """Wait for the peer to say ``done`` and exit with status 0."""
        await self.line("done")
        process = self._process
        assert process is not None
        async with asyncio.timeout(TIMEOUT):
            status = await process.wait()

        assert status == 0, self._failure(f"exit status {status}")

    async def kill(self) -> None:
        """Kill the peer with SIGKILL (no BYE, no cleanup) and reap it."""
        process = self._process
        assert process is not None
        process.send_signal(signal.SIGKILL)
        async with asyncio.timeout(TIMEOUT):
            await process.wait()


async def check_from_c(sub: asyncbus.Subscription, peer: CPeer) -> None:
    """Receive what the C peer publishes, numbered from 0, with its credentials."""
    for index, size in enumerate(C_SIZES):
        async with asyncio.timeout(TIMEOUT):
            msg = await sub.receive()

        assert (msg.topic, msg.seq) == ("from-c", index)
        assert msg.data == payload(index, size)
        assert msg.sender.pid == peer.pid
        assert (msg.sender.uid, msg.sender.gid) == (os.getuid(), os.getgid())
        assert msg.sender.address == peer.address


async def check_to_c(bus: asyncbus.Bus, peer: CPeer) -> None:
    """Publish to the C peer once it subscribed; it sees this link's numbers from 0."""
    topic = bus.topic("to-c")
    async with asyncio.timeout(TIMEOUT):
        await topic.wait_subscribers(1)

    for data in TO_C:
        await topic.publish(data)

    assert [await peer.message() for _ in TO_C] == [
        (seq, "to-c", data) for seq, data in enumerate(TO_C)
    ]


def c_args() -> list[str]:
    """Subscribe to ``to-c`` and take ``TO_C``, then publish ``C_SIZES`` on ``from-c``."""
    receive = ["--subscribe", "to-c", "--receive", str(len(TO_C))]
    sizes = ",".join(map(str, C_SIZES))
    return [*receive, "--publish", "from-c", "--count", str(len(C_SIZES)), "--size", sizes]


class TestExchange:
    async def test_c_peer_joins_asyncbus(self, peer_program: Path, url: str) -> None:
        async with asyncbus.connect(url) as bus, bus.subscribe("from-c") as sub:
            async with CPeer(peer_program, url, *c_args()) as peer:
                await check_to_c(bus, peer)
                await check_from_c(sub, peer)
                await peer.finish()
                await wait_peers_below(bus, 1)

            stats = bus.statistics()
            assert (stats.peers_lost, stats.gaps, stats.malformed, stats.rejected) == (0, 0, 0, 0)

        assert members_left(url) == []

    async def test_asyncbus_joins_c_peer(self, peer_program: Path, url: str) -> None:
        async with (
            CPeer(peer_program, url, *c_args()) as peer,
            asyncbus.connect(url) as bus,
        ):
            # open() found the C peer and waited for its HELLO and SUBSCRIBE.
            assert bus.statistics().peers == 1
            assert await peer.line("verified") == f"verified {bus.sender}"
            # A subscription made now reaches the C peer in a new SUBSCRIBE.
            async with bus.subscribe("from-c") as sub:
                await check_to_c(bus, peer)
                await check_from_c(sub, peer)
                await peer.finish()
                await wait_peers_below(bus, 1)

            stats = bus.statistics()
            assert (stats.peers_lost, stats.gaps, stats.malformed) == (0, 0, 0)

        assert members_left(url) == []

    async def test_c_peer_sees_a_gap_where_asyncbus_dropped(
        self, peer_program: Path, url: str
    ) -> None:
        # peer_queue=1: once the C peer's socket is full, asyncbus queues one message
        # for it and drops the next (drop_newest), which still uses up a number.
        async with asyncbus.connect(url, peer_queue=1) as bus:
            args = ["--subscribe", "to-c", "--policy", "drop_newest", "--until", "last", "--hold"]
            async with CPeer(peer_program, url, *args) as peer:
                await peer.line("held")  # joined, subscribed, and not reading any more
                topic = bus.topic("to-c")
                async with asyncio.timeout(TIMEOUT):
                    await topic.wait_subscribers(1)

                published = 0
                while bus.statistics().send_drops == 0:
                    assert published < 100_000, "the C peer's socket never filled up"
                    await topic.publish(b"m%d" % published)
                    published += 1

                peer.say("go")
                sent = [(seq, "to-c", b"m%d" % seq) for seq in range(published - 1)]
                assert [await peer.message() for _ in sent] == sent
                await topic.publish(b"last")  # the peer sees the dropped number's hole
                assert await peer.message() == (published, "to-c", b"last")
                await peer.finish()
                assert bus.statistics().send_drops == 1

        assert members_left(url) == []


class TestStaleFiles:
    async def test_killed_c_peer_is_forgotten_and_its_file_removed(
        self, peer_program: Path, url: str
    ) -> None:
        async with asyncbus.connect(url) as bus:
            async with CPeer(peer_program, url, "--subscribe", "to-c", "--hold") as peer:
                await peer.line("held")
                topic = bus.topic("to-c")
                async with asyncio.timeout(TIMEOUT):
                    await topic.wait_subscribers(1)

                await peer.kill()
                # unix: the next send is refused; seqpacket: the connections end now.
                await topic.publish(b"to the dead")
                await wait_peers_below(bus, 1)

            assert bus.statistics().peers_lost == 1
            assert bus.sender is not None
            own = bus.sender.address
            expected = [os.path.basename(own) if "///" in url else own]
            assert await settled_members(url, expected) == expected

        assert members_left(url) == []

    @pytest.mark.parametrize("scheme", ["unix", "seqpacket"])
    async def test_a_member_setting_up_is_neither_greeted_nor_removed(
        self, bus_dir: str, scheme: str
    ) -> None:
        # docs/protocol.md: a directory member binds as ".FILE" and renames it when
        # ready; a seqpacket socket that does not listen yet looks dead to a probe.
        path = os.path.join(bus_dir, ".starting")
        kind = socket.SOCK_DGRAM if scheme == "unix" else socket.SOCK_SEQPACKET
        with socket.socket(socket.AF_UNIX, kind) as starting:
            starting.bind(path)
            starting.setblocking(False)
            async with asyncbus.connect(f"{scheme}://{bus_dir}", join_timeout=0.5) as bus:
                assert bus.statistics().peers == 0

            assert _exists(path), "a member's socket file was removed while it set up"
            if scheme == "unix":
                with pytest.raises(BlockingIOError):
                    starting.recv(1)  # nobody said HELLO to it

            os.unlink(path)
