"""``and-bpm``: A&D UA-651BLE style cuffs (``ble-gatt.md`` section 2.2).

Write Date Time 0x2A08, enable Blood Pressure Measurement indications; the stored records
arrive as an indication burst and the cuff disconnects. Brings the A&D vendor command format.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from agent.drivers.ble.family import BleFamily, LocalTime
from agent.drivers.ble.session import Link, SessionResult, local_now
from agent.drivers.gatt import aandd, bps, uuids
from agent.drivers.gatt.profiles import gatt_profile
from agent.drivers.gatt.times import encode_date_time
from agent.model import DeviceKind


async def transfer(link: Link, now: LocalTime) -> SessionResult:
    """Set the clock, then receive the record burst."""
    # A&D's own sample writes Date Time before enabling indications; the cuff sends nothing
    # (and hangs up after a few seconds) without it, so an unsynchronised clock is written too.
    await link.settle()
    when = local_now(now) or datetime.now()
    if link.has(uuids.DATE_TIME):
        await link.write(uuids.DATE_TIME, encode_date_time(when))
        link.time_set = True
    await link.subscribe(uuids.BLOOD_PRESSURE_MEASUREMENT)
    ended = await link.until_quiet()
    return SessionResult(ended, link.time_set, records_complete=False)


FAMILY: Final = BleFamily(
    name="and-bpm",
    kind=DeviceKind.BP_CUFF,
    summary="A&D UA-651BLE style cuff: Date Time write, then the stored records as indications",
    procedure=transfer,
    reads=(bps.PROFILE_BPM,),
    profiles=(
        gatt_profile(
            aandd.PROFILE_AND_COMMAND,
            uuids.AND_CUSTOM_COMMAND,
            "A&D vendor command frame (UA-651BLE family)",
            aandd.decode_and_command,
        ),
    ),
    set_time_at_pairing=True,
    deletes_what_it_sent=True,
)
