"""The command line: ``python -m benchmarks [--quick|--full] [--json PATH]``.

Runs every case (raw sockets, asyncbus on asyncio, asyncbus on uvloop; fan-out 1
and 4) ``repeats`` times, interleaved so that a noisy moment on a shared machine
hits every case a little rather than one case a lot, then prints a markdown table
to stdout and writes the JSON document. Progress goes to stderr.

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
from .runner import BenchmarkError, Case, CaseRun, private_endpoint, run_case

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["CASES", "FULL", "QUICK", "Mode", "main"]

DEFAULT_JSON: Final = pathlib.Path(__file__).parent / "results" / "latest.json"
PAYLOAD_SIZE: Final = 64  # bytes: a small message, where per-message overhead dominates
FANOUTS: Final = (1, 4)
CASES: Final = tuple(
    Case(implementation, loop, fanout)
    for fanout in FANOUTS
    for implementation, loop in (("raw", None), ("asyncbus", "asyncio"), ("asyncbus", "uvloop"))
)


@dataclass(frozen=True)
class Mode:
    """How much to measure.

    :param name: ``"quick"`` or ``"full"``.
    :param messages: data messages per run.
    :param repeats: runs per case; the result is the median.
    :param idle_timeout: seconds of silence after which a subscriber gives up.
    """

    name: str
    messages: int
    repeats: int
    idle_timeout: float


QUICK: Final = Mode("quick", messages=20_000, repeats=2, idle_timeout=0.5)
FULL: Final = Mode("full", messages=200_000, repeats=5, idle_timeout=1.0)
START_TIMEOUT: Final = 10.0  # seconds a subscriber waits for the first message after GO


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks.

    :param argv: the arguments (default: ``sys.argv[1:]``).
    :return: the exit status.
    """
    args = _parser().parse_args(argv)
    mode = FULL if args.full else QUICK
    messages = args.messages or mode.messages
    repeats = args.repeats or mode.repeats
    settings: dict[str, object] = {
        "mode": mode.name,
        "messages": messages,
        "repeats": repeats,
        "payload_size": PAYLOAD_SIZE,
        "datagram_size": len(lc02_datagram(0, TOPIC, bytes(PAYLOAD_SIZE))),
        "topic": TOPIC,
        "transport": "udpm, loopback (ttl=0), private group and port per run",
        "processes": "spawn: 1 publisher + fan-out subscribers, each its own process",
        "idle_timeout": mode.idle_timeout,
        "start_timeout": START_TIMEOUT,
        "recv_buf_size": RECV_BUF_SIZE,
        "profiled": bool(args.profile),
        "statistic": "median over repeats",
    }
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    host = report.machine()
    rng = random.Random()
    runs: dict[Case, list[CaseRun]] = {case: [] for case in CASES}
    try:
        for repeat in range(repeats):
            for case in CASES:
                group, port = private_endpoint(rng)
                work = Workload(
                    group,
                    port,
                    messages,
                    PAYLOAD_SIZE,
                    mode.idle_timeout,
                    START_TIMEOUT,
                    loop=case.loop or "asyncio",
                    profile=str(args.profile) if args.profile else None,
                    case=case.id,
                )
                run = run_case(case, work)
                runs[case].append(run)
                _progress(repeat, repeats, case, run)
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1

    medians = {case: report.median_metrics(case_runs) for case, case_runs in runs.items()}
    ratios = {
        case: None
        if case.implementation == "raw"
        else report.ratios(medians[case], medians[case.baseline])
        for case in CASES
    }
    results = [report.case_result(case, runs[case], ratios[case]) for case in CASES]
    host["load_average_after"] = report.machine()["load_average"]
    path: pathlib.Path = args.json
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.document(settings, host, results), indent=2) + "\n")
    table = [(case, medians[case], ratios[case]) for case in CASES]
    print(report.markdown(table))
    print(f"\n{mode.name} mode: {messages:,} x {PAYLOAD_SIZE}-byte messages, median of {repeats}")
    print(f"JSON: {path}", file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="asyncbus udpm throughput against a raw-socket loop, one process each.",
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
        help="messages per run (overrides the mode)",
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
    print(
        f"[{repeat + 1}/{repeats}] {case.id:<24} sent {metrics['send_rate'] or 0:>12,.0f}/s"
        f"  delivered {metrics['subscriber_rate'] or 0:>12,.0f}/s per sub"
        f"  loss {100 * (metrics['loss'] or 0):5.1f} %",
        file=sys.stderr,
    )
