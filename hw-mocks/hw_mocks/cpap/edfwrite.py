"""A small EDF writer and patcher for making ResMed-like card files.

Independent of the agent's reader (``agent.drivers.cpap.edf``) on purpose, so a bug in one is
not mirrored by the other: offsets and checksums are written straight from the layout in
``shared/reference/serial-and-cpap.md`` section 4.2.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from datetime import datetime

MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]


def crc(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (check value of b"123456789": 0x29B1)."""
    return binascii.crc_hqx(data, 0xFFFF)


def field(text: str, width: int) -> bytes:
    """A space-padded header field (latin-1), cut to ``width``."""
    raw = text.encode("latin-1")[:width]
    return raw + b" " * (width - len(raw))


@dataclass(frozen=True)
class Layout:
    """What the writer needs of a header: signal count, samples per record, sizes."""

    header_bytes: int
    signals: int
    samples: tuple[int, ...]

    @property
    def record_bytes(self) -> int:
        return 2 * sum(self.samples)


def layout(header: bytes) -> Layout:
    """Read the sizes of an existing header (the ResMed files the fixture holds)."""
    ns = int(header[252:256])
    spr_at = 256 + ns * (16 + 80 + 8 * 5 + 80)  # label, transducer, 5 numbers, prefiltering
    samples = tuple(int(header[spr_at + 8 * i : spr_at + 8 * (i + 1)]) for i in range(ns))
    return Layout(int(header[184:192]), ns, samples)


def set_start(header: bytes, start: datetime, serial: str | None = None) -> bytes:
    """``header`` with its start date/time (and the recording field's Startdate and SRN) set."""
    h = bytearray(header)
    h[168:176] = field(start.strftime("%d.%m.%y"), 8)
    h[176:184] = field(start.strftime("%H.%M.%S"), 8)
    recording = bytes(h[88:168]).decode("latin-1")
    words = recording.split(" ")
    if words and words[0] == "Startdate" and len(words) > 1:
        words[1] = f"{start.day:02d}-{MONTHS[start.month - 1]}-{start.year:04d}"
    if serial is not None:
        words = [f"SRN={serial}" if w.startswith("SRN=") else w for w in words]
    h[88:168] = field(" ".join(words).rstrip(), 80)
    return bytes(h)


def set_records(header: bytes, count: int) -> bytes:
    """``header`` declaring ``count`` data records (-1: unknown)."""
    h = bytearray(header)
    h[236:244] = field(str(count), 8)
    return bytes(h)


def with_checksums(header: bytes) -> bytes:
    """Write ResMed's two header checksums into the patient field: ``X X X X hhhh hhhh``."""
    h = bytearray(header)
    size = int(h[184:192])
    second = crc(bytes(h[256:size]))
    prefix = bytes(h[8:16])
    if prefix != b"X X X X ":
        h[8:88] = field("X X X X 0000 0000", 80)
    h[21:25] = f"{second:04X}".encode()
    first = crc(bytes(h[0x19:256]))
    h[16:20] = f"{first:04X}".encode()
    return bytes(h)


def seal_record(record: bytes) -> bytes:
    """``record`` with its last two bytes replaced by the Crc16 of the rest (little-endian)."""
    body = record[:-2]
    return body + crc(body).to_bytes(2, "little")


def annotation_record(onset_s: int, duration_s: int | None, text: str, samples: int) -> bytes:
    """One ResMed EVE/CSL record: time-keeping TAL ``+0``, one event TAL, padding, Crc16."""
    tal = b"+0\x14\x14\x00" + f"+{onset_s}".encode()
    if duration_s is not None:
        tal += b"\x15" + str(duration_s).encode()
    tal += b"\x14" + text.encode("latin-1") + b"\x14\x00"
    width = 2 * samples
    if len(tal) > width:
        raise ValueError("annotation does not fit the record")
    return seal_record(tal + b"\x00" * (width - len(tal)) + b"\x00\x00")
