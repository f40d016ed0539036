"""Simulated serial medical devices on pseudo-terminals (see ``hw-mocks/README.md``)."""

from hw_mocks.serial.devices import (
    BeurerBM65,
    ContecA,
    ContecB,
    CuffRecord,
    Masimo,
    Nonin,
    StoredSession,
)
from hw_mocks.serial.port import PortEvent, SimulatedPort

__all__ = [
    "BeurerBM65",
    "ContecA",
    "ContecB",
    "CuffRecord",
    "Masimo",
    "Nonin",
    "PortEvent",
    "SimulatedPort",
    "StoredSession",
]
