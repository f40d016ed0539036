"""ResMed-like SD cards made from the real AirSense 10 card (``data/resmed-airsense10.tar.xz``).

:func:`real_card` unpacks the real card itself. :class:`MockCard` writes a card of its own: an
``Identification.tgt`` with its serial, an ``STR.edf`` with one record per day (a used day is
the real card's 2024-11-28 record with the night's values put in, an unused day the real card's
all -1 record, every record's Crc16 recomputed), and per night a ``DATALOG/YYYYMMDD/`` folder
with the real session's BRP/PLD/SAD/CSL files re-dated (optionally cut to fewer minutes) and an
EVE file with the night's events. Then the faults a card really has:

* :meth:`MockCard.add_night` + :meth:`MockCard.write`: new nights appear (STR rewritten, new
  folder), as when the card goes back into the machine for another night;
* :meth:`MockCard.truncate`: a file cut short (the card pulled while the machine wrote);
* :meth:`MockCard.half_write`: a file whose header declares all records but holds fewer;
* :meth:`MockCard.corrupt`: one record's bytes changed (its Crc16 no longer matches);
* :meth:`MockCard.pull` / :meth:`MockCard.insert`: the card leaves the reader and returns.

Everything is written with plain file I/O into ``root`` (a directory standing for the mount).
"""

from __future__ import annotations

import os
import shutil
import struct
import tarfile
import tempfile
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import cache
from pathlib import Path
from typing import Final

from hw_mocks.cpap import edfwrite

ARCHIVE: Final = Path(__file__).parent / "data" / "resmed-airsense10.tar.xz"
FIXTURE_DIR: Final = "resmed-airsense10"
REAL_SESSION: Final = "DATALOG/20241126"
REAL_USED_RECORD: Final = 1  # STR record of 2024-11-28 (Duration 475, AHI 0.6, ...)
REAL_UNUSED_RECORD: Final = 0
NOON: Final = time(12, 0)


def real_card(dest: Path) -> Path:
    """Unpack the real card into ``dest`` (created); returns the card's directory."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(ARCHIVE, "r:xz") as tar:
        tar.extractall(dest, filter="data")
    card = dest / FIXTURE_DIR
    for p in card.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    card.chmod(0o755)
    return card


@cache
def _template_dir() -> Path:
    return real_card(Path(tempfile.mkdtemp(prefix="dho-cpap-template-")))


def template_bytes(relative: str) -> bytes:
    """A file of the real card (e.g. ``"STR.edf"``), read from an unpacked copy."""
    return (_template_dir() / relative).read_bytes()


# -- STR ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _StrLayout:
    header: bytes
    layout: edfwrite.Layout
    offsets: dict[str, tuple[int, int]]  # label -> (byte offset in record, samples)

    @classmethod
    def load(cls) -> _StrLayout:
        data = template_bytes("STR.edf")
        lay = edfwrite.layout(data)
        header = data[: lay.header_bytes]
        labels = [
            header[256 + 16 * i : 256 + 16 * (i + 1)].decode("latin-1").strip()
            for i in range(lay.signals)
        ]
        offsets, pos = {}, 0
        for label, n in zip(labels, lay.samples, strict=True):
            offsets[label] = (pos, n)
            pos += 2 * n
        return cls(header, lay, offsets)

    def record(self, index: int) -> bytes:
        data = template_bytes("STR.edf")
        size = self.layout.record_bytes
        start = self.layout.header_bytes + index * size
        return data[start : start + size]


@cache
def _str_layout() -> _StrLayout:
    return _StrLayout.load()


def _put(record: bytearray, label: str, values: list[int]) -> None:
    offset, n = _str_layout().offsets[label]
    values = (values + [-1] * n)[:n]
    record[offset : offset + 2 * n] = struct.pack(f"<{n}h", *values)


@dataclass
class Night:
    """One simulated night: what STR says and what the DATALOG session holds."""

    day: date
    """The sleep day (the night starts that evening)."""
    start: datetime
    """Mask on (device time)."""
    usage_min: int = 475
    ahi_tenths: int = 6
    leak95_raw: int = 4
    """Leak.95 in card units (0.02 L/s): 4 -> 4.8 L/min."""
    mode: int = 1
    events: dict[str, int] = field(
        default_factory=lambda: {"Obstructive Apnea": 12, "Central Apnea": 59, "Hypopnea": 9}
    )
    detail_minutes: int | None = 30
    """Minutes of BRP/PLD/SAD to write (None: the whole real session, 441 minutes)."""

    @property
    def folder(self) -> str:
        return f"DATALOG/{self.day.strftime('%Y%m%d')}"

    def name(self, when: datetime, kind: str) -> str:
        return f"{self.folder}/{when.strftime('%Y%m%d_%H%M%S')}_{kind}.edf"

    def str_record(self) -> bytes:
        rec = bytearray(_str_layout().record(REAL_USED_RECORD))
        noon = datetime.combine(self.day, NOON)
        on = int((self.start - noon).total_seconds()) // 60
        if not 0 <= on <= 1440 - self.usage_min:
            raise ValueError("the night must start after noon and end before the next noon")
        _put(rec, "Date", [(self.day - date(1970, 1, 1)).days])
        _put(rec, "MaskOn", [on])
        _put(rec, "MaskOff", [on + self.usage_min])
        _put(rec, "MaskEvents", [2])
        _put(rec, "Duration", [self.usage_min])
        _put(rec, "OnDuration", [self.usage_min])
        _put(rec, "Mode", [self.mode])
        _put(rec, "AHI", [self.ahi_tenths])
        _put(rec, "Leak.95", [self.leak95_raw])
        return edfwrite.seal_record(bytes(rec))


def _unused_record(day: date) -> bytes:
    rec = bytearray(_str_layout().record(REAL_UNUSED_RECORD))
    _put(rec, "Date", [(day - date(1970, 1, 1)).days])
    return edfwrite.seal_record(bytes(rec))


# -- the card -----------------------------------------------------------------------------


class MockCard:
    """A ResMed-like card in ``root`` (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        *,
        serial: str = "23232323232",
        product: str = "AirSense_10_AutoSet",
        first_day: date | None = None,
    ) -> None:
        self.root = Path(root)
        self.serial = serial
        self.product = product
        self.first_day = first_day
        self.nights: dict[date, Night] = {}
        self._parked: Path | None = None

    # -- content --------------------------------------------------------------------------

    def add_night(self, day: date, **fields: object) -> Night:
        """Add a night (mask on 22:30 by default) and return it; call :meth:`write` after."""
        start = fields.pop("start", datetime.combine(day, time(22, 30)))
        assert isinstance(start, datetime)
        night = Night(day=day, start=start, **fields)  # type: ignore[arg-type]
        self.nights[day] = night
        if self.first_day is None or day < self.first_day:
            self.first_day = day
        return night

    def write(self, *, through: date | None = None) -> None:
        """Write Identification, STR.edf (every day from the first night to ``through`` or the
        last night) and the DATALOG files of every night not yet on the card."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "DATALOG").mkdir(exist_ok=True)
        ident = template_bytes("Identification.tgt").decode("latin-1")
        lines = []
        for line in ident.split("\n"):
            if line.startswith("#SRN "):
                line = f"#SRN {self.serial}"
            elif line.startswith("#PNA "):
                line = f"#PNA {self.product}"
            lines.append(line)
        _write(self.root / "Identification.tgt", "\n".join(lines).encode("latin-1"))
        _write(self.root / "STR.edf", self.str_bytes(through))
        for night in self.nights.values():
            if not (self.root / night.folder).exists():
                self._write_session(night)

    def str_bytes(self, through: date | None = None) -> bytes:
        """The STR.edf for the card's days."""
        if not self.nights or self.first_day is None:
            raise ValueError("add a night first")
        last = through or max(self.nights)
        days = [self.first_day + timedelta(days=i) for i in range((last - self.first_day).days + 1)]
        records = [
            self.nights[d].str_record() if d in self.nights else _unused_record(d) for d in days
        ]
        header = edfwrite.set_start(
            _str_layout().header, datetime.combine(self.first_day, NOON), self.serial
        )
        header = edfwrite.with_checksums(edfwrite.set_records(header, len(records)))
        return header + b"".join(records)

    def _write_session(self, night: Night) -> None:
        (self.root / night.folder).mkdir(parents=True, exist_ok=True)
        for kind in ("BRP", "PLD", "SAD", "CSL"):
            real = template_bytes(f"{REAL_SESSION}/{_real_name(kind)}")
            lay = edfwrite.layout(real)
            header = real[: lay.header_bytes]
            body = real[lay.header_bytes :]
            count = len(body) // lay.record_bytes
            if kind != "CSL" and night.detail_minutes is not None:
                count = min(count, night.detail_minutes)
            when = night.start + (timedelta(seconds=6) if kind != "CSL" else timedelta())
            header = edfwrite.set_start(header, when, self.serial)
            header = edfwrite.with_checksums(edfwrite.set_records(header, count))
            _write(
                self.root / night.name(when, kind),
                header + body[: count * lay.record_bytes],
            )
        self._write_events(night)

    def _write_events(self, night: Night) -> None:
        real = template_bytes(f"{REAL_SESSION}/{_real_name('EVE')}")
        lay = edfwrite.layout(real)
        samples = lay.samples[0]
        records = [edfwrite.annotation_record(0, 0, "Recording starts", samples)]
        onset = 600
        for label, n in sorted(night.events.items()):
            for _ in range(n):
                onset += 97
                records.append(edfwrite.annotation_record(onset, 10, label, samples))
        header = edfwrite.set_start(real[: lay.header_bytes], night.start, self.serial)
        header = edfwrite.with_checksums(edfwrite.set_records(header, len(records)))
        _write(self.root / night.name(night.start, "EVE"), header + b"".join(records))

    def files(self, day: date, kind: str | None = None) -> list[Path]:
        """The DATALOG files of the night of ``day`` (of one kind)."""
        folder = self.root / self.nights[day].folder
        return sorted(
            p for p in folder.glob("*.edf") if kind is None or p.stem.endswith(f"_{kind}")
        )

    # -- faults ---------------------------------------------------------------------------

    def truncate(self, path: Path, keep: int) -> None:
        """Cut ``path`` to its first ``keep`` bytes (negative: drop that many from the end)."""
        data = path.read_bytes()
        _write(path, data[:keep] if keep >= 0 else data[: len(data) + keep])

    def half_write(self, path: Path, records: int) -> None:
        """Keep the header (still declaring every record) and only ``records`` records."""
        data = path.read_bytes()
        lay = edfwrite.layout(data)
        _write(path, data[: lay.header_bytes + records * lay.record_bytes])

    def corrupt(self, path: Path, record: int) -> None:
        """Flip one byte inside ``record`` of ``path`` (its Crc16 then fails)."""
        data = bytearray(path.read_bytes())
        lay = edfwrite.layout(bytes(data))
        data[lay.header_bytes + record * lay.record_bytes] ^= 0x01
        _write(path, bytes(data))

    def restore(self, day: date) -> None:
        """Rewrite the night's DATALOG files complete (the machine finished writing)."""
        shutil.rmtree(self.root / self.nights[day].folder)
        self._write_session(self.nights[day])

    def pull(self) -> None:
        """Take the card out: the mount point is left empty."""
        parked = Path(tempfile.mkdtemp(prefix="dho-cpap-pulled-"))
        for entry in list(self.root.iterdir()):
            shutil.move(str(entry), parked / entry.name)
        self._parked = parked

    def insert(self) -> None:
        """Put the card back."""
        if self._parked is None:
            return
        for entry in list(self._parked.iterdir()):
            shutil.move(str(entry), self.root / entry.name)
        self._parked.rmdir()
        self._parked = None


def _real_name(kind: str) -> str:
    stamp = "20241127_004009" if kind in ("EVE", "CSL") else "20241127_004016"
    return f"{stamp}_{kind}.edf"


def _write(path: Path, data: bytes) -> None:
    """Write like the machine does: in place, no rename (a reader may see it half-written).

    The modification time always moves forward by at least a millisecond, so a rewrite is
    visible even on a filesystem with coarse timestamps.
    """
    try:
        before = path.stat().st_mtime_ns
    except FileNotFoundError:
        before = None
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if before is not None:
        after = path.stat().st_mtime_ns
        if after <= before:
            stamp = before + 1_000_000
            os.utime(path, ns=(stamp, stamp))
