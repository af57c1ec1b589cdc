"""The command line: ``python -m benchmarks [--quick|--full] [--transport T] [--json PATH]``.

Runs every selected case ``repeats`` times, interleaved so that a noisy moment on a
shared machine hits every case a little rather than one case a lot, then prints
markdown tables to stdout and writes the JSON document. Progress goes to stderr.

* throughput, for each transport (``udpm``, ``unix``, ``seqpacket``) and payload size
  (64 B, 1 KiB, 16 KiB): raw sockets, asyncbus on asyncio, asyncbus on uvloop; fan-out
  1 and 4;
* slow subscriber, for each AF_UNIX transport and each overflow policy: asyncbus
  on asyncio, one fast and one slow subscriber;
* large payloads (1 MiB, 64 MiB; :mod:`benchmarks.large`), fan-out 1 and 4: a
  SOCK_STREAM copy baseline, then asyncbus on each AF_UNIX transport and loop in each
  publisher mode, and pyzmq PUB/SUB (sync and ``zmq.asyncio``);
* peers (:mod:`benchmarks.peers`), for each payload size of the throughput scenario,
  fan-out 1 and 4: pyzmq PUB/SUB over ``ipc://`` (sync and ``zmq.asyncio``) and LCM's
  binding over udpm, with the raw udpm loop as the baseline;
* latency (:mod:`benchmarks.latency`): 64-byte round trips (ping-pong, two
  processes) through raw sockets, asyncbus, pyzmq and LCM, with its own table and
  the JSON document's ``latency`` list.

Every subscriber of the throughput, slow, large and peers scenarios reads every byte
of every payload (``zlib.crc32``). Quick mode keeps the benchmark working (CI runs it);
it judges no number.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from . import large, latency, peers, report
from .common import (
    LOOPS,
    MAX_SIZE,
    MIN_SIZE,
    PAYLOAD_SIZE,
    READER_NAME,
    RECV_BUF_SIZE,
    SIZES,
    TOPIC,
    Workload,
    lc02_datagram,
)
from .runner import BenchmarkError, Case, CaseRun, private_endpoint, private_name, run_case

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

__all__ = ["CASES", "FULL", "QUICK", "Mode", "main", "select_cases"]

DEFAULT_JSON: Final = pathlib.Path(__file__).parent / "results" / "latest.json"
DEFAULT_PLOTS: Final = pathlib.Path(__file__).parent / "results" / "plots"
FANOUTS: Final = (1, 4)
TRANSPORTS: Final = ("udpm", "unix", "seqpacket")
SCENARIOS: Final = ("throughput", "slow", "large", "peers", "latency")
POLICIES: Final = ("drop_oldest", "drop_newest", "block")
# Throughput on the AF_UNIX buses: `block` subscriptions, the lossless back-pressure
# that matches the raw loops' blocking sends (any loss would still be counted).
THROUGHPUT_POLICY: Final = "block"
# The slow subscriber's work per message: time.sleep(100 us), which takes longer (the
# kernel's default timer slack is 50 us): measured 180-200 us a message in all, about
# 5,000 messages per second.
SLOW_WORK: Final = 100e-6
SLOW_LOOP: Final = "asyncio"
LARGE_POLICY: Final = "block"  # lossless, as the stream baseline's blocking sends


def select_cases(
    transports: Collection[str] = TRANSPORTS,
    scenarios: Collection[str] = SCENARIOS,
    policy: str = THROUGHPUT_POLICY,
    sizes: Collection[int] = large.SIZES,
    every: bool = True,
    message_sizes: Collection[int] = SIZES,
    every_size: bool = True,
) -> tuple[Case, ...]:
    """Return the cases to run, in table order.

    :param transports: which of :data:`TRANSPORTS`.
    :param scenarios: which of :data:`SCENARIOS` (``slow`` and ``large`` exist for
        AF_UNIX only; ``peers`` needs ``udpm``: its baseline is the raw udpm loop).
    :param policy: the subscriptions' overflow policy in the AF_UNIX throughput cases.
    :param sizes: the payload sizes of the large scenario.
    :param every: run each large-payload mode and pyzmq loop on every transport and
        loop (``False``, quick mode: on one each, rotating; 52 cases take 2 minutes on a
        busy 2-core machine, mostly starting processes).
    :param message_sizes: the payload sizes of the throughput and peers scenarios (the
        slow-subscriber scenario runs :data:`~benchmarks.common.PAYLOAD_SIZE` only).
    :param every_size: run every system at every size (``False``, quick mode: at sizes
        other than 64 bytes the raw loops and LCM, but one asyncbus loop and one pyzmq
        loop, rotating from one transport, size and fan-out to the next).
    :return: the cases.
    """
    cases: list[Case] = []
    sized = [
        (size_index + fanout_index, size, fanout)
        for size_index, size in enumerate(dict.fromkeys(message_sizes))
        for fanout_index, fanout in enumerate(FANOUTS)
    ]

    def rotate(systems: Sequence[str], size: int, turn: int) -> Sequence[str]:
        if every_size or size == PAYLOAD_SIZE:
            return systems

        return [systems[turn % len(systems)]]

    if "throughput" in scenarios:
        for index, transport in enumerate(TRANSPORTS):
            if transport not in transports:
                continue

            unix_policy = None if transport == "udpm" else policy
            for turn, size, fanout in sized:
                cases.append(Case("raw", None, fanout, transport, size=size))
                cases.extend(
                    Case("asyncbus", loop, fanout, transport, unix_policy, size=size)
                    for loop in rotate(LOOPS, size, index + turn)
                )

    if "slow" in scenarios:
        for transport in (t for t in TRANSPORTS if t in transports and t != "udpm"):
            cases.extend(
                Case("asyncbus", SLOW_LOOP, 2, transport, slow_policy, slow=True)
                for slow_policy in POLICIES
            )

    unix = [t for t in TRANSPORTS if t in transports and t != "udpm"]
    if "large" in scenarios and unix:
        systems = [(transport, loop) for transport in unix for loop in LOOPS]
        blocks = [(size, fanout) for size in sizes for fanout in FANOUTS]
        for block, (size, fanout) in enumerate(blocks):
            if every:
                chosen = [(t, mode, loop) for t in unix for mode in large.MODES for loop in LOOPS]
            else:
                # Each block runs every mode once, on the (transport, loop) that the next
                # block shifts by one: over the 4 default blocks every combination runs
                # once (16 cases, not 52).
                chosen = []
                for index, mode in enumerate(large.MODES):
                    transport, loop = systems[(block + index) % len(systems)]
                    chosen.append((transport, mode, loop))

            cases.append(Case("raw", None, fanout, "stream", size=size, large=True))
            cases.extend(
                Case(
                    "asyncbus",
                    loop,
                    fanout,
                    transport,
                    LARGE_POLICY,
                    size=size,
                    mode=mode,
                    large=True,
                )
                for transport, mode, loop in chosen
            )
            # pyzmq PUB/SUB; neither udpm nor LCM (see the README: fragments, loss).
            turn = block + block // len(FANOUTS)  # each fan-out on each loop once
            zmq_loops = peers.ZMQ_LOOPS if every else [peers.ZMQ_LOOPS[turn % 2]]
            cases.extend(
                Case("pyzmq", loop, fanout, "ipc", size=size, large=True) for loop in zmq_loops
            )

    if "peers" in scenarios and "udpm" in transports:
        for turn, size, fanout in sized:
            cases.append(Case("raw", None, fanout, "udpm", size=size))
            cases.extend(
                Case("pyzmq", loop, fanout, "ipc", size=size)
                for loop in rotate(peers.ZMQ_LOOPS, size, turn)
            )
            cases.append(Case("lcm", None, fanout, "udpm", size=size))

    return tuple(dict.fromkeys(cases))  # the raw udpm cases once, with throughput and peers


CASES: Final = select_cases()


@dataclass(frozen=True)
class Mode:
    """How much to measure.

    :param name: ``"quick"`` or ``"full"``.
    :param messages: data messages per throughput run.
    :param repeats: runs per case; the result is the median.
    :param idle_timeout: seconds of silence after which a subscriber gives up.
    :param slow_messages: data messages per slow-subscriber run (with ``block`` the
        slow subscriber sets the pace: about 200 us a message).
    :param large_bytes: payload bytes per large-scenario run: ``large_bytes // size``
        messages ...
    :param large_min_messages: ... but at least this many.
    :param large_repeats: runs per large-scenario case.
    :param sized_bytes: payload bytes per throughput or peers run: at sizes above
        64 bytes, ``messages`` or ``sized_bytes // size`` messages, whichever is fewer
        (but at least :data:`SIZED_MIN_MESSAGES`).
    :param sized_repeats: runs per throughput or peers case at sizes above 64 bytes.
    """

    name: str
    messages: int
    repeats: int
    idle_timeout: float
    slow_messages: int
    large_bytes: int
    large_min_messages: int
    large_repeats: int
    sized_bytes: int = 1 << 30
    sized_repeats: int = 5

    def sized_messages(self, size: int) -> int:
        """Return the message count of a throughput or peers run with ``size``-byte payloads.

        :param size: the payload size.
        :return: ``messages``, or fewer for payloads too large to send that many of.
        """
        return min(self.messages, max(SIZED_MIN_MESSAGES, self.sized_bytes // size))

    def large_messages(self, size: int, total: int | None = None) -> int:
        """Return the message count of a large-scenario run with ``size``-byte payloads.

        :param size: the payload size.
        :param total: payload bytes per run (default: ``large_bytes``).
        :return: ``total // size``, at least ``large_min_messages``.
        """
        return max(self.large_min_messages, (total or self.large_bytes) // size)


QUICK: Final = Mode(
    "quick",
    messages=20_000,
    repeats=1,  # a quick run keeps the suite working; its numbers judge nothing
    idle_timeout=0.5,
    slow_messages=3_000,
    large_bytes=50 << 20,  # 1 MiB x 50, 64 MiB x 3
    large_min_messages=3,
    large_repeats=1,
    # 1 KiB x 8,192, 16 KiB x 512, once, on a rotating subset (select_cases(every_size=
    # False)): about 20 s more on a 2-core machine.
    sized_bytes=8 << 20,
    sized_repeats=1,
)
FULL: Final = Mode(
    "full",
    messages=200_000,
    repeats=5,
    idle_timeout=1.0,
    slow_messages=20_000,
    # 1 MiB x 512, 64 MiB x 20 (more than the 16 that fill the default segment_memory,
    # so that segment reuse shows), median of 5: 52 cases, 176 processes per repeat;
    # 6 min 40 s on a 2-core machine with a load average of 3 to 4 (before pyzmq's 8).
    large_bytes=512 << 20,
    large_min_messages=20,
    large_repeats=5,
    # 1 KiB x 200,000, 16 KiB x 65,536 (1 GiB), median of 5.
    sized_bytes=1 << 30,
    sized_repeats=5,
)
# The fewest messages of a throughput or peers run, whatever sized_bytes says: enough
# for a rate.
SIZED_MIN_MESSAGES: Final = 100
START_TIMEOUT: Final = 10.0  # seconds a subscriber waits for the first message after GO


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks.

    :param argv: the arguments (default: ``sys.argv[1:]``).
    :return: the exit status.
    """
    args = _parser().parse_args(argv)
    mode = FULL if args.full else QUICK
    messages = args.messages or mode.messages
    slow_messages = args.slow_messages or min(messages, mode.slow_messages)
    repeats = args.repeats or mode.repeats
    large_repeats = args.repeats or mode.large_repeats
    transports = args.transport or TRANSPORTS
    scenarios = args.scenario or SCENARIOS
    sizes = tuple(dict.fromkeys(args.large_size or large.SIZES))
    large_messages = {size: mode.large_messages(size, args.large_bytes) for size in sizes}
    message_sizes = tuple(dict.fromkeys(args.size or SIZES))
    # --messages sets every size's count; otherwise large payloads get fewer.
    sized_messages = {size: args.messages or mode.sized_messages(size) for size in message_sizes}
    cases = select_cases(
        transports,
        scenarios,
        args.policy,
        sizes,
        every=mode is FULL,
        message_sizes=message_sizes,
        # Quick mode rotates the systems at 1 KiB and 16 KiB, unless --size asks.
        every_size=mode is FULL or bool(args.size),
    )
    latency_cases: tuple[latency.LatencyCase, ...] = ()
    if "latency" in scenarios:
        latency_cases, notes = latency.select(transports)
        for note in notes:
            print(note, file=sys.stderr)

    latency_plan = latency.plan(mode is FULL, args.rounds, args.repeats, args.placement)
    if not cases and not latency_cases:
        print(
            "no case selected: slow-subscriber and large cases exist for unix and seqpacket "
            "only, peers cases with udpm only",
            file=sys.stderr,
        )
        return 2

    missing = peers.missing_packages() if any(case.peer for case in cases) else []
    if "pyzmq" in missing and not any(case.scenario == "peers" for case in cases):
        # The large scenario runs without its pyzmq cases, as latency without its peers.
        print("large scenario: no pyzmq cases (pip install pyzmq)", file=sys.stderr)
        cases = tuple(case for case in cases if not case.peer)
    elif any(case.scenario == "peers" for case in cases) and missing:
        print(
            f"the peers scenario needs {' and '.join(missing)}: "
            f"pip install {' '.join(missing)}  (or: pip install -e '.[bench]')",
            file=sys.stderr,
        )
        return 2

    settings: dict[str, object] = {
        "mode": mode.name,
        "messages": messages,
        "slow_messages": slow_messages,
        "repeats": repeats,
        "payload_size": PAYLOAD_SIZE,
        "datagram_size": len(lc02_datagram(0, TOPIC, bytes(PAYLOAD_SIZE))),
        "sizes": list(message_sizes),
        "sized": {
            large.size_label(size): {
                "messages": count,
                "repeats": args.repeats or _repeats(mode, size),
                "datagram_size": len(lc02_datagram(0, TOPIC, bytes(size))),
            }
            for size, count in sized_messages.items()
        },
        "every_system_at_every_size": mode is FULL or bool(args.size),
        "reader": f"{READER_NAME} over every payload of every subscriber, compared with the "
        "expected checksum (raw loops: a memoryview after the LC02 header)",
        "mb": "10**6 bytes",
        "topic": TOPIC,
        "transports": {
            "udpm": "loopback (ttl=0), private group and port per run",
            "unix": "unix:@NAME (AF_UNIX SOCK_DGRAM, abstract), private name per run",
            "seqpacket": "seqpacket:@NAME (AF_UNIX SOCK_SEQPACKET, abstract), private name",
        },
        "selected_transports": list(transports),
        "scenarios": list(scenarios),
        "processes": "spawn: 1 publisher + fan-out subscribers, each its own process",
        "idle_timeout": mode.idle_timeout,
        "start_timeout": START_TIMEOUT,
        "recv_buf_size": RECV_BUF_SIZE,
        "udpm_policy": "drop_oldest (default)",
        "unix_throughput_policy": args.policy,
        "slow_policies": list(POLICIES),
        "slow_work_seconds": SLOW_WORK,
        "slow_loop": SLOW_LOOP,
        "subscription_maxsize": "1024 (default)",
        "unix_options": "defaults: peer_queue=1024, stall_timeout=5, join_timeout=1",
        "profiled": bool(args.profile),
        "statistic": "median over repeats",
    }
    if any(case.large for case in cases):
        settings["large"] = {
            "messages": {large.size_label(size): count for size, count in large_messages.items()},
            "repeats": large_repeats,
            "modes": {
                "publish": "await topic.publish(bytes): one copy into a shared segment",
                "loan_copy": "bus.loan(size); loan.data[:] = payload; publish(loan): one copy",
                "loan_header": "bus.loan(size); 8-byte header only; publish(loan): no copy",
            },
            "stream": "AF_UNIX SOCK_STREAM per subscriber, blocking, 8-byte length prefix, "
            f"sendall of {large.size_label(large.STREAM_CHUNK)} pieces to each in turn, "
            "recv_into a preallocated buffer",
            "reader": f"{large.READER_NAME} over every payload, checked against the expected "
            "checksum (except loan_header)",
            "calibration": large.calibrate(sizes),
            "policy": LARGE_POLICY,
            "idle_timeout": large.IDLE_TIMEOUT,
            "bus_options": "defaults: segment_memory=1 GiB, segment_cache=256 MiB",
            "pyzmq": "PUB/SUB over ipc:// as in the peers scenario, SNDHWM = RCVHWM = "
            f"max(2, min({peers.HWM}, {peers.HWM_BYTES >> 30} GiB // size)) messages, "
            f"recv(copy=False) from {peers.COPY_THRESHOLD:,} bytes",
            "gb": "10**9 bytes",
        }

    if any(case.peer for case in cases):
        settings["peers"] = {
            "pyzmq": "PUB bound to ipc://TMPDIR/<run name>/pub, one SUB per subscriber, "
            "one frame per message; loops: sync (blocking sockets), asyncio (zmq.asyncio)",
            "zmq_hwm": f"SNDHWM = RCVHWM = {peers.HWM} messages, at most "
            f"{peers.HWM_BYTES >> 30} GiB // size (PUB drops silently beyond)",
            "zmq_slow_joiner": "publisher sends a 5-byte probe every 1 ms until GO; "
            "a subscriber says READY once a probe arrived",
            "lcm": "lcm.LCM(udpm://GROUP:PORT?ttl=0&recv_buf_size=N), private group and port "
            "per run; publish() in a loop, handle_timeout() in a loop",
            "baseline": "raw udpm loop of the same size and fan-out",
            "loss": "sent - received (neither peer counts its drops)",
        }

    if latency_cases:
        settings["latency"] = latency.settings(latency_plan)

    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    host = report.machine()
    rng = random.Random()
    runs: dict[Case, list[CaseRun]] = {case: [] for case in cases}
    case_repeats = {
        case: args.repeats or (mode.large_repeats if case.large else _repeats(mode, case.size))
        for case in cases
    }
    try:
        for repeat in range(max(case_repeats.values(), default=0)):
            for case in cases:
                if repeat >= case_repeats[case]:
                    continue

                if case.large:
                    count = large_messages[case.size]
                else:
                    count = sized_messages.get(case.size, messages)

                work = _workload(case, rng, count, slow_messages, mode, args.profile)
                run = run_case(case, work)
                runs[case].append(run)
                _progress(repeat, case_repeats[case], case, run)

        latency_results = latency.run(latency_cases, latency_plan, rng)
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1

    medians = {case: report.median_metrics(case_runs) for case, case_runs in runs.items()}
    ratios = {
        case: report.ratios(medians[case], medians[case.baseline])
        if case.implementation != "raw" and not case.slow and case.baseline in medians
        else None
        for case in cases
    }
    results = [report.case_result(case, runs[case], ratios[case]) for case in cases]
    host["load_average_after"] = report.machine()["load_average"]
    path: pathlib.Path = args.json
    path.parent.mkdir(parents=True, exist_ok=True)
    document = report.document(settings, host, results)
    if latency_cases:
        document["latency"] = latency_results

    path.write_text(json.dumps(document, indent=2) + "\n")
    if cases:
        print(report.markdown([(case, runs[case], ratios[case]) for case in cases]))
        print()

    if latency_cases:
        print(latency.markdown(latency_results, latency_plan))
        print()

    if any(not case.large for case in cases):
        counts = ", ".join(
            f"{large.size_label(size)} x {count:,}"
            f" (median of {args.repeats or _repeats(mode, size)})"
            for size, count in sized_messages.items()
        )
        print(
            f"{mode.name} mode: {counts} messages ({slow_messages:,} of 64 B with a slow "
            f"subscriber, median of {repeats}); MB = 10**6 bytes"
        )

    if any(case.large for case in cases):
        counts = ", ".join(
            f"{large.size_label(size)} x {count:,}" for size, count in large_messages.items()
        )
        print(
            f"{mode.name} mode, large payloads: {counts}, median of {large_repeats}; "
            "MB = 10**6 bytes"
        )

    print(report.targets_markdown(document))
    if not args.no_plots:
        _write_plots(document, args.plots)

    print(f"JSON: {path}", file=sys.stderr)
    return 0


def _repeats(mode: Mode, size: int) -> int:
    """Runs per throughput, slow or peers case of ``size``-byte payloads in ``mode``."""
    return mode.repeats if size == PAYLOAD_SIZE else mode.sized_repeats


def _write_plots(document: dict[str, object], directory: pathlib.Path) -> None:
    """Draw the PNG plots of ``document`` into ``directory``; say so on stderr."""
    try:
        # Imported here, not at the top: every worker process imports this module
        # (spawn), and none of them needs matplotlib.
        from .plots import write_plots
    except ImportError as exc:
        print(
            f"no plots: {exc} (pip install matplotlib, or pip install -e '.[bench]'; "
            "--no-plots to skip them)",
            file=sys.stderr,
        )
        return

    for plot in write_plots(document, directory):
        print(f"plot: {plot}", file=sys.stderr)


def _workload(
    case: Case,
    rng: random.Random,
    messages: int,
    slow_messages: int,
    mode: Mode,
    profile: pathlib.Path | None,
) -> Workload:
    """Return the workload of one run of ``case``, on an endpoint of its own."""
    group, port = private_endpoint(rng) if case.transport == "udpm" else ("", 0)
    work = Workload(
        group,
        port,
        slow_messages if case.slow else messages,
        case.size,
        large.IDLE_TIMEOUT if case.large else mode.idle_timeout,
        START_TIMEOUT,
        loop=case.loop or "asyncio",
        profile=str(profile) if profile else None,
        case=case.id,
        transport=case.transport,
        name=private_name(rng),
        fanout=case.fanout,
        policy=case.policy or "drop_oldest",
        slow_work=SLOW_WORK if case.slow else 0.0,
    )
    return large.workload(work, case.mode) if case.large else work


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "asyncbus throughput (udpm, unix, seqpacket) against raw-socket loops, and "
            "slow subscribers on the AF_UNIX buses; one process per member."
        ),
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK.messages:,} messages, {QUICK.repeats} repeats (the default)",
    )
    size.add_argument(
        "--full",
        action="store_true",
        help=f"{FULL.messages:,} messages, {FULL.repeats} repeats",
    )
    parser.add_argument(
        "--messages",
        type=_at_least(2),
        metavar="N",
        help="messages per throughput run (overrides the mode)",
    )
    parser.add_argument(
        "--slow-messages",
        type=_at_least(2),
        metavar="N",
        help=(
            f"messages per slow-subscriber run (default: {QUICK.slow_messages:,} quick, "
            f"{FULL.slow_messages:,} full, at most --messages)"
        ),
    )
    parser.add_argument(
        "--transport",
        action="append",
        choices=TRANSPORTS,
        help="run this transport's cases; repeat for several (default: all)",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        help="run this scenario's cases; repeat for several (default: all)",
    )
    parser.add_argument(
        "--policy",
        choices=POLICIES,
        default=THROUGHPUT_POLICY,
        help=(
            "overflow policy of the subscriptions in the AF_UNIX throughput cases "
            f"(default: {THROUGHPUT_POLICY})"
        ),
    )
    parser.add_argument(
        "--size",
        action="append",
        type=_message_size,
        metavar="BYTES",
        help=(
            "payload size of the throughput and peers scenarios (suffix K: KiB), at most "
            f"{MAX_SIZE:,} (one datagram); repeat for several; every system runs at each "
            "(default: 64, 1K and 16K; quick mode runs a rotating subset above 64)"
        ),
    )
    parser.add_argument(
        "--large-size",
        action="append",
        type=_size,
        metavar="BYTES",
        help=(
            "payload size of the large scenario (suffixes K, M, G: KiB, MiB, GiB); repeat "
            "for several (default: 1M and 64M)"
        ),
    )
    parser.add_argument(
        "--large-bytes",
        type=_size,
        metavar="BYTES",
        help=(
            "payload bytes per large-scenario run and subscriber: BYTES // size messages, "
            f"at least {QUICK.large_min_messages} quick, {FULL.large_min_messages} full "
            "(default: "
            + "; ".join(
                f"{mode.name} "
                + ", ".join(
                    f"{large.size_label(size)} x {mode.large_messages(size)}"
                    for size in large.SIZES
                )
                for mode in (QUICK, FULL)
            )
            + ")"
        ),
    )
    parser.add_argument(
        "--rounds",
        type=_at_least(1),
        metavar="N",
        help=(
            f"timed round trips per latency run (default: {latency.QUICK.rounds:,} quick, "
            f"{latency.FULL.rounds:,} full)"
        ),
    )
    parser.add_argument(
        "--placement",
        choices=latency.PLACEMENTS,
        default="split",
        help=(
            "where the latency scenario's two processes run: split (each pinned to its "
            "own CPU, the default), same (both on one CPU), none (not pinned)"
        ),
    )
    parser.add_argument(
        "--repeats",
        type=_at_least(1),
        metavar="R",
        help="runs per case (overrides the mode)",
    )
    parser.add_argument(
        "--json",
        type=pathlib.Path,
        default=DEFAULT_JSON,
        metavar="PATH",
        help="where to write the results (default: benchmarks/results/latest.json)",
    )
    parser.add_argument(
        "--plots",
        type=pathlib.Path,
        default=DEFAULT_PLOTS,
        metavar="DIR",
        help=(
            "where to draw the PNG plots (default: benchmarks/results/plots/); "
            "python -m benchmarks.plots JSON DIR redraws them from a JSON document"
        ),
    )
    parser.add_argument(
        "--no-plots",
        action="store_true",
        help="draw no plots (matplotlib is then not needed)",
    )
    parser.add_argument(
        "--profile",
        type=pathlib.Path,
        metavar="DIR",
        help="run every worker under cProfile and write its statistics to DIR",
    )
    return parser


def _size(text: str) -> int:
    """Parse ``1048576``, ``512K``, ``1M`` or ``2G`` (binary units) as a positive byte count."""
    shift = {"K": 10, "M": 20, "G": 30}.get(text[-1:].upper(), 0)
    try:
        value = int(text[:-1] if shift else text) << shift
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1048576, 64M)") from None

    if value < MIN_SIZE:
        # Data is told from the 3-byte end marker and the 5-byte probe by its length.
        raise argparse.ArgumentTypeError(f"a size is at least {MIN_SIZE} bytes, not {text}")

    return value


def _message_size(text: str) -> int:
    """Parse a payload size of the throughput and peers scenarios (one datagram)."""
    value = _size(text)
    if not MIN_SIZE <= value <= MAX_SIZE:
        raise argparse.ArgumentTypeError(
            f"--size is {MIN_SIZE} to {MAX_SIZE:,} bytes (one LCM datagram), not {value:,}; "
            "larger payloads: --scenario large --large-size"
        )

    return value


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")

        return value

    return parse


def _progress(repeat: int, repeats: int, case: Case, run: CaseRun) -> None:
    metrics = report.run_metrics(run)
    line = f"[{repeat + 1}/{repeats}] {case.id:<40} sent {metrics['send_rate'] or 0:>10,.0f}/s"
    if case.large:
        line += (
            f"  delivered {metrics.get('mb_per_sub') or 0:>8,.0f} MB/s per sub"
            f" {metrics.get('mb_total') or 0:>8,.0f} total"
            f"  loss {100 * (metrics['loss'] or 0):5.1f} %"
        )
    elif case.slow:
        line += (
            f"  fast {metrics.get('fast_rate') or 0:>10,.0f}/s"
            f"  slow {metrics.get('slow_rate') or 0:>8,.0f}/s"
            f"  send_drops {metrics['send_drops'] or 0:>7,.0f}"
            f"  gaps {metrics['gaps'] or 0:>7,.0f}"
        )
    else:
        line += (
            f"  delivered {metrics['subscriber_rate'] or 0:>10,.0f}/s per sub"
            f" {metrics.get('mb_per_sub') or 0:>7,.1f} MB/s"
            f"  loss {100 * (metrics['loss'] or 0):5.1f} %"
        )

    print(line, file=sys.stderr)
