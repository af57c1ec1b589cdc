"""An asyncbus peer, on the default asyncio loop or on uvloop (``--loop``).

``publish`` sends the plan in order; ``subscribe`` prints ``READY`` once the bus is open
(socket bound, group joined) and subscribed to the plan's channels, then reports every
message with its sequence number and sender. Both report the bus's statistics and any
error that reached the loop's exception handler.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from typing import TYPE_CHECKING, Any

import uvloop

import asyncbus
from tests.peers.common import (
    argument_parser,
    describe,
    log,
    plan_from_json,
    ready,
    result,
    udp_sockets,
)

if TYPE_CHECKING:
    from collections.abc import Callable

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def _fields(statistics: object) -> dict[str, Any]:
    if dataclasses.is_dataclass(statistics) and not isinstance(statistics, type):
        return dataclasses.asdict(statistics)

    return {"repr": repr(statistics)}


async def publish(bus: asyncbus.Bus, args: Any) -> dict[str, Any]:
    plan = plan_from_json(args.plan)
    for message in plan:
        await bus.publish(message.channel, message.payload)

    return {"published": len(plan)}


async def subscribe(bus: asyncbus.Bus, args: Any) -> dict[str, Any]:
    plan = plan_from_json(args.plan)
    channels = re.compile("|".join(sorted({re.escape(m.channel) for m in plan})))
    received: list[dict[str, Any]] = []
    async with bus.subscribe(channels, maxsize=len(plan) + 16) as subscription:
        ready()
        try:
            async with asyncio.timeout(args.deadline):
                while len(received) < len(plan):
                    msg = await subscription.receive()
                    received.append(
                        describe(msg.topic, msg.data) | {"seq": msg.seq, "sender": str(msg.sender)}
                    )
        except TimeoutError:
            log(f"asyncbus subscriber: deadline passed with {len(received)}/{len(plan)}")

        return {"received": received, "subscription": _fields(subscription.statistics())}


async def main(args: Any) -> None:
    loop = asyncio.get_running_loop()
    errors: list[str] = []

    def handler(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        errors.append(repr(context))
        log("loop exception handler:", context)

    loop.set_exception_handler(handler)
    role = publish if args.role == "publish" else subscribe
    async with asyncbus.connect(args.url) as bus:
        sockets = udp_sockets()
        fields = await role(bus, args)
        fields["sockets"] = sockets
        fields["statistics"] = _fields(bus.statistics())
        fields["url"] = bus.url

    await asyncio.sleep(0)  # let callbacks scheduled by aclose() run before judging
    result(**fields, loop=f"{type(loop).__module__}.{type(loop).__qualname__}", errors=errors)


if __name__ == "__main__":
    parser = argument_parser(__doc__ or "")
    parser.add_argument("--loop", choices=sorted(LOOPS), required=True)
    arguments = parser.parse_args()
    # debug=False: PYTHONDEVMODE (set by nox) would otherwise log slow callbacks to stderr.
    with asyncio.Runner(debug=False, loop_factory=LOOPS[arguments.loop]) as runner:
        runner.run(main(arguments))
