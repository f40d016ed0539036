"""Beurer BM65 blood-pressure monitor: request/response download at 4800 8N1 (pure, sans-IO).

Facts from ``shared/reference/serial-and-cpap.md`` section 3.1 (atbrask/BM65DataDownloader
``beurer.py`` and blog, McKael/gobm65; two independent implementations). The cuff's cable is
a Prolific PL2303 (``067b:2303``). The host asks, the cuff answers:

=============  =======================================================================
host sends     cuff answers
=============  =======================================================================
``AA``         ``55`` (hello)
``A4``         32 bytes of ASCII description
``A2``         1 byte: the number of stored records ``n``
``A3 i``       for i in 1..n, 9 bytes ``[header, sys-25, dia-25, pulse, month, day,
               hour, minute, year-2000]``
=============  =======================================================================

The header byte's meaning is unverified; it is kept. The record time is the cuff's local
clock with no zone. The cuff keeps its records, so every download sends them all again: the
buffer's natural key (device + device time + values) drops the ones already stored.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import Enum
from typing import Final

from agent import codes
from agent.drivers.serial._stream import UNIT_PER_MIN, Garbage, observation
from agent.errors import CodecError
from agent.model import Observation

PROFILE: Final = "serial.beurer-bm65"
BAUD: Final = 4800

HELLO: Final = b"\xaa"
HELLO_ANSWER: Final = 0x55
GET_DESCRIPTION: Final = b"\xa4"
DESCRIPTION_LEN: Final = 32
GET_COUNT: Final = b"\xa2"
RECORD_LEN: Final = 9
UNIT_MMHG: Final = "mm[Hg]"


def get_record(index: int) -> bytes:
    """``A3 i``: ask for record ``i`` (1-based)."""
    if not 1 <= index <= 0xFF:
        raise ValueError("record index is 1..255")
    return bytes([0xA3, index])


@dataclass(frozen=True, slots=True)
class Bm65Record:
    """One stored measurement."""

    header: int
    systolic: int
    diastolic: int
    pulse_rate: int
    measured: dt.datetime
    """The cuff's local time, no zone."""
    raw: bytes

    @property
    def device_time(self) -> dt.datetime:
        """The measurement time as the cuff recorded it."""
        return self.measured

    def observations(self) -> tuple[Observation, ...]:
        """Systolic, diastolic (mm[Hg]) and pulse rate (/min)."""
        return (
            observation(codes.BP_SYSTOLIC, self.systolic, UNIT_MMHG),
            observation(codes.BP_DIASTOLIC, self.diastolic, UNIT_MMHG),
            observation(codes.PULSE_RATE_BP, self.pulse_rate, UNIT_PER_MIN),
        )

    def status_names(self) -> tuple[str, ...]:
        """The BM65 reports no status."""
        return ()


@dataclass(frozen=True, slots=True)
class Bm65Description:
    """The answer to ``A4``."""

    text: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class Bm65Count:
    """The answer to ``A2``."""

    count: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class Bm65Hello:
    """The ``55`` answer to ``AA``."""

    raw: bytes


Bm65Item = Bm65Record | Bm65Description | Bm65Count | Bm65Hello


def decode_record(data: bytes) -> Bm65Record:
    """Decode one 9-byte record; :class:`CodecError` for a wrong size or an impossible time."""
    raw = bytes(data)
    if len(raw) != RECORD_LEN:
        raise CodecError(PROFILE, f"a record is {RECORD_LEN} bytes, got {len(raw)}", raw)
    header, sys25, dia25, pulse, month, day, hour, minute, year = raw
    try:
        when = dt.datetime(2000 + year, month, day, hour, minute)
    except ValueError:
        raise CodecError(PROFILE, "record date or time out of range", raw) from None
    if sys25 < dia25:
        raise CodecError(PROFILE, "systolic below diastolic", raw)
    return Bm65Record(header, sys25 + 25, dia25 + 25, pulse, when, raw)


def encode_record(
    systolic: int, diastolic: int, pulse: int, when: dt.datetime, *, header: int = 0x80
) -> bytes:
    """A 9-byte record (for simulators and tests)."""
    if not (25 <= diastolic <= systolic <= 280 and 0 <= pulse <= 255 and 2000 <= when.year <= 2255):
        raise ValueError("value out of range for a BM65 record")
    return bytes(
        [
            header,
            systolic - 25,
            diastolic - 25,
            pulse,
            when.month,
            when.day,
            when.hour,
            when.minute,
            when.year - 2000,
        ]
    )


class _Step(Enum):
    HELLO = "hello"
    DESCRIPTION = "description"
    COUNT = "count"
    RECORDS = "records"
    DONE = "done"


class Bm65Download:
    """The download as a sans-IO state machine.

    ``request`` is what to send now (``None`` when done); after sending it, pass every byte
    received to :meth:`feed`, which returns the answers decoded so far (a bad record becomes
    :class:`Garbage` with its 9 bytes, and the download goes on with the next record). The
    transport owns the timeouts: an answer that does not come is its to handle (re-send
    ``request`` or give up).
    """

    def __init__(self) -> None:
        self._step = _Step.HELLO
        self._buf = bytearray()
        self.count: int | None = None
        self.index = 0
        self.request: bytes | None = HELLO

    @property
    def done(self) -> bool:
        """Every record was answered."""
        return self._step is _Step.DONE

    def _advance(self) -> None:
        if self._step is _Step.HELLO:
            self._step, self.request = _Step.DESCRIPTION, GET_DESCRIPTION
        elif self._step is _Step.DESCRIPTION:
            self._step, self.request = _Step.COUNT, GET_COUNT
        elif self._step is _Step.COUNT or self._step is _Step.RECORDS:
            assert self.count is not None
            if self.index < self.count:
                self.index += 1
                self._step, self.request = _Step.RECORDS, get_record(self.index)
            else:
                self._step, self.request = _Step.DONE, None

    def feed(self, data: bytes) -> list[Bm65Item | Garbage]:
        """Bytes from the cuff; returns the decoded answers and garbage, in order."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise CodecError(PROFILE, f"feed takes bytes, not {type(data).__name__}")
        self._buf += data
        out: list[Bm65Item | Garbage] = []
        while self._buf and self._step is not _Step.DONE:
            if self._step is _Step.HELLO:
                if self._buf[0] != HELLO_ANSWER:
                    out.append(Garbage(bytes(self._buf[:1]), "expected the hello answer 55"))
                    del self._buf[:1]
                    continue
                out.append(Bm65Hello(bytes(self._buf[:1])))
                del self._buf[:1]
            elif self._step is _Step.DESCRIPTION:
                if len(self._buf) < DESCRIPTION_LEN:
                    break
                raw = bytes(self._buf[:DESCRIPTION_LEN])
                out.append(Bm65Description(raw.decode("latin-1").strip(" \x00"), raw))
                del self._buf[:DESCRIPTION_LEN]
            elif self._step is _Step.COUNT:
                self.count = self._buf[0]
                out.append(Bm65Count(self.count, bytes(self._buf[:1])))
                del self._buf[:1]
            else:
                if len(self._buf) < RECORD_LEN:
                    break
                raw = bytes(self._buf[:RECORD_LEN])
                del self._buf[:RECORD_LEN]
                try:
                    out.append(decode_record(raw))
                except CodecError as exc:
                    out.append(Garbage(raw, str(exc).split(": ", 1)[-1]))
            self._advance()
        if self._step is _Step.DONE and self._buf:
            out.append(Garbage(bytes(self._buf), "bytes after the last record"))
            self._buf.clear()
        return out

    def flush(self) -> list[Garbage]:
        """The cuff went quiet: a partial answer becomes garbage."""
        if not self._buf:
            return []
        out = [Garbage(bytes(self._buf), f"incomplete answer ({self._step.value})")]
        self._buf.clear()
        return out


def decode_capture(data: bytes) -> list[Bm65Item | Garbage]:
    """Decode a capture for ``dho-agent decode``: the cuff's whole answer stream
    (``55``, description, count, records) or just records (a multiple of 9 bytes)."""
    raw = bytes(data)
    if raw[:1] == bytes([HELLO_ANSWER]) and len(raw) >= 1 + DESCRIPTION_LEN + 1:
        dl = Bm65Download()
        return [*dl.feed(raw), *dl.flush()]
    out: list[Bm65Item | Garbage] = []
    whole = len(raw) - len(raw) % RECORD_LEN
    for i in range(0, whole, RECORD_LEN):
        try:
            out.append(decode_record(raw[i : i + RECORD_LEN]))
        except CodecError as exc:
            out.append(Garbage(raw[i : i + RECORD_LEN], str(exc).split(": ", 1)[-1]))
    if whole < len(raw):
        out.append(Garbage(raw[whole:], "truncated record"))
    return out
