"""The peer table of a unix bus member: one test per row of the rules table in
``asyncbus/_core/membership.py``, driven by calling its methods (no sockets)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncbus._core import membership as membership_module
from asyncbus._core.membership import HelloActions, Membership, Peer
from asyncbus._core.unixwire import (
    Bye,
    Hello,
    PatternKind,
    PeerPolicy,
    SubscriptionEntry,
    Subscriptions,
    decode_control,
    encode_hello,
    encode_subscriptions,
)

OWN = b"\0asyncbus/t/1-00000000"
ALICE = b"\0asyncbus/t/2-aaaaaaaa"
BOB = b"\0asyncbus/t/3-bbbbbbbb"


def wants(*topics: str, policy: PeerPolicy = PeerPolicy.DROP_OLDEST) -> Subscriptions:
    return Subscriptions(
        tuple(SubscriptionEntry(PatternKind.EXACT, policy, topic) for topic in topics)
    )


def everything(policy: PeerPolicy = PeerPolicy.DROP_OLDEST) -> Subscriptions:
    return Subscriptions((SubscriptionEntry(PatternKind.ALL, policy, ""),))


def verified_member(*peers: tuple[str, bytes, Subscriptions]) -> Membership:
    """A member that heard HELLO and SUBSCRIBE from each (source, address, subscriptions)."""
    table = Membership(OWN)
    for source, address, subscriptions in peers:
        table.on_hello(source, Hello(address, reply=False))
        table.on_subscriptions(source, subscriptions)

    return table


class TestFoundAtJoin:
    def test_link_makes_a_linked_unverified_peer(self) -> None:
        table = Membership(OWN)
        peer = table.link(ALICE)
        assert peer.address == ALICE
        assert not peer.verified
        assert peer.seq == 0
        assert not peer.stalled
        assert table.peers == {ALICE: peer}
        assert table.verified == 0
        assert repr(peer) == f"<Peer {ALICE!r} linked>"

    def test_link_twice_is_the_same_peer(self) -> None:
        table = Membership(OWN)
        assert table.link(ALICE) is table.link(ALICE)
        assert len(table.peers) == 1

    def test_a_linked_peer_gets_no_messages(self) -> None:
        table = Membership(OWN)
        table.link(ALICE)
        assert table.targets("t") == ()

    def test_a_linked_peer_has_no_source(self) -> None:
        table = Membership(OWN)
        table.link(ALICE)
        assert table.peer_of(ALICE) is None


class TestHello:
    """HELLO from an accepted source: link, answer, subscribe, verify."""

    @pytest.mark.parametrize(
        ("linked", "verified", "reply", "expected"),
        [
            (False, False, False, (True, True, True)),
            (False, False, True, (True, True, True)),
            (True, False, False, (False, False, True)),
            (True, False, True, (False, True, True)),
            (True, True, False, (False, False, False)),
            (True, True, True, (False, True, True)),
        ],
        ids=[
            "unknown",
            "unknown-asks-reply",
            "linked-answers-our-hello",
            "linked-asks-reply",
            "verified-says-hello-again",
            "verified-asks-reply",
        ],
    )
    def test_actions(
        self, linked: bool, verified: bool, reply: bool, expected: tuple[bool, bool, bool]
    ) -> None:
        table = Membership(OWN)
        if linked:
            table.link(ALICE)

        if verified:
            table.on_hello("alice", Hello(ALICE, reply=False))

        actions = table.on_hello("alice", Hello(ALICE, reply=reply))
        assert isinstance(actions, HelloActions)
        assert (actions.link, actions.send_hello, actions.send_subscriptions) == expected
        assert actions.peer is table.peers[ALICE]
        assert actions.peer.verified
        assert table.verified == 1
        assert table.peer_of("alice") is actions.peer

    def test_hello_naming_ourselves_is_ignored(self) -> None:
        table = Membership(OWN)
        assert table.on_hello("me", Hello(OWN, reply=True)) is None
        assert table.peers == {}
        assert table.peer_of("me") is None
        assert table.verified == 0

    def test_a_new_peer_has_no_interest_until_it_subscribes(self) -> None:
        table = Membership(OWN)
        table.on_hello("alice", Hello(ALICE, reply=False))
        assert table.targets("t") == ()

    def test_two_sources_for_one_peer(self) -> None:
        # seqpacket: the peer's link to us may be reconnected; both name the same peer.
        table = Membership(OWN)
        first = table.on_hello("first", Hello(ALICE, reply=True))
        second = table.on_hello("second", Hello(ALICE, reply=False))
        assert first is not None and second is not None
        assert first.peer is second.peer
        assert table.verified == 1
        assert table.peer_of("first") is table.peer_of("second") is first.peer

    def test_a_source_that_names_another_address(self) -> None:
        table = Membership(OWN)
        table.on_hello("source", Hello(ALICE, reply=False))
        table.on_hello("source", Hello(BOB, reply=False))
        assert table.peer_of("source") is table.peers[BOB]
        assert table.verified == 2


@dataclass
class Member:
    """A member that follows the rules table, sending frames into a shared wire."""

    address: bytes
    subscriptions: Subscriptions
    table: Membership = field(init=False)
    sent: list[tuple[bytes, bytes]] = field(default_factory=list)  # (to, frame)

    def __post_init__(self) -> None:
        self.table = Membership(self.address)

    def join(self, found: list[bytes]) -> None:
        for address in found:
            self.table.link(address)
            self.sent.append((address, encode_hello(self.address, reply=True)))

    def receive(self, source: bytes, frame: bytes) -> None:
        control = decode_control(frame)
        if isinstance(control, Hello):
            actions = self.table.on_hello(source, control)
            assert actions is not None
            if actions.send_hello:
                self.sent.append((actions.peer.address, encode_hello(self.address, reply=False)))

            if actions.send_subscriptions:
                frame = encode_subscriptions(self.subscriptions.entries)
                self.sent.append((actions.peer.address, frame))
        elif isinstance(control, Subscriptions):
            assert self.table.on_subscriptions(source, control) is not None
        else:
            assert isinstance(control, Bye)
            peer = self.table.peer_of(source)
            self.table.forget_source(source)
            if peer is not None:
                self.table.forget(peer.address)


def run(members: list[Member]) -> int:
    """Deliver every frame in order until nobody has anything to send; return how many."""
    by_address = {member.address: member for member in members}
    wire: deque[tuple[bytes, bytes, bytes]] = deque()
    delivered = 0
    while True:
        for member in members:
            wire.extend((member.address, to, frame) for to, frame in member.sent)
            member.sent.clear()

        if not wire:
            return delivered

        source, to, frame = wire.popleft()
        by_address[to].receive(source, frame)
        delivered += 1
        assert delivered < 100, "the members never stop talking"


class TestJoin:
    def test_join_an_existing_member(self) -> None:
        alice = Member(ALICE, wants("a"))
        bob = Member(BOB, wants("b"))
        alice.join([])
        bob.join([ALICE])
        # bob: HELLO(REPLY); alice: HELLO + SUBSCRIBE; bob: SUBSCRIBE.
        assert run([alice, bob]) == 4
        assert alice.table.targets("b") == ((alice.table.peers[BOB], PeerPolicy.DROP_OLDEST),)
        assert bob.table.targets("a") == ((bob.table.peers[ALICE], PeerPolicy.DROP_OLDEST),)

    def test_simultaneous_join(self) -> None:
        # Both found each other's socket before either spoke.
        alice = Member(ALICE, wants("a"))
        bob = Member(BOB, wants("b"))
        alice.join([BOB])
        bob.join([ALICE])
        # Each: HELLO(REPLY), then on the other's HELLO(REPLY) a HELLO and a SUBSCRIBE;
        # the plain HELLOs end it.
        assert run([alice, bob]) == 6
        for member, other, topic in ((alice, BOB, "b"), (bob, ALICE, "a")):
            peer = member.table.peers[other]
            assert peer.verified
            assert member.table.verified == 1
            assert member.table.targets(topic) == ((peer, PeerPolicy.DROP_OLDEST),)

    def test_three_members_join_one_after_another(self) -> None:
        carol_address = b"\0asyncbus/t/4-cccccccc"
        alice = Member(ALICE, wants("t"))
        bob = Member(BOB, wants("t"))
        carol = Member(carol_address, wants("t"))
        alice.join([])
        run([alice])
        bob.join([ALICE])
        run([alice, bob])
        carol.join([ALICE, BOB])
        run([alice, bob, carol])
        for member in (alice, bob, carol):
            assert member.table.verified == 2
            assert len(member.table.targets("t")) == 2


class TestSubscribe:
    def test_subscribe_before_hello_returns_none(self) -> None:
        table = Membership(OWN)
        assert table.on_subscriptions("stranger", wants("t")) is None
        assert table.targets("t") == ()

    def test_subscribe_from_a_linked_peer_without_hello_returns_none(self) -> None:
        table = Membership(OWN)
        table.link(ALICE)
        assert table.on_subscriptions(ALICE, wants("t")) is None
        assert table.peers[ALICE].interest.policy("t") is None

    def test_subscribe_replaces_the_whole_interest(self) -> None:
        table = verified_member(("alice", ALICE, wants("a", "b")))
        peer = table.on_subscriptions("alice", wants("c", policy=PeerPolicy.BLOCK))
        assert peer is table.peers[ALICE]
        assert table.targets("a") == table.targets("b") == ()
        assert table.targets("c") == ((peer, PeerPolicy.BLOCK),)

    def test_empty_subscribe_unsubscribes(self) -> None:
        table = verified_member(("alice", ALICE, wants("a")))
        table.on_subscriptions("alice", Subscriptions(()))
        assert table.targets("a") == ()
        assert table.verified == 1  # still a peer, just wants nothing


class TestLeaving:
    def test_bye_forgets_the_peer(self) -> None:
        # What the adapter does with BYE: the source's peer, then forget both.
        table = verified_member(("alice", ALICE, wants("t")))
        peer = table.peer_of("alice")
        assert peer is not None
        table.forget_source("alice")
        assert table.forget(peer.address) is peer
        assert table.peers == {}
        assert table.verified == 0
        assert table.peer_of("alice") is None
        assert table.targets("t") == ()

    def test_forget_removes_every_source_of_the_peer(self) -> None:
        table = verified_member(("one", ALICE, wants("t")), ("two", ALICE, wants("t")))
        table.forget(ALICE)
        assert table.peer_of("one") is None
        assert table.peer_of("two") is None

    def test_forget_keeps_other_peers_sources(self) -> None:
        table = verified_member(("alice", ALICE, wants("t")), ("bob", BOB, wants("t")))
        table.forget(ALICE)
        assert table.peer_of("bob") is table.peers[BOB]
        assert [peer for peer, _ in table.targets("t")] == [table.peers[BOB]]

    def test_forget_an_unknown_peer(self) -> None:
        table = Membership(OWN)
        assert table.forget(ALICE) is None
        assert table.verified == 0

    def test_forget_a_linked_peer_keeps_the_count(self) -> None:
        # A member found at join that never answered: freed without touching `verified`.
        table = verified_member(("bob", BOB, wants("t")))
        table.link(ALICE)
        assert table.forget(ALICE) is not None
        assert table.verified == 1

    def test_connection_ended_forgets_only_the_source(self) -> None:
        table = verified_member(("alice", ALICE, wants("t")))
        table.forget_source("alice")
        table.forget_source("never-seen")  # harmless
        assert table.peer_of("alice") is None
        assert table.peers[ALICE].verified  # the adapter decides whether to forget it

    def test_subscribe_after_bye_returns_none(self) -> None:
        table = verified_member(("alice", ALICE, wants("t")))
        table.forget_source("alice")
        table.forget(ALICE)
        assert table.on_subscriptions("alice", wants("t")) is None

    def test_a_peer_that_comes_back_is_new(self) -> None:
        table = verified_member(("alice", ALICE, wants("t")))
        old = table.peers[ALICE]
        old.next_seq()
        table.forget(ALICE)
        actions = table.on_hello("alice again", Hello(ALICE, reply=True))
        assert actions is not None
        assert actions.link and actions.send_hello and actions.send_subscriptions
        assert actions.peer is not old
        assert actions.peer.seq == 0  # a new link numbers from 0
        assert table.verified == 1

    def test_our_subscription_change_goes_to_verified_peers_only(self) -> None:
        # "our subscriptions change: send SUBSCRIBE to every verified peer"
        table = verified_member(("alice", ALICE, wants("t")))
        table.link(BOB)
        verified = [peer.address for peer in table.peers.values() if peer.verified]
        assert verified == [ALICE]


class TestSequence:
    def test_numbers_start_at_zero_and_count_up(self) -> None:
        peer = Peer(ALICE)
        assert [peer.next_seq() for _ in range(3)] == [0, 1, 2]
        assert peer.seq == 3

    def test_wraps_at_2_to_the_32(self) -> None:
        peer = Peer(ALICE)
        peer.seq = 2**32 - 2
        assert [peer.next_seq() for _ in range(3)] == [2**32 - 2, 2**32 - 1, 0]
        assert peer.seq == 1

    def test_each_peer_has_its_own_numbers(self) -> None:
        table = verified_member(("alice", ALICE, wants("t")), ("bob", BOB, wants("t")))
        alice, bob = table.peers[ALICE], table.peers[BOB]
        assert [alice.next_seq() for _ in range(5)] == [0, 1, 2, 3, 4]
        assert bob.next_seq() == 0

    @given(st.integers(0, 2**32 - 1), st.integers(1, 50))
    def test_always_a_u32(self, start: int, steps: int) -> None:
        peer = Peer(ALICE)
        peer.seq = start
        numbers = [peer.next_seq() for _ in range(steps)]
        assert numbers == [(start + i) % 2**32 for i in range(steps)]


class TestTargetsCache:
    """targets() caches per topic; every change that matters must show at once."""

    def test_a_new_verified_peer_appears(self) -> None:
        table = verified_member(("alice", ALICE, everything()))
        assert len(table.targets("t")) == 1
        table.on_hello("bob", Hello(BOB, reply=False))
        table.on_subscriptions("bob", everything())
        assert {peer.address for peer, _ in table.targets("t")} == {ALICE, BOB}

    def test_verification_alone_invalidates(self) -> None:
        # Cached while the peer was only linked; its HELLO must show through the cache.
        table = Membership(OWN)
        peer = table.link(ALICE)
        assert table.targets("t") == ()
        table.on_hello("alice", Hello(ALICE, reply=False))
        table.on_subscriptions("alice", wants("t"))
        assert table.targets("t") == ((peer, PeerPolicy.DROP_OLDEST),)

    def test_a_subscription_change_shows(self) -> None:
        table = verified_member(("alice", ALICE, wants("a")))
        assert table.targets("b") == ()
        table.on_subscriptions("alice", wants("b", policy=PeerPolicy.BLOCK))
        assert table.targets("a") == ()
        assert table.targets("b") == ((table.peers[ALICE], PeerPolicy.BLOCK),)

    def test_a_policy_change_shows(self) -> None:
        table = verified_member(("alice", ALICE, wants("a")))
        assert table.targets("a")[0][1] is PeerPolicy.DROP_OLDEST
        table.on_subscriptions("alice", wants("a", policy=PeerPolicy.DROP_NEWEST))
        assert table.targets("a")[0][1] is PeerPolicy.DROP_NEWEST

    def test_a_forgotten_peer_disappears(self) -> None:
        table = verified_member(("alice", ALICE, everything()), ("bob", BOB, everything()))
        assert len(table.targets("t")) == 2
        table.forget(ALICE)
        assert [peer.address for peer, _ in table.targets("t")] == [BOB]

    def test_a_linked_peer_does_not_appear(self) -> None:
        table = verified_member(("alice", ALICE, everything()))
        table.targets("t")
        table.link(BOB)
        assert [peer.address for peer, _ in table.targets("t")] == [ALICE]

    def test_the_cache_is_bounded(self) -> None:
        table = verified_member(("alice", ALICE, everything()))
        limit = membership_module._CACHE_LIMIT
        for number in range(limit + 10):
            assert len(table.targets(f"t{number}")) == 1

        assert len(table._targets) <= limit

    def test_results_stay_right_after_the_cache_is_emptied(self) -> None:
        table = verified_member(("alice", ALICE, wants("keep")))
        for number in range(membership_module._CACHE_LIMIT + 1):
            table.targets(f"t{number}")

        table.on_subscriptions("alice", wants("new"))
        assert table.targets("keep") == ()
        assert len(table.targets("new")) == 1

    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["hello", "subscribe", "forget", "link", "targets"]),
                st.sampled_from([ALICE, BOB]),
                st.frozensets(st.sampled_from(["a", "b", "c"])),
            ),
            max_size=30,
        )
    )
    def test_cached_targets_equal_fresh_ones(
        self, events: list[tuple[str, bytes, frozenset[str]]]
    ) -> None:
        table = Membership(OWN)
        for action, address, topics in events:
            source = address.decode()
            if action == "hello":
                table.on_hello(source, Hello(address, reply=False))
            elif action == "subscribe":
                table.on_subscriptions(source, wants(*sorted(topics)))
            elif action == "forget":
                table.forget(address)
            elif action == "link":
                table.link(address)
            else:
                for topic in ("a", "b", "c"):
                    table.targets(topic)

            for topic in ("a", "b", "c"):
                fresh = tuple(
                    (peer, policy)
                    for peer in table.peers.values()
                    if peer.verified and (policy := peer.interest.policy(topic)) is not None
                )
                assert table.targets(topic) == fresh

            assert table.verified == sum(peer.verified for peer in table.peers.values())
