"""The asyncio protocol of a member on an AF_UNIX bus (``unix:`` or ``seqpacket:``).

`UNIXMemberProtocol` is where the membership core
(`asyncbus._core.membership`), a unix transport and the event loop meet:

* frames in: credentials are checked first (same uid by default, or the listed
  uids and gids); control frames update the peer table; LCM frames go through
  `asyncbus._adapters.common.MessageReceiver`, keyed by the source, so each
  publisher-to-subscriber link has its own sequence numbers and every gap is a
  loss;
* publish: each verified peer whose subscriptions match gets the message with
  that link's next sequence number. A peer whose socket is full gets up to
  ``peer_queue`` messages queued in its link; past that its policy applies:
  ``block`` makes ``publish()`` wait (at most ``stall_timeout`` per peer, then
  the peer counts as stalled and is dropped for until it drains), the drop
  policies drop for that peer alone and count it (the peer sees the gap);
* join, leave and death: see the theory of operation in the membership core.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
from collections.abc import Callable, Hashable
from typing import Final

from .._core import lcm
from .._core.membership import Membership, Peer
from .._core.patterns import TopicPattern
from .._core.unixwire import (
    MAX_RELEASES,
    Bye,
    ControlMagic,
    Hello,
    PatternKind,
    PeerPolicy,
    Release,
    Segment,
    SubscriptionEntry,
    Subscriptions,
    decode_control,
    encode_bye,
    encode_hello,
    encode_release,
    encode_segment,
    encode_subscriptions,
    is_batch,
    is_control,
    split_batch,
)
from .._core.url import UNIXAddress
from .._exceptions import ClosedError, LocalProtocolError, RemoteProtocolError
from .._message import Sender, _Mapping, _Resources, close_fds, duplicate_fds, fd_budget
from .._subscription import OverflowPolicy, _Router
from .._transports.memfd import WritableSegment, map_segment
from .._transports.unix import (
    Credentials,
    FDFrame,
    UNIXDatagramTransport,
    UNIXSeqpacketTransport,
)
from .common import MessageReceiver
from .segments import SegmentSender

__all__ = ["UNIXMemberProtocol"]

_SHORT_HEADER: Final = lcm.SHORT_HEADER
_SHORT_MAGIC: Final = lcm.Magic.SHORT
_SHORT_PREFIX: Final = _SHORT_MAGIC.to_bytes(4, "big")
_SEGMENT_PREFIX: Final = ControlMagic.SEGMENT.to_bytes(4, "big")
_SENDER_CACHE_LIMIT: Final = 4096
_BYE_GRACE: Final = 1.0  # seconds aclose() gives slow peers to read its BYE
_POLICIES: Final = {
    OverflowPolicy.DROP_OLDEST: PeerPolicy.DROP_OLDEST,
    OverflowPolicy.DROP_NEWEST: PeerPolicy.DROP_NEWEST,
    OverflowPolicy.BLOCK: PeerPolicy.BLOCK,
}

Transport = UNIXDatagramTransport | UNIXSeqpacketTransport


def own_identity(scheme: str) -> tuple[int, int, int]:
    """Return this process's (pid, uid, gid) as peers see them on ``scheme``.

    The kernel attests the *real* ids in ``SCM_CREDENTIALS`` (``unix:``) and the
    *effective* ids in ``SO_PEERCRED`` (``seqpacket:``); they differ only in
    set-uid programs. "The same user" compares like with like.
    """
    if scheme == "unix":
        return os.getpid(), os.getuid(), os.getgid()

    return os.getpid(), os.geteuid(), os.getegid()


def address_text(address: bytes) -> str:
    """Show a ``sun_path`` as people write it: ``@name`` for abstract addresses."""
    if address[:1] == b"\0":
        return "@" + address[1:].decode("utf-8", "backslashreplace")

    return os.fsdecode(address)


class UNIXMemberProtocol(MessageReceiver):
    """One member's side of the unix bus protocol (internal)."""

    def __init__(self, router: _Router, bus: UNIXAddress, *, max_message_size: int) -> None:
        super().__init__(router, max_message_size=max_message_size)
        self._bus = bus
        # Yielding at every publish while a peer has anything queued cost a loop
        # turn per message (48k turns for 287 flushes); a few dozen is enough.
        self._backlog_at = max(1, bus.peer_queue // 16)
        self.identity = own_identity(bus.scheme)
        self._uid = self.identity[1]
        self._transport: Transport | None = None
        self._membership = Membership(b"")
        self._own_hello = b""
        self._subscribe_frame = encode_subscriptions(())
        self._subscriptions_pending = False
        self._senders: dict[tuple[Hashable, Credentials | None], Sender] = {}
        self._room_waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._change_waiters: list[asyncio.Future[None]] = []
        self._joining: set[bytes] = set()
        self._leaving = False
        self.rejected = 0
        self.send_drops = 0
        self.peers_lost = 0
        self.errors = 0
        self.fd_drops = 0
        self.bad_segments = 0
        self.batches = 0  # BATCH frames received
        self.writing_paused = False
        self._segments = SegmentSender(limit=bus.segment_memory, keep=bus.segment_cache)
        self._releases: dict[bytes, list[int]] = {}  # loans to release, per publisher

    # -- transport callbacks ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, UNIXDatagramTransport | UNIXSeqpacketTransport)
        self._loop = asyncio.get_running_loop()
        self._transport = transport
        own = transport.get_extra_info("sockname")
        self._membership = Membership(own)
        self._own_hello = encode_hello(own, reply=False, fds=True, batch=True)
        self._closed = self._loop.create_future()
        self._subscribe_frame = self._encode_interests()

    def connection_allowed(self, creds: Credentials) -> bool:
        _, uid, gid = creds
        bus = self._bus
        return uid == self._uid or uid in bus.allow_uids or gid in bus.allow_gids

    def frame_received(
        self, frame: bytes, source: Hashable, creds: Credentials | None, fds: list[int] | None
    ) -> None:
        self.datagrams += 1
        # The cache holds only accepted (source, credentials): a hit is both checks.
        sender = self._senders.get((source, creds))
        if sender is None:
            if creds is None or not self.connection_allowed(creds):
                self.rejected += 1
                if fds:
                    _close_all(fds)

                return

            sender = self._sender_for(source, creds)

        if fds is not None:
            try:
                self._frame_with_fds(frame, source, sender, fds)
            except BaseException:
                _close_all(fds)  # no-op for those already handed on (they are -1)
                raise

            return

        if frame[:4] != _SHORT_PREFIX:
            if is_batch(frame):
                self._batch_received(frame, source, sender)
                return

            if is_control(frame):
                self._control_received(frame, source)
                return

        self.receive_lcm(frame, source, sender)

    def _batch_received(self, frame: bytes, source: Hashable, sender: Sender) -> None:
        """Handle each frame of a BATCH as if it had come alone."""
        try:
            frames = split_batch(frame)
        except RemoteProtocolError:
            self.malformed += 1
            return

        self.batches += 1

        def other(inner: bytes) -> None:
            if inner[:4] != _SHORT_PREFIX and is_control(inner):
                self._control_received(inner, source)
            else:
                self.receive_lcm(inner, source, sender)

        self.receive_lcm_frames(frames, source, sender, other)

    def source_closed(self, source: Hashable) -> None:
        peer = self._membership.peer_of(source)
        self._forget_source(source)
        # A peer that linked to us again (it gave up on us while we were not
        # reading) speaks on a newer connection: only the last one's end counts.
        if peer is None or self._membership.has_source(peer.address):
            return  # it speaks on a newer connection too: only the last one's end counts

        transport = self._transport
        if transport is not None and transport.has_link(peer.address) and not self._leaving:
            # Our link to it still works, so it is alive: it gave up on us (we did
            # not answer in time) and closed its link. Greet it again; it answers.
            transport.send(
                peer.address,
                encode_hello(self._membership.own_address, reply=True, fds=True, batch=True),
            )
            return

        self._lose(peer.address, lost=True)  # its death ended our link first

    def link_drained(self, address: bytes, queued: int) -> None:
        peer = self._membership.peers.get(address)
        if peer is not None:
            peer.queued = queued

        if queued < self._bus.peer_queue:
            if peer is not None:
                peer.stalled = False

            self._wake_room(address)

    def link_lost(self, address: bytes, exc: OSError | None) -> None:
        if isinstance(self._transport, UNIXSeqpacketTransport) and self._membership.has_source(
            address
        ):
            # Its connection to us ends too, after the BYE it may carry (frames on
            # one connection keep their order; two connections do not): decide there.
            self._wake_room(address)
            return

        self._lose(address, lost=True)

    def error_received(self, exc: OSError) -> None:
        self.errors += 1

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.stop_receiving()
        self._segments.close()
        self._releases.clear()
        for address in list(self._room_waiters):
            self._wake_room(address)

        self._wake_changes()
        self._report_closed(exc)

    # -- frames with file descriptors -----------------------------------------

    def _frame_with_fds(
        self, frame: bytes, source: Hashable, sender: Sender, fds: list[int]
    ) -> None:
        """Handle a frame that came with descriptors; each is handed on or closed.

        ``fds`` entries are replaced by -1 as they are handed on, so the
        caller can close the rest if anything raises.
        """
        prefix = frame[:4]
        if prefix == _SEGMENT_PREFIX:
            self._segment_received(frame, source, sender, fds)
            return

        if not fds:  # the kernel could not pass them (MSG_CTRUNC): the message is lost
            self.fd_drops += 1
            return

        if prefix != _SHORT_PREFIX:
            self.malformed += 1  # only whole messages carry descriptors
            _close_all(fds)
            return

        try:
            fd_budget.reserve(len(fds))
        except OSError:
            self.fd_drops += 1
            _close_all(fds)
            return

        resources = _Resources(list(fds))
        fds[:] = [-1] * len(fds)
        self.receive_lcm(frame, source, sender, resources)

    def _segment_received(
        self, frame: bytes, source: Hashable, sender: Sender, fds: list[int]
    ) -> None:
        try:
            segment = decode_control(frame)
        except RemoteProtocolError:
            segment = None

        peer = self._membership.peer_of(source)
        if type(segment) is not Segment or peer is None:
            self.malformed += 1  # garbage, or SEGMENT before HELLO
            _close_all(fds)
            return

        def release() -> None:
            self._release_loan(peer.address, segment.loan)

        if not fds:  # its fds did not all arrive (MSG_CTRUNC): lost, but let it go
            self.fd_drops += 1
            release()
            return

        if segment.size > self._max_message_size:
            self.oversize += 1
            _close_all(fds)
            release()
            return

        try:
            fd_budget.reserve(len(fds))  # the mapping's reference to the memfd, and the rest
        except OSError:
            self.fd_drops += 1
            _close_all(fds)
            release()
            return

        try:
            mapped = map_segment(fds[0], segment.size)
        except (RemoteProtocolError, OSError) as exc:
            if isinstance(exc, RemoteProtocolError):
                self.bad_segments += 1
            else:
                self.errors += 1

            close_fds(fds)
            fds[:] = [-1] * len(fds)
            release()
            return

        os.close(fds[0])  # the mapping holds its own reference
        resources = _Resources(fds[1:], _Mapping(mapped, release))
        fds[:] = [-1] * len(fds)
        assert resources.mapping is not None
        self.deliver(
            source, segment.channel, resources.mapping.view, segment.seq, sender, resources
        )

    def _release_loan(self, address: bytes, loan: int) -> None:
        """Tell a publisher (soon, batched) that this member no longer reads a segment."""
        pending = self._releases.get(address)
        if pending is None:
            pending = self._releases[address] = []
            if len(self._releases) == 1 and self._loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
                    self._loop.call_soon(self._send_releases)

        pending.append(loan)

    def _send_releases(self) -> None:
        releases, self._releases = self._releases, {}
        transport = self._transport
        if transport is None or transport.is_closing():
            return

        for address, loans in releases.items():
            for start in range(0, len(loans), MAX_RELEASES):
                transport.send(address, encode_release(loans[start : start + MAX_RELEASES]))

    # -- control frames -----------------------------------------------------

    def _control_received(self, frame: bytes, source: Hashable) -> None:
        try:
            control = decode_control(frame)
        except RemoteProtocolError:
            self.malformed += 1
            return

        if type(control) is Hello:
            self._hello_received(control, source)
        elif type(control) is Subscriptions:
            peer = self._membership.on_subscriptions(source, control)
            if peer is None:
                self.malformed += 1  # SUBSCRIBE before HELLO breaks the protocol
            else:
                self._joining.discard(peer.address)  # join waits for subscriptions
                self._wake_changes()
        elif type(control) is Release:
            peer = self._membership.peer_of(source)
            if peer is None:
                self.malformed += 1
                return

            for loan in control.loans:
                self._segments.release(loan, peer.address)
        elif type(control) is Segment:
            self.malformed += 1  # a SEGMENT frame without its memfd (its seq shows a gap)
        else:
            assert type(control) is Bye
            peer = self._membership.peer_of(source)
            self._forget_source(source)
            if peer is not None:
                self._lose(peer.address, lost=False)

    def _hello_received(self, hello: Hello, source: Hashable) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or self._leaving:
            return

        actions = self._membership.on_hello(source, hello)
        if actions is None:
            return

        if self._membership.first_hello:
            self.expect_first(source)  # a link's messages are numbered from 0

        self._senders = {key: s for key, s in self._senders.items() if key[0] != source}
        address = actions.peer.address
        if actions.link or not transport.has_link(address):
            try:
                transport.open_link(address)
            except OSError:
                self._lose(address, lost=True)
                return

        transport.set_batching(address, hello.batch)
        if actions.send_hello:
            transport.send(address, self._own_hello)

        if actions.send_subscriptions:
            transport.send(address, self._subscribe_frame)

        self._wake_changes()

    def _lose(self, address: bytes, *, lost: bool) -> None:
        peer = self._membership.forget(address)
        transport = self._transport
        if transport is not None:
            transport.close_link(address)

        if peer is not None and lost:
            self.peers_lost += 1
            if transport is not None:
                transport.reap(address)  # it may have been killed: remove its file

        self._segments.drop_holder(address)
        self._joining.discard(address)
        self._wake_room(address)
        self._wake_changes()

    def _forget_source(self, source: Hashable) -> None:
        self._membership.forget_source(source)
        self.forget_source(source)
        self._senders = {key: s for key, s in self._senders.items() if key[0] != source}

    def _sender_for(self, source: Hashable, creds: Credentials) -> Sender:
        peer = self._membership.peer_of(source)
        if peer is not None:
            name = address_text(peer.address)
        elif isinstance(source, bytes | str) and source:
            name = address_text(os.fsencode(source))
        else:
            name = "(unnamed)"

        if len(self._senders) >= _SENDER_CACHE_LIMIT:
            self._senders.clear()

        pid, uid, gid = creds
        sender = self._senders[(source, creds)] = Sender(name, pid, uid, gid)
        return sender

    # -- joining and leaving ------------------------------------------------

    async def join(self) -> None:
        """Find the members, greet them, and wait (at most ``join_timeout``) for answers.

        :raises OSError: if the bus cannot be listed.
        """
        transport = self._transport
        assert transport is not None and self._loop is not None
        hello = encode_hello(transport.get_extra_info("sockname"), reply=True, fds=True, batch=True)
        for address in transport.discover():
            try:
                transport.open_link(address)
            except OSError:
                continue  # gone, refused, or a dead member's file (now removed)

            self._membership.link(address)
            self._joining.add(address)
            transport.send(address, hello)

        deadline = self._loop.time() + self._bus.join_timeout
        while self._joining and not transport.is_closing() and self._loop.time() < deadline:
            await self._wait_once(self._change_waiters.append, deadline)

        # Whoever did not answer is not (yet) a member: free its link. A slow
        # member that answers later is linked again by its HELLO.
        for address in list(self._joining):
            peer = self._membership.peers.get(address)
            if peer is not None and not peer.verified:
                self._membership.forget(address)
                transport.close_link(address)

        self._joining.clear()

    async def leave(self) -> None:
        """Flush queued messages (at most ``stall_timeout``), say BYE, close."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return

        self._leaving = True
        assert self._loop is not None
        timeout = self._bus.stall_timeout
        try:
            await self._drain_links(transport, self._loop.time() + timeout if timeout else None)
        finally:
            # Give up what is still queued (counted), so that BYE is the next frame
            # out, and give slow peers a moment to read it.
            for address in list(self._membership.peers):
                self.send_drops += transport.clear_queue(address)

            transport.send_all(encode_bye())
            grace = min(self._bus.stall_timeout or _BYE_GRACE, _BYE_GRACE)
            try:
                await self._drain_links(transport, self._loop.time() + grace)
            finally:
                transport.close()

    async def _drain_links(self, transport: Transport, deadline: float | None) -> None:
        """Wait until no link has messages queued, or until ``deadline`` (loop time)."""
        assert self._loop is not None

        def register(waiter: asyncio.Future[None]) -> None:
            for address in list(self._membership.peers):
                if transport.queued(address):
                    self._room_waiters.setdefault(address, []).append(waiter)

        while transport.total_queued() and not transport.is_closing():
            if deadline is not None and self._loop.time() >= deadline:
                return

            await self._wait_once(register, deadline)

    async def _wait_once(
        self, register: Callable[[asyncio.Future[None]], object], deadline: float | None
    ) -> None:
        """Wait for one wake-up of a waiter that ``register`` files, or for ``deadline``."""
        assert self._loop is not None
        waiter: asyncio.Future[None] = self._loop.create_future()
        register(waiter)
        handle = None if deadline is None else self._loop.call_at(deadline, _resolve, waiter)
        try:
            await waiter
        finally:
            if handle is not None:
                handle.cancel()

    # -- subscriptions ------------------------------------------------------

    def subscriptions_changed(self, *, now: bool) -> None:
        """Send our new subscription set to every verified peer.

        :param now: send it at once, else on the next loop turn (several
            changes then go out as one frame).
        """
        if now:
            self._send_subscriptions()
            return

        if self._subscriptions_pending or self._loop is None:
            return

        self._subscriptions_pending = True
        try:
            self._loop.call_soon(self._send_subscriptions)
        except RuntimeError:  # the loop is closed: the bus is gone anyway
            self._subscriptions_pending = False

    def _encode_interests(self) -> bytes:
        entries = set()
        for pattern, policy in self._router.interests():
            entries.add(_entry(pattern, policy))

        return encode_subscriptions(sorted(entries, key=lambda e: (e.kind, e.pattern, e.policy)))

    def check_interests(self) -> None:
        """Raise if the subscription set no longer fits a SUBSCRIBE frame.

        :raises LocalProtocolError: if it does not.
        """
        self._encode_interests()

    def _send_subscriptions(self) -> None:
        self._subscriptions_pending = False
        transport = self._transport
        if transport is None or transport.is_closing() or self._leaving:
            return

        try:
            frame = self._encode_interests()
        except LocalProtocolError:
            self.errors += 1  # checked at subscribe(); cannot happen on remove
            return

        if frame == self._subscribe_frame:
            return

        self._subscribe_frame = frame
        for peer in list(self._membership.peers.values()):
            if peer.verified:
                transport.send(peer.address, frame)

    # -- publishing ---------------------------------------------------------

    async def publish(
        self,
        channel: bytes,
        topic: str,
        data: bytes | bytearray | memoryview,
        fds: tuple[int, ...] = (),
        lent: tuple[int, WritableSegment] | None = None,
    ) -> bool:
        """Send one message to every peer that wants it, applying their policies.

        A payload too large for one frame goes to peers that take descriptors
        in a shared segment (``lent``, the user's loan, or one lent here and
        filled with one copy), and to others as ``LC03`` fragments. ``fds`` are
        duplicated once and attached to each peer's frame; a peer that does not
        take descriptors misses the message (counted in ``send_drops``; it
        sees a gap).

        :param lent: a segment the caller wrote ``data`` into (``data`` is its
            view); it is published or given back, whatever happens.
        :return: ``True`` if a target peer has a backlog (at least 1/16 of
            ``peer_queue`` waits for it) or the transport paused writing: the
            caller should let the loop run the writers (and, in this process,
            the readers) before a drop policy has to drop.
        :raises MessageTooLargeError: if the payload is over the bus's limit.
        :raises ClosedError: if the bus closed while waiting for a peer.
        :raises TimeoutError: if peers held all shared memory for ``stall_timeout``.
        :raises FDBudgetError: if duplicating ``fds`` would exceed the fd budget.
        :raises OSError: if an fd cannot be duplicated (``EBADF``) or no memfd made.
        :raises TypeError: if ``data`` is a buffer that is not C-contiguous.
        """
        try:
            if type(data) is not bytes:
                data = memoryview(data).cast("B")  # count bytes, not items

            size = len(data)
            if size > self._max_message_size:
                lcm.encode(channel, 0, data, max_message_size=self._max_message_size)  # raises

            targets = self._membership.targets(topic)
            if not targets:
                if lent is not None:
                    self._segments.give_back(lent[0])

                return False

            single = len(channel) + size <= lcm.MAX_SHORT_PAYLOAD
            if not single and lent is None and any(peer.fds for peer, _ in targets):
                lent = await self._segments.lend(size, self._bus.stall_timeout, self.probe_peers)
                lent[1].view[:size] = data  # the one copy every receiver shares
                data = lent[1].view[:size]
                targets = self._membership.targets(topic)  # it may have changed meanwhile

            outgoing = _OutgoingFDs(fds) if fds else None
        except BaseException:
            if lent is not None:
                self._segments.give_back(lent[0])

            raise

        if lent is None:
            loan = -1
        else:
            loan = self._segments.publish(lent[0], [p.address for p, _ in targets if p.fds])

        try:
            return await self._send_to(targets, channel, data, single, outgoing, lent, loan)
        finally:
            if outgoing is not None:
                outgoing.drop()  # ours; each frame holds its own reference until sent

    def publish_frame(self, channel: bytes, topic: str, data: bytes) -> bool | None:
        """Send a small message to every peer that wants it, if none is at its queue bound.

        The lean path of `publish` for what most messages are: bytes that fit one
        frame, no fds. It never waits and never drops.

        :return: ``None`` if `publish` must handle it (too large, or a peer's
            queue may be full: its policy applies); else whether to let the
            loop run (as `publish` says).
        """
        size = len(data)
        if size > self._max_message_size or len(channel) + size > lcm.MAX_SHORT_PAYLOAD:
            return None

        targets = self._membership.targets(topic)
        bound = self._bus.peer_queue
        for peer, _ in targets:
            if peer.queued >= bound:  # perhaps no longer: publish asks the transport
                return None

        transport = self._transport
        assert transport is not None
        send = transport.send_frame
        body = channel + data
        pack = _SHORT_HEADER.pack
        backlog = self.writing_paused
        backlog_at = self._backlog_at
        for peer, _ in targets:
            seq = peer.seq
            peer.seq = (seq + 1) & 0xFFFFFFFF
            queued = peer.queued = send(peer.address, pack(_SHORT_MAGIC, seq) + body)
            if queued >= backlog_at:
                backlog = True

        return backlog

    def probe_peers(self) -> None:
        """Greet every peer (a HELLO asks for nothing): a send to a dead one fails.

        On ``unix:`` that is how a peer that died holding our segments is found
        (``seqpacket:`` sees the end of its link at once).
        """
        transport = self._transport
        if transport is None or transport.is_closing():
            return

        for address in list(self._membership.peers):
            transport.send(address, self._own_hello)

    async def _send_to(
        self,
        targets: tuple[tuple[Peer, PeerPolicy], ...],
        channel: bytes,
        data: bytes | memoryview,
        single: bool,
        outgoing: _OutgoingFDs | None,
        lent: tuple[int, WritableSegment] | None,
        loan: int,
    ) -> bool:
        transport = self._transport
        assert transport is not None
        bound = self._bus.peer_queue
        body = channel + data if single and outgoing is None else b""
        backlog_at = self._backlog_at
        blocked: list[Peer] | None = None
        backlog = False
        for peer, policy in targets:
            address = peer.address
            seq = peer.next_seq()
            queued = transport.queued(address)
            if queued >= bound:
                queued = transport.flush_now(address)  # gathered frames are not a full socket

            if queued >= backlog_at:
                backlog = True

            if queued >= bound:
                if policy is PeerPolicy.BLOCK and not peer.stalled:
                    if blocked is None:
                        blocked = []

                    blocked.append(peer)
                elif policy is PeerPolicy.DROP_OLDEST and transport.discard_oldest(address):
                    self.send_drops += 1
                else:
                    self.send_drops += 1
                    if lent is not None and peer.fds:
                        self._segments.release(loan, address)

                    continue

            if outgoing is not None and not peer.fds:
                self.send_drops += 1  # it cannot take descriptors: it sees a gap
                continue

            if lent is not None and peer.fds:
                frame = encode_segment(seq, loan, len(data), channel)
                fds = array.array("i", (lent[1].fd,)).tobytes()
                if outgoing is not None:
                    fds += outgoing.packed

                done = self._frame_done(address, outgoing, loan)
                transport.send(address, FDFrame(frame, fds, done))
            elif outgoing is not None:
                frame = _SHORT_HEADER.pack(_SHORT_MAGIC, seq) + channel + data
                done = self._frame_done(address, outgoing)
                transport.send(address, FDFrame(frame, outgoing.packed, done))
            elif single:
                transport.send(address, _SHORT_HEADER.pack(_SHORT_MAGIC, seq) + body)
            else:
                frames = lcm.encode(channel, seq, data, max_message_size=self._max_message_size)
                transport.send(address, frames)

            peer.queued = transport.queued(address)

        if blocked is not None:
            await self._wait_room(blocked)

        return backlog or self.writing_paused

    def _frame_done(
        self, address: bytes, outgoing: _OutgoingFDs | None, loan: int = -1
    ) -> Callable[[bool], None]:
        """Make an FDFrame's ``done``: drop its fd reference; an unsent segment is released."""
        if outgoing is not None:
            outgoing.hold()

        segments = self._segments

        def done(sent: bool) -> None:
            if outgoing is not None:
                outgoing.drop()

            if loan >= 0 and not sent:
                segments.release(loan, address)

        return done

    async def _wait_room(self, peers: list[Peer]) -> None:
        transport = self._transport
        assert transport is not None and self._loop is not None
        bound = self._bus.peer_queue
        timeout = self._bus.stall_timeout
        deadline = self._loop.time() + timeout if timeout else None
        for peer in peers:
            address = peer.address
            while transport.queued(address) >= bound and not peer.stalled:
                if transport.is_closing():
                    raise ClosedError("the bus was closed while publishing")

                if deadline is not None and self._loop.time() >= deadline:
                    peer.stalled = True  # drop for it until it drains
                    break

                await self._wait_once(self._room_waiters.setdefault(address, []).append, deadline)

    def _wake_room(self, address: bytes) -> None:
        for waiter in self._room_waiters.pop(address, ()):
            _resolve(waiter)

    # -- membership queries -------------------------------------------------

    @property
    def segments(self) -> SegmentSender:
        """This member's shared-memory segments (for loans)."""
        return self._segments

    def peer_count(self) -> int:
        """Return how many verified peers this member has."""
        return self._membership.verified

    def subscriber_count(self, topic: str) -> int:
        """Return how many verified peers want ``topic``."""
        return len(self._membership.targets(topic))

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, re-checking at every membership change.

        :raises ClosedError: if the transport closes first.
        """
        assert self._loop is not None
        while not predicate():
            transport = self._transport
            if transport is None or transport.is_closing():
                raise ClosedError("the bus is closed")

            await self._wait_once(self._change_waiters.append, None)

    def _wake_changes(self) -> None:
        waiters, self._change_waiters = self._change_waiters, []
        for waiter in waiters:
            _resolve(waiter)

    def statistics(self) -> dict[str, int]:
        """Return the adapter's and transport's counters."""
        counters = self.receive_statistics()
        transport = self._transport
        counters["malformed"] += transport.truncated if transport is not None else 0
        counters["errors"] += self.errors
        counters["rejected"] = self.rejected + (transport.rejected if transport else 0)
        counters["send_drops"] = self.send_drops
        counters["peers"] = self._membership.verified
        counters["peers_lost"] = self.peers_lost
        counters["fd_drops"] = self.fd_drops
        counters["bad_segments"] = self.bad_segments
        pool = self._segments.statistics()
        counters["segments_created"] = pool.created
        counters["segments_reused"] = pool.reused
        counters["batches_sent"] = transport.batches if transport is not None else 0
        counters["batched"] = transport.batched if transport is not None else 0
        counters["batches_received"] = self.batches
        return counters


class _OutgoingFDs:
    """Duplicates of a publisher's fds, shared by the frames that carry them.

    The publisher keeps its own fds; these copies stay open until every frame
    that carries them went out or was dropped, then they are closed.
    """

    __slots__ = ("fds", "packed", "refs")

    def __init__(self, fds: tuple[int, ...]) -> None:
        self.fds = duplicate_fds(fds)
        self.packed = array.array("i", self.fds).tobytes()
        self.refs = 1

    def hold(self) -> None:
        self.refs += 1

    def drop(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            close_fds(self.fds)


def _close_all(fds: list[int]) -> None:
    """Close received fds not counted in the budget; mark them closed (-1)."""
    for index, fd in enumerate(fds):
        if fd >= 0:
            fds[index] = -1
            with contextlib.suppress(OSError):
                os.close(fd)


def _entry(pattern: TopicPattern, policy: OverflowPolicy) -> SubscriptionEntry:
    if pattern.kind == "exact":
        kind, text = PatternKind.EXACT, pattern.text
    elif pattern.kind == "glob":
        kind, text = PatternKind.GLOB, pattern.text
    else:
        kind, text = PatternKind.ALL, ""

    return SubscriptionEntry(kind, _POLICIES[policy], text)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
