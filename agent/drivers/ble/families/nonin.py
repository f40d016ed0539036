"""``nonin``: Nonin 3230 / WristOx2 3150 oximetry service (section 2.5).

Set the clock through the control point (NMI ``DTM=``), then stream the oximetry
characteristic. Brings the two Nonin vendor formats.
"""

from __future__ import annotations

from typing import Final

from agent.drivers.ble.family import BleFamily, LocalTime
from agent.drivers.ble.session import Link, SessionResult, local_now
from agent.drivers.gatt import nonin, uuids
from agent.drivers.gatt.nonin import NoninCommand, encode_nonin_control
from agent.drivers.gatt.profiles import gatt_profile
from agent.model import DeviceKind, Lane


async def transfer(link: Link, now: LocalTime) -> SessionResult:
    """Set the clock, then stream."""
    await link.settle()
    if link.has(uuids.NONIN_CONTROL_POINT):
        await link.subscribe(uuids.NONIN_CONTROL_POINT, lambda _data: None)
        when = local_now(now)
        if when is not None:
            await link.write(
                uuids.NONIN_CONTROL_POINT, encode_nonin_control(NoninCommand.set_date_time(when))
            )
            link.time_set = True
    await link.subscribe(uuids.NONIN_CONTINUOUS_OXIMETRY)
    ended = await link.until_quiet(link.options.stream_limit)
    return SessionResult(ended, link.time_set, False)


FAMILY: Final = BleFamily(
    name="nonin",
    kind=DeviceKind.PULSE_OXIMETER,
    summary="Nonin 3230 style oximetry service with its control point (clock set, stream)",
    procedure=transfer,
    reads=(nonin.PROFILE_NONIN_OXIMETRY,),
    profiles=(
        # Nonin frames carry a counter, so an identical frame is a repeat.
        gatt_profile(
            nonin.PROFILE_NONIN_OXIMETRY,
            uuids.NONIN_CONTINUOUS_OXIMETRY,
            "Nonin continuous oximetry (data format 19)",
            nonin.decode_nonin_oximetry,
            lane=Lane.CONTINUOUS,
        ),
        gatt_profile(
            nonin.PROFILE_NONIN_CONTROL,
            uuids.NONIN_CONTROL_POINT,
            "Nonin control point command",
            nonin.decode_nonin_control,
        ),
    ),
)
