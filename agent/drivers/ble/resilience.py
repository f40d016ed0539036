"""Error classes and back-off for the BLE transport.

bleak, bleak-retry-connector and dbus-fast report failures as a handful of exception types
whose meaning is often only in a D-Bus error name or message. They are mapped **once, here**,
to an :class:`ErrorClass`, so the rest of the driver (and the device status the technician
reads) deals in a few stable names, and every class has its own back-off.

=====================  ===========================================================  =========
class                  typical cause                                                base wait
=====================  ===========================================================  =========
adapter-unavailable    adapter off, removed, or BlueZ not ready (scanner recovers)  2 s
not-found              device stopped advertising before or while connecting        4 s
aborted                ``le-connection-abort-by-local``: interference, range        1 s
connect-failed         connect timed out or was refused after all retries           2 s
pairing                pairing refused/failed, or the bond no longer matches        60 s
gatt                   a GATT operation failed (ATT error, missing characteristic)  5 s
link-lost              the link dropped before the transfer completed               0.5 s
store                  the buffer refused or failed to store                        5 s
unexpected             anything else (a bug): logged with its type                  10 s
=====================  ===========================================================  =========

Waits double per consecutive failure of the same class, up to 15 minutes (2 minutes for
``pairing``: pairing mode lasts minutes; 30 s for ``adapter-unavailable``: checking is one D-Bus
call), with "equal jitter" (half fixed, half random), so a box never hammers a device or the
radio.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from agent.backoff import Backoff, Jitter
from agent.errors import AgentError, StoreError


class ErrorClass(StrEnum):
    """What kind of failure happened (shown in the device status as ``last_error_class``)."""

    ADAPTER_UNAVAILABLE = "adapter-unavailable"
    NOT_FOUND = "not-found"
    ABORTED = "aborted"
    CONNECT_FAILED = "connect-failed"
    PAIRING = "pairing"
    GATT = "gatt"
    LINK_LOST = "link-lost"
    STORE = "store"
    WRONG_DEVICE = "wrong-device"
    """The device is not of the family it is assigned as (found when pairing)."""
    UNEXPECTED = "unexpected"


class BleTransportError(AgentError):
    """A failure of the BLE transport, already classified.

    Attributes:
        error_class: the :class:`ErrorClass`.
    """

    def __init__(self, error_class: ErrorClass, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class


class AdapterUnavailableError(BleTransportError):
    """The Bluetooth adapter is off, gone, or BlueZ is not answering."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorClass.ADAPTER_UNAVAILABLE, message)


class LinkLostError(BleTransportError):
    """The device disconnected before the transfer was complete; it will be retried."""

    def __init__(self, message: str = "link lost before the transfer completed") -> None:
        super().__init__(ErrorClass.LINK_LOST, message)


_PAIRING_ERRORS: Final = (
    "org.bluez.Error.AuthenticationFailed",
    "org.bluez.Error.AuthenticationRejected",
    "org.bluez.Error.AuthenticationCanceled",
    "org.bluez.Error.AuthenticationTimeout",
    "org.bluez.Error.ConnectionAttemptFailed",
)
_ADAPTER_ERRORS: Final = (
    "org.bluez.Error.NotReady",
    "org.freedesktop.DBus.Error.UnknownObject",
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NoReply",
)


def _text(exc: BaseException) -> str:
    """The exception and its causes as one string (bleak-retry-connector wraps the cause)."""
    from bleak.exc import BleakDBusError
    from dbus_fast import DBusError

    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(f"{type(current).__name__}: {current}")
        if isinstance(current, BleakDBusError):
            parts.append(current.dbus_error)
        if isinstance(current, DBusError):
            parts.append(current.type)
        current = current.__cause__ or current.__context__
    return " | ".join(parts)


def classify(exc: BaseException) -> ErrorClass:
    """Map any exception from bleak, bleak-retry-connector, dbus-fast or the buffer."""
    # imported here: the error types above and the back-off below are used by code that
    # must load without bleak (the family procedures, configuration checks)
    from bleak.exc import (
        BleakBluetoothNotAvailableError,
        BleakCharacteristicNotFoundError,
        BleakDeviceNotFoundError,
        BleakError,
        BleakGATTProtocolError,
    )
    from bleak_retry_connector import (
        BleakAbortedError,
        BleakConnectionError,
        BleakNotFoundError,
        BleakOutOfConnectionSlotsError,
    )
    from dbus_fast import DBusError

    if isinstance(exc, BleTransportError):
        return exc.error_class
    if isinstance(exc, StoreError):
        return ErrorClass.STORE
    text = _text(exc)
    if any(name in text for name in _PAIRING_ERRORS):
        return ErrorClass.PAIRING
    if isinstance(
        exc, BleakBluetoothNotAvailableError | ConnectionRefusedError | FileNotFoundError
    ):
        # no adapter, or no system bus / BlueZ to talk to at all
        return ErrorClass.ADAPTER_UNAVAILABLE
    if isinstance(exc, BleakNotFoundError | BleakDeviceNotFoundError):
        return ErrorClass.NOT_FOUND
    if any(name in text for name in _ADAPTER_ERRORS):
        return ErrorClass.ADAPTER_UNAVAILABLE
    if isinstance(exc, BleakAbortedError) or "le-connection-abort-by-local" in text:
        return ErrorClass.ABORTED
    if isinstance(exc, BleakGATTProtocolError | BleakCharacteristicNotFoundError):
        return ErrorClass.GATT
    if isinstance(exc, BleakConnectionError | BleakOutOfConnectionSlotsError | TimeoutError):
        return ErrorClass.CONNECT_FAILED
    if "org.bluez.Error.NotConnected" in text or "Not connected" in text:
        return ErrorClass.LINK_LOST
    if isinstance(exc, BleakError | DBusError | EOFError | BrokenPipeError):
        return ErrorClass.GATT
    return ErrorClass.UNEXPECTED


_DEFAULT_BASE: Final[dict[ErrorClass, float]] = {
    ErrorClass.ADAPTER_UNAVAILABLE: 2.0,
    ErrorClass.NOT_FOUND: 4.0,
    ErrorClass.ABORTED: 1.0,
    ErrorClass.CONNECT_FAILED: 2.0,
    ErrorClass.PAIRING: 60.0,
    ErrorClass.GATT: 5.0,
    ErrorClass.LINK_LOST: 0.5,
    ErrorClass.STORE: 5.0,
    ErrorClass.WRONG_DEVICE: 60.0,
    ErrorClass.UNEXPECTED: 10.0,
}


_DEFAULT_CAPS: Final[dict[ErrorClass, float]] = {
    # a technician may be standing next to the device in pairing mode (which lasts minutes)
    ErrorClass.PAIRING: 120.0,
    # checking whether the adapter is back is one D-Bus call
    ErrorClass.ADAPTER_UNAVAILABLE: 30.0,
}


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Per-class waits: ``base[class] * 2**(n-1)``, capped per class (default ``cap``), with
    equal jitter.

    ``scale`` multiplies every wait (tests use a small one; production keeps 1).
    """

    base: dict[ErrorClass, float] = field(default_factory=lambda: dict(_DEFAULT_BASE))
    caps: dict[ErrorClass, float] = field(default_factory=lambda: dict(_DEFAULT_CAPS))
    cap: float = 900.0
    scale: float = 1.0

    def delay(self, error_class: ErrorClass, consecutive: int) -> float:
        """Seconds to wait after the ``consecutive``-th failure in a row of this class."""
        cap = self.caps.get(error_class, self.cap) * self.scale
        base = min(cap, self.base.get(error_class, 10.0) * self.scale)
        return Backoff(base, cap, Jitter.EQUAL).delay(max(1, consecutive) - 1)


class FailureCounter:
    """Consecutive failures per class; any success resets them all."""

    def __init__(self) -> None:
        self._counts: dict[ErrorClass, int] = {}

    def failed(self, error_class: ErrorClass) -> int:
        """Count a failure; returns how many in a row of this class."""
        for other in list(self._counts):
            if other is not error_class:
                del self._counts[other]
        self._counts[error_class] = self._counts.get(error_class, 0) + 1
        return self._counts[error_class]

    def succeeded(self) -> None:
        """Forget past failures."""
        self._counts.clear()
