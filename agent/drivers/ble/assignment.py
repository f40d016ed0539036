"""Which Bluetooth devices belong to this box, and to whom.

A :class:`DeviceAssignment` is created by the technician CLI when a device is paired and
assigned to a patient. The driver scans only for assigned devices and ignores every other
advertisement. The patient reference, the address and the serial are patient-linked data:
they are kept out of ``repr`` and out of logs (use :attr:`DeviceAssignment.log_id`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Final

from agent.drivers.ble.family import family_names
from agent.drivers.contract import DeviceTableError
from agent.model import DeviceIdentity, DeviceKind, Transport

TRANSPORT_NAME: Final = "ble"
"""The value of ``transport`` in a BLE ``[[devices]]`` table (and the default)."""

_ADDRESS: Final = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")


class DeviceFamily(StrEnum):
    """The built-in BLE families, by name (``docs/ble.md`` has one section per family).

    A family is a module in :mod:`agent.drivers.ble.families` and an assignment's ``family``
    is its name as a string; these members are names for code and tests that mean one of
    the built-ins. A new family needs no member here.
    """

    AND_BPM = "and-bpm"
    """A&D UA-651BLE style: write Date Time 0x2A08, then the stored records arrive as
    indications and the cuff disconnects."""
    OMRON_BPM = "omron-bpm"
    """Omron BLEsmart style: answer the Current Time notification, download via RACP."""
    BPM = "bpm"
    """A plain Blood Pressure Service cuff (Beurer BM family and others): subscribe, receive
    the indication burst, the cuff disconnects."""
    PLX = "plx"
    """Standard Pulse Oximeter Service: stored spot-checks via RACP, then continuous."""
    NONIN = "nonin"
    """Nonin 3230 style proprietary oximetry service with its control point."""

    @property
    def kind(self) -> DeviceKind:
        """The clinical device kind of this family (declared by its module)."""
        return family_kind(self)


def family_kind(name: str) -> DeviceKind:
    """What a device of family ``name`` is, clinically (from the family's module)."""
    from agent.drivers.ble.families import family  # the families import this module

    return family(name).kind


@dataclass(frozen=True, slots=True)
class DeviceAssignment:
    """One device assigned to this box and to a patient.

    At least one of ``address`` and ``name`` identifies the device: the address when the
    device uses a public or static address (the usual case for cuffs and oximeters), the
    exact advertised name for a device with a changing private address.

    Attributes:
        family: how to drive the device: the name of a family in
            :mod:`agent.drivers.ble.families` (a :class:`DeviceFamily` member or a string).
        patient: the opaque patient reference set at provisioning (never logged).
        address: Bluetooth address ``AA:BB:CC:DD:EE:FF`` (upper-cased on creation).
        name: exact advertised local name to match when no address is given.
        model: the model as advertised or read at enrolment (e.g. ``"BM85"``); it selects the
            codec quirks (:func:`agent.drivers.gatt.quirks_for`).
        manufacturer: for the device identity.
        serial: the serial read from Device Information at enrolment; when absent the
            address stands in. It must not change for the life of the assignment, because the
            buffer de-duplicates re-sent records by device + device time + values.
        bond: pair (and bond) on the first connection if BlueZ has no bond yet.
        delete_after_transfer: ask an RACP device to delete the records it sent, once they
            are durable in the buffer.
    """

    family: str
    patient: str = field(repr=False)
    address: str = field(default="", repr=False)
    name: str = field(default="", repr=False)
    model: str = ""
    manufacturer: str = ""
    serial: str | None = field(default=None, repr=False)
    bond: bool = True
    delete_after_transfer: bool = False

    def __post_init__(self) -> None:
        # DeviceTableError is a ValueError that names the key (see from_config)
        names = family_names()
        if self.family not in names:
            raise DeviceTableError("family", f"must be one of {', '.join(names)}")
        object.__setattr__(self, "family", str(self.family))
        address = self.address.strip().upper()
        if address and not _ADDRESS.match(address):
            raise DeviceTableError("address", "must look like AA:BB:CC:DD:EE:FF")
        if not address and not self.name:
            raise DeviceTableError(
                "address", "an assignment needs an address or an advertised name"
            )
        if not self.patient:
            raise DeviceTableError("patient", "an assignment needs a patient reference")
        object.__setattr__(self, "address", address)

    def matches(self, address: str, name: str | None) -> bool:
        """Whether an advertisement from ``address`` with local ``name`` is this device."""
        if self.address:
            return address.upper() == self.address
        return name is not None and name == self.name

    @property
    def identity(self) -> DeviceIdentity:
        """The device identity stored with every reading (stable for the assignment)."""
        return DeviceIdentity(
            kind=family_kind(self.family),
            manufacturer=self.manufacturer,
            model=self.model,
            serial=self.serial or self.address or self.name,
            transport=Transport.BLE,
        )

    @property
    def log_id(self) -> str:
        """A short id safe for logs and status (see :attr:`DeviceIdentity.log_id`)."""
        return self.identity.log_id

    def to_config(self) -> dict[str, Any]:
        """The assignment as a ``[[devices]]`` table for the agent's configuration.

        It starts with ``transport = "ble"`` (a table without ``transport`` means BLE too).
        """
        out: dict[str, Any] = {"transport": TRANSPORT_NAME}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == "":
                continue
            out[f.name] = value
        return out

    @classmethod
    def from_config(cls, table: Mapping[str, Any]) -> DeviceAssignment:
        """Build an assignment from a ``[[devices]]`` table (:meth:`to_config` output).

        Raises:
            DeviceTableError: (a :class:`ValueError`) an unknown key, an unknown family, or a
                failed validation; the message starts with the key, and never holds the value
                of a patient-linked field.
        """
        data = dict(table)
        transport = data.pop("transport", TRANSPORT_NAME)
        if transport != TRANSPORT_NAME:
            raise DeviceTableError("transport", f'must be "{TRANSPORT_NAME}" for a BLE device')
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in set(data) - known)
        if unknown:
            also = f" (also unknown: {', '.join(unknown[1:])})" if unknown[1:] else ""
            raise DeviceTableError(
                unknown[0],
                f"unknown key{also}; a BLE device table has "
                f"{', '.join(sorted(known | {'transport'}))}",
            )
        if not isinstance(data.get("family"), str):
            raise DeviceTableError("family", f"must be one of {', '.join(family_names())}")
        for key in ("bond", "delete_after_transfer"):
            if key in data and not isinstance(data[key], bool):
                raise DeviceTableError(key, "must be true or false")
        for key in ("patient", "address", "name", "model", "manufacturer", "serial"):
            if key in data and not isinstance(data[key], str):
                raise DeviceTableError(key, "must be a string")
        if "patient" not in data:  # the constructor would raise a TypeError
            raise DeviceTableError(
                "patient", "is required (the patient reference from the service)"
            )
        return cls(**data)
