"""What the technician sees per BLE device: state, last seen, counts and the last error class.

Counts and states only: no values, no addresses, no patient references. Devices are named by
their :attr:`~agent.drivers.ble.assignment.DeviceAssignment.log_id`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from agent.drivers.ble.resilience import ErrorClass

HELD_ALARM: Final = "ble.held-for-store"
"""A device that deletes what it sent has had records it could not hand over, because the
buffer could not take them, for ``BleDriverOptions.hold_alarm_after`` or longer
(``docs/ble.md``, "Devices that delete what they sent"). Cleared by its next complete
transfer."""


class DeviceState(StrEnum):
    """Where a device's worker is."""

    WAITING = "waiting"
    """Waiting for the device to advertise (it usually does so only after a measurement)."""
    CONNECTING = "connecting"
    """Connecting (and pairing, the first time)."""
    TRANSFERRING = "transferring"
    """Connected: setting the time, downloading records, or streaming."""
    COOLDOWN = "cooldown"
    """A transfer finished; ignoring the device's advertisements for a while."""
    HELD = "held-for-store"
    """A device that deletes what it sent is waiting to be served, but the buffer is busy or
    failing: not connected until it can take the records at once (the device keeps them)."""
    BACKOFF = "backoff"
    """The last attempt failed; waiting before the next one."""
    REPAIR_NEEDED = "re-pair-needed"
    """Pairing failed or the bond no longer matches: a technician must pair it again."""
    STOPPED = "stopped"


@dataclass
class DeviceStatus:
    """Mutable per-device status, updated by the driver; :meth:`snapshot` for reports."""

    log_id: str
    family: str
    state: DeviceState = DeviceState.WAITING
    since: float = 0.0
    last_seen: float | None = None
    """Wall-clock time of the last advertisement received."""
    last_connected: float | None = None
    last_transfer: float | None = None
    """Wall-clock time the last complete transfer ended."""
    connections: int = 0
    transfers: int = 0
    readings_stored: int = 0
    duplicates: int = 0
    """Records the device sent again: repeated within a session or already in the buffer."""
    decode_errors: int = 0
    """Payloads that did not decode; each is stored raw as an undecodable reading."""
    last_error_class: ErrorClass | None = None
    last_error_at: float | None = None
    errors: int = 0
    held_for_store: int = 0
    """Transfers put off because the buffer was busy or failing (devices that delete)."""
    hung_up_for_store: int = 0
    """Transfers cut short because the buffer did not take the records in time (devices
    that delete: it keeps what it has not finished sending)."""
    store_wait_since: float | None = None
    """Wall-clock time since when this device (one that deletes what it sent) has records it
    could not hand over because of the buffer (put off or cut short, no complete transfer
    since); ``None`` when there are none."""
    store_wait_reason: str | None = None
    """Why, the last time it was put off or cut short: ``store-busy``, ``store-failing``,
    ``agent-busy`` (the event loop running late) or ``store``."""
    alarm: str | None = None
    """:data:`HELD_ALARM` while that wait has lasted ``hold_alarm_after`` or longer."""
    store_alarms: int = 0
    """How often :data:`HELD_ALARM` was raised (this run)."""

    def set_state(self, state: DeviceState) -> None:
        """Move to ``state`` (and remember since when)."""
        if state is not self.state:
            self.state = state
            self.since = time.time()

    def error(self, error_class: ErrorClass) -> None:
        """Record a failure of ``error_class``."""
        self.errors += 1
        self.last_error_class = error_class
        self.last_error_at = time.time()

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy for the status report."""
        return {
            "device": self.log_id,
            "family": self.family,
            "state": str(self.state),
            "since": self.since,
            "last_seen": self.last_seen,
            "last_connected": self.last_connected,
            "last_transfer": self.last_transfer,
            "connections": self.connections,
            "transfers": self.transfers,
            "readings_stored": self.readings_stored,
            "duplicates": self.duplicates,
            "decode_errors": self.decode_errors,
            "errors": self.errors,
            "held_for_store": self.held_for_store,
            "hung_up_for_store": self.hung_up_for_store,
            "store_wait_since": self.store_wait_since,
            "store_wait_reason": self.store_wait_reason,
            "alarm": self.alarm,
            "store_alarms": self.store_alarms,
            "last_error_class": None
            if self.last_error_class is None
            else str(self.last_error_class),
            "last_error_at": self.last_error_at,
        }
