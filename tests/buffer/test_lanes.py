"""The lane policy table covers every lane and is what the buffer obeys."""

from __future__ import annotations

from agent.buffer import lanes
from agent.model import Lane


def test_every_lane_has_a_policy_and_claim_order_is_by_priority() -> None:
    assert set(lanes.POLICIES) == set(Lane)
    assert lanes.CLAIM_ORDER == (Lane.ALARM, Lane.SPOT, Lane.CONTINUOUS, Lane.BULK)
    assert lanes.COMPACTION_ORDER == (Lane.BULK, Lane.CONTINUOUS)
    assert [ln for ln in Lane if lanes.refused_when_full(ln)] == [Lane.CONTINUOUS, Lane.BULK]
    assert not any(lanes.compactable(ln) for ln in (Lane.ALARM, Lane.SPOT))


def test_only_exact_known_integers_are_lanes() -> None:
    assert lanes.lane_of(2) is Lane.CONTINUOUS
    for bad in (7, -1, "1", b"\x01", 1.0, True, None):
        assert lanes.lane_of(bad) is None
