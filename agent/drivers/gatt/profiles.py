"""The GATT decode profiles (a provider of :mod:`agent.drivers.profiles`).

One :class:`~agent.drivers.contract.Profile` per characteristic format: its name, the
characteristic it is read from, the pure decoder, and, for the formats that carry readings,
the lane the BLE collector stores them in. ``observe`` is :func:`.observations.observed` for
all of them (an empty result for formats without observations). Vendor formats are declared
by the BLE family that brings them (:mod:`agent.drivers.ble.families`).
"""

from __future__ import annotations

from typing import Final

from agent.drivers.contract import PayloadDecoder, Profile
from agent.drivers.gatt import bps, dis, plx, racp, times, uuids
from agent.drivers.gatt.observations import observed
from agent.model import Lane


def gatt_profile(
    name: str,
    characteristic: str,
    summary: str,
    decode: PayloadDecoder,
    *,
    lane: Lane | None = None,
    dedupe_repeats: bool = True,
    aliases: tuple[str, ...] = (),
) -> Profile:
    """A payload profile of one GATT characteristic, observed by :func:`observed`."""
    return Profile(
        name,
        characteristic,
        summary,
        decode,
        observe=observed,
        lane=lane,
        dedupe_repeats=dedupe_repeats,
        aliases=aliases,
    )


PROFILES: Final[tuple[Profile, ...]] = (
    gatt_profile(
        bps.PROFILE_BPM,
        uuids.BLOOD_PRESSURE_MEASUREMENT,
        "Blood Pressure Measurement 0x2A35",
        bps.decode_bpm,
        lane=Lane.SPOT,
    ),
    gatt_profile(
        bps.PROFILE_ICP,
        uuids.INTERMEDIATE_CUFF_PRESSURE,
        "Intermediate Cuff Pressure 0x2A36",
        bps.decode_icp,
    ),
    gatt_profile(
        bps.PROFILE_BP_FEATURE,
        uuids.BLOOD_PRESSURE_FEATURE,
        "Blood Pressure Feature 0x2A49",
        bps.decode_bp_feature,
    ),
    gatt_profile(
        plx.PROFILE_PLX_SPOT,
        uuids.PLX_SPOT_CHECK_MEASUREMENT,
        "PLX Spot-check Measurement 0x2A5E",
        plx.decode_plx_spot,
        lane=Lane.SPOT,
    ),
    # A repeated PLX continuous frame is not a re-send: SpO2 and pulse often stay the same
    # from one second to the next, and the frame has no counter.
    gatt_profile(
        plx.PROFILE_PLX_CONT,
        uuids.PLX_CONTINUOUS_MEASUREMENT,
        "PLX Continuous Measurement 0x2A5F",
        plx.decode_plx_cont,
        lane=Lane.CONTINUOUS,
        dedupe_repeats=False,
    ),
    gatt_profile(
        plx.PROFILE_PLX_FEATURES,
        uuids.PLX_FEATURES,
        "PLX Features 0x2A60",
        plx.decode_plx_features,
    ),
    gatt_profile(
        racp.PROFILE_RACP,
        uuids.RECORD_ACCESS_CONTROL_POINT,
        "Record Access Control Point 0x2A52 (request or response)",
        racp.decode_racp,
    ),
    gatt_profile(
        times.PROFILE_DATE_TIME,
        uuids.DATE_TIME,
        "Date Time 0x2A08",
        times.decode_date_time,
    ),
    gatt_profile(
        times.PROFILE_CURRENT_TIME,
        uuids.CURRENT_TIME,
        "Current Time 0x2A2B",
        times.decode_current_time,
    ),
    gatt_profile(
        times.PROFILE_LOCAL_TIME,
        uuids.LOCAL_TIME_INFORMATION,
        "Local Time Information 0x2A0F",
        times.decode_local_time,
    ),
    gatt_profile(
        dis.PROFILE_DIS,
        uuids.MODEL_NUMBER,
        "Device Information string (0x2A24-0x2A29)",
        dis.decode_dis_string,
        aliases=tuple(u for u in dis.STRING_CHARACTERISTICS if u != uuids.MODEL_NUMBER),
    ),
    gatt_profile(dis.PROFILE_PNP_ID, uuids.PNP_ID, "PnP ID 0x2A50", dis.decode_pnp_id),
    gatt_profile(dis.PROFILE_SYSTEM_ID, uuids.SYSTEM_ID, "System ID 0x2A23", dis.decode_system_id),
    gatt_profile(
        dis.PROFILE_BATTERY,
        uuids.BATTERY_LEVEL,
        "Battery Level 0x2A19",
        dis.decode_battery_level,
    ),
)
