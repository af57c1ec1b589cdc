"""The reference peer: the ``lcm`` package from PyPI (LCM's C library underneath).

``publish`` sends the plan in order; ``subscribe`` prints ``READY`` once LCM's receive
socket has joined the group, then reports every message on the plan's channels;
``probe`` only reports whether ``lcm.LCM(url)`` can be created.
"""

from __future__ import annotations

import time
from typing import Any

import lcm

from tests.peers.common import (
    argument_parser,
    describe,
    log,
    plan_from_json,
    ready,
    result,
    udp_sockets,
)


def main() -> None:
    args = argument_parser(__doc__ or "").parse_args()
    plan = plan_from_json(args.plan)
    if args.role == "probe":
        try:
            lcm.LCM(args.url)
        except Exception as exc:  # lcm raises a bare RuntimeError("Couldn't create LCM")
            result(ok=False, error=f"{type(exc).__name__}: {exc}")
        else:
            result(ok=True, error=None)

        return

    lc = lcm.LCM(args.url)
    if args.role == "publish":
        for message in plan:
            lc.publish(message.channel, message.payload)

        # LCM's send socket, bound by the first send: the source of its datagrams
        result(published=len(plan), senders=[address for address, _ in udp_sockets()])
        return

    received: list[dict[str, Any]] = []

    def handler(channel: str, data: bytes) -> None:
        received.append(describe(channel, data))

    # LCM's subscribe() creates, binds and joins the receive socket and runs LCM's
    # self test (a round trip through the group) before it returns.
    for channel in sorted({m.channel for m in plan}):
        lc.subscribe(channel, handler)  # a regex; plan channels are [A-Z0-9_] only

    ready()
    deadline = time.monotonic() + args.deadline
    while len(received) < len(plan):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log(f"lcm subscriber: deadline passed with {len(received)}/{len(plan)} messages")
            break

        lc.handle_timeout(max(1, int(remaining * 1000)))

    group_and_port = args.url.split("//", 1)[1].split("?", 1)[0]
    rcvbuf = [size for address, size in udp_sockets() if address == group_and_port]
    result(received=received, rcvbuf=rcvbuf[0] if rcvbuf else None)


if __name__ == "__main__":
    main()
