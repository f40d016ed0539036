"""A minimal EDF writer for tests, written from the EDF spec (not from the reader under test)."""

from __future__ import annotations

import binascii
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Sig:
    label: str
    samples: int
    pmin: str = "0"
    pmax: str = "100"
    dmin: int = 0
    dmax: int = 100
    dimension: str = ""


def _f(text: str, width: int) -> bytes:
    raw = text.encode("latin-1")[:width]
    return raw + b" " * (width - len(raw))


def make_edf(
    signals: Sequence[Sig],
    records: Sequence[Sequence[Sequence[int]]],
    *,
    start: datetime = datetime(2025, 3, 4, 22, 15, 30),
    duration: str = "60",
    reserved: str = "",
    declared: int | None = None,
    crc: bool = False,
    patient: str = "X",
    recording: str = "Startdate 04-MAR-2025 X X X",
) -> bytes:
    """An EDF file: ``records[r][s]`` are the int16 samples of signal ``s`` in record ``r``.

    With ``crc``, a ``Crc16`` signal is appended and filled like ResMed does.
    """
    sigs = list(signals) + ([Sig("Crc16", 1, "-32768", "32767", -32768, 32767)] if crc else [])
    ns = len(sigs)
    head = b"".join(
        [
            _f("0", 8),
            _f(patient, 80),
            _f(recording, 80),
            _f(start.strftime("%d.%m.%y"), 8),
            _f(start.strftime("%H.%M.%S"), 8),
            _f(str(256 + 256 * ns), 8),
            _f(reserved, 44),
            _f(str(len(records) if declared is None else declared), 8),
            _f(duration, 8),
            _f(str(ns), 4),
        ]
    )
    cols = [
        [_f(s.label, 16) for s in sigs],
        [_f("", 80) for _ in sigs],
        [_f(s.dimension, 8) for s in sigs],
        [_f(s.pmin, 8) for s in sigs],
        [_f(s.pmax, 8) for s in sigs],
        [_f(str(s.dmin), 8) for s in sigs],
        [_f(str(s.dmax), 8) for s in sigs],
        [_f("", 80) for _ in sigs],
        [_f(str(s.samples), 8) for s in sigs],
        [_f("", 32) for _ in sigs],
    ]
    head += b"".join(b"".join(c) for c in cols)
    body = b""
    for rec in records:
        data = b"".join(struct.pack(f"<{len(v)}h", *v) for v in rec)
        if crc:
            data += struct.pack("<H", binascii.crc_hqx(data, 0xFFFF))
        body += data
    return head + body


def resmed_patient(header: bytes) -> bytes:
    """``header`` with ResMed's two checksums in the patient field."""
    h = bytearray(header)
    size = int(h[184:192])
    h[8:88] = _f("X X X X 0000 0000", 80)
    h[21:25] = f"{binascii.crc_hqx(bytes(h[256:size]), 0xFFFF):04X}".encode()
    h[16:20] = f"{binascii.crc_hqx(bytes(h[0x19:256]), 0xFFFF):04X}".encode()
    return bytes(h)
