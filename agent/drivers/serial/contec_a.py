"""Contec CMS50D+/E/F, older firmware ("protocol A"): 19200 8O1, pure codecs (no I/O).

Facts from ``shared/reference/serial-and-cpap.md`` sections 1.2 and 1.3 (atbrask/CMS50Dplus,
OSCAR ``cms50_loader.cpp``, MediPi ``CMS50DPlusMeasurement.java``, jedimark on cpaptalk).

Live data streams by itself after power-on, 5-byte frames at 60 Hz; byte 0 has bit 7 set,
bytes 1..4 have it clear (that is the whole framing)::

    b0  1 | beep | SpO2 dropping | finger out* | signal strength (4 bits)
    b1  0 | pleth (7 bits)
    b2  0 | pulse bit 7 | searching | probe error | bar graph (4 bits)
    b3  0 | pulse bits 6..0
    b4  0 | SpO2 (7 bits)

\\*byte 0 bit 4 is "finger out" in atbrask and MediPi, "searching too long" in a translated
OEM manual (single source); it is named ``finger-out`` here. SpO2 0 or above 100 and pulse 0
or 255 are "no reading" (absent), never numbers.

Stored download: the host sends ``F5 F5``; the device may send a few live bytes, then the
header trio ``F2 hh mm`` three times (``F2 80 00`` from the CMS50D+, which has no clock), a
3-byte length (``(((a&7F)<<14)|((b&7F)<<7)|c) + 1`` bytes, 3 per second of recording), then
one trio per second ``[F0|pulse bit 7, 80|pulse bits 6..0, SpO2]``; ``F0 80 00`` is padding
("no reading"). ``F6 F6 F6`` returns the device to live mode. There is no end marker: the
host stops after the announced length or after silence.
"""

from __future__ import annotations

from dataclasses import dataclass
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

PROFILE: Final = "serial.contec-a"
BAUD: Final = 19200
"""19200 baud, 8 data bits, odd parity, 1 stop bit, no flow control."""
FRAMES_PER_SECOND: Final = 60

CMD_DOWNLOAD: Final = b"\xf5\xf5"
CMD_LIVE: Final = b"\xf6\xf6\xf6"

_B0_FLAGS: Final = ((0x40, "pulse-beep"), (0x20, "spo2-dropping"), (0x10, "finger-out"))
_B2_FLAGS: Final = ((0x20, "searching"), (0x10, "probe-error"))


@dataclass(frozen=True, slots=True)
class ContecALive:
    """One 5-byte live frame."""

    signal_strength: int
    pleth: int
    bar_graph: int
    pulse_rate: Value
    spo2: Value
    flags: tuple[str, ...]
    raw: bytes

    def observations(self) -> tuple[Observation, ...]:
        """SpO2 and pulse rate (absent when the device has no reading)."""
        return oximetry(self.spo2, self.pulse_rate)

    def status_names(self) -> tuple[str, ...]:
        """Named flags of bytes 0 and 2."""
        return self.flags


@dataclass(frozen=True, slots=True)
class ContecAHeader:
    """A stored-download header trio ``F2 hh mm``: the recording's start time of day."""

    JSON_EXTRAS: ClassVar[tuple[str, ...]] = ("has_clock",)

    hour: int
    minute: int
    raw: bytes

    @property
    def has_clock(self) -> bool:
        """False for ``F2 80 00`` (00:00, the CMS50D+ without a clock)."""
        return (self.hour, self.minute) != (0, 0)


@dataclass(frozen=True, slots=True)
class ContecALength:
    """The stored-download length announcement."""

    JSON_EXTRAS: ClassVar[tuple[str, ...]] = ("samples",)

    length_bytes: int
    raw: bytes

    @property
    def samples(self) -> int:
        """Seconds of recording announced (3 bytes per second)."""
        return self.length_bytes // 3


@dataclass(frozen=True, slots=True)
class ContecASample:
    """One stored second ``[F0|p7, 80|p6..0, SpO2]``; padding ``F0 80 00`` is all absent."""

    pulse_rate: Value
    spo2: Value
    raw: bytes

    def observations(self) -> tuple[Observation, ...]:
        """SpO2 and pulse rate (absent for padding or "no reading")."""
        return oximetry(self.spo2, self.pulse_rate)

    def status_names(self) -> tuple[str, ...]:
        """``no-reading`` when the second holds nothing."""
        if self.spo2 is Absent.MISSING and self.pulse_rate is Absent.MISSING:
            return ("no-reading",)
        return ()


ContecAItem = ContecALive | ContecAHeader | ContecALength | ContecASample


def _pulse(raw: int) -> Value:
    return value_or_missing(raw, (0, 255), high=254)


def _spo2(raw: int) -> Value:
    return value_or_missing(raw, (0,), high=100)


def decode_live(frame: bytes) -> ContecALive:
    """Decode one 5-byte live frame; :class:`CodecError` if it is not one."""
    data = bytes(frame)
    if len(data) != 5:
        raise CodecError(PROFILE, f"a live frame is 5 bytes, got {len(data)}", data)
    if not data[0] & 0x80 or any(b & 0x80 for b in data[1:]):
        raise CodecError(PROFILE, "framing: byte 0 must have bit 7 set, bytes 1-4 clear", data)
    b0, b1, b2, b3, b4 = data
    return ContecALive(
        signal_strength=b0 & 0x0F,
        pleth=b1 & 0x7F,
        bar_graph=b2 & 0x0F,
        pulse_rate=_pulse(((b2 & 0x40) << 1) | (b3 & 0x7F)),
        spo2=_spo2(b4 & 0x7F),
        flags=bit_flags(b0, _B0_FLAGS) + bit_flags(b2, _B2_FLAGS),
        raw=data,
    )


def encode_live(
    spo2: int,
    pulse: int,
    *,
    pleth: int = 64,
    signal: int = 5,
    bar: int = 7,
    flags: tuple[str, ...] = (),
) -> bytes:
    """A live frame (for simulators and tests); :class:`ValueError` for unsendable values."""
    if not (0 <= spo2 <= 127 and 0 <= pulse <= 255 and 0 <= pleth <= 127):
        raise ValueError("value out of range for a protocol A frame")
    if not (0 <= signal <= 15 and 0 <= bar <= 15):
        raise ValueError("signal strength and bar graph are 4 bits")
    names = set(flags)
    unknown = names - {n for _, n in _B0_FLAGS + _B2_FLAGS}
    if unknown:
        raise ValueError(f"unknown flags {sorted(unknown)}")
    b0 = 0x80 | signal | sum(m for m, n in _B0_FLAGS if n in names)
    b2 = bar | ((pulse & 0x80) >> 1) | sum(m for m, n in _B2_FLAGS if n in names)
    return bytes([b0, pleth, b2, pulse & 0x7F, spo2])


def encode_header(hour: int, minute: int) -> bytes:
    """One header trio (``F2 80 00`` for a device without a clock)."""
    if not (0 <= hour < 24 and 0 <= minute < 60):
        raise ValueError("hour or minute out of range")
    return bytes([0xF2, 0x80 | hour, minute])


def encode_length(samples: int) -> bytes:
    """The length announcement for ``samples`` seconds."""
    n = samples * 3 - 1
    if not 0 <= n < 1 << 21:
        raise ValueError("too many samples for the length field")
    return bytes([0x80 | (n >> 14) & 0x7F, 0x80 | (n >> 7) & 0x7F, n & 0x7F])


def encode_sample(spo2: int | None, pulse: int | None) -> bytes:
    """One stored trio; ``None`` for either gives padding ``F0 80 00``."""
    if spo2 is None or pulse is None:
        return b"\xf0\x80\x00"
    if not (0 <= spo2 <= 127 and 0 <= pulse <= 255):
        raise ValueError("value out of range for a stored trio")
    return bytes([0xF0 | pulse >> 7, 0x80 | pulse & 0x7F, spo2])


class LiveDecoder(StreamDecoder[ContecALive]):
    """Live 5-byte frames; syncs on a bit-7 byte followed by four bytes without bit 7."""

    profile = PROFILE

    def _parse(self) -> bool:
        buf = self._buf
        if not buf[0] & 0x80:
            return self._reject(1, "no frame start (bit 7 clear)")
        for i in range(1, min(5, len(buf))):
            if buf[i] & 0x80:
                return self._reject(i, "truncated frame")
        if len(buf) < 5:
            return False
        return self._frame(decode_live(bytes(buf[:5])), 5)


class StoredDecoder(StreamDecoder[ContecAItem]):
    """The answer to ``F5 F5``: live leftovers, header trios, the length, then data trios.

    Live frames before the first header are decoded as live frames (the transport ignores
    them), so this decoder also reads a plain live stream. :attr:`expected_samples` is set
    once the length arrived; :attr:`samples` counts the data trios decoded so far.
    """

    profile = PROFILE

    def __init__(self) -> None:
        super().__init__()
        self.headers = 0
        self.expected_samples: int | None = None
        self.samples = 0

    def _parse(self) -> bool:
        buf = self._buf
        if len(buf) < 2 and buf[0] == 0xF2:
            return False
        if self.headers == 0 and not (buf[0] == 0xF2 and buf[1] & 0x80):
            if buf[0] & 0x80:
                # a live frame left over from before the mode switch
                for i in range(1, min(5, len(buf))):
                    if buf[i] & 0x80:
                        return self._reject(i, "truncated frame")
                if len(buf) < 5:
                    return False
                return self._frame(decode_live(bytes(buf[:5])), 5)
            return self._reject(1, "no download header yet")
        if len(buf) < 3:
            return False
        b0, b1, b2 = buf[0], buf[1], buf[2]
        if b0 == 0xF2 and b1 & 0x80 and self.samples == 0:
            hour, minute = b1 & 0x7F, b2 & 0x7F  # F2 80 00: no clock
            if hour > 23 or minute > 59:
                return self._reject(1, "header time out of range")
            self.headers += 1
            return self._frame(ContecAHeader(hour, minute, bytes(buf[:3])), 3)
        if self.expected_samples is None and self.samples == 0 and b0 & 0xF0 != 0xF0:
            if not (b0 & 0x80 and b1 & 0x80 and not b2 & 0x80):
                return self._reject(1, "bad length field")
            n = ((b0 & 0x7F) << 14 | (b1 & 0x7F) << 7 | b2) + 1
            self.expected_samples = n // 3
            return self._frame(ContecALength(n, bytes(buf[:3])), 3)
        if b0 in (0xF0, 0xF1) and b1 & 0x80 and not b2 & 0x80:
            self.samples += 1
            pulse = (b0 & 1) << 7 | (b1 & 0x7F)
            sample = ContecASample(_pulse(pulse), _spo2(b2), bytes(buf[:3]))
            return self._frame(sample, 3)
        return self._reject(1, "not a stored trio")

    @property
    def complete(self) -> bool:
        """Whether every announced second has arrived."""
        return self.expected_samples is not None and self.samples >= self.expected_samples


def decode_capture(data: bytes) -> list[ContecAItem | Garbage]:
    """Decode a capture for ``dho-agent decode``: live frames, or a stored download."""
    return decode_all(StoredDecoder(), bytes(data))
