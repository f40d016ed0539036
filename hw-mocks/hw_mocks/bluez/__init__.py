"""A mock BlueZ (``org.bluez``) on a private D-Bus, for the unmodified bleak.

See ``hw-mocks/README.md``. Main pieces: :class:`PrivateBus` (a private ``dbus-daemon``),
:class:`MockBlueZ` (the service), :class:`SimPeripheral` (scriptable simulated devices) and the
device models in :mod:`hw_mocks.bluez.devices`.
"""

from hw_mocks.bluez.bus import DBusDaemonError, PrivateBus, dbus_daemon_path
from hw_mocks.bluez.peripheral import (
    AttError,
    Characteristic,
    Descriptor,
    Event,
    Faults,
    GattService,
    SimPeripheral,
    uuid16,
)
from hw_mocks.bluez.service import MockAdapter, MockBlueZ, MockDevice
from hw_mocks.bluez.threaded import ThreadedMockBlueZ

__all__ = [
    "AttError",
    "Characteristic",
    "DBusDaemonError",
    "Descriptor",
    "Event",
    "Faults",
    "GattService",
    "MockAdapter",
    "MockBlueZ",
    "MockDevice",
    "PrivateBus",
    "SimPeripheral",
    "ThreadedMockBlueZ",
    "dbus_daemon_path",
    "uuid16",
]
