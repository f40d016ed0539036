"""Blood Pressure Service: Measurement 0x2A35, Intermediate Cuff Pressure 0x2A36, Feature 0x2A49.

Layout (``shared/reference/ble-gatt.md`` section 1.4, checked there against Nordic's
``BloodPressureMeasurementDataCallback.java``, Spezi ``BloodPressureMeasurement.swift`` and
the derdilla tests)::

    offset size  field                                present if
    0      1     flags                                always
    1      2     systolic SFLOAT (ICP: cuff pressure)
    3      2     diastolic SFLOAT (ICP: unused, NaN)
    5      2     mean arterial pressure SFLOAT (ICP: unused, NaN)
    +      7     time stamp (Date Time)               flags bit 1
    +      2     pulse rate SFLOAT                    flags bit 2
    +      1     user id uint8 (0xFF unknown user)    flags bit 3
    +      2     measurement status uint16            flags bit 4
    flags: bit0 unit 0 = mmHg, 1 = kPa; bits 5-7 reserved (kept as received)
    status: bit0 body movement, bit1 cuff too loose, bit2 irregular pulse,
            bits3-4 pulse-rate range (0 in range, 1 above, 2 below, 3 reserved),
            bit5 improper measurement position, bits 6-15 reserved

The payload length must equal exactly what the flags call for. Model quirks (Beurer: pulse
and status big-endian, unflagged user byte, MAP ``00 00``) come from
:mod:`agent.drivers.gatt.quirks` through the ``model`` argument and apply to 0x2A35 only
(no quirky 0x2A36 frames were observed).

Blood Pressure Feature 0x2A49 is a uint16 bit field (ble-gatt.md section 1.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from agent.drivers import ieee11073
from agent.drivers.gatt import quirks as q
from agent.drivers.gatt._wire import (
    Cursor,
    bit_names,
    bits_of,
    require_length,
    require_min_length,
    sfloat,
    uint,
)
from agent.drivers.gatt.times import DateTime, date_time_bytes, read_date_time
from agent.drivers.ieee11073 import Value
from agent.model import Absent

PROFILE_BPM: Final = "ble.bpm"
PROFILE_ICP: Final = "ble.icp"
PROFILE_BP_FEATURE: Final = "ble.bp-feature"

FLAG_KPA: Final = 0x01
FLAG_TIME_STAMP: Final = 0x02
FLAG_PULSE_RATE: Final = 0x04
FLAG_USER_ID: Final = 0x08
FLAG_STATUS: Final = 0x10
FLAGS_RESERVED: Final = 0xE0

USER_UNKNOWN: Final = 0xFF
"""User id 0xFF: unknown user (ble-gatt.md 1.4, from memory of the spec: unverified)."""


class PressureUnit(StrEnum):
    """The pressure unit the device reported, as its UCUM code (never converted)."""

    MMHG = "mm[Hg]"
    KPA = "kPa"


class BpmStatusFlag(StrEnum):
    """Named single-bit Blood Pressure Measurement status flags."""

    BODY_MOVEMENT = "body-movement"
    CUFF_TOO_LOOSE = "cuff-too-loose"
    IRREGULAR_PULSE = "irregular-pulse"
    IMPROPER_POSITION = "improper-measurement-position"


class PulseRateRange(StrEnum):
    """Status bits 3-4: where the pulse rate lies against the device's limits."""

    IN_RANGE = "in-range"
    ABOVE = "above-upper-limit"
    BELOW = "below-lower-limit"
    RESERVED = "reserved"


_STATUS_BITS: Final = (
    (0, BpmStatusFlag.BODY_MOVEMENT),
    (1, BpmStatusFlag.CUFF_TOO_LOOSE),
    (2, BpmStatusFlag.IRREGULAR_PULSE),
    (5, BpmStatusFlag.IMPROPER_POSITION),
)
_RANGES: Final = (
    PulseRateRange.IN_RANGE,
    PulseRateRange.ABOVE,
    PulseRateRange.BELOW,
    PulseRateRange.RESERVED,
)
_STATUS_RESERVED_MASK: Final = 0xFFC0


@dataclass(frozen=True, slots=True)
class BpmStatus:
    """The measurement-status word, kept raw, with its bits named."""

    raw: int

    @property
    def flags(self) -> tuple[BpmStatusFlag, ...]:
        """The single-bit flags that are set."""
        return tuple(BpmStatusFlag(n) for n in bit_names(self.raw, _STATUS_BITS))

    @property
    def pulse_rate_range(self) -> PulseRateRange:
        """Bits 3-4."""
        return _RANGES[(self.raw >> 3) & 0x3]

    @property
    def reserved_bits(self) -> int:
        """Bits 6-15 as received (reserved for future use)."""
        return self.raw & _STATUS_RESERVED_MASK

    def names(self) -> tuple[str, ...]:
        """Every condition the status reports, e.g. ``("irregular-pulse",)``.

        The pulse-rate range is named only when it is not "in range".
        """
        out = [str(f) for f in self.flags]
        if self.pulse_rate_range is not PulseRateRange.IN_RANGE:
            out.append(f"pulse-rate-{self.pulse_rate_range}")
        return tuple(out)

    @classmethod
    def of(
        cls,
        *flags: BpmStatusFlag,
        pulse_rate_range: PulseRateRange = PulseRateRange.IN_RANGE,
        reserved_bits: int = 0,
    ) -> BpmStatus:
        """Build a status word from named flags (for encoders and simulated devices)."""
        if reserved_bits & ~_STATUS_RESERVED_MASK:
            raise ValueError("reserved_bits may only use bits 6-15")
        raw = bits_of(flags, _STATUS_BITS) | (_RANGES.index(pulse_rate_range) << 3)
        return cls(raw | reserved_bits)


@dataclass(frozen=True, slots=True)
class BloodPressureMeasurement:
    """A decoded Blood Pressure Measurement 0x2A35.

    ``flags`` is the flags byte as received (``None`` when built by hand: the encoder derives
    it from the fields present). ``quirks`` names the quirk set the payload was decoded with.
    """

    systolic: Value
    diastolic: Value
    mean_arterial: Value
    unit: PressureUnit = PressureUnit.MMHG
    timestamp: DateTime | None = None
    pulse_rate: Value | None = None
    user_id: int | None = None
    status: BpmStatus | None = None
    flags: int | None = None
    quirks: str = q.STANDARD.id


@dataclass(frozen=True, slots=True)
class IntermediateCuffPressure:
    """A decoded Intermediate Cuff Pressure 0x2A36 (the cuff pressure while inflating).

    The diastolic and MAP slots are unused (NaN by the spec; some devices send ``00 00``):
    they are accepted whatever they hold and kept raw so that encoding reproduces them.
    """

    cuff_pressure: Value
    unit: PressureUnit = PressureUnit.MMHG
    timestamp: DateTime | None = None
    pulse_rate: Value | None = None
    user_id: int | None = None
    status: BpmStatus | None = None
    flags: int | None = None
    unused_raw: tuple[int, int] = (ieee11073.SFLOAT_NAN, ieee11073.SFLOAT_NAN)


@dataclass(frozen=True, slots=True)
class _Frame:
    flags: int
    first: Value
    second_raw: int
    third_raw: int
    timestamp: DateTime | None
    pulse_rate: Value | None
    user_id: int | None
    status: BpmStatus | None

    @property
    def unit(self) -> PressureUnit:
        return PressureUnit.KPA if self.flags & FLAG_KPA else PressureUnit.MMHG


def _decode_frame(
    profile: str, data: bytes, quirks: q.ModelQuirks, labels: tuple[str, str, str]
) -> _Frame:
    require_min_length(profile, data, 1, "flags")
    flags = data[0]
    has_time = bool(flags & FLAG_TIME_STAMP)
    has_pulse = bool(flags & FLAG_PULSE_RATE)
    user_unflagged = quirks.bpm_unflagged_user_id and not flags & FLAG_USER_ID
    has_user = bool(flags & FLAG_USER_ID) or quirks.bpm_unflagged_user_id
    has_status = bool(flags & FLAG_STATUS)
    user_label = f"user id (unflagged, {quirks.id} quirk)" if user_unflagged else "user id"
    require_length(
        profile,
        data,
        [
            ("flags", 1),
            (labels[0], 2),
            (labels[1], 2),
            (labels[2], 2),
            ("time stamp", 7 * has_time),
            ("pulse rate", 2 * has_pulse),
            (user_label, 1 * has_user),
            ("status", 2 * has_status),
        ],
        flags=flags,
    )
    cur = Cursor(profile, data)
    cur.u8("flags")
    first = cur.sfloat(labels[0])
    second_raw = cur.u16(labels[1])
    third_raw = cur.u16(labels[2])
    timestamp = read_date_time(cur, "time stamp") if has_time else None
    pulse = cur.sfloat("pulse rate", big_endian=quirks.bpm_pulse_big_endian) if has_pulse else None
    user_id = cur.u8("user id") if has_user else None
    status = (
        BpmStatus(cur.u16("status", big_endian=quirks.bpm_status_big_endian))
        if has_status
        else None
    )
    cur.end()
    return _Frame(flags, first, second_raw, third_raw, timestamp, pulse, user_id, status)


def decode_bpm(data: bytes, model: str | None = None) -> BloodPressureMeasurement:
    """Decode a Blood Pressure Measurement 0x2A35 payload.

    ``model`` is the advertised name (or a quirk-set id); see :mod:`agent.drivers.gatt.quirks`.
    Raises :class:`~agent.errors.CodecError` when the length does not match the flags or a
    field is invalid.
    """
    quirks = q.quirks_for(model)
    frame = _decode_frame(
        PROFILE_BPM, data, quirks, ("systolic", "diastolic", "mean arterial pressure")
    )
    mean: Value
    if quirks.bpm_zero_map_is_missing and frame.third_raw == 0:
        mean = Absent.MISSING
    else:
        mean = ieee11073.decode_sfloat_raw(frame.third_raw)
    return BloodPressureMeasurement(
        systolic=frame.first,
        diastolic=ieee11073.decode_sfloat_raw(frame.second_raw),
        mean_arterial=mean,
        unit=frame.unit,
        timestamp=frame.timestamp,
        pulse_rate=frame.pulse_rate,
        user_id=frame.user_id,
        status=frame.status,
        flags=frame.flags,
        quirks=quirks.id,
    )


def decode_icp(data: bytes, model: str | None = None) -> IntermediateCuffPressure:
    """Decode an Intermediate Cuff Pressure 0x2A36 payload (same layout as 0x2A35).

    ``model`` is accepted for a uniform signature; no quirks apply to 0x2A36.
    """
    frame = _decode_frame(PROFILE_ICP, data, q.STANDARD, ("cuff pressure", "unused", "unused"))
    return IntermediateCuffPressure(
        cuff_pressure=frame.first,
        unit=frame.unit,
        timestamp=frame.timestamp,
        pulse_rate=frame.pulse_rate,
        user_id=frame.user_id,
        status=frame.status,
        flags=frame.flags,
        unused_raw=(frame.second_raw, frame.third_raw),
    )


def _flags_for(
    given: int | None,
    unit: PressureUnit,
    timestamp: DateTime | None,
    pulse_rate: Value | None,
    user_id: int | None,
    status: BpmStatus | None,
    quirks: q.ModelQuirks,
) -> int:
    derived = (
        (FLAG_KPA if unit is PressureUnit.KPA else 0)
        | (FLAG_TIME_STAMP if timestamp is not None else 0)
        | (FLAG_PULSE_RATE if pulse_rate is not None else 0)
        | (FLAG_USER_ID if user_id is not None and not quirks.bpm_unflagged_user_id else 0)
        | (FLAG_STATUS if status is not None else 0)
    )
    if given is None:
        return derived
    if not 0 <= given <= 0xFF:
        raise ValueError(f"flags {given} do not fit in a byte")
    # With the unflagged-user quirk the user byte is sent either way, so bit 3 is free.
    checked = 0x1F & ~(FLAG_USER_ID if quirks.bpm_unflagged_user_id else 0)
    if given & checked != derived & checked:
        raise ValueError(
            f"flags 0x{given:02X} disagree with the fields present (expected 0x{derived:02X} "
            f"in mask 0x{checked:02X})"
        )
    return given


def _encode_frame(
    flags: int,
    first: Value,
    second: bytes,
    third: bytes,
    timestamp: DateTime | None,
    pulse_rate: Value | None,
    user_id: int | None,
    status: BpmStatus | None,
    quirks: q.ModelQuirks,
) -> bytes:
    out = bytearray((flags,))
    out += sfloat(first) + second + third
    if timestamp is not None:
        out += date_time_bytes(timestamp)
    if pulse_rate is not None:
        out += sfloat(pulse_rate, big_endian=quirks.bpm_pulse_big_endian)
    if user_id is not None:
        out += uint(user_id, 1, "user id")
    if status is not None:
        out += uint(status.raw, 2, "status", big_endian=quirks.bpm_status_big_endian)
    return bytes(out)


def encode_bpm(value: BloodPressureMeasurement, model: str | None = None) -> bytes:
    """Encode a Blood Pressure Measurement 0x2A35 payload.

    The quirks are those of ``model`` when given, else those the value was decoded with, so
    ``encode_bpm(decode_bpm(b, model), model) == b`` for every payload that decodes.
    Raises :class:`ValueError` for values that cannot be sent.
    """
    quirks = q.quirks_for(model if model is not None else value.quirks)
    if quirks.bpm_unflagged_user_id and value.user_id is None:
        raise ValueError(f"a {quirks.id} device always sends a user id; set user_id")
    flags = _flags_for(
        value.flags,
        value.unit,
        value.timestamp,
        value.pulse_rate,
        value.user_id,
        value.status,
        quirks,
    )
    if value.mean_arterial is Absent.MISSING and quirks.bpm_zero_map_is_missing:
        third = b"\x00\x00"
    else:
        third = sfloat(value.mean_arterial)
    return _encode_frame(
        flags,
        value.systolic,
        sfloat(value.diastolic),
        third,
        value.timestamp,
        value.pulse_rate,
        value.user_id,
        value.status,
        quirks,
    )


def encode_icp(value: IntermediateCuffPressure) -> bytes:
    """Encode an Intermediate Cuff Pressure 0x2A36 payload."""
    flags = _flags_for(
        value.flags,
        value.unit,
        value.timestamp,
        value.pulse_rate,
        value.user_id,
        value.status,
        q.STANDARD,
    )
    return _encode_frame(
        flags,
        value.cuff_pressure,
        uint(value.unused_raw[0], 2, "unused diastolic slot"),
        uint(value.unused_raw[1], 2, "unused MAP slot"),
        value.timestamp,
        value.pulse_rate,
        value.user_id,
        value.status,
        q.STANDARD,
    )


class BpFeature(StrEnum):
    """Blood Pressure Feature 0x2A49 bits (ble-gatt.md section 1.4)."""

    BODY_MOVEMENT_DETECTION = "body-movement-detection"
    CUFF_FIT_DETECTION = "cuff-fit-detection"
    IRREGULAR_PULSE_DETECTION = "irregular-pulse-detection"
    PULSE_RATE_RANGE_DETECTION = "pulse-rate-range-detection"
    MEASUREMENT_POSITION_DETECTION = "measurement-position-detection"
    MULTIPLE_BONDS = "multiple-bonds"
    E2E_CRC = "e2e-crc"
    USER_DATA_SERVICE = "user-data-service"
    USER_FACING_TIME = "user-facing-time"


_FEATURE_BITS: Final = tuple(enumerate(BpFeature))


@dataclass(frozen=True, slots=True)
class BloodPressureFeature:
    """The Blood Pressure Feature bit field, kept raw, with its bits named."""

    raw: int

    @property
    def features(self) -> tuple[BpFeature, ...]:
        """The supported features."""
        return tuple(BpFeature(n) for n in bit_names(self.raw, _FEATURE_BITS))

    @property
    def reserved_bits(self) -> int:
        """Bits 9-15 as received."""
        return self.raw & 0xFE00

    @classmethod
    def of(cls, *features: BpFeature) -> BloodPressureFeature:
        """Build the bit field from named features."""
        return cls(bits_of(features, _FEATURE_BITS))


def decode_bp_feature(data: bytes, model: str | None = None) -> BloodPressureFeature:
    """Decode a Blood Pressure Feature 0x2A49 payload (exactly 2 bytes)."""
    require_length(PROFILE_BP_FEATURE, data, [("features", 2)])
    return BloodPressureFeature(int.from_bytes(data, "little"))


def encode_bp_feature(value: BloodPressureFeature) -> bytes:
    """Encode a Blood Pressure Feature 0x2A49 payload."""
    return uint(value.raw, 2, "features")
