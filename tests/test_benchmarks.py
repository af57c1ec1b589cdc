"""The benchmarks keep working: a tiny quick run reports every case with positive rates.

Nothing here judges speed; the numbers are for people, in the JSON and the table.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
from pathlib import Path

from .conftest import require

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = 2_000  # tiny: the whole run (6 cases, 21 processes) takes a few seconds
EXPECTED_CASES = {
    f"{name}-1to{fanout}"
    for fanout in (1, 4)
    for name in ("raw", "asyncbus-asyncio", "asyncbus-uvloop")
}
RATES = ("send_rate", "subscriber_rate", "slowest_subscriber_rate", "total_rate")


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


def test_quick_run_reports_every_case(tmp_path: Path) -> None:
    require(_loopback_multicast(), "this host does not deliver multicast on lo (no IPv4 on lo?)")
    output = tmp_path / "bench.json"
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "benchmarks", "--quick", "--messages", str(MESSAGES)]
    completed = subprocess.run(
        [*command, "--repeats", "1", "--json", str(output)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr

    document = json.loads(output.read_text())
    assert document["settings"]["messages"] == MESSAGES
    assert {"cpu_count", "kernel", "python", "uvloop", "asyncbus"} <= document["machine"].keys()

    cases = {case["id"]: case for case in document["cases"]}
    assert cases.keys() == EXPECTED_CASES
    for case_id, case in cases.items():
        assert len(case["runs"]) == 1, case_id
        for rate in RATES:
            assert case["median"][rate] > 0, f"{case_id}: {rate} is {case['median'][rate]}"

        if not case_id.startswith("raw"):
            assert case["ratio_vs_raw"]["subscriber_rate"] > 0, case_id

    table = completed.stdout.splitlines()
    assert table[0].startswith("| case |"), completed.stdout
    assert len([line for line in table if line.startswith(("| raw ", "| asyncbus "))]) == 6
