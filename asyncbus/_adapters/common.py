"""What every adapter does with a received LCM frame (internal).

`MessageReceiver` decodes ``LC02``/``LC03`` frames with the core, reassembles
fragments (driving the core's timeouts from the loop's clock), tracks each
source's sequence numbers and hands whole messages to the router. Malformed
frames are counted and dropped; nothing a peer sends raises out of here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Iterable
from typing import Final

from .._core import lcm
from .._core.reassembly import Reassembler
from .._core.sequence import SequenceTracker
from .._exceptions import RemoteProtocolError
from .._message import Sender, _Resources
from .._subscription import _Router

__all__ = ["MessageReceiver"]

_TIMER_SLACK: Final = 0.002  # uvloop rounds timers to 1 ms


class MessageReceiver:
    """Decode, reassemble and route LCM frames; count what goes wrong (internal)."""

    def __init__(self, router: _Router, *, max_message_size: int) -> None:
        self._router = router
        self._decoder = lcm.Decoder()
        self._reassembler = Reassembler(max_message_size=max_message_size)
        self._max_message_size = max_message_size
        self._sequences = SequenceTracker()
        # Hot-path shortcuts, bound once (see receive_lcm).
        self._decode_short = self._decoder.decode_short
        self._last_seq = self._sequences.last
        self._dispatch = router.dispatch
        self._expiry: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Made at connection_made, resolved at connection_lost with what broke it.
        self._closed: asyncio.Future[BaseException | None] | None = None
        self.datagrams = 0
        self.received = 0
        self.malformed = 0
        self.oversize = 0
        self.receive_errors = 0

    def receive_lcm(
        self, frame: bytes, source: Hashable, sender: Sender, resources: _Resources | None = None
    ) -> None:
        """Handle one LCM frame from ``source`` (its sequence and fragment key).

        ``resources`` (fds that came with the frame) go with the message, or
        are closed if the frame is dropped.
        """
        if resources is None:
            # The hot path: a short message on a known channel, in order, and
            # deliver() inlined. Anything else takes the general path below.
            short = self._decode_short(frame)
            if short is not None:
                topic, seq, data = short
                if len(data) <= self._max_message_size:
                    last = self._last_seq.get(source)
                    if last is not None and seq - last == 1:
                        self._last_seq[source] = seq  # what observe() does in order
                    else:
                        self._sequences.observe(source, seq)

                    self.received += 1
                    self._dispatch(topic, data, seq, sender, None)
                    return

        self._receive_frame(frame, source, sender, resources)

    def receive_lcm_frames(
        self,
        frames: Iterable[bytes],
        source: Hashable,
        sender: Sender,
        other: Callable[[bytes], None],
    ) -> None:
        """Handle frames from one source in order, e.g. the contents of one BATCH.

        A short message on a known channel is handled here as `receive_lcm`
        would; any other frame (a fragment, a new channel, a control frame,
        garbage) goes to ``other``, in its place in the order. Per message this
        saves the call and the attribute lookups of a `receive_lcm` each.
        """
        decode_short = self._decode_short
        last_seq = self._last_seq
        observe = self._sequences.observe
        dispatch = self._dispatch
        limit = self._max_message_size
        last = last_seq.get(source)
        received = 0
        try:
            for frame in frames:
                short = decode_short(frame)
                if short is None or len(short[2]) > limit:
                    other(frame)
                    last = last_seq.get(source)  # other() may have moved it on
                    continue

                topic, seq, data = short
                if last is not None and seq - last == 1:
                    last_seq[source] = last = seq  # what observe() does in order
                else:
                    observe(source, seq)
                    last = last_seq.get(source)

                received += 1
                dispatch(topic, data, seq, sender, None)
        finally:
            self.received += received

    def _receive_frame(
        self, frame: bytes, source: Hashable, sender: Sender, resources: _Resources | None
    ) -> None:
        try:
            message = self._decoder.decode(frame)
        except RemoteProtocolError:
            self.malformed += 1
            if resources is not None:
                resources.close()

            return

        if resources is not None and type(message) is not lcm.CompleteMessage:
            self.malformed += 1  # fds belong to a whole message, never to a fragment
            resources.close()
            return

        if type(message) is lcm.Fragment:
            assert self._loop is not None
            complete = self._reassembler.feed(source, message, self._loop.time())
            self._schedule_expiry()
            if complete is None:
                return

            message = complete

        assert type(message) is lcm.CompleteMessage
        if len(message.data) > self._max_message_size:
            self.oversize += 1
            if resources is not None:
                resources.close()

            return

        self.deliver(source, message.channel, message.data, message.seq, sender, resources)

    def deliver(
        self,
        source: Hashable,
        topic: str,
        data: bytes | memoryview,
        seq: int,
        sender: Sender,
        resources: _Resources | None = None,
    ) -> None:
        """Count a whole message in its source's sequence and hand it to the router."""
        self._sequences.observe(source, seq)
        self.received += 1
        self._router.dispatch(topic, data, seq, sender, resources)

    async def wait_closed(self) -> BaseException | None:
        """Wait for ``connection_lost``; return what the transport broke with, or ``None``."""
        assert self._closed is not None
        return await asyncio.shield(self._closed)

    def closed_with(self) -> asyncio.Future[BaseException | None]:
        """The future that ``connection_lost`` resolves."""
        assert self._closed is not None
        return self._closed

    def _report_closed(self, exc: BaseException | None) -> None:
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(exc)

    def expect_first(self, source: Hashable) -> None:
        """Expect message number 0 next from ``source`` (a new link), so early drops count."""
        self._sequences.expect(source, 0)

    def forget_source(self, source: Hashable) -> None:
        """Forget a source's sequence numbers (it will never send again)."""
        self._sequences.forget(source)

    def stop_receiving(self) -> None:
        """Cancel the reassembly timer and drop partial messages."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

        self._reassembler.clear()

    def receive_statistics(self) -> dict[str, int]:
        """Return the receive counters, merged with the core's."""
        reassembly = self._reassembler.statistics()
        sequences = self._sequences.statistics()
        return {
            "datagrams": self.datagrams,
            "received": self.received,
            "malformed": self.malformed + reassembly.inconsistent,
            "oversize": self.oversize + reassembly.oversize,
            "gaps": sequences.gaps,
            "reordered": sequences.reordered + sequences.duplicates + reassembly.duplicates,
            "errors": self.receive_errors,
            "incomplete": reassembly.incomplete,
        }

    def _schedule_expiry(self) -> None:
        deadline = self._reassembler.next_deadline()
        if deadline is None or self._loop is None:
            return

        if self._expiry is not None:
            if self._expiry.when() <= deadline:
                return

            self._expiry.cancel()

        self._expiry = self._loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        assert self._loop is not None
        deadline = self._reassembler.next_deadline()
        # uvloop's timers have millisecond resolution and may fire a hair early;
        # expiring "at the deadline" then avoids re-arming for a sub-ms spin.
        now = self._loop.time()
        if deadline is not None and 0 < deadline - now < _TIMER_SLACK:
            now = deadline

        self._reassembler.expire(now)
        self._schedule_expiry()
