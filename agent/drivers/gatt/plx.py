"""Pulse Oximeter Service: Spot-check 0x2A5E, Continuous 0x2A5F, Features 0x2A60.

Layouts from ``shared/reference/ble-gatt.md`` section 1.5 (Spezi ``PLXSpotCheckMeasurement``,
``PLXContinuousMeasurement``, ``PLXFeatures`` and bluetooth-sig-python, citing PLXS v1.0.1
tables 3.3/3.4)::

    Spot-check 0x2A5E                          present if
    0  1  flags                                always
    1  2  SpO2 SFLOAT (%)
    3  2  pulse rate SFLOAT (/min)
    +  7  time stamp (Date Time)               flags bit 0
    +  2  measurement status uint16            flags bit 1
    +  3  device & sensor status uint24        flags bit 2
    +  2  pulse amplitude index SFLOAT (%)     flags bit 3
          flags bit 4: device clock is not set; bits 5-7 reserved

    Continuous 0x2A5F
    0  1  flags                                always
    1  4  SpO2PR-Normal (SpO2, PR SFLOATs)
    +  4  SpO2PR-Fast                          flags bit 0
    +  4  SpO2PR-Slow                          flags bit 1
    +  2  measurement status uint16            flags bit 2
    +  3  device & sensor status uint24        flags bit 3
    +  2  pulse amplitude index SFLOAT         flags bit 4
          bits 5-7 reserved

    Features 0x2A60: uint16 supported features; uint16 measurement-status support if bit 0;
    uint24 device & sensor status support if bit 1.

The payload length must equal exactly what the flags call for.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

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

PROFILE_PLX_SPOT: Final = "ble.plx-spot"
PROFILE_PLX_CONT: Final = "ble.plx-cont"
PROFILE_PLX_FEATURES: Final = "ble.plx-features"

SPOT_FLAG_TIME_STAMP: Final = 0x01
SPOT_FLAG_MEASUREMENT_STATUS: Final = 0x02
SPOT_FLAG_DEVICE_SENSOR_STATUS: Final = 0x04
SPOT_FLAG_PULSE_AMPLITUDE: Final = 0x08
SPOT_FLAG_CLOCK_NOT_SET: Final = 0x10

CONT_FLAG_FAST: Final = 0x01
CONT_FLAG_SLOW: Final = 0x02
CONT_FLAG_MEASUREMENT_STATUS: Final = 0x04
CONT_FLAG_DEVICE_SENSOR_STATUS: Final = 0x08
CONT_FLAG_PULSE_AMPLITUDE: Final = 0x10


class MeasurementStatusFlag(StrEnum):
    """PLX Measurement Status bits 5-15 (bits 0-4 reserved)."""

    MEASUREMENT_ONGOING = "measurement-ongoing"
    EARLY_ESTIMATED_DATA = "early-estimated-data"
    VALIDATED_DATA = "validated-data"
    FULLY_QUALIFIED_DATA = "fully-qualified-data"
    FROM_MEASUREMENT_STORAGE = "data-from-measurement-storage"
    DEMONSTRATION_DATA = "data-for-demonstration"
    TESTING_DATA = "data-for-testing"
    CALIBRATION_ONGOING = "calibration-ongoing"
    MEASUREMENT_UNAVAILABLE = "measurement-unavailable"
    QUESTIONABLE_MEASUREMENT = "questionable-measurement-detected"
    INVALID_MEASUREMENT = "invalid-measurement-detected"


class DeviceSensorStatusFlag(StrEnum):
    """PLX Device and Sensor Status bits 0-15 (bits 16-23 reserved)."""

    EXTENDED_DISPLAY_UPDATE = "extended-display-update-ongoing"
    EQUIPMENT_MALFUNCTION = "equipment-malfunction-detected"
    SIGNAL_PROCESSING_IRREGULARITY = "signal-processing-irregularity-detected"
    INADEQUATE_SIGNAL = "inadequate-signal-detected"
    POOR_SIGNAL = "poor-signal-detected"
    LOW_PERFUSION = "low-perfusion-detected"
    ERRATIC_SIGNAL = "erratic-signal-detected"
    NON_PULSATILE_SIGNAL = "non-pulsatile-signal-detected"
    QUESTIONABLE_PULSE = "questionable-pulse-detected"
    SIGNAL_ANALYSIS_ONGOING = "signal-analysis-ongoing"
    SENSOR_INTERFERENCE = "sensor-interference-detected"
    SENSOR_UNCONNECTED = "sensor-unconnected-to-user"
    UNKNOWN_SENSOR = "unknown-sensor-connected"
    SENSOR_DISPLACED = "sensor-displaced"
    SENSOR_MALFUNCTIONING = "sensor-malfunctioning"
    SENSOR_DISCONNECTED = "sensor-disconnected"


class PlxFeature(StrEnum):
    """PLX Features supported-feature bits 0-7 (8-15 reserved)."""

    MEASUREMENT_STATUS = "measurement-status-support"
    DEVICE_SENSOR_STATUS = "device-and-sensor-status-support"
    SPOT_CHECK_STORAGE = "spot-check-measurement-storage"
    SPOT_CHECK_TIME_STAMP = "spot-check-time-stamp"
    SPO2PR_FAST = "spo2pr-fast"
    SPO2PR_SLOW = "spo2pr-slow"
    PULSE_AMPLITUDE_INDEX = "pulse-amplitude-index"
    MULTIPLE_BONDS = "multiple-bonds"


SPOT_CLOCK_NOT_SET: Final = "device-clock-not-set"
"""Status name for spot-check flags bit 4."""

_MEAS_BITS: Final = tuple((i + 5, f) for i, f in enumerate(MeasurementStatusFlag))
_DEV_BITS: Final = tuple(enumerate(DeviceSensorStatusFlag))
_FEATURE_BITS: Final = tuple(enumerate(PlxFeature))


@dataclass(frozen=True, slots=True)
class MeasurementStatus:
    """The PLX Measurement Status word, kept raw, with its bits named."""

    raw: int

    @property
    def flags(self) -> tuple[MeasurementStatusFlag, ...]:
        """The named bits that are set."""
        return tuple(MeasurementStatusFlag(n) for n in bit_names(self.raw, _MEAS_BITS))

    @property
    def reserved_bits(self) -> int:
        """Bits 0-4 as received."""
        return self.raw & 0x001F

    @classmethod
    def of(cls, *flags: MeasurementStatusFlag) -> MeasurementStatus:
        """Build the word from named flags."""
        return cls(bits_of(flags, _MEAS_BITS))


@dataclass(frozen=True, slots=True)
class DeviceSensorStatus:
    """The PLX Device and Sensor Status (24 bits), kept raw, with its bits named."""

    raw: int

    @property
    def flags(self) -> tuple[DeviceSensorStatusFlag, ...]:
        """The named bits that are set."""
        return tuple(DeviceSensorStatusFlag(n) for n in bit_names(self.raw, _DEV_BITS))

    @property
    def reserved_bits(self) -> int:
        """Bits 16-23 as received."""
        return self.raw & 0xFF0000

    @classmethod
    def of(cls, *flags: DeviceSensorStatusFlag) -> DeviceSensorStatus:
        """Build the field from named flags."""
        return cls(bits_of(flags, _DEV_BITS))


@dataclass(frozen=True, slots=True)
class SpO2PR:
    """One SpO2 / pulse-rate pair."""

    spo2: Value
    pulse_rate: Value


@dataclass(frozen=True, slots=True)
class PlxSpotCheck:
    """A decoded PLX Spot-check Measurement 0x2A5E.

    ``flags`` is the byte as received (``None`` when built by hand: derived on encode).
    """

    spo2: Value
    pulse_rate: Value
    timestamp: DateTime | None = None
    measurement_status: MeasurementStatus | None = None
    device_sensor_status: DeviceSensorStatus | None = None
    pulse_amplitude_index: Value | None = None
    device_clock_not_set: bool = False
    flags: int | None = None

    def status_names(self) -> tuple[str, ...]:
        """Every condition reported: measurement, device/sensor status, clock not set."""
        return _status_names(
            self.measurement_status, self.device_sensor_status, self.device_clock_not_set
        )


@dataclass(frozen=True, slots=True)
class PlxContinuous:
    """A decoded PLX Continuous Measurement 0x2A5F.

    ``flags`` is the byte as received (``None`` when built by hand: derived on encode).
    """

    normal: SpO2PR
    fast: SpO2PR | None = None
    slow: SpO2PR | None = None
    measurement_status: MeasurementStatus | None = None
    device_sensor_status: DeviceSensorStatus | None = None
    pulse_amplitude_index: Value | None = None
    flags: int | None = None

    def status_names(self) -> tuple[str, ...]:
        """Every condition reported: measurement and device/sensor status."""
        return _status_names(self.measurement_status, self.device_sensor_status, False)


def _status_names(
    meas: MeasurementStatus | None, dev: DeviceSensorStatus | None, clock_not_set: bool
) -> tuple[str, ...]:
    out: list[str] = []
    if meas is not None:
        out += [str(f) for f in meas.flags]
    if dev is not None:
        out += [str(f) for f in dev.flags]
    if clock_not_set:
        out.append(SPOT_CLOCK_NOT_SET)
    return tuple(out)


def _check_flags(given: int | None, derived: int, checked: int) -> int:
    if given is None:
        return derived
    if not 0 <= given <= 0xFF:
        raise ValueError(f"flags {given} do not fit in a byte")
    if given & checked != derived & checked:
        raise ValueError(
            f"flags 0x{given:02X} disagree with the fields present (expected 0x{derived:02X} "
            f"in mask 0x{checked:02X})"
        )
    return given


def decode_plx_spot(data: bytes, model: str | None = None) -> PlxSpotCheck:
    """Decode a PLX Spot-check Measurement 0x2A5E payload.

    Raises :class:`~agent.errors.CodecError` when the length does not match the flags.
    ``model`` is accepted for a uniform signature; no quirks are known for 0x2A5E.
    """
    profile = PROFILE_PLX_SPOT
    require_min_length(profile, data, 1, "flags")
    flags = data[0]
    has_time = bool(flags & SPOT_FLAG_TIME_STAMP)
    has_meas = bool(flags & SPOT_FLAG_MEASUREMENT_STATUS)
    has_dev = bool(flags & SPOT_FLAG_DEVICE_SENSOR_STATUS)
    has_pai = bool(flags & SPOT_FLAG_PULSE_AMPLITUDE)
    require_length(
        profile,
        data,
        [
            ("flags", 1),
            ("SpO2", 2),
            ("pulse rate", 2),
            ("time stamp", 7 * has_time),
            ("measurement status", 2 * has_meas),
            ("device and sensor status", 3 * has_dev),
            ("pulse amplitude index", 2 * has_pai),
        ],
        flags=flags,
    )
    cur = Cursor(profile, data)
    cur.u8("flags")
    value = PlxSpotCheck(
        spo2=cur.sfloat("SpO2"),
        pulse_rate=cur.sfloat("pulse rate"),
        timestamp=read_date_time(cur, "time stamp") if has_time else None,
        measurement_status=MeasurementStatus(cur.u16("measurement status")) if has_meas else None,
        device_sensor_status=(
            DeviceSensorStatus(cur.u24("device and sensor status")) if has_dev else None
        ),
        pulse_amplitude_index=cur.sfloat("pulse amplitude index") if has_pai else None,
        device_clock_not_set=bool(flags & SPOT_FLAG_CLOCK_NOT_SET),
        flags=flags,
    )
    cur.end()
    return value


def encode_plx_spot(value: PlxSpotCheck) -> bytes:
    """Encode a PLX Spot-check Measurement 0x2A5E payload."""
    derived = (
        (SPOT_FLAG_TIME_STAMP if value.timestamp is not None else 0)
        | (SPOT_FLAG_MEASUREMENT_STATUS if value.measurement_status is not None else 0)
        | (SPOT_FLAG_DEVICE_SENSOR_STATUS if value.device_sensor_status is not None else 0)
        | (SPOT_FLAG_PULSE_AMPLITUDE if value.pulse_amplitude_index is not None else 0)
        | (SPOT_FLAG_CLOCK_NOT_SET if value.device_clock_not_set else 0)
    )
    flags = _check_flags(value.flags, derived, 0x1F)
    out = bytearray((flags,))
    out += sfloat(value.spo2) + sfloat(value.pulse_rate)
    if value.timestamp is not None:
        out += date_time_bytes(value.timestamp)
    if value.measurement_status is not None:
        out += uint(value.measurement_status.raw, 2, "measurement status")
    if value.device_sensor_status is not None:
        out += uint(value.device_sensor_status.raw, 3, "device and sensor status")
    if value.pulse_amplitude_index is not None:
        out += sfloat(value.pulse_amplitude_index)
    return bytes(out)


def decode_plx_cont(data: bytes, model: str | None = None) -> PlxContinuous:
    """Decode a PLX Continuous Measurement 0x2A5F payload.

    Raises :class:`~agent.errors.CodecError` when the length does not match the flags.
    ``model`` is accepted for a uniform signature; no quirks are known for 0x2A5F.
    """
    profile = PROFILE_PLX_CONT
    require_min_length(profile, data, 1, "flags")
    flags = data[0]
    has_fast = bool(flags & CONT_FLAG_FAST)
    has_slow = bool(flags & CONT_FLAG_SLOW)
    has_meas = bool(flags & CONT_FLAG_MEASUREMENT_STATUS)
    has_dev = bool(flags & CONT_FLAG_DEVICE_SENSOR_STATUS)
    has_pai = bool(flags & CONT_FLAG_PULSE_AMPLITUDE)
    require_length(
        profile,
        data,
        [
            ("flags", 1),
            ("SpO2PR-Normal", 4),
            ("SpO2PR-Fast", 4 * has_fast),
            ("SpO2PR-Slow", 4 * has_slow),
            ("measurement status", 2 * has_meas),
            ("device and sensor status", 3 * has_dev),
            ("pulse amplitude index", 2 * has_pai),
        ],
        flags=flags,
    )
    cur = Cursor(profile, data)
    cur.u8("flags")

    def pair(name: str) -> SpO2PR:
        return SpO2PR(cur.sfloat(f"{name} SpO2"), cur.sfloat(f"{name} pulse rate"))

    value = PlxContinuous(
        normal=pair("SpO2PR-Normal"),
        fast=pair("SpO2PR-Fast") if has_fast else None,
        slow=pair("SpO2PR-Slow") if has_slow else None,
        measurement_status=MeasurementStatus(cur.u16("measurement status")) if has_meas else None,
        device_sensor_status=(
            DeviceSensorStatus(cur.u24("device and sensor status")) if has_dev else None
        ),
        pulse_amplitude_index=cur.sfloat("pulse amplitude index") if has_pai else None,
        flags=flags,
    )
    cur.end()
    return value


def encode_plx_cont(value: PlxContinuous) -> bytes:
    """Encode a PLX Continuous Measurement 0x2A5F payload."""
    derived = (
        (CONT_FLAG_FAST if value.fast is not None else 0)
        | (CONT_FLAG_SLOW if value.slow is not None else 0)
        | (CONT_FLAG_MEASUREMENT_STATUS if value.measurement_status is not None else 0)
        | (CONT_FLAG_DEVICE_SENSOR_STATUS if value.device_sensor_status is not None else 0)
        | (CONT_FLAG_PULSE_AMPLITUDE if value.pulse_amplitude_index is not None else 0)
    )
    flags = _check_flags(value.flags, derived, 0x1F)
    out = bytearray((flags,))
    for p in (value.normal, value.fast, value.slow):
        if p is not None:
            out += sfloat(p.spo2) + sfloat(p.pulse_rate)
    if value.measurement_status is not None:
        out += uint(value.measurement_status.raw, 2, "measurement status")
    if value.device_sensor_status is not None:
        out += uint(value.device_sensor_status.raw, 3, "device and sensor status")
    if value.pulse_amplitude_index is not None:
        out += sfloat(value.pulse_amplitude_index)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class PlxFeatures:
    """PLX Features 0x2A60: supported features and, when flagged, the supported status bits."""

    raw: int
    measurement_status_support: MeasurementStatus | None = None
    device_sensor_status_support: DeviceSensorStatus | None = None

    @property
    def features(self) -> tuple[PlxFeature, ...]:
        """The named supported features."""
        return tuple(PlxFeature(n) for n in bit_names(self.raw, _FEATURE_BITS))

    @property
    def reserved_bits(self) -> int:
        """Bits 8-15 as received."""
        return self.raw & 0xFF00

    @classmethod
    def of(
        cls,
        *features: PlxFeature,
        measurement_status_support: MeasurementStatus | None = None,
        device_sensor_status_support: DeviceSensorStatus | None = None,
    ) -> PlxFeatures:
        """Build the value from named features; the support fields set bits 0 and 1."""
        raw = bits_of(features, _FEATURE_BITS)
        if measurement_status_support is not None:
            raw |= 0x01
        if device_sensor_status_support is not None:
            raw |= 0x02
        return cls(raw, measurement_status_support, device_sensor_status_support)


def decode_plx_features(data: bytes, model: str | None = None) -> PlxFeatures:
    """Decode a PLX Features 0x2A60 payload (length must match the feature bits 0 and 1)."""
    profile = PROFILE_PLX_FEATURES
    require_min_length(profile, data, 2, "supported features")
    raw = int.from_bytes(data[0:2], "little")
    has_meas = bool(raw & 0x01)
    has_dev = bool(raw & 0x02)
    parts = [
        ("supported features", 2),
        ("measurement status support", 2 * has_meas),
        ("device and sensor status support", 3 * has_dev),
    ]
    require_length(profile, data, parts, flags=raw)
    cur = Cursor(profile, data)
    cur.u16("supported features")
    value = PlxFeatures(
        raw=raw,
        measurement_status_support=(
            MeasurementStatus(cur.u16("measurement status support")) if has_meas else None
        ),
        device_sensor_status_support=(
            DeviceSensorStatus(cur.u24("device and sensor status support")) if has_dev else None
        ),
    )
    cur.end()
    return value


def encode_plx_features(value: PlxFeatures) -> bytes:
    """Encode a PLX Features 0x2A60 payload."""
    if bool(value.raw & 0x01) != (value.measurement_status_support is not None):
        raise ValueError("feature bit 0 and measurement_status_support disagree")
    if bool(value.raw & 0x02) != (value.device_sensor_status_support is not None):
        raise ValueError("feature bit 1 and device_sensor_status_support disagree")
    out = uint(value.raw, 2, "supported features")
    if value.measurement_status_support is not None:
        out += uint(value.measurement_status_support.raw, 2, "measurement status support")
    if value.device_sensor_status_support is not None:
        out += uint(value.device_sensor_status_support.raw, 3, "device and sensor status support")
    return out
