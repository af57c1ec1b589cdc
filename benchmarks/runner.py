"""Run one case: start the processes, give the go signal, collect what they report.

Every process is started with ``spawn`` (a fresh interpreter: nothing inherited from
the runner, as for independent programs on the host). Every run gets its own
multicast group and port, or its own AF_UNIX bus name, so leftovers of one run never
reach the next one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import socket
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Final, TypeAlias, TypeVar

from . import large
from .common import (
    GO,
    PAYLOAD_SIZE,
    READY,
    STOP,
    PublisherReport,
    SubscriberReport,
    WorkerFailed,
    Workload,
)
from .large import size_label

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Iterator
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from .common import WorkerPipe

    # The runner's end of a worker's pipe.
    RunnerPipe: TypeAlias = Connection[str, object]

__all__ = [
    "BenchmarkError",
    "Case",
    "CaseRun",
    "collect_answers",
    "private_endpoint",
    "private_name",
    "run_case",
]

Worker: TypeAlias = "Callable[[Workload, WorkerPipe], None]"
T = TypeVar("T")

READY_TIMEOUT: Final = 60.0  # seconds for every process to start and open its socket
JOIN_TIMEOUT: Final = 10.0  # seconds for a process to exit once it has reported
GROUPS: Final = ipaddress.IPv4Network("239.255.0.0/16")  # RFC 2365 local scope
LCM_DEFAULT_GROUP: Final = ipaddress.IPv4Address("239.255.76.67")
# The peers scenario's implementations (benchmarks.peers): compared with raw udpm.
PEERS: Final = ("pyzmq", "lcm")


class BenchmarkError(RuntimeError):
    """A worker failed, died, or did not answer in time."""


@dataclass(frozen=True)
class Case:
    """One line of a results table.

    :param implementation: ``"raw"``, ``"asyncbus"``, or a peer (:data:`PEERS`).
    :param loop: the event loop for asyncbus (``"asyncio"``, ``"uvloop"``) and pyzmq
        (``"asyncio"``, ``"sync"``); ``None`` for raw and LCM.
    :param fanout: how many subscriber processes.
    :param transport: ``"udpm"``, ``"unix"``, ``"seqpacket"``, ``"stream"`` (the
        large scenario's baseline: AF_UNIX SOCK_STREAM), or ``"ipc"`` (pyzmq).
    :param policy: the overflow policy of the asyncbus subscriptions (``None`` for raw).
    :param slow: one fast and one slow subscriber (the slow-subscriber scenario).
    :param size: the payload size of a data message in bytes, in every scenario.
    :param mode: how the large scenario's asyncbus publisher fills a payload
        (:data:`benchmarks.large.MODES`); ``None`` otherwise.
    :param large: a case of the large-payload scenario (:mod:`benchmarks.large`; its
        raw baseline has the transport ``"stream"``).
    """

    implementation: str
    loop: str | None
    fanout: int
    transport: str = "udpm"
    policy: str | None = None
    slow: bool = False
    size: int = PAYLOAD_SIZE
    mode: str | None = None
    large: bool = False

    @property
    def id(self) -> str:
        """A stable name for the JSON document.

        ``asyncbus-uvloop-1to4`` (udpm, the names of the first version),
        ``unix-raw-1to1``, ``seqpacket-asyncbus-asyncio-1to4``,
        ``unix-asyncbus-asyncio-slow-drop_newest``,
        ``large-unix-asyncbus-uvloop-loan_copy-64MiB-1to4``, ``large-stream-raw-1MiB-1to1``,
        ``large-ipc-pyzmq-sync-64MiB-1to1``, ``peers-ipc-pyzmq-sync-1to4``,
        ``peers-udpm-lcm-1to1``. Outside the large scenario the size is named only when
        it is not :data:`~benchmarks.common.PAYLOAD_SIZE` (64 bytes, the first
        version's only size): ``unix-asyncbus-uvloop-16KiB-1to1``,
        ``peers-ipc-pyzmq-sync-1KiB-1to4``, ``raw-16KiB-1to4``.
        """
        shape = f"slow-{self.policy}" if self.slow else f"1to{self.fanout}"
        size = size_label(self.size) if self.large or self.size != PAYLOAD_SIZE else None
        if self.large:
            transport: str | None = self.transport
            parts = ["large", transport, self.implementation, self.loop, self.mode]
        elif self.peer:
            parts = ["peers", self.transport, self.implementation, self.loop]
        else:
            transport = None if self.transport == "udpm" else self.transport
            parts = [transport, self.implementation, self.loop]

        return "-".join(part for part in [*parts, size, shape] if part)

    @property
    def peer(self) -> bool:
        """Whether pyzmq or LCM implements this case (peers scenario; pyzmq also in large)."""
        return self.implementation in PEERS

    @property
    def scenario(self) -> str:
        """``"throughput"``, ``"slow"``, ``"large"`` or ``"peers"``.

        The raw udpm cases are the baseline of both the throughput and the peers
        scenario; they run once and say ``"throughput"``.
        """
        if self.slow:
            return "slow"

        if self.large:
            return "large"

        return "peers" if self.peer else "throughput"

    @property
    def baseline(self) -> Case:
        """The raw case this one is compared with: same transport, size and fan-out.

        In the large scenario: the stream baseline with the same payload size and fan-out.
        The peers are compared with the raw udpm loop of the same size and fan-out.
        """
        if self.large:
            return Case("raw", None, self.fanout, "stream", size=self.size, large=True)

        transport = "udpm" if self.peer else self.transport
        return Case("raw", None, self.fanout, transport, size=self.size)

    def workers(self) -> tuple[Worker, Worker]:
        """Return the publisher's and the subscribers' process entry points."""
        # Imported here so that each worker process imports its own module only.
        if self.peer:
            from . import peers

            if self.implementation == "lcm":
                return peers.run_lcm_publisher, peers.run_lcm_subscriber

            return peers.run_zmq_publisher, peers.run_zmq_subscriber

        if self.large:
            return large.run_publisher, large.run_subscriber

        if self.implementation == "raw" and self.transport == "udpm":
            from . import raw

            return raw.run_publisher, raw.run_subscriber

        if self.implementation == "raw":
            from . import raw_unix

            return raw_unix.run_publisher, raw_unix.run_subscriber

        from . import bus

        return bus.run_publisher, bus.run_subscriber


@dataclass(frozen=True)
class CaseRun:
    """What one run of one case measured.

    :param url: where the run happened: the asyncbus URL (the raw loops use the same
        group and port, or sockets named after the same bus name).
    :param publisher: the publisher's report.
    :param subscribers: each subscriber's report, in subscriber order.
    :param size: the payload size of a data message, in bytes (0: not known).
    """

    url: str
    publisher: PublisherReport
    subscribers: tuple[SubscriberReport, ...]
    size: int = 0


def private_endpoint(rng: random.Random) -> tuple[str, int]:
    """Return a multicast group and UDP port that no other run uses.

    The group is random in 239.255.0.0/16 (never LCM's default); the port is one
    the kernel hands out as free right now.

    :param rng: where the group comes from.
    :return: ``(group, port)``.
    """
    while True:
        group = GROUPS[rng.randrange(1, GROUPS.num_addresses - 1)]
        if group != LCM_DEFAULT_GROUP:
            break

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]

    return str(group), port


def private_name(rng: random.Random) -> str:
    """Return an AF_UNIX bus name that no other run uses.

    :param rng: where the name comes from.
    :return: ``bench-`` and 12 hex digits.
    """
    return f"bench-{rng.getrandbits(48):012x}"


def run_case(case: Case, work: Workload) -> CaseRun:
    """Run ``case`` once with ``work``: one publisher and ``case.fanout`` subscribers.

    :param case: what runs.
    :param work: the run's settings (endpoint, message count, timeouts).
    :return: the reports.
    :raises BenchmarkError: if a worker fails, dies or does not answer in time.
    """
    work = dataclasses.replace(work, fanout=case.fanout)
    publish, subscribe = case.workers()
    with _processes(publish, subscribe, work) as (publisher, subscribers):
        _expect_ready([publisher, *subscribers])
        publisher.send(GO)
        # A subscriber stops at the end marker, or start_timeout + idle_timeout after
        # it last heard something; the send itself takes what it takes (a slow
        # subscriber with a `block` policy sets the pace: slow_work per message).
        # Large payloads: at least 50 MB/s (10 to 100 times less than measured).
        budget = (
            work.start_timeout
            + 2 * work.idle_timeout
            + work.messages * (1 / 1_000 + 4 * work.slow_work + work.size / 50e6)
        )
        reports = collect_answers(subscribers, SubscriberReport, budget)
        publisher.send(STOP)
        (report,) = collect_answers([publisher], PublisherReport, JOIN_TIMEOUT)

    return CaseRun(work.url, report, tuple(reports), work.size)


@contextlib.contextmanager
def _processes(
    publish: Worker, subscribe: Worker, work: Workload
) -> Iterator[tuple[RunnerPipe, list[RunnerPipe]]]:
    """Start the publisher and the subscribers; join them (or kill them) on the way out."""
    spawn = get_context("spawn")
    processes: list[BaseProcess] = []
    pipes: list[RunnerPipe] = []
    try:
        for index, target in enumerate([publish] + [subscribe] * work.fanout):
            ours, theirs = spawn.Pipe()
            name = "publisher" if index == 0 else f"subscriber-{index}"
            # Subscriber i (from 0) learns its index: raw AF_UNIX sockets are named by it.
            mine = dataclasses.replace(work, index=max(index - 1, 0))
            process = spawn.Process(target=target, args=(mine, theirs), name=name, daemon=True)
            process.start()
            theirs.close()  # so that ours sees EOF if the process dies
            processes.append(process)
            pipes.append(ours)

        yield pipes[0], pipes[1:]
        for child in processes:
            child.join(JOIN_TIMEOUT)
            if child.exitcode != 0:
                raise BenchmarkError(f"{child.name} exited with code {child.exitcode}")
    finally:
        for child in processes:
            if child.is_alive():
                child.kill()
                child.join()

            child.close()

        for pipe in pipes:
            pipe.close()


def _expect_ready(pipes: list[RunnerPipe]) -> None:
    for answer in collect_answers(pipes, str, READY_TIMEOUT):
        if answer != READY:
            raise BenchmarkError(f"expected {READY!r} from a worker, got {answer!r}")


def collect_answers(pipes: list[RunnerPipe], kind: type[T], timeout: float) -> list[T]:
    """Receive one object of type ``kind`` from each pipe, in the order of ``pipes``."""
    answers: dict[int, T] = {}
    pending = {pipe.fileno(): index for index, pipe in enumerate(pipes)}
    while pending:
        ready = wait([pipes[index] for index in pending.values()], timeout)
        if not ready:
            raise BenchmarkError(f"{len(pending)} worker(s) did not answer within {timeout} s")

        for pipe in ready:
            assert not isinstance(pipe, (socket.socket, int))
            index = pending.pop(pipe.fileno())
            try:
                answer = pipe.recv()
            except EOFError:
                raise BenchmarkError("a worker died without reporting; see its stderr") from None

            if isinstance(answer, WorkerFailed):
                raise BenchmarkError(f"a worker failed:\n{answer.details}")

            if not isinstance(answer, kind):
                raise BenchmarkError(f"expected a {kind.__name__} from a worker, got {answer!r}")

            answers[index] = answer

    return [answers[index] for index in range(len(pipes))]
