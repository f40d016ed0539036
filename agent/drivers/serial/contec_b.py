"""Contec CMS50D+ v4.6 / CMS50E/F/I "protocol V7.0" ("protocol B"): 115200 8N1, pure codecs.

Facts from ``shared/reference/serial-and-cpap.md`` sections 1.4 to 1.7 (OSCAR
``cms50f37_loader.cpp``, kaivol/pulox ``contec-protocol``, tobac/cms50ew, MarkMLl's raw USB
captures, headrotor/contec_data).

Every packet is ``<type> <high byte> <data...>``: the type byte has bit 7 clear, every later
byte has it set. The high byte carries the real bit 7 of data byte ``i`` in its bit ``i``, so
``data[i] = (raw[i + 2] & 0x7F) | ((raw[1] >> i) & 1) << 7``. A byte below 0x80 therefore
always starts a packet, which is how the decoder resynchronises. The length follows from the
type (:data:`LENGTHS`). Host commands use the same encoding with type ``0x7D``
(:func:`encode_command`).

Missing values: SpO2 0 or above 100, pulse 0 or 255 are "no reading" (absent, never numbers);
a stored sample ``80 80`` (0, 0) is no reading too. A session date with year 0 comes from a
device without a clock.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Final

from agent.drivers.serial._stream import (
    Garbage,
    StreamDecoder,
    Value,
    bit_flags,
    decode_all,
    oximetry,
    value_or_missing,
)
from agent.errors import CodecError
from agent.model import Absent, Observation

PROFILE: Final = "serial.contec-b"
BAUD: Final = 115200
"""115200 baud, 8N1, no flow control (0x11 and 0x13 are packet types and data)."""
FRAMES_PER_SECOND: Final = 60

LENGTHS: Final[dict[int, int]] = {
    0x01: 9,
    0x02: 9,
    0x03: 9,
    0x04: 9,
    0x05: 9,
    0x06: 4,
    0x07: 8,
    0x08: 8,
    0x09: 6,
    0x0A: 4,
    0x0B: 4,
    0x0C: 2,
    0x0D: 3,
    0x0E: 3,
    0x0F: 8,
    0x10: 3,
    0x11: 9,
    0x12: 8,
    0x13: 9,
    0x14: 9,
    0x15: 9,
    0x7D: 9,
}
"""Packet type -> total length in bytes (type and high byte included)."""

TYPE_COMMAND: Final = 0x7D


class Command(IntEnum):
    """Host command bytes (section 1.6)."""

    GET_VERSION = 0xA0
    START_LIVE = 0xA1
    STOP_LIVE = 0xA2
    GET_SEGMENT_COUNT = 0xA3
    GET_SESSION_LENGTH = 0xA4
    GET_SESSION_START = 0xA5
    GET_SESSION_DATA = 0xA6
    STOP_SESSION_DATA = 0xA7
    GET_MODEL = 0xA8
    GET_VENDOR = 0xA9
    GET_DEVICE_ID = 0xAA
    GET_USER_INFO = 0xAB
    GET_PI_SUPPORT = 0xAC
    GET_USER_COUNT = 0xAD
    DELETE_SEGMENT = 0xAE
    KEEP_ALIVE = 0xAF
    GET_IDENTIFIERS = 0xB0
    SET_TIME = 0xB1
    SET_DATE = 0xB2
    UNKNOWN_B3 = 0xB3


class FeedbackReason(IntEnum):
    """Reason codes of the 0x0B command feedback (pulox ``CommandFeedback``)."""

    COMPLETED = 0
    SHUTDOWN_DEVICE = 1
    EXCHANGE_USERS = 2
    RECORDING = 3
    DELETE_FAILED = 4
    NOT_SUPPORTED = 5


def unpack(packet: bytes) -> tuple[int, bytes]:
    """The type and the decoded data bytes of one packet (:class:`CodecError` if malformed)."""
    data = bytes(packet)
    if len(data) < 2:
        raise CodecError(PROFILE, f"a packet is at least 2 bytes, got {len(data)}", data)
    kind, hi, body = data[0], data[1], data[2:]
    if kind & 0x80 or not hi & 0x80 or any(b < 0x80 for b in body):
        raise CodecError(PROFILE, "framing: type below 0x80, every later byte 0x80 or above", data)
    want = LENGTHS.get(kind)
    if want is None:
        raise CodecError(PROFILE, f"unknown packet type 0x{kind:02X}", data)
    if len(data) != want:
        raise CodecError(PROFILE, f"type 0x{kind:02X} is {want} bytes, got {len(data)}", data)
    return kind, bytes((b & 0x7F) | ((hi >> i) & 1) << 7 for i, b in enumerate(body))


def pack(kind: int, data: bytes) -> bytes:
    """Encode one packet (the inverse of :func:`unpack`); :class:`ValueError` if impossible."""
    want = LENGTHS.get(kind)
    if want is None or len(data) != want - 2:
        raise ValueError(f"type 0x{kind:02X} takes {None if want is None else want - 2} bytes")
    hi = 0x80 | sum(1 << i for i, b in enumerate(data) if b & 0x80)
    return bytes([kind, hi, *(b | 0x80 for b in data)])


def encode_command(command: int, *args: int) -> bytes:
    """A 9-byte host command ``7D <hi> <cmd> <args...>`` (e.g. ``7D 81 A1 80 80 80 80 80 80``)."""
    if len(args) > 6 or not all(0 <= a <= 0xFF for a in (command, *args)):
        raise ValueError("a command has at most 6 argument bytes of 0..255")
    return pack(TYPE_COMMAND, bytes([command, *args]).ljust(7, b"\x00"))


def set_date_command(day: dt.date) -> bytes:
    """``B2``: set the device date (year/100, year%100, month, day, weekday with 0 = Sunday)."""
    weekday = (day.weekday() + 1) % 7
    return encode_command(
        Command.SET_DATE, day.year // 100, day.year % 100, day.month, day.day, weekday
    )


def set_time_command(when: dt.time) -> bytes:
    """``B1``: set the device time of day."""
    return encode_command(Command.SET_TIME, when.hour, when.minute, when.second)


_D0_FLAGS: Final = (
    (0x10, "searching-too-long"),
    (0x20, "low-spo2"),
    (0x40, "pulse-beep"),
    (0x80, "finger-out"),
)


def _pulse(raw: int) -> Value:
    return value_or_missing(raw, (0, 255), high=254)


def _spo2(raw: int) -> Value:
    return value_or_missing(raw, (0,), high=100)


@dataclass(frozen=True, slots=True)
class ContecBLive:
    """A 0x01 real-time packet."""

    signal_strength: int
    pleth: int
    bar_graph: int
    pulse_rate: Value
    spo2: Value
    perfusion_raw: int | None
    """The perfusion index word as sent (its scale is unverified); ``None`` for 0xFFFF."""
    flags: tuple[str, ...]
    raw: bytes

    def observations(self) -> tuple[Observation, ...]:
        """SpO2 and pulse rate (absent when the device has no reading)."""
        return oximetry(self.spo2, self.pulse_rate)

    def status_names(self) -> tuple[str, ...]:
        """Named flags."""
        return self.flags


@dataclass(frozen=True, slots=True)
class StoredSample:
    """One stored second."""

    spo2: Value
    pulse_rate: Value
    perfusion_raw: int | None = None


@dataclass(frozen=True, slots=True)
class ContecBStored:
    """A 0x0F packet (three stored seconds) or a 0x09 packet (one second with PI)."""

    samples: tuple[StoredSample, ...]
    raw: bytes

    def observations(self) -> tuple[Observation, ...]:
        """SpO2 and pulse rate of every sample, in order."""
        return tuple(o for s in self.samples for o in oximetry(s.spo2, s.pulse_rate))

    def status_names(self) -> tuple[str, ...]:
        """``no-reading`` when a sample holds nothing."""
        empty = any(
            s.spo2 is Absent.MISSING and s.pulse_rate is Absent.MISSING for s in self.samples
        )
        return ("no-reading",) if empty else ()


@dataclass(frozen=True, slots=True)
class ContecBText:
    """Model (0x02, ``index`` = segment), vendor (0x03), device id (0x04), user (0x05)."""

    kind: str
    index: int | None
    text: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class ContecBSessionDate:
    """0x07: the start date of stored segment ``segment`` of user ``user``."""

    JSON_EXTRAS: ClassVar[tuple[str, ...]] = ("date",)

    user: int
    segment: int
    year: int
    month: int
    day: int
    raw: bytes

    @property
    def date(self) -> dt.date | None:
        """The date, or ``None`` (year 0: a device without a clock, or nonsense)."""
        if self.year == 0:
            return None
        try:
            return dt.date(self.year, self.month, self.day)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class ContecBSessionTime:
    """0x12: the start time of day of a stored segment."""

    user: int
    segment: int
    hour: int
    minute: int
    second: int
    raw: bytes

    @property
    def time(self) -> dt.time | None:
        """The time of day, or ``None`` when out of range."""
        try:
            return dt.time(self.hour, self.minute, self.second)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class ContecBSessionLength:
    """0x08: the stored segment's data length in bytes (2 per second, 4 with PI)."""

    user: int
    segment: int
    length_bytes: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class ContecBCount:
    """0x0A segment count of a user, 0x10 user count (``user`` is ``None``)."""

    user: int | None
    count: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class ContecBFeedback:
    """0x0B: the answer to a command (``reason`` 0 = completed)."""

    JSON_EXTRAS: ClassVar[tuple[str, ...]] = ("reason_name",)

    command: int
    reason: int
    raw: bytes

    @property
    def reason_name(self) -> str:
        """The reason as a name (``reason-N`` when unknown)."""
        try:
            return FeedbackReason(self.reason).name.lower().replace("_", "-")
        except ValueError:
            return f"reason-{self.reason}"


@dataclass(frozen=True, slots=True)
class ContecBCommand:
    """A host command (0x7D), e.g. from a capture of the vendor software."""

    JSON_EXTRAS: ClassVar[tuple[str, ...]] = ("command_name",)

    command: int
    args: bytes
    raw: bytes

    @property
    def command_name(self) -> str:
        """The command as a name (``cmd-0xNN`` when unknown)."""
        try:
            return Command(self.command).name.lower().replace("_", "-")
        except ValueError:
            return f"cmd-0x{self.command:02x}"


@dataclass(frozen=True, slots=True)
class ContecBPacket:
    """Any other packet: version 0x06 (``data`` = 2 bytes), free feedback 0x0C, disconnect
    0x0D, PI support 0x0E, notices 0x11/0x13/0x14/0x15 (meanings partly unverified)."""

    type: int
    data: bytes
    raw: bytes


ContecBItem = (
    ContecBLive
    | ContecBStored
    | ContecBText
    | ContecBSessionDate
    | ContecBSessionTime
    | ContecBSessionLength
    | ContecBCount
    | ContecBFeedback
    | ContecBCommand
    | ContecBPacket
)

_TEXT_KINDS: Final = {0x02: "model", 0x03: "vendor", 0x04: "device-id", 0x05: "user"}


def _text(data: bytes) -> str:
    return data.decode("latin-1").rstrip(" \x00")


def decode_packet(packet: bytes) -> ContecBItem:
    """Decode one whole packet; :class:`CodecError` if it is malformed."""
    raw = bytes(packet)
    kind, d = unpack(raw)
    if kind == 0x01:
        pi = d[5] | d[6] << 8
        return ContecBLive(
            signal_strength=d[0] & 0x0F,
            pleth=d[1] & 0x7F,
            bar_graph=d[2] & 0x0F,
            pulse_rate=_pulse(d[3]),
            spo2=_spo2(d[4]),
            perfusion_raw=None if pi == 0xFFFF else pi,
            flags=bit_flags(d[0], _D0_FLAGS)
            + bit_flags(d[1], ((0x80, "searching-pulse"),))
            + bit_flags(d[2], ((0x10, "pi-invalid"),)),
            raw=raw,
        )
    if kind == 0x0F:
        samples = tuple(StoredSample(_spo2(d[i]), _pulse(d[i + 1])) for i in (0, 2, 4))
        return ContecBStored(samples, raw)
    if kind == 0x09:
        pi = d[2] | d[3] << 8
        sample = StoredSample(_spo2(d[0]), _pulse(d[1]), None if pi == 0xFFFF else pi)
        return ContecBStored((sample,), raw)
    if kind in _TEXT_KINDS:
        if kind in (0x02, 0x05):
            return ContecBText(_TEXT_KINDS[kind], d[0], _text(d[1:]), raw)
        return ContecBText(_TEXT_KINDS[kind], None, _text(d), raw)
    if kind == 0x07:
        return ContecBSessionDate(d[0], d[1], d[2] * 100 + d[3], d[4], d[5], raw)
    if kind == 0x12:
        return ContecBSessionTime(d[0], d[1], d[2], d[3], d[4], raw)
    if kind == 0x08:
        return ContecBSessionLength(d[0], d[1], int.from_bytes(d[2:6], "little"), raw)
    if kind == 0x0A:
        return ContecBCount(d[0], d[1], raw)
    if kind == 0x10:
        return ContecBCount(None, d[0], raw)
    if kind == 0x0B:
        return ContecBFeedback(d[0], d[1], raw)
    if kind == TYPE_COMMAND:
        return ContecBCommand(d[0], d[1:], raw)
    return ContecBPacket(kind, d, raw)


class PacketDecoder(StreamDecoder[ContecBItem]):
    """Every protocol-B packet, live or stored; resyncs on the next byte below 0x80."""

    profile = PROFILE

    def _parse(self) -> bool:
        buf = self._buf
        kind = buf[0]
        if kind & 0x80:
            return self._reject(1, "no packet start (byte 0x80 or above)")
        want = LENGTHS.get(kind)
        if want is None:
            return self._reject(1, "unknown packet type")
        for i in range(1, min(want, len(buf))):
            if buf[i] < 0x80:
                return self._reject(i, "truncated packet")
        if len(buf) < want:
            return False
        return self._frame(decode_packet(bytes(buf[:want])), want)


def decode_capture(data: bytes) -> list[ContecBItem | Garbage]:
    """Decode a capture (device or host bytes) for ``dho-agent decode``."""
    return decode_all(PacketDecoder(), bytes(data))


def encode_live(
    spo2: int,
    pulse: int,
    *,
    pleth: int = 64,
    signal: int = 5,
    bar: int = 7,
    flags: tuple[str, ...] = (),
    perfusion_raw: int | None = None,
) -> bytes:
    """A 0x01 packet (for simulators and tests)."""
    if not (0 <= spo2 <= 255 and 0 <= pulse <= 255 and 0 <= pleth <= 127):
        raise ValueError("value out of range for a live packet")
    names = set(flags)
    d0 = (signal & 0x0F) | sum(m for m, n in _D0_FLAGS if n in names)
    d1 = pleth | (0x80 if "searching-pulse" in names else 0)
    d2 = (bar & 0x0F) | (0x10 if "pi-invalid" in names else 0)
    pi = 0xFFFF if perfusion_raw is None else perfusion_raw
    return pack(0x01, bytes([d0, d1, d2, pulse, spo2, pi & 0xFF, pi >> 8]))


def encode_stored(samples: list[tuple[int, int]]) -> bytes:
    """A 0x0F packet of three ``(spo2, pulse)`` samples; ``(0, 0)`` is "no reading"."""
    if len(samples) != 3:
        raise ValueError("a 0x0F packet carries three samples")
    return pack(0x0F, bytes(v for pair in samples for v in pair))
