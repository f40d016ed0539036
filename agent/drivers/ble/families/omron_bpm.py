"""``omron-bpm``: Omron BLEsmart cuffs (section 2.3).

Subscribe Current Time and write the time back on its first notification (ATT error 0x80
means "some fields ignored" and counts as done), then download the stored records through
RACP, optionally delete them once durable, and hang up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from agent.drivers.ble.family import BleFamily, LocalTime
from agent.drivers.ble.session import (
    ATT_APPLICATION_ERROR,
    Link,
    SessionResult,
    download_records,
    local_now,
)
from agent.drivers.gatt import bps, uuids
from agent.drivers.gatt.times import AdjustReason, CurrentTime, encode_current_time
from agent.model import DeviceKind

_LOGGER = logging.getLogger(__name__)


async def _current_time(link: Link, now: LocalTime) -> None:
    """On the first Current Time notification, write the time back (10 bytes)."""
    if not link.has(uuids.CURRENT_TIME):
        return
    first: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def on_time(data: bytes) -> None:
        if not first.done():
            first.set_result(data)

    await link.subscribe(uuids.CURRENT_TIME, on_time)
    with contextlib.suppress(TimeoutError):
        await link.wait_for(first, link.options.time_notify_wait)
    when = local_now(now)
    if when is None:
        _LOGGER.info("%s: clock not synchronised, device time left alone", link.assignment.log_id)
        return
    try:
        await link.write(
            uuids.CURRENT_TIME,
            encode_current_time(CurrentTime.from_datetime(when, (AdjustReason.MANUAL,))),
        )
    except Exception as exc:
        from bleak.exc import BleakGATTProtocolError  # only the driver has bleak loaded

        if not isinstance(exc, BleakGATTProtocolError) or exc.code != ATT_APPLICATION_ERROR:
            raise
        # Omron answers 0x80 when it ignored some fields; the time is set (SpeziDevices)
    link.time_set = True


async def transfer(link: Link, now: LocalTime) -> SessionResult:
    """Set the clock, download the stored records (only new ones when possible)."""
    await link.settle()
    await _current_time(link, now)
    await link.subscribe(uuids.BLOOD_PRESSURE_MEASUREMENT)
    complete = await download_records(link, link.assignment.delete_after_transfer)
    if not complete:
        return SessionResult(await link.until_quiet(), link.time_set, False)
    return SessionResult("complete", link.time_set, True)


FAMILY: Final = BleFamily(
    name="omron-bpm",
    kind=DeviceKind.BP_CUFF,
    summary="Omron BLEsmart cuff: Current Time answered, stored records downloaded via RACP",
    procedure=transfer,
    reads=(bps.PROFILE_BPM,),
)
