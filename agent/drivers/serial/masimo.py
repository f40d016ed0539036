"""Masimo Rad-8 / Radical-5/7 / Rad-87 "ASCII 1" serial lines (9600 8N1), pure codec.

Facts from ``shared/reference/serial-and-cpap.md`` section 2.5 (MD PnP/OpenICE
``poxrad_discrete.h``, remkolems/masimo-datacapture, the Rad-87 manual). One line a second::

    09/15/10 15:10:29 SPO2=097% BPM=064 PI=11.82% ALARM=20 EXC=800

``MM/DD/YY HH:MM:SS`` then ``KEY=VALUE`` fields, parsed by key, never by position (the Rad-8
adds ``SN=``, ``SPCO=``, ``SPMET=``, ``DESAT=``, ``PIDELTA=``). Dashes (``---``, ``--.-``)
mean the value is unavailable: it becomes absent, never a number. ``ALARM`` (hex) and ``EXC``
(hex) bits become named status flags; bits without a published meaning are named by value
(``exc-0x000200``). A Rad-8 must be switched to ASCII 1 (it ships in ASCII 2, printer mode).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Final

from agent.drivers.serial._stream import Garbage, Value, bit_flags, decode_all, oximetry
from agent.drivers.serial.nonin import LineDecoder
from agent.errors import CodecError
from agent.model import Absent, Observation

PROFILE: Final = "serial.masimo"
BAUD: Final = 9600

_LINE: Final = re.compile(
    rb"(?P<date>\d\d/\d\d/\d\d) (?P<time>\d\d:\d\d:\d\d)(?P<fields>(?: +[A-Z][A-Z0-9]*=\S*)+) *$"
)
_FIELD: Final = re.compile(rb"([A-Z][A-Z0-9]*)=(\S*)")

ALARM_BITS: Final = (
    (0x0001, "spo2-high-alarm"),
    (0x0002, "spo2-low-alarm"),
    (0x0004, "pulse-rate-high-alarm"),
    (0x0008, "pulse-rate-low-alarm"),
    (0x0010, "alarm-active"),
    (0x0020, "alarm-silenced"),
    (0x0040, "low-battery"),
    (0x0100, "spco-high-alarm"),
    (0x0200, "spco-low-alarm"),
    (0x0400, "spmet-high-alarm"),
    (0x0800, "spmet-low-alarm"),
    (0x1000, "desat-index-alarm"),
    (0x2000, "pi-delta-alarm"),
)
EXC_BITS: Final = (
    (0x000001, "no-sensor"),
    (0x000002, "defective-sensor"),
    (0x000004, "low-perfusion"),
    (0x000008, "pulse-search"),
    (0x000010, "interference"),
    (0x000020, "sensor-off"),
    (0x000040, "ambient-light"),
    (0x000080, "unrecognized-sensor"),
    (0x000100, "incompatible-sensor"),
    (0x000400, "low-signal-iq"),
    (0x000800, "masimo-set"),
    (0x001000, "no-cable"),
    (0x040000, "sensor-life-expired"),
)


def _named(
    value: int, table: tuple[tuple[int, str], ...], prefix: str, width: int
) -> tuple[str, ...]:
    known = 0
    for mask, _ in table:
        known |= mask
    extra = tuple(
        f"{prefix}-0x{1 << i:0{width}x}"
        for i in range(value.bit_length())
        if value & ~known & 1 << i
    )
    return bit_flags(value, table) + extra


@dataclass(frozen=True, slots=True)
class MasimoLine:
    """One ASCII 1 line."""

    device_time: dt.datetime | None
    """The monitor's clock (local time, no zone), ``None`` if the date is impossible."""
    spo2: Value
    pulse_rate: Value
    perfusion_index: Value | None
    """PI in %, ``None`` when the line has no PI field."""
    spco: Value | None
    spmet: Value | None
    alarm: int
    exception: int
    fields: tuple[tuple[str, str], ...]
    """Every ``KEY=VALUE`` as sent (serial number included: never logged)."""
    raw: bytes

    def observations(self) -> tuple[Observation, ...]:
        """SpO2, pulse rate and (when sent) perfusion index; dashes are absent."""
        return oximetry(self.spo2, self.pulse_rate, self.perfusion_index)

    def status_names(self) -> tuple[str, ...]:
        """Named ALARM and EXC bits."""
        return _named(self.alarm, ALARM_BITS, "alarm", 4) + _named(
            self.exception, EXC_BITS, "exc", 6
        )


def _number(text: str, high: int, what: str, raw: bytes) -> Value:
    text = text.rstrip("%")
    if not text or set(text) <= {"-", ".", "+"}:
        return Absent.MISSING
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise CodecError(PROFILE, f"{what} is not a number or dashes", raw) from None
    if not value.is_finite() or not 0 <= value <= high:
        raise CodecError(PROFILE, f"{what} is outside 0..{high}", raw)
    return int(value) if value == value.to_integral_value() and "." not in text else value


def _hex(text: str, what: str, raw: bytes) -> int:
    if not text or set(text) <= {"-"}:
        return 0
    try:
        return int(text, 16)
    except ValueError:
        raise CodecError(PROFILE, f"{what} is not hexadecimal", raw) from None


def _decode(m: re.Match[bytes], raw: bytes) -> MasimoLine:
    fields = tuple((k.decode(), v.decode("latin-1")) for k, v in _FIELD.findall(m["fields"]))
    values = dict(fields)
    if "SPO2" not in values and "BPM" not in values:
        raise CodecError(PROFILE, "the line has neither SPO2 nor BPM", raw)
    try:
        when: dt.datetime | None = dt.datetime.strptime(
            (m["date"] + b" " + m["time"]).decode(), "%m/%d/%y %H:%M:%S"
        )
    except ValueError:
        when = None
    return MasimoLine(
        device_time=when,
        spo2=_number(values.get("SPO2", "---"), 100, "SPO2", raw),
        pulse_rate=_number(values.get("BPM", "---"), 400, "BPM", raw),
        perfusion_index=_number(values["PI"], 100, "PI", raw) if "PI" in values else None,
        spco=_number(values["SPCO"], 100, "SPCO", raw) if "SPCO" in values else None,
        spmet=_number(values["SPMET"], 100, "SPMET", raw) if "SPMET" in values else None,
        alarm=_hex(values.get("ALARM", ""), "ALARM", raw),
        exception=_hex(values.get("EXC", ""), "EXC", raw),
        fields=fields,
        raw=raw,
    )


def decode_line(line: bytes) -> MasimoLine:
    """Decode one ASCII 1 line (with or without CR LF)."""
    raw = bytes(line)
    m = _LINE.fullmatch(raw.rstrip(b"\r\n").strip())
    if m is None:
        raise CodecError(PROFILE, "not an ASCII 1 line (date, time, KEY=VALUE fields)", raw)
    return _decode(m, raw)


class MasimoDecoder(LineDecoder):
    """ASCII 1 lines from a stream."""

    profile = PROFILE
    pattern = _LINE

    def _decode(self, m: re.Match[bytes], line: bytes) -> object:
        return _decode(m, line)


def encode_line(
    when: dt.datetime,
    spo2: int | None,
    bpm: int | None,
    *,
    pi: str | None = "05.40",
    alarm: int = 0,
    exc: int = 0,
    serial: str | None = None,
) -> bytes:
    """An ASCII 1 line (Rad-8 style when ``serial`` is given), CR LF terminated."""
    s = "---" if spo2 is None else f"{spo2:03d}"
    b = "---" if bpm is None else f"{bpm:03d}"
    parts = [when.strftime("%m/%d/%y %H:%M:%S")]
    if serial is not None:
        parts.append(f"SN={serial}")
    parts += [f"SPO2={s}%", f"BPM={b}"]
    if pi is not None:
        parts.append(f"PI={pi}%")
    if serial is not None:
        parts += ["SPCO=--.-%", "SPMET=--.-%", "DESAT=--", "PIDELTA=+--"]
    parts += [f"ALARM={alarm:04X}", f"EXC={exc:06X}"]
    return (" ".join(parts) + "\r\n").encode()


def decode_capture(data: bytes) -> list[object]:
    """Decode a capture of ASCII 1 lines for ``dho-agent decode``."""
    out: list[object] = [*decode_all(MasimoDecoder(), bytes(data))]
    return out


__all__ = ["Garbage", "MasimoDecoder", "MasimoLine", "decode_capture", "decode_line", "encode_line"]
