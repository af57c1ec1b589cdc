"""Print the messages published on topics that match a pattern.

Run this first, then ``examples/publisher.py`` in another terminal::

    python examples/subscriber.py --count 5

The bus URL comes from the ASYNCBUS_URL environment variable, else the default
(loopback multicast, LCM's group and port).
"""

from __future__ import annotations

import argparse
import asyncio

import asyncbus


async def main() -> None:
    parser = argparse.ArgumentParser(description="Print messages on matching topics.")
    parser.add_argument("pattern", nargs="?", default="greetings", help="topic or glob")
    parser.add_argument("--count", type=int, default=0, help="stop after N (0: never)")
    args = parser.parse_args()

    async with asyncbus.connect() as bus, bus.subscribe(args.pattern) as sub:
        # The subscription exists from here on: messages published from now are ours.
        print(f"listening on {bus.url} for {args.pattern!r}", flush=True)
        received = 0
        async for msg in sub:
            text = msg.data.decode(errors="replace")
            print(f"{msg.topic} #{msg.seq} from {msg.sender}: {text}", flush=True)
            received += 1
            if received == args.count:
                break

        stats = bus.statistics()
        print(f"losses: gaps={stats.gaps} kernel_drops={stats.kernel_drops}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
