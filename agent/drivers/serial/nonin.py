"""Nonin serial oximetry: data formats 1, 2 and 8 and the bedside ASCII lines (pure codecs).

Facts from ``shared/reference/serial-and-cpap.md`` sections 2.1 to 2.4 (Nonin spec text quoted
on cpaptalk, Isansys ``NoninWristOx.java``, Fracchia ``packet.py``, pez-globo/pufferfish
``Nonin/*``, Nonin bedside manuals). All at 9600 8N1.

**DF1** (3 bytes, once a second) and **DF8** (4 bytes: DF1 plus STATUS2)::

    STATUS   1 | SNSD | OOT | LPRF | MPRF | ARTF | HR8 | HR7
    HR       0 | HR6..HR0
    SpO2     0 | SP6..SP0
    STATUS2  0 | . | SmartPoint 0x20 | . | finger off 0x08 | . | . | low battery 0x01  (DF8)

``HR = (STATUS & 3) << 7 | HR``. SpO2 127 and HR 511 are "missing" (absent, never numbers).

**DF2** (75 frames/s of ``01 STATUS PLETH DATA CHK``, ``CHK = sum & 0xFF``; 25 frames make
a packet; STATUS bit 0 = SYNC on frame 1 only, bit 7 always 1, bit 6 SNSD, bit 5 ARTF, bit 4
OOT, bit 3 SNSA, bits 2..1 perfusion: 01 green, 10 red (low), 11 yellow (marginal)). The
DATA byte of frame ``n`` is one field of the packet (HR MSB/LSB in frames 1/2, SpO2 in 3,
firmware revision in 4, STAT2 in 8, ... see :class:`NoninDf2Packet`). The decoder accepts a
packet only as 25 checksummed frames, SYNC on the first and on no other.

**Bedside ASCII** (2500, 8500, 8600V, 9600, 9847, BT4000): ``SPO2=XXX HR=YYY`` lines, CR LF,
``---`` when there is no data; 9847/8600V prefix ``HH:MM:SS``; 9847 may append ``*`` (event)
or ``B`` (breath), the 9600 fast variant ``F``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from agent.drivers.serial._stream import (
    Garbage,
    StreamDecoder,
    Value,
    bit_flags,
    decode_all,
    oximetry,
)
from agent.errors import CodecError
from agent.model import Absent, Observation

PROFILE_DF1: Final = "serial.nonin-df1"
PROFILE_DF2: Final = "serial.nonin-df2"
PROFILE_DF8: Final = "serial.nonin-df8"
PROFILE_ASCII: Final = "serial.nonin-ascii"
BAUD: Final = 9600

SPO2_MISSING: Final = 127
HR_MISSING: Final = 511

_STATUS_FLAGS: Final = (
    (0x40, "sensor-disconnect"),
    (0x20, "out-of-track"),
    (0x10, "low-perfusion"),
    (0x08, "marginal-perfusion"),
    (0x04, "artifact"),
)
_STATUS2_FLAGS: Final = ((0x20, "smartpoint"), (0x08, "finger-off"), (0x01, "low-battery"))
_DF2_FLAGS: Final = (
    (0x40, "sensor-disconnect"),
    (0x20, "artifact"),
    (0x10, "out-of-track"),
    (0x08, "sensor-alarm"),
)
_DF2_PERFUSION: Final = {0x00: None, 0x02: None, 0x04: "low-perfusion", 0x06: "marginal-perfusion"}
_STAT2_FLAGS: Final = (
    (0x01, "low-battery"),
    (0x02, "critical-battery"),
    (0x04, "spot-check"),
    (0x20, "smartpoint"),
)


def _spo2(raw: int, profile: str, data: bytes) -> Value:
    if raw == SPO2_MISSING:
        return Absent.MISSING
    if raw > 100:
        raise CodecError(profile, "SpO2 is above 100 and not the missing marker 127", data)
    return raw


def _hr(raw: int, profile: str, data: bytes) -> Value:
    if raw == HR_MISSING:
        return Absent.MISSING
    if raw > 400:
        raise CodecError(profile, "pulse rate is above 400 and not the missing marker 511", data)
    return raw


@dataclass(frozen=True, slots=True)
class NoninFrame:
    """One DF1 (3-byte) or DF8 (4-byte, ``status2`` set) frame."""

    pulse_rate: Value
    spo2: Value
    flags: tuple[str, ...]
    status: int
    status2: int | None
    raw: bytes

    def observations(self) -> tuple[Observation, ...]:
        """SpO2 and pulse rate (absent for the missing markers)."""
        return oximetry(self.spo2, self.pulse_rate)

    def status_names(self) -> tuple[str, ...]:
        """Named STATUS (and STATUS2) bits."""
        return self.flags


def decode_df1(frame: bytes, *, profile: str = PROFILE_DF1) -> NoninFrame:
    """Decode a 3-byte DF1 frame (or, with 4 bytes, a DF8 frame)."""
    data = bytes(frame)
    size = 4 if profile == PROFILE_DF8 else 3
    if len(data) != size:
        raise CodecError(profile, f"a frame is {size} bytes, got {len(data)}", data)
    if not data[0] & 0x80 or any(b & 0x80 for b in data[1:]):
        raise CodecError(profile, "framing: STATUS must have bit 7 set, the rest clear", data)
    status = data[0]
    status2 = data[3] if size == 4 else None
    flags = bit_flags(status, _STATUS_FLAGS)
    if status2 is not None:
        flags += bit_flags(status2, _STATUS2_FLAGS)
    return NoninFrame(
        pulse_rate=_hr((status & 0x03) << 7 | data[1], profile, data),
        spo2=_spo2(data[2], profile, data),
        flags=flags,
        status=status,
        status2=status2,
        raw=data,
    )


def decode_df8(frame: bytes) -> NoninFrame:
    """Decode a 4-byte DF8 frame."""
    return decode_df1(frame, profile=PROFILE_DF8)


def encode_df1(
    spo2: int | None, hr: int | None, flags: tuple[str, ...] = (), status2: int | None = None
) -> bytes:
    """A DF1 frame, or a DF8 frame when ``status2`` is given; ``None`` sends the missing marker."""
    s = SPO2_MISSING if spo2 is None else spo2
    h = HR_MISSING if hr is None else hr
    if not (0 <= s <= 127 and 0 <= h <= 511):
        raise ValueError("SpO2 or pulse rate out of range for DF1")
    names = set(flags)
    status = 0x80 | (h >> 7) | sum(m for m, n in _STATUS_FLAGS if n in names)
    out = bytes([status, h & 0x7F, s])
    if status2 is not None:
        out += bytes([status2 & 0x7F])
    return out


class _FixedDecoder(StreamDecoder[NoninFrame]):
    size: int

    def _parse(self) -> bool:
        buf = self._buf
        if not buf[0] & 0x80:
            return self._reject(1, "no frame start (bit 7 clear)")
        for i in range(1, min(self.size, len(buf))):
            if buf[i] & 0x80:
                return self._reject(i, "truncated frame")
        if len(buf) < self.size:
            return False
        try:
            frame = decode_df1(bytes(buf[: self.size]), profile=self.profile)
        except CodecError as exc:
            return self._reject(self.size, str(exc).split(": ", 1)[-1])
        return self._frame(frame, self.size)


class Df1Decoder(_FixedDecoder):
    """DF1: 3-byte frames once a second."""

    profile = PROFILE_DF1
    size = 3


class Df8Decoder(_FixedDecoder):
    """DF8: 4-byte frames once a second."""

    profile = PROFILE_DF8
    size = 4


# -- DF2 ---------------------------------------------------------------------------------

DF2_FRAME: Final = 5
DF2_FRAMES: Final = 25
DF2_PACKET: Final = DF2_FRAME * DF2_FRAMES
DF2_FRAMES_PER_SECOND: Final = 75


def _df2_frame_ok(f: bytes | bytearray) -> bool:
    return f[0] == 0x01 and bool(f[1] & 0x80) and (f[0] + f[1] + f[2] + f[3]) & 0xFF == f[4]


@dataclass(frozen=True, slots=True)
class NoninDf2Packet:
    """One DF2 packet: 25 frames (a third of a second), their pleth and the packet fields."""

    pulse_rate: Value
    """4-beat average (frames 1-2)."""
    spo2: Value
    """4-beat average (frame 3)."""
    spo2_display: Value
    spo2_fast: Value
    spo2_beat: Value
    extended_pulse_rate: Value
    """8-beat average (frames 14-15)."""
    extended_spo2: Value
    firmware_revision: int
    timer: int
    stat2: int
    pleth: tuple[int, ...]
    flags: tuple[str, ...]
    raw: bytes

    def observations(self) -> tuple[Observation, ...]:
        """The 4-beat SpO2 and pulse rate."""
        return oximetry(self.spo2, self.pulse_rate)

    def status_names(self) -> tuple[str, ...]:
        """Union of the frames' status bits, perfusion, and STAT2 bits."""
        return self.flags


def decode_df2_packet(packet: bytes) -> NoninDf2Packet:
    """Decode 25 DF2 frames (125 bytes); :class:`CodecError` if any frame is bad."""
    data = bytes(packet)
    p = PROFILE_DF2
    if len(data) != DF2_PACKET:
        raise CodecError(p, f"a packet is {DF2_PACKET} bytes (25 frames), got {len(data)}", data)
    frames = [data[i : i + DF2_FRAME] for i in range(0, DF2_PACKET, DF2_FRAME)]
    for n, f in enumerate(frames, 1):
        if not _df2_frame_ok(f):
            raise CodecError(p, f"frame {n}: bad start byte, status bit 7 or checksum", data)
        if bool(f[1] & 0x01) != (n == 1):
            raise CodecError(p, f"frame {n}: SYNC bit is only set on frame 1", data)
    d = [f[3] for f in frames]

    def hr(msb: int, lsb: int) -> Value:
        return _hr((d[msb] & 0x03) << 7 | (d[lsb] & 0x7F), p, data)

    def sp(i: int) -> Value:
        return _spo2(d[i] & 0x7F, p, data)

    flags: list[str] = []
    for f in frames:
        for name in (*bit_flags(f[1], _DF2_FLAGS), _DF2_PERFUSION.get(f[1] & 6) or ""):
            if name and name not in flags:
                flags.append(name)
    for name in bit_flags(d[7], _STAT2_FLAGS):
        if name not in flags:
            flags.append(name)
    return NoninDf2Packet(
        pulse_rate=hr(0, 1),
        spo2=sp(2),
        spo2_display=sp(8),
        spo2_fast=sp(9),
        spo2_beat=sp(10),
        extended_pulse_rate=hr(13, 14),
        extended_spo2=sp(15),
        firmware_revision=d[3],
        timer=(d[5] & 0x7F) << 7 | (d[6] & 0x7F),
        stat2=d[7],
        pleth=tuple(f[2] for f in frames),
        flags=tuple(flags),
        raw=data,
    )


def df2_frame(status: int, pleth: int, data: int) -> bytes:
    """One DF2 frame with its checksum (for simulators and tests)."""
    if not all(0 <= v <= 0xFF for v in (status, pleth, data)):
        raise ValueError("DF2 frame bytes are 0..255")
    return bytes([0x01, status, pleth, data, (0x01 + status + pleth + data) & 0xFF])


def encode_df2_packet(
    spo2: int | None,
    hr: int | None,
    *,
    perfusion: str = "green",
    flags: tuple[str, ...] = (),
    pleth: int = 100,
) -> bytes:
    """25 DF2 frames carrying ``spo2`` and ``hr`` (``None`` sends the missing markers)."""
    s = SPO2_MISSING if spo2 is None else spo2
    h = HR_MISSING if hr is None else hr
    perf = {"green": 0x02, "red": 0x04, "yellow": 0x06}[perfusion]
    names = set(flags)
    status = 0x80 | perf | sum(m for m, n in _DF2_FLAGS if n in names)
    data = [0] * DF2_FRAMES
    data[0], data[1], data[2] = h >> 7, h & 0x7F, s
    data[3] = 0x31
    data[8] = data[9] = data[10] = data[15] = data[16] = s
    data[13], data[14] = h >> 7, h & 0x7F
    data[19], data[20], data[21], data[22] = h >> 7, h & 0x7F, h >> 7, h & 0x7F
    return b"".join(
        df2_frame(status | (1 if i == 0 else 0), (pleth + 3 * i) & 0xFF, data[i])
        for i in range(DF2_FRAMES)
    )


class Df2Decoder(StreamDecoder[NoninDf2Packet]):
    """DF2 packets; locks on 25 good frames starting with SYNC, resyncs byte by byte."""

    profile = PROFILE_DF2

    def _parse(self) -> bool:
        buf = self._buf
        for n in range(DF2_FRAMES):
            start = n * DF2_FRAME
            if len(buf) < start + DF2_FRAME:
                return False
            frame = buf[start : start + DF2_FRAME]
            if not _df2_frame_ok(frame) or bool(frame[1] & 0x01) != (n == 0):
                # One byte only, also when a later frame fails: the first "frame" may have been
                # noise that happens to check out, ending inside the real packet's first frame
                # (01 b5 cc + 01 83: sync bit, checksum 0x83), and skipping it whole lost the
                # packet behind it.
                reason = "no packet start" if n == 0 else "incomplete packet"
                return self._reject(1, reason)
        try:
            packet = decode_df2_packet(bytes(buf[:DF2_PACKET]))
        except CodecError as exc:
            return self._reject(DF2_FRAME, str(exc).split(": ", 1)[-1])
        return self._frame(packet, DF2_PACKET)


# -- bedside ASCII -------------------------------------------------------------------------

_ASCII_LINE: Final = re.compile(
    rb"(?:(?P<time>\d\d:\d\d:\d\d) +)?SPO2=(?P<spo2>\d{3}|---) +HR=(?P<hr>\d{3}|---)"
    rb"(?: *(?P<mark>[*BF]))? *$"
)
_MARKS: Final = {b"*": "event-marker", b"B": "breath", b"F": "fast"}
MAX_LINE: Final = 512
"""A line longer than this without an end is garbage, except its last :data:`LINE_TAIL` bytes
(where the start of the next data line may be)."""
LINE_TAIL: Final = 200


@dataclass(frozen=True, slots=True)
class NoninAsciiLine:
    """One ``SPO2=XXX HR=YYY`` line."""

    spo2: Value
    pulse_rate: Value
    time_of_day: str | None
    """``HH:MM:SS`` when the model prefixes it (no date is sent)."""
    flags: tuple[str, ...]
    raw: bytes

    def observations(self) -> tuple[Observation, ...]:
        """SpO2 and pulse rate (``---`` is absent)."""
        return oximetry(self.spo2, self.pulse_rate)

    def status_names(self) -> tuple[str, ...]:
        """``no-data`` for dashes; event marker, breath, fast."""
        return self.flags


class LineDecoder(StreamDecoder[object]):
    """Base of the ASCII line decoders: split on LF (CR stripped), decode each line.

    The bytes of a line before its data (noise glued to it) become garbage; a line that is
    not data (a power-up header) is garbage as a whole; blank lines are dropped, except right
    after garbage, where they join it so every garbage item is one contiguous run of the input.
    """

    profile = "serial.lines"
    pattern: re.Pattern[bytes]

    def _parse(self) -> bool:
        buf = self._buf
        end = buf.find(b"\n")
        if end < 0:
            if len(buf) > MAX_LINE:
                return self._reject(len(buf) - LINE_TAIL, "line too long")
            return False
        return self._line(end + 1)

    def _line(self, n: int) -> bool:
        line = bytes(self._buf[:n])
        body = line.rstrip(b"\r\n")
        if not body.strip():
            if self._junk:  # keep a garbage run contiguous: the blank line joins it
                return self._reject(n, self._reason)
            del self._buf[:n]
            return True
        m = self.pattern.search(body)
        if m is None:
            return self._reject(n, "not a data line")
        if m.start():
            self._reject(m.start(), "noise before a data line")
            line = line[m.start() :]
            n -= m.start()
        try:
            item = self._decode(m, line)
        except CodecError as exc:
            return self._reject(n, str(exc).split(": ", 1)[-1])
        return self._frame(item, n)

    def _at_end(self) -> None:
        if self._buf and self._buf.rstrip(b"\r").strip() and len(self._buf) <= MAX_LINE:
            self._line(len(self._buf))

    def _decode(self, m: re.Match[bytes], line: bytes) -> object:
        raise NotImplementedError


def _ascii_value(text: bytes, high: int, what: str, line: bytes) -> Value:
    if text == b"---":
        return Absent.MISSING
    value = int(text)
    if value > high:
        raise CodecError(PROFILE_ASCII, f"{what} is above {high}", line)
    return value


def decode_ascii_line(line: bytes) -> NoninAsciiLine:
    """Decode one bedside line (with or without CR LF)."""
    raw = bytes(line)
    m = _ASCII_LINE.fullmatch(raw.rstrip(b"\r\n").strip())
    if m is None:
        raise CodecError(PROFILE_ASCII, "not a SPO2=XXX HR=YYY line", raw)
    return _decode_ascii(m, raw)


def _decode_ascii(m: re.Match[bytes], raw: bytes) -> NoninAsciiLine:
    spo2 = _ascii_value(m["spo2"], 100, "SpO2", raw)
    hr = _ascii_value(m["hr"], 400, "pulse rate", raw)
    flags: list[str] = []
    if spo2 is Absent.MISSING or hr is Absent.MISSING:
        flags.append("no-data")
    if m["mark"]:
        flags.append(_MARKS[m["mark"]])
    time_of_day = m["time"].decode() if m["time"] else None
    return NoninAsciiLine(spo2, hr, time_of_day, tuple(flags), raw)


class AsciiDecoder(LineDecoder):
    """Bedside ``SPO2=XXX HR=YYY`` lines."""

    profile = PROFILE_ASCII
    pattern = _ASCII_LINE

    def _decode(self, m: re.Match[bytes], line: bytes) -> object:
        return _decode_ascii(m, line)


def encode_ascii_line(
    spo2: int | None, hr: int | None, *, time_of_day: str | None = None, mark: str = ""
) -> bytes:
    """One bedside line with CR LF (``None`` prints dashes)."""
    s = "---" if spo2 is None else f"{spo2:03d}"
    h = "---" if hr is None else f"{hr:03d}"
    prefix = f"{time_of_day} " if time_of_day else ""
    suffix = f" {mark}" if mark else ""
    return f"{prefix}SPO2={s} HR={h}{suffix}\r\n".encode()


def decode_capture_df1(data: bytes) -> list[NoninFrame | Garbage]:
    """Decode a DF1 capture."""
    return decode_all(Df1Decoder(), bytes(data))


def decode_capture_df8(data: bytes) -> list[NoninFrame | Garbage]:
    """Decode a DF8 capture."""
    return decode_all(Df8Decoder(), bytes(data))


def decode_capture_df2(data: bytes) -> list[NoninDf2Packet | Garbage]:
    """Decode a DF2 capture (whole packets only)."""
    return decode_all(Df2Decoder(), bytes(data))


def decode_capture_ascii(data: bytes) -> list[object]:
    """Decode a bedside ASCII capture."""
    return decode_all(AsciiDecoder(), bytes(data))


# -- configuration commands (3150 / 9560) ----------------------------------------------------

ACK: Final = 0x06
NAK: Final = 0x15


def set_format_command(data_format: int, options: int = 0x61) -> bytes:
    """``02 70 04 02 <format> <options> <checksum> 03`` (e.g. DF8: ``02 70 04 02 08 61 DF 03``)."""
    if not (0 <= data_format <= 0xFF and 0 <= options <= 0xFF):
        raise ValueError("format and options are bytes")
    body = bytes([0x70, 0x04, 0x02, data_format, options])
    return b"\x02" + body + bytes([sum(body) & 0xFF, 0x03])
