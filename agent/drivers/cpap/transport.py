"""The ``cpap-card`` transport of the driver registry (:mod:`agent.drivers.registry`).

A ``[[devices]]`` table with ``transport = "cpap-card"`` assigns the CPAP card that appears
at a mount point to a patient::

    [[devices]]
    transport = "cpap-card"
    family = "resmed"                    # the only family so far (S9, AirSense 10/11)
    patient = "<opaque reference>"
    path = "/run/dho-gateway/cpap"       # where udev/systemd mounts the card (docs/cpap.md)
    serial = "23232323232"               # optional: the machine's serial (Identification)
    detail = ["BRP", "PLD", "SAD"]       # optional: detail files to import (default: all)
    incomplete_grace_hours = 24          # optional: wait for an incomplete file this long

Without ``serial`` the first card imported binds the assignment to its machine; cards of any
other machine are then refused (``wrong-card``). Every table becomes one
:class:`~agent.drivers.cpap.driver.CardWatcher` of one :class:`~agent.drivers.cpap.driver.
CpapDriver`. Validation does no I/O and imports neither the buffer nor the importer.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agent.drivers.contract import (
    DeviceTable,
    DeviceTableError,
    Driver,
    DriverContext,
    ReadingSink,
)
from agent.drivers.cpap.resmed import FileKind

TRANSPORT_NAME: Final = "cpap-card"
FAMILIES: Final = ("resmed",)
DETAIL_KINDS: Final = (FileKind.BRP, FileKind.PLD, FileKind.SAD)
_KEYS: Final = frozenset(
    {"family", "patient", "path", "serial", "detail", "incomplete_grace_hours"}
)
_SERIAL: Final = re.compile(r"^[0-9A-Za-z-]{4,32}$")


@dataclass(frozen=True, slots=True)
class CardAssignment:
    """One card reader assigned to a patient (``serial`` and ``patient`` are never logged)."""

    patient: str
    path: Path
    family: str = "resmed"
    serial: str | None = None
    detail: frozenset[FileKind] = frozenset(DETAIL_KINDS)
    incomplete_grace_s: float = 24 * 3600.0

    @property
    def log_id(self) -> str:
        """A stable id for logs, status and the state file: a hash of the mount point."""
        return "cpap-" + hashlib.blake2s(str(self.path).encode(), digest_size=4).hexdigest()

    @classmethod
    def from_config(cls, table: Mapping[str, Any]) -> CardAssignment:
        """Validate one table (without ``transport``); :class:`DeviceTableError` names the key."""
        unknown = sorted(str(k) for k in set(table) - _KEYS)
        if unknown:
            raise DeviceTableError(
                unknown[0],
                f"unknown key; a cpap-card table has {', '.join(sorted(_KEYS | {'transport'}))}",
            )
        family = table.get("family", "resmed")
        if family not in FAMILIES:
            raise DeviceTableError("family", f"must be one of {', '.join(FAMILIES)}")
        patient = table.get("patient")
        if not isinstance(patient, str) or not patient.strip():
            raise DeviceTableError("patient", "a card assignment needs a patient reference")
        path = table.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise DeviceTableError("path", "must be the absolute path of the card's mount point")
        serial = table.get("serial")
        if serial is not None and (not isinstance(serial, str) or not _SERIAL.match(serial)):
            raise DeviceTableError("serial", "must be the machine's serial number (4-32 letters)")
        detail = table.get("detail", [str(k) for k in DETAIL_KINDS])
        if not isinstance(detail, list) or not all(
            isinstance(d, str) and d.upper() in DETAIL_KINDS for d in detail
        ):
            raise DeviceTableError("detail", 'must be a list of "BRP", "PLD", "SAD"')
        grace = table.get("incomplete_grace_hours", 24)
        if isinstance(grace, bool) or not isinstance(grace, int | float) or not grace >= 0:
            raise DeviceTableError("incomplete_grace_hours", "must be a number of hours >= 0")
        return cls(
            patient=patient,
            path=Path(path),
            family=family,
            serial=serial,
            detail=frozenset(FileKind(d.upper()) for d in detail),
            incomplete_grace_s=float(grace) * 3600.0,
        )


class CpapCardTransport:
    """Builds the ``cpap-card`` driver from the box's card-reader tables."""

    name: Final = TRANSPORT_NAME
    example: Final[Mapping[str, Any]] = {
        "family": "resmed",
        "patient": "<opaque patient reference>",
        "path": "/run/dho-gateway/cpap",
    }

    def validate(self, table: Mapping[str, Any]) -> CardAssignment:
        """One assignment; :class:`DeviceTableError` naming the key if the table is bad."""
        return CardAssignment.from_config(table)

    def create(
        self, devices: Sequence[DeviceTable], sink: ReadingSink, context: DriverContext
    ) -> Driver:
        """One :class:`~agent.drivers.cpap.driver.CpapDriver` (a mount point only once)."""
        from agent.buffer import FileKeySource
        from agent.drivers.cpap.driver import CpapDriver

        assignments: list[CardAssignment] = []
        seen: dict[Path, DeviceTable] = {}
        for device in devices:
            a = device.settings
            if not isinstance(a, CardAssignment):
                raise TypeError(f"{device.key()}: not validated by the cpap-card transport")
            first = seen.setdefault(a.path, device)
            if first is not device:
                raise DeviceTableError(
                    device.key("path"), f"the same mount point as {first.key()} (one card each)"
                )
            assignments.append(a)
        keys = context.key_source or FileKeySource(context.state_dir / "buffer.kek")
        return CpapDriver(
            assignments, sink, state_dir=context.state_dir, key_source=keys, clock=context.clock
        )


TRANSPORT: Final = CpapCardTransport()
"""The ``cpap-card`` entry of the driver registry."""
