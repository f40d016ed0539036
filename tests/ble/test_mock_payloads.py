"""The mock devices' payload builders against the spec vectors of ble-gatt.md §1.9 / §1.3."""

from datetime import datetime
from decimal import Decimal

import pytest
from hw_mocks.bluez.payloads import (
    BloodPressureRecord,
    PlxContinuousSample,
    PlxSpotRecord,
    beurer_bpm,
    bpm,
    current_time,
    date_time,
    nonin_continuous,
    parse_current_time,
    parse_date_time,
    plx_continuous,
    plx_spot,
    racp_number_of_records,
    racp_response,
    sfloat,
    sfloat_special,
)

from agent.model import Absent


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (120, "78 00"),
        (18.9, "BD F0"),
        (Decimal("100.0"), "E8 F3"),
        (Decimal("8.90"), "7A E3"),
        (None, "FF 07"),
        (float("nan"), "FF 07"),
        (float("inf"), "FE 07"),
        (float("-inf"), "02 08"),
    ],
)
def test_sfloat_vectors(value: float | Decimal | None, wire: str) -> None:
    assert sfloat(value) == bytes.fromhex(wire)


def test_sfloat_specials() -> None:
    assert sfloat_special(Absent.NRES) == bytes.fromhex("00 08")
    assert sfloat_special(Absent.RESERVED) == bytes.fromhex("01 08")


def test_bpm_vectors() -> None:
    # vector 3 (Nordic, minimal frame) and vector 6 (derdilla)
    assert bpm(BloodPressureRecord(Decimal("18.9"), 11, Decimal("15.9"))) == bytes.fromhex(
        "00 BD F0 0B 00 9F F0"
    )
    record = BloodPressureRecord(124, 86, 97, 51, datetime(2024, 6, 15, 17, 17, 27), status=0)
    assert bpm(record) == bytes.fromhex("16 7C 00 56 00 61 00 E8 07 06 0F 11 11 1B 33 00 00 00")


def test_bpm_optional_fields_and_icp() -> None:
    record = BloodPressureRecord(12, 8, pulse=60, user_id=1, kpa=True)
    frame = bpm(record)
    assert frame[0] == 0x01 | 0x04 | 0x08
    assert len(frame) == 7 + 2 + 1
    icp = bpm(BloodPressureRecord(140, 0), intermediate=True)
    assert icp == bytes.fromhex("00 8C 00 FF 07 FF 07")


def test_beurer_quirk_layout() -> None:
    record = BloodPressureRecord(135, 85, pulse=70, timestamp=datetime(2025, 1, 2, 3, 4, 5))
    frame = beurer_bpm(record)
    assert frame[0] == 0x46  # timestamp + pulse + RFU bit 6, no user/status flags
    assert frame[5:7] == b"\x00\x00"  # MAP
    assert frame[14:16] == b"\x00\x46"  # pulse 70 byte-swapped
    assert frame[16] == 1  # unflagged user byte
    assert len(frame) == 17


def test_date_time_vectors() -> None:
    assert date_time(datetime(2018, 4, 17, 15, 51, 0)) == bytes.fromhex("E2 07 04 11 0F 33 00")
    assert parse_date_time(bytes.fromhex("E2 07 04 11 0F 33 00")) == datetime(2018, 4, 17, 15, 51)
    assert parse_date_time(bytes.fromhex("00 00 00 00 12 1A 20")) is None  # date unknown
    with pytest.raises(ValueError, match="7 bytes"):
        parse_date_time(b"\x00" * 6)


def test_current_time_vector() -> None:
    when = datetime(2024, 6, 6, 12, 4, 44)  # a Thursday
    wire = bytes.fromhex("E8 07 06 06 0C 04 2C 04 80 00")
    assert current_time(when, fractions256=128) == wire
    assert parse_current_time(wire) == when


def test_racp_vectors() -> None:
    assert racp_response(0x01, 0x01) == bytes.fromhex("06 00 01 01")
    assert racp_response(0x01, 0x06) == bytes.fromhex("06 00 01 06")
    assert racp_number_of_records(258) == bytes.fromhex("05 00 02 01")


def test_plx_vectors() -> None:
    assert plx_continuous(PlxContinuousSample(100, 90)) == bytes.fromhex("00 64 00 5A 00")
    assert plx_continuous(PlxContinuousSample(Decimal("100.0"), 90)) == bytes.fromhex(
        "00 E8 F3 5A 00"
    )[:3] + bytes.fromhex("5A 00")
    sample = PlxContinuousSample(95, 90, 0x0020, 0, Decimal("8.7"))
    assert plx_continuous(sample) == bytes.fromhex("1C 5F 00 5A 00 20 00 00 00 00 57 F0")
    spot = PlxSpotRecord(97, 66, datetime(2026, 1, 2, 3, 4, 5), measurement_status=0x0200)
    frame = plx_spot(spot)
    assert frame[0] == 0x03
    assert len(frame) == 1 + 4 + 7 + 2


def test_nonin_frame_layout() -> None:
    frame = nonin_continuous(counter=0x0102, spo2=98, pulse=300, pulse_amplitude_index=1.25)
    assert frame == bytes.fromhex("0A 10 1E 00 7D 01 02 62 01 2C")
    missing = nonin_continuous(counter=1, spo2=None, pulse=None, status=0)
    assert missing[7] == 127
    assert missing[8:10] == b"\x01\xff"
