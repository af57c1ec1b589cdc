"""Every exception asyncbus raises on purpose.

The tree (documented in ``docs/exceptions.md``; keep the two in sync)::

    AsyncBusError
    ├── ClosedError             (also anyio.ClosedResourceError) you closed it
    ├── BrokenTransportError    (also anyio.BrokenResourceError) something outside broke it
    ├── BusyError               (also anyio.BusyResourceError)   another task is receiving
    ├── WouldBlock              (also anyio.WouldBlock)          *_nowait() had nothing to do
    ├── InvalidURLError         (also ValueError)                a bus URL that cannot work
    ├── BusPermissionError      (also PermissionError)           an unsafe bus directory
    ├── UnsupportedError        (also NotImplementedError)       this transport cannot do that
    ├── LocalProtocolError      (also ValueError)                the wire cannot carry that
    │   └── MessageTooLargeError
    ├── RemoteProtocolError                                      a peer sent garbage
    ├── AncillaryTruncatedError (also OSError)                   fds did not all arrive
    └── FDBudgetError           (also OSError)                   too many fds held

Subclassing anyio's exceptions lets a `asyncbus.Subscription` be used
anywhere an ``anyio.abc.ObjectReceiveStream`` is expected.
"""

from __future__ import annotations

import anyio

__all__ = [
    "AncillaryTruncatedError",
    "AsyncBusError",
    "BrokenTransportError",
    "BusPermissionError",
    "BusyError",
    "ClosedError",
    "FDBudgetError",
    "InvalidURLError",
    "LocalProtocolError",
    "MessageTooLargeError",
    "RemoteProtocolError",
    "UnsupportedError",
    "WouldBlock",
]


class AsyncBusError(Exception):
    """Base class of every exception that asyncbus raises on purpose."""


class ClosedError(AsyncBusError, anyio.ClosedResourceError):
    """The bus or subscription was closed by this process (``aclose()``)."""


class BrokenTransportError(AsyncBusError, anyio.BrokenResourceError):
    """Something outside this process broke the transport.

    The original `OSError` is attached as ``__cause__``.
    """


class BusyError(AsyncBusError, anyio.BusyResourceError):
    """Another task is already waiting in ``receive()`` on this subscription."""

    def __init__(self, action: str = "receiving") -> None:
        super().__init__(action)


class WouldBlock(AsyncBusError, anyio.WouldBlock):
    """A ``*_nowait()`` call found nothing to do without waiting."""


class InvalidURLError(AsyncBusError, ValueError):
    """A bus URL is malformed, names an unknown scheme, or has a bad option."""


class BusPermissionError(AsyncBusError, PermissionError):
    """A bus directory is unsafe (not ours, or writable by others) or not accessible.

    The original `OSError`, if any, is attached as ``__cause__``.
    """


class UnsupportedError(AsyncBusError, NotImplementedError):
    """The bus's transport cannot do what was asked (e.g. membership on ``udpm``)."""


class LocalProtocolError(AsyncBusError, ValueError):
    """The caller asked for something the wire format cannot carry.

    Examples: a topic name longer than 63 bytes of UTF-8, a NUL in a topic.
    """


class MessageTooLargeError(LocalProtocolError):
    """A payload is larger than the bus (or the wire format) allows."""


class RemoteProtocolError(AsyncBusError):
    """A peer sent bytes that do not decode to a valid frame.

    Decoders raise this and nothing else for arbitrary input; the bus counts
    and drops such packets rather than letting this escape to users.
    """


class AncillaryTruncatedError(AsyncBusError, OSError):
    """A received message's control data was cut short (``MSG_CTRUNC``).

    Some file descriptors the sender attached did not arrive: the buffer for
    them was too small (``maxfds``), or this process hit its descriptor limit
    (``RLIMIT_NOFILE``). Every descriptor that did arrive has already been
    closed, so nothing leaks; the message's bytes are kept here.

    :ivar data: the bytes of the message that came with the truncated fds.
    :ivar closed_fds: how many descriptors arrived and were closed.
    """

    def __init__(self, message: str, *, data: bytes = b"", closed_fds: int = 0) -> None:
        super().__init__(message)
        self.data = data
        self.closed_fds = closed_fds


class FDBudgetError(AsyncBusError, OSError):
    """This process's buses hold as many file descriptors as `asyncbus.fd_budget` allows.

    Raised by a publish with ``fds=`` when duplicating them would go over the
    budget. Received messages over the budget are dropped and counted instead.
    """
