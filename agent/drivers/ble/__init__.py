"""The Bluetooth LE transport: bleak (on BlueZ) + bleak-retry-connector. See ``docs/ble.md``.

Run :class:`BleDriver` under the supervisor with the box's :class:`DeviceAssignment` list and
the :class:`~agent.buffer.AsyncBuffer`; pair a device from the technician CLI with
:func:`pair_device`.
"""

from agent.drivers.ble.assignment import DeviceAssignment, DeviceFamily
from agent.drivers.ble.bluez import AdapterState, BluezBus
from agent.drivers.ble.collector import Collector, ReadingSink
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
