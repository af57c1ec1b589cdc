"""What every peer shares: the message plan, deterministic payloads, and the line protocol.

A peer talks to its driver on stdout, one line per event:

* ``READY`` once it can receive (its socket is bound and has joined the group);
* ``RESULT {json}`` once, last, with what it saw.

Everything else (diagnostics) goes to stderr. Payloads are never sent over the pipes:
both sides derive them from the plan and compare SHA-256 digests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any

READY = "READY"
RESULT = "RESULT "


@dataclass(frozen=True)
class PlannedMessage:
    """One message of a test: its channel and payload size; the payload follows from both."""

    index: int
    channel: str
    size: int

    @property
    def payload(self) -> bytes:
        """Deterministic, incompressible bytes: SHAKE-256 of the message's identity."""
        seed = f"asyncbus-interop/{self.index}/{self.channel}/{self.size}".encode()
        return hashlib.shake_256(seed).digest(self.size)

    def describe(self) -> dict[str, Any]:
        """What a receiver should report for this message (no ``seq``: senders number)."""
        return describe(self.channel, self.payload)


def describe(channel: str, data: bytes) -> dict[str, Any]:
    """The JSON-able identity of a received message: channel, size and digest."""
    return {"channel": channel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def plan_to_json(plan: list[PlannedMessage]) -> str:
    return json.dumps([[m.channel, m.size] for m in plan])


def plan_from_json(text: str) -> list[PlannedMessage]:
    return [PlannedMessage(i, channel, size) for i, (channel, size) in enumerate(json.loads(text))]


def argument_parser(description: str) -> argparse.ArgumentParser:
    """Options every peer takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("role", choices=["publish", "subscribe", "probe"])
    parser.add_argument("--url", required=True, help="bus URL")
    parser.add_argument("--plan", default="[]", help="JSON list of [channel, size]")
    parser.add_argument(
        "--deadline", type=float, default=15.0, help="seconds a subscriber waits for the plan"
    )
    return parser


def ready() -> None:
    print(READY, flush=True)


def result(**fields: Any) -> None:
    print(RESULT + json.dumps(fields), flush=True)


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def udp_sockets() -> list[tuple[str, int]]:
    """Local address and SO_RCVBUF of each of our UDP sockets (for LCM, which hides them)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue

            # family and type are read from the descriptor (a duplicate, closed here)
            with socket.socket(fileno=os.dup(int(name))) as s:
                if s.family != socket.AF_INET or s.type != socket.SOCK_DGRAM:
                    continue

                host, port = s.getsockname()
                found.append((f"{host}:{port}", s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)))
        except OSError:
            continue

    return found
