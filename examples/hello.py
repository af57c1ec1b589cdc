"""One process publishes three messages and reads them with ``async for msg in topic``."""

from __future__ import annotations

import asyncio

import asyncbus


async def main() -> None:
    # receive_own=True: deliver this bus's own publications to its own subscriptions.
    async with asyncbus.connect(receive_own=True) as bus:
        topic = bus.topic("greetings")

        async def publish() -> None:
            for n in range(3):
                await topic.publish(f"hello {n}".encode())

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(publish())  # starts once the loop below has subscribed
            async for msg in topic:
                print(f"{msg.topic}: {msg.data.decode()}")
                if msg.data == b"hello 2":
                    break


if __name__ == "__main__":
    asyncio.run(main())
