"""The registry of payload profiles and the JSON view behind ``dho-agent decode``.

A profile names one wire format (``ble.bpm``, ``ble.plx-cont``, ...) and its pure decoder.
:func:`decode_payload` runs one captured payload through it and returns everything a Reading
needs (observations, device time, status flags) plus the decoded fields; :func:`to_json`
renders that as the JSON the technician's tool prints::

    {"profile": ..., "observations": [{"code": <LOINC or null>, "mdc": <int>,
     "value": <number or null>, "unit": <UCUM>, "time": <ISO 8601 or null>}, ...],
     "status": [<flag names>], "fields": {...}, "raw": <hex>}

Numbers are written from the exact :class:`~decimal.Decimal` (``8.90`` stays ``8.90``), never
through a binary float. A special value is ``null`` where it appears, and named under
``fields.specials`` by its path (``{"mean_arterial": "nan"}``); ``fields.decoded_as`` names
the dataclass.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, TypeAlias

from agent.drivers.gatt import aandd, bps, dis, nonin, observations, plx, racp, times, uuids
from agent.errors import CodecError
from agent.model import Absent, Observation

Decoder: TypeAlias = Callable[[bytes, str | None], object]

JsonValue: TypeAlias = (
    bool | int | str | Decimal | list["JsonValue"] | dict[str, "JsonValue"] | None
)


@dataclass(frozen=True, slots=True)
class Profile:
    """One decodable wire format."""

    name: str
    characteristic: str
    """The characteristic UUID the payload is read from (128-bit, lower case)."""
    summary: str
    decode: Decoder


PROFILES: Final[dict[str, Profile]] = {
    p.name: p
    for p in (
        Profile(
            bps.PROFILE_BPM,
            uuids.BLOOD_PRESSURE_MEASUREMENT,
            "Blood Pressure Measurement 0x2A35",
            bps.decode_bpm,
        ),
        Profile(
            bps.PROFILE_ICP,
            uuids.INTERMEDIATE_CUFF_PRESSURE,
            "Intermediate Cuff Pressure 0x2A36",
            bps.decode_icp,
        ),
        Profile(
            bps.PROFILE_BP_FEATURE,
            uuids.BLOOD_PRESSURE_FEATURE,
            "Blood Pressure Feature 0x2A49",
            bps.decode_bp_feature,
        ),
        Profile(
            plx.PROFILE_PLX_SPOT,
            uuids.PLX_SPOT_CHECK_MEASUREMENT,
            "PLX Spot-check Measurement 0x2A5E",
            plx.decode_plx_spot,
        ),
        Profile(
            plx.PROFILE_PLX_CONT,
            uuids.PLX_CONTINUOUS_MEASUREMENT,
            "PLX Continuous Measurement 0x2A5F",
            plx.decode_plx_cont,
        ),
        Profile(
            plx.PROFILE_PLX_FEATURES,
            uuids.PLX_FEATURES,
            "PLX Features 0x2A60",
            plx.decode_plx_features,
        ),
        Profile(
            racp.PROFILE_RACP,
            uuids.RECORD_ACCESS_CONTROL_POINT,
            "Record Access Control Point 0x2A52 (request or response)",
            racp.decode_racp,
        ),
        Profile(
            times.PROFILE_DATE_TIME,
            uuids.DATE_TIME,
            "Date Time 0x2A08",
            times.decode_date_time,
        ),
        Profile(
            times.PROFILE_CURRENT_TIME,
            uuids.CURRENT_TIME,
            "Current Time 0x2A2B",
            times.decode_current_time,
        ),
        Profile(
            times.PROFILE_LOCAL_TIME,
            uuids.LOCAL_TIME_INFORMATION,
            "Local Time Information 0x2A0F",
            times.decode_local_time,
        ),
        Profile(
            dis.PROFILE_DIS,
            uuids.MODEL_NUMBER,
            "Device Information string (0x2A24-0x2A29)",
            dis.decode_dis_string,
        ),
        Profile(dis.PROFILE_PNP_ID, uuids.PNP_ID, "PnP ID 0x2A50", dis.decode_pnp_id),
        Profile(dis.PROFILE_SYSTEM_ID, uuids.SYSTEM_ID, "System ID 0x2A23", dis.decode_system_id),
        Profile(
            dis.PROFILE_BATTERY,
            uuids.BATTERY_LEVEL,
            "Battery Level 0x2A19",
            dis.decode_battery_level,
        ),
        Profile(
            nonin.PROFILE_NONIN_OXIMETRY,
            uuids.NONIN_CONTINUOUS_OXIMETRY,
            "Nonin continuous oximetry (data format 19)",
            nonin.decode_nonin_oximetry,
        ),
        Profile(
            aandd.PROFILE_AND_COMMAND,
            uuids.AND_CUSTOM_COMMAND,
            "A&D vendor command frame (UA-651BLE family)",
            aandd.decode_and_command,
        ),
        Profile(
            nonin.PROFILE_NONIN_CONTROL,
            uuids.NONIN_CONTROL_POINT,
            "Nonin control point command",
            nonin.decode_nonin_control,
        ),
    )
}
"""Profile name -> profile."""


BY_CHARACTERISTIC: Final[dict[str, Profile]] = {
    **{p.characteristic: p for p in PROFILES.values()},
    **dict.fromkeys(dis.STRING_CHARACTERISTICS, PROFILES[dis.PROFILE_DIS]),
}
"""Characteristic UUID (128-bit, lower case) -> profile, for the transport code."""


def profile_for_characteristic(uuid: str) -> Profile | None:
    """The profile that decodes values of characteristic ``uuid`` (any spelling), if any."""
    return BY_CHARACTERISTIC.get(uuids.normalise(uuid))


@dataclass(frozen=True, slots=True)
class Decoded:
    """One payload run through its profile."""

    profile: str
    value: object
    """The frozen dataclass the codec returned."""
    observations: tuple[Observation, ...]
    device_time: dt.datetime | None
    status: tuple[str, ...]
    raw: bytes


_HEX_NOISE: Final = re.compile(r"[\s:_-]+")


def parse_hex(text: str) -> bytes:
    """Bytes from hex text; spaces, colons, dashes and a leading ``0x`` are allowed.

    Raises :class:`ValueError` with a one-line message for anything else.
    """
    cleaned = _HEX_NOISE.sub("", text.strip())
    if cleaned[:2].lower() == "0x":
        cleaned = cleaned[2:]
    if len(cleaned) % 2:
        raise ValueError(f"hex payload has an odd number of digits ({len(cleaned)})")
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        bad = next((c for c in cleaned if c not in "0123456789abcdefABCDEF"), "?")
        raise ValueError(f"hex payload contains the non-hex character {bad!r}") from None


def profile(name: str) -> Profile:
    """The profile called ``name``; :class:`KeyError` with the known names otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise KeyError(f"unknown profile {name!r}; known profiles: {known}") from None


def decode_payload(name: str, data: bytes, model: str | None = None) -> Decoded:
    """Decode ``data`` with profile ``name`` (and the advertised ``model`` for quirks).

    Raises :class:`~agent.errors.CodecError` for a malformed payload (its ``raw`` keeps the
    bytes) and :class:`KeyError` for an unknown profile. Any other exception out of a codec
    would be a bug; it is turned into a :class:`CodecError` so a driver never crashes on input.
    """
    prof = profile(name)
    try:
        value = prof.decode(bytes(data), model)
    except CodecError:
        raise
    except Exception as exc:  # a codec bug must not take the driver down
        raise CodecError(name, f"decoder failed unexpectedly ({type(exc).__name__})", data) from exc
    return Decoded(
        profile=name,
        value=value,
        observations=observations.observations(value),
        device_time=observations.device_time(value),
        status=observations.status_names(value),
        raw=bytes(data),
    )


# Derived properties worth showing next to the raw fields of these classes.
_EXTRAS: Final[Mapping[type, tuple[str, ...]]] = {
    bps.BpmStatus: ("flags", "pulse_rate_range", "reserved_bits"),
    bps.BloodPressureFeature: ("features", "reserved_bits"),
    plx.MeasurementStatus: ("flags", "reserved_bits"),
    plx.DeviceSensorStatus: ("flags", "reserved_bits"),
    plx.PlxFeatures: ("features", "reserved_bits"),
    times.DateTime: ("iso",),
    times.CurrentTime: ("iso", "adjust_reasons"),
    times.LocalTimeInformation: ("utc_offset_minutes",),
    racp.RacpResponse: ("outcome_name",),
    aandd.AndCommand: ("command_name", "set_time"),
    nonin.NoninOximetry: ("flags", "battery_volts", "pulse_amplitude_index"),
}


def _extra(obj: object, name: str) -> object:
    if name == "iso":
        assert isinstance(obj, times.DateTime | times.CurrentTime)
        when = obj.to_datetime()
        return None if when is None else when.isoformat()
    return getattr(obj, name)


def _jsonable(value: object, path: str, specials: dict[str, JsonValue]) -> JsonValue:
    if isinstance(value, Absent):
        specials[path] = value.value
        return None
    if value is None or isinstance(value, bool | int | str | Decimal):
        if isinstance(value, enum.IntEnum):
            return value.name.lower().replace("_", "-")
        return value
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, list | tuple | frozenset):
        return [_jsonable(v, f"{path}[{i}]", specials) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, JsonValue] = {}
        for f in dataclasses.fields(value):
            key = f"{path}.{f.name}" if path else f.name
            out[f.name] = _jsonable(getattr(value, f.name), key, specials)
        for name in _EXTRAS.get(type(value), ()):
            key = f"{path}.{name}" if path else name
            out[name] = _jsonable(_extra(value, name), key, specials)
        return out
    raise TypeError(f"cannot render {type(value).__name__} as JSON")


def fields_of(value: object) -> dict[str, JsonValue]:
    """The decoded dataclass as JSON-ready fields.

    Two keys are added: ``decoded_as`` (the dataclass name) and ``specials`` (path -> the
    special value, e.g. ``{"mean_arterial": "nan"}``, for every ``null`` that stands for one).
    """
    specials: dict[str, JsonValue] = {}
    rendered = _jsonable(value, "", specials)
    fields: dict[str, JsonValue] = {}
    if isinstance(rendered, dict):
        fields.update(rendered)
    else:
        fields["value"] = rendered
    fields["decoded_as"] = type(value).__name__
    fields["specials"] = dict(specials)
    return fields


def document(decoded: Decoded) -> dict[str, JsonValue]:
    """The JSON document for one decoded payload (see the module docstring)."""
    when = decoded.device_time.isoformat() if decoded.device_time is not None else None
    obs: list[JsonValue] = [
        {"code": o.loinc, "mdc": o.mdc, "value": o.value, "unit": o.unit, "time": when}
        for o in decoded.observations
    ]
    return {
        "profile": decoded.profile,
        "observations": obs,
        "status": list(decoded.status),
        "fields": fields_of(decoded.value),
        "raw": decoded.raw.hex(),
    }


def _number(value: Decimal) -> str:
    if not value.is_finite():
        raise ValueError("only finite numbers are written to JSON")
    text = str(value)
    if "E" in text:
        plain = format(value, "f")
        if len(plain) <= 40:
            return plain
    return text  # a valid JSON number either way, e.g. 1.2E+50


def to_json(value: JsonValue) -> str:
    """Serialise with Decimals written exactly as JSON numbers (no float rounding)."""
    if isinstance(value, Decimal):
        return _number(value)
    if isinstance(value, dict):
        items = (f"{json.dumps(k)}: {to_json(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def decode_to_json(name: str, data: bytes, model: str | None = None) -> str:
    """Decode one payload and render the ``dho-agent decode`` JSON for it."""
    return to_json(document(decode_payload(name, data, model)))
