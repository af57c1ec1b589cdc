"""Pass open files and large frames between processes on an AF_UNIX bus.

In one terminal run ``python examples/fd_bus.py receive``, in another
``python examples/fd_bus.py send``. The sender passes two descriptors (a memfd
holding a configuration, and the write end of a pipe to answer through) and
publishes a 16 MiB frame written in place in shared memory: the receiver maps
the very same memory, with no copy.
"""

from __future__ import annotations

import argparse
import asyncio
import os

import asyncbus

FRAME_SIZE = 16 * 1024 * 1024


def render(frame: memoryview) -> None:
    """Draw a frame (stands in for a camera or a renderer writing into a buffer)."""
    row = bytes([7]) * (1 << 20)
    for start in range(0, len(frame), len(row)):
        frame[start : start + len(row)] = row

    frame[-1] = 9


async def receive(url: str) -> None:
    async with (
        asyncbus.connect(url) as bus,
        bus.subscribe("config") as config,
        bus.subscribe("frames") as frames,
    ):
        with await config.receive() as msg:  # the with block releases what we did not take
            memfd, answer = msg.take_fds()  # ours now: we close them

        with os.fdopen(memfd, "rb") as file:
            print(
                f"config: {file.read().decode()} (close-on-exec: {not os.get_inheritable(memfd)})"
            )

        with await frames.receive() as msg:  # msg.data is only valid inside this block
            data = msg.data
            kind = type(data).__name__
            print(f"frame: {len(data)} bytes, first {data[0]}, last {data[-1]}, {kind}")

        with os.fdopen(answer, "wb") as pipe:
            pipe.write(f"thanks from pid {os.getpid()}".encode())


async def send(url: str) -> None:
    async with asyncbus.connect(url) as bus:
        async with asyncio.timeout(10):
            await bus.topic("config").wait_subscribers(1)
            await bus.topic("frames").wait_subscribers(1)

        memfd = os.memfd_create("config")
        os.write(memfd, b"exposure=4ms")
        os.lseek(memfd, 0, os.SEEK_SET)
        reply, answer = os.pipe()
        await bus.topic("config").publish(b"", fds=[memfd, answer])
        os.close(memfd)  # the receiver got its own copies
        os.close(answer)

        async with bus.loan(FRAME_SIZE) as loan:
            render(loan.data)  # written in place, in the memory subscribers will map
            await bus.topic("frames").publish(loan)

        with os.fdopen(reply, "rb") as pipe:
            answered = await asyncio.to_thread(pipe.read)  # until the receiver closes it
            print(f"reply: {answered.decode()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=["receive", "send"])
    parser.add_argument("--url", default="unix:@asyncbus-fd-example")
    args = parser.parse_args()
    asyncio.run(receive(args.url) if args.role == "receive" else send(args.url))


if __name__ == "__main__":
    main()
