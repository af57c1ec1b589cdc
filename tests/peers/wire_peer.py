"""A raw UDP multicast listener that records LCM datagrams as they are on the wire.

It shares no code with asyncbus or LCM: it joins the group on 127.0.0.1 with a plain
socket, decodes the two LCM headers itself (``LC02`` short message, ``LC03``
fragment) and reports every datagram, so tests can compare sequence numbers and
fragment layouts between LCM and asyncbus. Stops after ``--datagrams`` datagrams.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import time
from typing import Any
from urllib.parse import urlsplit

from tests.peers.common import argument_parser, log, ready, result

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; root may exceed rmem_max
RECEIVE_BUFFER = 32 * 2**20  # holds every datagram of a test even if we never read
SHORT = struct.Struct(">II")  # magic, sequence
FRAGMENT = struct.Struct(">IIIIHH")  # magic, sequence, size, offset, number, count


def decode(datagram: bytes) -> dict[str, Any]:
    """The header fields of one LCM datagram, and a digest of it with the sequence zeroed."""
    magic = datagram[:4].decode("latin-1")
    seq = SHORT.unpack_from(datagram)[1]
    fields: dict[str, Any] = {"magic": magic, "seq": seq, "length": len(datagram)}
    body_at = SHORT.size
    if magic == "LC03":
        _, _, size, offset, number, count = FRAGMENT.unpack_from(datagram)
        fields |= {"size": size, "offset": offset, "fragment": number, "fragments": count}
        body_at = FRAGMENT.size

    if magic == "LC02" or fields.get("fragment") == 0:
        end = datagram.index(b"\0", body_at)
        fields["channel"] = datagram[body_at:end].decode()

    unnumbered = datagram[:4] + bytes(4) + datagram[8:]
    fields["digest"] = hashlib.sha256(unnumbered).hexdigest()
    return fields


def main() -> None:
    parser = argument_parser(__doc__ or "")
    parser.add_argument("--datagrams", type=int, required=True)
    args = parser.parse_args()
    url = urlsplit(args.url)
    group, port = url.hostname or "", url.port or 0
    datagrams: list[dict[str, Any]] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
        sock.bind((group, port))
        membership = socket.inet_aton(group) + socket.inet_aton("127.0.0.1")
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        ready()
        deadline = time.monotonic() + args.deadline
        while len(datagrams) < args.datagrams:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log(f"wire peer: deadline passed with {len(datagrams)}/{args.datagrams}")
                break

            sock.settimeout(remaining)
            try:
                datagram, (host, sport) = sock.recvfrom(65_536)
            except TimeoutError:
                continue

            fields = decode(datagram)
            if fields.get("channel") != "LCM_SELF_TEST":  # an LCM peer's startup check
                datagrams.append({"source": f"{host}:{sport}", **fields})

    result(datagrams=datagrams)


if __name__ == "__main__":
    main()
