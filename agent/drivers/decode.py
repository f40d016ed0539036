"""The JSON view behind ``dho-agent decode``, over the one profile registry.

The profiles themselves live in :mod:`agent.drivers.profiles` (re-exported here:
``PROFILES``, ``profile``, ``decode_payload``, ...). :func:`decode_input` runs the command's
input through a profile of any form and returns the lines to print, one JSON document each:

* a **payload** profile (``ble.bpm``): the hex payload gives exactly one document;
* a **stream** profile (``serial.contec-a``): the hex bytes are fed to a fresh stream
  decoder, and every reading it yields is one document, in stream order; the bytes it skipped
  are reported separately (the command prints them on stderr);
* a **path** profile (``cpap.resmed``): the reader's documents, one per line (one per night).

Input that yields nothing is a :class:`~agent.errors.CodecError` (the command exits 2 with a
one-line error). A reading's document has the same shape for every transport::

    {"profile": ..., "observations": [{"code": <LOINC or null>, "mdc": <int>,
     "value": <number or null>, "unit": <UCUM>, "time": <ISO 8601 or null>}, ...],
     "status": [<flag names>], "fields": {...}, "raw": <hex>}

Numbers are written from the exact :class:`~decimal.Decimal` (``8.90`` stays ``8.90``), never
through a binary float. A special value is ``null`` where it appears, and named under
``fields.specials`` by its path (``{"mean_arterial": "nan"}``); ``fields.decoded_as`` names
the dataclass. A decoded dataclass may name derived properties to show in ``fields`` with a
class attribute ``JSON_EXTRAS: ClassVar[tuple[str, ...]]``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Final

from agent.drivers.contract import Decoded, JsonValue, Profile, Undecodable
from agent.drivers.gatt import aandd, bps, nonin, plx, racp, times
from agent.drivers.profiles import (
    BY_CHARACTERISTIC,
    PROFILES,
    decode_payload,
    profile,
    profile_for_characteristic,
)
from agent.errors import CodecError
from agent.model import Absent

__all__ = [
    "BY_CHARACTERISTIC",
    "PROFILES",
    "DecodeOutput",
    "Decoded",
    "JsonValue",
    "Profile",
    "decode_input",
    "decode_payload",
    "decode_to_json",
    "document",
    "fields_of",
    "parse_hex",
    "profile",
    "profile_for_characteristic",
    "to_json",
]


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
        for name in _EXTRAS.get(type(value), ()) or getattr(type(value), "JSON_EXTRAS", ()):
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


@dataclass(frozen=True, slots=True)
class DecodeOutput:
    """What ``dho-agent decode`` prints: JSON lines, and what a stream decoder skipped."""

    lines: tuple[str, ...]
    skipped: tuple[Undecodable, ...] = ()


def _stream(prof: Profile, data: bytes) -> DecodeOutput:
    assert prof.stream is not None
    try:
        decoder = prof.stream()
        results = [*decoder.feed(data), *decoder.close()]
    except CodecError:
        raise
    except Exception as exc:  # a decoder bug: one line, like any bad input
        raise CodecError(
            prof.name, f"decoder failed unexpectedly ({type(exc).__name__})", data
        ) from exc
    decoded = [r for r in results if isinstance(r, Decoded)]
    skipped = tuple(r for r in results if isinstance(r, Undecodable))
    if not decoded:
        if skipped:
            raise CodecError(
                prof.name, f"no reading in {len(data)} bytes ({skipped[0].error})", data
            )
        raise CodecError(prof.name, f"no reading in {len(data)} bytes", data)
    return DecodeOutput(tuple(to_json(document(d)) for d in decoded), skipped)


def _path(prof: Profile, args: Sequence[str]) -> DecodeOutput:
    assert prof.read_path is not None
    if len(args) != 1:
        raise ValueError(f"{prof.name} takes one PATH, not {len(args)} arguments")
    path = Path(args[0])
    try:
        docs = prof.read_path(path)
    except CodecError:
        raise
    except OSError as exc:
        raise CodecError(prof.name, f"cannot read {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # a reader bug: one line, like any bad input
        raise CodecError(prof.name, f"reader failed unexpectedly ({type(exc).__name__})") from exc
    if not docs:
        raise CodecError(prof.name, f"nothing to decode in {path}")
    return DecodeOutput(tuple(to_json(dict(doc)) for doc in docs))


def decode_input(name: str, args: Sequence[str], model: str | None = None) -> DecodeOutput:
    """Run ``dho-agent decode NAME ARGS...`` (see the module docstring).

    Raises :class:`~agent.errors.CodecError` for input that does not decode (or yields
    nothing), :class:`ValueError` for unusable arguments (bad hex), and :class:`KeyError` for
    an unknown profile.
    """
    prof = profile(name)
    if prof.read_path is not None:
        return _path(prof, args)
    data = parse_hex(" ".join(args))
    if prof.stream is not None:
        return _stream(prof, data)
    return DecodeOutput((decode_to_json(name, data, model),))
