"""``bpm``: a plain Blood Pressure Service cuff, Beurer BM family and others (section 2.4).

Enable Blood Pressure Measurement indications (after the model's settle delay); the burst
arrives and the cuff disconnects.
"""

from __future__ import annotations

from typing import Final

from agent.drivers.ble.family import BleFamily, LocalTime
from agent.drivers.ble.session import Link, SessionResult
from agent.drivers.gatt import bps, uuids
from agent.model import DeviceKind


async def transfer(link: Link, now: LocalTime) -> SessionResult:
    """Receive the record burst."""
    await link.settle()
    await link.subscribe(uuids.BLOOD_PRESSURE_MEASUREMENT)
    ended = await link.until_quiet()
    return SessionResult(ended, False, records_complete=False)


FAMILY: Final = BleFamily(
    name="bpm",
    kind=DeviceKind.BP_CUFF,
    summary="plain Blood Pressure Service cuff (Beurer BM family and others)",
    procedure=transfer,
    reads=(bps.PROFILE_BPM,),
)
