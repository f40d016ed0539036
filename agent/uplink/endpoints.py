"""Which way to reach the broker next: MQTT over TLS on 8883, or MQTT over WebSockets with TLS
on 443 when 8883 keeps failing (pure).

Some networks (a hotel, a care home's guest Wi-Fi, a mobile operator's restricted APN) pass
only web traffic. After :attr:`EndpointChooser.after_failures` consecutive failed attempts
on the primary endpoint the link tries the fallback; it stays on whichever last connected,
and after the same number of failures on the fallback goes back to the primary, so a box
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
    """The endpoint to try next (see the module docstring)."""

    primary: Endpoint
    fallback: Endpoint | None = None
    after_failures: int = 3
    _current: Endpoint | None = field(default=None, init=False)
    _failures: int = field(default=0, init=False)
    switches: int = field(default=0, init=False)

    @property
    def current(self) -> Endpoint:
        """Where the next attempt goes."""
        return self._current or self.primary

    def failed(self) -> Endpoint:
        """An attempt on :attr:`current` failed; returns where the next one goes."""
        self._failures += 1
        if self.fallback is not None and self._failures >= self.after_failures:
            self._current = self.fallback if self.current == self.primary else self.primary
            self._failures = 0
            self.switches += 1
        return self.current

    def connected(self) -> None:
        """An attempt on :attr:`current` succeeded: stay on it."""
        self._failures = 0
