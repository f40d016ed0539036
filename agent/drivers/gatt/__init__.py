"""Pure codecs for the Bluetooth LE GATT formats our devices use (no I/O, no bleak).

Every ``decode_*`` takes the characteristic value as ``bytes`` (and an optional advertised
``model`` name for the quirk table) and returns a frozen dataclass, or raises
:class:`agent.errors.CodecError` naming the profile, the actual length and what the flags
required. Every ``encode_*`` is the inverse (for simulated devices in ``hw-mocks`` and for the
writes the driver makes); it raises :class:`ValueError` for a value that cannot be sent.

Modules: :mod:`.bps` (0x2A35, 0x2A36, 0x2A49), :mod:`.plx` (0x2A5E, 0x2A5F, 0x2A60),
:mod:`.racp` (0x2A52), :mod:`.times` (0x2A08, 0x2A2B, 0x2A0F), :mod:`.dis` (Device
Information, Battery Level), :mod:`.nonin` (Nonin oximetry service), :mod:`.quirks` (per-model
deviations), :mod:`.observations` (decoded values -> :class:`agent.model.Observation`),
:mod:`.aandd` (A&D vendor commands), :mod:`.uuids`. Facts and vectors:
``shared/reference/ble-gatt.md``.
"""

from __future__ import annotations

from agent.drivers.gatt.aandd import AndCommand, decode_and_command, encode_and_command
from agent.drivers.gatt.bps import (
    BloodPressureFeature,
    BloodPressureMeasurement,
    BpmStatus,
    IntermediateCuffPressure,
    PressureUnit,
    decode_bp_feature,
    decode_bpm,
    decode_icp,
    encode_bp_feature,
    encode_bpm,
    encode_icp,
)
from agent.drivers.gatt.dis import (
    BatteryLevel,
    DisString,
    decode_battery_level,
    decode_dis_string,
    encode_battery_level,
    encode_dis_string,
)
from agent.drivers.gatt.nonin import (
    NoninCommand,
    NoninOximetry,
    decode_nonin_control,
    decode_nonin_oximetry,
    encode_nonin_control,
    encode_nonin_oximetry,
)
from agent.drivers.gatt.plx import (
    PlxContinuous,
    PlxFeatures,
    PlxSpotCheck,
    SpO2PR,
    decode_plx_cont,
    decode_plx_features,
    decode_plx_spot,
    encode_plx_cont,
    encode_plx_features,
    encode_plx_spot,
)
from agent.drivers.gatt.quirks import ModelQuirks, quirks_for
from agent.drivers.gatt.racp import (
    RacpRecordCount,
    RacpRequest,
    RacpResponse,
    decode_racp,
    decode_racp_request,
    decode_racp_response,
    encode_racp,
    encode_racp_request,
    encode_racp_response,
)
from agent.drivers.gatt.times import (
    CurrentTime,
    DateTime,
    LocalTimeInformation,
    decode_current_time,
    decode_date_time,
    decode_local_time,
    encode_current_time,
    encode_date_time,
    encode_local_time,
)

__all__ = [
    "AndCommand",
    "BatteryLevel",
    "BloodPressureFeature",
    "BloodPressureMeasurement",
    "BpmStatus",
    "CurrentTime",
    "DateTime",
    "DisString",
    "IntermediateCuffPressure",
    "LocalTimeInformation",
    "ModelQuirks",
    "NoninCommand",
    "NoninOximetry",
    "PlxContinuous",
    "PlxFeatures",
    "PlxSpotCheck",
    "PressureUnit",
    "RacpRecordCount",
    "RacpRequest",
    "RacpResponse",
    "SpO2PR",
    "decode_and_command",
    "decode_battery_level",
    "decode_bp_feature",
    "decode_bpm",
    "decode_current_time",
    "decode_date_time",
    "decode_dis_string",
    "decode_icp",
    "decode_local_time",
    "decode_nonin_control",
    "decode_nonin_oximetry",
    "decode_plx_cont",
    "decode_plx_features",
    "decode_plx_spot",
    "decode_racp",
    "decode_racp_request",
    "decode_racp_response",
    "encode_and_command",
    "encode_battery_level",
    "encode_bp_feature",
    "encode_bpm",
    "encode_current_time",
    "encode_date_time",
    "encode_dis_string",
    "encode_icp",
    "encode_local_time",
    "encode_nonin_control",
    "encode_nonin_oximetry",
    "encode_plx_cont",
    "encode_plx_features",
    "encode_plx_spot",
    "encode_racp",
    "encode_racp_request",
    "encode_racp_response",
    "quirks_for",
]
