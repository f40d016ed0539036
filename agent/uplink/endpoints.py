"""Which way to reach the broker next: MQTT over TLS on 8883, or MQTT over WebSockets with TLS
on 443 when 8883 keeps failing (pure).

Some networks (a hotel, a care home's guest Wi-Fi, a mobile operator's restricted APN) pass
only web traffic. After :attr:`EndpointChooser.after_failures` consecutive failed attempts
on the primary endpoint the link tries the fallback, but only if the fallback answers (a TCP
probe): when nothing answers at all the network is simply down, and switching would only
leave the box on the fallback when it comes back. It stays on whichever last connected, and
after the same number of failures on the fallback (the primary answering) goes back to the
primary; and once :attr:`EndpointChooser.retry_primary_s` has passed since it left the
primary, the next connection attempt (after a drop) goes to the primary again, so a box
returns to 8883 by itself once the network allows it. The identity, TLS settings and
protocol are the same on both: only the transport differs (paho ``transport="websockets"``;
the broker's websockets listener with the same CA, certificate and
``use_identity_as_username``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Transport = Literal["tcp", "websockets"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One way to the broker."""

    port: int
    transport: Transport = "tcp"
    path: str = "/mqtt"

    def __str__(self) -> str:
        """``mqtts:8883`` or ``wss:443/mqtt``: the path the status shows."""
        if self.transport == "websockets":
            return f"wss:{self.port}{self.path}"
        return f"mqtts:{self.port}"


@dataclass
class EndpointChooser:
    """The endpoint to try next (see the module docstring). Times are monotonic seconds."""

    primary: Endpoint
    fallback: Endpoint | None = None
    after_failures: int = 3
    retry_primary_s: float = 3600.0
    _current: Endpoint | None = field(default=None, init=False)
    _failures: int = field(default=0, init=False)
    _left_primary_at: float | None = field(default=None, init=False)
    switches: int = field(default=0, init=False)

    @property
    def current(self) -> Endpoint:
        """Where the next attempt goes."""
        return self._current or self.primary

    @property
    def other(self) -> Endpoint | None:
        """The endpoint a switch would go to (``None`` without a fallback)."""
        if self.fallback is None:
            return None
        return self.fallback if self.current == self.primary else self.primary

    @property
    def switch_due(self) -> bool:
        """Whether the next failure may switch (the link probes :attr:`other` first)."""
        return self.fallback is not None and self._failures + 1 >= self.after_failures

    def failed(self, *, other_reachable: bool = True, now: float = 0.0) -> Endpoint:
        """An attempt on :attr:`current` failed; returns where the next one goes.

        ``other_reachable``: whether :attr:`other` answered a probe just now; a switch
        waits for it (the failures keep counting).
        """
        self._failures += 1
        other = self.other
        if other is not None and self._failures >= self.after_failures and other_reachable:
            self._switch(other, now)
        return self.current

    def connected(self) -> None:
        """An attempt on :attr:`current` succeeded: stay on it."""
        self._failures = 0

    def prefer_primary(self, now: float) -> bool:
        """Before a connection attempt: back to the primary if the box has been on the
        fallback for :attr:`retry_primary_s` (it goes to the fallback again after failures)."""
        if self.current == self.primary or self._left_primary_at is None:
            return False
        if now - self._left_primary_at < self.retry_primary_s:
            return False
        self._switch(self.primary, now)
        return True

    def _switch(self, to: Endpoint, now: float) -> None:
        self._current = to
        self._failures = 0
        self.switches += 1
        self._left_primary_at = now if to != self.primary else None
