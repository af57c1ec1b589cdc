"""Round-trip latency of a 64-byte message (ping-pong), two processes, every system.

A *pinger* sends one message, waits for the *echoer* to send it back, and records the
round trip with ``time.perf_counter_ns``; then the next, one message in flight at a
time. The first rounds warm up (caches, the allocator, the loops' fast paths) and are
not recorded. The run of one case::

    runner                  echoer                          pinger
      | start both  ------>   open socket / bus, subscribe    open socket / bus, subscribe
      |  <------------------  READY (sees the pinger)         READY (sees the echoer)  ---->
      | GO  ---------------------------------------------->   (udpm, ipc: probe until echoed)
      |                       echo every ping                 warm-up, then N timed rounds
      |                       (stop at the end marker)        end marker; report the samples
      | STOP ------------->   report how many it echoed  <--  PingerReport
      |  <------------------  EchoerReport

Systems, all in one run:

* ``raw``: blocking Python sockets and no framework, on AF_UNIX ``SOCK_DGRAM``
  (abstract names), AF_UNIX ``SOCK_SEQPACKET`` and UDP multicast on ``lo`` (the setup
  of :mod:`benchmarks.raw`: group joined on 127.0.0.1, ``IP_MULTICAST_IF`` 127.0.0.1,
  TTL 0). The pinger sends an ``LC02`` frame (the bytes asyncbus sends for a 64-byte
  payload on topic ``ping``) and the echoer sends back what it received, unchanged.
* ``asyncio-raw``: the same sockets and bytes, non-blocking, on the default asyncio
  loop and on uvloop, with no framework: the floor an asyncio program pays (a process
  woken through epoll, a reader callback, a task step) before any library code. The
  pinger registers ``loop.add_reader(sock, callback)``; each round it sends, then
  awaits a future that the callback resolves with the echo (one task wake-up a round).
  Echoer, variant ``callback``: ``loop.add_reader(sock, callback)`` where the callback
  receives and sends the echo at once, no task at all (the cheapest asyncio echo);
  variant ``task``: a task doing ``data = await loop.sock_recv(sock, n)``, then
  ``await loop.sock_sendall(sock, data)`` (on a connected socket for the datagram
  transports), as a typical asyncio program does.
* ``asyncbus``: ``unix:@NAME``, ``seqpacket:@NAME`` and ``udpm://GROUP:PORT?ttl=0``,
  each on the default asyncio loop and on uvloop. Pinger: ``await bus.publish("ping",
  payload)``, then ``await subscription.receive()`` on its ``pong`` subscription.
  Echoer: ``async for msg in pings: await bus.publish("pong", msg.data)``.
* ``pyzmq``: two ``PUB``/``SUB`` pairs over ``ipc://`` (one per direction) in a
  directory private to the run, with blocking sockets (``sync``) and ``zmq.asyncio``.
* ``lcm``: LCM's Python binding on the run's private ``udpm://GROUP:PORT?ttl=0``:
  ``publish`` then ``handle_timeout`` until the echo's handler ran.

Readiness goes through pipes; nobody sleeps to wait. On ``unix:``/``seqpacket:`` each
asyncbus side waits (``topic.wait_subscribers(1)``) until the other's subscription has
reached it before READY. Where a subscription cannot be seen (asyncbus and LCM on
udpm, ZeroMQ's slow joiner), the pinger sends 5-byte probes after GO until one comes
back; echoes of probes still in flight are skipped by their length, so they can
never be taken for the echo of a timed round.

This module has its own case type, runner and table, independent of
:class:`benchmarks.runner.Case`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import math
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar

from .common import (
    END_PAYLOAD,
    GO,
    LC02_HEADER,
    LC02_MAGIC,
    RAW_UNIX_PREFIX,
    READY,
    STOP,
    clock,
    lc02_datagram,
    receive_command,
    receive_timeout,
    report_failure,
    run_on_loop,
)
from .runner import BenchmarkError, collect_answers, private_endpoint, private_name

if TYPE_CHECKING:
    import random
    from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
    from multiprocessing.connection import Connection

    import zmq

    import asyncbus

    from .common import WorkerPipe

    RunnerPipe: TypeAlias = Connection[str, object]

__all__ = [
    "FULL",
    "QUICK",
    "LatencyCase",
    "Plan",
    "markdown",
    "plan",
    "run",
    "select",
    "settings",
]

PAYLOAD_SIZE: Final = 64  # bytes, as in the throughput scenario
PING: Final = "ping"  # the topic (LCM channel) of the pinger's messages
PONG: Final = "pong"  # ... and of the echoer's
PROBE: Final = b"probe"  # 5 bytes: neither a ping (64) nor the end marker (3)
PROBE_WAIT: Final = 0.01  # seconds a pinger waits for a probe's echo before the next probe
START_TIMEOUT: Final = 10.0  # seconds for the two sides to see each other
ECHO_TIMEOUT: Final = 2.0  # seconds without an echo after which a raw or pyzmq run fails
STOP_POLL: Final = 0.2  # seconds between two looks at the pipe by an idle echoer
READY_TIMEOUT: Final = 60.0  # seconds for both processes to start and open their sockets
JOIN_TIMEOUT: Final = 10.0  # seconds for a process to exit once it has reported
SUN_PATH_MAX: Final = 107  # Linux sockaddr_un.sun_path (108) minus the NUL
LOOPBACK: Final = "127.0.0.1"
RECV_SIZE: Final = 65_536  # any frame fits
# The target of the issue: asyncbus's median round trip at most this many times the
# raw loop's on the same transport.
TARGET_RATIO: Final = 2.0
SYSTEMS: Final = ("raw", "asyncio-raw", "asyncbus", "pyzmq", "lcm")
TRANSPORTS: Final = ("unix", "seqpacket", "udpm")  # the --transport choices that apply
ASYNCBUS_LOOPS: Final = ("asyncio", "uvloop")  # also the loops of the asyncio-raw cases
ASYNCIO_RAW_VARIANTS: Final = ("callback", "task")  # how the asyncio-raw echoer echoes
ZMQ_LOOPS: Final = ("sync", "asyncio")
PACKAGES: Final = {"pyzmq": ("zmq", "pyzmq"), "lcm": ("lcm", "lcm")}  # system: import, PyPI
METRICS: Final = ("rtt_p50_us", "rtt_p99_us", "rtt_mean_us", "rtt_min_us", "rtt_max_us")

T = TypeVar("T")


@dataclass(frozen=True)
class LatencyCase:
    """One line of the latency table.

    :param system: ``"raw"``, ``"asyncio-raw"``, ``"asyncbus"``, ``"pyzmq"`` or ``"lcm"``.
    :param transport: ``"unix"``, ``"seqpacket"``, ``"udpm"`` or ``"ipc"`` (pyzmq).
    :param loop: ``"asyncio"``/``"uvloop"`` (asyncio-raw, asyncbus), ``"sync"``/``"asyncio"``
        (pyzmq), ``None`` (raw, LCM).
    :param variant: how the asyncio-raw echoer echoes: ``"callback"`` (in its reader
        callback) or ``"task"`` (``sock_recv``/``sock_sendall`` in a task); ``None`` for
        the other systems.
    """

    system: str
    transport: str
    loop: str | None = None
    variant: str | None = None

    @property
    def id(self) -> str:
        """A stable name: ``latency-unix-raw``, ``latency-unix-asyncio-raw-uvloop-task``, ..."""
        parts = ["latency", self.transport, self.system, self.loop, self.variant]
        return "-".join(part for part in parts if part)

    @property
    def baseline(self) -> LatencyCase:
        """The raw loop this case is compared with.

        The same transport; raw udpm for LCM, raw AF_UNIX ``SOCK_DGRAM`` for pyzmq's
        ``ipc://`` (an AF_UNIX stream underneath).
        """
        transport = {"ipc": "unix"}.get(self.transport, self.transport)
        return LatencyCase("raw", transport)


@dataclass(frozen=True)
class Plan:
    """How much to measure.

    :param mode: ``"quick"`` or ``"full"``.
    :param rounds: timed round trips per run.
    :param warmup: round trips before them, not recorded.
    :param repeats: runs per case; each metric is the median over them.
    :param placement: where the two processes run: ``"split"`` (each pinned to its own
        CPU), ``"same"`` (both pinned to one CPU) or ``"none"`` (the scheduler decides).
        Every case of a run has the same placement, so ratios compare like with like.
    """

    mode: str
    rounds: int
    warmup: int
    repeats: int
    placement: str = "split"

    @property
    def cpus(self) -> tuple[int, int] | None:
        """The CPUs of the echoer and the pinger, or ``None`` (not pinned).

        ``split`` needs two CPUs this process may use; with one, nothing is pinned.
        """
        allowed = sorted(os.sched_getaffinity(0))
        if self.placement == "same":
            return allowed[0], allowed[0]

        if self.placement == "split" and len(allowed) >= 2:
            return allowed[1], allowed[0]

        return None


PLACEMENTS: Final = ("split", "same", "none")
QUICK: Final = Plan("quick", rounds=1_000, warmup=100, repeats=1)
FULL: Final = Plan("full", rounds=20_000, warmup=1_000, repeats=5)


@dataclass(frozen=True)
class Exchange:
    """One run of one case, as both of its processes see it.

    :param system: the case's system.
    :param transport: the case's transport.
    :param loop: the case's loop.
    :param rounds: timed round trips.
    :param warmup: round trips before them.
    :param name: a private name: the AF_UNIX bus or socket names, the ipc directory.
    :param group: a private multicast group (udpm).
    :param port: a private UDP port (udpm): the bus's, or where raw pings go.
    :param pong_port: where raw udpm echoes go (a second free port).
    :param directory: the private ``ipc://`` directory (pyzmq).
    :param variant: the case's variant (asyncio-raw).
    :param cpus: the CPUs the echoer and the pinger are pinned to (``None``: not pinned).
    """

    system: str
    transport: str
    loop: str | None
    rounds: int
    warmup: int
    name: str
    group: str = ""
    port: int = 0
    pong_port: int = 0
    directory: str = ""
    variant: str | None = None
    cpus: tuple[int, int] | None = None

    @property
    def url(self) -> str:
        """Where the run happens: the asyncbus or LCM URL, or the raw/ipc address."""
        if self.transport == "udpm":
            return f"udpm://{self.group}:{self.port}?ttl=0"

        if self.transport == "ipc":
            return f"ipc://{self.directory}/{{ping,pong}}"

        return f"{self.transport}:@{self.name}"

    @property
    def payload(self) -> bytes:
        """The 64-byte payload of every ping."""
        return bytes(range(PAYLOAD_SIZE))

    @property
    def frame(self) -> bytes:
        """The raw loops' ping: the ``LC02`` frame asyncbus sends for the payload."""
        return lc02_datagram(0, PING, self.payload)

    def address(self, role: str) -> bytes:
        """Return the abstract AF_UNIX address of the raw ``pinger`` or ``echoer`` (Linux)."""
        return RAW_UNIX_PREFIX + f"{self.name}/{role}".encode()


@dataclass(frozen=True)
class PingerReport:
    """What the pinger measured.

    :param samples: each timed round trip, in nanoseconds.
    :param probes: probes sent before the first echo (0 where none were needed).
    """

    samples: list[int]
    probes: int = 0


@dataclass(frozen=True)
class EchoerReport:
    """What the echoer did.

    :param echoed: messages sent back (probes included).
    :param end_seen: whether the end marker arrived (else STOP ended the loop).
    """

    echoed: int
    end_seen: bool


@dataclass
class CaseResult:
    """Every run of one case."""

    case: LatencyCase
    runs: list[dict[str, Any]] = field(default_factory=list)


# Selection, the run, the results


def missing_systems() -> dict[str, str]:
    """Return the peers that cannot be imported here, with the package that provides each.

    :return: for example ``{"lcm": "lcm"}``; empty when every system can run.
    """
    missing = {}
    for system, (module, package) in PACKAGES.items():
        try:
            importlib.import_module(module)  # a binding that fails to load counts too
        except ImportError:
            missing[system] = package

    return missing


def select(transports: Collection[str]) -> tuple[tuple[LatencyCase, ...], list[str]]:
    """Return the latency cases for ``transports`` and notes on the systems skipped.

    Each transport has its raw case, the asyncio-raw cases (each loop, each variant) and
    the asyncbus cases. pyzmq runs when ``unix`` is selected (its baseline is the raw
    AF_UNIX datagram loop), LCM when ``udpm`` is; either is skipped, with a note, if not
    installed.

    :param transports: the selected transports (``udpm``, ``unix``, ``seqpacket``).
    :return: ``(cases, notes)``.
    """
    missing = missing_systems()
    notes = [
        f"latency: skipping {system} ({package} is not installed: pip install {package}, "
        "or pip install -e '.[bench]')"
        for system, package in missing.items()
        if {"pyzmq": "unix", "lcm": "udpm"}[system] in transports
    ]
    cases: list[LatencyCase] = []
    for transport in (t for t in TRANSPORTS if t in transports):
        cases.append(LatencyCase("raw", transport))
        cases.extend(
            LatencyCase("asyncio-raw", transport, loop, variant)
            for variant in ASYNCIO_RAW_VARIANTS
            for loop in ASYNCBUS_LOOPS
        )
        cases.extend(LatencyCase("asyncbus", transport, loop) for loop in ASYNCBUS_LOOPS)
        if transport == "unix" and "pyzmq" not in missing:
            cases.extend(LatencyCase("pyzmq", "ipc", loop) for loop in ZMQ_LOOPS)

        if transport == "udpm" and "lcm" not in missing:
            cases.append(LatencyCase("lcm", "udpm"))

    return tuple(cases), notes


def plan(
    full: bool, rounds: int | None = None, repeats: int | None = None, placement: str = "split"
) -> Plan:
    """Return the plan of a quick or full run, with the command line's overrides.

    :param full: full mode (else quick).
    :param rounds: timed round trips per run, if given.
    :param repeats: runs per case, if given.
    :param placement: one of :data:`PLACEMENTS`.
    :return: the plan; warm-up is a tenth of the rounds, at most the mode's.
    """
    base = FULL if full else QUICK
    count = rounds or base.rounds
    warmup = min(base.warmup, max(1, count // 10))
    return Plan(base.mode, count, warmup, repeats or base.repeats, placement)


def settings(chosen: Plan) -> dict[str, object]:
    """Return how the latency scenario runs, for the JSON document's settings.

    :param chosen: the plan.
    :return: a JSON-ready dict.
    """
    return {
        "mode": chosen.mode,
        "rounds": chosen.rounds,
        "warmup": chosen.warmup,
        "repeats": chosen.repeats,
        "placement": chosen.placement,
        "cpus": {"echoer": cpus[0], "pinger": cpus[1]} if (cpus := chosen.cpus) else None,
        "payload_size": PAYLOAD_SIZE,
        "raw_frame_size": len(lc02_datagram(0, PING, bytes(PAYLOAD_SIZE))),
        "clock": "time.perf_counter_ns around publish/send and the echo's arrival",
        "processes": "spawn: one pinger, one echoer; one message in flight",
        "statistic": "median over repeats of each run's p50, p99, mean, min, max",
        "percentile": "nearest rank",
        "baselines": "raw loop on the same transport; raw udpm for lcm, raw unix for pyzmq",
        "target": f"asyncbus rtt_p50_us <= {TARGET_RATIO:g} x the raw loop's",
        "asyncio_raw": "raw non-blocking sockets on the loop, no framework; pinger: "
        "add_reader + a future per round; echoer: add_reader callback (callback) or "
        "sock_recv/sock_sendall in a task (task)",
        "urls": "udpm://GROUP:PORT?ttl=0 (private per run), unix:@NAME, seqpacket:@NAME",
    }


def run(cases: Sequence[LatencyCase], chosen: Plan, rng: random.Random) -> list[dict[str, object]]:
    """Run every case ``chosen.repeats`` times, interleaved; return the JSON results.

    Progress goes to stderr.

    :param cases: what to run.
    :param chosen: rounds, warm-up, repeats.
    :param rng: where private endpoints and names come from.
    :return: one JSON-ready dict per case (see :func:`results`).
    :raises BenchmarkError: if a process fails, dies or does not answer in time.
    """
    collected = {case: CaseResult(case) for case in cases}
    for repeat in range(chosen.repeats):
        for case in cases:
            exchange = _exchange(case, chosen, rng)
            report = run_exchange(exchange)
            if len(report.samples) != chosen.rounds:
                raise BenchmarkError(
                    f"{case.id}: {len(report.samples)} samples, expected {chosen.rounds}"
                )

            metrics = summarize(report.samples)
            collected[case].runs.append(
                {
                    "samples": len(report.samples),
                    "warmup": chosen.warmup,
                    "probes": report.probes,
                    "url": exchange.url,
                    **metrics,
                }
            )
            print(
                f"[{repeat + 1}/{chosen.repeats}] {case.id:<50} round trip"
                f"  p50 {metrics['rtt_p50_us']:8.1f} us  p99 {metrics['rtt_p99_us']:8.1f} us"
                f"  max {metrics['rtt_max_us']:9.1f} us",
                file=sys.stderr,
            )

    return results(list(collected.values()))


def summarize(samples: Sequence[int]) -> dict[str, float]:
    """Return p50, p99 (nearest rank), mean, min and max of ``samples``, in microseconds.

    :param samples: round trips in nanoseconds, at least one.
    :return: ``rtt_p50_us``, ``rtt_p99_us``, ``rtt_mean_us``, ``rtt_min_us``, ``rtt_max_us``.
    """
    ordered = sorted(samples)

    def rank(percent: float) -> float:
        return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)] / 1_000

    return {
        "rtt_p50_us": rank(50),
        "rtt_p99_us": rank(99),
        "rtt_mean_us": statistics.fmean(ordered) / 1_000,
        "rtt_min_us": ordered[0] / 1_000,
        "rtt_max_us": ordered[-1] / 1_000,
    }


def results(collected: Sequence[CaseResult]) -> list[dict[str, object]]:
    """Return the JSON document's ``latency`` list: medians, ratio to the raw loop, runs.

    :param collected: every case with its runs.
    :return: one dict per case: ``id``, ``system``, ``transport``, ``loop``, ``median``,
        ``variant`` (``None`` but for asyncio-raw), ``ratio_p50_vs_raw`` (``None`` for raw, or
        when the baseline did not run),
        ``baseline`` and ``runs``.
    """
    medians = {
        item.case: {name: statistics.median(run[name] for run in item.runs) for name in METRICS}
        for item in collected
    }
    documents: list[dict[str, object]] = []
    for item in collected:
        case = item.case
        base = medians.get(case.baseline)
        ratio = None
        if case.system != "raw" and base is not None and base["rtt_p50_us"] > 0:
            ratio = medians[case]["rtt_p50_us"] / base["rtt_p50_us"]

        documents.append(
            {
                "id": case.id,
                "system": case.system,
                "transport": case.transport,
                "loop": case.loop,
                "variant": case.variant,
                "median": medians[case],
                "ratio_p50_vs_raw": ratio,
                "baseline": case.baseline.id,
                "runs": item.runs,
            }
        )

    return documents


def markdown(documents: Sequence[dict[str, Any]], chosen: Plan) -> str:
    """Return the latency table in GitHub markdown.

    :param documents: :func:`results`.
    :param chosen: the plan, for the caption.
    :return: a heading, a table and a caption.
    """
    lines = [
        f"### Round-trip latency, {PAYLOAD_SIZE}-byte payload (us)",
        "",
        "| case | system | transport | loop | p50 | p99 | mean | min | max "
        f"| p50 / raw | target (<= {TARGET_RATIO:g}x) |",
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for document in documents:
        median = document["median"]
        ratio = document["ratio_p50_vs_raw"]
        target = ""
        if document["system"] == "asyncbus" and ratio is not None:
            target = "met" if ratio <= TARGET_RATIO else "missed"

        cells = [
            document["id"].removeprefix("latency-"),
            document["system"],
            document["transport"],
            document["loop"] or "-",
            *(f"{median[name]:,.1f}" for name in METRICS),
            "-" if ratio is None else f"{ratio:.2f}x",
            target,
        ]
        lines.append("| " + " | ".join(cells) + " |")

    lines += [
        "",
        f"{chosen.mode} mode, latency: {chosen.rounds:,} round trips after {chosen.warmup:,} "
        f"warm-up, median of {chosen.repeats}, placement {chosen.placement}"
        + (f" (echoer on CPU {cpus[0]}, pinger on CPU {cpus[1]})" if (cpus := chosen.cpus) else "")
        + "; p50 / raw: against "
        + ", ".join(
            sorted({f"{d['baseline'].removeprefix('latency-')}" for d in documents}),
        ),
    ]
    return "\n".join(lines)


def _exchange(case: LatencyCase, chosen: Plan, rng: random.Random) -> Exchange:
    name = private_name(rng)
    group, port, pong_port, directory = "", 0, 0, ""
    if case.transport == "udpm":
        group, port = private_endpoint(rng)
        while (pong_port := private_endpoint(rng)[1]) == port:
            pass

    if case.transport == "ipc":
        directory = os.path.join(tempfile.gettempdir(), name)
        if len(os.path.join(directory, "ping").encode()) > SUN_PATH_MAX:
            raise BenchmarkError(f"ipc path too long: {directory} (set TMPDIR=/tmp)")

    return Exchange(
        case.system,
        case.transport,
        case.loop,
        chosen.rounds,
        chosen.warmup,
        name,
        group,
        port,
        pong_port,
        directory,
        case.variant,
        chosen.cpus,
    )


def run_exchange(exchange: Exchange) -> PingerReport:
    """Run one case once: start the echoer and the pinger, GO, collect their reports.

    :param exchange: the run.
    :return: the pinger's report.
    :raises BenchmarkError: if a process fails, dies or does not answer in time.
    """
    with contextlib.ExitStack() as stack:
        if exchange.directory:
            os.mkdir(exchange.directory, 0o700)
            stack.callback(shutil.rmtree, exchange.directory, ignore_errors=True)

        echoer, pinger = stack.enter_context(_processes(exchange))
        for answer in collect_answers([echoer, pinger], str, READY_TIMEOUT):
            if answer != READY:
                raise BenchmarkError(f"expected {READY!r} from a worker, got {answer!r}")

        pinger.send(GO)
        # A generous bound, for a run that hangs: 5 ms a round trip (measured: 20-100 us).
        budget = START_TIMEOUT + (exchange.rounds + exchange.warmup) * 0.005
        (report,) = collect_answers([pinger], PingerReport, budget)
        echoer.send(STOP)
        collect_answers([echoer], EchoerReport, JOIN_TIMEOUT)

    return report


@contextlib.contextmanager
def _processes(exchange: Exchange) -> Iterator[tuple[RunnerPipe, RunnerPipe]]:
    """Start the echoer and the pinger (spawn); join them, or kill them, on the way out."""
    spawn = get_context("spawn")
    processes = []
    pipes: list[RunnerPipe] = []
    try:
        for name, target in (("echoer", run_echoer), ("pinger", run_pinger)):
            ours, theirs = spawn.Pipe()
            process = spawn.Process(target=target, args=(exchange, theirs), name=name, daemon=True)
            process.start()
            if exchange.cpus is not None:
                assert process.pid is not None
                cpu = exchange.cpus[0] if name == "echoer" else exchange.cpus[1]
                os.sched_setaffinity(process.pid, {cpu})  # before it is READY to measure

            theirs.close()  # so that ours sees EOF if the process dies
            processes.append(process)
            pipes.append(ours)

        yield pipes[0], pipes[1]
        for child in processes:
            child.join(JOIN_TIMEOUT)
            if child.exitcode != 0:
                raise BenchmarkError(f"latency {child.name} exited with code {child.exitcode}")
    finally:
        for child in processes:
            if child.is_alive():
                child.kill()
                child.join()

            child.close()

        for pipe in pipes:
            pipe.close()


# The processes


def run_pinger(exchange: Exchange, conn: WorkerPipe) -> None:
    """Process entry point: ping on GO, report a :class:`PingerReport`.

    :param exchange: the run.
    :param conn: the pipe to the runner.
    """
    _run(_PINGERS, exchange, conn)


def run_echoer(exchange: Exchange, conn: WorkerPipe) -> None:
    """Process entry point: echo every ping until the end marker or STOP; report.

    :param exchange: the run.
    :param conn: the pipe to the runner.
    """
    _run(_ECHOERS, exchange, conn)


Body: TypeAlias = "Callable[[Exchange, WorkerPipe], object]"


def _run(bodies: dict[str, Body], exchange: Exchange, conn: WorkerPipe) -> None:
    """Run the system's body; send the runner what it returns, or its traceback."""
    key = exchange.system if exchange.system != "raw" else f"raw-{exchange.transport}"
    try:
        result = bodies[key](exchange, conn)
    except Exception:
        report_failure(conn)
        raise

    conn.send(result)


def _expect(conn: WorkerPipe, command: str) -> None:
    if (answer := conn.recv()) != command:
        raise RuntimeError(f"expected {command!r} from the runner, got {answer!r}")


def _stopped(conn: WorkerPipe) -> bool:
    """Tell whether the runner has said STOP (reading it); never blocks."""
    if not conn.poll(0):
        return False

    _expect(conn, STOP)
    return True


# Raw sockets: AF_UNIX SOCK_DGRAM, SOCK_SEQPACKET, UDP multicast


def _raw_sockets(
    exchange: Exchange, role: str, stack: contextlib.ExitStack
) -> tuple[socket.socket, Callable[[], tuple[socket.socket, socket.socket]]]:
    """Open ``role``'s sockets; return the bound one, and what makes them ready to talk.

    The second returns ``(sender, receiver)``.

    It runs after READY: the pinger connects to the echoer (unix, seqpacket); the
    seqpacket echoer accepts that connection, the unix one connects back at the first
    ping. On udpm the receiving socket is bound to the group and a port of its own (so
    neither side hears its own datagrams) and a second socket, connected to the other
    side's group and port, sends, as in :mod:`benchmarks.raw`.
    """
    if exchange.transport == "udpm":
        mine, theirs = (
            (exchange.pong_port, exchange.port)
            if role == "pinger"
            else (exchange.port, exchange.pong_port)
        )
        receiver = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        receiver.bind((exchange.group, mine))  # the group address: this group's traffic only
        membership = socket.inet_aton(exchange.group) + socket.inet_aton(LOOPBACK)
        receiver.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        sender = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        interface = socket.inet_aton(LOOPBACK)
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, interface)
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        sender.connect((exchange.group, theirs))  # send() without an address each time
        return receiver, lambda: (sender, receiver)

    kind = socket.SOCK_SEQPACKET if exchange.transport == "seqpacket" else socket.SOCK_DGRAM
    sock = stack.enter_context(socket.socket(socket.AF_UNIX, kind))
    sock.bind(exchange.address(role))
    if role == "pinger" or kind == socket.SOCK_DGRAM:
        other = exchange.address("echoer" if role == "pinger" else "pinger")

        def connect() -> tuple[socket.socket, socket.socket]:
            sock.connect(other)  # it bound before it said READY
            return sock, sock

        return sock, connect

    sock.listen(1)

    def accept() -> tuple[socket.socket, socket.socket]:
        sock.settimeout(START_TIMEOUT)  # accept() only
        connection, _ = sock.accept()
        connection.setblocking(True)
        stack.enter_context(connection)
        return connection, connection

    return sock, accept


def _raw_pinger(exchange: Exchange, conn: WorkerPipe) -> PingerReport:
    with contextlib.ExitStack() as stack:
        _, ready = _raw_sockets(exchange, "pinger", stack)
        conn.send(READY)
        _expect(conn, GO)
        sender, receiver = ready()
        receive_timeout(receiver, ECHO_TIMEOUT)
        buffer = bytearray(exchange.frame)
        size = len(buffer)
        pack_into, send, recv = LC02_HEADER.pack_into, sender.send, receiver.recv
        perf = time.perf_counter_ns
        samples: list[int] = []
        record = samples.append
        warmup = exchange.warmup
        try:
            for seq in range(warmup + exchange.rounds):
                pack_into(buffer, 0, LC02_MAGIC, seq)  # as asyncbus numbers its frames
                started = perf()
                send(buffer)
                echo = recv(RECV_SIZE)
                finished = perf()
                if len(echo) != size:
                    raise RuntimeError(f"echo of {len(echo)} bytes, expected {size}")

                if seq >= warmup:
                    record(finished - started)
        except BlockingIOError:  # EAGAIN: SO_RCVTIMEO expired
            raise RuntimeError(f"no echo within {ECHO_TIMEOUT} s") from None

        if echo[-PAYLOAD_SIZE:] != exchange.payload:
            raise RuntimeError("the echo differs from the ping")

        send(lc02_datagram(0, PING, END_PAYLOAD))

    return PingerReport(samples)


def _raw_echoer(exchange: Exchange, conn: WorkerPipe) -> EchoerReport:
    with contextlib.ExitStack() as stack:
        receiver, ready = _raw_sockets(exchange, "echoer", stack)
        conn.send(READY)
        # AF_UNIX SOCK_DGRAM: connect back at the first ping (the pinger may not have
        # bound yet); seqpacket: accept the pinger's connection; udpm: nothing to wait for.
        send = None
        if exchange.transport != "unix":
            sender, receiver = ready()
            send = sender.send

        receive_timeout(receiver, STOP_POLL)
        size = len(exchange.frame)
        echoed = 0
        end_seen = stopped = False
        recv = receiver.recv
        while True:
            try:
                data = recv(RECV_SIZE)
            except BlockingIOError:  # idle for STOP_POLL: has the runner said STOP?
                if stopped := _stopped(conn):
                    break

                continue

            if len(data) != size:
                end_seen = True  # the end marker (or b"": the pinger's connection closed)
                break

            if send is None:
                send = ready()[0].send

            send(data)
            echoed += 1

        if not stopped:
            _expect(conn, STOP)

    return EchoerReport(echoed, end_seen)


# Raw sockets on an event loop: the floor an asyncio program pays


class _EchoWaiter:
    """The asyncio-raw pinger's reader callback: resolves the round's future with the echo.

    A callback and a future, not ``loop.sock_recv``: the reader stays registered for the
    whole run, so a round costs one wake-up of the pinger's task and no epoll_ctl calls.
    """

    __slots__ = ("future", "recv", "unexpected")

    def __init__(self, sock: socket.socket) -> None:
        self.recv = sock.recv
        self.future: asyncio.Future[bytes] | None = None
        self.unexpected = 0  # echoes with no round waiting: the pinger fails the run

    def readable(self) -> None:
        future = self.future
        try:
            data = self.recv(RECV_SIZE)
        except BlockingIOError:  # woken for nothing
            return
        except OSError as exc:  # ECONNREFUSED: the echoer is gone; the run fails
            if future is not None and not future.done():
                future.set_exception(exc)

            return

        if future is None or future.done():  # never with one ping in flight
            self.unexpected += 1
            return

        self.future = None
        future.set_result(data)


def _asyncio_raw_pinger(exchange: Exchange, conn: WorkerPipe) -> PingerReport:
    return run_on_loop(exchange.loop or "asyncio", _asyncio_raw_ping(exchange, conn))


async def _asyncio_raw_ping(exchange: Exchange, conn: WorkerPipe) -> PingerReport:
    loop = asyncio.get_running_loop()
    with contextlib.ExitStack() as stack:
        _, ready = _raw_sockets(exchange, "pinger", stack)
        conn.send(READY)
        if (command := await receive_command(conn)) != GO:
            raise RuntimeError(f"expected {GO!r} from the runner, got {command!r}")

        sender, receiver = ready()
        sender.setblocking(False)
        receiver.setblocking(False)
        waiter = _EchoWaiter(receiver)
        loop.add_reader(receiver, waiter.readable)
        stack.callback(loop.remove_reader, receiver)  # before the socket closes (LIFO)
        buffer = bytearray(exchange.frame)
        size = len(buffer)
        pack_into, send, create_future = LC02_HEADER.pack_into, sender.send, loop.create_future
        perf = time.perf_counter_ns
        samples: list[int] = []
        record = samples.append
        warmup = exchange.warmup
        # One bound for the whole loop, as for asyncbus: 5 ms a round trip.
        async with asyncio.timeout(START_TIMEOUT + (warmup + exchange.rounds) * 0.005):
            for seq in range(warmup + exchange.rounds):
                pack_into(buffer, 0, LC02_MAGIC, seq)  # as asyncbus numbers its frames
                future = waiter.future = create_future()
                started = perf()
                send(buffer)  # one datagram in flight: never EAGAIN
                echo = await future
                finished = perf()
                if len(echo) != size:
                    raise RuntimeError(f"echo of {len(echo)} bytes, expected {size}")

                if seq >= warmup:
                    record(finished - started)

        if echo[-PAYLOAD_SIZE:] != exchange.payload:
            raise RuntimeError("the echo differs from the ping")

        if waiter.unexpected:
            raise RuntimeError(f"{waiter.unexpected} echoes arrived with no ping in flight")

        send(lc02_datagram(0, PING, END_PAYLOAD))

    return PingerReport(samples)


class _CallbackEchoer:
    """The asyncio-raw echoer's reader callback (variant ``callback``): echo at once.

    No task and no future: the cheapest echo an asyncio program can have. The end
    marker (or EOF on seqpacket) resolves ``finished``; so does an error, which then
    fails the run instead of going to the loop's exception handler.
    """

    def __init__(
        self,
        receiver: socket.socket,
        send: Callable[[bytes], object] | None,
        connect: Callable[[], tuple[socket.socket, socket.socket]],
        size: int,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.receiver = receiver
        self.recv = receiver.recv
        self.send = send
        self.connect = connect
        self.size = size
        self.echoed = 0
        self.finished: asyncio.Future[EchoerReport] = self.loop.create_future()

    def readable(self) -> None:
        try:
            data = self.recv(RECV_SIZE)
            if len(data) != self.size:  # the end marker (or b"": the connection closed)
                self._finish(EchoerReport(self.echoed, True))
                return

            if self.send is None:  # unix: connect back at the first ping
                self.send = self.connect()[0].send

            self.send(data)
            self.echoed += 1
        except BlockingIOError:  # woken for nothing
            return
        except Exception as exc:
            self._finish(exc)

    def _finish(self, outcome: EchoerReport | Exception) -> None:
        self.loop.remove_reader(self.receiver)  # EOF stays readable: stop the callbacks
        if self.finished.done():
            return

        if isinstance(outcome, Exception):
            self.finished.set_exception(outcome)
        else:
            self.finished.set_result(outcome)

    async def run(self) -> EchoerReport:
        """Echo until the end marker; the reader is removed however it ends."""
        self.loop.add_reader(self.receiver, self.readable)
        try:
            return await self.finished
        finally:
            self.loop.remove_reader(self.receiver)


async def _task_echo(
    receiver: socket.socket,
    sender: socket.socket | None,
    connect: Callable[[], tuple[socket.socket, socket.socket]],
    size: int,
    echoed: list[int],
) -> EchoerReport:
    """The asyncio-raw echoer's loop (variant ``task``): what an asyncio program writes."""
    loop = asyncio.get_running_loop()
    sock_recv, sock_sendall = loop.sock_recv, loop.sock_sendall
    while len(data := await sock_recv(receiver, RECV_SIZE)) == size:
        if sender is None:  # unix: connect back at the first ping
            sender = connect()[0]

        await sock_sendall(sender, data)
        echoed[0] += 1

    return EchoerReport(echoed[0], True)  # the end marker, or b"": the connection closed


def _asyncio_raw_echoer(exchange: Exchange, conn: WorkerPipe) -> EchoerReport:
    return run_on_loop(exchange.loop or "asyncio", _asyncio_raw_echo(exchange, conn))


async def _asyncio_raw_echo(exchange: Exchange, conn: WorkerPipe) -> EchoerReport:
    with contextlib.ExitStack() as stack:
        receiver, ready = _raw_sockets(exchange, "echoer", stack)
        receiver.setblocking(False)  # unix: also the sender, connected at the first ping
        conn.send(READY)
        sender = None
        if exchange.transport != "unix":
            # seqpacket: accept the pinger's connection, blocking (bounded), before any
            # ping; udpm: nothing to wait for. Set-up, not measured.
            sender, receiver = ready()
            sender.setblocking(False)
            receiver.setblocking(False)

        size = len(exchange.frame)
        if exchange.variant == "callback":
            send = sender.send if sender is not None else None
            echoer = _CallbackEchoer(receiver, send, ready, size)
            report = await _echo_until_stop(conn, echoer.run(), lambda: echoer.echoed)
        else:
            echoed = [0]
            echo = _task_echo(receiver, sender, ready, size, echoed)
            report = await _echo_until_stop(conn, echo, lambda: echoed[0])

    return report


# asyncbus


def _bus_pinger(exchange: Exchange, conn: WorkerPipe) -> PingerReport:
    return run_on_loop(exchange.loop or "asyncio", _bus_ping(exchange, conn))


def _bus_echoer(exchange: Exchange, conn: WorkerPipe) -> EchoerReport:
    return run_on_loop(exchange.loop or "asyncio", _bus_echo(exchange, conn))


async def _bus_ping(exchange: Exchange, conn: WorkerPipe) -> PingerReport:
    import asyncbus

    async with asyncbus.connect(exchange.url) as bus, bus.subscribe(PONG) as pongs:
        if exchange.transport != "udpm":
            async with asyncio.timeout(START_TIMEOUT):
                await bus.topic(PING).wait_subscribers(1)  # the echoer's subscription

        conn.send(READY)
        if (command := await receive_command(conn)) != GO:
            raise RuntimeError(f"expected {GO!r} from the runner, got {command!r}")

        publish, receive = bus.publish, pongs.receive
        probes = 0
        if exchange.transport == "udpm":  # no wait_subscribers: probe until one comes back
            probes = await _probe(lambda: publish(PING, PROBE), receive)

        payload = exchange.payload
        size = len(payload)
        perf = time.perf_counter_ns
        samples: list[int] = []
        record = samples.append
        warmup = exchange.warmup
        # One bound for the whole loop, not a timer per round: 5 ms a round trip.
        async with asyncio.timeout(START_TIMEOUT + (warmup + exchange.rounds) * 0.005):
            for index in range(warmup + exchange.rounds):
                started = perf()
                await publish(PING, payload)
                message = await receive()
                while len(message.data) != size:  # the echo of a probe: not ours
                    message = await receive()

                finished = perf()
                if index >= warmup:
                    record(finished - started)

        if bytes(message.data) != payload:
            raise RuntimeError("the echo differs from the ping")

        await publish(PING, END_PAYLOAD)

    return PingerReport(samples, probes)


async def _probe(
    send: Callable[[], Awaitable[object]], receive: Callable[[], Awaitable[object]]
) -> int:
    """Send a probe every :data:`PROBE_WAIT` seconds until an echo arrives; return the count."""
    deadline = clock() + START_TIMEOUT
    probes = 0
    while clock() < deadline:
        await send()
        probes += 1
        try:
            async with asyncio.timeout(PROBE_WAIT):
                await receive()  # cancel-atomic: a late echo stays queued, skipped by length
        except TimeoutError:
            continue

        return probes

    raise RuntimeError(f"no echo of {probes} probes within {START_TIMEOUT} s")


async def _bus_echo(exchange: Exchange, conn: WorkerPipe) -> EchoerReport:
    import asyncbus

    async with asyncbus.connect(exchange.url) as bus, bus.subscribe(PING) as pings:
        if exchange.transport != "udpm":
            async with asyncio.timeout(START_TIMEOUT):
                await bus.topic(PONG).wait_subscribers(1)  # the pinger's subscription

        conn.send(READY)
        echoed = [0]
        report = await _echo_until_stop(conn, _bus_echo_loop(bus, pings, echoed), lambda: echoed[0])

    return report


async def _bus_echo_loop(
    bus: asyncbus.Bus, pings: asyncbus.Subscription, echoed: list[int]
) -> EchoerReport:
    """The echoer's loop: what a user writes, plus the end marker and a count."""
    publish = bus.publish
    end = len(END_PAYLOAD)
    async for message in pings:
        if len(message.data) == end:
            return EchoerReport(echoed[0], True)

        await publish(PONG, message.data)
        echoed[0] += 1

    return EchoerReport(echoed[0], False)


async def _echo_until_stop(
    conn: WorkerPipe, echo: Awaitable[EchoerReport], counted: Callable[[], int] | None = None
) -> EchoerReport:
    """Run the echo loop until it ends (end marker) or the runner says STOP; then wait STOP.

    :param counted: how many were echoed so far, if the loop is cut short by STOP.
    """
    loop_task = asyncio.ensure_future(echo)
    command_task = asyncio.ensure_future(receive_command(conn))
    await asyncio.wait({loop_task, command_task}, return_when=asyncio.FIRST_COMPLETED)
    if not loop_task.done():  # STOP before the end marker (multicast lost it)
        loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop_task

        report = EchoerReport(counted() if counted else -1, False)
    else:
        report = loop_task.result()

    if (command := await command_task) != STOP:
        raise RuntimeError(f"expected {STOP!r} from the runner, got {command!r}")

    return report


# pyzmq: two PUB/SUB pairs over ipc://, sync and zmq.asyncio


def _zmq_options(sock: zmq.Socket[Any]) -> None:
    import zmq

    sock.setsockopt(zmq.LINGER, 0)  # close() never waits for undelivered messages


def _zmq_endpoints(exchange: Exchange, role: str) -> tuple[str, str]:
    """Return where ``role`` binds its PUB and where it connects its SUB."""
    ping = f"ipc://{exchange.directory}/ping"
    pong = f"ipc://{exchange.directory}/pong"
    return (ping, pong) if role == "pinger" else (pong, ping)


def _zmq_pinger(exchange: Exchange, conn: WorkerPipe) -> PingerReport:
    if exchange.loop == "asyncio":
        return run_on_loop("asyncio", _zmq_ping_async(exchange, conn))

    import zmq

    bind, connect = _zmq_endpoints(exchange, "pinger")
    with (
        zmq.Context() as context,
        context.socket(zmq.PUB) as pub,
        context.socket(zmq.SUB) as sub,
    ):
        for sock in (pub, sub):
            _zmq_options(sock)

        sub.setsockopt(zmq.SUBSCRIBE, b"")
        pub.bind(bind)
        sub.connect(connect)
        conn.send(READY)
        _expect(conn, GO)
        # The slow joiner, both ways: probe until an echo comes back.
        deadline = clock() + START_TIMEOUT
        probes = 0
        while True:
            pub.send(PROBE)
            probes += 1
            if sub.poll(int(PROBE_WAIT * 1000)):
                break

            if clock() > deadline:
                raise RuntimeError(f"no echo of {probes} probes within {START_TIMEOUT} s")

        sub.setsockopt(zmq.RCVTIMEO, int(ECHO_TIMEOUT * 1000))
        payload = exchange.payload
        size = len(payload)
        send, recv = pub.send, sub.recv
        perf = time.perf_counter_ns
        samples: list[int] = []
        record = samples.append
        warmup = exchange.warmup
        try:
            for index in range(warmup + exchange.rounds):
                started = perf()
                send(payload)
                echo = recv()
                while len(echo) != size:  # the echo of a probe
                    echo = recv()

                finished = perf()
                if index >= warmup:
                    record(finished - started)
        except zmq.Again:
            raise RuntimeError(f"no echo within {ECHO_TIMEOUT} s") from None

        if echo != payload:
            raise RuntimeError("the echo differs from the ping")

        send(END_PAYLOAD)

    return PingerReport(samples, probes)


async def _zmq_ping_async(exchange: Exchange, conn: WorkerPipe) -> PingerReport:
    import zmq
    import zmq.asyncio

    bind, connect = _zmq_endpoints(exchange, "pinger")
    with (
        zmq.asyncio.Context() as context,
        context.socket(zmq.PUB) as pub,
        context.socket(zmq.SUB) as sub,
    ):
        for sock in (pub, sub):
            _zmq_options(sock)

        sub.setsockopt(zmq.SUBSCRIBE, b"")
        pub.bind(bind)
        sub.connect(connect)
        conn.send(READY)
        if (command := await receive_command(conn)) != GO:
            raise RuntimeError(f"expected {GO!r} from the runner, got {command!r}")

        send, recv = pub.send, sub.recv
        probes = await _probe(lambda: send(PROBE), recv)
        payload = exchange.payload
        size = len(payload)
        perf = time.perf_counter_ns
        samples: list[int] = []
        record = samples.append
        warmup = exchange.warmup
        async with asyncio.timeout(START_TIMEOUT + (warmup + exchange.rounds) * 0.005):
            for index in range(warmup + exchange.rounds):
                started = perf()
                await send(payload)
                echo = await recv()
                while len(echo) != size:  # the echo of a probe
                    echo = await recv()

                finished = perf()
                if index >= warmup:
                    record(finished - started)

        if echo != payload:
            raise RuntimeError("the echo differs from the ping")

        await send(END_PAYLOAD)

    return PingerReport(samples, probes)


def _zmq_echoer(exchange: Exchange, conn: WorkerPipe) -> EchoerReport:
    if exchange.loop == "asyncio":
        return run_on_loop("asyncio", _zmq_echo_async(exchange, conn))

    import zmq

    bind, connect = _zmq_endpoints(exchange, "echoer")
    with (
        zmq.Context() as context,
        context.socket(zmq.PUB) as pub,
        context.socket(zmq.SUB) as sub,
    ):
        for sock in (pub, sub):
            _zmq_options(sock)

        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.RCVTIMEO, int(STOP_POLL * 1000))
        pub.bind(bind)
        sub.connect(connect)
        conn.send(READY)
        send, recv = pub.send, sub.recv
        echoed = 0
        end_seen = stopped = False
        while True:
            try:
                data = recv()
            except zmq.Again:  # idle for STOP_POLL: has the runner said STOP?
                if stopped := _stopped(conn):
                    break

                continue

            if data == END_PAYLOAD:
                end_seen = True
                break

            send(data)
            echoed += 1

        if not stopped:
            _expect(conn, STOP)

    return EchoerReport(echoed, end_seen)


async def _zmq_echo_async(exchange: Exchange, conn: WorkerPipe) -> EchoerReport:
    import zmq
    import zmq.asyncio

    bind, connect = _zmq_endpoints(exchange, "echoer")
    with (
        zmq.asyncio.Context() as context,
        context.socket(zmq.PUB) as pub,
        context.socket(zmq.SUB) as sub,
    ):
        for sock in (pub, sub):
            _zmq_options(sock)

        sub.setsockopt(zmq.SUBSCRIBE, b"")
        pub.bind(bind)
        sub.connect(connect)
        conn.send(READY)
        echoed = [0]

        async def echo() -> EchoerReport:
            send, recv = pub.send, sub.recv
            while (data := await recv()) != END_PAYLOAD:
                await send(data)
                echoed[0] += 1

            return EchoerReport(echoed[0], True)

        report = await _echo_until_stop(conn, echo(), lambda: echoed[0])

    return report


# LCM


class _LCMEcho:
    """The pinger's handler of ``pong``: keeps the last echo of a ping (not of a probe)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.echo: bytes | None = None
        self.any = False

    def clear(self) -> None:
        self.echo = None

    def handle(self, channel: str, data: bytes) -> None:
        self.any = True
        if len(data) == self.size:
            self.echo = data


def _lcm_pinger(exchange: Exchange, conn: WorkerPipe) -> PingerReport:
    import lcm

    bus = lcm.LCM(exchange.url)
    payload = exchange.payload
    handler = _LCMEcho(len(payload))
    subscription = bus.subscribe(PONG, handler.handle)
    conn.send(READY)
    _expect(conn, GO)
    publish, handle_timeout = bus.publish, bus.handle_timeout
    # LCM joins the group on the interface of its route: probe until an echo arrives.
    deadline = clock() + START_TIMEOUT
    probes = 0
    while not handler.any:
        publish(PING, PROBE)
        probes += 1
        handle_timeout(int(PROBE_WAIT * 1000))
        if clock() > deadline:
            raise RuntimeError(f"no echo of {probes} probes within {START_TIMEOUT} s")

    perf = time.perf_counter_ns
    samples: list[int] = []
    record = samples.append
    warmup = exchange.warmup
    timeout = int(ECHO_TIMEOUT * 1000)
    for index in range(warmup + exchange.rounds):
        handler.clear()
        started = perf()
        publish(PING, payload)
        while handler.echo is None:  # the echo of a probe leaves it None
            if handle_timeout(timeout) <= 0:
                raise RuntimeError(f"no echo within {ECHO_TIMEOUT} s")

        finished = perf()
        if index >= warmup:
            record(finished - started)

    if handler.echo != payload:
        raise RuntimeError("the echo differs from the ping")

    publish(PING, END_PAYLOAD)
    bus.unsubscribe(subscription)
    return PingerReport(samples, probes)


class _LCMEchoer:
    """The echoer's handler of ``ping``: publishes it back on ``pong``."""

    def __init__(self, bus: Any) -> None:
        self.publish = bus.publish
        self.echoed = 0
        self.end_seen = False

    def handle(self, channel: str, data: bytes) -> None:
        if data == END_PAYLOAD:
            self.end_seen = True
            return

        self.publish(PONG, data)
        self.echoed += 1


def _lcm_echoer(exchange: Exchange, conn: WorkerPipe) -> EchoerReport:
    import lcm

    bus = lcm.LCM(exchange.url)
    handler = _LCMEchoer(bus)
    subscription = bus.subscribe(PING, handler.handle)
    conn.send(READY)
    handle_timeout = bus.handle_timeout
    timeout = int(STOP_POLL * 1000)
    stopped = False
    while not handler.end_seen:
        if handle_timeout(timeout) <= 0 and (stopped := _stopped(conn)):
            break

    if not stopped:
        _expect(conn, STOP)

    bus.unsubscribe(subscription)
    return EchoerReport(handler.echoed, handler.end_seen)


_PINGERS: Final[dict[str, Body]] = {
    "raw-unix": _raw_pinger,
    "raw-seqpacket": _raw_pinger,
    "raw-udpm": _raw_pinger,
    "asyncio-raw": _asyncio_raw_pinger,
    "asyncbus": _bus_pinger,
    "pyzmq": _zmq_pinger,
    "lcm": _lcm_pinger,
}
_ECHOERS: Final[dict[str, Body]] = {
    "raw-unix": _raw_echoer,
    "raw-seqpacket": _raw_echoer,
    "raw-udpm": _raw_echoer,
    "asyncio-raw": _asyncio_raw_echoer,
    "asyncbus": _bus_echoer,
    "pyzmq": _zmq_echoer,
    "lcm": _lcm_echoer,
}
