"""Lossless delivery, back-pressure and the sender's identity on an AF_UNIX bus.

In one terminal run ``python examples/unix_bus.py subscribe``, in another
``python examples/unix_bus.py publish``. The publisher waits until the subscriber
is there, then sends as fast as it can; the slow subscriber's ``block`` policy
makes it wait instead of losing messages.
"""

from __future__ import annotations

import argparse
import asyncio
import os

import asyncbus

COUNT = 5


async def subscribe(url: str) -> None:
    async with asyncbus.connect(url) as bus:
        # block: when this queue is full, publishers wait for us (nothing is lost).
        async with bus.subscribe("jobs", maxsize=2, policy="block") as jobs:
            for _ in range(COUNT):
                msg = await jobs.receive()
                await asyncio.sleep(0.01)  # a slow consumer
                sender = msg.sender  # pid, uid and gid as the kernel attests them
                same_user = sender.uid == os.geteuid()
                print(f"#{msg.seq} {msg.data.decode()} from pid {sender.pid}, my user: {same_user}")

        print(f"gaps={bus.statistics().gaps}")


async def publish(url: str) -> None:
    async with asyncbus.connect(url) as bus:
        jobs = bus.topic("jobs")
        async with asyncio.timeout(10):
            await jobs.wait_subscribers(1)  # no message goes out before someone listens

        for n in range(COUNT):
            await jobs.publish(f"job {n}".encode())

        print(f"published {COUNT}, pid {os.getpid()}, send_drops={bus.statistics().send_drops}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=["subscribe", "publish"])
    parser.add_argument("--url", default="unix:@asyncbus-example")
    args = parser.parse_args()
    asyncio.run(subscribe(args.url) if args.role == "subscribe" else publish(args.url))


if __name__ == "__main__":
    main()
