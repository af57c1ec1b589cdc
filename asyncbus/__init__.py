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
    AncillaryTruncatedError,
    AsyncBusError,
    BrokenTransportError,
    BusPermissionError,
    BusyError,
    ClosedError,
    FDBudgetError,
    InvalidURLError,
    LocalProtocolError,
    MessageTooLargeError,
    RemoteProtocolError,
    UnsupportedError,
    WouldBlock,
)
from ._loan import Loan
from ._message import FDBudget, Message, Sender, fd_budget
from ._subscription import OverflowPolicy, Subscription, SubscriptionStatistics
from ._transports.sockio import recv_fds, send_fds, sock_recvmsg, sock_sendmsg

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_URL",
    "AncillaryTruncatedError",
    "AsyncBusError",
    "BrokenTransportError",
    "Bus",
    "BusPermissionError",
    "BusStatistics",
    "BusyError",
    "ClosedError",
    "FDBudget",
    "FDBudgetError",
    "InvalidURLError",
    "Loan",
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
    "fd_budget",
    "recv_fds",
    "send_fds",
    "sock_recvmsg",
    "sock_sendmsg",
]
