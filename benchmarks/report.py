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
* ``kernel_drops``, ``gaps``, ``overflow_drops`` -- summed over subscribers. Raw
  subscribers read kernel drops from ``/proc/net/udp``; asyncbus's come from
  ``bus.statistics()``; raw has no gaps or overflow counters (``None``).

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
import sys
from typing import TYPE_CHECKING, Final

import asyncbus

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

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
]

# The rates, whose spread over the runs the JSON also reports (machines are noisy).
RATES: Final = ("send_rate", "subscriber_rate", "slowest_subscriber_rate", "total_rate")

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
    return {
        "send_rate": publisher.rate,
        "subscriber_rate": statistics.fmean(report.rate for report in subscribers),
        "slowest_subscriber_rate": min(report.rate for report in subscribers),
        "total_rate": intervals / span if span > 0 else 0.0,
        "loss": statistics.fmean(1 - report.received / sent for report in subscribers),
        "kernel_drops": float(sum(max(report.kernel_drops, 0) for report in subscribers)),
        "gaps": _summed(subscribers, "gaps"),
        "overflow_drops": _summed(subscribers, "overflow_drops"),
        "end_markers_missed": float(sum(not report.end_seen for report in subscribers)),
    }


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
        "implementation": case.implementation,
        "loop": case.loop,
        "fanout": case.fanout,
        "median": median_metrics(runs),
        "range": {
            name: [min(values), max(values)]
            for name in RATES
            if (values := [value for run in runs if (value := run_metrics(run)[name]) is not None])
        },
        "ratio_vs_raw": ratios,
        "runs": [
            {
                "group": run.group,
                "port": run.port,
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
    for name in per_run[0]:
        values = [value for metrics in per_run if (value := metrics[name]) is not None]
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
        "asyncbus": getattr(asyncbus, "__version__", None) or _version("asyncbus"),
        "load_average": list(os.getloadavg()),
        # What decides when the kernel drops datagrams on the way.
        "sysctl": {
            name: _read(f"/proc/sys/net/core/{name}")
            for name in ("rmem_default", "rmem_max", "netdev_max_backlog")
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
        "benchmark": "udpm-throughput",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": [sys.executable, "-m", "benchmarks", *sys.argv[1:]],
        "machine": dict(host),
        "settings": dict(settings),
        "cases": list(results),
    }


def markdown(cases: Sequence[tuple[Case, Metrics, Metrics | None]]) -> str:
    """Return the results table in GitHub markdown.

    :param cases: each case with its median metrics and its ratios to raw (or ``None``).
    :return: the table, one line per case.
    """
    lines = [
        "| case | loop | fan-out | sent msg/s | delivered msg/s per sub | delivered msg/s total "
        "| loss | kernel drops | gaps | vs raw (per sub) | vs raw (total) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for case, median, ratios in cases:
        ratios = ratios or {}
        cells = [
            case.implementation,
            case.loop or "-",
            f"1→{case.fanout}",
            _number(median["send_rate"]),
            _number(median["subscriber_rate"]),
            _number(median["total_rate"]),
            _percent(median["loss"]),
            _number(median["kernel_drops"]),
            _number(median["gaps"]),
            _times(ratios.get("subscriber_rate")),
            _times(ratios.get("total_rate")),
        ]
        lines.append("| " + " | ".join(cells) + " |")

    return "\n".join(lines)


def _summed(reports: Sequence[object], name: str) -> float | None:
    """Sum the asyncbus bus counter ``name`` over subscribers; ``None`` if none has it."""
    values = []
    for report in reports:
        bus = getattr(report, "counters", {}).get("bus")
        if isinstance(bus, dict) and isinstance(value := bus.get(name), int):
            values.append(value)

    return float(sum(values)) if values else None


def _ratio(value: float | None, baseline: float | None) -> float | None:
    return value / baseline if value is not None and baseline else None


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


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
