"""What a subscriber receives: `Message` and who sent it, `Sender`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

__all__ = ["Message", "Sender"]


@final
@dataclass(frozen=True, slots=True)
class Sender:
    """Who sent a message.

    :ivar address: the sender's transport address, e.g. ``"127.0.0.1:40123"``
        for ``udpm`` (the sender's send socket).
    :ivar pid: process id, when the transport can attest it (not ``udpm``).
    :ivar uid: user id, when the transport can attest it (not ``udpm``).
    :ivar gid: group id, when the transport can attest it (not ``udpm``).
    """

    address: str
    pid: int | None = None
    uid: int | None = None
    gid: int | None = None

    def __str__(self) -> str:
        return self.address


@final
class Message:
    """One message received from the bus. Treat it as read-only.

    :ivar topic: the topic (LCM channel) it was published on.
    :ivar data: the payload.
    :ivar seq: the sender's sequence number (u32, per sender, wraps).
    :ivar sender: who sent it.
    :ivar received_at: when this process received it (``time.time()``).
    """

    # A slotted class rather than a frozen dataclass: one is built per delivered
    # message, and a frozen dataclass's __init__ costs several times more.
    __slots__ = ("data", "received_at", "sender", "seq", "topic")

    def __init__(
        self, topic: str, data: bytes, seq: int, sender: Sender, received_at: float
    ) -> None:
        """Build a message (the bus does this; users rarely need to).

        :param topic: the topic.
        :param data: the payload.
        :param seq: the sender's sequence number.
        :param sender: who sent it.
        :param received_at: receive time, seconds since the epoch.
        """
        self.topic = topic
        self.data = data
        self.seq = seq
        self.sender = sender
        self.received_at = received_at

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented

        return (self.topic, self.data, self.seq, self.sender) == (
            other.topic,
            other.data,
            other.seq,
            other.sender,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable-by-convention, like a dataclass(eq=True)

    def __repr__(self) -> str:
        preview = self.data[:32]
        more = "..." if len(self.data) > 32 else ""
        return (
            f"Message(topic={self.topic!r}, data={preview!r}{more}, seq={self.seq}, "
            f"sender={self.sender.address!r})"
        )
