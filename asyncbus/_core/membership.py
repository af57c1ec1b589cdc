"""Who is on an AF_UNIX bus, and who wants which topic (sans-I/O).

Theory of operation
-------------------
A member knows its peers by address (the ``sun_path`` of their receiving
socket). Frames arrive from *sources*: for ``unix:`` the address the kernel
reports for the sending socket, for ``seqpacket:`` the accepted connection. A
HELLO ties a source to a peer address; every other control frame from that
source is then about that peer.

A peer goes through three states:

* **unknown**: not in the table;
* **linked**: we found its socket (directory or ``/proc/net/unix``) and sent it
  HELLO with REPLY, but it has not spoken yet; we send it nothing else;
* **verified**: a HELLO from it arrived with credentials this member accepts
  (the transport checked them). Only verified peers get our subscriptions and
  our messages.

The rules, one per event (`Membership.on_hello` and friends return what to send):

==============================  =================================================
event                           action
==============================  =================================================
found at join                   link, send HELLO(REPLY)
HELLO from an accepted source   link if not yet linked; send HELLO if it asked
                                (REPLY) or we just linked; send SUBSCRIBE if it
                                was not verified yet or it asked; mark verified
SUBSCRIBE from a known source   replace that peer's interest
BYE from a known source         forget the peer
send failed / our link ended    forget the peer (seqpacket: once its
                                connection to us has ended too)
its connection to us ended,     it gave up on us: send HELLO(REPLY) again
our link still works            (seqpacket)
our subscriptions change        send SUBSCRIBE to every verified peer
==============================  =================================================

Each link has its own sequence number: the n-th message a member sends (or drops)
for one peer carries n, so a peer sees every message meant for it numbered
0, 1, 2, ... and a jump is a loss it can count.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final

from .unixwire import Hello, Interest, PeerPolicy, Subscriptions

__all__ = ["HelloActions", "Membership", "Peer"]

_CACHE_LIMIT: Final = 4096  # distinct topics whose targets are remembered


class Peer:
    """What one member knows about another.

    :ivar address: the peer's receiving ``sun_path``.
    :ivar verified: a HELLO from it was accepted.
    :ivar interest: its subscription set.
    :ivar seq: the sequence number of the next message for it.
    :ivar stalled: a ``publish()`` gave up waiting for it; drop for it until it drains.
    :ivar fds: its HELLO said it takes file descriptors and SEGMENT frames.
    :ivar queued: how many messages waited for it after the last send (the
        transport's count then; it only shrinks until the next send).
    """

    __slots__ = ("address", "fds", "interest", "queued", "seq", "stalled", "verified")

    def __init__(self, address: bytes) -> None:
        self.address = address
        self.fds = False
        self.queued = 0
        self.verified = False
        self.interest = Interest()
        self.seq = 0
        self.stalled = False

    def next_seq(self) -> int:
        """Return the sequence number for the next message, and advance it.

        :return: a u32.
        """
        seq = self.seq
        self.seq = (seq + 1) & 0xFFFFFFFF
        return seq

    def __repr__(self) -> str:
        state = "verified" if self.verified else "linked"
        return f"<Peer {self.address!r} {state}>"


@dataclass(frozen=True, slots=True)
class HelloActions:
    """What to do after an accepted HELLO.

    :ivar peer: the peer that spoke.
    :ivar link: open a link to it first (we had none).
    :ivar send_hello: send it our HELLO (without REPLY).
    :ivar send_subscriptions: send it our SUBSCRIBE.
    """

    peer: Peer
    link: bool
    send_hello: bool
    send_subscriptions: bool


Target = tuple[Peer, PeerPolicy]


class Membership:
    """The peer table of one member (no I/O)."""

    def __init__(self, own_address: bytes) -> None:
        """Start with no peers.

        :param own_address: this member's receiving ``sun_path``; a HELLO
            naming it is ignored.
        """
        self.own_address = own_address
        self.peers: dict[bytes, Peer] = {}
        self._sources: dict[Hashable, bytes] = {}
        self._targets: dict[str, tuple[Target, ...]] = {}
        self.verified = 0
        self.first_hello = False  # the last on_hello() was the first from its source

    def link(self, address: bytes) -> Peer:
        """Record that we opened a link to ``address`` (found at join, or on HELLO).

        :param address: the peer's receiving ``sun_path``.
        :return: its entry.
        """
        peer = self.peers.get(address)
        if peer is None:
            peer = self.peers[address] = Peer(address)

        return peer

    def on_hello(self, source: Hashable, hello: Hello) -> HelloActions | None:
        """Handle a HELLO whose credentials the transport accepted.

        :param source: where the frame came from.
        :param hello: the frame.
        :return: what to send, or ``None`` for a HELLO naming ourselves.
        """
        if hello.address == self.own_address:
            return None

        self.first_hello = source not in self._sources
        self._sources[source] = hello.address
        peer = self.peers.get(hello.address)
        link = peer is None
        if peer is None:
            peer = self.peers[hello.address] = Peer(hello.address)

        peer.fds = hello.fds
        newly = not peer.verified
        if newly:
            peer.verified = True
            self.verified += 1
            self._targets.clear()

        return HelloActions(
            peer=peer,
            link=link,
            send_hello=hello.reply or link,
            send_subscriptions=newly or hello.reply,
        )

    def on_subscriptions(self, source: Hashable, frame: Subscriptions) -> Peer | None:
        """Replace a peer's interest.

        :param source: where the frame came from.
        :param frame: the frame.
        :return: the peer, or ``None`` if no HELLO came from this source (the
            frame breaks the protocol and is to be counted and dropped).
        """
        peer = self.peer_of(source)
        if peer is None:
            return None

        peer.interest = Interest(frame.entries)
        self._targets.clear()
        return peer

    def peer_of(self, source: Hashable) -> Peer | None:
        """Return the peer a source said HELLO for.

        :param source: where a frame came from.
        :return: the peer, or ``None``.
        """
        address = self._sources.get(source)
        return None if address is None else self.peers.get(address)

    def has_source(self, address: bytes) -> bool:
        """Tell whether a source that said HELLO for ``address`` is still known.

        :param address: a peer's ``sun_path``.
        :return: ``True`` if one is.
        """
        return address in self._sources.values()

    def forget_source(self, source: Hashable) -> None:
        """Forget a source (its connection ended, or it said BYE).

        :param source: where frames came from.
        """
        self._sources.pop(source, None)

    def forget(self, address: bytes) -> Peer | None:
        """Forget a peer: it left, died, or cannot be reached.

        :param address: its receiving ``sun_path``.
        :return: the entry removed, or ``None`` if it was unknown.
        """
        peer = self.peers.pop(address, None)
        if peer is None:
            return None

        if peer.verified:
            self.verified -= 1
            self._targets.clear()

        for source in [s for s, a in self._sources.items() if a == address]:
            del self._sources[source]

        return peer

    def targets(self, topic: str) -> tuple[Target, ...]:
        """Return the verified peers that want ``topic``, with their policies.

        :param topic: a topic name.
        :return: (peer, policy) pairs.
        """
        targets = self._targets.get(topic)
        if targets is None:
            found = []
            for peer in self.peers.values():
                if peer.verified:
                    policy = peer.interest.policy(topic)
                    if policy is not None:
                        found.append((peer, policy))

            targets = tuple(found)
            if len(self._targets) >= _CACHE_LIMIT:
                self._targets.clear()

            self._targets[topic] = targets

        return targets
