"""Hand an open file to another process over a socketpair (SCM_RIGHTS).

Run ``python examples/pass_fd.py``. The parent writes a line to an anonymous
temporary file (it has no name another process could open) and starts a copy of
this script as its child, which inherits one end of a socketpair. The parent
sends the file's descriptor with ``asyncbus.send_fds``; the child receives it with
``asyncbus.recv_fds``, reads the file and appends a line, then answers "done".
Both descriptors refer to the same open file, offset included.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile

import asyncbus


async def parent() -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs, tempfile.TemporaryFile("w+") as file:
        ours.setblocking(False)
        file.write("written by the parent\n")
        file.flush()
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "child", str(theirs.fileno()), pass_fds=[theirs.fileno()]
        )
        theirs.close()  # the child has its own copy
        await asyncbus.send_fds(ours, [b"here is a file"], [file.fileno()])
        async with asyncio.timeout(10):
            answer = await loop.sock_recv(ours, 100)
            await child.wait()

        file.seek(0)  # the child moved the shared offset to the end
        print(f"parent: child said {answer.decode()!r}; the file holds {file.read().splitlines()}")


def use_file(fd: int) -> list[str]:
    """Read the file through ``fd``, append a line, and close ``fd``."""
    with open(fd, "r+", closefd=True) as file:  # the file object owns the descriptor now
        file.seek(0)
        lines = file.read().splitlines()
        file.write("appended by the child\n")

    return lines


async def child(fileno: int) -> None:
    loop = asyncio.get_running_loop()
    with socket.socket(fileno=fileno) as sock:
        sock.setblocking(False)
        # The received descriptors are ours to close, and close-on-exec.
        data, fds, _, _ = await asyncbus.recv_fds(sock, 100, maxfds=1)
        inheritable = os.get_inheritable(fds[0])
        print(f"child: got {data.decode()!r} and {len(fds)} fd, inheritable: {inheritable}")
        print(f"child: the file holds {use_file(fds[0])}")
        await loop.sock_sendall(sock, b"done")


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        asyncio.run(child(int(sys.argv[2])))
    else:
        asyncio.run(parent())
