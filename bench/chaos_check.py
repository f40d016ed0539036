"""The fault campaign's checker: every record a simulated device made, against what the
service stored.

Pure: it sees the ground truth (what each simulated device holds, by device serial and
device time, with its values) and the receiver's readings reduced to the same key; it does no
I/O. Jepsen-style, it says what went wrong, not only whether:

* ``lost``: a record the device made that the service does not hold;
* ``duplicates``: the service holds a record more than once (two readings with one key, the
  failure "exactly once" exists to prevent);
* ``altered``: the service holds a record with other values than the device made;
* ``unexpected``: the service holds a reading no device made (or one without a key).

The key is what the device itself knows: a BM65 record has its serial (the configured one)
and a device time to the minute, and no two records of one simulated cuff share a minute.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

Key = tuple[str, str]
"""(device serial, device time ``YYYY-MM-DDTHH:MM:SS`` without a zone)."""
Values = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the checker found (counts, and a few of the lost keys to look at)."""

    produced: int
    stored: int
    lost: int
    duplicates: int
    altered: int
    unexpected: int
    lost_sample: tuple[Key, ...] = field(default=())
    duplicate_sample: tuple[Key, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing twice, nothing changed, nothing made up."""
        return not (self.lost or self.duplicates or self.altered or self.unexpected)

    def as_dict(self) -> dict[str, object]:
        """The report's fields."""
        return {
            "produced": self.produced,
            "stored": self.stored,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "altered": self.altered,
            "unexpected": self.unexpected,
            "lost_sample": [list(k) for k in self.lost_sample],
            "duplicate_sample": [list(k) for k in self.duplicate_sample],
        }


def check(
    produced: Mapping[Key, Values], stored: Iterable[tuple[Key | None, Values]], sample: int = 5
) -> Verdict:
    """Compare ``produced`` (ground truth) with ``stored`` (the service's readings as
    ``(key, values)``; ``None`` for a reading without a device time)."""
    seen: Counter[Key] = Counter()
    altered = unexpected = total = 0
    for key, values in stored:
        total += 1
        if key is None or key not in produced:
            unexpected += 1
            continue
        seen[key] += 1
        if seen[key] == 1 and values != produced[key]:
            altered += 1
    lost_keys = [k for k in produced if seen[k] == 0]
    dup_keys = [k for k, n in seen.items() if n > 1]
    return Verdict(
        produced=len(produced),
        stored=total,
        lost=len(lost_keys),
        duplicates=sum(seen[k] - 1 for k in dup_keys),
        altered=altered,
        unexpected=unexpected,
        lost_sample=tuple(sorted(lost_keys)[:sample]),
        duplicate_sample=tuple(sorted(dup_keys)[:sample]),
    )
