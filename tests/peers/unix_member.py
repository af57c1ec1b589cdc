"""An asyncbus member in a process of its own, driven line by line (for the unix security tests).

Run as ``python -m tests.peers.unix_member --url URL [--subscribe PATTERN]``, possibly as
another user (``setpriv``). It opens the bus, subscribes, and prints one JSON object per
line on stdout:

* ``{"event": "ready", "pid", "uid", "gid", "sender"}`` once open and subscribed: the
  process's pid and effective ids, and ``sender``, the bus's own `asyncbus.Sender`
  (``{"address", "pid", "uid", "gid"}``: who others see in ``Message.sender``);
* one answer per command read from stdin (one JSON object per line):

  - ``{"do": "publish", "topic": T, "data": TEXT}`` -> ``{"event": "published"}``;
  - ``{"do": "wait_peers", "count": N, "timeout": S}`` -> ``{"event": "peers", "ok": bool}``;
  - ``{"do": "wait_subscribers", "topic": T, "count": N, "timeout": S}`` ->
    ``{"event": "subscribers", "ok": bool}``;
  - ``{"do": "receive", "count": N, "timeout": S}`` -> ``{"event": "received",
    "messages": [{"topic", "data", "seq", "pid", "uid", "gid"}, ...]}`` (fewer on timeout);
  - ``{"do": "statistics"}`` -> ``{"event": "statistics", ...the counters}``;
  - ``{"do": "close"}`` -> closes the bus, prints ``{"event": "closed", ...counters}``, exits.

Errors go to stderr, and the process exits with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from typing import Any

import uvloop

import asyncbus


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def read_command() -> dict[str, Any] | None:
    line = await asyncio.to_thread(sys.stdin.readline)
    if not line:
        return None

    command: dict[str, Any] = json.loads(line)
    return command


async def wait(awaitable: Any, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await awaitable
    except TimeoutError:
        return False

    return True


async def main(args: argparse.Namespace) -> None:
    async with asyncbus.connect(args.url) as bus:
        subscription = bus.subscribe(args.subscribe, maxsize=1024) if args.subscribe else None
        sender = bus.sender
        assert sender is not None
        say(
            event="ready",
            pid=os.getpid(),
            uid=os.geteuid(),
            gid=os.getegid(),
            sender=dataclasses.asdict(sender),
        )
        while (command := await read_command()) is not None:
            action = command["do"]
            if action == "publish":
                await bus.publish(command["topic"], command["data"].encode())
                say(event="published")
            elif action == "wait_peers":
                ok = await wait(bus.wait_peers(command["count"]), command["timeout"])
                say(event="peers", ok=ok)
            elif action == "wait_subscribers":
                topic = bus.topic(command["topic"])
                ok = await wait(topic.wait_subscribers(command["count"]), command["timeout"])
                say(event="subscribers", ok=ok)
            elif action == "receive":
                assert subscription is not None, "start with --subscribe"
                messages = []
                try:
                    async with asyncio.timeout(command["timeout"]):
                        while len(messages) < command["count"]:
                            msg = await subscription.receive()
                            messages.append(
                                {
                                    "topic": msg.topic,
                                    "data": msg.data.decode("utf-8", "backslashreplace"),
                                    "seq": msg.seq,
                                    "pid": msg.sender.pid,
                                    "uid": msg.sender.uid,
                                    "gid": msg.sender.gid,
                                }
                            )
                except TimeoutError:
                    pass

                say(event="received", messages=messages)
            elif action == "statistics":
                say(event="statistics", **dataclasses.asdict(bus.statistics()))
            elif action == "close":
                break
            else:
                raise ValueError(f"unknown command {action!r}")

        if subscription is not None:
            await subscription.aclose()

    say(event="closed", **dataclasses.asdict(bus.statistics()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--subscribe")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    arguments = parser.parse_args()
    factory = uvloop.new_event_loop if arguments.loop == "uvloop" else None
    with asyncio.Runner(debug=False, loop_factory=factory) as runner:
        runner.run(main(arguments))
