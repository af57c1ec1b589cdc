"""asyncbus: asyncio publish/subscribe between processes on one Linux host.

In one process, print what others publish on a topic::

    async with asyncbus.connect() as bus:
        async for msg in bus.topic("greetings"):
            print(msg.sender, msg.data)

and in another, publish to it::

    async with asyncbus.connect() as bus:
        await bus.topic("greetings").publish(b"hello")
"""

from __future__ import annotations

from ._bus import Bus, BusStatistics, Topic, connect
from ._core.url import DEFAULT_URL
from ._exceptions import (
    AsyncBusError,
    BrokenTransportError,
    BusPermissionError,
    BusyError,
    ClosedError,
    InvalidURLError,
    LocalProtocolError,
    MessageTooLargeError,
    RemoteProtocolError,
    UnsupportedError,
    WouldBlock,
)
from ._message import Message, Sender
from ._subscription import OverflowPolicy, Subscription, SubscriptionStatistics
from ._transports.sockio import recv_fds, send_fds, sock_recvmsg, sock_sendmsg

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_URL",
    "AsyncBusError",
    "BrokenTransportError",
    "Bus",
    "BusPermissionError",
    "BusStatistics",
    "BusyError",
    "ClosedError",
    "InvalidURLError",
    "LocalProtocolError",
    "Message",
    "MessageTooLargeError",
    "OverflowPolicy",
    "RemoteProtocolError",
    "Sender",
    "Subscription",
    "SubscriptionStatistics",
    "Topic",
    "UnsupportedError",
    "WouldBlock",
    "__version__",
    "connect",
    "recv_fds",
    "send_fds",
    "sock_recvmsg",
    "sock_sendmsg",
]
