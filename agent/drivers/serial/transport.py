"""The ``serial`` transport of the driver registry (:mod:`agent.drivers.registry`).

A ``[[devices]]`` table with ``transport = "serial"`` is one
:class:`~agent.drivers.serial.driver.SerialDevice`::

    [[devices]]
    transport = "serial"
    family = "contec"            # contec (A/B auto), contec-a, contec-b, nonin-df1, nonin-df2,
                                 # nonin-df8, nonin-ascii, masimo, beurer-bm65
    port = "/dev/serial/by-path/platform-fd500000.pcie-pci-0000:01:00.0-usb-0:1.3:1.0-port0"
    patient = "<opaque reference>"
    serial = "..."               # optional; the port path stands in (keep it stable)
    download = true              # optional; stored sessions (family default otherwise)
    set_clock = true             # optional

All of them go to one :class:`~agent.drivers.serial.driver.SerialDriver`. The transport's own
settings (``DriverContext.settings``) may set ``hotplug`` (``"udev"``, the default, falls back
to polling when udev cannot be watched; ``"poll"``), ``rescan_interval`` and
``download_interval`` (seconds; the ``[serial]`` table of ``agent.toml``).
Validation imports neither pyserial nor pyudev; :meth:`SerialTransport.create` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

from agent.drivers.contract import DeviceTable, DeviceTableError, Driver, DriverContext, ReadingSink
from agent.errors import ConfigError


class SerialTransport:
    """Builds the serial driver from the box's serial device tables."""

    name: Final = "serial"
    example: Final[Mapping[str, Any]] = {
        "family": "contec",
        "port": "/dev/serial/by-path/platform-3f980000.usb-usb-0:1.2:1.0-port0",
        "patient": "<opaque patient reference>",
    }

    def validate(self, table: Mapping[str, Any]) -> Any:
        """One :class:`SerialDevice`; :class:`DeviceTableError` naming the key if bad."""
        from agent.drivers.serial.driver import SerialDevice

        return SerialDevice.from_config(table)

    def create(
        self, devices: Sequence[DeviceTable], sink: ReadingSink, context: DriverContext
    ) -> Driver:
        """One :class:`SerialDriver` for every serial device (a port only once)."""
        from agent.drivers.serial.driver import SerialDevice, SerialDriver, SerialDriverOptions
        from agent.drivers.serial.hotplug import default_monitor

        chosen: list[SerialDevice] = []
        seen: dict[str, DeviceTable] = {}
        for device in devices:
            d = device.settings
            if not isinstance(d, SerialDevice):
                raise TypeError(f"{device.key()}: not validated by the serial transport")
            first = seen.setdefault(d.port, device)
            if first is not device:
                raise DeviceTableError(
                    device.key("port"), f"the same port as {first.key()} (one table per port)"
                )
            chosen.append(d)
        options = SerialDriverOptions()
        intervals: dict[str, float] = {}
        for key in ("rescan_interval", "download_interval"):
            value = context.settings.get(key)
            if value is None:
                continue
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"serial.{key}: must be a positive number of seconds")
            intervals[key] = float(value)
        if "rescan_interval" in intervals:
            options = replace(options, rescan_interval=intervals["rescan_interval"])
        if "download_interval" in intervals:
            family = replace(options.family, download_interval=intervals["download_interval"])
            options = replace(options, family=family)
        mode = context.settings.get("hotplug", "udev")
        if mode not in ("udev", "poll"):
            raise ConfigError('serial.hotplug: must be "udev" or "poll"')
        return SerialDriver(
            chosen,
            sink,
            monitor_factory=default_monitor if mode == "udev" else None,
            clock=context.clock,
            options=options,
        )


TRANSPORT: Final = SerialTransport()
"""The ``serial`` entry of the driver registry."""
