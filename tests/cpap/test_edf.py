"""The EDF/EDF+ reader: reference vectors, the real AirSense 10 files, and every damage a card
file can have (``shared/reference/serial-and-cpap.md`` sections 4.2, 4.5, 6.5)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from agent.drivers.cpap import edf
from tests.cpap.edfmake import Sig, make_edf, resmed_patient

SESSION = "DATALOG/20241126"


def real(card_dir: Path, name: str) -> bytes:
    return (card_dir / name).read_bytes()


def test_crc_check_value() -> None:
    assert edf.crc16_ccitt_false(b"123456789") == 0x29B1


def test_tal_vector_from_the_reference() -> None:
    tals = edf.parse_tals(b"+6069\x1511\x14Obstructive Apnea\x14\x00")
    assert tals == (edf.Tal(Decimal(6069), Decimal(11), ("Obstructive Apnea",)),)


def test_timekeeping_tal_and_padding() -> None:
    tals = edf.parse_tals(b"+0\x14\x14\x00+0\x150\x14Recording starts\x14\x00\x00\x00\x00")
    assert tals[0].is_timekeeping
    assert tals[0].onset == 0
    assert tals[1].texts == ("Recording starts",)
    assert tals[1].duration == 0


def test_tal_with_several_texts_and_no_duration() -> None:
    (tal,) = edf.parse_tals(b"-1.5\x14a\x14b\x14\x00")
    assert (tal.onset, tal.duration, tal.texts) == (Decimal("-1.5"), None, ("a", "b"))


@pytest.mark.parametrize(
    "data",
    [b"+1\x14x", b"1\x14x\x14\x00", b"+1\x15x\x14y\x14\x00", b"+1\x00", b"+1x\x14a\x14\x00"],
)
def test_malformed_tals_raise_tal_error(data: bytes) -> None:
    with pytest.raises(edf.TalError):
        edf.parse_tals(data)


@pytest.mark.parametrize(
    ("name", "records", "kind"),
    [
        ("STR.edf", 367, "EDF"),
        (f"{SESSION}/20241127_004016_BRP.edf", 441, "EDF"),
        (f"{SESSION}/20241127_004016_PLD.edf", 441, "EDF"),
        (f"{SESSION}/20241127_004016_SAD.edf", 441, "EDF"),
        (f"{SESSION}/20241127_004009_EVE.edf", 81, "EDF+D"),
        (f"{SESSION}/20241127_004009_CSL.edf", 1, "EDF+D"),
    ],
)
def test_every_real_file_reads_complete(card_dir: Path, name: str, records: int, kind: str) -> None:
    f = edf.read_edf(real(card_dir, name))
    assert f.complete, f.problems
    assert f.record_count == records
    assert f.crc_checked
    assert not f.bad_records
    assert f.header.header_crc_ok is True
    assert f.header.reserved == kind
    assert f.header.discontinuous is (kind == "EDF+D")


def test_real_headers(card_dir: Path) -> None:
    s = edf.read_edf(real(card_dir, "STR.edf")).header
    assert s.start == datetime(2024, 11, 27, 12, 0, 0)
    assert s.record_duration == Decimal("86400.00")
    assert len(s.signals) == 81
    assert s.signals[-1].is_crc
    temp = s.signals[s.find("S.Temp")]  # type: ignore[index]
    assert temp.dimension.encode("latin-1") == b"\xc2\xb0C"  # UTF-8 written into an ASCII field
    b = edf.read_edf(real(card_dir, f"{SESSION}/20241127_004016_BRP.edf")).header
    assert b.start == datetime(2025, 11, 27, 0, 40, 16)  # the header's year, not the folder's
    assert [x.label for x in b.signals] == ["Flow.40ms", "Press.40ms", "Crc16"]
    assert b.signals[0].samples_per_record == 1500
    assert b.record_bytes == 6002


def test_eve_records_hold_one_event_each(card_dir: Path) -> None:
    f = edf.read_edf(real(card_dir, f"{SESSION}/20241127_004009_EVE.edf"))
    assert f.header.record_duration == 0
    first = f.annotations(1)
    assert first[0].is_timekeeping
    assert first[0].onset == 0
    assert first[1] == edf.Tal(Decimal(6069), Decimal(11), ("Obstructive Apnea",))
    labels = [t.texts[0] for r in range(f.record_count) for t in f.annotations(r)[1:]]
    assert labels.count("Central Apnea") == 59


def test_minus_one_is_missing_only_outside_the_digital_range(card_dir: Path) -> None:
    s = edf.read_edf(real(card_dir, "STR.edf"))
    duration = s.header.signals[s.header.find("Duration")]  # type: ignore[index]
    assert duration.physical(-1) is None  # range 0..1440: -1 is "no value"
    assert duration.physical(475) == 475
    b = edf.read_edf(real(card_dir, f"{SESSION}/20241127_004016_BRP.edf"))
    flow = b.header.signals[0]  # range -1000..1500: -1 is a real flow
    assert flow.physical(-1) == Fraction(-1, 500)
    assert flow.decimal_scale(60) == edf.DecimalScale(12, 0, -2)  # L/s -> L/min exactly


def test_decimal_scale_refuses_to_round() -> None:
    sig = edf.SignalHeader("x", "", "", Decimal(0), Decimal(1), 0, 3, "", 1)
    with pytest.raises(edf.EdfHeaderError):
        sig.decimal_scale()
    assert sig.decimal_scale(3) == edf.DecimalScale(1, 0, 0)


def test_truncated_mid_record(card_dir: Path) -> None:
    data = real(card_dir, f"{SESSION}/20241127_004016_BRP.edf")
    f = edf.read_edf(data[: 1024 + 10 * 6002 + 100])
    assert not f.complete
    assert f.record_count == 10
    (p,) = f.problems
    assert isinstance(p, edf.EdfTruncatedError)
    assert (p.expected_records, p.complete_records, p.partial_bytes) == (441, 10, 100)
    with pytest.raises(edf.EdfTruncatedError):
        f.raise_for_problems()
    assert len(p.raw) <= 4096  # the error keeps the header, not the whole file


def test_half_written_header_declares_more_records(card_dir: Path) -> None:
    data = real(card_dir, f"{SESSION}/20241127_004016_PLD.edf")
    f = edf.read_edf(data[: 2816 + 5 * 542])
    assert f.record_count == 5
    assert isinstance(f.problems[0], edf.EdfTruncatedError)


def test_records_not_declared_yet() -> None:
    data = make_edf([Sig("a", 4)], [[[1, 2, 3, 4]]] * 3, declared=-1, crc=True)
    f = edf.read_edf(data)
    assert f.complete
    assert f.record_count == 3
    assert f.header.declared_records is None
    cut = edf.read_edf(data[:-3])
    assert cut.record_count == 2
    assert isinstance(cut.problems[0], edf.EdfTruncatedError)


def test_bytes_past_the_declared_records() -> None:
    data = make_edf([Sig("a", 2)], [[[1, 2]]] * 2, crc=True)
    f = edf.read_edf(data + b"\x00" * 7)
    assert f.record_count == 2
    assert isinstance(f.problems[0], edf.EdfLengthError)
    assert f.problems[0].extra_bytes == 7


def test_a_corrupted_record_fails_its_crc(card_dir: Path) -> None:
    data = bytearray(real(card_dir, f"{SESSION}/20241127_004016_SAD.edf"))
    data[1024 + 7 * 242 + 5] ^= 0x40
    f = edf.read_edf(bytes(data))
    assert f.record_count == 441
    assert f.bad_records == {7}
    assert 7 not in f.good_records
    assert len(f.good_records) == 440
    (p,) = f.problems
    assert isinstance(p, edf.EdfCrcError)
    assert p.records == (7,)


def test_an_edited_header_fails_its_checksum(card_dir: Path) -> None:
    data = bytearray(real(card_dir, "STR.edf"))
    data[300] ^= 0x01  # inside a signal label
    f = edf.read_edf(bytes(data))
    assert f.header.header_crc_ok is False
    assert any(isinstance(p, edf.EdfCrcError) and p.header for p in f.problems)


def test_resmed_checksums_of_a_written_header() -> None:
    data = make_edf([Sig("a", 1)], [[[5]]], crc=True)
    size = int(data[184:192])
    head = resmed_patient(data[:size])
    assert edf.parse_header(head + data[size:]).header_crc_ok is True
    assert edf.parse_header(data).header_crc_ok is None  # no "X X X X" words: not checked


def test_latin1_labels_and_lookup() -> None:
    data = make_edf([Sig("Läck", 1), Sig("Mask  Pres", 1)], [[[3], [4]]])
    h = edf.parse_header(data)
    assert h.signals[0].label == "Läck"
    assert h.find("läck") == 0
    assert h.find("Mask Pres") == 1
    assert h.find("Leak") is None


def test_edf_plus_d_with_zero_duration() -> None:
    tal = b"+0\x14\x14\x00+12\x155\x14Hypopnea\x14\x00"
    samples = [
        int.from_bytes(tal.ljust(24, b"\x00")[i : i + 2], "little", signed=True)
        for i in range(0, 24, 2)
    ]
    data = make_edf(
        [Sig("EDF Annotations", 12, "0", "1", -32768, 32767)],
        [[samples]],
        duration="0",
        reserved="EDF+D",
        crc=True,
    )
    f = edf.read_edf(data)
    assert f.complete
    assert f.header.discontinuous
    assert f.header.record_duration == 0
    assert f.annotations(0)[1].texts == ("Hypopnea",)


def test_two_digit_years_follow_the_edf_rule() -> None:
    old = make_edf([Sig("a", 1)], [[[1]]], start=datetime(1999, 1, 2), recording="X")
    assert edf.parse_header(old).start.year == 1999
    new = make_edf([Sig("a", 1)], [[[1]]], start=datetime(2031, 1, 2), recording="X")
    assert edf.parse_header(new).start.year == 2031


@pytest.mark.parametrize(
    ("offset", "value", "error"),
    [
        (0, b"1       ", edf.EdfHeaderError),  # version
        (252, b"0   ", edf.EdfHeaderError),  # no signals
        (184, b"999     ", edf.EdfHeaderError),  # header size disagrees with ns
        (168, b"32.13.25", edf.EdfHeaderError),  # no such date
        (236, b"-5      ", edf.EdfHeaderError),
        (244, b"abc     ", edf.EdfHeaderError),
    ],
)
def test_unusable_headers(offset: int, value: bytes, error: type[Exception]) -> None:
    data = bytearray(make_edf([Sig("a", 1)], [[[1]]]))
    data[offset : offset + len(value)] = value
    with pytest.raises(error):
        edf.read_edf(bytes(data))


def test_a_file_shorter_than_its_header() -> None:
    data = make_edf([Sig("a", 1)], [[[1]]])
    for cut in (0, 100, 300):
        with pytest.raises(edf.EdfTruncatedError):
            edf.read_edf(data[:cut])
