"""What each upload lane means to the buffer: one table, no integer comparisons elsewhere.

``Lane`` values are stored in the clear in every outbox row; this table says, per lane, in which
order lanes are claimed, which lanes may be compacted under disk pressure (and in what order),
and which lanes are refused once the cap is reached. Anything that is not a ``Lane`` here is a
damaged row (see :func:`lane_of`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from agent.model import Lane


@dataclass(frozen=True, slots=True)
class LanePolicy:
    """The buffer's policy for one lane.

    Attributes:
        priority: claim order, lowest first; within a lane, oldest first.
        compact_rank: ``None`` when the lane is never compacted; otherwise lanes are compacted
            under disk pressure in increasing rank.
        refused_when_full: appends of this lane raise ``BufferFullError`` once the store is
            over its cap after compaction. Lanes that are never refused are always stored.
        alarm_reserve: on a full filesystem, an append of this lane may use a further quarter
            of the reserve file (the part kept for draining) once its own half is gone: a
            clinical alarm is stored even on a full card (``docs/buffer.md``, "Full disk").
    """

    priority: int
    compact_rank: int | None
    refused_when_full: bool
    alarm_reserve: bool = False


POLICIES: Final[Mapping[Lane, LanePolicy]] = MappingProxyType(
    {
        Lane.ALARM: LanePolicy(
            priority=0, compact_rank=None, refused_when_full=False, alarm_reserve=True
        ),
        Lane.SPOT: LanePolicy(priority=1, compact_rank=None, refused_when_full=False),
        Lane.CONTINUOUS: LanePolicy(priority=2, compact_rank=1, refused_when_full=True),
        Lane.BULK: LanePolicy(priority=3, compact_rank=0, refused_when_full=True),
    }
)

CLAIM_ORDER: Final[tuple[Lane, ...]] = tuple(sorted(POLICIES, key=lambda ln: POLICIES[ln].priority))
COMPACTION_ORDER: Final[tuple[Lane, ...]] = tuple(
    sorted(
        (ln for ln, p in POLICIES.items() if p.compact_rank is not None),
        key=lambda ln: POLICIES[ln].compact_rank or 0,
    )
)
_BY_VALUE: Final = {int(ln): ln for ln in POLICIES}


def refused_when_full(lane: Lane) -> bool:
    """Whether appends of ``lane`` are refused once the store is over its cap."""
    return POLICIES[lane].refused_when_full


def uses_alarm_reserve(lane: Lane) -> bool:
    """Whether an append of ``lane`` may use the reserve's alarm quarter on a full disk."""
    return POLICIES[lane].alarm_reserve


def compactable(lane: Lane) -> bool:
    """Whether pending chunks of ``lane`` may be summarised under disk pressure."""
    return POLICIES[lane].compact_rank is not None


def deferrable(lane: Lane) -> bool:
    """Whether readings of ``lane`` may wait a while before they go up (the uplink's
    ``linger_s``): the lanes compaction may summarise (continuous, bulk), never alarms or
    spot readings."""
    return compactable(lane)


def lane_of(value: object) -> Lane | None:
    """The lane a cleartext ``lane`` column names, or ``None`` for anything else.

    The column is untrusted (a faulty card or an editor can put any SQLite value there), so
    only an exact integer of a known lane is accepted; ``True`` or ``2.0`` are not lanes.
    """
    if type(value) is not int:
        return None
    return _BY_VALUE.get(value)
