"""Subscribe by exact name, glob and regular expression; watch the counters.

One process plays both parts (``receive_own=True``)::

    python examples/patterns.py
"""

from __future__ import annotations

import asyncio
import contextlib
import re

import asyncbus


async def main() -> None:
    async with asyncbus.connect(receive_own=True) as bus, contextlib.AsyncExitStack() as stack:
        subscriptions = {
            "exact": bus.subscribe("status"),
            "glob": bus.subscribe("sensors/*"),
            "regex": bus.subscribe(r"sensors/temp\d+", regex=True),
            "compiled": bus.subscribe(re.compile("status|sensors/humidity")),
            "tiny queue": bus.subscribe("sensors/*", maxsize=2, policy="drop_oldest"),
        }
        for sub in subscriptions.values():
            stack.push_async_exit(sub)  # close it when the block ends

        for name in ["sensors/temp1", "sensors/temp2", "sensors/humidity", "status"]:
            await bus.publish(name, name.encode())

        for label, sub in subscriptions.items():
            topics = []
            while sub.statistics().queued:
                msg = await sub.receive()
                topics.append(msg.topic)

            print(f"{label:>10}: {topics} dropped={sub.statistics().dropped}")

        print(f"published={bus.statistics().published}")


if __name__ == "__main__":
    asyncio.run(main())
