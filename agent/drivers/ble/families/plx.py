"""``plx``: the standard Pulse Oximeter Service (section 1.5).

Subscribe spot-check, download stored spot-checks through RACP, then subscribe continuous and
stream until the oximeter goes quiet or disconnects (or ``stream_limit``).
"""

from __future__ import annotations

from typing import Final

from agent.drivers.ble.family import BleFamily, LocalTime
from agent.drivers.ble.session import Link, SessionResult, download_records
from agent.drivers.gatt import plx, uuids
from agent.model import DeviceKind


async def transfer(link: Link, now: LocalTime) -> SessionResult:
    """Stored spot-checks first, then the continuous stream."""
    await link.settle()
    if link.has(uuids.PLX_SPOT_CHECK_MEASUREMENT):
        await link.subscribe(uuids.PLX_SPOT_CHECK_MEASUREMENT)
    complete = await download_records(link, link.assignment.delete_after_transfer)
    if link.has(uuids.PLX_CONTINUOUS_MEASUREMENT):
        await link.subscribe(uuids.PLX_CONTINUOUS_MEASUREMENT)
    ended = await link.until_quiet(link.options.stream_limit)
    return SessionResult(ended, False, complete)


FAMILY: Final = BleFamily(
    name="plx",
    kind=DeviceKind.PULSE_OXIMETER,
    summary="standard Pulse Oximeter Service: stored spot-checks via RACP, then continuous",
    procedure=transfer,
    reads=(plx.PROFILE_PLX_SPOT, plx.PROFILE_PLX_CONT),
)
