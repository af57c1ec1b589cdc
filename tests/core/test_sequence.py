"""Per-sender sequence tracking: order, loss, duplicates, reordering, wrap-around, restarts."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncbus._core.sequence import MAX_GAP, SequenceStatistics, SequenceTracker

A = ("127.0.0.1", 40001)
B = ("127.0.0.1", 40002)
C = ("127.0.0.1", 40003)
WRAP = 2**32


def counts(tracker: SequenceTracker) -> dict[str, int]:
    """Return the statistics as a dict, for comparisons that show every field."""
    return dataclasses.asdict(tracker.statistics())


def zero(**values: int) -> dict[str, int]:
    """Return statistics with every counter 0 except those given."""
    names = [field.name for field in dataclasses.fields(SequenceStatistics)]
    return {name: values.get(name, 0) for name in names}


def observe_all(tracker: SequenceTracker, sender: object, seqs: list[int]) -> list[int]:
    """Observe several sequence numbers; return what each call returned."""
    return [tracker.observe(sender, seq) for seq in seqs]


class TestOrder:
    def test_first_message_of_a_sender(self) -> None:
        tracker = SequenceTracker()

        assert tracker.observe(A, 123_456) == 0
        assert counts(tracker) == zero(senders=1)

    def test_in_order(self) -> None:
        tracker = SequenceTracker()

        assert observe_all(tracker, A, list(range(100))) == [0] * 100
        assert counts(tracker) == zero(senders=1)

    @pytest.mark.parametrize(
        "start", [WRAP - 3, WRAP - 1], ids=["three-before-wrap", "last-before-wrap"]
    )
    def test_in_order_across_wrap(self, start: int) -> None:
        tracker = SequenceTracker()
        seqs = [(start + step) % WRAP for step in range(6)]

        assert observe_all(tracker, A, seqs) == [0] * 6
        assert counts(tracker) == zero(senders=1)

    def test_senders_are_independent(self) -> None:
        tracker = SequenceTracker()
        returned = [
            tracker.observe(sender, seq)
            for sender, seq in [(A, 10), (B, 500), (A, 11), (B, 503), (A, 12), (B, 504)]
        ]

        assert returned == [0, 0, 0, 2, 0, 0]
        assert counts(tracker) == zero(senders=2, gaps=2)


class TestGaps:
    @pytest.mark.parametrize(
        ("last", "seq", "missed"),
        [
            (5, 7, 1),
            (5, 15, 9),
            (5, 5 + MAX_GAP, MAX_GAP - 1),
            (WRAP - 2, 1, 2),
            (WRAP - 1, 1, 1),
            (WRAP - 10, MAX_GAP - 10, MAX_GAP - 1),
        ],
        ids=["one", "nine", "largest", "across-wrap", "skipping-zero", "largest-across-wrap"],
    )
    def test_gap(self, last: int, seq: int, missed: int) -> None:
        tracker = SequenceTracker()
        tracker.observe(A, last)

        assert tracker.observe(A, seq) == missed
        assert counts(tracker) == zero(senders=1, gaps=missed)
        # The gap moved the sender on: the next number is in order.
        assert tracker.observe(A, (seq + 1) % WRAP) == 0

    def test_gaps_add_up(self) -> None:
        tracker = SequenceTracker()

        assert observe_all(tracker, A, [0, 2, 3, 7, 8, 20]) == [0, 1, 0, 3, 0, 11]
        assert counts(tracker) == zero(senders=1, gaps=15)

    @settings(deadline=None, derandomize=True, max_examples=200)
    @given(start=st.integers(0, WRAP - 1), kept=st.lists(st.booleans(), min_size=1, max_size=300))
    def test_loss_is_counted_exactly(self, start: int, kept: list[bool]) -> None:
        # A sender numbers its messages from `start` (maybe wrapping); some are lost.
        received = [(start + n) % WRAP for n, keep in enumerate(kept) if keep]
        tracker = SequenceTracker()
        missed = sum(observe_all(tracker, A, received))

        if received:
            first = kept.index(True)
            last = len(kept) - 1 - kept[::-1].index(True)
            assert missed == (last - first + 1) - len(received)
        else:
            assert missed == 0

        assert counts(tracker) == zero(senders=int(bool(received)), gaps=missed)


class TestDuplicatesAndReordering:
    def test_duplicate(self) -> None:
        tracker = SequenceTracker()

        assert observe_all(tracker, A, [5, 5, 6, 6, 6, 7]) == [0] * 6
        assert counts(tracker) == zero(senders=1, duplicates=3)

    def test_late_arrival_does_not_move_the_sender_back(self) -> None:
        tracker = SequenceTracker()

        assert observe_all(tracker, A, [5, 7, 6, 8]) == [0, 1, 0, 0]
        assert counts(tracker) == zero(senders=1, gaps=1, reordered=1)

    def test_late_arrival_across_wrap(self) -> None:
        tracker = SequenceTracker()

        assert observe_all(tracker, A, [WRAP - 2, 0, WRAP - 1, 1]) == [0, 1, 0, 0]
        assert counts(tracker) == zero(senders=1, gaps=1, reordered=1)

    @pytest.mark.parametrize(
        ("behind", "counter"),
        [(1, "reordered"), (MAX_GAP, "reordered"), (MAX_GAP + 1, "restarts")],
        ids=["one-behind", "furthest-late", "too-far-behind"],
    )
    def test_how_far_back_is_late(self, behind: int, counter: str) -> None:
        tracker = SequenceTracker()
        last = 1_000_000

        assert observe_all(tracker, A, [last, last - behind]) == [0, 0]
        assert counts(tracker) == zero(senders=1, **{counter: 1})


class TestRestart:
    @pytest.mark.parametrize(
        ("last", "seq"),
        [
            (5, 5 + MAX_GAP + 1),
            (5, 2**31),
            (10_000_000, 0),
            (2**31 + 7, 0),
            (WRAP - 1, MAX_GAP + 1),
        ],
        ids=[
            "just-over-max-gap",
            "half-way-round",
            "back-to-zero",
            "back-to-zero-from-half-way",
            "far-across-wrap",
        ],
    )
    def test_restart(self, last: int, seq: int) -> None:
        tracker = SequenceTracker()

        assert observe_all(tracker, A, [last, seq, seq + 1, seq + 3]) == [0, 0, 0, 1]
        assert counts(tracker) == zero(senders=1, restarts=1, gaps=1)


class TestBounds:
    def test_oldest_inserted_sender_is_forgotten(self) -> None:
        tracker = SequenceTracker(max_senders=2)
        tracker.observe(A, 0)
        tracker.observe(B, 0)
        tracker.observe(A, 1)  # an update does not make A younger
        tracker.observe(C, 0)

        assert counts(tracker) == zero(senders=2)
        assert tracker.observe(B, 5) == 4  # B still known: a gap
        assert tracker.observe(A, 5) == 0  # A was forgotten: a first message
        assert counts(tracker) == zero(senders=2, gaps=4)

    def test_forget(self) -> None:
        tracker = SequenceTracker()
        tracker.observe(A, 0)
        tracker.forget(A)
        tracker.forget(B)  # unknown: nothing to do

        assert counts(tracker) == zero(senders=0)
        assert tracker.observe(A, 1000) == 0
        assert counts(tracker) == zero(senders=1)

    def test_forgotten_sender_goes_to_the_back(self) -> None:
        tracker = SequenceTracker(max_senders=2)
        tracker.observe(A, 0)
        tracker.observe(B, 0)
        tracker.forget(A)
        tracker.observe(A, 0)
        tracker.observe(C, 0)  # now B is the oldest

        assert tracker.observe(A, 2) == 1
        assert tracker.observe(B, 2) == 0

    def test_many_senders(self) -> None:
        tracker = SequenceTracker(max_senders=100)
        for port in range(10_000):
            tracker.observe(("10.0.0.1", port), 0)

        assert counts(tracker) == zero(senders=100)
        assert tracker.observe(("10.0.0.1", 9_999), 2) == 1
        assert tracker.observe(("10.0.0.1", 9_899), 2) == 0  # forgotten

    @pytest.mark.parametrize("max_senders", [0, -1], ids=["zero", "negative"])
    def test_invalid(self, max_senders: int) -> None:
        with pytest.raises(ValueError, match="max_senders"):
            SequenceTracker(max_senders)


class TestAnySequence:
    @settings(deadline=None, derandomize=True, max_examples=200)
    @given(st.lists(st.tuples(st.sampled_from([A, B, C]), st.integers(0, WRAP - 1)), max_size=50))
    def test_counters_stay_sane(self, observations: list[tuple[object, int]]) -> None:
        tracker = SequenceTracker(max_senders=2)
        total = 0
        for sender, seq in observations:
            missed = tracker.observe(sender, seq)
            assert 0 <= missed < MAX_GAP
            total += missed

        statistics = tracker.statistics()
        assert statistics.gaps == total
        assert statistics.senders == min(2, len({sender for sender, _ in observations}))
        assert statistics.duplicates + statistics.reordered + statistics.restarts <= len(
            observations
        )

    def test_statistics_are_a_frozen_snapshot(self) -> None:
        tracker = SequenceTracker()
        snapshot = tracker.statistics()
        tracker.observe(A, 0)

        assert snapshot.senders == 0
        with pytest.raises(dataclasses.FrozenInstanceError):
            snapshot.gaps = 1  # type: ignore[misc]

        assert not hasattr(snapshot, "__dict__")

    @settings(deadline=None, derandomize=True, max_examples=200)
    @given(st.lists(st.tuples(st.sampled_from([A, B, C]), st.integers(0, WRAP - 1)), max_size=50))
    def test_in_order_shortcut_through_last_is_observe(
        self, observations: list[tuple[object, int]]
    ) -> None:
        # What MessageReceiver.receive_lcm does on its hot path.
        observed, shortcut = SequenceTracker(max_senders=2), SequenceTracker(max_senders=2)
        for sender, seq in [*observations, *((s, (q + 1) % WRAP) for s, q in observations)]:
            observed.observe(sender, seq)
            last = shortcut.last.get(sender)
            if last is not None and seq - last == 1:
                shortcut.last[sender] = seq
            else:
                shortcut.observe(sender, seq)

            assert shortcut.statistics() == observed.statistics()
            assert shortcut.last == observed.last
