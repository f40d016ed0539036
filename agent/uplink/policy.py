"""Pure policies of the uplink: reconnecting, adaptive batch size, acknowledgement timeout.

No I/O and no clocks of their own: callers pass times and random sources, so tests are exact.
The exponential back-off itself is :mod:`agent.backoff` (shared with the supervisor and the
BLE driver).
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass, field

from agent.backoff import Attempts, Backoff, Jitter

__all__ = [
    "AckTimeout",
    "Attempts",
    "Backoff",
    "BatchSizer",
    "FailureKind",
    "ReconnectPolicy",
    "Wait",
]


class FailureKind(enum.Enum):
    """Why a connection attempt failed, as far as waiting is concerned."""

    UNREACHABLE = "unreachable"
    """No TCP connection (no route, refused, timed out, DNS) or the link was lost: the network."""
    REFUSED = "refused"
    """The broker answered but the connection failed anyway (TLS or MQTT level, busy)."""
    IDENTITY = "identity"
    """The broker refused this box's certificate or identity, or is not the DHO broker."""
    CLOCK = "clock"
    """The wall clock is implausible: TLS cannot work until the time is synchronised."""


@dataclass(frozen=True, slots=True)
class Wait:
    """How to wait before the next full connection attempt.

    Attributes:
        delay_s: the longest wait (the back-off).
        probe_every_s: while waiting, open a bare TCP connection this often; one that
            succeeds ends the wait early (after ``settle_s``). None: no probing.
        follow_network: a new route, address or link ends the wait early (after ``settle_s``).
        settle_s: the short random delay after the network came back (spreads a fleet).
    """

    delay_s: float
    probe_every_s: float | None
    follow_network: bool
    settle_s: float


@dataclass
class ReconnectPolicy:
    """When to try the broker again (``docs/uplink-protocol.md`` section 9).

    * **The network was the problem** (:attr:`FailureKind.UNREACHABLE`): the next full
      attempt waits until a bare TCP probe to the broker succeeds (a TCP handshake, no TLS;
      the attempt then runs on the probe's connection). The first probe comes after a
      full-jitter back-off capped at one minute, or at once when the kernel reports a new
      link, address or route (netlink); then probes
      run every few seconds during the first quarter hour of an outage and less often after
      (``probe_tiers``). So a box is sending within seconds of a short outage, costs a small
      SYN now and then on a long one, and a fleet that lost the same mast comes back spread
      over the probe interval plus a random ``settle_s`` (0 to ``settle_max_s``, 1 s), never
      in one wave.
    * **The broker answered but failed** (:attr:`FailureKind.REFUSED`): the same back-off,
      without probes (the broker is reachable; probing would only hammer it).
    * **Identity refused** (:attr:`FailureKind.IDENTITY`): a refused certificate is not cured
      by retrying: wait long (5 minutes, doubling to an hour, equal jitter) and say so in the
      status. Re-enrolling the box and restarting the agent starts afresh.
    * **Clock** (:attr:`FailureKind.CLOCK`): look again every ``clock_retry_s``.

    ``stable()`` is called once a connection stayed up for a while: only then do the
    failures count from zero again (a broker that accepts and drops at once is backed off).
    """

    network: Attempts = field(default_factory=lambda: Attempts(Backoff(1.0, 60.0)))
    identity: Attempts = field(
        default_factory=lambda: Attempts(Backoff(300.0, 3600.0, Jitter.EQUAL))
    )
    clock_retry_s: float = 15.0
    probe_tiers: tuple[tuple[float, float], ...] = ((900.0, 3.0), (7200.0, 10.0), (math.inf, 60.0))
    """``(outage lasting up to s, probe every s)``, first match wins."""
    settle_max_s: float = 1.0
    """The longest random settle delay after the network came back. 1 s (2 s before): with
    one TCP connection per reconnecting box (the probe's is reused) a fleet behind one mast
    makes as many TCP connections per second at the broker as it did over 2 s with two each,
    and the 1 Mbit/s week drain loses 0.5 s less on average (``docs/proof.md``, "The
    reconnect settle, measured against the fleet")."""
    rng: random.Random = field(default_factory=random.Random)
    outage_since: float | None = None

    def failed(self, kind: FailureKind, now: float) -> Wait:
        """An attempt failed (or the connection was lost) at ``now``: how to wait."""
        if self.outage_since is None:
            self.outage_since = now
        settle = self.rng.uniform(0.0, self.settle_max_s)
        if kind is FailureKind.IDENTITY:
            return Wait(self.identity.next_delay(), None, False, settle)
        if kind is FailureKind.CLOCK:
            return Wait(self.clock_retry_s, None, False, settle)
        delay = self.network.next_delay()
        if kind is FailureKind.REFUSED:
            return Wait(delay, None, False, settle)
        return Wait(delay, self.probe_interval(now), True, settle)

    def probe_interval(self, now: float) -> float:
        """Seconds between probes, by how long the outage has lasted (jittered by ±1/3)."""
        lasted = 0.0 if self.outage_since is None else now - self.outage_since
        every = next(p for limit, p in self.probe_tiers if lasted <= limit)
        return every * self.rng.uniform(2 / 3, 4 / 3)

    def connected(self) -> None:
        """The broker accepted a connection: the outage is over."""
        self.outage_since = None
        self.identity.reset()

    def stable(self) -> None:
        """The connection stayed up for a while: count failures from zero again."""
        self.network.reset()
        self.identity.reset()


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
