"""What a BLE device family declares: its procedure and the formats it brings.

A family is one module in :mod:`agent.drivers.ble.families` that defines ``FAMILY``, a
:class:`BleFamily`. Nothing else needs an edit: the family registry finds the module, the
profile registry (:mod:`agent.drivers.profiles`) takes the formats it brings, and a
``[[devices]]`` table may name it (``family = "<name>"``). See ``docs/drivers.md``.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeAlias

from agent.drivers.contract import Profile
from agent.model import DeviceKind

if TYPE_CHECKING:  # session.py is imported by the families, not the other way round
    from agent.drivers.ble.session import Link, SessionResult

LocalTime: TypeAlias = Callable[[], datetime | None]
"""The local wall-clock time to write to a device, or ``None`` when it is not trustworthy."""

Procedure: TypeAlias = Callable[["Link", LocalTime], Awaitable["SessionResult"]]
"""One connection's GATT steps: ``await procedure(link, now) -> SessionResult``."""


@dataclass(frozen=True, slots=True)
class BleFamily:
    """How one kind of BLE device is driven.

    Attributes:
        name: the ``family`` value of its ``[[devices]]`` tables; the module is named the
            same with ``_`` for ``-`` (``omron-bpm`` is ``families/omron_bpm.py``).
        kind: what the device is, clinically (stored with every reading).
        summary: one line for the docs and the technician CLI.
        procedure: the GATT steps of one connection (see :mod:`agent.drivers.ble.session`
            for the :class:`~agent.drivers.ble.session.Link` helpers they use).
        reads: the profiles of the measurement characteristics it subscribes to (each must
            be registered and have a lane); the collector stores what arrives on them.
        profiles: formats this family brings (vendor characteristics), registered in the
            profile registry with everything else.
        set_time_at_pairing: write Date Time 0x2A08 while pairing (A&D: the cuff's clock is
            unset until then).
        deletes_what_it_sent: the device deletes its records itself once BlueZ has
            confirmed their indications (A&D), so what arrived exists only in the driver's
            memory until the buffer has it. The driver connects only while the buffer can take
            the records at once, stores them ahead of other work, and hangs up before the
            transfer completes if the buffer stops taking them (``docs/ble.md``).
    """

    name: str
    kind: DeviceKind
    summary: str
    procedure: Procedure
    reads: tuple[str, ...]
    profiles: tuple[Profile, ...] = ()
    set_time_at_pairing: bool = False
    deletes_what_it_sent: bool = False


FAMILIES_DIR: Final = Path(__file__).with_name("families")


def family_names() -> tuple[str, ...]:
    """The names of the families in :mod:`agent.drivers.ble.families` (imports nothing)."""
    return tuple(
        sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules([str(FAMILIES_DIR)]))
    )
