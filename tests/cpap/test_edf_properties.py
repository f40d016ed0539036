"""Property tests (hypothesis) for the EDF reader.

* Arbitrary bytes, and real headers with arbitrary bytes changed, never raise anything but
  :class:`~agent.drivers.cpap.edf.EdfError` (the reader's own error type).
* Any file written to the spec reads back sample for sample.
* A file cut anywhere is never complete, and what it returns is exactly its complete records.
* Any single byte changed in a data record is caught by that record's Crc16.
* TALs round-trip.
"""

from __future__ import annotations

import binascii
import contextlib
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeAlias

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.drivers.cpap import edf
from tests.cpap.edfmake import Sig, make_edf

# No timing in tests: a shared CI machine can stall any single example (DEVELOPERS.md).
Sample: TypeAlias = tuple[bytes, list[Sig], list[list[list[int]]], bool]

QUICK = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])

INT16 = st.integers(min_value=-32768, max_value=32767)


@st.composite
def edf_files(draw: st.DrawFn) -> tuple[bytes, list[Sig], list[list[list[int]]], bool]:
    n_signals = draw(st.integers(1, 4))
    signals = [
        Sig(
            label=draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF), max_size=16)),
            samples=draw(st.integers(1, 8)),
            pmin="-10",
            pmax="10",
            dmin=-32768,
            dmax=32767,
        )
        for _ in range(n_signals)
    ]
    records = [
        [draw(st.lists(INT16, min_size=s.samples, max_size=s.samples)) for s in signals]
        for _ in range(draw(st.integers(0, 5)))
    ]
    crc = draw(st.booleans())
    start = draw(
        st.datetimes(datetime(1985, 1, 1), datetime(2084, 12, 31)).map(
            lambda t: t.replace(microsecond=0)
        )
    )
    data = make_edf(signals, records, crc=crc, start=start, recording="X")
    return data, signals, records, crc


def _exercise(f: edf.EdfFile) -> None:
    """Touch everything a caller might read."""
    for i, s in enumerate(f.header.signals):
        f.samples(i)
        with contextlib.suppress(edf.EdfError):
            s.physical(0)
    for r in range(f.record_count):
        f.record(r)
        if f.header.annotation_signal is not None:
            with contextlib.suppress(edf.EdfError):
                f.annotations(r)


@QUICK
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_edf_errors(data: bytes) -> None:
    with contextlib.suppress(edf.EdfError):
        _exercise(edf.read_edf(data))


@QUICK
@given(edf_files(), st.data())
def test_damaged_headers_raise_only_edf_errors(sample: Sample, data: st.DataObject) -> None:
    raw = bytearray(sample[0])
    size = int(raw[184:192])
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, size - 1))
        raw[at] = data.draw(st.integers(0, 255))
    with contextlib.suppress(edf.EdfError):
        _exercise(edf.read_edf(bytes(raw)))


@QUICK
@given(edf_files())
def test_written_files_read_back_exactly(sample: Sample) -> None:
    data, signals, records, crc = sample
    f = edf.read_edf(data)
    assert f.complete
    assert f.record_count == len(records)
    assert f.crc_checked is crc
    for i, s in enumerate(signals):
        assert f.header.signals[i].label == s.label.strip(" ")
        assert list(f.samples(i)) == [v for rec in records for v in rec[i]]


@QUICK
@given(edf_files(), st.data())
def test_any_cut_is_detected_and_only_whole_records_come_back(
    sample: Sample, data: st.DataObject
) -> None:
    raw, signals, records, _ = sample
    size = int(raw[184:192])
    per = 2 * (sum(s.samples for s in signals) + (1 if sample[3] else 0))
    if not records:
        return
    cut = data.draw(st.integers(size, len(raw) - 1))
    f = edf.read_edf(raw[:cut])
    assert not f.complete
    assert isinstance(f.problems[0], edf.EdfTruncatedError)
    assert f.record_count == (cut - size) // per
    for i in range(len(signals)):
        assert list(f.samples(i)) == [v for rec in records[: f.record_count] for v in rec[i]]


@QUICK
@given(edf_files(), st.data())
def test_any_changed_byte_in_a_record_fails_its_crc(sample: Sample, data: st.DataObject) -> None:
    raw, signals, records, _ = sample
    if not records:
        return
    raw = make_edf(signals, records, crc=True, recording="X")
    size = int(raw[184:192])
    per = 2 * (sum(s.samples for s in signals) + 1)
    at = data.draw(st.integers(size, len(raw) - 1))
    flip = data.draw(st.integers(1, 255))
    damaged = bytearray(raw)
    damaged[at] ^= flip
    f = edf.read_edf(bytes(damaged))
    assert f.bad_records == {(at - size) // per}
    assert isinstance(f.problems[0], edf.EdfCrcError)


def test_crc_matches_a_bitwise_reference() -> None:
    def bitwise(data: bytes) -> int:
        c = 0xFFFF
        for b in data:
            c ^= b << 8
            for _ in range(8):
                c = ((c << 1) ^ 0x1021) & 0xFFFF if c & 0x8000 else (c << 1) & 0xFFFF
        return c

    for data in (b"", b"\x00", b"123456789", bytes(range(256))):
        assert edf.crc16_ccitt_false(data) == bitwise(data) == binascii.crc_hqx(data, 0xFFFF)


TEXT = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00\x14\x15"),
    min_size=1,
    max_size=20,
)


@QUICK
@given(
    st.lists(
        st.tuples(
            st.decimals(min_value=-99999, max_value=99999, places=3, allow_nan=False),
            st.none() | st.decimals(min_value=0, max_value=9999, places=1, allow_nan=False),
            st.lists(TEXT, min_size=1, max_size=3),
        ),
        max_size=5,
    ),
    st.integers(0, 8),
)
def test_tals_round_trip(tals: list[Any], padding: int) -> None:
    raw = b""
    for onset, duration, texts in tals:
        sign = "+" if onset >= 0 else "-"
        raw += f"{sign}{abs(onset):f}".encode()
        if duration is not None:
            raw += b"\x15" + f"{duration:f}".encode()
        raw += b"\x14" + b"".join(t.encode() + b"\x14" for t in texts) + b"\x00"
    parsed = edf.parse_tals(raw + b"\x00" * padding)
    assert [(t.onset, t.duration, list(t.texts)) for t in parsed] == [
        (Decimal(o), None if d is None else Decimal(d), t) for o, d, t in tals
    ]
