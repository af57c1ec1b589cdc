"""``asyncbus demo``: fan-out to subscriber processes, measured; and
``asyncbus demo-subscriber``, the processes it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import asyncbus

from ._common import (
    _READ_SIZE,
    EXIT_FAILURE,
    EXIT_OK,
    _check_topic,
    _CommandError,
    _exactly,
    _Lines,
    _note,
    _open_bus,
    _print_error,
)
from ._stdin import _ChunkReader, _open_stdin

if TYPE_CHECKING:
    from collections.abc import Callable


# The first bytes of every demo payload: kind (b"D" data, b"E" end), the run's id (to
# ignore another demo on the same bus), and the message counter (the total, for b"E").
_DEMO_HEADER: Final = struct.Struct(">cIQ")
_DEMO_DATA: Final = b"D"
_DEMO_END: Final = b"E"

_DEMO_READY_TIMEOUT: Final = 30.0  # starting Python on a loaded 2-core CI machine
_DEMO_STALL_TIMEOUT: Final = 2.0  # a subscriber silent this long no longer paces us
_DEMO_END_TIMEOUT: Final = 5.0  # time for every subscriber to report after the end
_DEMO_END_RESEND: Final = 0.1  # the end marker can be lost too: repeat it this often
_DEMO_KILL_TIMEOUT: Final = 5.0  # bound on reaping a killed child
_DEMO_RECEIVE_BUFFER: Final = 160_000  # bytes of a default 208 KiB SO_RCVBUF we plan to use
_DEMO_DATAGRAM_OVERHEAD: Final = 1024  # kernel bookkeeping (skb truesize) per datagram


def _default_window(size: int) -> int:
    """Return how many messages the demo publisher may be ahead of its slowest subscriber.

    Enough to keep everyone busy, few enough that a default socket receive buffer
    (``net.core.rmem_default``, 212992 bytes on Linux) holds them all when a subscriber is
    briefly not scheduled, as happens with more processes than cores.

    :param size: the payload size.
    :return: the window, in messages.
    """
    return max(2, min(128, _DEMO_RECEIVE_BUFFER // (size + _DEMO_DATAGRAM_OVERHEAD)))


@dataclass(eq=False)
class _DemoChild:
    """One demo subscriber process, as the publisher sees it."""

    number: int
    process: asyncio.subprocess.Process
    changed: asyncio.Event
    ready: bool = False
    gone: bool = False
    progress: int = 0  # every message below this counter has reached it, or never will
    paced: bool = True  # whether the publisher waits for it
    stalled: bool = False
    report: dict[str, Any] | None = None
    stderr: bytes = b""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def read_stdout(self) -> None:
        """Follow the child's stdout: ``ready``, ``progress N``, ``report {...}``."""
        assert self.process.stdout is not None
        try:
            while line := await self.process.stdout.readline():
                word, _, rest = line.decode("ascii", "replace").strip().partition(" ")
                with contextlib.suppress(ValueError):  # a garbled line means no news
                    if word == "ready":
                        self.ready = True
                    elif word == "progress":
                        self.progress = max(self.progress, int(rest))
                    elif word == "report":
                        self.report = json.loads(rest)

                self.changed.set()
        finally:
            self.gone = True
            self.changed.set()

    async def read_stderr(self) -> None:
        """Keep the end of the child's stderr, to explain a failure."""
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.read(_READ_SIZE):
            self.stderr = (self.stderr + chunk)[-4096:]

    def failure(self) -> str:
        """Say why this child did not report.

        :return: one line.
        """
        lines = self.stderr.decode("utf-8", "replace").strip().splitlines()
        why = f": {lines[-1]}" if lines else ""
        status = self.process.returncode
        if not self.gone or status is None:
            return f"subscriber {self.number} did not report in time{why}"

        return f"subscriber {self.number} exited with status {status} without a report{why}"


async def _wait_until(
    changed: asyncio.Event, condition: Callable[[], bool], seconds: float
) -> bool:
    """Wait until ``condition()`` holds, re-checking each time ``changed`` is set.

    :param changed: set whenever a child's state changes.
    :param condition: what to wait for.
    :param seconds: how long to wait at most.
    :return: whether the condition holds.
    """
    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            while not condition():
                changed.clear()
                await changed.wait()
    except TimeoutError:
        if not deadline.expired():
            raise

    return condition()


async def _demo(args: argparse.Namespace) -> int:
    """Run ``asyncbus demo``.

    :param args: the parsed command line.
    :return: 0 when it ran (losses included), 1 if a subscriber failed.
    :raises _CommandError: if the bus cannot be opened or the subscribers do not start.
    """
    _check_topic(args.topic, "--topic")
    window = _default_window(args.size) if args.window is None else args.window
    run_id = secrets.randbits(32)
    changed = asyncio.Event()
    children: list[_DemoChild] = []
    async with _open_bus(args.url) as bus:
        topic = bus.topic(args.topic)
        try:
            await _start_children(args, bus.url, run_id, window, changed, children)
            if args.verbose:
                _note(f"all {len(children)} subscribers listen; publishing {args.messages}")

            started = time.perf_counter()
            await _publish_demo(args, topic, run_id, window, changed, children)
            elapsed = time.perf_counter() - started
            await _end_demo(
                topic, _DEMO_HEADER.pack(_DEMO_END, run_id, args.messages), changed, children
            )
        finally:
            await _stop_children(children)

        report = _demo_report(args, bus.url, window, elapsed, children)

    out = _Lines(sys.stdout)
    if args.json:
        out.write(json.dumps(report))
    else:
        for line in _demo_table(report):
            out.write(line)

    failures = [child.failure() for child in children if child.report is None]
    for failure in failures:
        _print_error(failure)

    return EXIT_FAILURE if failures else EXIT_OK


async def _end_demo(
    topic: asyncbus.Topic, end: bytes, changed: asyncio.Event, children: list[_DemoChild]
) -> None:
    """Publish the end marker until every subscriber has reported, for a bounded time.

    Subscribers that do not report in time are reported as failures by the caller.

    :param topic: the demo's topic.
    :param end: the end marker.
    :param changed: set whenever a child's state changes.
    :param children: the subscribers.
    :raises asyncbus.AsyncBusError: if publishing fails.
    """

    def all_reported() -> bool:
        return all(child.report is not None or child.gone for child in children)

    deadline = asyncio.get_running_loop().time() + _DEMO_END_TIMEOUT
    while not all_reported() and asyncio.get_running_loop().time() < deadline:
        # Sent through the same socket after the data, so it arrives after it; but it
        # can be lost like any datagram, hence the repeats.
        await topic.publish(end)
        await _wait_until(changed, all_reported, _DEMO_END_RESEND)


async def _start_children(
    args: argparse.Namespace,
    url: str,
    run_id: int,
    window: int,
    changed: asyncio.Event,
    children: list[_DemoChild],
) -> None:
    """Start the subscriber processes and wait until each is subscribed.

    :param args: the parsed command line.
    :param url: the bus, as the publisher opened it.
    :param run_id: this run's id.
    :param window: the flow control window (0: none).
    :param changed: set whenever a child's state changes.
    :param children: filled with the children as they start (for the caller to stop).
    :raises _CommandError: if a child fails to start or to subscribe in time.
    """
    command = [
        sys.executable,
        "-m",
        "asyncbus",
        "demo-subscriber",
        *("--url", url, "--loop", args.loop, "--topic", args.topic),
        *("--run-id", str(run_id), "--expected", str(args.messages)),
        *("--ack-every", str(max(1, window // 4) if window else 0)),
        *("--queue", str(max(1024, 4 * window))),
    ]
    env = _child_environment()
    for number in range(1, args.subscribers + 1):
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        child = _DemoChild(number, process, changed)
        children.append(child)
        child.tasks = [
            asyncio.create_task(child.read_stdout()),
            asyncio.create_task(child.read_stderr()),
        ]

    if args.verbose:
        _note(f"started {len(children)} subscriber processes, waiting until they listen")

    def settled() -> bool:
        return all(child.ready for child in children) or any(c.gone for c in children)

    await _wait_until(changed, settled, _DEMO_READY_TIMEOUT)
    for child in children:
        if not child.ready:
            await _stop_children(children)  # so that their stderr is complete
            raise _CommandError(f"demo {child.failure()} (it never listened)")


def _child_environment() -> dict[str, str]:
    """Return the environment for the demo's children.

    :return: ours, with the directory holding this asyncbus first on ``PYTHONPATH``, so
        that ``python -m asyncbus`` in the child runs this very code, installed or not.
    """
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(asyncbus.__file__ or "")))
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, path]))}


async def _publish_demo(
    args: argparse.Namespace,
    topic: asyncbus.Topic,
    run_id: int,
    window: int,
    changed: asyncio.Event,
    children: list[_DemoChild],
) -> None:
    """Publish the numbered messages, paced by the window and by ``--rate``.

    :param args: the parsed command line.
    :param topic: where to publish.
    :param run_id: this run's id.
    :param window: most messages ahead of the slowest subscriber (0: no limit).
    :param changed: set whenever a child's state changes.
    :param children: the subscribers.
    :raises asyncbus.AsyncBusError: if publishing fails.
    """
    loop = asyncio.get_running_loop()
    padding = bytes(args.size - _DEMO_HEADER.size)
    started = loop.time()
    floor = 0  # the slowest paced subscriber's progress, as last computed
    for counter in range(args.messages):
        if window and counter - floor >= window:
            floor = await _wait_window(counter, window, changed, children)
        elif not window and counter % 256 == 0:
            await asyncio.sleep(0)  # unpaced: still let Ctrl-C and pipes through

        if args.rate is not None:
            delay = started + counter / args.rate - loop.time()
            if delay > 0.001:  # finer sleeps are not worth a trip through the loop
                await asyncio.sleep(delay)

        await topic.publish(_DEMO_HEADER.pack(_DEMO_DATA, run_id, counter) + padding)


async def _wait_window(
    counter: int, window: int, changed: asyncio.Event, children: list[_DemoChild]
) -> int:
    """Wait until message ``counter`` is within ``window`` of every paced subscriber.

    A subscriber that acknowledges nothing for a while is no longer waited for (and the
    report says so), so a stuck one cannot stop the demo.

    :param counter: the next message's counter.
    :param window: the window, more than 0.
    :param changed: set whenever a child's state changes.
    :param children: the subscribers.
    :return: the slowest paced subscriber's progress now.
    """
    while True:
        paced = [child for child in children if child.paced and not child.gone]
        if not paced:
            return counter

        slowest = min(paced, key=lambda child: child.progress)
        if counter - slowest.progress < window:
            return slowest.progress

        changed.clear()
        try:
            async with asyncio.timeout(_DEMO_STALL_TIMEOUT):
                await changed.wait()
        except TimeoutError:
            slowest.paced = False
            slowest.stalled = True


async def _stop_children(children: list[_DemoChild]) -> None:
    """Kill the children still running and wait for them and their pipes.

    :param children: the subscribers.
    """
    for child in children:
        if child.process.stdin is not None:
            child.process.stdin.close()  # end of input tells a child we are gone

        if child.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()

    if not children:
        return

    async with asyncio.timeout(_DEMO_KILL_TIMEOUT):
        await asyncio.gather(*(child.process.wait() for child in children))
        # The pipes end when the processes do; reading them to the end closes them.
        await asyncio.gather(*(task for child in children for task in child.tasks))


def _rates(messages: int, size: int, seconds: float | None) -> tuple[float | None, float | None]:
    """Return messages/s and MB/s (10**6 bytes) for ``messages`` of ``size`` bytes.

    :param messages: how many messages.
    :param size: bytes each.
    :param seconds: over how long, ``None`` or 0 if unknown.
    :return: both rates, ``None`` when there is no time to divide by.
    """
    if not seconds or seconds <= 0:
        return None, None

    return messages / seconds, messages * size / seconds / 1e6


def _demo_report(
    args: argparse.Namespace,
    url: str,
    window: int,
    elapsed: float,
    children: list[_DemoChild],
) -> dict[str, Any]:
    """Put the children's reports together.

    :param args: the parsed command line.
    :param url: the bus.
    :param window: the flow control window used.
    :param elapsed: seconds the publisher took to send the messages.
    :param children: the subscribers.
    :return: the report (as ``--json`` prints it).
    """
    subscribers: list[dict[str, Any]] = []
    for child in children:
        entry: dict[str, Any] = {"subscriber": child.number, "reported": child.report is not None}
        if child.report is None:
            entry["error"] = child.failure()
        else:
            entry.update(child.report)
            entry["msg_per_s"], entry["mb_per_s"] = _rates(
                child.report["received"], args.size, child.report["seconds"]
            )

        entry["stalled"] = child.stalled
        subscribers.append(entry)

    expected = args.messages * len(children)
    received = sum(entry.get("unique", 0) for entry in subscribers)
    msg_per_s, mb_per_s = _rates(args.messages, args.size, elapsed)
    total_msg_per_s, total_mb_per_s = _rates(received, args.size, elapsed)
    return {
        "url": url,
        "topic": args.topic,
        "messages": args.messages,
        "size": args.size,
        "window": window,
        "rate": args.rate,
        "publisher": {
            "sent": args.messages,
            "seconds": elapsed,
            "msg_per_s": msg_per_s,
            "mb_per_s": mb_per_s,
        },
        "subscribers": subscribers,
        "total": {
            "received": received,
            "expected": expected,
            "lost": expected - received,
            "msg_per_s": total_msg_per_s,
            "mb_per_s": total_mb_per_s,
        },
    }


def _demo_table(report: dict[str, Any]) -> list[str]:
    """Format the demo's report for people.

    :param report: what `_demo_report` returned.
    :return: the lines to print.
    """

    def number(value: float | None, digits: int = 0) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    publisher = report["publisher"]
    pacing = (
        f"at most {report['window']} messages ahead of the slowest subscriber"
        if report["window"]
        else "none"
    )
    if report["rate"]:
        pacing += f", at most {report['rate']:g} messages/s"

    lines = [
        f"{len(report['subscribers'])} subscriber processes, {report['messages']} messages "
        f"of {report['size']} B on {report['topic']!r} via {report['url']}",
        f"publisher: {publisher['sent']} messages in {publisher['seconds']:.3f} s: "
        f"{number(publisher['msg_per_s'])} msg/s, {number(publisher['mb_per_s'], 2)} MB/s "
        f"(flow control: {pacing})",
        f"{'subscriber':>10}  {'received/expected':>17}  {'lost':>6}  {'loss':>7}  "
        f"{'first':>7}  {'last':>7}  {'gaps':>5}  {'drops':>5}  {'msg/s':>9}  {'MB/s':>7}",
    ]
    for entry in report["subscribers"]:
        if not entry["reported"]:
            lines.append(f"{entry['subscriber']:>10}  {entry['error']}")
            continue

        bus = entry["bus"]
        drops = bus["kernel_drops"] + bus["overflow_drops"] + bus["incomplete"]
        stalled = "  (stalled: not waited for)" if entry["stalled"] else ""
        lines.append(
            f"{entry['subscriber']:>10}  "
            f"{str(entry['unique']) + '/' + str(entry['expected']):>17}  "
            f"{entry['lost']:>6}  {entry['lost'] / entry['expected']:>7.2%}  "
            f"{_or_dash(entry['first']):>7}  {_or_dash(entry['last']):>7}  "
            f"{bus['gaps']:>5}  {drops:>5}  "
            f"{number(entry['msg_per_s']):>9}  {number(entry['mb_per_s'], 2):>7}{stalled}"
        )

    total = report["total"]
    loss = total["lost"] / total["expected"] if total["expected"] else 0.0
    lines.append(
        f"{'all':>10}  {str(total['received']) + '/' + str(total['expected']):>17}  "
        f"{total['lost']:>6}  {loss:>7.2%}  {'':>7}  {'':>7}  {'':>5}  {'':>5}  "
        f"{number(total['msg_per_s']):>9}  {number(total['mb_per_s'], 2):>7}"
    )
    lines.append(
        "lost: expected minus distinct messages received; gaps: sequence gaps seen by the"
        " bus; drops: kernel, queue and incomplete-message drops"
    )
    lines.append(
        "msg/s, MB/s: from a subscriber's first message to its last; all: deliveries"
        " while the publisher was sending"
    )
    return lines


def _or_dash(value: object) -> str:
    """Return ``str(value)``, or ``-`` for ``None``.

    :param value: a value that may be missing.
    :return: the text for a table cell.
    """
    return "-" if value is None else str(value)


@dataclass(eq=False)
class _Tally:
    """What a demo subscriber counts."""

    run_id: int
    expected: int
    ack_every: int
    out: _Lines
    seen: bytearray = field(init=False)
    received: int = 0
    unique: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    foreign: int = 0
    first: int | None = None
    last: int | None = None
    highest: int = -1
    acknowledged: int = 0
    started: float = 0.0
    finished: float = 0.0
    activity: float = field(default_factory=time.monotonic)
    end_marker: bool = False

    def __post_init__(self) -> None:
        self.seen = bytearray(self.expected)

    async def run(self, subscription: asyncbus.Subscription) -> None:
        """Count messages until the end marker comes (or the subscription ends).

        :param subscription: the demo topic's subscription.
        :raises BrokenPipeError: if the publisher stopped reading our progress.
        """
        async for message in subscription:
            now = time.monotonic()
            self.activity = now
            data = message.data
            if len(data) < _DEMO_HEADER.size:
                self.foreign += 1
                continue

            kind, run_id, counter = _DEMO_HEADER.unpack_from(data)
            if run_id != self.run_id:
                self.foreign += 1
            elif kind == _DEMO_END:
                self.end_marker = True
                return
            elif kind != _DEMO_DATA or counter >= self.expected:
                self.foreign += 1
            else:
                self._count(counter, now)

    def _count(self, counter: int, now: float) -> None:
        if self.first is None:
            self.first = counter
            self.started = now

        self.received += 1
        self.last = counter
        self.finished = now
        if self.seen[counter]:
            self.duplicates += 1
        else:
            self.seen[counter] = 1
            self.unique += 1

        if counter < self.highest:
            self.out_of_order += 1
        else:
            self.highest = counter

        if self.ack_every and counter + 1 >= self.acknowledged + self.ack_every:
            self.acknowledged = counter + 1
            self.out.write(f"progress {self.acknowledged}")

    async def watch_idle(self, silence: float) -> None:
        """Return once nothing has arrived for ``silence`` seconds.

        :param silence: seconds without a message that end the count.
        """
        # Polling on purpose: every message moves the deadline, and storing a float per
        # message is cheaper than rescheduling a timer (or setting an Event) per message.
        while (left := self.activity + silence - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(left)


async def _wait_end_of_input(stdin: _ChunkReader) -> None:
    """Return at end of input: the demo publisher closed our stdin, or died.

    :param stdin: the reader.
    """
    while await stdin.read():
        pass


async def _demo_subscriber(args: argparse.Namespace) -> int:
    """Run one demo subscriber (a child of ``asyncbus demo``).

    Talks to the publisher on stdout: ``ready`` once subscribed, ``progress N`` every
    ``--ack-every`` messages, and ``report {json}`` at the end marker. Stops early when
    stdin ends (the publisher has gone) or after ``--idle-timeout`` seconds of silence.

    :param args: the parsed command line.
    :return: the exit status.
    :raises _CommandError: if the publisher went away.
    """
    out = _Lines(sys.stdout)
    tally = _Tally(args.run_id, args.expected, args.ack_every, out)
    async with _open_bus(args.url) as bus:
        subscription = bus.subscribe(_exactly(args.topic), maxsize=args.queue)
        async with subscription:
            stdin = await _open_stdin()
            try:
                out.write("ready")
                tally.activity = time.monotonic()
                counting = asyncio.create_task(tally.run(subscription))
                idle = asyncio.create_task(tally.watch_idle(args.idle_timeout))
                orphaned = asyncio.create_task(_wait_end_of_input(stdin))
                tasks = {counting, idle, orphaned}
                try:
                    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in tasks:
                        task.cancel()

                    await asyncio.wait(tasks)

                for task in done:
                    task.result()  # raise what failed
            finally:
                stdin.close()

            if orphaned in done and counting not in done:
                raise _CommandError("the demo publisher went away")

            statistics = bus.statistics()
            report = {
                "received": tally.received,
                "unique": tally.unique,
                "expected": tally.expected,
                "lost": tally.expected - tally.unique,
                "duplicates": tally.duplicates,
                "out_of_order": tally.out_of_order,
                "foreign": tally.foreign,
                "first": tally.first,
                "last": tally.last,
                "seconds": tally.finished - tally.started,
                "end_marker": tally.end_marker,
                "bus": {
                    "gaps": statistics.gaps,
                    "kernel_drops": statistics.kernel_drops,
                    "overflow_drops": statistics.overflow_drops,
                    "incomplete": statistics.incomplete,
                    "malformed": statistics.malformed,
                    "reordered": statistics.reordered,
                },
                "queue_dropped": subscription.statistics().dropped,
            }
            out.write(f"report {json.dumps(report)}")

    return EXIT_OK
