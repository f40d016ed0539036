"""Tiny byte builders for the payloads the simulated peripherals send.

These are *encoders* for the mock devices (the agent's decoders live in ``agent/drivers/``);
SFLOAT goes through the project's own encoder, the frame layouts are built here from the
reference. Layouts follow ``../shared/reference/ble-gatt.md`` §1 (SIG GATT formats) and
§2 (vendor quirks); the unit tests check them against the vectors of §1.9. Everything is
little-endian unless a quirk says otherwise.
"""

import math
import struct
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from agent.drivers.ieee11073 import sfloat_bytes
from agent.model import Absent

__all__ = [
    "BloodPressureRecord",
    "Number",
    "PlxContinuousSample",
    "PlxSpotRecord",
    "beurer_bpm",
    "bpm",
    "current_time",
    "date_time",
    "nonin_continuous",
    "parse_current_time",
    "parse_date_time",
    "plx_continuous",
    "plx_features",
    "plx_spot",
    "racp_number_of_records",
    "racp_response",
    "sfloat",
    "sfloat_special",
]


Number = float | Decimal
"""A measured value: ``float``/``int`` or an exact :class:`~decimal.Decimal` (keeps the
resolution, e.g. ``Decimal("11")`` encodes as ``0B 00`` and ``11.0`` as ``6E F0``)."""


def sfloat(value: Number | None) -> bytes:
    """Encode a number as an IEEE-11073 16-bit SFLOAT, little-endian.

    Uses the project's encoder (:func:`agent.drivers.ieee11073.sfloat_bytes`), so the exponent
    is two's complement and the number's own resolution is kept: ``sfloat(120) == b"\x78\x00"``,
    ``sfloat(18.9) == b"\xbd\xf0"``, ``sfloat(100.0) == b"\xe8\xf3"``. ``None`` and NaN
    encode as the NaN special value, infinities as +INF/-INF.

    Raises:
        ValueError: if the value cannot be represented exactly.
    """
    if value is None:
        return sfloat_bytes(Absent.NAN)
    if isinstance(value, float):
        if math.isnan(value):
            return sfloat_bytes(Absent.NAN)
        if math.isinf(value):
            return sfloat_bytes(Absent.POS_INF if value > 0 else Absent.NEG_INF)
        return sfloat_bytes(Decimal(repr(value)))
    return sfloat_bytes(value)


def sfloat_special(which: Absent) -> bytes:
    """The wire bytes of an SFLOAT special value (NaN, NRes, +INF, -INF, reserved)."""
    return sfloat_bytes(which)


def date_time(when: datetime | None) -> bytes:
    """Encode a Date Time (0x2A08): ``uint16 year, month, day, hours, minutes, seconds``.

    ``None`` encodes "unknown" (all zero).
    """
    if when is None:
        return bytes(7)
    return struct.pack(
        "<HBBBBB", when.year, when.month, when.day, when.hour, when.minute, when.second
    )


def parse_date_time(data: bytes) -> datetime | None:
    """Decode a 7-byte Date Time (0x2A08); ``None`` if the date part is unknown.

    Raises:
        ValueError: if the length is not 7 or a field is out of range.
    """
    if len(data) != 7:
        raise ValueError(f"Date Time must be 7 bytes, got {len(data)}")
    year, month, day, hour, minute, second = struct.unpack("<HBBBBB", data)
    if year == 0 or month == 0 or day == 0:
        return None
    return datetime(year, month, day, hour, minute, second)  # device local time, naive


def current_time(when: datetime, *, fractions256: int = 0, adjust_reason: int = 0) -> bytes:
    """Encode a Current Time (0x2A2B): Date Time, day of week (1=Monday), fractions256, reason."""
    return date_time(when) + bytes([when.isoweekday(), fractions256 & 0xFF, adjust_reason & 0xFF])


def parse_current_time(data: bytes) -> datetime | None:
    """Decode the date-time part of a 10-byte Current Time (0x2A2B).

    Raises:
        ValueError: if the length is not 10 or a field is out of range.
    """
    if len(data) != 10:
        raise ValueError(f"Current Time must be 10 bytes, got {len(data)}")
    return parse_date_time(data[:7])


@dataclass(frozen=True, slots=True)
class BloodPressureRecord:
    """One stored blood-pressure reading of a simulated cuff (values in ``unit``)."""

    systolic: Number
    diastolic: Number
    mean: Number | None = None
    pulse: Number | None = None
    timestamp: datetime | None = None
    user_id: int | None = None
    status: int | None = None
    kpa: bool = False

    @property
    def mean_arterial(self) -> Number:
        """The mean arterial pressure, computed as DIA + (SYS - DIA) / 3 when not given."""
        if self.mean is not None:
            return self.mean
        return round(float(self.diastolic) + (float(self.systolic) - float(self.diastolic)) / 3)


def bpm(record: BloodPressureRecord, *, intermediate: bool = False) -> bytes:
    """Encode a Blood Pressure Measurement (0x2A35) or, with ``intermediate``, an ICP (0x2A36).

    Flags are derived from which optional fields are set (ble-gatt.md §1.4).
    """
    flags = 0x01 if record.kpa else 0x00
    out = bytearray()
    if intermediate:
        out += sfloat(record.systolic) + sfloat(None) + sfloat(None)
    else:
        out += sfloat(record.systolic) + sfloat(record.diastolic) + sfloat(record.mean_arterial)
    if record.timestamp is not None:
        flags |= 0x02
        out += date_time(record.timestamp)
    if record.pulse is not None:
        flags |= 0x04
        out += sfloat(record.pulse)
    if record.user_id is not None:
        flags |= 0x08
        out.append(record.user_id & 0xFF)
    if record.status is not None:
        flags |= 0x10
        out += struct.pack("<H", record.status)
    return bytes([flags]) + bytes(out)


def beurer_bpm(record: BloodPressureRecord) -> bytes:
    """Encode a BPM the way the Beurer BM48/BM59/BM85/ELITE900 family does (ble-gatt.md §2.4).

    Quirks: MAP sent as ``00 00``; pulse SFLOAT byte-swapped; an *unflagged* user-id byte always
    follows the pulse; the status word is big-endian; flags ``0x56`` style (bit 6 set).
    """
    pulse = record.pulse if record.pulse is not None else 0
    flags = 0x40 | 0x02 | 0x04 | (0x10 if record.status is not None else 0) | int(record.kpa)
    out = bytearray([flags])
    out += sfloat(record.systolic) + sfloat(record.diastolic) + b"\x00\x00"
    out += date_time(record.timestamp)
    out += sfloat(pulse)[::-1]
    out.append((record.user_id if record.user_id is not None else 1) & 0xFF)
    if record.status is not None:
        out += struct.pack(">H", record.status)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class PlxSpotRecord:
    """One PLX Spot-check measurement (0x2A5E) of a simulated oximeter."""

    spo2: Number
    pulse: Number
    timestamp: datetime | None = None
    measurement_status: int | None = None
    device_status: int | None = None
    pulse_amplitude_index: Number | None = None


def plx_spot(record: PlxSpotRecord) -> bytes:
    """Encode a PLX Spot-check Measurement (0x2A5E); flags follow the optional fields."""
    flags = 0
    out = bytearray(sfloat(record.spo2) + sfloat(record.pulse))
    if record.timestamp is not None:
        flags |= 0x01
        out += date_time(record.timestamp)
    if record.measurement_status is not None:
        flags |= 0x02
        out += struct.pack("<H", record.measurement_status)
    if record.device_status is not None:
        flags |= 0x04
        out += struct.pack("<I", record.device_status)[:3]
    if record.pulse_amplitude_index is not None:
        flags |= 0x08
        out += sfloat(record.pulse_amplitude_index)
    return bytes([flags]) + bytes(out)


@dataclass(frozen=True, slots=True)
class PlxContinuousSample:
    """One PLX Continuous measurement (0x2A5F), "normal" SpO2/PR plus optional fields."""

    spo2: Number
    pulse: Number
    measurement_status: int | None = None
    device_status: int | None = None
    pulse_amplitude_index: Number | None = None
    extra: dict[str, tuple[Number, Number]] = field(default_factory=dict)


def plx_continuous(sample: PlxContinuousSample) -> bytes:
    """Encode a PLX Continuous Measurement (0x2A5F).

    ``sample.extra`` may carry ``"fast"`` and/or ``"slow"`` (SpO2, PR) pairs.
    """
    flags = 0
    out = bytearray(sfloat(sample.spo2) + sfloat(sample.pulse))
    if "fast" in sample.extra:
        flags |= 0x01
        out += sfloat(sample.extra["fast"][0]) + sfloat(sample.extra["fast"][1])
    if "slow" in sample.extra:
        flags |= 0x02
        out += sfloat(sample.extra["slow"][0]) + sfloat(sample.extra["slow"][1])
    if sample.measurement_status is not None:
        flags |= 0x04
        out += struct.pack("<H", sample.measurement_status)
    if sample.device_status is not None:
        flags |= 0x08
        out += struct.pack("<I", sample.device_status)[:3]
    if sample.pulse_amplitude_index is not None:
        flags |= 0x10
        out += sfloat(sample.pulse_amplitude_index)
    return bytes([flags]) + bytes(out)


def plx_features(
    features: int = 0x000D,
    measurement_status_support: int | None = 0x0200,
    device_status_support: int | None = None,
) -> bytes:
    """Encode PLX Features (0x2A60).

    The default says: measurement-status support (bit 0), spot-check storage (bit 2) and
    spot-check timestamps (bit 3), with "data from measurement storage" (bit 9) supported.
    """
    out = bytearray(struct.pack("<H", features))
    if features & 0x01:
        out += struct.pack("<H", measurement_status_support or 0)
    if features & 0x02:
        out += struct.pack("<I", device_status_support or 0)[:3]
    return bytes(out)


def racp_response(request_op: int, code: int) -> bytes:
    """Encode an RACP response-code indication ``06 00 <request op> <code>`` (§1.6)."""
    return bytes([0x06, 0x00, request_op & 0xFF, code & 0xFF])


def racp_number_of_records(count: int) -> bytes:
    """Encode an RACP "number of stored records" response ``05 00 <uint16 count>``."""
    return bytes([0x05, 0x00]) + struct.pack("<H", count)


def nonin_continuous(
    *,
    counter: int,
    spo2: int | None,
    pulse: int | None,
    status: int = 0x10,
    battery_decivolts: int = 30,
    pulse_amplitude_index: float = 5.0,
) -> bytes:
    """Encode a Nonin continuous-oximetry frame ("data format 19", ble-gatt.md §2.5).

    10 bytes: length, status, battery (0.1 V), PAI uint16 BE (1/100 %), counter uint16 BE,
    SpO2 (127 = missing), pulse uint16 BE (511 = missing). Status bit 4 = sensor attached.
    """
    return struct.pack(
        ">BBBHHBH",
        10,
        status & 0xFF,
        battery_decivolts & 0xFF,
        round(pulse_amplitude_index * 100) & 0xFFFF,
        counter & 0xFFFF,
        127 if spo2 is None else spo2,
        511 if pulse is None else pulse,
    )
