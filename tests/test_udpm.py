"""The ``udpm`` transport: real multicast on loopback, between processes and at the byte level.

* bus members in separate processes (``tests/_peers_bus/peer.py``): fan-out, order,
  fragmented messages of 300 KB and 3 MiB, both ways;
* a foreign peer made of a plain socket: asyncbus's datagrams are LCM's byte for byte,
  LCM datagrams from elsewhere are received, and garbage is counted, never fatal;
* the losses the bus makes visible: sequence gaps, incomplete fragmented messages,
  kernel drops (``SO_RXQ_OVFL``);
* the transport itself (``UDPMulticastTransport``): asyncio's call order, own-datagram
  filter, pause/resume, ``get_extra_info``, a ``ResourceWarning`` when leaked.

Every test has a bus of its own (``free_url``). Nothing sleeps to wait: a message
through the same socket (a fence) tells that everything before it was processed, and
on loopback a datagram is in every receiving socket once ``sendto`` returns.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

import asyncbus
from asyncbus._core.url import parse_url
from asyncbus._transports.udpm import UDPMulticastTransport, create_udpm_endpoint
from tests._bus_support import (
    LC02,
    LC03,
    NO_LOOPBACK_MULTICAST,
    TIMEOUT,
    Child,
    RawListener,
    RawSender,
    can_buffer,
    capture_loop_errors,
    digest,
    fence,
    free_url,
    group_of,
    lc02,
    lc03,
    loopback_multicast_works,
    payload,
    receive,
    receive_many,
    wait_until,
)
from tests.conftest import require

FRAGMENT_PAYLOAD = 65_487  # LCM_FRAGMENT_MAX_PAYLOAD (Linux): bytes after the LC03 header
MIB = 2**20
BIG_SIZES = [300_000, 3 * MIB]
# Kernel memory a burst of BIG_SIZES costs in a receive buffer: ~68 KB per full datagram.
BIG_BURST_BYTES = (sum(BIG_SIZES) // FRAGMENT_PAYLOAD + 4) * 70_000
NEED_BIG_BUFFERS = (
    "a 3 MiB burst needs a large receive buffer: run as root, or raise net.core.rmem_max "
    f"to at least {BIG_BURST_BYTES} (sysctl -w net.core.rmem_max={BIG_BURST_BYTES})"
)


@pytest.fixture(autouse=True)
def _loopback_multicast() -> None:
    require(loopback_multicast_works(), NO_LOOPBACK_MULTICAST)


@pytest.fixture
def url() -> str:
    return free_url()


def fragments(seq: int, channel: str, data: bytes, stride: int = FRAGMENT_PAYLOAD) -> list[bytes]:
    """Cut a message into LC03 datagrams the way LCM does, with fragments of ``stride`` bytes."""
    base = stride - len(channel.encode()) - 1
    count = 1 + -(-(len(data) - base) // stride)
    out = [lc03(seq, len(data), 0, 0, count, data[:base], channel)]
    for index in range(1, count):
        offset = base + (index - 1) * stride
        out.append(lc03(seq, len(data), offset, index, count, data[offset : offset + stride], None))

    return out


class TestProcesses:
    async def test_fan_out_to_several_processes(self, url: str) -> None:
        sizes = [10, 1000, 0, 60_000]
        async with (
            asyncbus.connect(url) as bus,
            Child("sub", url, "fan", str(len(sizes))) as first,
            Child("sub", url, "fan", str(len(sizes))) as second,
            Child("sub", url, "fan", str(len(sizes))) as third,
        ):
            children = (first, second, third)
            for child in children:
                await child.event("ready")

            for index, size in enumerate(sizes):
                await bus.publish("fan", payload(index, size))

            assert bus.sender is not None
            for child in children:
                messages = await child.events("message", len(sizes))
                assert [m["sha256"] for m in messages] == [
                    digest(payload(i, size)) for i, size in enumerate(sizes)
                ]
                assert {m["sender"] for m in messages} == {bus.sender.address}
                assert {m["topic"] for m in messages} == {"fan"}
                assert [m["seq"] for m in messages] == [0, 1, 2, 3]
                done = await child.event("done")
                assert done["statistics"]["gaps"] == 0
                assert await child.exit_code() == 0

    async def test_messages_from_another_process_arrive_in_order(self, url: str) -> None:
        count = 50
        async with asyncbus.connect(url) as bus, bus.subscribe("ordered", maxsize=count) as sub:
            async with Child("pub", url, "ordered", *["8"] * count) as child:
                ready = await child.event("ready")
                messages = await receive_many(sub, count)
                await child.event("done")
                assert await child.exit_code() == 0

            stats = bus.statistics()

        assert [msg.data for msg in messages] == [payload(i, 8) for i in range(count)]
        assert [msg.seq for msg in messages] == list(range(count))
        assert {msg.sender.address for msg in messages} == {ready["sender"]}
        assert (stats.received, stats.gaps, stats.reordered, stats.kernel_drops) == (count, 0, 0, 0)

    async def test_fragmented_messages_from_another_process(self, url: str) -> None:
        require(can_buffer(BIG_BURST_BYTES), NEED_BIG_BUFFERS)
        sizes = [*BIG_SIZES, 5]
        async with asyncbus.connect(url) as bus, bus.subscribe("big") as sub:
            async with Child("pub", url, "big", *map(str, sizes)) as child:
                await child.event("ready")
                messages = await receive_many(sub, len(sizes))
                assert await child.exit_code() == 0

            stats = bus.statistics()

        for index, (msg, size) in enumerate(zip(messages, sizes, strict=True)):
            assert len(msg.data) == size
            assert msg.data == payload(index, size)

        expected_datagrams = 5 + 49 + 1  # 300,000 and 3 MiB in 65,487-byte fragments, 5 B
        assert (stats.received, stats.datagrams) == (3, expected_datagrams)
        assert (stats.incomplete, stats.malformed, stats.kernel_drops) == (0, 0, 0)

    async def test_fragmented_messages_to_other_processes(self, url: str) -> None:
        require(can_buffer(BIG_BURST_BYTES), NEED_BIG_BUFFERS)
        sizes = [*BIG_SIZES, 5]
        async with (
            asyncbus.connect(url) as bus,
            Child("sub", url, "big", str(len(sizes))) as first,
            Child("sub", url, "big", str(len(sizes))) as second,
        ):
            for child in (first, second):
                await child.event("ready")

            for index, size in enumerate(sizes):
                await bus.publish("big", payload(index, size))

            for child in (first, second):
                messages = await child.events("message", len(sizes))
                assert [(m["size"], m["sha256"]) for m in messages] == [
                    (size, digest(payload(i, size))) for i, size in enumerate(sizes)
                ]
                statistics = (await child.event("done"))["statistics"]
                assert statistics["incomplete"] == statistics["kernel_drops"] == 0
                assert await child.exit_code() == 0


class TestWireFormat:
    async def test_short_message_is_lc02_byte_for_byte(self, url: str) -> None:
        with RawListener(url) as listener:
            async with asyncbus.connect(url) as bus:
                await bus.publish("chan", b"payload")
                await bus.topic("chan").publish(b"")
                first, source = await listener.receive()
                second, _ = await listener.receive()

        assert bus.sender is not None
        assert source == bus.sender.address
        assert first == b"LC02" + (0).to_bytes(4, "big") + b"chan\0payload"
        assert second == b"LC02\x00\x00\x00\x01chan\0"

    async def test_fragmented_message_is_lc03_byte_for_byte(self, url: str) -> None:
        data = bytes(range(256)) * 400  # 102,400 bytes: 2 fragments
        with RawListener(url) as listener:
            async with asyncbus.connect(url) as bus:
                await bus.publish("chat", data)
                datagrams = [(await listener.receive())[0] for _ in range(2)]

        base = FRAGMENT_PAYLOAD - len(b"chat\0")
        assert datagrams[0] == LC03.pack(b"LC03", 0, len(data), 0, 0, 2) + b"chat\0" + data[:base]
        assert datagrams[1] == LC03.pack(b"LC03", 0, len(data), base, 1, 2) + data[base:]
        assert len(datagrams[0]) == 20 + FRAGMENT_PAYLOAD

    async def test_largest_short_message_is_one_datagram(self, url: str) -> None:
        # channel + NUL + payload up to 65,499 bytes (LCM_SHORT_MESSAGE_MAX_SIZE) is LC02.
        data = bytes(65_499 - len(b"edge\0"))
        with RawListener(url) as listener:
            async with asyncbus.connect(url) as bus:
                await bus.publish("edge", data)
                await bus.publish("edge", data + b"!")
                short, _ = await listener.receive()
                fragment, _ = await listener.receive()

        assert short == LC02.pack(b"LC02", 0) + b"edge\0" + data
        assert fragment[:4] == b"LC03"

    async def test_lc02_from_a_foreign_peer_is_received(self, url: str) -> None:
        async with asyncbus.connect(url) as bus, bus.subscribe("FOREIGN") as sub:
            with RawSender(url) as peer:
                peer.send(lc02(7, "FOREIGN", b"from elsewhere"))
                msg = await receive(sub)

        assert (msg.topic, msg.data, msg.seq) == ("FOREIGN", b"from elsewhere", 7)
        assert msg.sender.address == peer.address
        assert msg.sender.pid is None

    @pytest.mark.parametrize(
        ("stride", "order"),
        [
            (FRAGMENT_PAYLOAD, "in-order"),
            (FRAGMENT_PAYLOAD, "reversed"),
            (1423, "in-order"),  # LCM on macOS
            (64_000, "reversed"),  # LCM Java
        ],
        ids=["linux-in-order", "linux-reversed", "macos-stride", "java-stride-reversed"],
    )
    async def test_lc03_from_a_foreign_peer_is_reassembled(
        self, url: str, stride: int, order: str
    ) -> None:
        data = payload(0, 150_000)
        datagrams = fragments(3, "FOREIGN", data, stride)
        if order == "reversed":
            datagrams.reverse()

        async with asyncbus.connect(url) as bus, bus.subscribe("FOREIGN") as sub:
            with RawSender(url) as peer:
                for datagram in datagrams:
                    peer.send(datagram)

                msg = await receive(sub)

            stats = bus.statistics()

        assert (msg.topic, msg.seq, msg.data == data) == ("FOREIGN", 3, True)
        assert (stats.received, stats.datagrams, stats.malformed) == (1, len(datagrams), 0)


MALFORMED = {
    "garbage": b"hello, world",
    "empty": b"",
    "magic-only": b"LC02",
    "lc02-header-only": LC02.pack(b"LC02", 1),
    "lc02-empty-channel": LC02.pack(b"LC02", 1) + b"\0data",
    "lc02-no-nul-in-64-bytes": LC02.pack(b"LC02", 1) + b"x" * 80,
    "lc02-64-byte-channel": LC02.pack(b"LC02", 1) + b"x" * 64 + b"\0data",
    "lc02-channel-not-utf8": LC02.pack(b"LC02", 1) + b"\xff\xfe\0data",
    "lc03-truncated-header": b"LC03" + bytes(10),
    "lc03-index-not-below-count": lc03(1, 10, 5, 2, 2, b"12345", None),
    "lc03-count-zero": lc03(1, 10, 0, 0, 0, b"12345", "X"),
    "lc03-fragment-0-with-offset": lc03(1, 10, 5, 0, 2, b"12345", "X"),
    "lc03-ends-beyond-size": lc03(1, 12, 10, 1, 2, b"12345", None),
    "lc03-more-fragments-than-bytes": lc03(1, 3, 0, 0, 5, b"1", "X"),
    "lc03-fragment-0-without-nul": LC03.pack(b"LC03", 1, 10, 0, 0, 2) + b"X" * 70,
}


class TestMalformed:
    @pytest.mark.parametrize("datagram", MALFORMED.values(), ids=MALFORMED.keys())
    async def test_counted_and_harmless(self, url: str, datagram: bytes) -> None:
        async with asyncbus.connect(url) as bus, bus.subscribe("*") as sub:
            with RawSender(url) as peer:
                peer.send(datagram)
                peer.send(lc02(2, "after", b"still works"))
                msg = await receive(sub)

            stats = bus.statistics()

        assert (msg.topic, msg.data) == ("after", b"still works")
        assert stats.malformed == 1
        assert (stats.datagrams, stats.received) == (2, 1)

    async def test_inconsistent_fragments_drop_the_message(self, url: str) -> None:
        data = payload(0, 100_000)
        first, second = fragments(1, "T", data)
        lying = bytearray(second)
        lying[8:12] = (len(data) + 1).to_bytes(4, "big")  # another payload size
        async with asyncbus.connect(url) as bus, bus.subscribe("T") as sub:
            with RawSender(url) as peer:
                peer.send(lc02(0, "T", b"zero"))
                peer.send(first)
                peer.send(bytes(lying))
                peer.send(second)  # too late: the message was given up
                peer.send(lc02(2, "T", b"next"))
                messages = await receive_many(sub, 2)

            stats = bus.statistics()

        assert [msg.data for msg in messages] == [b"zero", b"next"]
        assert stats.malformed == 1
        assert stats.received == 2
        assert stats.gaps == 1  # message 1 never came

    async def test_fragmented_message_over_max_message_size_is_dropped(self, url: str) -> None:
        async with (
            asyncbus.connect(url, max_message_size=100_000) as bus,
            bus.subscribe("T") as sub,
        ):
            with RawSender(url) as peer:
                for datagram in fragments(1, "T", payload(0, 100_001)):
                    peer.send(datagram)

                peer.send(lc02(2, "T", b"next"))
                msg = await receive(sub)

            stats = bus.statistics()

        assert msg.data == b"next"
        # docs/protocol.md says "counted as malformed"; BusStatistics has "oversize".
        assert stats.malformed + stats.oversize == 1
        assert stats.received == 1


class TestSequenceNumbers:
    @pytest.mark.parametrize(
        ("seqs", "gaps", "reordered"),
        [
            ([0, 1, 2, 3], 0, 0),
            ([0, 1, 4, 5], 2, 0),
            ([0, 1, 4, 5, 3], 2, 1),
            ([0, 1, 1, 2], 0, 1),
            ([0xFFFF_FFFE, 0xFFFF_FFFF, 0, 1], 0, 0),
            ([0xFFFF_FFFF, 2], 2, 0),
            ([5, 6, 6 + 2**20], 0, 0),
        ],
        ids=[
            "in-order",
            "gap-of-2",
            "late-arrival",
            "duplicate",
            "wrap",
            "gap-across-wrap",
            "restart",
        ],
    )
    async def test_losses_from_sequence_numbers(
        self, url: str, seqs: list[int], gaps: int, reordered: int
    ) -> None:
        async with asyncbus.connect(url) as bus, bus.subscribe("S", maxsize=100) as sub:
            with RawSender(url) as peer:
                for seq in seqs:
                    peer.send(lc02(seq, "S", seq.to_bytes(4, "big")))

                messages = await receive_many(sub, len(seqs))

            stats = bus.statistics()

        # Late and repeated messages are delivered too: the counters only tell.
        assert [msg.seq for msg in messages] == seqs
        assert (stats.gaps, stats.reordered) == (gaps, reordered)

    async def test_senders_are_numbered_apart(self, url: str) -> None:
        async with asyncbus.connect(url) as bus, bus.subscribe("S") as sub:
            with RawSender(url) as one, RawSender(url) as two:
                one.send(lc02(0, "S"))
                two.send(lc02(100, "S"))
                one.send(lc02(1, "S"))
                two.send(lc02(101, "S"))
                await receive_many(sub, 4)

            assert bus.statistics().gaps == 0


class TestIncomplete:
    async def test_evicted_to_stay_within_max_message_size(self, url: str) -> None:
        """Two partial messages that do not fit the reassembly budget: the older goes."""
        size = 100_000
        first, second = fragments(1, "T", payload(1, size)), fragments(2, "T", payload(2, size))
        async with (
            asyncbus.connect(url, max_message_size=size) as bus,
            bus.subscribe("T") as sub,
        ):
            with RawSender(url) as peer:
                peer.send(lc02(0, "T", b"zero"))
                peer.send(first[0])
                peer.send(second[0])  # no room for both: message 1 is given up
                peer.send(second[1])
                peer.send(first[1])  # too late, dropped without counting again
                peer.send(lc02(3, "T", b"three"))
                messages = await receive_many(sub, 3)

            stats = bus.statistics()

        assert [msg.seq for msg in messages] == [0, 2, 3]
        assert messages[1].data == payload(2, size)
        assert (stats.incomplete, stats.gaps, stats.malformed) == (1, 1, 0)

    async def test_given_up_after_the_reassembly_timeout(self, url: str) -> None:
        async with asyncbus.connect(url) as bus, bus.subscribe("T") as sub:
            with RawSender(url) as peer:
                peer.send(lc02(0, "T", b"zero"))
                peer.send(fragments(1, "T", payload(1, 100_000))[0])  # fragment 1 never comes
                assert (await receive(sub)).seq == 0
                assert bus.statistics().incomplete == 0
                # The bus gives up 2 s after the last fragment (a timer, no event to await).
                await wait_until(lambda: bus.statistics().incomplete == 1, within=2.0 + TIMEOUT)
                peer.send(lc02(2, "T", b"two"))
                assert (await receive(sub)).seq == 2

            stats = bus.statistics()

        assert (stats.incomplete, stats.gaps, stats.received) == (1, 1, 2)


class TestKernelDrops:
    async def test_full_receive_buffer_is_counted(self) -> None:
        """A paused reader with a tiny buffer: the kernel drops, the bus counts."""
        url = free_url(recv_buf_size=4096)
        flood = 200
        async with (
            asyncbus.connect(url) as bus,
            bus.subscribe("F", maxsize=flood + 2) as witness,
        ):
            blocking = bus.subscribe("F", maxsize=1, policy="block")
            with RawSender(url) as peer:
                peer.send(lc02(0, "F", bytes(200)))
                await receive(witness)  # the block queue is full too: reading stopped
                for seq in range(1, flood + 1):
                    peer.send(lc02(seq, "F", bytes(200)))

                await blocking.aclose()  # reading resumes
                first = await receive(witness)
                # The bus drains the socket in one go before it wakes a receiver: the
                # buffer is empty now, so the marker cannot be dropped.
                peer.send(lc02(flood + 1, "F", b"end"))
                received = [first]
                while received[-1].data != b"end":
                    received.append(await receive(witness))

            stats = bus.statistics()

        assert stats.kernel_drops > 0
        # Every drop is a message missing from the sender's numbers, and vice versa.
        assert stats.gaps == stats.kernel_drops
        assert stats.received + stats.gaps == flood + 2
        seqs = [msg.seq for msg in received]
        assert seqs == sorted(seqs)
        assert 1 + len(received) == stats.received


class TestInterface:
    @pytest.mark.parametrize("interface", ["lo", "127.0.0.1"], ids=["name", "address"])
    async def test_loopback_interface(self, url: str, interface: str) -> None:
        pinned = f"{url}&interface={interface}"
        async with (
            asyncbus.connect(pinned) as a,
            asyncbus.connect(url) as b,
            a.subscribe("t") as a_sub,
            b.subscribe("t") as b_sub,
        ):
            assert a.url == pinned
            await a.publish("t", b"from pinned")
            await b.publish("t", b"from default")
            assert (await receive(a_sub)).data == b"from default"
            assert (await receive(b_sub)).data == b"from pinned"

    async def test_unknown_interface_name_fails_at_open(self, url: str) -> None:
        bus = asyncbus.connect(url, interface="nosuchif0")  # parsing does no I/O
        with pytest.raises(asyncbus.InvalidURLError, match="nosuchif0"):
            await bus.open()

        assert bus.closed
        with pytest.raises(asyncbus.InvalidURLError):
            async with asyncbus.connect(url, interface="nosuchif0"):
                pass

    async def test_unknown_interface_address_fails_at_open(self, url: str) -> None:
        bus = asyncbus.connect(url, interface="203.0.113.77")  # TEST-NET-3, on no interface
        try:
            with pytest.raises(asyncbus.InvalidURLError):
                await bus.open()
        finally:
            await bus.aclose()


class TestLifecycle:
    async def test_closing_frees_the_port(self, url: str) -> None:
        group, port = group_of(url)

        def bind_exclusively() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind((group, port))  # no SO_REUSEADDR: fails while a bus holds it

        async with asyncbus.connect(url):
            with pytest.raises(OSError, match="in use") as caught:
                bind_exclusively()

            assert caught.value.errno == errno.EADDRINUSE

        bind_exclusively()
        async with asyncbus.connect(url) as again, again.subscribe("t"):
            pass

    async def test_a_publisher_only_bus_hears_nothing(self, url: str) -> None:
        """The group is joined at the first subscription, not at open."""
        async with asyncbus.connect(url) as quiet, asyncbus.connect(url) as other:
            await quiet.publish("t", b"own")
            await other.publish("t", b"other")
            async with quiet.subscribe("t") as sub:
                await other.publish("t", b"after subscribing")
                msg = await receive(sub)
                await quiet.publish("t", b"own again")
                await fence(quiet, other)

            stats = quiet.statistics()

        assert msg.data == b"after subscribing"
        assert stats.own_filtered == 1  # only the publication made after joining
        assert stats.datagrams == 2  # "after subscribing" and the fence
        assert stats.unmatched == 0

    async def test_many_buses_open_and_close_cleanly(self, url: str) -> None:
        for _ in range(20):
            async with asyncbus.connect(url) as bus, bus.subscribe("t"):
                await bus.publish("t", b"x")


class Recorder(asyncio.DatagramProtocol):
    """An asyncio datagram protocol that records its calls."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.datagrams: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.calls.append("connection_made")

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.calls.append("datagram_received")
        self.datagrams.put_nowait((data, addr))

    def error_received(self, exc: Exception) -> None:
        self.calls.append(("error_received", exc))

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append(("connection_lost", exc))
        self.lost.set_result(exc)

    async def next(self) -> tuple[bytes, tuple[str, int]]:
        return await asyncio.wait_for(self.datagrams.get(), TIMEOUT)


@pytest.fixture
async def endpoint(url: str) -> AsyncIterator[tuple[UDPMulticastTransport, Recorder]]:
    recorder = Recorder()
    transport, protocol = await create_udpm_endpoint(lambda: recorder, parse_url(url))
    assert protocol is recorder
    try:
        yield transport, recorder
    finally:
        transport.close()
        await asyncio.wait_for(recorder.lost, TIMEOUT)


class TestTransport:
    async def test_asyncio_call_order(self, url: str) -> None:
        recorder = Recorder()
        transport, _ = await create_udpm_endpoint(lambda: recorder, parse_url(url))
        assert recorder.calls == ["connection_made"]
        assert transport.is_reading()
        transport.join_group()
        with RawSender(url) as peer:
            peer.send(b"anything")
            data, addr = await recorder.next()

        assert (data, f"{addr[0]}:{addr[1]}") == (b"anything", peer.address)
        transport.close()
        transport.close()  # idempotent
        assert transport.is_closing()
        assert not transport.is_reading()
        with pytest.raises(RuntimeError):
            transport.sendto(b"too late")

        assert await asyncio.wait_for(recorder.lost, TIMEOUT) is None
        assert recorder.calls == ["connection_made", "datagram_received", ("connection_lost", None)]
        assert transport.get_extra_info("socket") is None

    async def test_abort(self, url: str) -> None:
        recorder = Recorder()
        transport, _ = await create_udpm_endpoint(lambda: recorder, parse_url(url))
        transport.abort()
        assert await asyncio.wait_for(recorder.lost, TIMEOUT) is None
        assert recorder.calls == ["connection_made", ("connection_lost", None)]

    async def test_nothing_arrives_before_join_group(
        self, url: str, endpoint: tuple[UDPMulticastTransport, Recorder]
    ) -> None:
        transport, recorder = endpoint
        with RawSender(url) as peer:
            peer.send(b"before")
            transport.join_group()
            transport.join_group()  # idempotent
            peer.send(b"after")
            assert (await recorder.next())[0] == b"after"

    async def test_own_datagrams_are_filtered(
        self, url: str, endpoint: tuple[UDPMulticastTransport, Recorder]
    ) -> None:
        transport, recorder = endpoint
        transport.join_group()
        host, port = transport.get_extra_info("sockname")
        with RawListener(url) as listener, RawSender(url) as peer:
            transport.sendto(b"own")
            data, source = await listener.receive()
            assert (data, source) == (b"own", f"{host}:{port}")
            peer.send(b"marker")
            assert (await recorder.next())[0] == b"marker"

        assert transport.own_filtered == 1

    async def test_sockname_is_the_address_others_see(
        self, url: str, endpoint: tuple[UDPMulticastTransport, Recorder]
    ) -> None:
        transport, _ = endpoint
        host, port = transport.get_extra_info("sockname")
        assert transport.get_extra_info("send_socket").getsockname() == (host, port)
        async with asyncbus.connect(url) as bus, bus.subscribe("raw") as sub:
            transport.sendto(lc02(0, "raw", b"via transport"))
            msg = await receive(sub)

        assert msg.sender.address == f"{host}:{port}"

    async def test_pause_and_resume_reading(
        self, url: str, endpoint: tuple[UDPMulticastTransport, Recorder]
    ) -> None:
        transport, recorder = endpoint
        transport.join_group()
        transport.pause_reading()
        assert not transport.is_reading()
        with RawListener(url) as witness, RawSender(url) as peer:
            peer.send(b"held")
            await witness.receive()  # so it is in the transport's socket as well
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(recorder.datagrams.get(), 0.1)

            transport.resume_reading()
            assert transport.is_reading()
            assert (await recorder.next())[0] == b"held"

    async def test_get_extra_info(self) -> None:
        url = free_url(recv_buf_size=65536)
        recorder = Recorder()
        transport, _ = await create_udpm_endpoint(lambda: recorder, parse_url(url))
        try:
            assert transport.get_extra_info("group") == group_of(url)
            receiver = transport.get_extra_info("socket")
            assert isinstance(receiver, socket.socket)
            assert receiver.getsockname() == group_of(url)
            assert transport.get_extra_info("recv_buf_size") == 2 * 65536  # Linux doubles it
            assert transport.get_extra_info("no such thing", "default") == "default"
        finally:
            transport.close()
            await asyncio.wait_for(recorder.lost, TIMEOUT)

    async def test_leaked_transport_warns(self, url: str) -> None:
        async def open_and_forget() -> None:
            transport, _ = await create_udpm_endpoint(Recorder, parse_url(url))
            transport.pause_reading()  # now the loop no longer refers to it
            # ... and neither does anything else once this returns.

        with pytest.warns(ResourceWarning, match="unclosed transport"):
            await open_and_forget()

    async def test_write_buffer_limits(
        self, endpoint: tuple[UDPMulticastTransport, Recorder]
    ) -> None:
        transport, _ = endpoint
        assert transport.get_write_buffer_size() == 0
        transport.set_write_buffer_limits(high=1000)
        assert transport.get_write_buffer_limits() == (250, 1000)
        transport.set_write_buffer_limits(high=1000, low=10)
        assert transport.get_write_buffer_limits() == (10, 1000)
        with pytest.raises(ValueError, match="high"):
            transport.set_write_buffer_limits(high=10, low=20)

    async def test_failing_connection_made_closes_with_the_error(self, url: str) -> None:
        class Failing(Recorder):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                raise LookupError("in connection_made")

        recorder = Failing()
        with capture_loop_errors() as errors:
            transport, _ = await create_udpm_endpoint(lambda: recorder, parse_url(url))
            lost = await asyncio.wait_for(recorder.lost, TIMEOUT)

        assert isinstance(lost, LookupError)
        assert transport.is_closing()
        assert [type(error.get("exception")) for error in errors] == [LookupError]
        assert transport.get_extra_info("socket") is None

    async def test_failing_datagram_received_closes_with_the_error(self, url: str) -> None:
        class Failing(Recorder):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                raise LookupError("in datagram_received")

        recorder = Failing()
        with capture_loop_errors() as errors:
            transport, _ = await create_udpm_endpoint(lambda: recorder, parse_url(url))
            transport.join_group()
            with RawSender(url) as peer:
                peer.send(b"boom")
                peer.send(b"never read")
                lost = await asyncio.wait_for(recorder.lost, TIMEOUT)

        assert isinstance(lost, LookupError)
        assert [type(error.get("exception")) for error in errors] == [LookupError]
        assert recorder.calls[-1] == ("connection_lost", lost)
        assert transport.get_extra_info("socket") is None
