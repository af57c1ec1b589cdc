"""The publisher's segment pool: size classes, reuse, holds, the byte limit and the free bound."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from asyncbus._core.segments import (
    MIN_CAPACITY,
    Lending,
    PoolStatistics,
    SegmentPool,
    capacity_for,
)

S = MIN_CAPACITY  # the smallest class
MiB = 1024 * 1024
LOAN_WRAP = 2**32  # loan numbers are u32 on the wire
PLENTY = 1024 * MiB  # a limit or keep that no test reaches


def counts(pool: SegmentPool) -> dict[str, int]:
    """Return the statistics as a dict, for comparisons that show every field."""
    return dataclasses.asdict(pool.statistics())


def zero(**values: int) -> dict[str, int]:
    """Return statistics with every counter 0 except those given."""
    names = [field.name for field in dataclasses.fields(PoolStatistics)]
    return {name: values.get(name, 0) for name in names}


def lend_slot(pool: SegmentPool, size: int) -> int:
    """Lend a segment that must be available; return its slot."""
    lending = pool.lend(size)
    assert lending is not None
    return lending.slot


def publish_to(pool: SegmentPool, size: int, holders: list[str]) -> tuple[int, int]:
    """Lend a segment and publish it at once; return (slot, loan)."""
    slot = lend_slot(pool, size)
    loan, destroy = pool.publish(slot, holders)
    assert destroy == ()
    return slot, loan


class TestCapacityFor:
    @pytest.mark.parametrize(
        ("size", "capacity"),
        [
            (0, S),
            (1, S),
            (S - 1, S),
            (S, S),
            (S + 1, 2 * S),
            (2 * S, 2 * S),
            (2 * S + 1, 4 * S),
            (MiB - 1, MiB),
            (MiB, MiB),
            (MiB + 1, 2 * MiB),
            (64 * MiB, 64 * MiB),
            (64 * MiB + 1, 128 * MiB),
        ],
        ids=[
            "zero",
            "one",
            "min-minus-one",
            "min",
            "min-plus-one",
            "two-min",
            "two-min-plus-one",
            "1MiB-minus-one",
            "1MiB",
            "1MiB-plus-one",
            "64MiB",
            "64MiB-plus-one",
        ],
    )
    def test_boundaries(self, size: int, capacity: int) -> None:
        assert capacity_for(size) == capacity

    @pytest.mark.parametrize("shift", range(16, 31), ids=lambda shift: f"2**{shift}")
    def test_powers_of_two_are_their_own_class(self, shift: int) -> None:
        assert capacity_for(1 << shift) == 1 << shift
        assert capacity_for((1 << shift) + 1) == 1 << (shift + 1)

    @settings(deadline=None, derandomize=True, max_examples=300)
    @given(st.integers(0, 2**40))
    def test_smallest_power_of_two_that_fits(self, size: int) -> None:
        capacity = capacity_for(size)

        assert capacity & (capacity - 1) == 0  # a power of two
        assert capacity >= max(size, S)
        assert capacity == S or capacity // 2 < size  # the next class down is too small


class TestConstruction:
    @pytest.mark.parametrize(
        ("limit", "keep", "match"),
        [
            (S - 1, 0, "at least"),
            (0, 0, "at least"),
            (-1, 0, "at least"),
            (S, -1, "negative"),
        ],
        ids=["limit-min-minus-one", "limit-zero", "limit-negative", "keep-negative"],
    )
    def test_rejects(self, limit: int, keep: int, match: str) -> None:
        with pytest.raises(ValueError, match=match):
            SegmentPool(limit=limit, keep=keep)

    @pytest.mark.parametrize(
        ("limit", "keep"),
        [(S, 0), (S, S), (3 * S, 10 * S), (PLENTY, 0)],
        ids=["smallest", "keep-equals-limit", "keep-over-limit", "keep-nothing"],
    )
    def test_accepts(self, limit: int, keep: int) -> None:
        pool = SegmentPool(limit=limit, keep=keep)

        assert (pool.limit, pool.keep) == (limit, keep)
        assert counts(pool) == zero()

    def test_limit_of_one_class_holds_one_segment(self) -> None:
        pool = SegmentPool(limit=S, keep=0)

        assert pool.lend(S) == Lending(0, S, create=True, destroy=())
        assert pool.lend(1) is None


class TestLend:
    def test_first_lend_creates(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)

        assert pool.lend(100) == Lending(0, S, create=True, destroy=())
        assert counts(pool) == zero(segments=1, bytes=S, created=1)

    def test_new_segments_get_new_slots(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)

        assert [lend_slot(pool, S) for _ in range(4)] == [0, 1, 2, 3]
        assert counts(pool) == zero(segments=4, bytes=4 * S, created=4)

    def test_given_back_segment_is_reused(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        slot = lend_slot(pool, S)

        assert pool.give_back(slot) == ()
        assert counts(pool) == zero(segments=1, bytes=S, free=1, created=1)
        assert pool.lend(S) == Lending(slot, S, create=False, destroy=())
        assert counts(pool) == zero(segments=1, bytes=S, created=1, reused=1)

    @pytest.mark.parametrize(
        ("first", "second"),
        [(S + 1, 2 * S), (2 * S, S + 1), (0, S), (S, 1)],
        ids=["bottom-then-top", "top-then-bottom", "zero-then-min", "min-then-one"],
    )
    def test_any_size_of_the_class_reuses(self, first: int, second: int) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        lending = pool.lend(first)
        assert lending is not None
        pool.give_back(lending.slot)

        assert pool.lend(second) == Lending(lending.slot, lending.capacity, False, ())

    def test_most_recently_freed_first(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        slots = [lend_slot(pool, S) for _ in range(3)]
        for slot in (slots[0], slots[2], slots[1]):
            pool.give_back(slot)

        assert [lend_slot(pool, S) for _ in range(3)] == [slots[1], slots[2], slots[0]]
        assert counts(pool) == zero(segments=3, bytes=3 * S, created=3, reused=3)

    def test_most_recently_freed_of_the_class_skips_other_classes(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        small = lend_slot(pool, S)
        large = lend_slot(pool, 2 * S)
        pool.give_back(small)
        pool.give_back(large)  # the most recent, but of another class

        assert pool.lend(S) == Lending(small, S, create=False, destroy=())

    @pytest.mark.parametrize(
        ("free_size", "wanted"),
        [(2 * S, S), (S, 2 * S), (4 * S, S), (S, 4 * S + 1)],
        ids=["larger-free", "smaller-free", "much-larger-free", "much-smaller-free"],
    )
    def test_never_a_segment_of_another_class(self, free_size: int, wanted: int) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        free = lend_slot(pool, free_size)
        pool.give_back(free)

        lending = pool.lend(wanted)

        assert lending is not None
        assert lending.slot != free
        assert (lending.capacity, lending.create) == (capacity_for(wanted), True)
        assert pool.lend(free_size) == Lending(free, capacity_for(free_size), False, ())

    def test_counters_over_a_sequence(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        a = lend_slot(pool, S)
        b = lend_slot(pool, 2 * S)
        pool.give_back(a)
        a = lend_slot(pool, S)  # reused
        _, loan = publish_to(pool, S, ["x"])  # created: a is lent
        pool.release(loan, "x")
        lend_slot(pool, S)  # reused
        pool.give_back(b)
        lend_slot(pool, 2 * S)  # reused

        assert counts(pool) == zero(segments=3, bytes=4 * S, created=3, reused=3)


class TestPayloadTooLarge:
    @pytest.mark.parametrize(
        ("limit", "size"),
        [
            (S, S + 1),
            (4 * S, 4 * S + 1),
            (4 * S, 10**12),
            (3 * S, 2 * S + 1),
        ],
        ids=["over-min-limit", "over-power-of-two-limit", "huge", "class-over-odd-limit"],
    )
    def test_raises_and_changes_nothing(self, limit: int, size: int) -> None:
        pool = SegmentPool(limit=limit, keep=limit)
        slot = lend_slot(pool, 1)
        pool.give_back(slot)
        before = counts(pool)

        with pytest.raises(ValueError, match="limit"):
            pool.lend(size)

        assert counts(pool) == before
        assert pool.lend(1) == Lending(slot, S, create=False, destroy=())

    @pytest.mark.parametrize("limit", [S, 4 * S, 3 * S], ids=["min", "power-of-two", "odd"])
    def test_largest_class_under_the_limit_is_lent(self, limit: int) -> None:
        pool = SegmentPool(limit=limit, keep=0)
        largest = 1 << (limit.bit_length() - 1)

        assert pool.lend(largest) == Lending(0, largest, create=True, destroy=())

    def test_raises_even_when_the_pool_is_full(self) -> None:
        pool = SegmentPool(limit=S, keep=0)
        lend_slot(pool, S)

        with pytest.raises(ValueError, match="limit"):
            pool.lend(2 * S)


class TestPublishAndRelease:
    def test_not_lent_again_until_every_holder_released(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        slot, loan = publish_to(pool, S, ["a", "b"])
        assert pool.holders(loan) == {"a", "b"}
        assert counts(pool)["published"] == 1

        other = lend_slot(pool, S)
        assert other != slot
        pool.give_back(other)

        assert pool.release(loan, "a") == ()
        assert pool.holders(loan) == {"b"}
        assert pool.lend(S) == Lending(other, S, create=False, destroy=())
        third = lend_slot(pool, S)
        assert third not in (slot, other)

        assert pool.release(loan, "b") == ()
        assert pool.holders(loan) == frozenset()
        assert counts(pool)["published"] == 0
        assert pool.lend(S) == Lending(slot, S, create=False, destroy=())

    def test_release_by_non_holder_does_nothing(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        slot, loan = publish_to(pool, S, ["a"])
        before = counts(pool)

        assert pool.release(loan, "b") == ()
        assert pool.holders(loan) == {"a"}
        assert counts(pool) == before
        assert lend_slot(pool, S) != slot

    @pytest.mark.parametrize(
        "loan", [1, 7, LOAN_WRAP - 1, LOAN_WRAP, -1], ids=["next", "far", "max-u32", "over", "neg"]
    )
    def test_release_of_unknown_loan_does_nothing(self, loan: int) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        slot, held = publish_to(pool, S, ["a"])
        before = counts(pool)

        assert pool.release(loan, "a") == ()
        assert pool.holders(held) == {"a"}
        assert counts(pool) == before
        assert lend_slot(pool, S) != slot

    def test_double_release_does_nothing(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        slot, loan = publish_to(pool, S, ["a", "b"])
        pool.release(loan, "a")
        before = counts(pool)

        assert pool.release(loan, "a") == ()
        assert pool.holders(loan) == {"b"}
        assert counts(pool) == before
        assert lend_slot(pool, S) != slot

    def test_release_after_the_loan_is_over_does_nothing(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        _, loan = publish_to(pool, S, ["a"])
        pool.release(loan, "a")
        before = counts(pool)

        assert pool.release(loan, "a") == ()
        assert counts(pool) == before == zero(segments=1, bytes=S, free=1, created=1)

    def test_drop_holder_releases_all_its_loans(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        only_a, loan_a = publish_to(pool, S, ["a"])
        shared, loan_ab = publish_to(pool, 2 * S, ["a", "b"])
        also_a, loan_a2 = publish_to(pool, 4 * S, ["a"])
        only_b, loan_b = publish_to(pool, S, ["b"])

        assert pool.drop_holder("a") == ()

        assert [pool.holders(loan) for loan in (loan_a, loan_ab, loan_a2, loan_b)] == [
            frozenset(),
            {"b"},
            frozenset(),
            {"b"},
        ]
        assert counts(pool) == zero(segments=4, bytes=8 * S, free=2, published=2, created=4)
        assert pool.lend(S) == Lending(only_a, S, create=False, destroy=())
        assert pool.lend(4 * S) == Lending(also_a, 4 * S, create=False, destroy=())
        assert lend_slot(pool, 2 * S) != shared
        assert pool.drop_holder("a") == ()

        assert pool.drop_holder("b") == ()
        assert pool.lend(2 * S) == Lending(shared, 2 * S, create=False, destroy=())
        assert pool.lend(S) == Lending(only_b, S, create=False, destroy=())

    def test_drop_holder_after_some_releases(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        _, loan1 = publish_to(pool, S, ["a"])
        _, loan2 = publish_to(pool, S, ["a"])
        pool.release(loan1, "a")

        assert pool.drop_holder("a") == ()
        assert counts(pool) == zero(segments=2, bytes=2 * S, free=2, created=2)
        assert pool.holders(loan2) == frozenset()

    def test_drop_unknown_holder_does_nothing(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        _, loan = publish_to(pool, S, ["a"])
        before = counts(pool)

        assert pool.drop_holder("nobody") == ()
        assert pool.holders(loan) == {"a"}
        assert counts(pool) == before

    @pytest.mark.parametrize(
        "holders", [[], (), set(), iter([])], ids=["list", "tuple", "set", "iterator"]
    )
    def test_publish_without_holders_frees_at_once(self, holders: Iterable[str]) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        slot = lend_slot(pool, S)

        loan, destroy = pool.publish(slot, holders)

        assert (loan, destroy) == (0, ())
        assert pool.holders(loan) == frozenset()
        assert counts(pool) == zero(segments=1, bytes=S, free=1, created=1)
        assert pool.lend(S) == Lending(slot, S, create=False, destroy=())

    def test_holders_from_a_generator_with_repeats(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        slot = lend_slot(pool, S)

        loan, _ = pool.publish(slot, (name for name in ["a", "b", "a"]))

        assert pool.holders(loan) == {"a", "b"}
        pool.release(loan, "a")
        assert pool.holders(loan) == {"b"}
        pool.release(loan, "b")
        assert counts(pool)["free"] == 1

    def test_holders_are_any_hashable(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        peer: Hashable = b"\0peer-socket"
        address: Hashable = ("127.0.0.1", 4000)
        slot = lend_slot(pool, S)
        loan, _ = pool.publish(slot, [peer, address])

        assert pool.release(loan, peer) == ()
        assert pool.drop_holder(address) == ()
        assert counts(pool)["free"] == 1

    def test_give_back_frees_a_lent_segment(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        slot = lend_slot(pool, S)

        assert pool.give_back(slot) == ()
        assert counts(pool) == zero(segments=1, bytes=S, free=1, created=1)


class TestLimit:
    @pytest.mark.parametrize("state", ["lent", "published"])
    def test_full_pool_lends_nothing(self, state: str) -> None:
        pool = SegmentPool(limit=2 * S, keep=PLENTY)
        slots = [lend_slot(pool, S) for _ in range(2)]
        if state == "published":
            loans = [pool.publish(slot, ["a"])[0] for slot in slots]

        before = counts(pool)

        assert pool.lend(1) is None
        assert pool.lend(S) is None
        assert counts(pool) == before

        if state == "published":
            pool.release(loans[1], "a")
        else:
            pool.give_back(slots[1])

        assert pool.lend(S) == Lending(slots[1], S, create=False, destroy=())

    def test_no_room_for_a_larger_class(self) -> None:
        pool = SegmentPool(limit=4 * S, keep=PLENTY)
        lend_slot(pool, 2 * S)
        lend_slot(pool, S)

        assert pool.lend(2 * S) is None
        assert pool.lend(S) == Lending(2, S, create=True, destroy=())
        assert counts(pool) == zero(segments=3, bytes=4 * S, created=3)

    def test_none_destroys_nothing_when_even_all_free_would_not_do(self) -> None:
        pool = SegmentPool(limit=4 * S, keep=PLENTY)
        lend_slot(pool, S)
        publish_to(pool, 2 * S, ["a"])
        free = lend_slot(pool, S)
        pool.give_back(free)
        before = counts(pool)

        assert pool.lend(2 * S) is None  # S lent + 2S published + 2S > 4S
        assert counts(pool) == before
        assert pool.lend(S) == Lending(free, S, create=False, destroy=())

    def test_free_segments_of_other_classes_make_room_oldest_first(self) -> None:
        pool = SegmentPool(limit=4 * S, keep=PLENTY)
        slots = [lend_slot(pool, S) for _ in range(4)]
        for slot in (slots[2], slots[0], slots[3], slots[1]):
            pool.give_back(slot)

        lending = pool.lend(2 * S)

        assert lending == Lending(4, 2 * S, create=True, destroy=(slots[2], slots[0]))
        assert counts(pool) == zero(segments=3, bytes=4 * S, free=2, created=5)
        assert pool.lend(S) == Lending(slots[1], S, create=False, destroy=())
        assert pool.lend(S) == Lending(slots[3], S, create=False, destroy=())
        assert pool.lend(S) is None

    def test_destroys_only_what_is_needed(self) -> None:
        pool = SegmentPool(limit=8 * S, keep=PLENTY)
        small = [lend_slot(pool, S) for _ in range(4)]
        large = lend_slot(pool, 2 * S)
        for slot in small:
            pool.give_back(slot)

        # 6S exist, 4S of them free: a 4S segment fits once two free ones are closed.
        lending = pool.lend(4 * S)

        assert lending == Lending(5, 4 * S, create=True, destroy=(small[0], small[1]))
        assert counts(pool)["bytes"] == 8 * S
        assert large not in lending.destroy

    def test_larger_free_segment_makes_room_for_a_smaller_class(self) -> None:
        pool = SegmentPool(limit=4 * S, keep=PLENTY)
        big = lend_slot(pool, 4 * S)
        pool.give_back(big)

        assert pool.lend(S) == Lending(1, S, create=True, destroy=(big,))
        assert counts(pool) == zero(segments=1, bytes=S, created=2)

    def test_reuse_comes_before_destroying(self) -> None:
        pool = SegmentPool(limit=2 * S, keep=PLENTY)
        first, second = lend_slot(pool, S), lend_slot(pool, S)
        pool.give_back(first)
        pool.give_back(second)

        assert pool.lend(S) == Lending(second, S, create=False, destroy=())
        assert pool.lend(S) == Lending(first, S, create=False, destroy=())

    def test_odd_limit(self) -> None:
        pool = SegmentPool(limit=3 * S, keep=PLENTY)

        assert pool.lend(2 * S) == Lending(0, 2 * S, create=True, destroy=())
        assert pool.lend(S) == Lending(1, S, create=True, destroy=())
        assert pool.lend(S) is None
        assert counts(pool)["bytes"] == 3 * S

    def test_room_comes_back_after_release(self) -> None:
        pool = SegmentPool(limit=2 * S, keep=0)
        _, loan = publish_to(pool, 2 * S, ["a", "b"])

        assert pool.lend(S) is None
        pool.release(loan, "a")
        assert pool.lend(S) is None
        assert pool.release(loan, "b") == (0,)  # keep=0
        assert pool.lend(S) == Lending(1, S, create=True, destroy=())

    @settings(deadline=None, derandomize=True, max_examples=200)
    @given(
        limit=st.sampled_from([S, 3 * S, 4 * S, 7 * S, 16 * S]),
        sizes=st.lists(st.integers(0, 16 * S), max_size=40),
    )
    def test_bytes_never_exceed_the_limit(self, limit: int, sizes: list[int]) -> None:
        pool = SegmentPool(limit=limit, keep=PLENTY)
        lent: list[int] = []
        for number, size in enumerate(sizes):
            if capacity_for(size) > limit:
                with pytest.raises(ValueError, match="limit"):
                    pool.lend(size)
            elif (lending := pool.lend(size)) is not None:
                lent.append(lending.slot)

            if lent and number % 3 == 2:  # give back every third step, oldest loan first
                pool.give_back(lent.pop(0))

            assert pool.statistics().bytes <= limit


class TestKeep:
    @pytest.mark.parametrize("path", ["give_back", "publish", "release", "drop_holder"])
    def test_keep_zero_destroys_every_freed_segment(self, path: str) -> None:
        pool = SegmentPool(limit=PLENTY, keep=0)
        slot = lend_slot(pool, S)
        if path == "give_back":
            destroy = pool.give_back(slot)
        elif path == "publish":
            _, destroy = pool.publish(slot, [])
        else:
            loan, _ = pool.publish(slot, ["a"])
            destroy = pool.release(loan, "a") if path == "release" else pool.drop_holder("a")

        assert destroy == (slot,)
        assert counts(pool) == zero(created=1)
        assert pool.lend(S) == Lending(slot + 1, S, create=True, destroy=())

    def test_oldest_free_segment_goes_first(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=2 * S)
        slots = [lend_slot(pool, S) for _ in range(4)]

        assert [pool.give_back(slot) for slot in slots] == [(), (), (slots[0],), (slots[1],)]
        assert counts(pool) == zero(segments=2, bytes=2 * S, free=2, created=4)
        assert [lend_slot(pool, S) for _ in range(2)] == [slots[3], slots[2]]

    def test_segment_larger_than_keep_is_destroyed_itself(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=S)
        small = lend_slot(pool, S)
        big = lend_slot(pool, 2 * S)
        pool.give_back(small)

        assert pool.give_back(big) == (small, big)
        assert counts(pool) == zero(created=2)

    def test_one_large_segment_pushes_out_several_small(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=4 * S)
        small = [lend_slot(pool, S) for _ in range(4)]
        big = lend_slot(pool, 2 * S)
        for slot in small:
            assert pool.give_back(slot) == ()

        assert pool.give_back(big) == (small[0], small[1])
        assert counts(pool) == zero(segments=3, bytes=4 * S, free=3, created=5)

    def test_release_returns_what_keep_evicts(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=S)
        published, loan = publish_to(pool, S, ["a"])
        free = lend_slot(pool, S)
        pool.give_back(free)

        assert pool.release(loan, "a") == (free,)
        assert pool.lend(S) == Lending(published, S, create=False, destroy=())

    def test_publish_without_holders_returns_what_keep_evicts(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=S)
        first, second = lend_slot(pool, S), lend_slot(pool, S)
        pool.give_back(first)

        assert pool.publish(second, []) == (0, (first,))

    def test_drop_holder_returns_what_keep_evicts(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=S)
        slots = [publish_to(pool, S, ["a"])[0] for _ in range(3)]

        destroy = pool.drop_holder("a")

        # Which loan goes last is not specified; two of the three are destroyed.
        assert len(destroy) == 2
        assert set(destroy) < set(slots)
        assert counts(pool) == zero(segments=1, bytes=S, free=1, created=3)

    def test_keep_above_everything_destroys_nothing(self) -> None:
        pool = SegmentPool(limit=8 * S, keep=PLENTY)
        slots = [lend_slot(pool, S) for _ in range(8)]

        assert [pool.give_back(slot) for slot in slots] == [()] * 8
        assert counts(pool) == zero(segments=8, bytes=8 * S, free=8, created=8)


class TestDiscard:
    def test_discarded_slot_is_forgotten(self) -> None:
        pool = SegmentPool(limit=S, keep=PLENTY)
        slot = lend_slot(pool, S)
        assert pool.lend(S) is None

        pool.discard(slot)

        assert counts(pool) == zero(created=1)
        assert pool.lend(S) == Lending(slot + 1, S, create=True, destroy=())

    def test_discard_a_reused_slot(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        slot = lend_slot(pool, S)
        pool.give_back(slot)
        assert lend_slot(pool, S) == slot

        pool.discard(slot)

        assert counts(pool) == zero(created=1, reused=1)
        assert pool.lend(S) == Lending(slot + 1, S, create=True, destroy=())

    def test_discard_leaves_other_segments(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        free = lend_slot(pool, S)
        _, loan = publish_to(pool, S, ["a"])
        failed = lend_slot(pool, 2 * S)
        pool.give_back(free)

        pool.discard(failed)

        assert counts(pool) == zero(segments=2, bytes=2 * S, free=1, published=1, created=3)
        assert pool.holders(loan) == {"a"}
        assert pool.lend(S) == Lending(free, S, create=False, destroy=())


class TestLoanNumbers:
    def test_count_up_from_zero(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        loans = [publish_to(pool, S, holders)[1] for holders in (["a"], [], ["b"], [])]

        assert loans == [0, 1, 2, 3]

    def test_wrap_at_two_to_the_32(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        # Private: stands in for 2**32 - 1 earlier publishes, all released.
        pool._next_loan = LOAN_WRAP - 1

        last, loan_last = publish_to(pool, S, ["a"])
        first, loan_first = publish_to(pool, 2 * S, ["a", "b"])
        after, loan_after = publish_to(pool, 4 * S, ["b"])

        assert (loan_last, loan_first, loan_after) == (LOAN_WRAP - 1, 0, 1)
        assert [pool.holders(loan) for loan in (loan_last, loan_first, loan_after)] == [
            {"a"},
            {"a", "b"},
            {"b"},
        ]

        pool.release(loan_first, "a")
        pool.release(loan_first, "b")
        assert pool.lend(2 * S) == Lending(first, 2 * S, create=False, destroy=())

        pool.drop_holder("a")
        assert pool.lend(S) == Lending(last, S, create=False, destroy=())
        assert pool.holders(loan_after) == {"b"}

        pool.release(loan_after, "b")
        assert pool.lend(4 * S) == Lending(after, 4 * S, create=False, destroy=())

    def test_wrap_without_holders(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        pool._next_loan = LOAN_WRAP - 1  # private, as above

        assert [publish_to(pool, S, [])[1] for _ in range(3)] == [LOAN_WRAP - 1, 0, 1]


class TestLoanStillHeldAtTheWrap:
    """A loan still held when the u32 counter comes round to it (a peer keeps one message).

    ``_next_loan`` is private; setting it stands in for 2**32 - 1 publishes, all released,
    since the held loan was handed out.
    """

    @staticmethod
    def wrap_onto_held_loan(pool: SegmentPool, holder: str) -> tuple[int, int, int, int]:
        """Publish to "a" (loan 0, kept), wrap, publish again to ``holder``.

        :return: (the held slot, its loan, the new slot, the new loan).
        """
        held, held_loan = publish_to(pool, S, ["a"])
        pool._next_loan = LOAN_WRAP - 1
        _, loan = publish_to(pool, S, ["b"])
        pool.release(loan, "b")
        new, new_loan = publish_to(pool, S, [holder])
        return held, held_loan, new, new_loan

    @pytest.mark.parametrize("holder", ["a", "c"], ids=["same-holder", "other-holder"])
    def test_held_loan_number_is_skipped(self, holder: str) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)

        held, held_loan, new, new_loan = self.wrap_onto_held_loan(pool, holder)

        assert (held_loan, new_loan) == (0, 1)
        assert new != held
        assert pool.holders(held_loan) == {"a"}
        assert pool.holders(new_loan) == {holder}
        assert publish_to(pool, S, [])[1] == 2

    def test_held_segment_comes_back_after_the_wrap(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        held, held_loan, new, new_loan = self.wrap_onto_held_loan(pool, "a")

        assert pool.release(held_loan, "a") == ()
        assert pool.holders(new_loan) == {"a"}
        assert lend_slot(pool, S) == held  # the one released, not the one "a" still reads
        assert pool.drop_holder("a") == ()
        assert counts(pool) == zero(segments=2, bytes=2 * S, free=1, created=2, reused=2)
        assert pool.lend(S) == Lending(new, S, create=False, destroy=())

    def test_skips_a_run_of_held_loans(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        held = [publish_to(pool, S, ["a"])[1] for _ in range(3)]
        pool._next_loan = 0  # private: the counter has come round (2**32 - 3 publishes)

        assert held == [0, 1, 2]
        assert publish_to(pool, S, ["b"])[1] == 3
        assert [pool.holders(loan) for loan in held] == [{"a"}] * 3

    def test_skip_wraps_past_the_largest_loan(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        pool._next_loan = LOAN_WRAP - 1  # private: stands in for 2**32 - 1 publishes
        _, last = publish_to(pool, S, ["a"])
        pool._next_loan = LOAN_WRAP - 1  # and 2**32 more, while "a" keeps that loan

        assert last == LOAN_WRAP - 1
        assert publish_to(pool, S, ["b"])[1] == 0
        assert publish_to(pool, S, ["b"])[1] == 1
        assert pool.holders(last) == {"a"}


class TestClear:
    def test_returns_every_slot_once_and_empties_the_pool(self) -> None:
        pool = SegmentPool(limit=PLENTY, keep=PLENTY)
        free = lend_slot(pool, S)
        lent = lend_slot(pool, 2 * S)
        published, loan = publish_to(pool, S, ["a", "b"])
        reused_free = lend_slot(pool, 4 * S)
        pool.give_back(free)
        pool.give_back(reused_free)
        assert lend_slot(pool, 4 * S) == reused_free

        slots = pool.clear()

        assert sorted(slots) == sorted({free, lent, published, reused_free})
        assert len(slots) == len(set(slots)) == 4
        assert counts(pool) == zero(created=4, reused=1)
        assert pool.holders(loan) == frozenset()
        assert pool.release(loan, "a") == ()
        assert pool.drop_holder("b") == ()
        assert pool.clear() == ()

    def test_empty_pool(self) -> None:
        pool = SegmentPool(limit=S, keep=0)

        assert pool.clear() == ()
        assert counts(pool) == zero()

    def test_pool_works_after_clear_with_new_slots(self) -> None:
        pool = SegmentPool(limit=2 * S, keep=PLENTY)
        old = [lend_slot(pool, S) for _ in range(2)]
        pool.give_back(old[0])
        pool.clear()

        lendings = [pool.lend(S), pool.lend(S)]

        assert [lending.create if lending else None for lending in lendings] == [True, True]
        assert not {lending.slot for lending in lendings if lending} & set(old)
        assert pool.lend(S) is None


HOLDERS = ("a", "b", "c")
SIZES = [0, 1, S - 1, S, S + 1, 2 * S, 2 * S + 1, 3 * S, 4 * S, 4 * S + 1, 8 * S, 16 * S]
# Mostly the small classes, so that several segments fit under every limit.
SIZE = st.sampled_from([1, S, S, S + 1, 2 * S]) | st.sampled_from(SIZES)


class PoolMachine(RuleBasedStateMachine):
    """Random lends, publishes, releases and clears against a model of the pool.

    The model predicts every answer (which slot, created or not, what to destroy), except
    the order in which `drop_holder` goes through a holder's loans, which is unspecified:
    the model borrows that order from the pool after checking it is the same set of loans.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pool = SegmentPool(limit=S, keep=0)
        self.capacity: dict[int, int] = {}  # every slot that exists
        self.free: list[int] = []  # least recently used first
        self.lent: set[int] = set()
        self.loans: dict[int, tuple[int, set[str]]] = {}
        self.seen: set[int] = set()  # every slot ever lent as new
        self.gone: set[int] = set()  # destroyed, discarded or cleared
        self.created = 0
        self.reused = 0

    @initialize(
        limit=st.sampled_from([S, 3 * S, 4 * S, 10 * S, 32 * S]),
        keep=st.sampled_from([0, S, 3 * S, 8 * S, PLENTY]),
    )
    def start(self, limit: int, keep: int) -> None:
        self.pool = SegmentPool(limit=limit, keep=keep)

    def free_bytes(self) -> int:
        return sum(self.capacity[slot] for slot in self.free)

    def published_slots(self) -> list[int]:
        return [slot for slot, _ in self.loans.values()]

    def make_free(self, slot: int) -> tuple[int, ...]:
        """What the pool should answer when ``slot`` becomes free."""
        self.free.append(slot)
        destroy: list[int] = []
        while self.free_bytes() > self.pool.keep:
            oldest = self.free.pop(0)
            del self.capacity[oldest]
            destroy.append(oldest)

        self.gone.update(destroy)
        return tuple(destroy)

    def release_one(self, loan: int, holder: str) -> tuple[int, ...]:
        entry = self.loans.get(loan)
        if entry is None or holder not in entry[1]:
            return ()

        slot, holders = entry
        holders.discard(holder)
        if holders:
            return ()

        del self.loans[loan]
        return self.make_free(slot)

    @rule(size=SIZE)
    def lend(self, size: int) -> None:
        self.lend_size(size)

    def lend_size(self, size: int) -> None:
        capacity = capacity_for(size)
        if capacity > self.pool.limit:
            with pytest.raises(ValueError, match="limit"):
                self.pool.lend(size)
            return

        lending = self.pool.lend(size)
        if lending is not None:
            # Never a slot that is lent, held by a peer, or that the pool gave up.
            assert lending.slot not in self.lent
            assert lending.slot not in self.published_slots()
            assert lending.slot not in self.gone

        same_class = [slot for slot in self.free if self.capacity[slot] == capacity]
        if same_class:
            assert lending == Lending(same_class[-1], capacity, create=False, destroy=())
            self.free.remove(lending.slot)
            self.lent.add(lending.slot)
            self.reused += 1
            return

        total = sum(self.capacity.values())
        if total - self.free_bytes() + capacity > self.pool.limit:
            assert lending is None
            return

        destroy: list[int] = []
        while total + capacity > self.pool.limit:
            oldest = self.free.pop(0)
            total -= self.capacity.pop(oldest)
            destroy.append(oldest)

        assert lending is not None
        assert (lending.capacity, lending.create, lending.destroy) == (
            capacity,
            True,
            tuple(destroy),
        )
        assert lending.slot not in self.seen
        self.gone.update(destroy)
        self.seen.add(lending.slot)
        self.capacity[lending.slot] = capacity
        self.lent.add(lending.slot)
        self.created += 1

    @precondition(lambda self: self.lent)
    @rule(data=st.data())
    def give_back(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from(sorted(self.lent)), label="slot")
        self.lent.remove(slot)
        assert self.pool.give_back(slot) == self.make_free(slot)

    @precondition(lambda self: self.lent)
    @rule(data=st.data())
    def discard(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from(sorted(self.lent)), label="slot")
        self.pool.discard(slot)
        self.lent.remove(slot)
        del self.capacity[slot]
        self.gone.add(slot)

    @precondition(lambda self: self.lent)
    @rule(data=st.data(), holders=st.sets(st.sampled_from(HOLDERS)))
    def publish(self, data: st.DataObject, holders: set[str]) -> None:
        slot = data.draw(st.sampled_from(sorted(self.lent)), label="slot")
        self.publish_slot(slot, holders)

    @rule(size=SIZE, holders=st.sets(st.sampled_from(HOLDERS)))
    def lend_and_publish(self, size: int, holders: set[str]) -> None:
        """What publish() does: lend, write, publish at once."""
        before = set(self.lent)
        self.lend_size(size)
        for slot in self.lent - before:
            self.publish_slot(slot, holders)

    def publish_slot(self, slot: int, holders: set[str]) -> None:
        loan, destroy = self.pool.publish(slot, holders)
        self.lent.remove(slot)
        assert 0 <= loan < LOAN_WRAP
        assert loan not in self.loans  # never a loan number still held
        if holders:
            assert destroy == ()
            self.loans[loan] = (slot, set(holders))
        else:
            assert destroy == self.make_free(slot)

    @rule(before=st.integers(1, 4))
    def near_the_wrap(self, before: int) -> None:
        """Skip ahead to a few loans before 2**32, so that later loans wrap onto held ones.

        Private: stands in for 2**32 - ``before`` publishes, all released.
        """
        self.pool._next_loan = LOAN_WRAP - before

    @rule(data=st.data(), holder=st.sampled_from([*HOLDERS, "stranger"]))
    def release(self, data: st.DataObject, holder: str) -> None:
        # Held loans, finished ones and ones never handed out.
        loans = [*sorted(self.loans), *range(6), *range(LOAN_WRAP - 4, LOAN_WRAP)]
        loan = data.draw(st.sampled_from(loans), label="loan")
        assert self.pool.release(loan, holder) == self.release_one(loan, holder)

    @rule(holder=st.sampled_from([*HOLDERS, "stranger"]))
    def drop_holder(self, holder: str) -> None:
        held = {loan for loan, (_, holders) in self.loans.items() if holder in holders}
        order = list(self.pool._held.get(holder, ()))  # private: see the class docstring
        assert sorted(order) == sorted(held)
        expected = tuple(slot for loan in order for slot in self.release_one(loan, holder))

        assert self.pool.drop_holder(holder) == expected

    @rule(now=st.integers(0, 9))
    def clear(self, now: int) -> None:
        if now:  # rarely: a clear undoes everything the other rules built up
            return

        slots = self.pool.clear()

        assert len(slots) == len(set(slots))
        assert set(slots) == set(self.capacity)
        self.gone.update(slots)
        self.capacity.clear()
        self.free.clear()
        self.lent.clear()
        self.loans.clear()

    @invariant()
    def statistics_agree(self) -> None:
        assert self.pool.statistics() == PoolStatistics(
            segments=len(self.capacity),
            bytes=sum(self.capacity.values()),
            free=len(self.free),
            published=len(self.loans),
            created=self.created,
            reused=self.reused,
        )

    @invariant()
    def bounds_hold(self) -> None:
        assert self.pool.statistics().bytes <= self.pool.limit
        assert self.free_bytes() <= self.pool.keep

    @invariant()
    def every_slot_in_one_state(self) -> None:
        published = self.published_slots()
        states = [*self.free, *self.lent, *published]

        assert len(states) == len(set(states)) == len(self.capacity)
        assert set(states) == set(self.capacity)
        assert not set(self.capacity) & self.gone

    @invariant()
    def holders_agree(self) -> None:
        for loan, (_, holders) in self.loans.items():
            assert self.pool.holders(loan) == holders


PoolMachine.TestCase.settings = settings(
    deadline=None, derandomize=True, max_examples=150, stateful_step_count=60
)


class TestRandomOperations(PoolMachine.TestCase):  # type: ignore[valid-type,misc]
    """Runs `PoolMachine` (300 sequences of up to 60 steps, derandomized)."""
