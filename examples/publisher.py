"""Publish numbered messages on a topic.

Start ``examples/subscriber.py`` in another terminal first, then run::

    python examples/publisher.py --count 5

The bus URL comes from the ASYNCBUS_URL environment variable, else the default
(loopback multicast, LCM's group and port).
"""

from __future__ import annotations

import argparse
import asyncio

import asyncbus


async def main() -> None:
    parser = argparse.ArgumentParser(description="Publish numbered messages.")
    parser.add_argument("--topic", default="greetings", help="topic to publish on")
    parser.add_argument("--count", type=int, default=10, help="how many messages")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between them")
    args = parser.parse_args()

    async with asyncbus.connect() as bus:
        topic = bus.topic(args.topic)
        for n in range(args.count):
            if n and args.interval:
                await asyncio.sleep(args.interval)

            await topic.publish(f"hello {n}".encode())
            print(f"published 'hello {n}' on {args.topic!r}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
