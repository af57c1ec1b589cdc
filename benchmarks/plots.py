"""PNG plots of a benchmark JSON document: throughput, large payloads, latency, targets.

``python -m benchmarks`` draws them after a run (``--plots DIR``, ``--no-plots``); to
redraw from a document written earlier, without running anything::

    python -m benchmarks.plots benchmarks/results/latest.json /tmp/plots

Each plot is drawn only when the document has its cases, so a run of one scenario
gives the plots of that scenario:

* ``throughput.png`` and ``throughput_mb.png``: delivered messages (MB) per second
  per subscriber by payload size, one line per system (raw loops, asyncbus on each
  transport and loop, pyzmq, LCM), one panel per fan-out;
* ``large.png``: GB/s per subscriber of every large-payload case, one panel per size
  and fan-out, the SOCK_STREAM copy marked;
* ``latency.png``: round-trip p50 and p99 per system (``document["latency"]``);
* ``targets.png``: each target's measured ratio against the required one
  (:func:`benchmarks.report.targets`).

matplotlib draws on its Agg canvas (no display, no pyplot state).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .large import size_label
from .report import case_scenario, case_size, targets

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

__all__ = ["main", "write_plots"]

DPI: Final = 120
# The throughput systems in legend order; raw loops dashed, so the baselines stand out.
SYSTEM_ORDER: Final = (
    "raw udpm",
    "raw unix",
    "raw seqpacket",
    "asyncbus udpm asyncio",
    "asyncbus udpm uvloop",
    "asyncbus unix asyncio",
    "asyncbus unix uvloop",
    "asyncbus seqpacket asyncio",
    "asyncbus seqpacket uvloop",
    "pyzmq ipc sync",
    "pyzmq ipc asyncio",
    "lcm udpm",
)
STREAM: Final = "stream (SOCK_STREAM copy)"
MET_COLOURS: Final = {"met": "tab:green", "not met": "tab:red"}

Case = dict[str, Any]  # a case object of the JSON document (decoded JSON)


def write_plots(document: Mapping[str, Any], directory: Path) -> list[Path]:
    """Draw every plot the document has data for, one PNG each, into ``directory``.

    :param document: a JSON document of the benchmarks (``python -m benchmarks --json``).
    :param directory: where the PNG files go (created if missing; files replaced).
    :return: the files written, in the order of the module docstring.
    """
    plots: list[tuple[str, Callable[[Mapping[str, Any]], Figure | None]]] = [
        ("throughput", _throughput_messages),
        ("throughput_mb", _throughput_bytes),
        ("large", _large),
        ("latency", _latency),
        ("targets", _targets),
    ]
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in plots:
        figure = draw(document)
        if figure is None:
            continue

        path = directory / f"{name}.png"
        FigureCanvasAgg(figure)  # attaches itself: Agg, whatever the default backend
        figure.savefig(path, format="png")
        written.append(path)

    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Redraw the plots of a JSON document written earlier.

    :param argv: ``JSON OUTDIR`` (default: ``sys.argv[1:]``).
    :return: the exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.plots",
        description="Draw the PNG plots of a benchmark JSON document (no benchmark runs).",
    )
    parser.add_argument("json", type=Path, help="a document of python -m benchmarks --json")
    parser.add_argument("directory", type=Path, help="where the PNG files go")
    args = parser.parse_args(argv)
    try:
        document = json.loads(args.json.read_text())
    except (OSError, ValueError) as exc:
        print(f"cannot read {args.json}: {exc}", file=sys.stderr)
        return 2

    for path in write_plots(document, args.directory):
        print(path)

    return 0


# --- throughput ---------------------------------------------------------------------------


def _throughput_messages(document: Mapping[str, Any]) -> Figure | None:
    return _throughput(
        document,
        lambda case, size: _median(case, "subscriber_rate"),
        "delivered msg/s per subscriber",
        "Delivered messages per second per subscriber",
    )


def _throughput_bytes(document: Mapping[str, Any]) -> Figure | None:
    def megabytes(case: Case, size: int) -> float | None:
        value = _median(case, "mb_per_sub")
        rate = _median(case, "subscriber_rate")
        # Documents written before "mb_per_sub" existed: the rate times the payload.
        return value if value is not None or rate is None else rate * size / 1e6

    return _throughput(
        document,
        megabytes,
        "delivered MB/s per subscriber (MB = 10⁶ bytes of payload)",
        "Delivered payload bytes per second per subscriber",
    )


def _throughput(
    document: Mapping[str, Any],
    value: Callable[[Case, int], float | None],
    ylabel: str,
    title: str,
) -> Figure | None:
    """One panel per fan-out: a line per system through its value at each payload size."""
    default = _payload_size(document)
    points: dict[int, dict[str, dict[int, float]]] = {}  # fan-out -> system -> size -> value
    for case in _cases(document):
        if case_scenario(case) not in ("throughput", "peers"):
            continue

        size = case_size(case, default)
        number = value(case, size)
        if number is None or number <= 0:
            continue

        system = _system(case)
        points.setdefault(case["fanout"], {}).setdefault(system, {})[size] = number

    if not points:
        return None

    fanouts = sorted(points)
    sizes = sorted(
        {size for systems in points.values() for line in systems.values() for size in line}
    )
    figure = Figure(figsize=(6 * len(fanouts) + 2.5, 5), dpi=DPI, layout="constrained")
    axes = figure.subplots(1, len(fanouts), sharey=True, squeeze=False)[0]
    handles: dict[str, Line2D] = {}
    for ax, fanout in zip(axes, fanouts, strict=True):
        for system in _ordered(points[fanout]):
            line = sorted(points[fanout][system].items())
            (handle,) = ax.plot(
                [size for size, _ in line],
                [number for _, number in line],
                label=system,
                **_style(system),
            )
            handles.setdefault(system, handle)

        ax.set_title(f"1→{fanout}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes, [size_label(size) for size in sizes])
        ax.minorticks_off()
        ax.set_xlim(sizes[0] / 1.6, sizes[-1] * 1.6)
        ax.set_xlabel("payload size")
        ax.grid(True, which="major", alpha=0.3)

    axes[0].set_ylabel(ylabel)
    ordered = _ordered(handles)
    figure.legend(
        [handles[system] for system in ordered], ordered, loc="outside right upper", fontsize=8
    )
    figure.suptitle(f"{title} {_subtitle(document)}")
    return figure


def _system(case: Case) -> str:
    """``raw unix``, ``asyncbus seqpacket uvloop``, ``pyzmq ipc sync``, ``lcm udpm``."""
    parts = [case.get("implementation"), case.get("transport"), case.get("loop")]
    return " ".join(str(part) for part in parts if part)


def _ordered(systems: Iterable[str]) -> list[str]:
    known = {name: index for index, name in enumerate(SYSTEM_ORDER)}
    return sorted(systems, key=lambda name: (known.get(name, len(known)), name))


def _style(system: str) -> dict[str, Any]:
    """A colour per system, dashed lines and squares for the raw baselines."""
    index = SYSTEM_ORDER.index(system) if system in SYSTEM_ORDER else len(SYSTEM_ORDER)
    colours = [f"C{n}" for n in range(10)] + ["tab:olive", "black", "grey"]
    raw = system.startswith("raw ")
    return {
        "color": colours[index % len(colours)],
        "linestyle": "--" if raw else "-",
        "marker": "s" if raw else ("o" if system.startswith("asyncbus ") else "^"),
    }


# --- large payloads -----------------------------------------------------------------------


def _large(document: Mapping[str, Any]) -> Figure | None:
    """One panel per size and fan-out: a bar per system and mode, the stream copy marked."""
    panels: dict[tuple[int, int], list[tuple[str, float]]] = {}
    for case in _cases(document):
        gbps = _median(case, "subscriber_gbps")
        if case_scenario(case) != "large" or gbps is None:
            continue

        panels.setdefault((case_size(case), case["fanout"]), []).append((_large_label(case), gbps))

    if not panels:
        return None

    sizes = sorted({size for size, _ in panels})
    fanouts = sorted({fanout for _, fanout in panels})
    rows = max(len(bars) for bars in panels.values())
    figure = Figure(
        figsize=(6.5 * len(fanouts), (0.35 * rows + 1.2) * len(sizes) + 0.8),
        dpi=DPI,
        layout="constrained",
    )
    grid = figure.subplots(len(sizes), len(fanouts), squeeze=False)
    for row, size in enumerate(sizes):
        for column, fanout in enumerate(fanouts):
            ax = grid[row][column]
            # The stream copy first: the baseline the others are read against.
            bars = sorted(
                panels.get((size, fanout), []), key=lambda bar: (bar[0] != STREAM, bar[0])
            )
            ax.set_title(f"{size_label(size)}, 1→{fanout}")
            if not bars:
                ax.set_axis_off()
                continue

            labels = [label for label, _ in bars]
            values = [gbps for _, gbps in bars]
            colours = ["grey" if label == STREAM else "tab:blue" for label in labels]
            ax.barh(labels, values, color=colours)
            ax.invert_yaxis()
            ax.tick_params(axis="y", labelsize=8)
            for index, gbps in enumerate(values):
                ax.annotate(
                    f"{gbps:.2f}",
                    (gbps, index),
                    xytext=(3, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=8,
                )

            for label, gbps in bars:
                if label == STREAM:
                    ax.axvline(gbps, color="grey", linestyle="--", linewidth=1)

            ax.set_xlim(0, max(values) * 1.2)
            ax.set_xlabel("GB/s per subscriber (GB = 10⁹ bytes), every byte read")
            ax.grid(True, axis="x", alpha=0.3)

    title = "Large payloads: delivered GB/s per subscriber"
    figure.suptitle(f"{title} {_subtitle(document, 'large')}")
    return figure


def _large_label(case: Case) -> str:
    if case.get("transport") == "stream":
        return STREAM

    parts = [case.get("implementation"), case.get("transport"), case.get("loop"), case.get("mode")]
    return " ".join(str(part) for part in parts if part)


# --- latency ------------------------------------------------------------------------------


def _latency(document: Mapping[str, Any]) -> Figure | None:
    """Grouped bars: round-trip p50 and p99 per system, in microseconds, log scale."""
    entries: list[tuple[str, float, float]] = []
    for entry in document.get("latency") or ():
        median = entry.get("median") or {}
        p50, p99 = median.get("rtt_p50_us"), median.get("rtt_p99_us")
        if isinstance(p50, (int, float)) and isinstance(p99, (int, float)) and p50 > 0 < p99:
            parts = [
                entry.get("system"),
                entry.get("transport"),
                entry.get("loop"),
                entry.get("variant"),
            ]
            entries.append((" ".join(str(p) for p in parts if p), float(p50), float(p99)))

    if not entries:
        return None

    figure = Figure(figsize=(max(6.0, 0.9 * len(entries) + 2), 5), dpi=DPI, layout="constrained")
    ax = figure.subplots()
    positions = list(range(len(entries)))
    width = 0.4
    for offset, (name, column, colour) in enumerate(
        (("p50", 1, "tab:blue"), ("p99", 2, "tab:orange"))
    ):
        ax.bar(
            [x + (offset - 0.5) * width for x in positions],
            [entry[column] for entry in entries],
            width,
            label=name,
            color=colour,
        )

    ax.set_xticks(positions, [entry[0] for entry in entries], rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("round trip, µs (log scale)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    ax.set_title(f"64-byte round trip, p50 and p99 {_subtitle(document, 'latency')}")
    return figure


# --- targets ------------------------------------------------------------------------------


def _targets(document: Mapping[str, Any]) -> Figure | None:
    """Horizontal bars: each target's measured ratio, a black tick at the required one."""
    rows = targets(document)
    if not any(row["measured"] is not None for row in rows):
        return None

    figure = Figure(figsize=(12, 0.55 * len(rows) + 1.5), dpi=DPI, layout="constrained")
    ax = figure.subplots()
    labels = [textwrap.shorten(f"{row['target']} {row['check']}", 80) for row in rows]
    positions = list(range(len(rows)))
    measured = [row["measured"] or 0.0 for row in rows]
    colours = [MET_COLOURS.get(row["status"], "lightgrey") for row in rows]
    ax.barh(positions, [value or float("nan") for value in measured], color=colours, height=0.6)
    ax.scatter(
        [row["required"] for row in rows],
        positions,
        marker="|",
        s=400,
        color="black",
        zorder=3,
        label="required",
    )
    for position, row in enumerate(rows):
        sign = "≥" if row["comparison"] == ">=" else "≤"
        text = f"{row['status']}, needs {sign} {row['required']:.2f}x"
        if row["measured"] is not None:
            text = f"{row['measured']:.2f}x: {text}"

        anchor = max(row["measured"] or 0.0, row["required"])
        ax.annotate(
            text,
            (anchor, position),
            xytext=(8, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )

    values = [value for value in measured if value > 0] + [row["required"] for row in rows]
    ax.set_xscale("log")
    ax.set_xlim(min(values) / 1.5, max(values) * 8)  # room for the annotations
    ax.set_yticks(positions, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(
        "measured ratio (log scale; T2: delivered msg/s / 1,000,000; T6: lower is better)"
    )
    legend = [
        Line2D([], [], color=colour, linewidth=8, label=status)
        for status, colour in (*MET_COLOURS.items(), ("not measured", "lightgrey"))
    ]
    legend.append(Line2D([], [], color="black", marker="|", linestyle="", markersize=14))
    legend[-1].set_label("required")
    figure.legend(handles=legend, loc="outside lower center", ncols=len(legend), fontsize=8)
    ax.grid(True, axis="x", which="both", alpha=0.2)
    ax.set_title(f"Targets: ratios of medians, same run {_subtitle(document)}")
    return figure


# --- helpers ------------------------------------------------------------------------------


def _cases(document: Mapping[str, Any]) -> list[Case]:
    return [case for case in document.get("cases") or () if isinstance(case, dict)]


def _median(case: Case, name: str) -> float | None:
    value = (case.get("median") or {}).get(name)
    return float(value) if isinstance(value, (int, float)) else None


def _payload_size(document: Mapping[str, Any]) -> int:
    size = (document.get("settings") or {}).get("payload_size")
    return size if isinstance(size, int) else 64


def _subtitle(document: Mapping[str, Any], scenario: str | None = None) -> str:
    """``(quick mode, median of 2 runs)``: how much each number is worth.

    The large and latency scenarios have their own repeat count in their settings.
    """
    settings = document.get("settings") or {}
    mode, repeats = settings.get("mode"), settings.get("repeats")
    if scenario:
        repeats = (settings.get(scenario) or {}).get("repeats", repeats)

    if mode and repeats:
        return f"\n({mode} mode, median of {repeats} run{'s' if repeats != 1 else ''})"

    return ""


if __name__ == "__main__":
    sys.exit(main())
