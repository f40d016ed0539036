"""Payload builders for the simulated peripherals, on top of the project's codecs.

Each builder takes the mock's simple record types (plain numbers and :class:`datetime`) and
encodes them with the project's own encoders in :mod:`agent.drivers.gatt` and
:mod:`agent.drivers.ieee11073`; the tests in ``tests/ble/test_mock_payloads.py`` pin the bytes
to the vectors of ``../shared/reference/ble-gatt.md`` §1.9, so an encoder and decoder that are
wrong in the same way cannot hide behind each other.
"""

import math
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from agent.drivers.gatt import bps, nonin, plx, racp, times
from agent.drivers.ieee11073 import Value, sfloat_bytes
from agent.errors import CodecError
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
    "value_of",
]


Number = float | Decimal
"""A measured value: ``float``/``int`` or an exact :class:`~decimal.Decimal` (keeps the
resolution, e.g. ``Decimal("11")`` encodes as ``0B 00`` and ``11.0`` as ``6E F0``)."""


def value_of(value: Number | None) -> Value:
    """A number as the codecs want it: an exact Decimal, or the special value for None/NaN/inf."""
    if value is None:
        return Absent.NAN
    if isinstance(value, float):
        if math.isnan(value):
            return Absent.NAN
        if math.isinf(value):
            return Absent.POS_INF if value > 0 else Absent.NEG_INF
        return Decimal(repr(value))
    return Decimal(value)


def sfloat(value: Number | None) -> bytes:
    """Encode a number as an IEEE-11073 16-bit SFLOAT, little-endian.

    Uses the project's encoder (:func:`agent.drivers.ieee11073.sfloat_bytes`): the exponent is
    two's complement and the number's own resolution is kept, so ``sfloat(120) == b"\x78\x00"``,
    ``sfloat(18.9) == b"\xbd\xf0"``, ``sfloat(Decimal("100.0")) == b"\xe8\xf3"``. ``None``
    and NaN encode as NaN, infinities as +INF/-INF.

    Raises:
        ValueError: if the value cannot be represented exactly.
    """
    return sfloat_bytes(value_of(value))


def sfloat_special(which: Absent) -> bytes:
    """The wire bytes of an SFLOAT special value (NaN, NRes, +INF, -INF, reserved)."""
    return sfloat_bytes(which)


def date_time(when: datetime | None) -> bytes:
    """Encode a Date Time (0x2A08); ``None`` encodes "unknown" (all zero)."""
    if when is None:
        return times.encode_date_time(times.DateTime(0, 0, 0, 0, 0, 0))
    return times.encode_date_time(times.DateTime.from_datetime(when))


def parse_date_time(data: bytes) -> datetime | None:
    """Decode a 7-byte Date Time (0x2A08); ``None`` if the date part is unknown.

    Raises:
        ValueError: if the length is not 7 or a field is out of range.
    """
    if len(data) != 7:
        raise ValueError(f"Date Time must be 7 bytes, got {len(data)}")
    try:
        return times.decode_date_time(bytes(data)).to_datetime()
    except CodecError as exc:
        raise ValueError(str(exc)) from None


def current_time(when: datetime, *, fractions256: int = 0, adjust_reason: int = 0) -> bytes:
    """Encode a Current Time (0x2A2B): Date Time, day of week (1=Monday), fractions256, reason."""
    return times.encode_current_time(
        times.CurrentTime(
            times.DateTime.from_datetime(when), when.isoweekday(), fractions256, adjust_reason
        )
    )


def parse_current_time(data: bytes) -> datetime | None:
    """Decode the date-time part (whole seconds) of a 10-byte Current Time (0x2A2B).

    Raises:
        ValueError: if the length is not 10 or a field is out of range.
    """
    if len(data) != 10:
        raise ValueError(f"Current Time must be 10 bytes, got {len(data)}")
    try:
        return times.decode_current_time(bytes(data)).date_time.to_datetime()
    except CodecError as exc:
        raise ValueError(str(exc)) from None


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


def _bp_timestamp(when: datetime | None) -> times.DateTime | None:
    return None if when is None else times.DateTime.from_datetime(when)


def bpm(record: BloodPressureRecord, *, intermediate: bool = False) -> bytes:
    """Encode a Blood Pressure Measurement (0x2A35) or, with ``intermediate``, an ICP (0x2A36).

    Flags are derived from which optional fields are set (ble-gatt.md §1.4).
    """
    unit = bps.PressureUnit.KPA if record.kpa else bps.PressureUnit.MMHG
    status = None if record.status is None else bps.BpmStatus(record.status)
    pulse = None if record.pulse is None else value_of(record.pulse)
    if intermediate:
        return bps.encode_icp(
            bps.IntermediateCuffPressure(
                value_of(record.systolic),
                unit=unit,
                timestamp=_bp_timestamp(record.timestamp),
                pulse_rate=pulse,
                user_id=record.user_id,
                status=status,
            )
        )
    return bps.encode_bpm(
        bps.BloodPressureMeasurement(
            value_of(record.systolic),
            value_of(record.diastolic),
            value_of(record.mean_arterial),
            unit=unit,
            timestamp=_bp_timestamp(record.timestamp),
            pulse_rate=pulse,
            user_id=record.user_id,
            status=status,
        )
    )


def beurer_bpm(record: BloodPressureRecord, model: str = "BM85") -> bytes:
    """Encode a BPM the way the Beurer BM48/BM59/BM85/ELITE900 family does (ble-gatt.md §2.4).

    Quirks (the project's quirk table for ``model``): MAP sent as ``00 00``; pulse SFLOAT
    byte-swapped; an *unflagged* user-id byte always follows the pulse; the status word is
    big-endian; flags with the reserved bit 6 set, as observed (``0x56``).
    """
    status = None if record.status is None else bps.BpmStatus(record.status)
    flags = 0x40 | 0x02 | 0x04 | (0x10 if status is not None else 0) | int(record.kpa)
    return bps.encode_bpm(
        bps.BloodPressureMeasurement(
            value_of(record.systolic),
            value_of(record.diastolic),
            Absent.MISSING,
            unit=bps.PressureUnit.KPA if record.kpa else bps.PressureUnit.MMHG,
            timestamp=times.DateTime.from_datetime(record.timestamp)
            if record.timestamp is not None
            else times.DateTime(0, 0, 0, 0, 0, 0),
            pulse_rate=value_of(record.pulse if record.pulse is not None else 0),
            user_id=record.user_id if record.user_id is not None else 1,
            status=status,
            flags=flags,
        ),
        model,
    )


@dataclass(frozen=True, slots=True)
class PlxSpotRecord:
    """One PLX Spot-check measurement (0x2A5E) of a simulated oximeter."""

    spo2: Number
    pulse: Number
    timestamp: datetime | None = None
    measurement_status: int | None = None
    device_status: int | None = None
    pulse_amplitude_index: Number | None = None


def _plx_statuses(
    measurement: int | None, device: int | None
) -> tuple[plx.MeasurementStatus | None, plx.DeviceSensorStatus | None]:
    return (
        None if measurement is None else plx.MeasurementStatus(measurement),
        None if device is None else plx.DeviceSensorStatus(device),
    )


def plx_spot(record: PlxSpotRecord) -> bytes:
    """Encode a PLX Spot-check Measurement (0x2A5E); flags follow the optional fields."""
    meas, dev = _plx_statuses(record.measurement_status, record.device_status)
    pai = record.pulse_amplitude_index
    return plx.encode_plx_spot(
        plx.PlxSpotCheck(
            value_of(record.spo2),
            value_of(record.pulse),
            timestamp=None
            if record.timestamp is None
            else times.DateTime.from_datetime(record.timestamp),
            measurement_status=meas,
            device_sensor_status=dev,
            pulse_amplitude_index=None if pai is None else value_of(pai),
        )
    )


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

    def pair(key: str) -> plx.SpO2PR | None:
        if key not in sample.extra:
            return None
        spo2, pulse = sample.extra[key]
        return plx.SpO2PR(value_of(spo2), value_of(pulse))

    meas, dev = _plx_statuses(sample.measurement_status, sample.device_status)
    pai = sample.pulse_amplitude_index
    return plx.encode_plx_cont(
        plx.PlxContinuous(
            plx.SpO2PR(value_of(sample.spo2), value_of(sample.pulse)),
            fast=pair("fast"),
            slow=pair("slow"),
            measurement_status=meas,
            device_sensor_status=dev,
            pulse_amplitude_index=None if pai is None else value_of(pai),
        )
    )


def plx_features(
    features: int = 0x000D,
    measurement_status_support: int | None = 0x0200,
    device_status_support: int | None = None,
) -> bytes:
    """Encode PLX Features (0x2A60).

    The default says: measurement-status support (bit 0), spot-check storage (bit 2) and
    spot-check timestamps (bit 3), with "data from measurement storage" (bit 9) supported.
    """
    return plx.encode_plx_features(
        plx.PlxFeatures(
            features,
            plx.MeasurementStatus(measurement_status_support or 0) if features & 0x01 else None,
            plx.DeviceSensorStatus(device_status_support or 0) if features & 0x02 else None,
        )
    )


def racp_response(request_op: int, code: int) -> bytes:
    """Encode an RACP response-code indication ``06 00 <request op> <code>`` (§1.6)."""
    return racp.encode_racp_response(racp.RacpResponse(request_op, code))


def racp_number_of_records(count: int) -> bytes:
    """Encode an RACP "number of stored records" response ``05 00 <uint16 count>``."""
    return racp.encode_racp_response(racp.RacpRecordCount(count))


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
    return nonin.encode_nonin_oximetry(
        nonin.NoninOximetry(
            status=status & 0xFF,
            battery_decivolts=battery_decivolts & 0xFF,
            pai_centipercent=round(pulse_amplitude_index * 100) & 0xFFFF,
            counter=counter & 0xFFFF,
            spo2=Absent.MISSING if spo2 is None else Decimal(spo2),
            pulse_rate=Absent.MISSING if pulse is None else Decimal(pulse),
        )
    )
