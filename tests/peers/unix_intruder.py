"""A stranger on an abstract unix bus, on raw sockets (for the unix security tests).

Run as another user: ``python -m tests.peers.unix_intruder --bus NAME --scheme unix``.
It binds a socket where members look for each other (``\\0asyncbus/NAME/...``), so
members that join after it find it, and waits for commands on stdin, one per line:

* ``attack``: connect to every member listed in ``/proc/net/unix`` and send it HELLO
  (with REPLY), SUBSCRIBE (every topic), a message on topic ``t`` and BYE, then try to
  send a message with forged credentials (uid 0). Answers
  ``{"event": "attacked", "targets": [...], "sent": {...}, "forged": ERRNO-NAME|"sent"}``.
* ``speak-for HEX``: claim to be the member whose address is the hex string: send every
  other member HELLO (without REPLY) with that address, then an empty SUBSCRIBE (it
  wants nothing any more). Answers ``{"event": "spoke", "targets": [...], "sent": {...}}``.
* ``report``: read everything that reached this stranger so far (accepting pending
  connections on ``seqpacket``). Answers ``{"event": "report", "frames": [HEX, ...],
  "connections": N}``.

It imports nothing from asyncbus: the frames are built here, byte by byte.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import struct
import sys
from typing import Any

_SO_ACCEPTCON = 0x10000  # /proc/net/unix "Flags" of a listening socket
_PROC_TYPES = {"unix": "0002", "seqpacket": "0005"}


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def frames(own: bytes) -> list[bytes]:
    hello = b"ABHL" + struct.pack(">BBH", 1, 1, len(own)) + own
    subscribe_all = b"ABSB" + struct.pack(">H", 1) + struct.pack(">BBH", 3, 2, 0)
    message = b"LC02" + struct.pack(">I", 0) + b"t\0injected"
    return [hello, subscribe_all, message, b"ABBY"]


def members(bus: str, scheme: str, own: bytes) -> list[bytes]:
    prefix = f"@asyncbus/{bus}/"
    found = []
    with open("/proc/net/unix", encoding="utf-8", errors="surrogateescape") as table:
        next(table)
        for line in table:
            fields = line.split()
            if len(fields) < 8 or fields[4] != _PROC_TYPES[scheme]:
                continue

            if not fields[7].startswith(prefix):
                continue

            if scheme == "seqpacket" and not int(fields[3], 16) & _SO_ACCEPTCON:
                continue

            address = b"\0" + fields[7][1:].encode("utf-8", "surrogateescape")
            if address != own and address not in found:
                found.append(address)

    return found


def outcome(action: Any, *args: Any) -> str:
    """Do ``action(*args)``; return ``"sent"``, or the errno's name if it failed."""
    try:
        action(*args)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))

    return "sent"


class Intruder:
    def __init__(self, bus: str, scheme: str) -> None:
        self.bus = bus
        self.scheme = scheme
        kind = socket.SOCK_DGRAM if scheme == "unix" else socket.SOCK_SEQPACKET
        self.kind = kind
        self.own = f"\0asyncbus/{bus}/intruder-{os.getpid()}".encode()
        self.sock = socket.socket(socket.AF_UNIX, kind)
        self.sock.bind(self.own)
        if kind == socket.SOCK_SEQPACKET:
            self.sock.listen(16)

        self.sock.setblocking(False)
        self.links: list[socket.socket] = []
        self.connections = 0

    def attack(self) -> None:
        targets = members(self.bus, self.scheme, self.own)
        sent: dict[str, list[str]] = {}
        forged = "no target"
        for target in targets:
            link = socket.socket(socket.AF_UNIX, self.kind)
            link.settimeout(5)
            self.links.append(link)
            results = [outcome(link.connect, target)]
            results.extend(outcome(link.send, frame) for frame in frames(self.own))
            # Claim to be root: the kernel must refuse (no CAP_SETUID / CAP_SYS_ADMIN).
            creds = struct.pack("=iII", os.getpid(), 0, 0)
            forged = outcome(
                link.sendmsg,
                [b"LC02\0\0\0\x01t\0forged"],
                [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)],
            )
            sent[target[1:].decode()] = results

        say(event="attacked", targets=sorted(sent), sent=sent, forged=forged)

    def speak_for(self, address: bytes) -> None:
        hello = b"ABHL" + struct.pack(">BBH", 1, 0, len(address)) + address
        nothing = b"ABSB" + struct.pack(">H", 0)
        sent: dict[str, list[str]] = {}
        for target in members(self.bus, self.scheme, self.own):
            if target == address:
                continue

            link = socket.socket(socket.AF_UNIX, self.kind)
            link.settimeout(5)
            self.links.append(link)
            results = [outcome(link.connect, target)]
            results.extend(outcome(link.send, frame) for frame in (hello, nothing))
            sent[target[1:].decode()] = results

        say(event="spoke", targets=sorted(sent), sent=sent)

    def report(self) -> None:
        received: list[str] = []
        if self.kind == socket.SOCK_DGRAM:
            received.extend(data.hex() for data in drain(self.sock))
        else:
            while True:
                try:
                    conn, _ = self.sock.accept()
                except BlockingIOError:
                    break

                self.connections += 1
                with conn:
                    conn.setblocking(False)
                    received.extend(data.hex() for data in drain(conn))

        for link in self.links:  # members never write on a link; check anyway
            link.setblocking(False)
            received.extend(data.hex() for data in drain(link))

        say(event="report", frames=received, connections=self.connections)

    def close(self) -> None:
        for link in self.links:
            link.close()

        self.sock.close()


def drain(sock: socket.socket) -> list[bytes]:
    found = []
    while True:
        try:
            data = sock.recv(65_536)
        except OSError:  # nothing more (EAGAIN), or the connection broke
            return found

        if not data:
            return found

        found.append(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bus", required=True)
    parser.add_argument("--scheme", choices=sorted(_PROC_TYPES), required=True)
    args = parser.parse_args()
    intruder = Intruder(args.bus, args.scheme)
    say(event="ready", address=intruder.own[1:].decode(), pid=os.getpid(), uid=os.geteuid())
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "attack":
                intruder.attack()
            elif command.startswith("speak-for "):
                intruder.speak_for(bytes.fromhex(command.split()[1]))
            elif command == "report":
                intruder.report()
            elif command == "quit":
                break
    finally:
        intruder.close()


if __name__ == "__main__":
    main()
