"""The workload through asyncbus's public API, on the default asyncio loop or on uvloop.

The code is what a user would write: ``connect()``, ``bus.topic(...).publish()`` in
a loop, ``async for msg in subscription``. The only extras are the clock reads and
the reader (``zlib.crc32`` of every payload, compared with the expected one), which
every other system makes too, and a watchdog task that ends the receive loop when
nothing has arrived for ``idle_timeout`` seconds.

On the AF_UNIX buses (``unix:``, ``seqpacket:``) the publisher waits until every
subscriber's subscription has reached it (``topic.wait_subscribers``) before it says
READY, and every subscription has the run's overflow policy, which the publisher
applies when that subscriber's socket and queue are full. In the slow-subscriber
scenario the last subscriber blocks its loop for ``slow_work`` seconds per message
(``time.sleep``: a synchronous handler that leaves the CPU to the other processes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import time
from typing import TYPE_CHECKING

import asyncbus

from .common import (
    END_PAYLOAD,
    GO,
    MARKER_INTERVAL,
    READER,
    READY,
    STOP,
    TOPIC,
    PublisherReport,
    SubscriberReport,
    Workload,
    clock,
    cpu_clock,
    reader_counters,
    receive_command,
    run_on_loop,
    run_worker,
)

if TYPE_CHECKING:
    from .common import WorkerPipe

__all__ = ["run_publisher", "run_subscriber"]


def run_subscriber(work: Workload, conn: WorkerPipe) -> None:
    """Process entry point: receive until the end marker; report a :class:`SubscriberReport`.

    :param work: the run (``work.loop`` picks the event loop).
    :param conn: the pipe to the runner.
    """
    run_worker("subscriber", _subscriber, work, conn)


def run_publisher(work: Workload, conn: WorkerPipe) -> None:
    """Process entry point: publish on GO, repeat the end marker until STOP; report.

    :param work: the run (``work.loop`` picks the event loop).
    :param conn: the pipe to the runner.
    """
    run_worker("publisher", _publisher, work, conn)


def _subscriber(work: Workload, conn: WorkerPipe) -> SubscriberReport:
    return run_on_loop(work.loop, _subscribe(work, conn))


def _publisher(work: Workload, conn: WorkerPipe) -> PublisherReport:
    return run_on_loop(work.loop, _publish(work, conn))


async def _subscribe(work: Workload, conn: WorkerPipe) -> SubscriberReport:
    async with (
        asyncbus.connect(work.url) as bus,
        bus.subscribe(TOPIC, policy=work.policy) as subscription,
    ):
        conn.send(READY)
        size = work.size
        read, expected = READER, READER(work.payload)
        received = corrupt = 0
        first = last = cpu_first = 0.0
        end_seen = False
        end_seq = last_seq = -1
        deadline = asyncio.timeout(None)
        watchdog = asyncio.create_task(_watchdog(bus, deadline, work))
        try:
            async with deadline:
                if not work.slow:
                    async for message in subscription:
                        data = message.data
                        if len(data) != size:
                            end_seen, end_seq = True, message.seq
                            break

                        corrupt += read(data) != expected  # every byte
                        last = clock()
                        if not received:
                            first = last
                            cpu_first = cpu_clock()

                        received += 1
                else:
                    sleep, pause = time.sleep, work.slow_work
                    async for message in subscription:
                        data = message.data
                        if len(data) != size:
                            end_seen, end_seq = True, message.seq
                            break

                        corrupt += read(data) != expected  # every byte
                        last = clock()
                        if not received:
                            first = last
                            cpu_first = cpu_clock()

                        received += 1
                        last_seq = message.seq
                        sleep(pause)  # the slow handler's work (blocks the loop)
        except TimeoutError:
            pass  # the watchdog: nothing arrived for idle_timeout seconds
        finally:
            watchdog.cancel()

        cpu = cpu_clock() - cpu_first if received else 0.0
        statistics = bus.statistics()
        counters = {
            "bus": _counters(statistics),
            "subscription": _counters(subscription.statistics()),
            "reader": reader_counters(size, corrupt),
        }

    return SubscriberReport(
        received,
        first,
        last,
        end_seen,
        statistics.kernel_drops,
        counters=counters,
        end_seq=end_seq,
        slow=work.slow,
        cpu=cpu,
        last_seq=last_seq,
    )


async def _watchdog(bus: asyncbus.Bus, deadline: asyncio.Timeout, work: Workload) -> None:
    """Expire ``deadline`` once the bus has received nothing for a while.

    It looks at the bus's own counter instead of the receive loop's, so that the
    loop stays exactly what a user would write.
    """
    loop = asyncio.get_running_loop()
    seen = bus.statistics().received
    pause = work.start_timeout
    while True:
        await asyncio.sleep(pause)  # a periodic check, not a wait for an event
        now = bus.statistics().received
        if now == seen:
            deadline.reschedule(loop.time())
            return

        seen = now
        pause = work.idle_timeout


async def _publish(work: Workload, conn: WorkerPipe) -> PublisherReport:
    async with asyncbus.connect(work.url) as bus:
        topic = bus.topic(TOPIC)
        if work.transport != "udpm":
            # The unix buses know who subscribed: wait for everyone (no sleep, no loss
            # of the first messages to a subscription still on its way).
            async with asyncio.timeout(work.start_timeout):
                await topic.wait_subscribers(work.fanout)

        payload = work.payload
        publish = topic.publish
        conn.send(READY)
        if (command := await receive_command(conn, None)) != GO:
            raise RuntimeError(f"expected {GO!r} from the runner, got {command!r}")

        cpu_started = cpu_clock()
        started = clock()
        for _ in range(work.messages):
            await publish(payload)

        finished = clock()
        cpu = cpu_clock() - cpu_started
        after_data = _counters(bus.statistics())
        markers = 0
        deadline = finished + work.start_timeout + work.idle_timeout
        command = None
        while command is None and clock() < deadline:
            await publish(END_PAYLOAD)
            markers += 1
            command = await receive_command(conn, MARKER_INTERVAL)

        if command is None:
            command = await receive_command(conn, None)

        if command != STOP:
            raise RuntimeError(f"expected {STOP!r} from the runner, got {command!r}")

        counters = {"bus": _counters(bus.statistics()), "bus_after_data": after_data}

    return PublisherReport(work.messages, started, finished, markers, counters=counters, cpu=cpu)


def _counters(statistics: object) -> dict[str, object]:
    """Return a statistics dataclass as a JSON-ready dict (numbers kept, the rest as text)."""
    if not dataclasses.is_dataclass(statistics) or isinstance(statistics, type):
        return {"repr": repr(statistics)}

    return {
        field.name: _jsonable(getattr(statistics, field.name))
        for field in dataclasses.fields(statistics)
    }


def _jsonable(value: object) -> object:
    if isinstance(value, enum.Enum):  # OverflowPolicy: its value, "drop_oldest"
        return _jsonable(value.value)

    if value is None or isinstance(value, (bool, int, float, str)):
        return value

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _counters(value)

    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]

    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}

    return str(value)
