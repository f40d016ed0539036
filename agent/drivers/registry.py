"""The transport registry: ``[[devices]]`` tables -> one driver per transport.

Every ``[[devices]]`` table names its transport::

    [[devices]]
    transport = "serial"        # "ble" | "serial" | "cpap-card"; absent means "ble"
    ...                         # the transport's own keys

A table without ``transport`` is a BLE device, so configurations written before there were
other transports keep working. Each transport lives in ``agent/drivers/<folder>/`` and is
imported only when a table names it (:data:`TRANSPORTS`), so importing this module, and
validating tables, loads neither bleak nor pyserial; building a driver may.

* :func:`validate_device_table` checks one table (for configuration validation);
  :func:`validate_device_tables` checks a list;
* :func:`create_drivers` validates the tables and builds **one** driver per transport that
  has at least one table, in the order the transports first appear.

Every error is a :class:`~agent.drivers.contract.DeviceTableError` (a
:class:`~agent.errors.ConfigError`) whose message starts with the bad key, e.g.
``[[devices]][2].address: must look like AA:BB:CC:DD:EE:FF`` (tables count from 0) or
``[[devices]][0].transport: unknown transport 'usb'; known: ble, cpap-card, serial``. How to
add a transport: ``docs/drivers.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from agent.drivers._modules import import_optional
from agent.drivers.contract import (
    DeviceTable,
    DeviceTableError,
    Driver,
    DriverContext,
    ReadingSink,
    TransportFactory,
    table_key,
)

if TYPE_CHECKING:
    from agent.buffer import KeySource
    from agent.clock import Clock

DEFAULT_TRANSPORT: Final = "ble"
"""The transport of a ``[[devices]]`` table that has no ``transport`` key."""

TRANSPORTS: Final[Mapping[str, str]] = {
    "ble": "agent.drivers.ble.transport",
    "serial": "agent.drivers.serial.transport",
    "cpap-card": "agent.drivers.cpap.transport",
}
"""Transport name -> the module whose ``TRANSPORT`` implements it (imported on first use)."""


class TransportUnavailableError(DeviceTableError):
    """A known transport whose module is not part of this build (not written yet)."""


def transport(name: str) -> TransportFactory[Any]:
    """The transport called ``name``, imported on first use.

    Raises:
        KeyError: ``name`` is not a transport.
        TransportUnavailableError: its module is not in this build.
    """
    module_name = TRANSPORTS[name]
    module = import_optional(module_name)
    if module is None:
        raise TransportUnavailableError(
            "transport", f"transport {name!r} is not available yet in this build ({module_name})"
        )
    factory = cast("TransportFactory[Any]", getattr(module, "TRANSPORT"))  # noqa: B009
    if factory.name != name:
        raise TypeError(f"{module_name}.TRANSPORT is named {factory.name!r}, not {name!r}")
    return factory


def _transport_of(index: int, table: Mapping[str, Any]) -> str:
    name = table.get("transport", DEFAULT_TRANSPORT)
    if not isinstance(name, str) or name not in TRANSPORTS:
        shown = repr(name) if isinstance(name, str) and len(name) <= 40 else "that value"
        raise DeviceTableError(
            table_key(index, "transport"),
            f"unknown transport {shown}; known: {', '.join(sorted(TRANSPORTS))}",
        )
    return name


def validate_device_table(index: int, table: object) -> DeviceTable:
    """Check the ``index``-th ``[[devices]]`` table (from 0) with its transport's rules.

    Returns the validated table (its transport and the transport's settings object).
    Raises :class:`DeviceTableError` naming the bad key (``[[devices]][index].key``).
    """
    if not isinstance(table, Mapping):
        raise DeviceTableError(table_key(index), "must be a table ([[devices]])")
    name = _transport_of(index, table)
    try:
        factory = transport(name)
        settings = factory.validate({k: v for k, v in table.items() if k != "transport"})
    except DeviceTableError as exc:
        raise exc.at(index) from None
    return DeviceTable(index, name, settings)


def validate_device_tables(tables: Sequence[object]) -> list[DeviceTable]:
    """:func:`validate_device_table` for every table, in order (the first error is raised)."""
    return [validate_device_table(i, t) for i, t in enumerate(tables)]


def create_drivers(
    tables: Sequence[object],
    sink: ReadingSink,
    *,
    state_dir: Path,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    clock: Clock | None = None,
    key_source: KeySource | None = None,
) -> list[Driver]:
    """One driver per transport for these ``[[devices]]`` tables (no I/O; none started).

    Args:
        tables: the ``[[devices]]`` tables, in file order.
        sink: where every driver appends readings (the buffer).
        state_dir: the agent's state directory (see :class:`DriverContext`).
        settings: per transport name, its own top-level table (``{"ble": {"adapter": ...}}``).
        clock: capture times for every driver (``None``: the system clock).
        key_source: the box's key-encryption key source (see :class:`DriverContext`).
    """
    grouped: dict[str, list[DeviceTable]] = {}
    for device in validate_device_tables(tables):
        grouped.setdefault(device.transport, []).append(device)
    drivers: list[Driver] = []
    for name, devices in grouped.items():
        context = DriverContext(state_dir, (settings or {}).get(name, {}), clock, key_source)
        drivers.append(transport(name).create(devices, sink, context))
    return drivers
