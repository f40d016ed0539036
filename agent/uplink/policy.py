"""Pure policies of the sender: reconnect back-off and adaptive batch size.

No I/O and no clocks of their own: callers pass times and random sources, so tests are exact.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Full-jitter exponential back-off (the delay is uniform in ``[0, min(cap, base*2**n)]``).

    Thousands of boxes lose the link together when a storm takes a mast down; full jitter
    spreads their reconnects over the whole window instead of synchronised waves.
    ``reset()`` is called only once a connection has stayed up for a while, so a link that
    accepts and then drops at once still backs off.
    """

    base_s: float = 1.0
    cap_s: float = 300.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; counts the attempt."""
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return self.rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        """Start again from the base (after a stable connection)."""
        self.attempt = 0


@dataclass
class BatchSizer:
    """Adaptive batch size: grow on quick acknowledgements, shrink on slow or failed ones.

    Multiplicative increase while batches are acknowledged within ``target_rtt_s``; halve when
    an acknowledgement is slower than that; quarter on a timeout or a dropped link. A slow or
    flapping link so converges to small batches (each has a fair chance to get through before
    the link drops), a good link to large ones (fewer envelopes, better compression).
    """

    minimum: int = 1
    maximum: int = 500
    size: int = 50
    target_rtt_s: float = 5.0

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.maximum:
            raise ValueError("need 1 <= minimum <= maximum")
        self.size = min(self.maximum, max(self.minimum, self.size))

    def acknowledged(self, readings: int, rtt_s: float) -> None:
        """A batch of ``readings`` was acknowledged after ``rtt_s`` seconds."""
        if rtt_s > self.target_rtt_s:
            self.size = max(self.minimum, self.size // 2)
        elif readings >= self.size:  # only a full batch says the link could take more
            self.size = min(self.maximum, self.size * 2)

    def failed(self) -> None:
        """The acknowledgement did not come in time, or the link dropped while waiting."""
        self.size = max(self.minimum, self.size // 4)

    def too_large(self) -> None:
        """The receiver refused the batch as too large."""
        self.size = max(self.minimum, self.size // 8)


@dataclass
class AckTimeout:
    """How long to wait for an acknowledgement: doubles after each timeout, up to a cap."""

    base_s: float = 20.0
    cap_s: float = 300.0
    current_s: float = 0.0

    def __post_init__(self) -> None:
        self.current_s = self.base_s

    def timed_out(self) -> None:
        """The last wait expired."""
        self.current_s = min(self.cap_s, self.current_s * 2)

    def answered(self) -> None:
        """An acknowledgement came."""
        self.current_s = self.base_s
