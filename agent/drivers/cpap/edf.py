"""A tolerant EDF / EDF+ reader (pure: bytes in, frozen dataclasses out, typed errors).

Written for the files a ResMed CPAP leaves on its SD card (``shared/reference/serial-and-cpap.md``
sections 4.2, 4.5 and 4.6), which strict readers reject or misread:

* labels, units and other header text are decoded as latin-1 (ResMed writes UTF-8 ``°C`` into
  ASCII-only fields and the S9 writes localised labels such as ``Läck``);
* ``EDF+D`` files with a record duration of 0 (ResMed's EVE/CSL annotation files) are read record
  by record; a discontinuous file is never silently treated as continuous;
* a header that says ``-1`` data records (a recording still being written) is accepted: the
  record count then comes from the file's length;
* a digital value outside the signal's digital range (ResMed's ``-1`` for "no data" in signals
  whose range starts at 0) is *missing*, never a number (:meth:`SignalHeader.physical`);
* the ``Crc16`` pseudo-signal ResMed puts last in every file (one sample per record,
  CRC-16/CCITT-FALSE of the rest of the record, little-endian) is verified per record, and the
  two header checksums in a ResMed patient field (``X X X X hhhh hhhh``: CRC-16/CCITT-FALSE of
  header bytes ``0x19..0xFF`` and of ``0x100..`` the end of the header) when present;
* TALs (time-stamped annotation lists, EDF+ spec section 2.2.2) are parsed per record.

Only a header that cannot be used raises (:class:`EdfHeaderError`, or :class:`EdfTruncatedError`
when the file ends inside its header). Everything wrong *after* the header (a truncated last
record, missing records, a record whose checksum fails, bytes past the declared records) is
reported in :attr:`EdfFile.problems` as typed errors and the affected records are known, so a
caller can refuse the file now and retry it later, or use exactly the records that verified.
Messages name fields, offsets, counts and record numbers, never a sample value.
"""

from __future__ import annotations

import binascii
import re
import sys
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Final

from agent.errors import CodecError

PROFILE: Final = "edf"

HEADER_BYTES: Final = 256
SIGNAL_HEADER_BYTES: Final = 256
MAX_SIGNALS: Final = 1024
"""More signals than any real recorder writes; bounds the header a file can make us parse."""
MAX_SAMPLES_PER_RECORD: Final = 1 << 20
ANNOTATION_LABEL: Final = "EDF Annotations"
CRC_LABEL: Final = "Crc16"
_HEADER_KEEP: Final = 4096  # bytes of a failing file kept in the error (the header, not the data)

# Field widths of the per-signal header arrays (EDF spec section 2.1.1), in order.
_SIGNAL_FIELDS: Final = (
    ("label", 16),
    ("transducer", 80),
    ("dimension", 8),
    ("physical_min", 8),
    ("physical_max", 8),
    ("digital_min", 8),
    ("digital_max", 8),
    ("prefiltering", 80),
    ("samples_per_record", 8),
    ("reserved", 32),
)
_RESMED_CHECKSUMS: Final = re.compile(r"^X X X X ([0-9A-Fa-f]{4}) ([0-9A-Fa-f]{4})(?:\s|$)")
_STARTDATE: Final = re.compile(r"^Startdate (\d{2})-([A-Z]{3})-(\d{4})\b")
_MONTHS: Final = (
    "JAN",
    "FEB",
    "MAR",
    "APR",
    "MAY",
    "JUN",
    "JUL",
    "AUG",
    "SEP",
    "OCT",
    "NOV",
    "DEC",
)
_TAL_NUMBER: Final = re.compile(rb"^[+-]\d{1,12}(?:\.\d{1,9})?$")
_TAL_DURATION: Final = re.compile(rb"^\d{1,12}(?:\.\d{1,9})?$")


# -- errors -------------------------------------------------------------------------------


class EdfError(CodecError):
    """Bytes that are not (entirely) a valid EDF file. ``raw`` keeps at most the header."""

    def __init__(self, message: str, raw: bytes = b"") -> None:
        super().__init__(PROFILE, message, bytes(raw[:_HEADER_KEEP]))


class EdfHeaderError(EdfError):
    """The header cannot be used: not EDF, a field that does not parse, inconsistent sizes."""


class EdfTruncatedError(EdfError):
    """The file ends early: inside the header, inside a record, or before the declared records.

    Typical of a file that was still being written when the card was pulled. Attributes:
    ``expected_records`` (``None`` if the header did not say), ``complete_records`` and
    ``partial_bytes`` (bytes of an incomplete last record).
    """

    def __init__(
        self,
        message: str,
        raw: bytes = b"",
        *,
        expected_records: int | None = None,
        complete_records: int = 0,
        partial_bytes: int = 0,
    ) -> None:
        super().__init__(message, raw)
        self.expected_records = expected_records
        self.complete_records = complete_records
        self.partial_bytes = partial_bytes


class EdfLengthError(EdfError):
    """More bytes than the declared records hold (a header not yet updated, or trailing junk)."""

    def __init__(self, message: str, raw: bytes = b"", *, extra_bytes: int = 0) -> None:
        super().__init__(message, raw)
        self.extra_bytes = extra_bytes


class EdfCrcError(EdfError):
    """A checksum failed: ``records`` lists the data records (0-based), or ``header`` is set."""

    def __init__(
        self, message: str, raw: bytes = b"", *, records: tuple[int, ...] = (), header: bool = False
    ) -> None:
        super().__init__(message, raw)
        self.records = records
        self.header = header


class TalError(EdfError):
    """An annotation record whose TALs do not follow the EDF+ grammar."""


# -- CRC ----------------------------------------------------------------------------------


def crc16_ccitt_false(data: bytes | memoryview) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final XOR).

    ``binascii.crc_hqx`` is exactly this CRC when started at 0xFFFF; the check value of
    ``b"123456789"`` is 0x29B1.
    """
    return binascii.crc_hqx(data, 0xFFFF)


# -- header -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecimalScale:
    """Physical value (times a factor) as ``(raw * multiplier + addend) * 10**exponent``, exact."""

    multiplier: int
    addend: int
    exponent: int

    def mantissa(self, raw: int) -> int:
        """The integer mantissa for digital value ``raw``."""
        return raw * self.multiplier + self.addend

    def decimal(self, raw: int) -> Decimal:
        """The exact physical value (times the factor) for digital value ``raw``."""
        return Decimal(self.mantissa(raw)).scaleb(self.exponent)


@dataclass(frozen=True, slots=True)
class SignalHeader:
    """One signal's header fields (EDF spec 2.1.1), text decoded as latin-1 and stripped."""

    label: str
    transducer: str
    dimension: str
    physical_min: Decimal
    physical_max: Decimal
    digital_min: int
    digital_max: int
    prefiltering: str
    samples_per_record: int

    @property
    def is_annotation(self) -> bool:
        """True for an EDF+ annotation signal (``EDF Annotations``)."""
        return self.label == ANNOTATION_LABEL

    @property
    def is_crc(self) -> bool:
        """True for ResMed's per-record checksum pseudo-signal."""
        return self.label == CRC_LABEL

    @property
    def gain(self) -> Fraction:
        """Physical units per digital step. Raises :class:`EdfHeaderError` for an empty range."""
        span = self.digital_max - self.digital_min
        if span <= 0:
            raise EdfHeaderError(f"signal {self.label!r}: digital maximum is not above the minimum")
        return Fraction(self.physical_max - self.physical_min) / span

    @property
    def offset(self) -> Fraction:
        """Physical value of digital 0."""
        return Fraction(self.physical_min) - self.gain * self.digital_min

    def in_range(self, raw: int) -> bool:
        """Whether ``raw`` lies in the declared digital range (else it is a "no data" marker)."""
        return self.digital_min <= raw <= self.digital_max

    def physical(self, raw: int) -> Fraction | None:
        """The exact physical value of ``raw``, or ``None`` when it is outside the digital range.

        ResMed writes -1 for "no data" in signals whose digital range starts at 0; a signal
        whose range includes -1 (e.g. flow) keeps -1 as a real value.
        """
        if not self.in_range(raw):
            return None
        return self.offset + self.gain * raw

    def decimal_scale(self, factor: Fraction | int = 1, max_places: int = 9) -> DecimalScale:
        """An exact integer form of ``physical * factor`` with the fewest decimal places.

        Raises :class:`EdfHeaderError` when the scale cannot be written exactly in
        ``max_places`` decimals (a value would have to be rounded).
        """
        gain = self.gain * Fraction(factor)
        offset = self.offset * Fraction(factor)
        for places in range(max_places + 1):
            scale = 10**places
            g, o = gain * scale, offset * scale
            if g.denominator == 1 and o.denominator == 1:
                return DecimalScale(g.numerator, o.numerator, -places)
        raise EdfHeaderError(
            f"signal {self.label!r}: its scale is not exact in {max_places} decimal places"
        )


@dataclass(frozen=True, slots=True)
class EdfHeader:
    """The fixed header and the signal headers."""

    version: str
    patient: str
    recording: str
    start: datetime
    """Start of the recording as the recorder's clock said it (naive: no zone)."""
    header_bytes: int
    reserved: str
    declared_records: int | None
    """Number of data records the header declares; ``None`` for ``-1`` (still recording)."""
    record_duration: Decimal
    """Seconds per data record (0 for annotation-only files)."""
    signals: tuple[SignalHeader, ...]
    header_crc_ok: bool | None
    """ResMed header checksums: ``True``/``False`` when present, ``None`` when absent."""

    @property
    def is_plus(self) -> bool:
        """EDF+ (``EDF+C`` or ``EDF+D`` in the reserved field)."""
        return self.reserved.startswith(("EDF+C", "EDF+D"))

    @property
    def discontinuous(self) -> bool:
        """EDF+D: records are not contiguous in time; their onsets come from the TALs."""
        return self.reserved.startswith("EDF+D")

    @property
    def record_bytes(self) -> int:
        """Bytes per data record (2 per sample)."""
        return 2 * sum(s.samples_per_record for s in self.signals)

    @property
    def crc_signal(self) -> int | None:
        """Index of the per-record checksum signal (the last one, one sample), if present."""
        if self.signals and self.signals[-1].is_crc and self.signals[-1].samples_per_record == 1:
            return len(self.signals) - 1
        return None

    @property
    def annotation_signal(self) -> int | None:
        """Index of the first annotation signal, if any."""
        return next((i for i, s in enumerate(self.signals) if s.is_annotation), None)

    def signal_offsets(self) -> tuple[int, ...]:
        """Byte offset of each signal inside a record."""
        out, pos = [], 0
        for s in self.signals:
            out.append(pos)
            pos += 2 * s.samples_per_record
        return tuple(out)

    def find(self, *labels: str) -> int | None:
        """Index of the first signal whose label matches one of ``labels``.

        Case-insensitive and blind to repeated spaces, so ``"Mask  Pres"`` finds ``Mask Pres``.
        """
        wanted = {normalise_label(label) for label in labels}
        return next(
            (i for i, s in enumerate(self.signals) if normalise_label(s.label) in wanted), None
        )


def normalise_label(label: str) -> str:
    """A label folded for comparison: case-insensitive, inner whitespace collapsed."""
    return " ".join(label.split()).casefold()


def _text(data: bytes, offset: int, width: int) -> str:
    return data[offset : offset + width].decode("latin-1").strip(" \x00")


def _int(field: str, text: str, raw: bytes) -> int:
    try:
        return int(text)
    except ValueError:
        # Some writers put "60.00"-style numbers in integer fields; accept exact integers.
        try:
            value = Decimal(text)
        except InvalidOperation:
            raise EdfHeaderError(f"header field {field} is not a number", raw) from None
        if value != value.to_integral_value():
            raise EdfHeaderError(f"header field {field} is not an integer", raw) from None
        return int(value)


def _decimal(field: str, text: str, raw: bytes) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise EdfHeaderError(f"header field {field} is not a number", raw) from None
    if not value.is_finite():
        raise EdfHeaderError(f"header field {field} is not a finite number", raw)
    return value


def _start(date_text: str, time_text: str, recording: str, raw: bytes) -> datetime:
    parts = re.fullmatch(r"(\d{2})\.(\d{2})\.(\d{2})", date_text)
    clock = re.fullmatch(r"(\d{2})\.(\d{2})\.(\d{2})", time_text)
    if parts is None or clock is None:
        raise EdfHeaderError("header start date or time is not dd.mm.yy / hh.mm.ss", raw)
    day, month, yy = (int(p) for p in parts.groups())
    # EDF spec: 85..99 -> 1985..1999, 00..84 -> 2000..2084; EDF+ puts the 4-digit year in the
    # recording field ("Startdate dd-MMM-yyyy"), which wins when it names the same day.
    year = 1900 + yy if yy >= 85 else 2000 + yy
    plus = _STARTDATE.match(recording)
    if (
        plus is not None
        and plus.group(2) in _MONTHS
        and int(plus.group(1)) == day
        and _MONTHS.index(plus.group(2)) + 1 == month
        and int(plus.group(3)) % 100 == yy
    ):
        year = int(plus.group(3))
    hh, mm, ss = (int(p) for p in clock.groups())
    try:
        return datetime(year, month, day, hh, mm, ss)
    except ValueError:
        raise EdfHeaderError("header start date or time is not a real date", raw) from None


def parse_header(data: bytes) -> EdfHeader:
    """Parse the fixed and signal headers of ``data`` (the whole file, or at least its header).

    Raises :class:`EdfTruncatedError` when ``data`` ends inside the header and
    :class:`EdfHeaderError` when the header cannot be used.
    """
    data = bytes(data[: HEADER_BYTES + MAX_SIGNALS * SIGNAL_HEADER_BYTES])
    if len(data) < HEADER_BYTES:
        raise EdfTruncatedError(
            f"file is {len(data)} bytes, shorter than the {HEADER_BYTES}-byte EDF header", data
        )
    version = _text(data, 0, 8)
    if version != "0":
        raise EdfHeaderError("not an EDF file (version field is not 0)", data)
    patient = _text(data, 8, 80)
    recording = _text(data, 88, 80)
    header_bytes = _int("header bytes", _text(data, 184, 8), data)
    reserved = _text(data, 192, 44)
    declared = _int("number of data records", _text(data, 236, 8), data)
    duration = _decimal("record duration", _text(data, 244, 8), data)
    ns = _int("number of signals", _text(data, 252, 4), data)
    if not 0 < ns <= MAX_SIGNALS:
        raise EdfHeaderError(f"number of signals {ns} is outside 1..{MAX_SIGNALS}", data)
    if header_bytes != HEADER_BYTES + ns * SIGNAL_HEADER_BYTES:
        raise EdfHeaderError(
            f"header size field says {header_bytes} bytes, {ns} signals need "
            f"{HEADER_BYTES + ns * SIGNAL_HEADER_BYTES}",
            data,
        )
    if declared < -1:
        raise EdfHeaderError(f"number of data records {declared} is negative", data)
    if duration < 0:
        raise EdfHeaderError("record duration is negative", data)
    if len(data) < header_bytes:
        raise EdfTruncatedError(
            f"file is {len(data)} bytes, its header alone is {header_bytes}", data
        )
    start = _start(_text(data, 168, 8), _text(data, 176, 8), recording, data)

    columns: dict[str, list[str]] = {}
    pos = HEADER_BYTES
    for name, width in _SIGNAL_FIELDS:
        columns[name] = [_text(data, pos + i * width, width) for i in range(ns)]
        pos += ns * width
    signals = []
    for i in range(ns):
        label = columns["label"][i]
        spr = _int(f"samples per record of signal {i}", columns["samples_per_record"][i], data)
        if not 0 <= spr <= MAX_SAMPLES_PER_RECORD:
            raise EdfHeaderError(f"signal {i}: samples per record {spr} out of range", data)
        signals.append(
            SignalHeader(
                label=label,
                transducer=columns["transducer"][i],
                dimension=columns["dimension"][i],
                physical_min=_decimal(
                    f"physical minimum of signal {i}", columns["physical_min"][i], data
                ),
                physical_max=_decimal(
                    f"physical maximum of signal {i}", columns["physical_max"][i], data
                ),
                digital_min=_int(f"digital minimum of signal {i}", columns["digital_min"][i], data),
                digital_max=_int(f"digital maximum of signal {i}", columns["digital_max"][i], data),
                prefiltering=columns["prefiltering"][i],
                samples_per_record=spr,
            )
        )
    crc_ok: bool | None = None
    sums = _RESMED_CHECKSUMS.match(patient)
    if sums is not None:
        first, second = (int(g, 16) for g in sums.groups())
        crc_ok = (
            crc16_ccitt_false(data[0x19:HEADER_BYTES]) == first
            and crc16_ccitt_false(data[HEADER_BYTES:header_bytes]) == second
        )
    return EdfHeader(
        version=version,
        patient=patient,
        recording=recording,
        start=start,
        header_bytes=header_bytes,
        reserved=reserved,
        declared_records=None if declared == -1 else declared,
        record_duration=duration,
        signals=tuple(signals),
        header_crc_ok=crc_ok,
    )


# -- annotations --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tal:
    """One time-stamped annotation list: onset (s, from the file's start), duration, texts.

    The first TAL of every EDF+ annotation record is the record's time-keeping TAL, whose
    texts are ``("",)``. ResMed always writes ``+0`` there (not the real record onset).
    """

    onset: Decimal
    duration: Decimal | None
    texts: tuple[str, ...]

    @property
    def is_timekeeping(self) -> bool:
        """True for a TAL with no annotation text (a record's time-keeping TAL)."""
        return all(t == "" for t in self.texts)


def _tal_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")  # the EDF+ spec says UTF-8 for annotation texts
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def parse_tals(data: bytes) -> tuple[Tal, ...]:
    """The TALs in one record's annotation signal (trailing ``\\x00`` padding allowed).

    Grammar (EDF+ 2.2.2): ``+onset[\\x15duration]\\x14text\\x14[text\\x14...]\\x00``.
    Raises :class:`TalError` for anything else.
    """
    out: list[Tal] = []
    pos, end = 0, len(data)
    while pos < end:
        if data[pos] == 0:
            pos += 1
            continue
        stop = data.find(b"\x00", pos)
        if stop < 0:
            raise TalError(f"annotation at byte {pos} is not terminated by 0x00")
        tal = data[pos:stop]
        sep = tal.find(b"\x14")
        if sep < 0 or not tal.endswith(b"\x14"):
            raise TalError(f"annotation at byte {pos} has no 0x14-terminated text")
        head, _, dur = tal[:sep].partition(b"\x15")
        if not _TAL_NUMBER.match(head):
            raise TalError(f"annotation at byte {pos} has a malformed onset")
        if dur and not _TAL_DURATION.match(dur):
            raise TalError(f"annotation at byte {pos} has a malformed duration")
        texts = tal[sep + 1 : -1].split(b"\x14") if len(tal) > sep + 1 else [b""]
        out.append(
            Tal(
                onset=Decimal(head.decode("ascii")),
                duration=Decimal(dur.decode("ascii")) if dur else None,
                texts=tuple(_tal_text(t) for t in texts),
            )
        )
        pos = stop + 1
    return tuple(out)


# -- the file -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EdfFile:
    """A parsed file: its header and the complete data records it holds.

    ``problems`` lists what is wrong after the header (empty for a complete file whose
    checksums verify). ``bad_records`` are the records whose ``Crc16`` failed; every other
    record of ``record_count`` is intact (or unchecked when ``crc_checked`` is false).
    """

    header: EdfHeader
    data: bytes
    """The complete records, ``record_count * header.record_bytes`` bytes."""
    record_count: int
    bad_records: frozenset[int]
    crc_checked: bool
    problems: tuple[EdfError, ...]

    @property
    def complete(self) -> bool:
        """Every declared record is present and verified, and nothing is left over."""
        return not self.problems

    def raise_for_problems(self) -> None:
        """Raise the first problem (a typed :class:`EdfError`), if any."""
        if self.problems:
            raise self.problems[0]

    @property
    def good_records(self) -> tuple[int, ...]:
        """Indices of records that passed their checksum (all, if there is no checksum)."""
        return tuple(i for i in range(self.record_count) if i not in self.bad_records)

    def record(self, index: int) -> bytes:
        """The bytes of record ``index``."""
        if not 0 <= index < self.record_count:
            raise IndexError(f"record {index} of {self.record_count}")
        size = self.header.record_bytes
        return self.data[index * size : (index + 1) * size]

    def digital(self, signal: int, record: int) -> array[int]:
        """The digital (int16) samples of ``signal`` in ``record``."""
        sig = self.header.signals[signal]
        start = record * self.header.record_bytes + self.header.signal_offsets()[signal]
        out = array("h")
        out.frombytes(self.data[start : start + 2 * sig.samples_per_record])
        if sys.byteorder == "big":
            out.byteswap()
        return out

    def samples(self, signal: int, records: Iterable[int] | None = None) -> array[int]:
        """The digital samples of ``signal`` over ``records`` (default: all), concatenated."""
        sig = self.header.signals[signal]
        offset = self.header.signal_offsets()[signal]
        size, width = self.header.record_bytes, 2 * sig.samples_per_record
        buf = bytearray()
        for r in range(self.record_count) if records is None else records:
            start = r * size + offset
            buf += self.data[start : start + width]
        out = array("h")
        out.frombytes(bytes(buf))
        if sys.byteorder == "big":
            out.byteswap()
        return out

    def annotations(self, record: int) -> tuple[Tal, ...]:
        """The TALs of ``record`` (raises :class:`TalError`, or ``ValueError`` without an
        annotation signal)."""
        index = self.header.annotation_signal
        if index is None:
            raise ValueError("this file has no annotation signal")
        start = record * self.header.record_bytes + self.header.signal_offsets()[index]
        width = 2 * self.header.signals[index].samples_per_record
        return parse_tals(self.data[start : start + width])


def _ranges(indices: Sequence[int]) -> str:
    parts, i = [], 0
    while i < len(indices):
        j = i
        while j + 1 < len(indices) and indices[j + 1] == indices[j] + 1:
            j += 1
        parts.append(str(indices[i]) if i == j else f"{indices[i]}-{indices[j]}")
        i = j + 1
    shown = ", ".join(parts[:8])
    return shown + (f" and {len(parts) - 8} more ranges" if len(parts) > 8 else "")


def read_edf(data: bytes) -> EdfFile:
    """Parse a whole EDF/EDF+ file, verifying every record's ``Crc16`` when there is one.

    Raises only for an unusable header (:class:`EdfHeaderError` / :class:`EdfTruncatedError`);
    see :attr:`EdfFile.problems` for the rest.
    """
    data = bytes(data)
    header = parse_header(data)
    head = data[: header.header_bytes]
    size = header.record_bytes
    available = len(data) - header.header_bytes
    problems: list[EdfError] = []
    if size == 0:
        if available:
            problems.append(
                EdfLengthError(
                    f"{available} bytes follow a header whose records hold no samples",
                    head,
                    extra_bytes=available,
                )
            )
        return EdfFile(header, b"", 0, frozenset(), False, tuple(problems))
    complete, partial = divmod(available, size)
    declared = header.declared_records
    count = complete if declared is None else min(declared, complete)
    if declared is not None and complete < declared:
        problems.append(
            EdfTruncatedError(
                f"header declares {declared} records, the file holds {complete} complete"
                + (f" and {partial} bytes of the next" if partial else ""),
                head,
                expected_records=declared,
                complete_records=complete,
                partial_bytes=partial,
            )
        )
    elif declared is None and partial:
        problems.append(
            EdfTruncatedError(
                f"file ends {partial} bytes into record {complete} (record count not declared)",
                head,
                complete_records=complete,
                partial_bytes=partial,
            )
        )
    elif declared is not None and available > declared * size:
        extra = available - declared * size
        problems.append(
            EdfLengthError(
                f"{extra} bytes follow the {declared} declared records", head, extra_bytes=extra
            )
        )
    body = data[header.header_bytes : header.header_bytes + count * size]
    crc_index = header.crc_signal
    bad: list[int] = []
    if crc_index is not None:
        view = memoryview(body)
        for r in range(count):
            rec = view[r * size : (r + 1) * size]
            if crc16_ccitt_false(rec[:-2]) != int.from_bytes(rec[-2:], "little"):
                bad.append(r)
        if bad:
            problems.append(
                EdfCrcError(
                    f"Crc16 fails in {len(bad)} of {count} records ({_ranges(bad)})",
                    head,
                    records=tuple(bad),
                )
            )
    if header.header_crc_ok is False:
        problems.append(EdfCrcError("the header checksums do not match", head, header=True))
    return EdfFile(
        header=header,
        data=body,
        record_count=count,
        bad_records=frozenset(bad),
        crc_checked=crc_index is not None,
        problems=tuple(problems),
    )
