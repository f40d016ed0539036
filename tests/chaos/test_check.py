"""The fault campaign's checker (bench.chaos_check): it finds each kind of failure."""

from __future__ import annotations

from bench.chaos_check import check

A = ("BM65-000", "2026-12-01T10:00:00")
B = ("BM65-000", "2026-12-01T10:01:00")
C = ("BM65-001", "2026-12-01T10:00:00")
TRUTH = {A: (120, 80, 60), B: (130, 85, 70), C: (140, 90, 72)}


def test_everything_once_is_ok() -> None:
    v = check(TRUTH, [(A, TRUTH[A]), (C, TRUTH[C]), (B, TRUTH[B])])
    assert v.ok
    assert (v.produced, v.stored, v.lost, v.duplicates) == (3, 3, 0, 0)


def test_lost_duplicate_altered_and_unexpected_are_each_counted() -> None:
    stored = [
        (A, TRUTH[A]),
        (A, TRUTH[A]),  # twice
        (A, TRUTH[A]),  # three times: two duplicates
        (C, (141, 90, 72)),  # altered
        (("BM65-009", "2026-12-01T10:00:00"), (1, 2, 3)),  # no cuff made it
        (None, (120, 80, 60)),  # no device time
    ]
    v = check(TRUTH, stored)
    assert not v.ok
    assert v.lost == 1
    assert v.lost_sample == (B,)
    assert v.duplicates == 2
    assert v.duplicate_sample == (A,)
    assert v.altered == 1
    assert v.unexpected == 2
    assert v.stored == 6
    d = v.as_dict()
    assert d["lost_sample"] == [list(B)]


def test_nothing_stored_loses_everything() -> None:
    v = check(TRUTH, [])
    assert v.lost == 3
    assert v.stored == 0
    assert len(v.lost_sample) == 3
