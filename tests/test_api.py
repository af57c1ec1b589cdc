"""The API layer: Bus, Topic, Subscription, Message, overflow policies, statistics.

Every test has a bus URL of its own (``free_url``), so tests never hear each other.
Where delivery must be deterministic the tests use ``receive_own=True``: a bus hands
its own publications to its own subscriptions in-process, without the kernel. Where
they need the network, they wait on messages with a bound (``receive``) and use a
``fence`` (a message through the same socket) to know that everything sent before
has been processed, instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import re
import time
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import pytest

import asyncbus
from tests._bus_support import (
    NO_LOOPBACK_MULTICAST,
    TIMEOUT,
    capture_loop_errors,
    fence,
    free_url,
    loopback_multicast_works,
    receive,
    receive_many,
    wait_until,
)
from tests.conftest import require


@pytest.fixture(autouse=True)
def _loopback_multicast() -> None:
    require(loopback_multicast_works(), NO_LOOPBACK_MULTICAST)


@pytest.fixture
def url() -> str:
    return free_url()


@pytest.fixture
async def own_bus(url: str) -> AsyncIterator[asyncbus.Bus]:
    """A bus that delivers its own publications to itself (deterministic, in-process)."""
    async with asyncbus.connect(url, receive_own=True) as bus:
        yield bus


def data_of(messages: list[asyncbus.Message]) -> list[bytes]:
    return [msg.data for msg in messages]


def drain(sub: asyncbus.Subscription) -> list[bytes]:
    """Take everything queued, without waiting."""
    taken = []
    while True:
        try:
            taken.append(sub.receive_nowait().data)
        except asyncbus.WouldBlock:
            return taken


class TestLifecycle:
    async def test_connect_opens_nothing_until_open(self, url: str) -> None:
        bus = asyncbus.connect(url)
        assert isinstance(bus, asyncbus.Bus)
        new = (bus.sender, bus.closed)
        assert new == (None, False)
        await bus.open()
        try:
            sender, closed = bus.sender, bus.closed
            assert sender is not None
            assert sender.address.startswith("127.0.0.1:")
            assert not closed
        finally:
            await bus.aclose()

        assert bus.closed

    async def test_async_with_returns_the_bus_and_closes_it(self, url: str) -> None:
        bus = asyncbus.connect(url)
        async with bus as entered:
            assert entered is bus
            assert not bus.closed

        assert bus.closed

    async def test_async_with_closes_on_error(self, url: str) -> None:
        bus = asyncbus.connect(url)
        with pytest.raises(KeyError):
            async with bus:
                raise KeyError("boom")

        assert bus.closed
        with pytest.raises(asyncbus.ClosedError):
            await bus.publish("x", b"")

    async def test_aclose_is_idempotent(self, url: str) -> None:
        async with asyncbus.connect(url) as bus:
            await bus.aclose()
            await bus.aclose()
            assert bus.closed

        await bus.aclose()

    async def test_aclose_before_open(self, url: str) -> None:
        bus = asyncbus.connect(url)
        await bus.aclose()
        assert bus.closed
        with pytest.raises(RuntimeError):
            await bus.open()

    async def test_open_twice_is_an_error(self, url: str) -> None:
        async with asyncbus.connect(url) as bus:
            with pytest.raises(RuntimeError, match="already opened"):
                await bus.open()

    async def test_reopen_after_close_is_an_error(self, url: str) -> None:
        bus = asyncbus.connect(url)
        async with bus:
            pass

        with pytest.raises(RuntimeError):
            await bus.open()

    async def test_aclose_during_open_wins(self, url: str) -> None:
        bus = asyncbus.connect(url)
        opening = asyncio.create_task(bus.open())
        await asyncio.sleep(0)  # open() runs up to its first await (sockets exist now)
        await bus.aclose()
        try:
            # Raising ClosedError is as good as returning: either way it must stay closed.
            with contextlib.suppress(asyncbus.ClosedError):
                await opening

            closed = bus.closed
            try:
                await bus.publish("x", b"after close")
            except asyncbus.ClosedError:
                published_after_close = False
            else:
                published_after_close = True
        finally:
            await bus.aclose()  # today this is what really closes it

        assert closed
        assert not published_after_close

    async def test_cancelled_open_leaves_the_bus_closed(self, url: str) -> None:
        bus = asyncbus.connect(url)
        with capture_loop_errors() as errors:
            opening = asyncio.create_task(bus.open())
            await asyncio.sleep(0)  # open() runs up to its first await (sockets exist now)
            opening.cancel()
            with pytest.raises(asyncio.CancelledError):
                await opening

            assert bus.closed
            with pytest.raises(asyncbus.ClosedError):
                await bus.publish("x", b"")

            await bus.aclose()
            await asyncio.sleep(0)  # let callbacks the cancellation scheduled run

        assert not errors

    async def test_publish_before_open_is_a_runtime_error(self, url: str) -> None:
        bus = asyncbus.connect(url)
        topic = bus.topic("early")
        with pytest.raises(RuntimeError, match="not open"):
            await bus.publish("early", b"x")

        with pytest.raises(RuntimeError, match="not open"):
            await topic.publish(b"x")

        await bus.aclose()

    async def test_publish_after_close_is_closed_error(self, url: str) -> None:
        async with asyncbus.connect(url) as bus:
            topic = bus.topic("late")

        with pytest.raises(asyncbus.ClosedError):
            await bus.publish("late", b"x")

        with pytest.raises(asyncbus.ClosedError):
            await topic.publish(b"x")

        assert bus.statistics().published == 0

    async def test_subscribe_after_close_is_closed_error(self, url: str) -> None:
        async with asyncbus.connect(url) as bus:
            pass

        with pytest.raises(asyncbus.ClosedError):
            bus.subscribe("x")

        with pytest.raises(asyncbus.ClosedError):
            bus.topic("x").subscribe()

        with pytest.raises(asyncbus.ClosedError):
            async for _ in bus.topic("x"):
                pass

    async def test_closed_error_is_anyio_closed_resource_error(self, url: str) -> None:
        async with asyncbus.connect(url) as bus:
            pass

        with pytest.raises(anyio.ClosedResourceError):
            await bus.publish("x", b"")

    async def test_subscription_made_before_open_receives_once_open(self, url: str) -> None:
        receiver = asyncbus.connect(url)
        sub = receiver.subscribe("early")
        try:
            async with receiver, asyncbus.connect(url) as sender:
                await sender.publish("early", b"hello")
                assert (await receive(sub)).data == b"hello"
        finally:
            await sub.aclose()

    async def test_failed_open_ends_earlier_subscriptions(self, url: str) -> None:
        bus = asyncbus.connect(url, interface="nosuchif0")
        sub = bus.subscribe("t")
        try:
            with pytest.raises(asyncbus.InvalidURLError):
                await bus.open()

            await bus.aclose()
            with pytest.raises(anyio.EndOfStream):
                await asyncio.wait_for(sub.receive(), 1.0)
        finally:
            await sub.aclose()

    async def test_statistics_survive_close(self, url: str) -> None:
        async with asyncbus.connect(url, receive_own=True) as bus, bus.subscribe("t") as sub:
            await bus.publish("t", b"1")
            await bus.publish("t", b"2")
            assert sub.receive_nowait().data == b"1"

        stats = bus.statistics()
        assert stats.published == 2
        assert stats.delivered == 2
        assert bus.statistics() == stats


class TestURL:
    @pytest.mark.parametrize(
        "bad",
        [
            "tcp://239.255.76.67:7667",
            "239.255.76.67:7667",
            "udpm://239.255.76.67:7667/path",
            "udpm://239.255.76.67:7667#fragment",
            "udpm://10.1.2.3:7667",
            "udpm://not-an-address:7667",
            "udpm://239.255.76.67:0",
            "udpm://239.255.76.67:99999",
            "udpm://239.255.76.67:port",
            "udpm://239.255.76.67:7667?ttl=256",
            "udpm://239.255.76.67:7667?ttl=-1",
            "udpm://239.255.76.67:7667?ttl=one",
            "udpm://239.255.76.67:7667?recv_buf_size=0",
            "udpm://239.255.76.67:7667?colour=blue",
            "udpm://239.255.76.67:7667?interface=",
        ],
        ids=[
            "tcp-scheme",
            "no-scheme",
            "path",
            "fragment",
            "unicast-group",
            "hostname",
            "port-0",
            "port-too-big",
            "port-not-a-number",
            "ttl-256",
            "ttl-negative",
            "ttl-not-a-number",
            "recv-buf-size-0",
            "unknown-option",
            "empty-interface",
        ],
    )
    def test_bad_url_fails_at_connect(self, bad: str) -> None:
        with pytest.raises(asyncbus.InvalidURLError) as caught:
            asyncbus.connect(bad)

        assert isinstance(caught.value, ValueError)
        assert "\n" not in str(caught.value)

    @pytest.mark.parametrize(
        "options",
        [{"ttl": 300}, {"colour": "blue"}, {"recv_buf_size": "big"}],
        ids=["ttl-300", "unknown-option", "recv-buf-size-not-a-number"],
    )
    def test_bad_option_fails_at_connect(self, url: str, options: dict[str, str | int]) -> None:
        with pytest.raises(asyncbus.InvalidURLError):
            asyncbus.connect(url, **options)  # type: ignore[arg-type]

    def test_url_must_be_a_str(self) -> None:
        with pytest.raises(asyncbus.InvalidURLError):
            asyncbus.connect(7667)  # type: ignore[arg-type]

    def test_bad_max_message_size(self, url: str) -> None:
        with pytest.raises(ValueError, match="max_message_size"):
            asyncbus.connect(url, max_message_size=0)

    def test_url_is_normalized(self) -> None:
        bus = asyncbus.connect("udpm://239.255.76.67:7701")
        assert bus.url == "udpm://239.255.76.67:7701?ttl=0"

    def test_options_override_the_query(self) -> None:
        bus = asyncbus.connect("udpm://239.255.76.67:7701?ttl=0", ttl=1, recv_buf_size=65536)
        assert bus.url == "udpm://239.255.76.67:7701?ttl=1&recv_buf_size=65536"

    def test_default_url(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("ASYNCBUS_URL", raising=False)
        assert asyncbus.connect().url == asyncbus.DEFAULT_URL
        assert asyncbus.DEFAULT_URL == "udpm://239.255.76.67:7667?ttl=0"

    def test_empty_environment_variable_means_default(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("ASYNCBUS_URL", "")
        assert asyncbus.connect().url == asyncbus.DEFAULT_URL

    def test_bad_environment_variable_fails_at_connect(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("ASYNCBUS_URL", "udpm://10.0.0.1:7667")
        with pytest.raises(asyncbus.InvalidURLError):
            asyncbus.connect()

    def test_explicit_url_beats_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("ASYNCBUS_URL", "udpm://239.255.76.67:7702?ttl=0")
        assert asyncbus.connect("udpm://239.255.76.67:7703").url.endswith(":7703?ttl=0")

    async def test_environment_variable_is_the_bus_used(
        self, url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("ASYNCBUS_URL", url)
        async with asyncbus.connect() as from_env, asyncbus.connect(url) as explicit:
            assert from_env.url == url
            async with explicit.subscribe("env") as sub:
                await from_env.publish("env", b"via ASYNCBUS_URL")
                msg = await receive(sub)

        assert msg.data == b"via ASYNCBUS_URL"
        assert from_env.sender is not None
        assert msg.sender.address == from_env.sender.address


TOO_LONG = "a" * 64
INVALID_TOPICS = pytest.mark.parametrize(
    "name",
    ["", "a\0b", TOO_LONG, "a" * 62 + "é", "bad\udc80"],
    ids=["empty", "nul", "64-bytes", "64-bytes-of-utf8", "lone-surrogate"],
)


class TestTopicNames:
    @INVALID_TOPICS
    def test_topic_rejects(self, url: str, name: str) -> None:
        bus = asyncbus.connect(url)
        with pytest.raises(asyncbus.LocalProtocolError):
            bus.topic(name)

    @INVALID_TOPICS
    async def test_publish_rejects(self, url: str, name: str) -> None:
        async with asyncbus.connect(url) as bus:
            with pytest.raises(asyncbus.LocalProtocolError) as caught:
                await bus.publish(name, b"x")

            assert bus.statistics().published == 0

        assert isinstance(caught.value, ValueError)

    def test_topic_must_be_a_str(self, url: str) -> None:
        with pytest.raises(TypeError):
            asyncbus.connect(url).topic(b"bytes")  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "name",
        ["a" * 63, "€" * 21, "x", "sensors/imu [0] *?"],
        ids=["63-ascii", "63-bytes-of-utf8", "one-char", "glob-chars"],
    )
    async def test_valid_names_travel(self, url: str, name: str) -> None:
        async with (
            asyncbus.connect(url) as sender,
            asyncbus.connect(url) as receiver,
            receiver.topic(name).subscribe() as sub,
        ):
            await sender.topic(name).publish(b"payload")
            msg = await receive(sub)

        assert msg.topic == name
        assert msg.data == b"payload"

    def test_topic_knows_its_name_and_bus(self, url: str) -> None:
        bus = asyncbus.connect(url)
        topic = bus.topic("chat")
        assert topic.name == "chat"
        assert topic.bus is bus


class TestPublishErrors:
    async def test_str_payload_is_a_type_error_with_a_hint(self, own_bus: asyncbus.Bus) -> None:
        with pytest.raises(TypeError, match=r"encode"):
            await own_bus.publish("t", "text")  # type: ignore[arg-type]

        with pytest.raises(TypeError, match=r"encode"):
            await own_bus.topic("t").publish("text")  # type: ignore[arg-type]

        assert own_bus.statistics().published == 0

    @pytest.mark.parametrize("data", [None, 42, ["a"]], ids=["none", "int", "list"])
    async def test_non_bytes_payload_is_a_type_error(
        self, own_bus: asyncbus.Bus, data: object
    ) -> None:
        with pytest.raises(TypeError):
            await own_bus.publish("t", data)  # type: ignore[arg-type]

    async def test_message_too_large(self, url: str) -> None:
        async with asyncbus.connect(url, receive_own=True, max_message_size=100) as bus:
            async with bus.subscribe("t") as sub:
                await bus.publish("t", bytes(100))
                with pytest.raises(asyncbus.MessageTooLargeError) as caught:
                    await bus.publish("t", bytes(101))

                await bus.publish("t", b"after")
                assert data_of([sub.receive_nowait(), sub.receive_nowait()]) == [
                    bytes(100),
                    b"after",
                ]

            # The refused message used no sequence number: numbering stays gapless.
            assert bus.statistics().published == 2

        assert isinstance(caught.value, asyncbus.LocalProtocolError)

    async def test_too_large_for_the_receiver_is_counted(self, url: str) -> None:
        async with (
            asyncbus.connect(url) as sender,
            asyncbus.connect(url, max_message_size=100) as receiver,
            receiver.subscribe("t") as sub,
        ):
            await sender.publish("t", bytes(101))
            await sender.publish("t", bytes(100))
            msg = await receive(sub)
            assert msg.data == bytes(100)
            assert receiver.statistics().oversize == 1


class TestDelivery:
    async def test_one_bus_publishes_another_receives(self, url: str) -> None:
        async with (
            asyncbus.connect(url) as a,
            asyncbus.connect(url) as b,
            b.subscribe("chat") as sub,
        ):
            before = time.time()
            for text in (b"one", b"two", b"three"):
                await a.publish("chat", text)

            messages = await receive_many(sub, 3)
            after = time.time()

        assert data_of(messages) == [b"one", b"two", b"three"]
        assert {msg.topic for msg in messages} == {"chat"}
        first = messages[0].seq
        assert [msg.seq for msg in messages] == [first, first + 1, first + 2]
        assert a.sender is not None
        for msg in messages:
            assert msg.sender.address == a.sender.address
            assert str(msg.sender) == a.sender.address
            assert type(msg.data) is bytes
            assert before <= msg.received_at <= after

    async def test_sender_equals_what_others_see(self, url: str) -> None:
        async with (
            asyncbus.connect(url) as a,
            asyncbus.connect(url) as b,
            b.subscribe("who") as sub,
        ):
            await a.publish("who", b"me")
            msg = await receive(sub)

        assert msg.sender == a.sender

    @pytest.mark.parametrize(
        "data",
        [b"bytes", bytearray(b"bytearray"), memoryview(b"xmemoryviewx")[1:-1], b""],
        ids=["bytes", "bytearray", "memoryview-slice", "empty"],
    )
    async def test_bytes_like_payloads(self, url: str, data: bytes) -> None:
        async with (
            asyncbus.connect(url) as a,
            asyncbus.connect(url) as b,
            b.subscribe("t") as sub,
        ):
            await a.publish("t", data)
            msg = await receive(sub)

        assert msg.data == bytes(data)
        assert type(msg.data) is bytes

    async def test_never_receives_its_own_by_default(self, url: str) -> None:
        async with (
            asyncbus.connect(url) as a,
            asyncbus.connect(url) as b,
            a.subscribe("news") as a_news,
            a.subscribe("reply") as a_reply,
            b.subscribe("news") as b_news,
        ):
            await a.publish("news", b"hello")
            assert (await receive(b_news)).data == b"hello"
            # b's reply reaches a's socket after a's own datagram did.
            await b.publish("reply", b"seen")
            assert (await receive(a_reply)).data == b"seen"
            with pytest.raises(asyncbus.WouldBlock):
                a_news.receive_nowait()

            stats = a.statistics()

        assert stats.own_filtered == 1
        assert stats.received == 1  # the reply only
        assert stats.published == 1

    async def test_receive_own_delivers_exactly_once(self, url: str) -> None:
        async with (
            asyncbus.connect(url, receive_own=True) as a,
            asyncbus.connect(url) as b,
            a.subscribe("news") as a_news,
        ):
            await a.publish("news", b"hello")
            # Delivered in-process, before publish() returns.
            msg = a_news.receive_nowait()
            assert msg.data == b"hello"
            assert a.sender is not None
            assert msg.sender.address == a.sender.address
            await fence(a, b)
            with pytest.raises(asyncbus.WouldBlock):
                a_news.receive_nowait()

            stats = a.statistics()

        assert stats.own_filtered == 1
        assert stats.received == 1  # the fence only: the echo is not "received"

    async def test_receive_own_fragmented_exactly_once(self, url: str) -> None:
        big = bytes(range(256)) * 1200  # 300 KiB: 5 fragments on the wire
        async with (
            asyncbus.connect(url, receive_own=True) as a,
            asyncbus.connect(url) as b,
            a.subscribe("big") as a_big,
            b.subscribe("big") as b_big,
        ):
            await a.publish("big", big)
            own = a_big.receive_nowait()
            remote = await receive(b_big)
            assert own.data == remote.data == big
            assert own.seq == remote.seq  # the number on the wire
            await fence(a, b)
            with pytest.raises(asyncbus.WouldBlock):
                a_big.receive_nowait()

            assert a.statistics().own_filtered == 5

    async def test_every_matching_subscription_gets_a_copy(self, url: str) -> None:
        async with (
            asyncbus.connect(url) as a,
            asyncbus.connect(url) as b,
            b.subscribe("s/x") as exact1,
            b.subscribe("s/x") as exact2,
            b.subscribe("s/*") as glob,
            b.subscribe("other") as other,
        ):
            await a.publish("s/x", b"m")
            for sub in (exact1, exact2, glob):
                assert (await receive(sub)).data == b"m"

            await fence(b, a)
            with pytest.raises(asyncbus.WouldBlock):
                other.receive_nowait()

            assert b.statistics().delivered == 3 + 1  # and the fence

    async def test_order_is_kept_per_sender(self, url: str) -> None:
        count = 200
        async with (
            asyncbus.connect(url) as a,
            asyncbus.connect(url) as b,
            b.subscribe("ordered", maxsize=count) as sub,
        ):
            for n in range(count):
                await a.publish("ordered", n.to_bytes(4, "big"))

            messages = await receive_many(sub, count)

        assert [int.from_bytes(msg.data, "big") for msg in messages] == list(range(count))
        seqs = [msg.seq for msg in messages]
        assert seqs == list(range(seqs[0], seqs[0] + count))

    async def test_two_publishers_are_told_apart(self, url: str) -> None:
        async with (
            asyncbus.connect(url) as a,
            asyncbus.connect(url) as c,
            asyncbus.connect(url) as b,
            b.subscribe("t") as sub,
        ):
            await a.publish("t", b"from a")
            await c.publish("t", b"from c")
            messages = await receive_many(sub, 2)

        assert a.sender is not None and c.sender is not None
        assert a.sender.address != c.sender.address
        senders = {msg.data: msg.sender.address for msg in messages}
        assert senders == {b"from a": a.sender.address, b"from c": c.sender.address}


class TestMessage:
    def test_message_fields_equality_and_repr(self) -> None:
        sender = asyncbus.Sender("127.0.0.1:40123")
        msg = asyncbus.Message("chat", b"x" * 40, 7, sender, 1.0)
        same = asyncbus.Message("chat", b"x" * 40, 7, asyncbus.Sender("127.0.0.1:40123"), 2.0)
        assert msg == same  # received_at is when, not what
        assert msg != asyncbus.Message("chat", b"x" * 40, 8, sender, 1.0)
        with pytest.raises(TypeError):
            hash(msg)

        assert str(sender) == "127.0.0.1:40123"
        assert (sender.pid, sender.uid, sender.gid) == (None, None, None)
        assert "'chat'" in repr(msg)
        assert "..." in repr(msg)
        assert "seq=7" in repr(msg)


class TestPatterns:
    @pytest.mark.parametrize(
        ("pattern", "regex", "topic", "matches"),
        [
            ("SENSOR", False, "SENSOR", True),
            ("SENSOR", False, "SENSOR2", False),
            ("SENSOR", False, "sensor", False),
            ("SENS*", False, "SENSOR", True),
            ("SENS?R", False, "SENSOR", True),
            ("SENS[A-O]R", False, "SENSOR", True),
            ("sensors/*", False, "sensors/imu/0", True),
            ("*/imu", False, "sensors/imu/0", False),
            ("SENS.*", True, "SENSOR", True),
            ("ENS", True, "SENSOR", False),
            ("SENS", True, "SENSOR", False),
            (".*OR", True, "SENSOR", True),
            ("A|B", True, "AB", False),
            ("A|B", True, "B", True),
            (re.compile("SENS.R"), False, "SENSOR", True),
            (re.compile("ENS"), False, "SENSOR", False),
            (re.compile("a|b"), False, "b", True),
        ],
        ids=[
            "exact",
            "exact-not-prefix",
            "exact-case-sensitive",
            "glob-star",
            "glob-question",
            "glob-class",
            "glob-star-crosses-slash",
            "glob-anchored",
            "regex-lcm-style",
            "regex-anchored-no-substring",
            "regex-anchored-no-prefix",
            "regex-suffix",
            "regex-alternation-anchored",
            "regex-alternation",
            "compiled",
            "compiled-anchored",
            "compiled-alternation",
        ],
    )
    async def test_pattern(
        self,
        own_bus: asyncbus.Bus,
        pattern: str | re.Pattern[str],
        regex: bool,
        topic: str,
        matches: bool,
    ) -> None:
        async with own_bus.subscribe(pattern, regex=regex) as sub:
            await own_bus.publish(topic, b"m")
            if matches:
                msg = sub.receive_nowait()
                assert msg.topic == topic
            else:
                with pytest.raises(asyncbus.WouldBlock):
                    sub.receive_nowait()

    async def test_topic_subscribe_is_exact_even_with_glob_chars(
        self, own_bus: asyncbus.Bus
    ) -> None:
        async with (
            own_bus.topic("a*b").subscribe() as exact,
            own_bus.subscribe("a*b") as glob,
        ):
            await own_bus.publish("aXb", b"1")
            await own_bus.publish("a*b", b"2")
            assert drain(exact) == [b"2"]
            assert drain(glob) == [b"1", b"2"]
            assert exact.pattern == glob.pattern == "a*b"

    async def test_async_for_topic_is_exact_even_with_glob_chars(
        self, own_bus: asyncbus.Bus
    ) -> None:
        topic = own_bus.topic("q?")

        async def publish() -> None:
            await wait_until(lambda: own_bus.statistics().subscriptions == 1)
            await own_bus.publish("qX", b"no")
            await own_bus.publish("q?", b"yes")

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(publish())
            async with asyncio.timeout(TIMEOUT):
                async for msg in topic:
                    received = msg.data
                    break

        assert received == b"yes"

    @pytest.mark.parametrize(
        ("pattern", "regex", "error"),
        [
            ("", False, ValueError),
            ("(", True, ValueError),
            (b"bytes", False, TypeError),
            (re.compile(b"bytes"), False, TypeError),
            (42, False, TypeError),
        ],
        ids=["empty", "bad-regex", "bytes", "compiled-bytes", "int"],
    )
    def test_bad_pattern(
        self, url: str, pattern: object, regex: bool, error: type[Exception]
    ) -> None:
        bus = asyncbus.connect(url)
        with pytest.raises(error):
            bus.subscribe(pattern, regex=regex)  # type: ignore[arg-type]

        assert bus.statistics().subscriptions == 0

    @pytest.mark.parametrize(
        ("options", "error"),
        [
            ({"maxsize": 0}, ValueError),
            ({"maxsize": -1}, ValueError),
            ({"maxsize": True}, ValueError),
            ({"maxsize": 1.5}, ValueError),
            ({"policy": "drop_everything"}, ValueError),
        ],
        ids=["maxsize-0", "maxsize-negative", "maxsize-bool", "maxsize-float", "unknown-policy"],
    )
    def test_bad_subscription_options(
        self, url: str, options: dict[str, object], error: type[Exception]
    ) -> None:
        bus = asyncbus.connect(url)
        with pytest.raises(error):
            bus.subscribe("t", **options)  # type: ignore[arg-type]

        assert bus.statistics().subscriptions == 0


class TestOverflow:
    @pytest.mark.parametrize(
        ("policy", "kept"),
        [
            ("drop_oldest", [b"2", b"3", b"4"]),
            (asyncbus.OverflowPolicy.DROP_OLDEST, [b"2", b"3", b"4"]),
            ("drop_newest", [b"0", b"1", b"2"]),
            (asyncbus.OverflowPolicy.DROP_NEWEST, [b"0", b"1", b"2"]),
        ],
        ids=["drop-oldest-str", "drop-oldest-enum", "drop-newest-str", "drop-newest-enum"],
    )
    async def test_drop_policies(
        self, own_bus: asyncbus.Bus, policy: str, kept: list[bytes]
    ) -> None:
        async with own_bus.subscribe("t", maxsize=3, policy=policy) as sub:
            for n in range(5):
                await own_bus.publish("t", str(n).encode())

            stats = sub.statistics()
            assert stats.policy == asyncbus.OverflowPolicy(policy)
            assert stats.maxsize == 3
            assert stats.queued == 3
            assert stats.dropped == 2
            assert drain(sub) == kept
            assert own_bus.statistics().overflow_drops == 2

        assert isinstance(asyncbus.OverflowPolicy.BLOCK, str)

    @pytest.mark.parametrize(
        "maxsize",
        [
            1,
            2,
            4,
        ],
        ids=["maxsize-1", "maxsize-2", "maxsize-4"],
    )
    async def test_block_makes_publish_wait_for_room(
        self, own_bus: asyncbus.Bus, maxsize: int
    ) -> None:
        async with own_bus.subscribe("t", maxsize=maxsize, policy="block") as sub:
            for n in range(maxsize):
                await own_bus.publish("t", str(n).encode())

            publishing = asyncio.create_task(own_bus.publish("t", b"next"))
            done, _ = await asyncio.wait({publishing}, timeout=0.1)
            assert not done, "publish() went on although the block queue was full"
            assert sub.statistics().queued == maxsize

            assert sub.receive_nowait().data == b"0"
            # One message taken: there is room, so the publisher goes on (take() wakes it
            # at once; a second is plenty on a loaded machine).
            done, _ = await asyncio.wait({publishing}, timeout=1.0)
            assert done, "publish() stayed blocked after a receiver made room"
            await publishing
            assert drain(sub)[-1] == b"next"
            assert sub.statistics().dropped == 0
            assert own_bus.statistics().overflow_drops == 0

    async def test_room_goes_to_a_live_publisher_after_one_was_cancelled(
        self, own_bus: asyncbus.Bus
    ) -> None:
        async with own_bus.subscribe("t", maxsize=1, policy="block") as sub:
            await own_bus.publish("t", b"0")
            cancelled = asyncio.create_task(own_bus.publish("t", b"cancelled"))
            waiting = asyncio.create_task(own_bus.publish("t", b"waiting"))
            done, _ = await asyncio.wait({cancelled, waiting}, timeout=0.05)
            assert not done, "publish() went on although the block queue was full"
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled

            assert sub.receive_nowait().data == b"0"
            done, _ = await asyncio.wait({waiting}, timeout=1.0)
            assert done, "the live publisher stayed blocked: the room went to a cancelled one"
            assert drain(sub) == [b"waiting"]

    async def test_block_publisher_released_when_subscription_closes(
        self, own_bus: asyncbus.Bus
    ) -> None:
        sub = own_bus.subscribe("t", maxsize=1, policy="block")
        await own_bus.publish("t", b"0")
        publishing = asyncio.create_task(own_bus.publish("t", b"1"))
        done, _ = await asyncio.wait({publishing}, timeout=0.05)
        assert not done
        await sub.aclose()
        await asyncio.wait_for(publishing, TIMEOUT)

    async def test_block_publisher_released_when_bus_closes(self, url: str) -> None:
        async with asyncbus.connect(url, receive_own=True) as bus:
            sub = bus.subscribe("t", maxsize=1, policy="block")
            await bus.publish("t", b"0")
            publishing = asyncio.create_task(bus.publish("t", b"1"))
            done, _ = await asyncio.wait({publishing}, timeout=0.05)
            assert not done

        await asyncio.wait_for(publishing, TIMEOUT)
        assert sub.receive_nowait().data == b"0"
        await sub.aclose()

    async def test_block_on_the_network_stops_reading_until_drained(self, url: str) -> None:
        """A full block queue leaves later datagrams in the kernel, then gets all of them."""
        count = 6
        async with (
            asyncbus.connect(url) as a,
            asyncbus.connect(url) as b,
            asyncbus.connect(url) as c,
            b.subscribe("t", maxsize=2, policy="block") as blocking,
            c.subscribe("t") as witness,
        ):
            for n in range(count):
                await a.publish("t", str(n).encode())

            # c got all of them, so all of them reached b's socket too ...
            assert data_of(await receive_many(witness, count)) == [
                str(n).encode() for n in range(count)
            ]
            # ... but b stopped reading once its block queue was full (a block queue may
            # take "a few more than maxsize": those read before reading stopped).
            assert 2 <= b.statistics().received < count
            assert blocking.statistics().queued == b.statistics().received

            received = data_of(await receive_many(blocking, count))
            stats = b.statistics()

        assert received == [str(n).encode() for n in range(count)]
        assert stats.received == count
        assert stats.kernel_drops == 0
        assert stats.gaps == 0
        assert stats.overflow_drops == 0

    async def test_overflow_drops_sum_every_subscription_even_closed_ones(
        self, own_bus: asyncbus.Bus
    ) -> None:
        async with own_bus.subscribe("t", maxsize=1, policy="drop_newest") as first:
            async with own_bus.subscribe("t", maxsize=2, policy="drop_oldest") as second:
                for n in range(4):
                    await own_bus.publish("t", str(n).encode())

                assert first.statistics().dropped == 3
                assert second.statistics().dropped == 2
                assert own_bus.statistics().overflow_drops == 5

            # Closing with 2 queued counts them as dropped (documented), never less.
            assert second.statistics().dropped == 4
            assert own_bus.statistics().overflow_drops == 7


class TestReceive:
    async def test_receive_nowait_when_empty_is_would_block(self, own_bus: asyncbus.Bus) -> None:
        async with own_bus.subscribe("t") as sub:
            with pytest.raises(asyncbus.WouldBlock) as caught:
                sub.receive_nowait()

        assert isinstance(caught.value, anyio.WouldBlock)

    async def test_cancelled_receive_consumes_nothing(self, own_bus: asyncbus.Bus) -> None:
        async with own_bus.subscribe("t") as sub:
            waiting = asyncio.create_task(sub.receive())
            done, _ = await asyncio.wait({waiting}, timeout=0.05)
            assert not done
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting

            await own_bus.publish("t", b"kept")
            assert (await receive(sub)).data == b"kept"
            stats = sub.statistics()
            assert (stats.delivered, stats.received, stats.queued) == (1, 1, 0)

    async def test_cancel_after_delivery_leaves_the_message_queued(
        self, own_bus: asyncbus.Bus
    ) -> None:
        async with own_bus.subscribe("t") as sub:
            waiting = asyncio.create_task(sub.receive())
            done, _ = await asyncio.wait({waiting}, timeout=0.05)
            assert not done
            # publish() puts the message and wakes the receiver, without awaiting in between;
            # the cancel lands before the receiver runs again.
            await own_bus.publish("t", b"kept")
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting

            assert sub.statistics().queued == 1
            assert sub.receive_nowait().data == b"kept"

    async def test_anyio_cancel_scope_around_receive(self, own_bus: asyncbus.Bus) -> None:
        async with own_bus.subscribe("t") as sub:
            with anyio.move_on_after(0.05) as scope:
                await sub.receive()

            assert scope.cancelled_caught
            await own_bus.publish("t", b"after")
            with anyio.fail_after(TIMEOUT):
                assert (await sub.receive()).data == b"after"

    async def test_second_receiver_is_busy(self, own_bus: asyncbus.Bus) -> None:
        async with own_bus.subscribe("t") as sub:
            first = asyncio.create_task(sub.receive())
            done, _ = await asyncio.wait({first}, timeout=0.05)
            assert not done
            with pytest.raises(asyncbus.BusyError) as caught:
                await sub.receive()

            with pytest.raises(asyncbus.BusyError):
                await anext(aiter(sub))

            assert isinstance(caught.value, anyio.BusyResourceError)
            await own_bus.publish("t", b"for the first")
            assert (await asyncio.wait_for(first, TIMEOUT)).data == b"for the first"

    async def test_aclose_wakes_a_waiting_receiver_with_closed_error(
        self, own_bus: asyncbus.Bus
    ) -> None:
        sub = own_bus.subscribe("t")
        waiting = asyncio.create_task(sub.receive())
        done, _ = await asyncio.wait({waiting}, timeout=0.05)
        assert not done
        await sub.aclose()
        with pytest.raises(asyncbus.ClosedError):
            await asyncio.wait_for(waiting, TIMEOUT)

        assert sub.closed
        with pytest.raises(asyncbus.ClosedError):
            await sub.receive()

        with pytest.raises(asyncbus.ClosedError):
            sub.receive_nowait()

        await sub.aclose()  # idempotent
        assert own_bus.statistics().subscriptions == 0

    async def test_closed_subscription_gets_nothing_more(self, own_bus: asyncbus.Bus) -> None:
        sub = own_bus.subscribe("t")
        await own_bus.publish("t", b"queued")
        await sub.aclose()
        await own_bus.publish("t", b"later")
        stats = sub.statistics()
        assert (stats.delivered, stats.queued, stats.dropped) == (1, 0, 1)
        # Delivered to nobody; and own messages never count as unmatched (received-only).
        assert own_bus.statistics().delivered == 1
        assert own_bus.statistics().unmatched == 0
        assert "closed" in repr(sub)

    async def test_bus_close_ends_iteration_after_the_queue(self, url: str) -> None:
        async with asyncbus.connect(url, receive_own=True) as bus:
            sub = bus.subscribe("t")
            await bus.publish("t", b"1")
            await bus.publish("t", b"2")

        try:
            async with asyncio.timeout(TIMEOUT):
                received = [msg.data async for msg in sub]

            assert received == [b"1", b"2"]
            with pytest.raises(anyio.EndOfStream):
                await sub.receive()

            with pytest.raises(anyio.EndOfStream):
                sub.receive_nowait()
        finally:
            await sub.aclose()

    async def test_bus_close_wakes_a_waiting_receiver(self, url: str) -> None:
        async with asyncbus.connect(url) as bus, bus.subscribe("t") as sub:
            waiting = asyncio.create_task(sub.receive())
            done, _ = await asyncio.wait({waiting}, timeout=0.05)
            assert not done
            await bus.aclose()
            with pytest.raises(anyio.EndOfStream):
                await asyncio.wait_for(waiting, TIMEOUT)

    async def test_subscription_after_close_of_bus_ends_at_once(self, url: str) -> None:
        bus = asyncbus.connect(url)
        sub = bus.subscribe("t")  # before open
        await bus.aclose()
        with pytest.raises(anyio.EndOfStream):
            await asyncio.wait_for(sub.receive(), TIMEOUT)

        await sub.aclose()


class TestImplicitSubscriptions:
    async def test_break_removes_the_subscription(self, own_bus: asyncbus.Bus) -> None:
        topic = own_bus.topic("t")

        async def publish() -> None:
            await wait_until(lambda: own_bus.statistics().subscriptions == 1)
            await topic.publish(b"first")

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(publish())
            async with asyncio.timeout(TIMEOUT):
                async for msg in topic:
                    assert own_bus.statistics().subscriptions == 1
                    received = msg.data
                    break

        assert received == b"first"
        assert own_bus.statistics().subscriptions == 0
        await topic.publish(b"nobody")
        assert own_bus.statistics().delivered == 1

    async def test_cancelling_the_loop_removes_the_subscription(
        self, own_bus: asyncbus.Bus
    ) -> None:
        got_one = asyncio.Event()

        async def consume() -> None:
            async for _ in own_bus.topic("t"):
                got_one.set()

        consumer = asyncio.create_task(consume())
        await wait_until(lambda: own_bus.statistics().subscriptions == 1)
        await own_bus.publish("t", b"x")
        await asyncio.wait_for(got_one.wait(), TIMEOUT)
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer

        assert own_bus.statistics().subscriptions == 0

    async def test_an_exception_in_the_loop_removes_the_subscription(
        self, own_bus: asyncbus.Bus
    ) -> None:
        async def consume() -> None:
            async for _ in own_bus.topic("t"):
                raise LookupError("in the loop body")

        consumer = asyncio.create_task(consume())
        await wait_until(lambda: own_bus.statistics().subscriptions == 1)
        await own_bus.publish("t", b"x")
        with pytest.raises(LookupError):
            await asyncio.wait_for(consumer, TIMEOUT)

        assert own_bus.statistics().subscriptions == 0

    async def test_async_for_topic_ends_when_the_bus_closes(self, url: str) -> None:
        async with asyncbus.connect(url, receive_own=True) as bus:
            topic = bus.topic("t")

            async def consume() -> list[bytes]:
                return [msg.data async for msg in topic]

            consumer = asyncio.create_task(consume())
            await wait_until(lambda: bus.statistics().subscriptions == 1)
            await topic.publish(b"1")
            await topic.publish(b"2")

        assert await asyncio.wait_for(consumer, TIMEOUT) == [b"1", b"2"]

    async def test_explicit_subscription_dropped_unclosed_warns(
        self, own_bus: asyncbus.Bus
    ) -> None:
        def subscribe_and_forget() -> None:
            own_bus.subscribe("t")  # dropped at once, unclosed
            gc.collect()

        with pytest.warns(ResourceWarning, match="unclosed subscription"):
            subscribe_and_forget()

        assert own_bus.statistics().subscriptions == 0

    async def test_closed_subscription_dropped_does_not_warn(self, own_bus: asyncbus.Bus) -> None:
        sub = own_bus.subscribe("t")
        await sub.aclose()
        del sub
        gc.collect()  # filterwarnings=error: a ResourceWarning here fails the test


class TestAnyio:
    async def test_subscription_is_an_anyio_object_receive_stream(self, url: str) -> None:
        bus = asyncbus.connect(url, receive_own=True)
        received: list[bytes] = []
        async with bus, bus.subscribe("t") as sub:
            assert isinstance(sub, anyio.abc.ObjectReceiveStream)

            async def consume(stream: anyio.abc.ObjectReceiveStream[asyncbus.Message]) -> None:
                async for msg in stream:
                    received.append(msg.data)

            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(consume, sub)
                    for n in range(3):
                        await bus.publish("t", str(n).encode())

                    await bus.aclose()  # ends the consumer's loop

        assert received == [b"0", b"1", b"2"]
        assert sub.closed

    async def test_anyio_async_with_closes(self, own_bus: asyncbus.Bus) -> None:
        sub = own_bus.subscribe("t")
        async with sub:
            assert own_bus.statistics().subscriptions == 1

        assert sub.closed
        assert own_bus.statistics().subscriptions == 0


class TestStatistics:
    async def test_counters_are_coherent(self, url: str) -> None:
        async with (
            asyncbus.connect(url) as a,
            asyncbus.connect(url) as b,
            b.subscribe("a") as a1,
            b.subscribe("a") as a2,
            b.subscribe("b*") as glob,
        ):
            await a.publish("a", b"1")
            await a.publish("a", b"2")
            await a.publish("bx", b"3")
            await a.publish("z", b"4")
            await fence(b, a)
            sent, got = a.statistics(), b.statistics()
            assert [s.statistics().queued for s in (a1, a2, glob)] == [2, 2, 1]
            assert data_of([await receive(a1)]) == [b"1"]
            sub_stats = a1.statistics()

        assert sent.published == 5  # and the fence
        assert sent.received == 0
        assert got.published == 0
        assert got.received == 5
        assert got.datagrams == 5
        assert got.delivered == 2 + 2 + 1 + 1  # and the fence
        assert got.unmatched == 1
        assert got.subscriptions == 3  # the fence's subscription is closed again
        for loss in ("malformed", "kernel_drops", "gaps", "reordered", "incomplete"):
            assert getattr(got, loss) == 0, loss

        assert sub_stats == asyncbus.SubscriptionStatistics(
            pattern="a",
            policy=asyncbus.OverflowPolicy.DROP_OLDEST,
            maxsize=1024,
            queued=1,
            delivered=2,
            received=1,
            dropped=0,
        )

    async def test_statistics_are_frozen(self, own_bus: asyncbus.Bus) -> None:
        stats = own_bus.statistics()
        with pytest.raises(dataclasses.FrozenInstanceError):
            stats.published = 1  # type: ignore[misc]

    async def test_fragmented_message_counts_datagrams(self, url: str) -> None:
        async with (
            asyncbus.connect(url) as a,
            asyncbus.connect(url) as b,
            b.subscribe("big") as sub,
        ):
            await a.publish("big", bytes(200_000))
            assert len((await receive(sub)).data) == 200_000
            stats = b.statistics()

        assert stats.received == 1
        assert stats.datagrams == 4  # 200,000 + "big\0" in 65,487-byte fragments
