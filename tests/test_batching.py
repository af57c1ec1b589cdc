"""Frame coalescing (BATCH frames) on the AF_UNIX transports, from the wire up.

* `TestTransport`: both transport classes driven directly, a raw socket as the
  peer, read synchronously: the first frame of a loop turn is on the wire at
  once, the rest of the turn arrives in BATCH frames of at most `BATCH_BYTES`
  (greedy, in order), FDFrames and fragment lists are never inside one and keep
  their place, ``set_batch_bytes`` bounds them, the counters match what arrived,
  and a link closed with corked frames drops them cleanly.
* `TestChildProcess`: a real subscriber in another process
  (``tests/peers/batch_member.py``): a 20,000-message burst arrives whole and
  in order through BATCH frames; a low-rate request/answer never batches.
* `TestRawMember`: a raw-socket member speaking the wire protocol gets BATCH
  frames only if its HELLO asked for them; malformed BATCH frames it sends are
  counted and deliver nothing; a BATCH of control frames works as they would alone.
* `TestOverflowPolicies`: ``drop_oldest``, ``drop_newest`` and ``block`` still hold
  with a subscriber that stops reading.

Nothing sleeps to wait: every wait is on a socket, a pipe or a future, with a timeout.
"""

from __future__ import annotations

import array
import asyncio
import json
import os
import secrets
import socket
import struct
from collections.abc import AsyncIterator, Hashable
from typing import Any

import pytest

import asyncbus
from asyncbus._core.unixwire import (
    MAX_CONTROL_FRAME,
    encode_batch,
    encode_hello,
    is_batch,
    split_batch,
)
from asyncbus._core.url import UNIXAddress, parse_url
from asyncbus._transports.unix import (
    BATCH_BYTES,
    Credentials,
    FDFrame,
    UNIXDatagramTransport,
    UNIXSeqpacketTransport,
    create_unix_endpoint,
)
from tests._bus_support import Child, lc02

TIMEOUT = 10.0  # seconds one step may take on a loaded machine
Transport = UNIXDatagramTransport | UNIXSeqpacketTransport
KINDS = {"unix": socket.SOCK_DGRAM, "seqpacket": socket.SOCK_SEQPACKET}
SCHEMES = pytest.mark.parametrize("scheme", ["unix", "seqpacket"])
SHORT = struct.Struct(">4sI")


def unique_name() -> str:
    return f"batch-{secrets.token_hex(6)}"


def frame(index: int, size: int = 100) -> bytes:
    """A test frame: recognizable, ``size`` bytes, never a BATCH or SEGMENT magic."""
    head = b"F%06d" % index
    return head + b"." * (size - len(head))


async def readable(sock: socket.socket) -> None:
    """Wait until ``sock`` has something to read."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


def read_now(sock: socket.socket) -> list[tuple[bytes, list[int]]]:
    """Read every frame waiting on ``sock`` without waiting: (bytes, fds received)."""
    frames = []
    while True:
        try:
            data, ancdata, _flags, _ = sock.recvmsg(
                65_536, socket.CMSG_SPACE(16 * 4), socket.MSG_CMSG_CLOEXEC
            )
        except BlockingIOError:
            return frames

        fds: list[int] = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += array.array("i", payload[: len(payload) - len(payload) % 4])

        if not data and not fds:
            return frames  # seqpacket: end of file

        frames.append((data, fds))


def unpack(wire: list[tuple[bytes, list[int]]]) -> list[bytes]:
    """The frames a receiver handles, BATCH frames opened, in order."""
    out: list[bytes] = []
    for data, _ in wire:
        out += split_batch(data) if is_batch(data) else [data]

    return out


# -- transport level ------------------------------------------------------------------


class Recorder:
    """The least protocol a transport needs; records what matters here."""

    def __init__(self) -> None:
        self.drained: list[tuple[bytes, int]] = []
        self.lost: list[bytes] = []
        self.closed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass

    def frame_received(
        self, frame: bytes, source: Hashable, creds: Credentials | None, fds: list[int] | None
    ) -> None:
        for fd in fds or ():
            os.close(fd)

    def connection_allowed(self, creds: Credentials) -> bool:
        return True

    def source_closed(self, source: Hashable) -> None:
        pass

    def link_drained(self, address: bytes, queued: int) -> None:
        self.drained.append((address, queued))

    def link_lost(self, address: bytes, exc: OSError | None) -> None:
        self.lost.append(address)

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def error_received(self, exc: OSError) -> None:
        raise AssertionError(f"error_received({exc!r})")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed.set()


class Sink:
    """A raw peer of a transport: a socket it links to, read by hand."""

    def __init__(self, scheme: str, name: str) -> None:
        self.address = f"\0asyncbus/{name}/sink-{secrets.token_hex(4)}".encode()
        self.scheme = scheme
        self.listener = socket.socket(socket.AF_UNIX, KINDS[scheme])
        self.listener.bind(self.address)
        if scheme == "seqpacket":
            self.listener.listen(4)

        self.sock = self.listener

    def accept(self) -> None:
        """Take the transport's link (seqpacket: the connection it made)."""
        if self.scheme == "seqpacket":
            self.sock, _ = self.listener.accept()

        self.sock.setblocking(False)

    def close(self) -> None:
        if self.sock is not self.listener:
            self.sock.close()

        self.listener.close()

    async def read(self, count: int) -> list[tuple[bytes, list[int]]]:
        """Read until ``count`` frames (BATCH frames opened) have come."""
        wire: list[tuple[bytes, list[int]]] = []
        async with asyncio.timeout(TIMEOUT):
            while len(unpack(wire)) < count:
                got = read_now(self.sock)
                if not got:
                    await readable(self.sock)

                wire += got

        return wire


@pytest.fixture
async def linked(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Transport, Sink]]:
    """A transport (of ``request.param``'s scheme) linked to a `Sink`, nothing sent yet."""
    scheme = request.param
    name = unique_name()
    address = parse_url(f"{scheme}:@{name}")
    assert isinstance(address, UNIXAddress)
    recorder = Recorder()
    transport, _ = await create_unix_endpoint(lambda: recorder, address)
    sink = Sink(scheme, name)
    try:
        transport.open_link(sink.address)
        sink.accept()
        yield transport, sink
    finally:
        transport.close()
        async with asyncio.timeout(TIMEOUT):
            await recorder.closed.wait()

        for _, fds in read_now(sink.sock):
            for fd in fds:
                os.close(fd)

        sink.close()


LINKED = pytest.mark.parametrize("linked", ["unix", "seqpacket"], indirect=True)


def send(transport: Transport, address: bytes, data: bytes, lean: bool) -> None:
    if lean:
        transport.send_frame(address, data)
    else:
        assert transport.send(address, data)


def pipe_frame(tag: bytes, done: list[bool]) -> tuple[FDFrame, int]:
    """An FDFrame carrying a pipe's write end; return it and the read end."""
    read, write = os.pipe()

    def finished(sent: bool) -> None:
        done.append(sent)
        os.close(write)

    return FDFrame(tag, array.array("i", [write]).tobytes(), finished), read


@LINKED
class TestTransport:
    @pytest.mark.parametrize("lean", [False, True], ids=["send", "send_frame"])
    async def test_one_turn_first_alone_then_batches(
        self, linked: tuple[Transport, Sink], lean: bool
    ) -> None:
        transport, sink = linked
        transport.set_batching(sink.address, True)
        sent = [frame(i) for i in range(400)]  # ~41 KB: three BATCH frames
        send(transport, sink.address, sent[0], lean)
        # The first frame of the turn is on the wire before the turn ends.
        assert read_now(sink.sock) == [(sent[0], [])]
        for data in sent[1:]:
            send(transport, sink.address, data, lean)

        assert read_now(sink.sock) == [], "later frames of the turn wait for its end"
        assert transport.queued(sink.address) == len(sent) - 1
        await asyncio.sleep(0)  # one loop turn: the uncork callback runs
        wire = await sink.read(len(sent) - 1)
        assert all(is_batch(data) for data, _ in wire), [data[:8] for data, _ in wire]
        assert unpack(wire) == sent[1:]
        inner = [split_batch(data) for data, _ in wire]
        for data, frames in zip(wire, inner, strict=True):
            assert len(data[0]) <= BATCH_BYTES
            assert encode_batch(frames) == data[0], "split_batch round trip"

        # Greedy: each BATCH took as many frames as fit.
        for data, frames in zip(wire, inner[1:], strict=False):
            assert len(data[0]) + 2 + len(frames[0]) > BATCH_BYTES

        assert transport.batches == len(wire) == 3
        assert transport.batched == len(sent) - 1
        assert transport.queued(sink.address) == 0

    @pytest.mark.parametrize("lean", [False, True], ids=["send", "send_frame"])
    async def test_off_by_default_every_frame_alone(
        self, linked: tuple[Transport, Sink], lean: bool
    ) -> None:
        transport, sink = linked
        sent = [frame(i) for i in range(300)]  # more than max_dgram_qlen: some queue
        for data in sent[:5]:
            send(transport, sink.address, data, lean)

        # Nothing corked: all five are on the wire already.
        assert [data for data, _ in read_now(sink.sock)] == sent[:5]
        for data in sent[5:]:
            send(transport, sink.address, data, lean)

        wire = await sink.read(len(sent) - 5)
        assert [data for data, _ in wire] == sent[5:]
        assert transport.batches == transport.batched == 0

    async def test_turned_off_again(self, linked: tuple[Transport, Sink]) -> None:
        transport, sink = linked
        transport.set_batching(sink.address, True)
        transport.set_batching(sink.address, False)
        for i in range(5):
            transport.send(sink.address, frame(i))

        assert [data for data, _ in read_now(sink.sock)] == [frame(i) for i in range(5)]
        assert transport.batches == 0

    async def test_many_turns_and_a_full_socket(self, linked: tuple[Transport, Sink]) -> None:
        # 300 KB, more than the socket holds: the writer flushes the rest, in BATCH frames.
        transport, sink = linked
        transport.set_batching(sink.address, True)
        sent = [frame(i) for i in range(3000)]
        for turn in range(10):
            for data in sent[turn * 300 : (turn + 1) * 300]:
                transport.send(sink.address, data)

            await asyncio.sleep(0)  # one loop turn

        assert transport.queued(sink.address) > 0, "the socket never filled"
        wire = await sink.read(len(sent))
        assert unpack(wire) == sent
        batches = [data for data, _ in wire if is_batch(data)]
        assert all(len(data) <= BATCH_BYTES for data in batches)
        assert transport.batches == len(batches)
        assert transport.batched == sum(len(split_batch(data)) for data in batches)
        assert len(wire) - len(batches) + transport.batched == len(sent)

    async def test_fd_frame_and_fragments_keep_their_place(
        self, linked: tuple[Transport, Sink]
    ) -> None:
        transport, sink = linked
        transport.set_batching(sink.address, True)
        done: list[bool] = []
        fd_frame, read = pipe_frame(b"with a pipe", done)
        fragments = [b"frag-0", b"frag-1", b"frag-2"]
        try:
            transport.send(sink.address, frame(0))
            transport.send(sink.address, frame(1))
            transport.send(sink.address, frame(2))
            transport.send(sink.address, fd_frame)
            transport.send(sink.address, frame(3))
            transport.send(sink.address, frame(4))
            transport.send(sink.address, fragments)
            transport.send(sink.address, frame(5))
            transport.send(sink.address, frame(6))
            assert done == [], "queued behind frames of this turn"
            await asyncio.sleep(0)  # one loop turn: the uncork callback runs
            wire = await sink.read(11)
            assert done == [True]
            layout = [
                ("batch", split_batch(data))
                if is_batch(data)
                else ("fds" if fds else "alone", [data])
                for data, fds in wire
            ]
            assert layout == [
                ("alone", [frame(0)]),
                ("batch", [frame(1), frame(2)]),
                ("fds", [b"with a pipe"]),
                ("batch", [frame(3), frame(4)]),
                ("alone", [b"frag-0"]),
                ("alone", [b"frag-1"]),
                ("alone", [b"frag-2"]),
                ("batch", [frame(5), frame(6)]),
            ]
            (received,) = wire[2][1]
            os.write(received, b"through the copy")
            os.close(received)
            assert os.read(read, 100) == b"through the copy"
            assert transport.batches == 3 and transport.batched == 6
        finally:
            os.close(read)

    async def test_fd_frame_right_after_the_first_goes_at_once(
        self, linked: tuple[Transport, Sink]
    ) -> None:
        transport, sink = linked
        transport.set_batching(sink.address, True)
        done: list[bool] = []
        fd_frame, read = pipe_frame(b"with a pipe", done)
        try:
            transport.send(sink.address, frame(0))
            transport.send(sink.address, fd_frame)  # nothing queued: nothing to pass
            assert done == [True]
            transport.send(sink.address, frame(1))
            transport.send(sink.address, frame(2))
            wire = read_now(sink.sock)
            assert [data for data, _ in wire] == [frame(0), b"with a pipe"]
            for fd in wire[1][1]:
                os.close(fd)

            await asyncio.sleep(0)  # one loop turn
            assert unpack(await sink.read(2)) == [frame(1), frame(2)]
        finally:
            os.close(read)

    @pytest.mark.parametrize(
        ("size", "per_batch"),
        [(0, 1), (4 + 2 * 102, 2), (4 + 3 * 102 + 101, 3), (MAX_CONTROL_FRAME, 60)],
        ids=["zero", "two", "three", "largest"],
    )
    async def test_batch_bytes(
        self, linked: tuple[Transport, Sink], size: int, per_batch: int
    ) -> None:
        transport, sink = linked
        transport.set_batching(sink.address, True)
        transport.set_batch_bytes(size)
        sent = [frame(i) for i in range(61)]
        for data in sent:
            transport.send(sink.address, data)

        await asyncio.sleep(0)  # one loop turn
        wire = await sink.read(len(sent))
        assert unpack(wire) == sent
        sizes = [len(split_batch(data)) if is_batch(data) else 1 for data, _ in wire]
        rest = len(sent) - 1
        expected = (
            [1] + [per_batch] * (rest // per_batch) + [rest % per_batch] * bool(rest % per_batch)
        )
        assert sizes == expected
        assert all(len(data) <= max(size, 106) for data, _ in wire)
        assert transport.batches == sum(1 for n in expected[1:] if n > 1)
        assert transport.batched == sum(n for n in expected[1:] if n > 1)

    async def test_batch_bytes_out_of_range(self, linked: tuple[Transport, Sink]) -> None:
        transport, _ = linked
        for size in (-1, MAX_CONTROL_FRAME + 1, 1 << 20):
            with pytest.raises(ValueError, match="BATCH holds"):
                transport.set_batch_bytes(size)

    @pytest.mark.parametrize("how", ["close_link", "close"])
    async def test_closed_with_corked_frames(
        self, linked: tuple[Transport, Sink], how: str
    ) -> None:
        transport, sink = linked
        transport.set_batching(sink.address, True)
        done: list[bool] = []
        fd_frame, read = pipe_frame(b"corked", done)
        try:
            transport.send(sink.address, frame(0))
            transport.send(sink.address, frame(1))
            transport.send(sink.address, fd_frame)
            transport.send(sink.address, frame(2))
            getattr(transport, how)(*([sink.address] if how == "close_link" else []))
            assert done == [False]
            await asyncio.sleep(0)  # one loop turn: the (cancelled or idle) uncork
            await asyncio.sleep(0)  # and whatever it would schedule
            assert done == [False], "done() exactly once"
            assert [data for data, _ in read_now(sink.sock)] == [frame(0)]
            assert transport.batches == 0
            assert os.read(read, 1) == b"", "done(False) closed the write end"
        finally:
            os.close(read)

    async def test_link_reopened_in_the_same_turn(self, linked: tuple[Transport, Sink]) -> None:
        transport, sink = linked
        transport.set_batching(sink.address, True)
        transport.send(sink.address, frame(0))
        transport.send(sink.address, frame(1))  # corked, then dropped with the link
        transport.close_link(sink.address)
        old = sink.sock
        transport.open_link(sink.address)
        if sink.scheme == "seqpacket":  # a new connection
            sink.sock, _ = sink.listener.accept()
            sink.sock.setblocking(False)

        transport.set_batching(sink.address, True)
        transport.send(sink.address, frame(2))  # a new link: not corked
        transport.send(sink.address, frame(3))
        try:
            if old is sink.sock:
                assert [data for data, _ in read_now(old)] == [frame(0), frame(2)]
            else:
                assert [data for data, _ in read_now(old)] == [frame(0)]
                assert [data for data, _ in read_now(sink.sock)] == [frame(2)]

            await asyncio.sleep(0)  # one loop turn
            assert unpack(await sink.read(1)) == [frame(3)]
            assert transport.batches == 0
        finally:
            if old is not sink.sock and old is not sink.listener:
                old.close()


# -- bus level: a child process -------------------------------------------------------


class Member(Child):
    """``tests/peers/batch_member.py`` in its own process, driven by JSON commands."""

    module = "tests.peers.batch_member"
    stdin = asyncio.subprocess.PIPE

    async def ask(self, **command: Any) -> dict[str, Any]:
        process = self._process
        assert process is not None and process.stdin is not None
        process.stdin.write(json.dumps(command).encode() + b"\n")
        await process.stdin.drain()
        return await self.answer()

    async def tell(self, **command: Any) -> None:
        """Send a command; its answer is read later with `answer`."""
        process = self._process
        assert process is not None and process.stdin is not None
        process.stdin.write(json.dumps(command).encode() + b"\n")
        await process.stdin.drain()

    async def answer(self) -> dict[str, Any]:
        reply = await self.event("reply", within=2 * TIMEOUT)
        assert "error" not in reply, reply["error"]
        return reply

    async def stats(self) -> dict[str, Any]:
        return await self.ask(do="stats")


def payload(index: int, size: int = 64) -> bytes:
    return index.to_bytes(4, "big") + bytes(size - 4)


def max_dgram_qlen() -> int:
    """Datagrams a unix socket queues before a sender gets EAGAIN (Linux)."""
    with open("/proc/sys/net/unix/max_dgram_qlen") as file:
        return int(file.read())


def url(scheme: str, name: str, **options: object) -> str:
    query = "&".join(f"{key}={value}" for key, value in options.items())
    return f"{scheme}:@{name}" + (f"?{query}" if query else "")


class TestChildProcess:
    @SCHEMES
    async def test_burst_arrives_whole_in_order_through_batches(self, scheme: str) -> None:
        count = 20_000
        name = unique_name()
        async with Member(url(scheme, name)) as child:
            await child.event("ready")
            # block: no loss whatever the speeds; drops are TestOverflowPolicies' matter.
            await child.ask(do="subscribe", topic="burst", policy="block", maxsize=1024)
            async with asyncbus.connect(url(scheme, name)) as bus:
                async with asyncio.timeout(TIMEOUT):
                    await bus.topic("burst").wait_subscribers(1)

                before = bus.statistics()
                await child.tell(do="drain", topic="burst", count=count)
                async with asyncio.timeout(3 * TIMEOUT):
                    for i in range(count):
                        await bus.publish("burst", payload(i))

                drained = await child.answer()
                assert drained == {
                    "event": "reply",
                    "received": count,
                    "in_order": True,
                    "first": 0,
                    "last": count - 1,
                }
                stats = bus.statistics()
                theirs = await child.stats()
                assert stats.send_drops == 0
                assert theirs["gaps"] == 0 and theirs["malformed"] == 0
                assert stats.batches_sent - before.batches_sent > 0
                assert stats.batched - before.batched >= 2 * (
                    stats.batches_sent - before.batches_sent
                )
                assert stats.batched - before.batched < count
                assert theirs["batches_received"] == stats.batches_sent

    @SCHEMES
    async def test_low_rate_never_batches(self, scheme: str) -> None:
        name = unique_name()
        async with Member(url(scheme, name)) as child:
            await child.event("ready")
            await child.ask(do="subscribe", topic="ping")
            async with (
                asyncbus.connect(url(scheme, name)) as bus,
                bus.subscribe("pong") as pong,
            ):
                async with asyncio.timeout(TIMEOUT):
                    await bus.topic("ping").wait_subscribers(1)

                ours, theirs = bus.statistics(), await child.stats()
                for i in range(20):
                    await child.tell(do="echo", topic="ping", reply="pong")
                    await bus.publish("ping", payload(i))
                    async with asyncio.timeout(TIMEOUT):
                        msg = await pong.receive()

                    assert msg.data == payload(i)
                    await child.answer()

                after, theirs_after = bus.statistics(), await child.stats()
                assert after.batches_sent == ours.batches_sent
                assert after.batched == ours.batched
                assert theirs_after["batches_received"] == theirs["batches_received"]
                assert theirs_after["batches_sent"] == theirs["batches_sent"]


# -- bus level: a raw member ------------------------------------------------------------


BLOCK_ALL = b"ABSB\x00\x01\x03\x02\x00\x00"  # SUBSCRIBE: one entry, ALL, block


class RawMember:
    """A member made of raw sockets: it says HELLO with or without the BATCH flag."""

    def __init__(self, scheme: str, name: str) -> None:
        self.scheme = scheme
        self.address = f"\0asyncbus/{name}/raw-{secrets.token_hex(4)}".encode()
        kind = KINDS[scheme]
        self.inbox = socket.socket(socket.AF_UNIX, kind)
        self.link = socket.socket(socket.AF_UNIX, kind)
        self.inbox.bind(self.address)
        if scheme == "seqpacket":
            self.inbox.listen(4)
        else:
            self.link.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

        self.inbox.setblocking(False)
        self.sock = self.inbox  # where frames from the bus arrive
        self.seq = 0

    def connect(self, bus: asyncbus.Bus) -> None:
        assert bus.sender is not None
        self.link.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self.link.connect(("\0" + bus.sender.address[1:]).encode())

    async def join(self, bus: asyncbus.Bus, *, batch: bool, in_a_batch: bool = False) -> None:
        """Greet the bus (HELLO with REPLY, SUBSCRIBE to everything, block) and take its link."""
        self.connect(bus)
        hello = encode_hello(self.address, reply=True, batch=batch)
        if in_a_batch:
            self.link.send(encode_batch([hello, BLOCK_ALL]))
        else:
            self.link.send(hello)
            self.link.send(BLOCK_ALL)

        if self.scheme == "seqpacket":
            async with asyncio.timeout(TIMEOUT):
                await readable(self.inbox)

            self.sock, _ = self.inbox.accept()
            self.sock.setblocking(False)

        async with asyncio.timeout(TIMEOUT):
            await bus.topic("any").wait_subscribers(1)

    def message(self, topic: str, data: bytes) -> bytes:
        frame = lc02(self.seq, topic, data)
        self.seq += 1
        return frame

    async def messages(self, count: int) -> tuple[list[bytes], list[bytes]]:
        """Read until ``count`` LC02 frames came: (every datagram, the LC02 frames in order)."""
        wire: list[bytes] = []
        messages: list[bytes] = []
        async with asyncio.timeout(TIMEOUT):
            while len(messages) < count:
                got = [data for data, _ in read_now(self.sock)]
                if not got:
                    await readable(self.sock)

                wire += got
                messages = [f for f in unpack([(d, []) for d in wire]) if f[:4] == b"LC02"]

        return wire, messages

    def close(self) -> None:
        if self.sock is not self.inbox:
            self.sock.close()

        self.inbox.close()
        self.link.close()


@pytest.fixture
def raw_member(request: pytest.FixtureRequest) -> Any:
    members: list[RawMember] = []

    def make(scheme: str, name: str) -> RawMember:
        member = RawMember(scheme, name)
        members.append(member)
        return member

    yield make
    for member in members:
        member.close()


async def publish_burst(bus: asyncbus.Bus, topic: str, count: int) -> None:
    for i in range(count):
        await bus.publish(topic, payload(i))


class TestRawMember:
    @SCHEMES
    @pytest.mark.parametrize("batch", [False, True], ids=["no-flag", "flag"])
    async def test_batch_frames_only_if_hello_asked(
        self, scheme: str, batch: bool, raw_member: Any
    ) -> None:
        count = 3000
        name = unique_name()
        async with asyncbus.connect(url(scheme, name)) as bus:
            raw = raw_member(scheme, name)
            await raw.join(bus, batch=batch)
            publisher = asyncio.create_task(publish_burst(bus, "burst", count))
            try:
                wire, messages = await raw.messages(count)
                async with asyncio.timeout(TIMEOUT):
                    await publisher
            finally:
                publisher.cancel()

            seqs = [SHORT.unpack_from(m)[1] for m in messages]
            assert seqs == list(range(count))
            assert [int.from_bytes(m[-64:][:4], "big") for m in messages] == list(range(count))
            batches = [data for data in wire if is_batch(data)]
            stats = bus.statistics()
            assert stats.send_drops == 0
            if batch:
                assert batches, "a burst to a member that takes BATCH frames is coalesced"
                assert all(len(data) <= BATCH_BYTES for data in batches)
                assert stats.batches_sent == len(batches)
                assert stats.batched == sum(len(split_batch(data)) for data in batches)
            else:
                assert batches == []
                assert stats.batches_sent == stats.batched == 0

    @SCHEMES
    async def test_malformed_batches_are_counted_and_deliver_nothing(
        self, scheme: str, raw_member: Any
    ) -> None:
        name = unique_name()
        async with (
            asyncbus.connect(url(scheme, name)) as bus,
            bus.subscribe("t", maxsize=100) as sub,
        ):
            raw = raw_member(scheme, name)
            await raw.join(bus, batch=True)
            before = bus.statistics()

            def good() -> bytes:
                return raw.message("t", b"must not arrive")

            def entry(inner: bytes) -> bytes:
                return len(inner).to_bytes(2, "big") + inner

            big = b"x" * 60_000
            bad = {
                "cut-length": b"ABBT" + entry(good()) + b"\x00",
                "cut-frame": b"ABBT" + entry(good()) + b"\x00\x40" + good(),
                "empty": b"ABBT" + entry(good()) + b"\x00\x00" + entry(good()),
                "nested": b"ABBT" + entry(good()) + entry(b"ABBT" + entry(good())),
                "segment": b"ABBT" + entry(good()) + entry(b"ABSG" + bytes(30)),
                "no-frame": b"ABBT",
                "too-large": b"ABBT"
                + entry(raw.message("t", big))
                + entry(raw.message("t", b"y" * (65_508 - 4 - 2 - 2 - 60_010 - 2))),
            }
            assert len(bad["too-large"]) > MAX_CONTROL_FRAME
            for data in bad.values():
                raw.link.send(data)

            raw.link.send(raw.message("t", b"after"))
            async with asyncio.timeout(TIMEOUT):
                msg = await sub.receive()

            assert msg.data == b"after", "nothing from a malformed BATCH"
            with pytest.raises(asyncbus.WouldBlock):
                sub.receive_nowait()

            stats = bus.statistics()
            assert stats.malformed - before.malformed == len(bad)
            assert stats.batches_received == before.batches_received
            # Still working: a valid BATCH is delivered in order.
            raw.link.send(encode_batch([raw.message("t", b"%d" % i) for i in range(3)]))
            async with asyncio.timeout(TIMEOUT):
                got = [(await sub.receive()).data for _ in range(3)]

            assert got == [b"0", b"1", b"2"]
            assert bus.statistics().batches_received == before.batches_received + 1
            assert msg.sender is not None and msg.sender.pid == os.getpid()

    @SCHEMES
    async def test_control_frames_in_a_batch(self, scheme: str, raw_member: Any) -> None:
        name = unique_name()
        async with asyncbus.connect(url(scheme, name)) as bus:
            raw = raw_member(scheme, name)
            await raw.join(bus, batch=False, in_a_batch=True)  # waits for our SUBSCRIBE
            assert bus.statistics().peers == 1
            assert bus.statistics().batches_received == 1
            await bus.publish("news", b"hello")
            _, messages = await raw.messages(1)
            assert messages == [lc02(0, "news", b"hello")]


# -- overflow policies ------------------------------------------------------------------


async def fill_until_queued(bus: asyncbus.Bus, topic: str, bound: int, limit: int) -> int:
    """Publish until the peer's queue holds ``bound`` messages; return how many went."""
    transport = bus._unix_transport
    assert transport is not None
    for i in range(limit):
        await bus.publish(topic, payload(i))
        if transport.total_queued() >= bound:
            return i + 1

    raise AssertionError(f"the queue never reached {bound} in {limit} messages")


class TestOverflowPolicies:
    """The child stops reading: a message on ``plug`` (a ``block`` subscription of
    one message) fills that subscription, and a member stops reading its socket
    while a ``block`` subscription is full. ``unplug`` reads it again."""

    @SCHEMES
    @pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
    async def test_drops_are_the_childs_gaps(self, scheme: str, policy: str) -> None:
        count, bound = 20_000, 64
        name = unique_name()
        async with Member(url(scheme, name)) as child:
            await child.event("ready")
            await child.ask(do="subscribe", topic="plug", policy="block", maxsize=1)
            await child.ask(do="subscribe", topic="data", policy=policy, maxsize=count)
            async with asyncbus.connect(url(scheme, name, peer_queue=bound)) as bus:
                async with asyncio.timeout(TIMEOUT):
                    await bus.topic("data").wait_subscribers(1)

                await bus.publish("plug", b"stop reading")
                async with asyncio.timeout(3 * TIMEOUT):
                    for i in range(count):
                        await bus.publish("data", payload(i))

                stats = bus.statistics()
                assert stats.send_drops > 0, "the child never fell behind"
                await child.tell(do="unplug", plug="plug", topic="data")
                async with asyncio.timeout(TIMEOUT):
                    await bus.publish("plug", b"end")  # block: behind every data message

                unplugged = await child.answer()
                theirs = await child.stats()
                assert bus.statistics().send_drops == stats.send_drops
                assert theirs["gaps"] == stats.send_drops
                assert unplugged["received"] + stats.send_drops == count
                assert unplugged["in_order"]
                assert theirs["overflow_drops"] == theirs["malformed"] == 0
                if policy == "drop_newest":
                    assert unplugged["first"] == 0
                else:
                    assert unplugged["last"] == count - 1
                    assert stats.batches_sent > 0

    @SCHEMES
    async def test_block_loses_nothing(self, scheme: str) -> None:
        count, bound = 5000, 64
        name = unique_name()
        async with Member(url(scheme, name)) as child:
            await child.event("ready")
            await child.ask(do="subscribe", topic="plug", policy="block", maxsize=1)
            await child.ask(do="subscribe", topic="data", policy="block", maxsize=count)
            async with asyncbus.connect(
                url(scheme, name, peer_queue=bound, stall_timeout=0)
            ) as bus:
                async with asyncio.timeout(TIMEOUT):
                    await bus.topic("data").wait_subscribers(1)

                await bus.publish("plug", b"stop reading")
                async with asyncio.timeout(TIMEOUT):
                    sent = await fill_until_queued(bus, "data", bound, count)

                blocked = asyncio.create_task(bus.publish("data", payload(sent)))
                for _ in range(3):
                    await asyncio.sleep(0)  # loop turns: it would be done by now

                assert not blocked.done(), "publish() waits for room with block"
                await child.tell(do="unplug", plug="plug", topic="data")
                async with asyncio.timeout(TIMEOUT):
                    await blocked
                    for i in range(sent + 1, count):
                        await bus.publish("data", payload(i))

                    await bus.publish("plug", b"end")

                unplugged = await child.answer()
                theirs = await child.stats()
                assert unplugged == {
                    "event": "reply",
                    "received": count,
                    "in_order": True,
                    "first": 0,
                    "last": count - 1,
                }
                assert bus.statistics().send_drops == 0
                assert theirs["gaps"] == theirs["overflow_drops"] == 0
                assert bus.statistics().batches_sent > 0

    @SCHEMES
    @pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
    # Was a bug (fixed): frames gathered for the end of the loop turn counted toward
    # peer_queue, so concurrent publishes in one turn were dropped by drop_newest /
    # drop_oldest although the peer's socket had room.
    async def test_concurrent_publishers_with_room_drop_nothing(
        self, scheme: str, policy: str
    ) -> None:
        # The peer's socket takes max_dgram_qlen datagrams (unix:; seqpacket: far
        # more), the link's queue peer_queue more: no policy applies to this many.
        bound = 16
        count = min(max_dgram_qlen(), 100) + bound
        name = unique_name()
        async with (
            asyncbus.connect(url(scheme, name)) as receiver,
            receiver.subscribe("t", policy=policy, maxsize=1000) as sub,
            asyncbus.connect(url(scheme, name, peer_queue=bound)) as publisher,
        ):
            async with asyncio.timeout(TIMEOUT):
                await publisher.topic("t").wait_subscribers(1)

            # Every task publishes in the same loop turn.
            await asyncio.gather(*(publisher.publish("t", payload(i)) for i in range(count)))
            await publisher.publish("t", b"end")
            got = []
            async with asyncio.timeout(TIMEOUT):
                while (msg := await sub.receive()).data != b"end":
                    got.append(int.from_bytes(msg.data[:4], "big"))

            assert publisher.statistics().send_drops == 0
            assert got == list(range(count))
