"""Fixtures borrowed for the care end-to-end tests: the mock BlueZ (tests/ble) and the TLS
broker and receivers (tests/uplink)."""

from tests.ble.conftest import bluez, private_bus  # noqa: F401 - fixtures
from tests.uplink.conftest import broker, pki, receivers  # noqa: F401 - fixtures
