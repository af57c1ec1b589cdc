"""Who owns a received message's fds and shared payload, without any bus.

The router, the subscriptions and `Message` are driven directly with real pipes
and memfds, so each rule of the ownership table in ``docs/fds.md`` is checked on
its own: one owner per descriptor, closed on every path that drops a message,
and the publisher told of a released segment only when nobody can read it.
"""

from __future__ import annotations

import gc
import mmap
import os
from collections.abc import Iterator

import pytest

import asyncbus
from asyncbus._core.patterns import TopicPattern
from asyncbus._message import Message, Sender, _Mapping, _Resources, fd_budget
from asyncbus._subscription import OverflowPolicy, Subscription, _Inbox, _Router
from tests.peers.fd_member import is_open

SENDER = Sender("test")


@pytest.fixture
def pipes() -> Iterator[list[int]]:
    """Descriptors counted in the budget as a received message's would be."""
    made: list[int] = []
    yield made
    leftovers = [fd for fd in made if is_open(fd)]
    for fd in leftovers:
        os.close(fd)

    assert not leftovers, f"the test left fds open: {leftovers}"


def received_fds(made: list[int], count: int) -> list[int]:
    """Make ``count`` fds and count them in the budget, as the adapter does."""
    fds = []
    for _ in range(count):
        read, write = os.pipe()
        os.close(read)
        fds.append(write)

    made.extend(fds)
    fd_budget.reserve(count)
    return fds


def mapping(released: list[str]) -> _Mapping:
    memfd = os.memfd_create("test")
    os.ftruncate(memfd, 4096)
    os.pwrite(memfd, b"shared", 0)
    mapped = mmap.mmap(memfd, 4096, mmap.MAP_SHARED, mmap.PROT_READ)
    os.close(memfd)
    fd_budget.reserve(1)
    return _Mapping(mapped, lambda: released.append("released"))


class TestMessage:
    def test_take_fds_hands_them_over(self, pipes: list[int]) -> None:
        held = fd_budget.held
        fds = received_fds(pipes, 2)
        msg = Message("t", b"", 0, SENDER, 0.0, _Resources(list(fds)))
        assert msg.fds == tuple(fds)
        assert msg.take_fds() == fds
        assert msg.fds == ()
        assert msg.take_fds() == []
        assert fd_budget.held == held
        msg.release()
        assert all(is_open(fd) for fd in fds)  # taken: the message does not close them
        for fd in fds:
            os.close(fd)

    def test_release_closes_untaken_and_is_idempotent(self, pipes: list[int]) -> None:
        held = fd_budget.held
        fds = received_fds(pipes, 3)
        with Message("t", b"", 0, SENDER, 0.0, _Resources(list(fds))) as msg:
            pass

        assert not any(is_open(fd) for fd in fds)
        assert fd_budget.held == held
        msg.release()
        assert msg.take_fds() == []

    def test_garbage_collection_closes(self, pipes: list[int]) -> None:
        fds = received_fds(pipes, 1)
        msg = Message("t", b"", 0, SENDER, 0.0, _Resources(list(fds)))
        del msg
        gc.collect()
        assert not is_open(fds[0])

    def test_plain_messages_own_nothing(self) -> None:
        msg = Message("t", b"x", 0, SENDER, 0.0)
        assert (msg.fds, msg.take_fds()) == ((), [])
        msg.release()
        assert msg.data == b"x"


class TestMapping:
    def test_release_unmaps_and_tells_the_publisher(self) -> None:
        held = fd_budget.held
        released: list[str] = []
        shared = mapping(released)
        msg = Message("t", shared.view, 0, SENDER, 0.0, _Resources([], shared))
        assert bytes(msg.data[:6]) == b"shared"
        msg.release()
        assert released == ["released"]
        assert fd_budget.held == held
        with pytest.raises(ValueError, match="released"):
            bytes(msg.data)

    def test_a_slice_kept_past_release_delays_the_publisher(self) -> None:
        held = fd_budget.held
        released: list[str] = []
        shared = mapping(released)
        msg = Message("t", shared.view, 0, SENDER, 0.0, _Resources([], shared))
        kept = msg.data[:6]
        msg.release()
        assert released == []  # the publisher must not reuse memory we still read
        assert bytes(kept) == b"shared"
        del kept
        gc.collect()
        assert released == ["released"]
        assert fd_budget.held == held

    def test_shared_by_two_owners_until_both_release(self, pipes: list[int]) -> None:
        released: list[str] = []
        shared = mapping(released)
        first = _Resources(received_fds(pipes, 1), shared)
        second = first.duplicate()
        assert second.fds != first.fds
        first.close()
        assert released == []
        second.close()
        assert released == ["released"]


class TestSubscriptionsDropAndClose:
    def route(self, policy: OverflowPolicy, maxsize: int = 1) -> tuple[_Router, Subscription]:
        router = _Router(lambda blocked: None)
        inbox = _Inbox(TopicPattern.exactly("t"), maxsize, policy, router)
        router.add(inbox)
        return router, Subscription(inbox)

    @pytest.mark.parametrize(
        "policy", [OverflowPolicy.DROP_OLDEST, OverflowPolicy.DROP_NEWEST], ids=str
    )
    def test_overflow_closes_the_dropped_message_fds(
        self, policy: OverflowPolicy, pipes: list[int]
    ) -> None:
        router, sub = self.route(policy)
        first, second = received_fds(pipes, 1), received_fds(pipes, 1)
        router.dispatch("t", b"1", 0, SENDER, _Resources(list(first)))
        router.dispatch("t", b"2", 1, SENDER, _Resources(list(second)))
        dropped, kept = (first, second) if policy is OverflowPolicy.DROP_OLDEST else (second, first)
        assert not is_open(dropped[0])
        assert is_open(kept[0])
        assert sub.statistics().dropped == 1
        sub.close()
        assert not is_open(kept[0])  # left in a closing subscription: closed

    def test_unmatched_closes(self, pipes: list[int]) -> None:
        router, sub = self.route(OverflowPolicy.DROP_OLDEST)
        fds = received_fds(pipes, 1)
        router.dispatch("other", b"", 0, SENDER, _Resources(list(fds)))
        assert not is_open(fds[0])
        assert router.unmatched == 1
        sub.close()

    def test_two_subscriptions_get_their_own_fds(self, pipes: list[int]) -> None:
        router, first = self.route(OverflowPolicy.DROP_OLDEST)
        second_inbox = _Inbox(TopicPattern("*"), 4, OverflowPolicy.DROP_OLDEST, router)
        router.add(second_inbox)
        second = Subscription(second_inbox)
        fds = received_fds(pipes, 1)
        router.dispatch("t", b"", 0, SENDER, _Resources(list(fds)))
        one, two = first.receive_nowait(), second.receive_nowait()
        mine, theirs = one.take_fds(), two.take_fds()
        pipes.extend(mine + theirs)
        assert mine != theirs
        assert os.fstat(mine[0]).st_ino == os.fstat(theirs[0]).st_ino  # the same pipe
        for fd in mine + theirs:
            os.close(fd)

        first.close()
        second.close()

    def test_budget_full_drops_for_the_second_subscription(self, pipes: list[int]) -> None:
        router, first = self.route(OverflowPolicy.DROP_OLDEST)
        second_inbox = _Inbox(TopicPattern("*"), 4, OverflowPolicy.DROP_OLDEST, router)
        router.add(second_inbox)
        second = Subscription(second_inbox)
        fds = received_fds(pipes, 1)
        limit = fd_budget.limit
        fd_budget.limit = fd_budget.held  # no room for a duplicate
        try:
            router.dispatch("t", b"", 0, SENDER, _Resources(list(fds)))
        finally:
            fd_budget.limit = limit

        assert first.receive_nowait().fds == tuple(fds)
        assert (router.fd_drops, second.statistics().dropped) == (1, 0)  # not an overflow
        first.close()
        second.close()


class TestBudget:
    def test_limit_validation(self) -> None:
        for bad in (-1, 1.5, True, "3"):
            with pytest.raises(ValueError, match="fd budget"):
                asyncbus.fd_budget.limit = bad  # type: ignore[assignment]

    def test_reserve_over_the_limit_raises(self) -> None:
        limit = fd_budget.limit
        fd_budget.limit = fd_budget.held + 1
        try:
            fd_budget.reserve(1)
            fd_budget.free(1)
            with pytest.raises(asyncbus.FDBudgetError, match="fd budget"):
                fd_budget.reserve(2)
        finally:
            fd_budget.limit = limit

    def test_default_is_half_the_soft_limit(self) -> None:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert asyncbus.FDBudget().limit == max(16, soft // 2)
