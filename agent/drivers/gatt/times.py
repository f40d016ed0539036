"""Date Time 0x2A08, Current Time 0x2A2B and Local Time Information 0x2A0F, both directions.

Layouts from ``shared/reference/ble-gatt.md`` section 1.3 (little-endian)::

    Date Time 0x2A08       uint16 year, uint8 month, day, hours, minutes, seconds   (7 bytes)
                           year 0 = unknown (else 1582..9999), month 0 / day 0 = unknown
    Current Time 0x2A2B    Date Time + uint8 day_of_week (0 unknown, 1 Monday .. 7 Sunday)
                           + uint8 fractions256 + uint8 adjust_reason                (10 bytes)
                           adjust bits: 0 manual, 1 external reference, 2 time zone, 3 DST
    Local Time Info 0x2A0F sint8 time_zone (15-minute steps, -48..+56, -128 unknown)
                           + uint8 dst_offset (0, 2, 4, 8, 255 unknown)               (2 bytes)

Device times are local wall-clock times without a zone; :meth:`DateTime.to_datetime` returns a
naive :class:`datetime.datetime`, or ``None`` when the device left a date field unknown.
Fields out of their range, or a date that is not in the calendar, are a
:class:`~agent.errors.CodecError`: a clock value that cannot be true is not guessed at.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from agent.drivers.gatt._wire import Cursor, bit_names, bits_of, fail, require_length, uint
from agent.errors import CodecError

PROFILE_DATE_TIME: Final = "ble.date-time"
PROFILE_CURRENT_TIME: Final = "ble.current-time"
PROFILE_LOCAL_TIME: Final = "ble.local-time"

DATE_TIME_LEN: Final = 7
CURRENT_TIME_LEN: Final = 10
LOCAL_TIME_LEN: Final = 2

YEAR_UNKNOWN: Final = 0
YEAR_MIN: Final = 1582
YEAR_MAX: Final = 9999


@dataclass(frozen=True, slots=True)
class DateTime:
    """A Date Time value as sent: the raw fields, with 0 meaning unknown for the date."""

    year: int
    month: int
    day: int
    hours: int
    minutes: int
    seconds: int

    def problem(self) -> str | None:
        """Why these fields are not a valid Date Time, or ``None`` when they are."""
        if self.year != YEAR_UNKNOWN and not YEAR_MIN <= self.year <= YEAR_MAX:
            return f"year is neither 0 (unknown) nor in {YEAR_MIN}..{YEAR_MAX}"
        checks = (
            ("month", self.month, 0, 12),
            ("day", self.day, 0, 31),
            ("hours", self.hours, 0, 23),
            ("minutes", self.minutes, 0, 59),
            ("seconds", self.seconds, 0, 59),
        )
        for name, value, low, high in checks:
            if not low <= value <= high:
                return f"{name} is outside {low}..{high}"
        if self.date_known:
            try:
                dt.date(self.year, self.month, self.day)
            except ValueError:
                return "year, month and day are not a calendar date"
        return None

    @property
    def date_known(self) -> bool:
        """True when year, month and day are all given (none is 0)."""
        return self.year != YEAR_UNKNOWN and self.month != 0 and self.day != 0

    def to_datetime(self) -> dt.datetime | None:
        """The naive local time, or ``None`` when a date field is unknown (or invalid)."""
        if not self.date_known or self.problem() is not None:
            return None
        return dt.datetime(self.year, self.month, self.day, self.hours, self.minutes, self.seconds)

    @classmethod
    def from_datetime(cls, when: dt.datetime) -> DateTime:
        """The Date Time fields of a wall-clock time (seconds truncated, zone ignored)."""
        return cls(when.year, when.month, when.day, when.hour, when.minute, when.second)


class AdjustReason(StrEnum):
    """Current Time "adjust reason" bits (ble-gatt.md section 1.3)."""

    MANUAL = "manual-time-update"
    EXTERNAL_REFERENCE = "external-reference-time-update"
    TIME_ZONE = "change-of-time-zone"
    DST = "change-of-dst"


_ADJUST_BITS: Final = (
    (0, AdjustReason.MANUAL),
    (1, AdjustReason.EXTERNAL_REFERENCE),
    (2, AdjustReason.TIME_ZONE),
    (3, AdjustReason.DST),
)


@dataclass(frozen=True, slots=True)
class CurrentTime:
    """A Current Time value: Date Time, day of week, 1/256 s fractions, adjust-reason bits."""

    date_time: DateTime
    day_of_week: int = 0
    fractions256: int = 0
    adjust_reason: int = 0

    @property
    def adjust_reasons(self) -> tuple[AdjustReason, ...]:
        """The named adjust-reason bits that are set."""
        return tuple(AdjustReason(n) for n in bit_names(self.adjust_reason, _ADJUST_BITS))

    def to_datetime(self) -> dt.datetime | None:
        """The naive local time including the fraction, or ``None`` when the date is unknown."""
        base = self.date_time.to_datetime()
        if base is None:
            return None
        return base.replace(microsecond=self.fractions256 * 1_000_000 // 256)

    @classmethod
    def from_datetime(cls, when: dt.datetime, adjust: tuple[AdjustReason, ...] = ()) -> CurrentTime:
        """The Current Time for a wall-clock time, as a central writes it to a device."""
        return cls(
            date_time=DateTime.from_datetime(when),
            day_of_week=when.isoweekday(),
            fractions256=when.microsecond * 256 // 1_000_000,
            adjust_reason=bits_of(adjust, _ADJUST_BITS),
        )


TIME_ZONE_UNKNOWN: Final = -128
DST_UNKNOWN: Final = 255
_DST_OFFSETS: Final = {0: 0, 2: 30, 4: 60, 8: 120}  # code -> minutes


@dataclass(frozen=True, slots=True)
class LocalTimeInformation:
    """Local Time Information: standard offset in 15-minute steps and the DST code."""

    time_zone: int
    dst_offset: int

    @property
    def utc_offset_minutes(self) -> int | None:
        """Standard offset plus DST in minutes, or ``None`` when either is unknown."""
        if self.time_zone == TIME_ZONE_UNKNOWN or self.dst_offset == DST_UNKNOWN:
            return None
        return self.time_zone * 15 + _DST_OFFSETS[self.dst_offset]


def read_date_time(cur: Cursor, what: str = "date time") -> DateTime:
    """Read and validate a 7-byte Date Time from a payload being decoded."""
    raw = cur.take(DATE_TIME_LEN, what)
    value = DateTime(
        year=int.from_bytes(raw[0:2], "little"),
        month=raw[2],
        day=raw[3],
        hours=raw[4],
        minutes=raw[5],
        seconds=raw[6],
    )
    problem = value.problem()
    if problem is not None:
        raise fail(cur.profile, cur.data, f"{what}: {problem}")
    return value


def date_time_bytes(value: DateTime) -> bytes:
    """The 7 wire bytes of a Date Time; invalid fields are a :class:`ValueError`."""
    problem = value.problem()
    if problem is not None:
        raise ValueError(f"invalid Date Time: {problem}")
    return uint(value.year, 2, "year") + bytes(
        (value.month, value.day, value.hours, value.minutes, value.seconds)
    )


def decode_date_time(data: bytes, model: str | None = None) -> DateTime:
    """Decode a Date Time 0x2A08 payload (exactly 7 bytes). ``model`` is not used."""
    require_length(PROFILE_DATE_TIME, data, [("date time", DATE_TIME_LEN)])
    cur = Cursor(PROFILE_DATE_TIME, data)
    value = read_date_time(cur)
    cur.end()
    return value


def encode_date_time(value: DateTime | dt.datetime) -> bytes:
    """Encode a Date Time 0x2A08 payload, e.g. the one an A&D cuff expects on connect."""
    if isinstance(value, dt.datetime):
        value = DateTime.from_datetime(value)
    return date_time_bytes(value)


def decode_current_time(data: bytes, model: str | None = None) -> CurrentTime:
    """Decode a Current Time 0x2A2B payload (exactly 10 bytes). ``model`` is not used."""
    require_length(
        PROFILE_CURRENT_TIME,
        data,
        [("date time", 7), ("day of week", 1), ("fractions256", 1), ("adjust reason", 1)],
    )
    cur = Cursor(PROFILE_CURRENT_TIME, data)
    date_time = read_date_time(cur)
    day_of_week = cur.u8("day of week")
    if day_of_week > 7:
        raise fail(PROFILE_CURRENT_TIME, data, f"day of week {day_of_week} is outside 0..7")
    value = CurrentTime(
        date_time=date_time,
        day_of_week=day_of_week,
        fractions256=cur.u8("fractions256"),
        adjust_reason=cur.u8("adjust reason"),
    )
    cur.end()
    return value


def encode_current_time(value: CurrentTime | dt.datetime) -> bytes:
    """Encode a Current Time 0x2A2B payload (what an Omron cuff expects written back)."""
    if isinstance(value, dt.datetime):
        value = CurrentTime.from_datetime(value)
    if not 0 <= value.day_of_week <= 7:
        raise ValueError(f"day of week {value.day_of_week} is outside 0..7")
    return (
        date_time_bytes(value.date_time)
        + uint(value.day_of_week, 1, "day of week")
        + uint(value.fractions256, 1, "fractions256")
        + uint(value.adjust_reason, 1, "adjust reason")
    )


def _local_time_problem(value: LocalTimeInformation) -> str | None:
    if value.time_zone != TIME_ZONE_UNKNOWN and not -48 <= value.time_zone <= 56:
        return f"time zone {value.time_zone} is neither -128 (unknown) nor in -48..56"
    if value.dst_offset != DST_UNKNOWN and value.dst_offset not in _DST_OFFSETS:
        return f"DST offset code {value.dst_offset} is not one of 0, 2, 4, 8, 255"
    return None


def decode_local_time(data: bytes, model: str | None = None) -> LocalTimeInformation:
    """Decode a Local Time Information 0x2A0F payload (exactly 2 bytes)."""
    require_length(PROFILE_LOCAL_TIME, data, [("time zone", 1), ("dst offset", 1)])
    cur = Cursor(PROFILE_LOCAL_TIME, data)
    value = LocalTimeInformation(time_zone=cur.s8("time zone"), dst_offset=cur.u8("dst offset"))
    problem = _local_time_problem(value)
    if problem is not None:
        raise CodecError(PROFILE_LOCAL_TIME, problem, bytes(data))
    return value


def encode_local_time(value: LocalTimeInformation) -> bytes:
    """Encode a Local Time Information 0x2A0F payload."""
    problem = _local_time_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value.time_zone.to_bytes(1, "little", signed=True) + bytes((value.dst_offset,))
