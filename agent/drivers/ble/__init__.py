"""The Bluetooth LE transport: bleak (on BlueZ) + bleak-retry-connector. See ``docs/ble.md``.

Run :class:`BleDriver` under the supervisor with the box's :class:`DeviceAssignment` list and
the :class:`~agent.buffer.AsyncBuffer` (the daemon builds it through
:mod:`agent.drivers.registry` from the ``[[devices]]`` tables); pair a device from the
technician CLI with :func:`pair_device`.

The names below are imported on first use, so that validating a BLE device table
(:mod:`agent.drivers.ble.transport`) loads neither bleak nor D-Bus.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.drivers.ble.assignment import DeviceAssignment, DeviceFamily
    from agent.drivers.ble.bluez import AdapterState, BluezBus
    from agent.drivers.ble.collector import Collector
    from agent.drivers.ble.driver import (
        BleDriver,
        BleDriverOptions,
        DeviceWorker,
        synced_local_time,
    )
    from agent.drivers.ble.enrol import EnrolledDevice, pair_device
    from agent.drivers.ble.pairing import PairingAgent, PasskeyCallback
    from agent.drivers.ble.resilience import (
        AdapterUnavailableError,
        BackoffPolicy,
        BleTransportError,
        ErrorClass,
        LinkLostError,
        classify,
    )
    from agent.drivers.ble.session import SessionOptions, SessionResult
    from agent.drivers.ble.status import DeviceState, DeviceStatus
    from agent.drivers.contract import ReadingSink

_WHERE: dict[str, str] = {
    "AdapterState": "bluez",
    "AdapterUnavailableError": "resilience",
    "BackoffPolicy": "resilience",
    "BleDriver": "driver",
    "BleDriverOptions": "driver",
    "BleTransportError": "resilience",
    "BluezBus": "bluez",
    "Collector": "collector",
    "DeviceAssignment": "assignment",
    "DeviceFamily": "assignment",
    "DeviceState": "status",
    "DeviceStatus": "status",
    "DeviceWorker": "driver",
    "EnrolledDevice": "enrol",
    "ErrorClass": "resilience",
    "LinkLostError": "resilience",
    "PairingAgent": "pairing",
    "PasskeyCallback": "pairing",
    "ReadingSink": "collector",
    "SessionOptions": "session",
    "SessionResult": "session",
    "classify": "resilience",
    "pair_device": "enrol",
    "synced_local_time": "driver",
}

__all__ = [
    "AdapterState",
    "AdapterUnavailableError",
    "BackoffPolicy",
    "BleDriver",
    "BleDriverOptions",
    "BleTransportError",
    "BluezBus",
    "Collector",
    "DeviceAssignment",
    "DeviceFamily",
    "DeviceState",
    "DeviceStatus",
    "DeviceWorker",
    "EnrolledDevice",
    "ErrorClass",
    "LinkLostError",
    "PairingAgent",
    "PasskeyCallback",
    "ReadingSink",
    "SessionOptions",
    "SessionResult",
    "classify",
    "pair_device",
    "synced_local_time",
]


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first access (PEP 562)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
