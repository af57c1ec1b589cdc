"""From reports to results: metrics per run, medians per case, ratios, JSON, markdown.

Metrics of one run (rates in messages per second):

* ``send_rate`` -- data messages the publisher sent, over its send time;
* ``subscriber_rate`` -- the mean over subscribers of what each received, from its
  first to its last message (the *delivered* rate: multicast is lossy, and a
  subscriber that cannot keep up shows here, not as a slower publisher);
* ``slowest_subscriber_rate`` -- the smallest of those;
* ``total_rate`` -- all messages every subscriber received, over the span from the
  first arrival anywhere to the last one anywhere (one host-wide clock);
* ``loss`` -- the mean over subscribers of ``1 - received / sent``;
* ``lost`` -- ``sent - received``, summed over subscribers (the peers scenario's loss:
  PUB/SUB and LCM drop without a counter);
* ``publisher_cpu_us``, ``subscriber_cpu_us`` -- CPU microseconds per message: the
  publisher's over its send loop, and the mean over subscribers of theirs from the
  first message to the end (``time.process_time``; steadier than rates when other
  processes compete for the CPU);
* ``kernel_drops``, ``gaps``, ``overflow_drops`` -- summed over subscribers. Raw
  subscribers read kernel drops from ``/proc/net/udp`` (AF_UNIX: always 0, the kernel
  makes the sender wait instead); asyncbus's come from ``bus.statistics()``; raw has
  no gaps or overflow counters (``None``);
* ``send_drops`` -- what the asyncbus publisher dropped for full peers by their
  policy (AF_UNIX buses; ``bus.statistics().send_drops`` when it stopped);
* ``unaccounted`` -- messages that vanished without a counter, summed over
  subscribers: a subscriber that stopped at an end marker with sequence number
  ``end_seq`` was sent (or had dropped for it) messages ``0 .. end_seq - 1`` on its
  link, and each of them must be received, a gap, or an overflow drop of its own
  subscription. Anything else is a silent loss (should be 0; ``None`` for raw).

For the slow-subscriber scenario (one fast and one slow subscriber, see
:mod:`benchmarks.bus`) each run also has ``fast_*`` and ``slow_*`` metrics: ``rate``,
``received``, ``lost`` (``sent - received``), ``gaps``, ``overflow_drops``;
``slow_last_seq``, the sequence number of the last data message the slow one
received (``drop_oldest`` keeps the newest messages, ``drop_newest`` does not); and
``drops_equal``, 1 when the publisher's ``send_drops`` equals the subscribers'
summed ``gaps`` (every drop the publisher made was seen), else 0.

Every subscriber of every scenario reads every byte of every payload (``zlib.crc32``)
and compares the checksum with the expected one, so every run also has
``mb_per_sub`` and ``mb_total`` (``subscriber_rate`` and ``total_rate`` times the
payload size, in MB/s, MB = 10**6 bytes), ``subscriber_gbps`` and ``total_gbps`` (the
same in GB/s, GB = 10**9 bytes; the large scenario's first units), ``corrupt``
(payloads whose checksum was not the expected one, summed over subscribers; ``None``
where not checked) and, for asyncbus, the publisher's ``segments_created`` and
``segments_reused`` over its send loop (0 below one frame's size). For the
large-payload scenario (:mod:`benchmarks.large`) there are also
``publisher_faults``, ``subscriber_faults``: minor page faults per message (the
publisher's over its send loop, the mean over subscribers of theirs from the first
message to the end; ``getrusage``).

A case's result is the median of each metric over its runs, each metric on its own,
with the smallest and largest value of each rate beside it.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypedDict

import asyncbus

from .large import size_label

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from .common import SubscriberReport
    from .runner import Case, CaseRun

__all__ = [
    "RATES",
    "RATIOS",
    "case_result",
    "document",
    "machine",
    "markdown",
    "median_metrics",
    "ratios",
    "run_metrics",
    "targets",
    "targets_markdown",
]

# The rates, whose spread over the runs the JSON also reports (machines are noisy).
RATES: Final = (
    "send_rate",
    "subscriber_rate",
    "slowest_subscriber_rate",
    "total_rate",
    "fast_rate",
    "slow_rate",
    "subscriber_gbps",
    "total_gbps",
    "mb_per_sub",
    "mb_total",
)

# The metrics compared with the raw baseline: asyncbus / raw, > 1 means asyncbus is faster.
RATIOS: Final = ("subscriber_rate", "total_rate", "send_rate")

Metrics = dict[str, float | None]


def run_metrics(run: CaseRun) -> Metrics:
    """Return the metrics of one run (see the module docstring).

    :param run: what the processes reported.
    :return: metric name to value.
    """
    publisher, subscribers = run.publisher, run.subscribers
    sent = publisher.sent
    heard = [report for report in subscribers if report.received]
    span = max((r.last for r in heard), default=0.0) - min((r.first for r in heard), default=0.0)
    intervals = sum(max(report.received - 1, 0) for report in subscribers)
    metrics: Metrics = {
        "send_rate": publisher.rate,
        "subscriber_rate": statistics.fmean(report.rate for report in subscribers),
        "slowest_subscriber_rate": min(report.rate for report in subscribers),
        "total_rate": intervals / span if span > 0 else 0.0,
        "loss": statistics.fmean(1 - report.received / sent for report in subscribers),
        "lost": float(sum(sent - report.received for report in subscribers)),
        "publisher_cpu_us": 1e6 * publisher.cpu / sent if publisher.cpu else None,
        "subscriber_cpu_us": _cpu_per_message(subscribers),
        "kernel_drops": float(sum(max(report.kernel_drops, 0) for report in subscribers)),
        "gaps": _summed(subscribers, "gaps"),
        "overflow_drops": _summed(subscribers, "overflow_drops"),
        "send_drops": _number_or_none(_bus_counter(publisher, "send_drops")),
        "unaccounted": _unaccounted(subscribers),
        "end_markers_missed": float(sum(not report.end_seen for report in subscribers)),
    }
    slow = [report for report in subscribers if report.slow]
    fast = [report for report in subscribers if not report.slow]
    if slow and fast:
        for role, reports in (("fast", fast), ("slow", slow)):
            metrics[f"{role}_rate"] = statistics.fmean(report.rate for report in reports)
            metrics[f"{role}_received"] = float(sum(report.received for report in reports))
            metrics[f"{role}_lost"] = float(sum(sent - report.received for report in reports))
            metrics[f"{role}_gaps"] = _summed(reports, "gaps")
            metrics[f"{role}_overflow_drops"] = _summed(reports, "overflow_drops")

        newest = max(report.last_seq for report in slow)
        metrics["slow_last_seq"] = float(newest) if newest >= 0 else None
        send_drops, gaps = metrics["send_drops"], metrics["gaps"]
        metrics["send_drops_after_data"] = _number_or_none(
            _bus_counter(publisher, "send_drops", "bus_after_data")
        )
        metrics["drops_equal"] = (
            None if send_drops is None or gaps is None else float(send_drops == gaps)
        )

    readers = [
        reader
        for report in subscribers
        if isinstance(reader := report.counters.get("reader"), dict)
    ]
    size: int = run.size or max((reader["size"] for reader in readers), default=0)
    if size:  # bytes per second: every subscriber read every byte
        for name, key in (("subscriber", "mb_per_sub"), ("total", "mb_total")):
            rate = metrics[f"{name}_rate"]
            metrics[key] = None if rate is None else rate * size / 1e6
            metrics[f"{name}_gbps"] = None if rate is None else rate * size / 1e9

    if readers:
        checked = all(reader["checked"] for reader in readers)
        corrupt = sum(reader["corrupt"] for reader in readers)
        metrics["corrupt"] = float(corrupt) if checked else None
        for name in ("segments_created", "segments_reused"):
            value = _bus_counter(publisher, name, "bus_after_data")
            metrics[name] = _number_or_none(value)

        faults = _bus_counter(publisher, "minor_faults", "process")
        metrics["publisher_faults"] = None if faults is None else faults / sent
        per_message = [
            faults / report.received
            for report in subscribers
            if report.received
            and (faults := _bus_counter(report, "minor_faults", "process")) is not None
        ]
        metrics["subscriber_faults"] = statistics.fmean(per_message) if per_message else None

    return metrics


def ratios(median: Metrics, baseline: Metrics) -> Metrics:
    """Return asyncbus / raw for each metric in :data:`RATIOS` (> 1: asyncbus is faster).

    :param median: the median metrics of an asyncbus case.
    :param baseline: the median metrics of the raw case with the same fan-out.
    :return: metric name to ratio (``None`` where the baseline is missing or zero).
    """
    return {name: _ratio(median[name], baseline[name]) for name in RATIOS}


def case_result(case: Case, runs: Sequence[CaseRun], ratios: Metrics | None) -> dict[str, object]:
    """Return the JSON object of one case: settings, median metrics, ratios, every run.

    :param case: the case.
    :param runs: its runs.
    :param ratios: its :func:`ratios` to the raw case (``None`` for a raw case).
    :return: a JSON-ready dict.
    """
    return {
        "id": case.id,
        "scenario": case.scenario,
        "implementation": case.implementation,
        "loop": case.loop,
        "fanout": case.fanout,
        "transport": case.transport,
        "policy": case.policy,
        "slow": case.slow,
        "size": case.size,
        "mode": case.mode,
        "median": median_metrics(runs),
        "range": {
            name: [min(values), max(values)]
            for name in RATES
            if (values := [v for run in runs if (v := run_metrics(run).get(name)) is not None])
        },
        "ratio_vs_raw": ratios,
        "runs": [
            {
                "url": run.url,
                "metrics": run_metrics(run),
                "publisher": dataclasses.asdict(run.publisher),
                "subscribers": [dataclasses.asdict(report) for report in run.subscribers],
            }
            for run in runs
        ],
    }


def median_metrics(runs: Sequence[CaseRun]) -> Metrics:
    """Return the median of each metric over ``runs``; ``None`` where no run has it.

    :param runs: at least one run.
    :return: metric name to median.
    """
    per_run = [run_metrics(run) for run in runs]
    median: Metrics = {}
    names = dict.fromkeys(name for metrics in per_run for name in metrics)
    for name in names:
        values = [value for metrics in per_run if (value := metrics.get(name)) is not None]
        median[name] = statistics.median(values) if values else None

    return median


def machine() -> dict[str, object]:
    """Return what the results depend on besides the code: CPUs, kernel, versions, sysctls."""
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "uvloop": _version("uvloop"),
        "pyzmq": _version("pyzmq"),  # the peers scenario
        "lcm": _version("lcm"),
        "asyncbus": getattr(asyncbus, "__version__", None) or _version("asyncbus"),
        "asyncbus_git": _git_revision(),
        "load_average": list(os.getloadavg()),
        # What decides when the kernel drops datagrams on the way (udpm), and how
        # much an AF_UNIX receiver holds before its sender waits.
        "sysctl": {
            name: _read(f"/proc/sys/net/{name.replace('.', '/')}")
            for name in (
                "core.rmem_default",
                "core.rmem_max",
                "core.wmem_default",
                "core.netdev_max_backlog",
                "unix.max_dgram_qlen",
            )
        },
    }


def document(
    settings: Mapping[str, object],
    host: Mapping[str, object],
    results: Sequence[Mapping[str, object]],
) -> dict[str, object]:
    """Return the whole JSON document.

    :param settings: how the benchmark ran (mode, messages, repeats, ...).
    :param host: :func:`machine` from the start of the run.
    :param results: :func:`case_result` for every case.
    :return: a JSON-ready dict.
    """
    return {
        "benchmark": "asyncbus-throughput",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": [sys.executable, "-m", "benchmarks", *sys.argv[1:]],
        "machine": dict(host),
        "settings": dict(settings),
        "cases": list(results),
    }


def markdown(cases: Sequence[tuple[Case, Sequence[CaseRun], Metrics | None]]) -> str:
    """Return the results in GitHub markdown: one table per transport family and scenario.

    :param cases: each case with its runs and its ratios to raw (or ``None``).
    :return: a heading and a table for each of udpm throughput, AF_UNIX throughput,
        slow subscribers, large payloads and peers that has cases.
    """
    large = [item for item in cases if item[0].scenario == "large"]
    peers = [item for item in cases if item[0].scenario == "peers"]
    slow = [item for item in cases if item[0].scenario == "slow"]
    cases = [item for item in cases if item[0].scenario == "throughput"]
    udpm = [item for item in cases if item[0].transport == "udpm"]
    unix = [item for item in cases if item[0].transport != "udpm"]
    sections = []
    if any(item[0].implementation == "asyncbus" for item in udpm):
        sections.append("### udpm throughput\n\n" + _udpm_table(udpm))

    if unix:
        sections.append("### AF_UNIX throughput\n\n" + _unix_table(unix))

    if slow:
        sections.append("### AF_UNIX, one fast and one slow subscriber\n\n" + _slow_table(slow))

    if large:
        sections.append(
            "### Large payloads, every byte read (MB = 10**6 bytes)\n\n" + _large_table(large)
        )

    if peers:
        sizes = {item[0].size for item in peers}
        raw = [item for item in udpm if item[0].implementation == "raw" and item[0].size in sizes]
        # Each size and fan-out together, its raw udpm baseline first.
        rows = sorted(raw + peers, key=lambda item: (item[0].size, item[0].fanout))
        sections.append("### Peers: pyzmq PUB/SUB and LCM\n\n" + _peers_table(rows))

    return "\n\n".join(sections)


Row: TypeAlias = "Callable[[Case, Sequence[CaseRun], Metrics, Metrics], list[str]]"


def _table(
    columns: str,
    align: str,
    cases: Sequence[tuple[Case, Sequence[CaseRun], Metrics | None]],
    row: Row,
) -> str:
    """Return a markdown table: a header, then ``row(case, runs, median, ratios)`` per case."""
    lines = [f"| {columns} |", align]
    for case, runs, ratios in cases:
        cells = row(case, runs, median_metrics(runs), ratios or {})
        lines.append("| " + " | ".join(cells) + " |")

    return "\n".join(lines)


def _rates(median: Metrics) -> list[str]:
    """Sent, delivered per subscriber (msg/s and MB/s) and delivered in total (msg/s)."""
    return [
        _number(median["send_rate"]),
        _number(median["subscriber_rate"]),
        _megabytes(median.get("mb_per_sub")),
        _number(median["total_rate"]),
    ]


# The rate columns of :func:`_rates`.
RATE_COLUMNS: Final = "sent msg/s | delivered msg/s per sub | MB/s per sub | delivered msg/s total"


def _versus(ratios: Metrics) -> list[str]:
    """The ratios to the baseline, per subscriber and in total."""
    return [_times(ratios.get("subscriber_rate")), _times(ratios.get("total_rate"))]


def _worst_loss(runs: Sequence[CaseRun]) -> str:
    return _percent(max(run_metrics(run)["loss"] or 0.0 for run in runs), digits=3)


def _udpm_table(cases: Sequence[tuple[Case, Sequence[CaseRun], Metrics | None]]) -> str:
    def row(case: Case, runs: Sequence[CaseRun], median: Metrics, ratios: Metrics) -> list[str]:
        return [
            case.implementation,
            case.loop or "-",
            _size(case.size),
            f"1→{case.fanout}",
            *_rates(median),
            _percent(median["loss"]),
            _number(median["kernel_drops"]),
            _number(median["gaps"]),
            *_versus(ratios),
        ]

    return _table(
        f"case | loop | size | fan-out | {RATE_COLUMNS} "
        "| loss | kernel drops | gaps | vs raw (per sub) | vs raw (total)",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        cases,
        row,
    )


def _unix_table(cases: Sequence[tuple[Case, Sequence[CaseRun], Metrics | None]]) -> str:
    def row(case: Case, runs: Sequence[CaseRun], median: Metrics, ratios: Metrics) -> list[str]:
        return [
            case.transport,
            case.implementation,
            case.loop or "-",
            _size(case.size),
            f"1→{case.fanout}",
            *_rates(median),
            _worst_loss(runs),
            _number(_largest(runs, "gaps")),
            _number(_largest(runs, "send_drops")),
            _number(_largest(runs, "unaccounted")),
            *_versus(ratios),
            _decimal(median["publisher_cpu_us"]),
            _decimal(median["subscriber_cpu_us"]),
        ]

    return _table(
        f"transport | case | loop | size | fan-out | {RATE_COLUMNS} "
        "| loss | gaps | send drops | unaccounted "
        "| vs raw (per sub) | vs raw (total) | CPU us/msg pub | CPU us/msg sub",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        cases,
        row,
    )


def _slow_table(cases: Sequence[tuple[Case, Sequence[CaseRun], Metrics | None]]) -> str:
    def row(case: Case, runs: Sequence[CaseRun], median: Metrics, ratios: Metrics) -> list[str]:
        equal = sum(run_metrics(run).get("drops_equal") == 1.0 for run in runs)
        return [
            case.transport,
            case.policy or "-",
            case.loop or "-",
            _size(case.size),
            _number(median["send_rate"]),
            f"{_number(median.get('fast_received'))} / {_number(median.get('fast_lost'))}",
            _number(median.get("fast_rate")),
            _megabytes(_per_second(median.get("fast_rate"), case.size)),
            f"{_number(median.get('slow_received'))} / {_number(median.get('slow_lost'))}",
            _number(median.get("slow_rate")),
            _megabytes(_per_second(median.get("slow_rate"), case.size)),
            _number(median.get("slow_last_seq")),
            _number(median.get("slow_gaps")),
            _number(median.get("slow_overflow_drops")),
            _number(median.get("send_drops")),
            f"{equal}/{len(runs)} runs",
            _number(_largest(runs, "unaccounted")),
        ]

    return _table(
        "transport | policy | loop | size | sent msg/s | fast: delivered / lost | fast msg/s "
        "| fast MB/s | slow: delivered / lost | slow msg/s | slow MB/s | slow: last seq "
        "| slow gaps | slow overflow drops | publisher send_drops | send_drops = gaps "
        "| unaccounted",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        cases,
        row,
    )


def _large_table(cases: Sequence[tuple[Case, Sequence[CaseRun], Metrics | None]]) -> str:
    def row(case: Case, runs: Sequence[CaseRun], median: Metrics, ratios: Metrics) -> list[str]:
        stream = case.transport == "stream"
        segments = "-"
        if case.implementation == "asyncbus":
            created, reused = median.get("segments_created"), median.get("segments_reused")
            segments = f"{_number(created)} / {_number(reused)}"

        if stream:
            system, mode = "stream (copy)", "sendall"
        else:
            system, mode = f"{case.implementation} {case.transport}", case.mode or "send"

        return [
            system,
            mode,
            case.loop or "-",
            _size(case.size),
            f"1→{case.fanout}",
            _decimal(median["subscriber_rate"]),
            _megabytes(median.get("mb_per_sub")),
            _megabytes(median.get("mb_total")),
            _worst_loss(runs),
            _number(_largest(runs, "corrupt")),
            *_versus(ratios),
            segments,
            _hundredths(_milli(median["publisher_cpu_us"])),
            _hundredths(_milli(median["subscriber_cpu_us"])),
            _number(median.get("publisher_faults")),
            _number(median.get("subscriber_faults")),
        ]

    return _table(
        "system | mode | loop | size | fan-out | msg/s per sub | MB/s per sub | MB/s total "
        "| loss | corrupt | vs stream (per sub) | vs stream (total) | segments new / reused "
        "| CPU ms/msg pub | CPU ms/msg sub | faults/msg pub | faults/msg sub",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        cases,
        row,
    )


def _peers_table(cases: Sequence[tuple[Case, Sequence[CaseRun], Metrics | None]]) -> str:
    def row(case: Case, runs: Sequence[CaseRun], median: Metrics, ratios: Metrics) -> list[str]:
        return [
            case.implementation,
            case.transport,
            case.loop or "-",
            _size(case.size),
            f"1→{case.fanout}",
            *_rates(median),
            _percent(median["loss"]),
            _number(_largest(runs, "lost")),
            *_versus(ratios),
            _decimal(median["publisher_cpu_us"]),
            _decimal(median["subscriber_cpu_us"]),
        ]

    return _table(
        f"system | transport | loop | size | fan-out | {RATE_COLUMNS} "
        "| loss | lost (most of any run) | vs raw udpm (per sub) "
        "| vs raw udpm (total) | CPU us/msg pub | CPU us/msg sub",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        cases,
        row,
    )


def _size(size: int | None) -> str:
    return "-" if size is None else size_label(size)


def _per_second(rate: float | None, size: int) -> float | None:
    """Megabytes (10**6 bytes) per second of ``rate`` messages of ``size`` bytes."""
    return None if rate is None else rate * size / 1e6


def _megabytes(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _milli(micro: float | None) -> float | None:
    return None if micro is None else micro / 1000


def _hundredths(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _largest(runs: Sequence[CaseRun], name: str) -> float | None:
    """The largest value of a counter over the runs: a loss in any run must show."""
    values = [value for run in runs if (value := run_metrics(run).get(name)) is not None]
    return max(values) if values else None


def _bus_counter(report: object, name: str, group: str = "bus") -> int | None:
    """Return the asyncbus counter ``name`` a worker reported, or ``None``."""
    counters = getattr(report, "counters", {}).get(group)
    if isinstance(counters, dict) and isinstance(value := counters.get(name), int):
        return value

    return None


def _cpu_per_message(reports: Sequence[SubscriberReport]) -> float | None:
    values = [1e6 * report.cpu / report.received for report in reports if report.cpu]
    return statistics.fmean(values) if values else None


def _number_or_none(value: int | None) -> float | None:
    return None if value is None else float(value)


def _unaccounted(reports: Sequence[SubscriberReport]) -> float | None:
    """Sum, over subscribers that saw an end marker, what vanished without a counter."""
    total, known = 0, False
    for report in reports:
        gaps = _bus_counter(report, "gaps")
        overflow = _bus_counter(report, "overflow_drops")
        if report.end_seq < 0 or gaps is None or overflow is None:
            continue

        known = True
        total += max(report.end_seq - report.received - gaps - overflow, 0)

    return float(total) if known else None


def _summed(reports: Sequence[object], name: str) -> float | None:
    """Sum the asyncbus bus counter ``name`` over subscribers; ``None`` if none has it."""
    values = [value for report in reports if (value := _bus_counter(report, name)) is not None]
    return float(sum(values)) if values else None


def _ratio(value: float | None, baseline: float | None) -> float | None:
    return value / baseline if value is not None and baseline else None


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _decimal(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _percent(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f} %"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_revision() -> dict[str, object] | None:
    """Return the commit of the asyncbus checkout measured, and whether it has edits."""
    package = os.path.dirname(os.path.abspath(asyncbus.__file__))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=package,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--", "."],
            cwd=package,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None  # not a git checkout, or no git

    return {"commit": commit, "asyncbus_modified": bool(changes.strip())}


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass  # not Linux

    return None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as file:
            return file.read().strip()
    except OSError:
        return None


# --- Targets -----------------------------------------------------------------------------
# The speed targets, each computed from the cases of one document (one run), as
# ratios of medians. The cases are found by what they are (implementation, transport,
# fan-out, payload size, scenario), not by id, so that documents with and without the
# "size" and "scenario" fields both work.

TARGET_PAYLOAD: Final = 64  # bytes: the small-message targets (T1-T4, T6)
TARGET_LARGE: Final = 1 << 20  # bytes: T5's payload, 1 MiB
TARGET_RATE: Final = 1_000_000.0  # msg/s: T2, delivered with zero loss
AF_UNIX: Final = ("unix", "seqpacket")
LATENCY_TRANSPORTS: Final = ("unix", "seqpacket", "udpm")
NOT_MEASURED: Final = "not measured"


class Target(TypedDict):
    """One check of one target, as :func:`targets` returns it.

    ``measured`` and ``required`` are ratios (T2: the rate over 1,000,000 msg/s);
    ``comparison`` says which way is good (``">="``; ``"<="`` for latency). ``met`` is
    ``None`` and ``status`` ``"not measured"`` when a case the check needs is absent.
    ``inputs`` are the numbers it came from: ``{"id", "metric", "value", "lost"}``.
    """

    target: str
    check: str
    measured: float | None
    required: float
    comparison: str
    met: bool | None
    status: str
    inputs: list[dict[str, object]]
    note: str


def targets(document: Mapping[str, Any]) -> list[Target]:
    """Return the issue's speed targets, computed from the cases of ``document``.

    T1: 64 B 1->1, the fastest lossless asyncbus AF_UNIX case (unix or seqpacket, any
    loop) >= 0.7x the raw AF_UNIX datagram loop and >= 5x zmq.asyncio (delivered per
    subscriber). T2: the same case delivers >= 1,000,000 msg/s with zero loss. T3: 64 B
    1->4, the fastest lossless asyncbus AF_UNIX case per subscriber >= the raw udpm loop.
    T4: asyncbus on udpm, each loop and fan-out, >= 0.9x the raw udpm loop. T5: 1 MiB,
    every byte read, the fastest lossless asyncbus large case >= 2x (1->1) and >= 3x
    (1->4) the SOCK_STREAM copy. T6: 64 B round trip p50 (``document["latency"]``),
    asyncbus <= 2x the raw loop on the same transport, met by the best loop.

    :param document: a JSON document of the benchmarks (:func:`document`).
    :return: one :class:`Target` per check, in target order.
    """
    cases: list[Mapping[str, Any]] = list(document.get("cases") or ())
    settings = document.get("settings") or {}
    default = settings.get("payload_size") or TARGET_PAYLOAD

    def find(implementation: str, transports: Sequence[str], fanout: int, **kwargs: Any) -> Cases:
        return _target_cases(cases, default, implementation, transports, fanout, **kwargs)

    fastest_1 = _fastest(find("asyncbus", AF_UNIX, 1))
    fastest_4 = _fastest(find("asyncbus", AF_UNIX, 4))
    result = [
        _rate_target(
            "T1",
            "fastest asyncbus AF_UNIX, 64 B 1→1, vs the raw AF_UNIX datagram loop",
            fastest_1,
            find("raw", ("unix",), 1),
            0.7,
        ),
        _rate_target(
            "T1",
            "fastest asyncbus AF_UNIX, 64 B 1→1, vs zmq.asyncio PUB/SUB over ipc://",
            fastest_1,
            find("pyzmq", ("ipc",), 1, loop="asyncio"),
            5.0,
        ),
        _rate_target(
            "T2",
            "fastest asyncbus AF_UNIX, 64 B 1→1, delivered msg/s / 1,000,000",
            fastest_1,
            [{"id": "required", "median": {"subscriber_rate": TARGET_RATE, "lost": 0.0}}],
            1.0,
        ),
        _rate_target(
            "T3",
            "fastest asyncbus AF_UNIX, 64 B 1→4, per subscriber, vs raw udpm multicast",
            fastest_4,
            find("raw", ("udpm",), 4),
            1.0,
        ),
    ]
    for fanout in (1, 4):
        raw = find("raw", ("udpm",), fanout)
        for loop in ("asyncio", "uvloop"):
            candidate = find("asyncbus", ("udpm",), fanout, loop=loop)
            check = f"asyncbus udpm {loop}, 64 B 1→{fanout}, vs the raw udpm loop"
            result.append(_rate_target("T4", check, candidate, raw, 0.9, lossless=False))

    for fanout, required in ((1, 2.0), (4, 3.0)):
        size, scenario = TARGET_LARGE, "large"
        fastest = _fastest(find("asyncbus", AF_UNIX, fanout, size=size, scenario=scenario))
        stream = find("raw", ("stream",), fanout, size=size, scenario=scenario)
        check = f"fastest asyncbus, 1 MiB 1→{fanout}, every byte read, vs the SOCK_STREAM copy"
        result.append(_rate_target("T5", check, fastest, stream, required))

    latency: Sequence[Mapping[str, Any]] | None = document.get("latency")
    for transport in LATENCY_TRANSPORTS:
        result.append(_latency_target(latency, transport))

    return result


def targets_markdown(document: Mapping[str, Any]) -> str:
    """Return :func:`targets` as a markdown heading and table.

    :param document: a JSON document of the benchmarks.
    :return: the table: target, check, measured and required ratio, status, and the
        numbers each came from.
    """
    lines = [
        "### Targets (ratios of medians, same run)",
        "",
        "| target | check | measured | required | status | from |",
        "|---|---|--:|--:|---|---|",
    ]
    for target in targets(document):
        sources = "; ".join(_source(item) for item in target["inputs"])
        if target["note"]:
            sources = f"{sources} ({target['note']})" if sources else target["note"]

        sign = "≥" if target["comparison"] == ">=" else "≤"
        cells = [
            target["target"],
            target["check"],
            _times(target["measured"]),
            f"{sign} {target['required']:.2f}x",
            target["status"],
            sources or "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")

    return "\n".join(lines)


Cases: TypeAlias = "list[Mapping[str, Any]]"


def case_scenario(case: Mapping[str, Any]) -> str:
    """Return a case's scenario, also for documents written before cases had one.

    :param case: a case object of a JSON document.
    :return: ``"throughput"``, ``"slow"``, ``"large"`` or ``"peers"``.
    """
    scenario = case.get("scenario")
    if isinstance(scenario, str):
        return scenario

    if case.get("slow"):
        return "slow"

    if case.get("implementation") in ("pyzmq", "lcm"):
        return "peers"

    # Before sizes came to every scenario, only the large cases had one.
    return "throughput" if case.get("size") is None else "large"


def case_size(case: Mapping[str, Any], default: int = TARGET_PAYLOAD) -> int:
    """Return a case's payload size in bytes (``default`` where the document has none).

    :param case: a case object of a JSON document.
    :param default: the document's ``settings.payload_size``.
    :return: bytes.
    """
    size = case.get("size")
    return size if isinstance(size, int) else default


def _target_cases(
    cases: Sequence[Mapping[str, Any]],
    default: int,
    implementation: str,
    transports: Sequence[str],
    fanout: int,
    size: int = TARGET_PAYLOAD,
    scenario: str | None = None,
    loop: str | None = None,
) -> Cases:
    """The cases of one kind; any scenario but slow and large unless ``scenario`` is given."""
    found = []
    for case in cases:
        kind = case_scenario(case)
        wanted = kind == scenario if scenario else kind not in ("slow", "large")
        if (
            wanted
            and case.get("implementation") == implementation
            and case.get("transport") in transports
            and case.get("fanout") == fanout
            and case_size(case, default) == size
            and (loop is None or case.get("loop") == loop)
        ):
            found.append(case)

    return found


def _worst_lost(case: Mapping[str, Any]) -> float | None:
    """The most messages any run of ``case`` lost (``sent - received``); ``None``: unknown."""
    runs = case.get("runs") or [{"metrics": case.get("median") or {}}]
    worst: float | None = None
    for run in runs:
        metrics = run.get("metrics") or {}
        lost = metrics.get("lost")
        if lost is None and metrics.get("loss") is not None:
            lost = 0.0 if metrics["loss"] == 0 else float("inf")  # a fraction: count unknown

        if lost is None:
            return None

        worst = lost if worst is None else max(worst, lost)

    return worst


def _fastest(cases: Cases) -> Cases:
    """The case with the highest delivered rate per subscriber among those that lost nothing.

    When every case lost messages, the fastest of them (the check then fails).
    """
    rated = [case for case in cases if _case_rate(case) is not None]
    lossless = [case for case in rated if _worst_lost(case) == 0]
    pool = lossless or rated
    return [max(pool, key=lambda case: _case_rate(case) or 0.0)] if pool else []


def _case_rate(case: Mapping[str, Any]) -> float | None:
    rate = (case.get("median") or {}).get("subscriber_rate")
    return float(rate) if isinstance(rate, (int, float)) else None


def _rate_target(
    name: str,
    check: str,
    candidates: Cases,
    baselines: Cases,
    required: float,
    lossless: bool = True,
) -> Target:
    """Check ``candidate / baseline >= required`` on the delivered rate per subscriber."""
    inputs = [
        {
            "id": case.get("id"),
            "metric": "subscriber_rate",
            "value": _case_rate(case),
            "lost": _worst_lost(case),
        }
        for case in (*candidates[:1], *baselines[:1])
    ]
    target = Target(
        target=name,
        check=check,
        measured=None,
        required=required,
        comparison=">=",
        met=None,
        status=NOT_MEASURED,
        inputs=inputs,
        note="",
    )
    if not candidates or not baselines:
        target["note"] = "no " + " and no ".join(
            what
            for what, cases in (("candidate case", candidates), ("baseline case", baselines))
            if not cases
        )
        return target

    ratio = _ratio(_case_rate(candidates[0]), _case_rate(baselines[0]))
    if ratio is None:
        target["note"] = "no rate"
        return target

    lost = _worst_lost(candidates[0])
    target["measured"] = ratio
    target["met"] = ratio >= required and (not lossless or lost == 0)
    target["status"] = "met" if target["met"] else "not met"
    if lossless and lost != 0:
        target["note"] = "lost messages" if lost else "loss unknown"

    return target


def _latency_target(latency: Sequence[Mapping[str, Any]] | None, transport: str) -> Target:
    """T6 on one transport: the best asyncbus loop's round-trip p50 over the raw loop's."""
    check = f"asyncbus {transport}, 64 B round trip p50, best loop, vs the raw {transport} loop"
    target = Target(
        target="T6",
        check=check,
        measured=None,
        required=2.0,
        comparison="<=",
        met=None,
        status=NOT_MEASURED,
        inputs=[],
        note="",
    )
    if latency is None:
        target["note"] = "no latency measurements in this document"
        return target

    entries = [entry for entry in latency if entry.get("transport") == transport]
    raw = [entry for entry in entries if entry.get("system") == "raw"]
    ours = [entry for entry in entries if entry.get("system") == "asyncbus"]
    target["inputs"] = [
        {
            "id": entry.get("id"),
            "metric": "rtt_p50_us",
            "value": (entry.get("median") or {}).get("rtt_p50_us"),
        }
        for entry in (*raw[:1], *ours)
    ]
    if not raw or not ours:
        target["note"] = "no raw case" if not raw else "no asyncbus case"
        return target

    baseline = (raw[0].get("median") or {}).get("rtt_p50_us")
    loops = {
        entry.get("loop") or "-": ratio
        for entry in ours
        if (ratio := _ratio((entry.get("median") or {}).get("rtt_p50_us"), baseline)) is not None
    }
    if not loops:
        target["note"] = "no p50"
        return target

    best = min(loops, key=loops.__getitem__)
    target["measured"] = loops[best]
    target["met"] = loops[best] <= target["required"]
    target["status"] = "met" if target["met"] else "not met"
    target["note"] = f"best loop {best}; " + ", ".join(
        f"{loop} {ratio:.2f}x" for loop, ratio in loops.items()
    )
    return target


def _source(item: Mapping[str, object]) -> str:
    """``case-id 123,456 msg/s`` (and ``lost N`` when it lost messages)."""
    value = item.get("value")
    number = value if isinstance(value, (int, float)) else None
    unit = "us" if item.get("metric") == "rtt_p50_us" else "msg/s"
    text = f"{item.get('id')} {_decimal(number) if unit == 'us' else _number(number)} {unit}"
    lost = item.get("lost")
    if isinstance(lost, (int, float)) and lost:
        text += f", lost {_number(lost)}" if lost != float("inf") else ", lost some"

    return text
