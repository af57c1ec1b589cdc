"""The command line: ``python -m benchmarks [--quick|--full] [--transport T] [--json PATH]``.

Runs every selected case ``repeats`` times, interleaved so that a noisy moment on a
shared machine hits every case a little rather than one case a lot, then prints
markdown tables to stdout and writes the JSON document. Progress goes to stderr.

* throughput, for each transport (``udpm``, ``unix``, ``seqpacket``): raw sockets,
  asyncbus on asyncio, asyncbus on uvloop; fan-out 1 and 4;
* slow subscriber, for each AF_UNIX transport and each overflow policy: asyncbus
  on asyncio, one fast and one slow subscriber.

Quick mode keeps the benchmark working (CI runs it); it judges no number.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from . import report
from .common import RECV_BUF_SIZE, TOPIC, Workload, lc02_datagram
from .runner import BenchmarkError, Case, CaseRun, private_endpoint, private_name, run_case

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

__all__ = ["CASES", "FULL", "QUICK", "Mode", "main", "select_cases"]

DEFAULT_JSON: Final = pathlib.Path(__file__).parent / "results" / "latest.json"
PAYLOAD_SIZE: Final = 64  # bytes: a small message, where per-message overhead dominates
FANOUTS: Final = (1, 4)
TRANSPORTS: Final = ("udpm", "unix", "seqpacket")
SCENARIOS: Final = ("throughput", "slow")
POLICIES: Final = ("drop_oldest", "drop_newest", "block")
# Throughput on the AF_UNIX buses: `block` subscriptions, the lossless back-pressure
# that matches the raw loops' blocking sends (any loss would still be counted).
THROUGHPUT_POLICY: Final = "block"
# The slow subscriber's work per message: time.sleep(100 us), which takes longer (the
# kernel's default timer slack is 50 us): measured 180-200 us a message in all, about
# 5,000 messages per second.
SLOW_WORK: Final = 100e-6
SLOW_LOOP: Final = "asyncio"


def select_cases(
    transports: Collection[str] = TRANSPORTS,
    scenarios: Collection[str] = SCENARIOS,
    policy: str = THROUGHPUT_POLICY,
) -> tuple[Case, ...]:
    """Return the cases to run, in table order.

    :param transports: which of :data:`TRANSPORTS`.
    :param scenarios: which of :data:`SCENARIOS` (``slow`` exists for AF_UNIX only).
    :param policy: the subscriptions' overflow policy in the AF_UNIX throughput cases.
    :return: the cases.
    """
    cases: list[Case] = []
    if "throughput" in scenarios:
        for transport in (t for t in TRANSPORTS if t in transports):
            unix_policy = None if transport == "udpm" else policy
            for fanout in FANOUTS:
                cases.append(Case("raw", None, fanout, transport))
                cases.extend(
                    Case("asyncbus", loop, fanout, transport, unix_policy)
                    for loop in ("asyncio", "uvloop")
                )

    if "slow" in scenarios:
        for transport in (t for t in TRANSPORTS if t in transports and t != "udpm"):
            cases.extend(
                Case("asyncbus", SLOW_LOOP, 2, transport, slow_policy, slow=True)
                for slow_policy in POLICIES
            )

    return tuple(cases)


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
    """

    name: str
    messages: int
    repeats: int
    idle_timeout: float
    slow_messages: int


QUICK: Final = Mode("quick", messages=20_000, repeats=2, idle_timeout=0.5, slow_messages=3_000)
FULL: Final = Mode("full", messages=200_000, repeats=5, idle_timeout=1.0, slow_messages=20_000)
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
    transports = args.transport or TRANSPORTS
    scenarios = args.scenario or SCENARIOS
    cases = select_cases(transports, scenarios, args.policy)
    if not cases:
        print(
            "no case selected: slow-subscriber cases exist for unix and seqpacket only",
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
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    host = report.machine()
    rng = random.Random()
    runs: dict[Case, list[CaseRun]] = {case: [] for case in cases}
    try:
        for repeat in range(repeats):
            for case in cases:
                work = _workload(case, rng, messages, slow_messages, mode, args.profile)
                run = run_case(case, work)
                runs[case].append(run)
                _progress(repeat, repeats, case, run)
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
    path.write_text(json.dumps(report.document(settings, host, results), indent=2) + "\n")
    print(report.markdown([(case, runs[case], ratios[case]) for case in cases]))
    print(
        f"\n{mode.name} mode: {messages:,} x {PAYLOAD_SIZE}-byte messages"
        f" ({slow_messages:,} with a slow subscriber), median of {repeats}"
    )
    print(f"JSON: {path}", file=sys.stderr)
    return 0


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
    return Workload(
        group,
        port,
        slow_messages if case.slow else messages,
        PAYLOAD_SIZE,
        mode.idle_timeout,
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
        "--profile",
        type=pathlib.Path,
        metavar="DIR",
        help="run every worker under cProfile and write its statistics to DIR",
    )
    return parser


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
    if case.slow:
        line += (
            f"  fast {metrics.get('fast_rate') or 0:>10,.0f}/s"
            f"  slow {metrics.get('slow_rate') or 0:>8,.0f}/s"
            f"  send_drops {metrics['send_drops'] or 0:>7,.0f}"
            f"  gaps {metrics['gaps'] or 0:>7,.0f}"
        )
    else:
        line += (
            f"  delivered {metrics['subscriber_rate'] or 0:>10,.0f}/s per sub"
            f"  loss {100 * (metrics['loss'] or 0):5.1f} %"
        )

    print(line, file=sys.stderr)
