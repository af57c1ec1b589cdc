"""Run peer processes in order and report what each said: the driver inside a namespace.

Input (argv[1]): JSON ``{"timeout": seconds, "peers": [{"name", "argv", "wait"}, ...]}``.
Peers start in list order. ``wait`` says what to wait for before starting the next one:
``"ready"`` (its ``READY`` line), ``"exit"`` (it has exited) or ``null`` (nothing). Then
every peer is waited for. On a timeout, or a peer that exits before it is ready, all
peers still running are killed. Never sleeps: every wait is on a pipe or a process.

Output (stdout): one JSON document with each peer's return code, ``RESULT`` fields,
other stdout lines and stderr, the error (if any), and this network namespace's UDP
counters from ``/proc/net/snmp`` (``RcvbufErrors`` counts datagrams the kernel dropped
because a receive buffer was full).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from tests.peers.common import READY, RESULT

KILL_GRACE = 5.0  # seconds to collect a killed peer's pipes


@dataclass
class Peer:
    name: str
    argv: list[str]
    wait: str | None
    process: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    result: dict[str, Any] | None = None
    stdout: list[str] = field(default_factory=list)
    stderr: str = ""
    task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Start the process and collect its output until it exits."""
        self.process = process = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        assert process.stdout is not None
        assert process.stderr is not None
        stderr = asyncio.create_task(process.stderr.read())
        try:
            async for raw in process.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                if line == READY:
                    self.ready.set()
                elif line.startswith(RESULT):
                    self.result = json.loads(line.removeprefix(RESULT))
                else:
                    self.stdout.append(line)

            await process.wait()
        finally:
            self.stderr = (await stderr).decode(errors="replace")

    def report(self) -> dict[str, Any]:
        return {
            "returncode": None if self.process is None else self.process.returncode,
            "ready": self.ready.is_set(),
            "result": self.result,
            "stdout": self.stdout,
            "stderr": self.stderr,
        }


class PeerFailed(Exception):
    pass


async def start_in_order(peers: list[Peer]) -> None:
    # asyncio.wait(), never `await task` or gather(): when the timeout cancels us, the
    # peers' tasks must go on collecting output until main() has killed the processes.
    for peer in peers:
        peer.task = task = asyncio.create_task(peer.run())
        if peer.wait == "ready":
            ready = asyncio.create_task(peer.ready.wait())
            try:
                await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ready.cancel()

            if not peer.ready.is_set():
                raise PeerFailed(f"{peer.name} exited before it was ready")
        elif peer.wait == "exit":
            await asyncio.wait({task})

    await asyncio.wait([peer.task for peer in peers if peer.task is not None])


def udp_counters() -> dict[str, int]:
    with open("/proc/net/snmp") as snmp:
        rows = [line.split() for line in snmp if line.startswith("Udp:")]

    return dict(zip(rows[0][1:], map(int, rows[1][1:]), strict=True))


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    peers = [Peer(p["name"], p["argv"], p.get("wait")) for p in spec["peers"]]
    error = None
    try:
        async with asyncio.timeout(spec["timeout"]):
            await start_in_order(peers)
    except TimeoutError:
        running = [p.name for p in peers if p.process and p.process.returncode is None]
        error = f"timed out after {spec['timeout']} s; killed {running}"
    except Exception as exc:  # reported, with every peer's output, to the test
        error = f"{type(exc).__name__}: {exc}"
    finally:
        for peer in peers:
            if peer.process is not None and peer.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    peer.process.kill()

        tasks = [peer.task for peer in peers if peer.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=KILL_GRACE)

        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() and error is None:
                error = f"{type(task.exception()).__name__}: {task.exception()}"

    return {
        "error": error,
        "peers": {peer.name: peer.report() for peer in peers},
        "udp": udp_counters(),
    }


if __name__ == "__main__":
    report = asyncio.run(main(json.loads(sys.argv[1])))
    print(json.dumps(report))
