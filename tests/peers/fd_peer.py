"""The Python twin of ``tests/peers/fd_peer.c``: same arguments, same output, same exit codes.

Run as ``python -m tests.peers.fd_peer SOCKFD send DIR`` or
``python -m tests.peers.fd_peer SOCKFD receive MAXFDS`` with an AF_UNIX socket
inherited as SOCKFD (see the C file for what each mode does and prints). It
passes descriptors with the standard library's blocking ``socket.send_fds`` and
``socket.recv_fds``, so ``tests/test_sockio.py`` checks that asyncbus and the
standard library understand each other across processes.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import sys

DEADLINE = 10.0  # seconds to wait for a message, as in the C peer


def _send(sock: socket.socket, directory: str) -> int:
    path = os.path.join(directory, "from-c.txt")  # the C peer's name: one test checks both
    file = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.write(file, b"file written by C\n")
    read_end, write_end = os.pipe()
    socket.send_fds(sock, [b"from C"], [read_end, file])
    os.write(write_end, b"pipe written by C\n")
    for fd in (read_end, write_end, file):
        os.close(fd)

    print("sent 2")
    return 0


def _use(index: int, fd: int) -> str:
    info = os.fstat(fd)
    line = f"fd {index} ino {info.st_ino} dev {info.st_dev}"
    mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    regular = stat.S_ISREG(info.st_mode)
    if regular and mode in (os.O_RDONLY, os.O_RDWR):
        return f"{line} content {os.pread(fd, 4096, 0).hex()}"

    if not regular and mode in (os.O_WRONLY, os.O_RDWR):
        os.write(fd, f"C wrote to fd {index}\n".encode())
        return f"{line} wrote"

    return f"{line} skipped"


def _receive(sock: socket.socket, maxfds: int) -> int:
    sock.settimeout(DEADLINE)
    try:
        data, fds, flags, _ = socket.recv_fds(sock, 65_536, maxfds, socket.MSG_CMSG_CLOEXEC)
    except TimeoutError:
        print(f"fd_peer: nothing arrived within {DEADLINE} s", file=sys.stderr)
        return 3

    print(f"data {len(data)} {data.hex()}")
    print(f"fds {len(fds)}")
    print(f"truncated {int(bool(flags & socket.MSG_CTRUNC))}")
    for index, fd in enumerate(fds):
        try:
            print(_use(index, fd))
        finally:
            os.close(fd)

    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("send", "receive"):
        print("usage: fd_peer SOCKFD send DIR | fd_peer SOCKFD receive MAXFDS", file=sys.stderr)
        return 2

    with socket.socket(fileno=int(argv[0])) as sock:
        if argv[1] == "send":
            return _send(sock, argv[2])

        return _receive(sock, int(argv[2]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
