"""The benchmarks keep working: a tiny quick run reports every case with positive rates.

Nothing here judges speed; the numbers are for people, in the JSON and the table. What
is checked besides "it runs" are the accounting rules the AF_UNIX cases exist to show:
no message vanishes without a counter, every drop a publisher makes is a gap at a
subscriber, and ``block`` subscriptions lose nothing; and that large payloads arrive
whole (every checksum the expected one) in a shared segment each.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import latency

from .conftest import require

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = 2_000  # tiny: the whole udpm run (6 cases, 21 processes) takes a few seconds
SLOW_MESSAGES = 2_500  # a slow subscriber takes ~200 us a message; > peer_queue: drops
RATES = ("send_rate", "subscriber_rate", "slowest_subscriber_rate", "total_rate")
THROUGHPUT_NAMES = ("raw", "asyncbus-asyncio", "asyncbus-uvloop")
UDPM_CASES = {f"{name}-1to{fanout}" for fanout in (1, 4) for name in THROUGHPUT_NAMES}
UNIX_CASES = {
    f"{transport}-{name}-1to{fanout}"
    for transport in ("unix", "seqpacket")
    for fanout in (1, 4)
    for name in THROUGHPUT_NAMES
}
SLOW_CASES = {
    f"{transport}-asyncbus-asyncio-slow-{policy}"
    for transport in ("unix", "seqpacket")
    for policy in ("drop_oldest", "drop_newest", "block")
}
LARGE_MESSAGES = 3  # of 1 MiB: enough for a rate (two intervals), and quick
LARGE_MODES = {"publish", "loan_copy", "loan_header"}


def _loopback_multicast() -> bool:
    """Tell whether this host delivers IPv4 multicast on ``lo`` to an unprivileged socket."""
    group = "239.255.76.69"
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind((group, 0))
        membership = socket.inet_aton(group) + socket.inet_aton("127.0.0.1")
        try:
            receiver.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        except OSError:
            return False

        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        sender.sendto(b"probe", receiver.getsockname())
        return bool(select.select([receiver], [], [], 2.0)[0])


def _abstract_seqpacket() -> bool:
    """Tell whether this host has AF_UNIX SOCK_SEQPACKET in the abstract namespace."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
            probe.bind(b"\0asyncbus-test-benchmarks-probe-" + str(os.getpid()).encode())
    except OSError:
        return False

    return True


def _run_quick(
    tmp_path: Path, *options: str, messages: int = MESSAGES
) -> tuple[dict[str, Any], list[str]]:
    """Run ``python -m benchmarks --quick`` with ``options``; return the JSON and stdout."""
    output = tmp_path / "bench.json"
    plots = ("--plots", str(tmp_path / "plots"))  # not into the source tree
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "benchmarks", "--quick", "--messages", str(messages)]
    completed = subprocess.run(
        [*command, "--repeats", "1", "--json", str(output), *plots, *options],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    document: dict[str, Any] = json.loads(output.read_text())
    assert document["settings"]["messages"] == messages
    assert {"cpu_count", "kernel", "python", "uvloop", "asyncbus"} <= document["machine"].keys()
    return document, completed.stdout.splitlines()


def _check_throughput(cases: dict[str, dict[str, Any]]) -> None:
    for case_id, case in cases.items():
        assert len(case["runs"]) == 1, case_id
        for rate in RATES:
            assert case["median"][rate] > 0, f"{case_id}: {rate} is {case['median'][rate]}"

        if case["implementation"] != "raw":
            assert case["ratio_vs_raw"]["subscriber_rate"] > 0, case_id


def test_quick_run_reports_every_udpm_case(tmp_path: Path) -> None:
    require(_loopback_multicast(), "this host does not deliver multicast on lo (no IPv4 on lo?)")
    options = ("--transport", "udpm", "--scenario", "throughput", "--size", "64")
    document, table = _run_quick(tmp_path, *options)

    cases = {case["id"]: case for case in document["cases"]}
    assert cases.keys() == UDPM_CASES
    _check_throughput(cases)

    assert table[0] == "### udpm throughput", table
    assert table[2].startswith("| case |"), table
    assert len([line for line in table if line.startswith(("| raw ", "| asyncbus "))]) == 6


def test_quick_run_reports_every_unix_case(tmp_path: Path) -> None:
    require(_abstract_seqpacket(), "this kernel has no AF_UNIX SOCK_SEQPACKET (Linux >= 2.6.4)")
    options = ("--transport", "unix", "--transport", "seqpacket")
    options += ("--scenario", "throughput", "--scenario", "slow")  # large: its own test
    options += ("--size", "64")  # other sizes: test_quick_run_covers_every_size
    document, table = _run_quick(tmp_path, *options, "--slow-messages", str(SLOW_MESSAGES))
    assert document["settings"]["slow_messages"] == SLOW_MESSAGES

    cases = {case["id"]: case for case in document["cases"]}
    assert cases.keys() == UNIX_CASES | SLOW_CASES
    _check_throughput({key: cases[key] for key in UNIX_CASES})
    for case_id in UNIX_CASES | SLOW_CASES:
        metrics = cases[case_id]["runs"][0]["metrics"]
        if case_id in SLOW_CASES or "raw" not in case_id:
            assert metrics["unaccounted"] == 0, f"{case_id}: messages vanished silently"

        if case_id in UNIX_CASES:  # raw blocking sends, or asyncbus `block` subscriptions
            assert metrics["loss"] == 0, f"{case_id}: lost {metrics['loss']:.2%}"

    for case_id in SLOW_CASES:
        metrics = cases[case_id]["runs"][0]["metrics"]
        assert metrics["slow_rate"] > 0, case_id
        assert metrics["drops_equal"] == 1, f"{case_id}: send_drops != gaps: {metrics}"
        if case_id.endswith("-block"):
            assert metrics["fast_lost"] == metrics["slow_lost"] == 0, case_id

        if not case_id.endswith("-drop_newest"):  # drop_oldest keeps the newest message
            assert metrics["slow_last_seq"] == SLOW_MESSAGES - 1, f"{case_id}: {metrics}"

    assert "### AF_UNIX throughput" in table
    assert "### AF_UNIX, one fast and one slow subscriber" in table
    rows = [line for line in table if line.startswith(("| unix ", "| seqpacket "))]
    assert len(rows) == len(UNIX_CASES | SLOW_CASES), table


def test_quick_run_reports_the_large_scenario(tmp_path: Path) -> None:
    require(_abstract_seqpacket(), "this kernel has no AF_UNIX SOCK_SEQPACKET (Linux >= 2.6.4)")
    options = ("--scenario", "large", "--large-size", "1M", "--large-bytes", "3M")
    document, table = _run_quick(tmp_path, *options)
    assert document["settings"]["large"]["messages"] == {"1MiB": LARGE_MESSAGES}

    cases = {case["id"]: case for case in document["cases"]}
    # Quick mode: per fan-out the stream baseline, each publisher mode once, and pyzmq
    # on one loop (the other fan-out has the other), when it is installed.
    zmq = importlib.util.find_spec("zmq") is not None
    for fanout in (1, 4):
        block = [case for case in cases.values() if case["fanout"] == fanout]
        assert {case["id"] for case in block if case["transport"] == "stream"} == {
            f"large-stream-raw-1MiB-1to{fanout}"
        }
        modes = [case["mode"] for case in block if case["implementation"] == "asyncbus"]
        assert sorted(modes) == sorted(LARGE_MODES), block
        assert len([case for case in block if case["implementation"] == "pyzmq"]) == zmq, block

    zmq_loops = {case["loop"] for case in cases.values() if case["implementation"] == "pyzmq"}
    assert zmq_loops == ({"sync", "asyncio"} if zmq else set())
    assert len(cases) == 8 + 2 * zmq
    for case_id, case in cases.items():
        assert case["size"] == 1 << 20, case_id
        assert case["scenario"] == "large", case_id
        metrics = case["runs"][0]["metrics"]
        for rate in (*RATES, "subscriber_gbps", "total_gbps", "mb_per_sub"):
            assert metrics[rate] > 0, f"{case_id}: {rate} is {metrics[rate]}"

        assert metrics["loss"] == 0, f"{case_id}: lost {metrics['loss']:.2%}"
        if case["mode"] != "loan_header":  # its payload is whatever the segment held
            assert metrics["corrupt"] == 0, f"{case_id}: a payload changed while read"

        if case["implementation"] == "asyncbus":
            assert metrics["unaccounted"] == 0, f"{case_id}: messages vanished silently"
            assert case["ratio_vs_raw"]["subscriber_rate"] > 0, case_id
            # Every payload went in a shared segment, new or reused.
            segments = metrics["segments_created"] + metrics["segments_reused"]
            assert segments == LARGE_MESSAGES, f"{case_id}: {metrics}"

    assert "### Large payloads, every byte read (MB = 10**6 bytes)" in table
    rows = [line for line in table if line.startswith(("| stream ", "| asyncbus ", "| pyzmq "))]
    assert len(rows) == len(cases), table


PEER_CASES = {
    f"{name}-1to{fanout}"
    for fanout in (1, 4)
    for name in ("peers-ipc-pyzmq-sync", "peers-ipc-pyzmq-asyncio", "peers-udpm-lcm")
}


def test_quick_run_reports_every_peer_case(tmp_path: Path) -> None:
    require(_loopback_multicast(), "this host does not deliver multicast on lo (no IPv4 on lo?)")
    document, table = _run_quick(tmp_path, "--scenario", "peers", "--size", "64")
    assert {"zmq_hwm", "lcm", "baseline"} <= document["settings"]["peers"].keys()

    cases = {case["id"]: case for case in document["cases"]}
    # The peers, and the raw udpm loops they are compared with, in the same run.
    assert cases.keys() == PEER_CASES | {"raw-1to1", "raw-1to4"}
    for case_id, case in cases.items():
        (run,) = case["runs"]
        sent = run["publisher"]["sent"]
        assert sent == MESSAGES, case_id
        for subscriber in run["subscribers"]:
            # PUB/SUB and multicast may drop (no speed is judged), never invent messages.
            assert 0 < subscriber["received"] <= sent, f"{case_id}: {subscriber}"

        assert run["metrics"]["lost"] == sum(sent - s["received"] for s in run["subscribers"])
        if case_id in PEER_CASES:
            assert case["ratio_vs_raw"]["subscriber_rate"] > 0, case_id

    assert "### Peers: pyzmq PUB/SUB and LCM" in table
    rows = [line for line in table if line.startswith(("| raw ", "| pyzmq ", "| lcm "))]
    assert len(rows) == len(cases), table


LATENCY_ROUNDS = 50  # tiny: every system, two processes each, in a few seconds
# The raw event-loop floor: no framework, each loop, echoer in a callback or in a task.
LATENCY_LOOPS = ("asyncio", "uvloop")
ASYNCIO_RAW = tuple(
    f"asyncio-raw-{loop}-{variant}" for variant in ("callback", "task") for loop in LATENCY_LOOPS
)
LATENCY_CASES = {
    f"latency-{transport}-{name}"
    for transport in ("unix", "seqpacket", "udpm")
    for name in ("raw", *ASYNCIO_RAW, "asyncbus-asyncio", "asyncbus-uvloop")
} | {"latency-ipc-pyzmq-sync", "latency-ipc-pyzmq-asyncio", "latency-udpm-lcm"}
LATENCY_KEYS = {
    "id",
    "system",
    "transport",
    "loop",
    "variant",
    "median",
    "ratio_p50_vs_raw",
    "baseline",
}
LATENCY_METRICS = {"rtt_p50_us", "rtt_p99_us", "rtt_mean_us", "rtt_min_us", "rtt_max_us"}


def test_quick_run_reports_every_latency_case(tmp_path: Path) -> None:
    require(_loopback_multicast(), "this host does not deliver multicast on lo (no IPv4 on lo?)")
    require(_abstract_seqpacket(), "this kernel has no AF_UNIX SOCK_SEQPACKET (Linux >= 2.6.4)")
    missing = [name for name in ("zmq", "lcm") if importlib.util.find_spec(name) is None]
    require(not missing, f"no {missing}: pip install -e '.[bench]' (pyzmq, lcm)")
    options = ("--scenario", "latency", "--rounds", str(LATENCY_ROUNDS))
    document, table = _run_quick(tmp_path, *options)
    assert document["settings"]["latency"]["rounds"] == LATENCY_ROUNDS
    assert document["settings"]["latency"]["placement"] == "split"
    if len(os.sched_getaffinity(0)) >= 2:  # each process pinned to its own CPU
        cpus = document["settings"]["latency"]["cpus"]
        assert cpus["echoer"] != cpus["pinger"]

    cases = {case["id"]: case for case in document["latency"]}
    assert cases.keys() == LATENCY_CASES
    for case_id, case in cases.items():
        assert LATENCY_KEYS | {"runs"} <= case.keys(), case_id
        assert case["median"].keys() == LATENCY_METRICS, case_id
        assert case["baseline"] in cases, case_id
        if case["system"] == "raw":
            assert case["ratio_p50_vs_raw"] is None, case_id
            assert case["loop"] is None, case_id
        else:
            assert case["ratio_p50_vs_raw"] > 0, case_id

        if case["system"] == "asyncio-raw":
            assert case["loop"] in LATENCY_LOOPS, case_id
            assert case["variant"] in ("callback", "task"), case_id
            assert case["baseline"] == f"latency-{case['transport']}-raw", case_id
        else:
            assert case["variant"] is None, case_id

        (run,) = case["runs"]
        assert run["samples"] == LATENCY_ROUNDS, f"{case_id}: {run}"
        for numbers in (run, case["median"]):
            assert 0 < numbers["rtt_min_us"] <= numbers["rtt_p50_us"], f"{case_id}: {numbers}"
            assert numbers["rtt_p50_us"] <= numbers["rtt_p99_us"], f"{case_id}: {numbers}"
            assert numbers["rtt_p99_us"] <= numbers["rtt_max_us"], f"{case_id}: {numbers}"

    assert "### Round-trip latency, 64-byte payload (us)" in table
    rows = [line for line in table if line.startswith(("| unix", "| seqpacket", "| udpm", "| ipc"))]
    assert len(rows) == len(cases), table


SIZED_MESSAGES = 300  # of 1 KiB and 16 KiB: enough for a rate, and quick
PEER_NAMES = ("raw", "peers-ipc-pyzmq-sync", "peers-ipc-pyzmq-asyncio", "peers-udpm-lcm")


def _check_sized(cases: dict[str, dict[str, Any]], sizes: set[int]) -> None:
    """Every subscriber read every payload it counted, and MB/s is msg/s x size."""
    assert {case["size"] for case in cases.values()} == sizes
    for case_id, case in cases.items():
        (run,) = case["runs"]
        metrics, median = run["metrics"], case["median"]
        assert metrics["corrupt"] == 0, f"{case_id}: a payload was not what was sent"
        for subscriber in run["subscribers"]:
            # The reader ran over payloads of the case's size, checked every checksum.
            assert subscriber["counters"]["reader"] == {
                "size": case["size"],
                "corrupt": 0,
                "checked": True,
            }, case_id
            assert 0 < subscriber["received"] <= run["publisher"]["sent"], case_id

        for numbers in (metrics, median):
            expected = numbers["subscriber_rate"] * case["size"] / 1e6
            assert abs(numbers["mb_per_sub"] - expected) <= 1e-9 * expected, case_id
            expected = numbers["total_rate"] * case["size"] / 1e6
            assert abs(numbers["mb_total"] - expected) <= 1e-9 * expected, case_id


def test_quick_run_covers_every_size(tmp_path: Path) -> None:
    require(_abstract_seqpacket(), "this kernel has no AF_UNIX SOCK_SEQPACKET (Linux >= 2.6.4)")
    options = ("--transport", "unix", "--scenario", "throughput", "--size", "1K")
    options += ("--size", "16K")
    document, table = _run_quick(tmp_path, *options, messages=SIZED_MESSAGES)
    assert document["settings"]["sizes"] == [1024, 16384]

    cases = {case["id"]: case for case in document["cases"]}
    # --size asks for every system at each size, also in quick mode.
    assert cases.keys() == {
        f"unix-{name}-{label}-1to{fanout}"
        for name in THROUGHPUT_NAMES
        for label in ("1KiB", "16KiB")
        for fanout in (1, 4)
    }
    for case_id, case in cases.items():
        assert case["scenario"] == "throughput", case_id
        metrics = case["runs"][0]["metrics"]
        # Raw blocking sends, or asyncbus `block` subscriptions: nothing lost, whatever
        # the size, and the end marker (3 bytes) still ends every subscriber's run.
        assert metrics["loss"] == 0, f"{case_id}: lost {metrics['loss']:.2%}"
        assert metrics["end_markers_missed"] == 0, case_id
        assert case["runs"][0]["publisher"]["sent"] == SIZED_MESSAGES, case_id
        if case["implementation"] == "asyncbus":
            assert metrics["unaccounted"] == 0, f"{case_id}: messages vanished silently"
            assert case["ratio_vs_raw"]["subscriber_rate"] > 0, case_id

    _check_throughput(cases)
    _check_sized(cases, {1024, 16384})
    rows = [line for line in table if line.startswith("| unix ")]
    assert len(rows) == len(cases), table
    assert any("| 16KiB | 1→4 |" in row for row in rows), rows


def test_quick_run_covers_every_size_of_the_peers(tmp_path: Path) -> None:
    require(_loopback_multicast(), "this host does not deliver multicast on lo (no IPv4 on lo?)")
    options = ("--scenario", "peers", "--size", "16K")
    document, table = _run_quick(tmp_path, *options, messages=SIZED_MESSAGES)

    cases = {case["id"]: case for case in document["cases"]}
    assert cases.keys() == {f"{name}-16KiB-1to{fanout}" for name in PEER_NAMES for fanout in (1, 4)}
    for case_id, case in cases.items():
        # The raw udpm loops are the throughput scenario's, shared.
        expected = "throughput" if case["implementation"] == "raw" else "peers"
        assert case["scenario"] == expected, case_id
        if case["implementation"] != "raw":
            assert case["ratio_vs_raw"]["subscriber_rate"] > 0, case_id

    _check_sized(cases, {16384})
    rows = [line for line in table if line.startswith(("| raw ", "| pyzmq ", "| lcm "))]
    assert len(rows) == len(cases), table


def test_quick_mode_rotates_the_systems_above_64_bytes() -> None:
    from benchmarks.cli import select_cases

    every = select_cases(scenarios=("throughput", "peers"))
    quick = select_cases(scenarios=("throughput", "peers"), every_size=False)
    assert len({case.id for case in every}) == len(every)  # ids are unique
    assert {case for case in every if case.size == 64} == {
        case for case in quick if case.size == 64
    }
    assert {case.id for case in every if case.size == 64} >= UDPM_CASES | UNIX_CASES
    assert set(quick) < set(every)
    for size in (1024, 16384):
        for fanout in (1, 4):
            same = [case for case in quick if case.size == size and case.fanout == fanout]
            for transport in ("udpm", "unix", "seqpacket"):
                mine = [case for case in same if case.transport == transport]
                loops = [case.loop for case in mine if case.implementation == "asyncbus"]
                assert [case.implementation for case in mine].count("raw") == 1, mine
                assert len(loops) == 1, mine

            zmq = [case.loop for case in same if case.implementation == "pyzmq"]
            assert len(zmq) == 1, same
            assert [case.implementation for case in same].count("lcm") == 1, same

    # Over the blocks, every loop runs somewhere on every transport.
    for transport in ("udpm", "unix", "seqpacket"):
        loops = {
            case.loop
            for case in quick
            if case.size != 64 and case.transport == transport and case.loop
        }
        assert loops == {"asyncio", "uvloop"}, transport


@pytest.mark.parametrize("size", ["3", "5", "64K"], ids=["end-marker", "probe", "two-datagrams"])
def test_sizes_that_cannot_be_told_apart_or_sent_whole_are_refused(
    size: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks.cli import main

    with pytest.raises(SystemExit):
        main(["--size", size, "--json", os.devnull])

    assert "--size" in capsys.readouterr().err


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
THROUGHPUT_PLOTS = {"throughput.png", "throughput_mb.png", "targets.png"}
EVERY_PLOT = THROUGHPUT_PLOTS | {"large.png", "latency.png"}
MiB = 1 << 20


def _require_matplotlib() -> None:
    found = importlib.util.find_spec("matplotlib") is not None
    require(found, "no matplotlib: pip install -e '.[test]' (or pip install matplotlib)")


def _check_pngs(directory: Path, names: set[str]) -> None:
    """Every plot is there, a PNG file (by its signature), and not empty."""
    assert {path.name for path in directory.iterdir()} == names
    for name in names:
        data = (directory / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        assert len(data) > len(PNG_SIGNATURE), name


def test_quick_run_draws_plots_and_prints_targets(tmp_path: Path) -> None:
    require(_abstract_seqpacket(), "this kernel has no AF_UNIX SOCK_SEQPACKET (Linux >= 2.6.4)")
    _require_matplotlib()
    from benchmarks import report

    options = ("--transport", "unix", "--scenario", "throughput")
    document, table = _run_quick(tmp_path, *options)
    _check_pngs(tmp_path / "plots", THROUGHPUT_PLOTS)

    assert "### Targets (ratios of medians, same run)" in table
    rows = [line for line in table if line.startswith("| T")]
    assert len(rows) == len(report.targets(document)), table

    # The same plots again from the JSON alone, without running anything.
    redrawn = tmp_path / "redrawn"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.plots", str(tmp_path / "bench.json"), str(redrawn)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    _check_pngs(redrawn, THROUGHPUT_PLOTS)


def _case(
    case_id: str,
    implementation: str,
    transport: str,
    fanout: int,
    rate: float,
    loop: str | None = None,
    lost: float = 0.0,
    size: int | None = None,
) -> dict[str, Any]:
    """A case object as the JSON has it, with only the metrics the targets read."""
    median = {"subscriber_rate": rate, "lost": lost, "loss": lost / 1000}
    if size is not None:
        median["subscriber_gbps"] = rate * size / 1e9

    return {
        "id": case_id,
        "implementation": implementation,
        "loop": loop,
        "fanout": fanout,
        "transport": transport,
        "slow": False,
        "size": size,
        "mode": "loan_copy" if size is not None and implementation == "asyncbus" else None,
        "median": median,
    }


def _latency(system: str, transport: str, loop: str | None, p50: float) -> dict[str, Any]:
    median = {"rtt_p50_us": p50, "rtt_p99_us": 3 * p50, "rtt_mean_us": p50}
    median |= {"rtt_min_us": p50 / 2, "rtt_max_us": 9 * p50}
    case_id = f"latency-{transport}-{system}-{loop}"
    return {"id": case_id, "system": system, "transport": transport, "loop": loop, "median": median}


def _synthetic_document(with_scenarios: bool) -> dict[str, Any]:
    """Known rates: the targets' ratios below follow from them.

    ``with_scenarios``: every case has ``scenario`` and ``size`` (the newer JSON);
    without, ``size`` is ``None`` outside the large scenario (the first JSON).
    """
    cases = [
        _case("unix-raw-1to1", "raw", "unix", 1, 200_000),
        _case("unix-asyncbus-uvloop-1to1", "asyncbus", "unix", 1, 150_000, "uvloop"),
        # Faster, but it lost messages: not a candidate for T1-T3.
        _case("seqpacket-asyncbus-uvloop-1to1", "asyncbus", "seqpacket", 1, 300_000, "uvloop", 5),
        _case("peers-ipc-pyzmq-asyncio-1to1", "pyzmq", "ipc", 1, 20_000, "asyncio", 700),
        _case("raw-1to1", "raw", "udpm", 1, 100_000),
        _case("asyncbus-asyncio-1to1", "asyncbus", "udpm", 1, 95_000, "asyncio"),
        _case("raw-1to4", "raw", "udpm", 4, 50_000),
        _case("unix-asyncbus-asyncio-1to4", "asyncbus", "unix", 4, 40_000, "asyncio"),
        _case("large-stream-raw-1MiB-1to1", "raw", "stream", 1, 1_000, size=MiB),
        _case(
            "large-unix-asyncbus-uvloop-loan_copy-1MiB-1to1",
            "asyncbus",
            "unix",
            1,
            2_500,
            "uvloop",
            size=MiB,
        ),
    ]
    if with_scenarios:
        for case in cases:
            large = case["size"] is not None
            case["scenario"] = "large" if large else "throughput"
            case["size"] = case["size"] or 64
            case["median"]["mb_per_sub"] = case["median"]["subscriber_rate"] * case["size"] / 1e6

    latency = [
        _latency("raw", "unix", None, 10.0),
        _latency("asyncbus", "unix", "asyncio", 25.0),
        _latency("asyncbus", "unix", "uvloop", 15.0),
        _latency("asyncbus", "seqpacket", "uvloop", 15.0),  # no raw seqpacket: not measured
    ]
    settings = {"mode": "quick", "repeats": 1, "payload_size": 64}
    return {"settings": settings, "cases": cases, "latency": latency}


@pytest.mark.parametrize("with_scenarios", [False, True], ids=["first-json", "sized-json"])
def test_targets_arithmetic(with_scenarios: bool) -> None:
    from benchmarks import report

    found = report.targets(_synthetic_document(with_scenarios))
    checks = {(row["target"], index): row for index, row in enumerate(found)}
    expected = [
        ("T1", 0.75, True),  # 150,000 / 200,000 (the lossy 300,000 is not a candidate)
        ("T1", 7.5, True),  # 150,000 / 20,000
        ("T2", 0.15, False),  # 150,000 / 1,000,000
        ("T3", 0.8, False),  # 40,000 / 50,000
        ("T4", 0.95, True),  # udpm asyncio 1->1: 95,000 / 100,000
        ("T4", None, None),  # udpm uvloop 1->1: absent
        ("T4", None, None),  # 1->4: absent
        ("T4", None, None),
        ("T5", 2.5, True),  # 2,500 / 1,000
        ("T5", None, None),  # 1->4: absent
        ("T6", 1.5, True),  # unix: best loop uvloop, 15 / 10
        ("T6", None, None),  # seqpacket: no raw loop
        ("T6", None, None),  # udpm: absent
    ]
    assert [(row["target"], row["measured"] is None) for row in found] == [
        (name, ratio is None) for name, ratio, _ in expected
    ]
    for (name, index), row in checks.items():
        _, ratio, met = expected[index]
        assert row["met"] is met, (name, row)
        if ratio is None:
            assert row["status"] == "not measured", (name, row)
        else:
            assert row["measured"] == pytest.approx(ratio), (name, row)
            assert row["status"] == ("met" if met else "not met"), (name, row)

    assert found[0]["inputs"][0]["id"] == "unix-asyncbus-uvloop-1to1"
    table = report.targets_markdown(_synthetic_document(with_scenarios))
    assert (
        "| T1 | fastest asyncbus AF_UNIX, 64 B 1→1, vs the raw AF_UNIX datagram loop | 0.75x"
        in table
    )
    assert table.count("| not measured |") == 6


def test_targets_without_cases_are_not_measured() -> None:
    from benchmarks import report

    found = report.targets({"cases": []})
    assert found
    assert {row["status"] for row in found} == {"not measured"}
    assert all(row["met"] is None and row["measured"] is None for row in found)


@pytest.mark.parametrize("with_scenarios", [False, True], ids=["first-json", "sized-json"])
def test_every_plot_from_a_synthetic_document(tmp_path: Path, with_scenarios: bool) -> None:
    _require_matplotlib()
    source = tmp_path / "synthetic.json"
    source.write_text(json.dumps(_synthetic_document(with_scenarios)))
    # In a process of its own: matplotlib keeps its font files open for the next plot,
    # which this test process's file-descriptor check would call a leak.
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.plots", str(source), str(tmp_path / "plots")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert {Path(line).name for line in completed.stdout.split()} == EVERY_PLOT
    _check_pngs(tmp_path / "plots", EVERY_PLOT)


def test_latency_placements_pin_like_with_like() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    same = latency.plan(False, placement="same")
    assert same.cpus == (allowed[0], allowed[0])
    assert latency.plan(False, placement="none").cpus is None
    split = latency.plan(True, placement="split").cpus
    assert split == ((allowed[1], allowed[0]) if len(allowed) >= 2 else None)
