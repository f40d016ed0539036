"""Exponential back-off with jitter: the one implementation the agent uses.

The supervisor (restarting a failed service), the uplink (reconnecting to the broker) and the
BLE driver (per error class) all wait ``base * 2**n`` seconds, capped, with jitter, where
``n`` counts the failures in a row before this one (0 for the first retry).

* ``FULL`` jitter: uniform in ``[0, ceiling]``. Spreads a fleet best (thousands of boxes that
  lost the same mast do not come back in one wave), at the price of sometimes retrying at
  once.
* ``EQUAL`` jitter: uniform in ``[ceiling/2, ceiling]``. Never retries early; for waits that
  stand for something slow to change (a device in pairing mode, a refused certificate).

Pure code: callers pass the failure count and, in tests, a seeded :class:`random.Random`.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

_MAX_DOUBLINGS = 30  # 2**30 seconds is longer than any cap; keeps the float finite


class Jitter(enum.Enum):
    """How the delay is drawn below the ceiling."""

    FULL = "full"
    EQUAL = "equal"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Backoff:
    """``delay(n)`` is drawn below ``min(cap_s, base_s * 2**n)``; see the module docstring."""

    base_s: float = 1.0
    cap_s: float = 300.0
    jitter: Jitter = Jitter.FULL

    def __post_init__(self) -> None:
        if not 0 <= self.base_s <= self.cap_s:
            raise ValueError("need 0 <= base_s <= cap_s")

    def ceiling(self, failures: int) -> float:
        """The longest wait after ``failures`` earlier failures in a row (0: first retry)."""
        return min(self.cap_s, self.base_s * 2.0 ** min(max(failures, 0), _MAX_DOUBLINGS))

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the next attempt."""
        top = self.ceiling(failures)
        draw = (rng or random).random()
        if self.jitter is Jitter.FULL:
            return top * draw
        if self.jitter is Jitter.EQUAL:
            return top / 2 + top / 2 * draw
        return top


@dataclass
class Attempts:
    """A :class:`Backoff` with its failure count: ``next_delay()`` counts one more failure.

    ``reset()`` after a success that lasted (a link that accepts and drops at once must still
    be backed off, so callers reset only once a connection has stayed up for a while).
    """

    backoff: Backoff = field(default_factory=Backoff)
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; counts the failure."""
        delay = self.backoff.delay(self.failures, self.rng)
        self.failures += 1
        return delay

    def reset(self) -> None:
        """Start again from the base."""
        self.failures = 0
