"""The ``ble`` transport of the driver registry (:mod:`agent.drivers.registry`).

A ``[[devices]]`` table with ``transport = "ble"``, or with no ``transport`` at all, is one
:class:`~agent.drivers.ble.assignment.DeviceAssignment` (keys: ``family``, ``patient``,
``address`` or ``name``, ``model``, ``manufacturer``, ``serial``, ``bond``,
``delete_after_transfer``; see ``docs/ble.md``). All of them go to one
:class:`~agent.drivers.ble.driver.BleDriver` on the adapter named by ``[ble] adapter``.

Validation imports neither bleak nor D-Bus; :meth:`BleTransport.create` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from agent.drivers.ble.assignment import TRANSPORT_NAME, DeviceAssignment
from agent.drivers.contract import (
    DeviceTable,
    DeviceTableError,
    Driver,
    DriverContext,
    ReadingSink,
)
from agent.errors import ConfigError


class BleTransport:
    """Builds the BLE driver from the box's BLE device tables."""

    name: Final = TRANSPORT_NAME
    example: Final[Mapping[str, Any]] = {
        "family": "and-bpm",
        "patient": "<opaque patient reference>",
        "address": "00:09:1F:4B:6B:01",
        "model": "UA-651BLE",
        "manufacturer": "A&D Medical",
    }

    def validate(self, table: Mapping[str, Any]) -> DeviceAssignment:
        """One assignment; :class:`DeviceTableError` naming the key if the table is bad."""
        return DeviceAssignment.from_config(table)

    def create(
        self, devices: Sequence[DeviceTable], sink: ReadingSink, context: DriverContext
    ) -> Driver:
        """One :class:`BleDriver` for every BLE device (an address or name only once)."""
        from agent.drivers.ble.driver import BleDriver, BleDriverOptions

        assignments: list[DeviceAssignment] = []
        seen: dict[str, DeviceTable] = {}
        for device in devices:
            a = device.settings
            if not isinstance(a, DeviceAssignment):
                raise TypeError(f"{device.key()}: not validated by the ble transport")
            key, ident = ("address", a.address) if a.address else ("name", a.name)
            first = seen.setdefault(f"{key}:{ident}", device)
            if first is not device:
                raise DeviceTableError(
                    device.key(key), f"the same device as {first.key()} (one table per device)"
                )
            assignments.append(a)
        adapter = context.settings.get("adapter", "hci0")
        if not isinstance(adapter, str) or not adapter:
            raise ConfigError("ble.adapter: must be an adapter name such as hci0")
        return BleDriver(
            assignments, sink, clock=context.clock, options=BleDriverOptions(adapter=adapter)
        )


TRANSPORT: Final = BleTransport()
"""The ``ble`` entry of the driver registry."""
