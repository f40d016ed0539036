"""IEEE 11073 SFLOAT/FLOAT: vectors from shared/reference/ble-gatt.md sections 1.2 and 1.9."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.drivers import ieee11073 as f
from agent.errors import CodecError
from agent.model import Absent

# No timing in tests: a shared CI machine can stall any single example (DEVELOPERS.md).
NO_DEADLINE = settings(deadline=None)

# ble-gatt.md section 1.2 "Worked SFLOAT examples" and vector 16 (section 1.9).
SFLOAT_VECTORS = [
    ("78 00", Decimal("120")),
    ("BD F0", Decimal("18.9")),
    ("E8 F3", Decimal("100.0")),
    ("7A E3", Decimal("8.90")),
    ("FF 07", Absent.NAN),
    ("00 08", Absent.NRES),
    ("FE 07", Absent.POS_INF),
    ("02 08", Absent.NEG_INF),
    ("01 08", Absent.RESERVED),
]

# ble-gatt.md section 1.2 (FLOAT examples and special values table).
FLOAT_VECTORS = [
    ("8F B3 00 FE", Decimal("459.67")),
    ("24 00 00 00", Decimal("36")),
    ("FF FF 7F 00", Absent.NAN),
    ("00 00 80 00", Absent.NRES),
    ("FE FF 7F 00", Absent.POS_INF),
    ("02 00 80 00", Absent.NEG_INF),
    ("01 00 80 00", Absent.RESERVED),
]


@pytest.mark.parametrize(("wire", "expected"), SFLOAT_VECTORS)
def test_sfloat_vectors(wire: str, expected: f.Value) -> None:
    data = bytes.fromhex(wire)
    got = f.read_sfloat(data)
    assert got == expected
    assert type(got) is type(expected)
    if isinstance(expected, Decimal):
        # the device's resolution is kept: 100.0 stays 100.0, 8.90 stays 8.90
        assert str(got) == str(expected)
    assert f.sfloat_bytes(got) == data


@pytest.mark.parametrize(("wire", "expected"), FLOAT_VECTORS)
def test_float_vectors(wire: str, expected: f.Value) -> None:
    data = bytes.fromhex(wire)
    got = f.read_float(data)
    assert got == expected
    assert type(got) is type(expected)
    assert f.float_bytes(got) == data


def test_exponent_is_twos_complement_not_excess_8() -> None:
    # bluetooth-sig-python's excess-8 reading would give 1.2e-6 and 1.89e9 (ble-gatt.md 1.2)
    assert f.read_sfloat(bytes.fromhex("7800")) == 120
    assert f.read_sfloat(bytes.fromhex("BDF0")) == Decimal("18.9")
    # and "78 80" is 120 * 10**-8, not 120
    assert f.read_sfloat(bytes.fromhex("7880")) == Decimal("120E-8")


def test_specials_are_all_distinct() -> None:
    sfl = {f.decode_sfloat_raw(r) for r in (0x07FF, 0x0800, 0x07FE, 0x0802, 0x0801)}
    float_specials = (0x007FFFFF, 0x00800000, 0x007FFFFE, 0x00800002, 0x00800001)
    fl = {f.decode_float_raw(r) for r in float_specials}
    assert len(sfl) == 5
    assert sfl == fl
    assert all(isinstance(v, Absent) for v in sfl)


def test_reserved_mantissas_with_nonzero_exponent_are_numbers() -> None:
    # only exponent 0 marks a special value
    assert f.decode_sfloat_raw(0x17FF) == Decimal("20470")
    assert f.decode_sfloat_raw(0xF800) == Decimal("-204.8")


def test_every_sfloat_round_trips() -> None:
    for raw in range(0x10000):
        value = f.decode_sfloat_raw(raw)
        assert f.encode_sfloat_raw(value) == raw


@NO_DEADLINE
@given(st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_float_raw_round_trips(raw: int) -> None:
    assert f.encode_float_raw(f.decode_float_raw(raw)) == raw


@NO_DEADLINE
@given(
    st.integers(min_value=-2048, max_value=2047),
    st.integers(min_value=-8, max_value=7),
)
def test_sfloat_encodes_any_representable_number(mantissa: int, exponent: int) -> None:
    value = Decimal(mantissa).scaleb(exponent)
    try:
        raw = f.encode_sfloat_raw(value)
    except ValueError:
        # only the five reserved mantissas at exponent 0 have no exact encoding
        assert exponent == 0
        assert mantissa in (2046, 2047, -2048, -2047, -2046)
        return
    decoded = f.decode_sfloat_raw(raw)
    assert decoded == value


@NO_DEADLINE
@given(st.decimals(allow_nan=False, allow_infinity=False, places=None))
def test_sfloat_encode_is_exact_or_refuses(value: Decimal) -> None:
    try:
        raw = f.encode_sfloat_raw(value)
    except ValueError:
        return
    assert f.decode_sfloat_raw(raw) == value


def test_encoder_normalises_exponent_without_losing_digits() -> None:
    assert f.sfloat_bytes(Decimal("1.20E+5")) == bytes.fromhex("7830")  # 120 * 10**3
    assert f.decode_sfloat_raw(f.encode_sfloat_raw(Decimal("1E+10"))) == Decimal("1E+10")
    assert f.sfloat_bytes(120) == bytes.fromhex("7800")
    assert f.sfloat_bytes(Decimal("120"), big_endian=True) == bytes.fromhex("0078")


@pytest.mark.parametrize("value", [Decimal("2047"), Decimal("1E-9"), Decimal("123456"), 4096])
def test_unrepresentable_numbers_are_refused(value: Decimal | int) -> None:
    with pytest.raises(ValueError, match="SFLOAT"):
        f.encode_sfloat_raw(value)


def test_missing_has_no_wire_encoding() -> None:
    with pytest.raises(ValueError, match="missing"):
        f.encode_sfloat_raw(Absent.MISSING)
    with pytest.raises(ValueError, match="missing"):
        f.encode_float_raw(Absent.MISSING)
    with pytest.raises(ValueError, match="finite"):
        f.encode_sfloat_raw(Decimal("NaN"))


def test_short_input_is_a_codec_error() -> None:
    with pytest.raises(CodecError, match=r"ble\.bpm: SFLOAT at offset 1 needs 2 bytes"):
        f.read_sfloat(b"\x00\x01", 1, profile="ble.bpm")
    with pytest.raises(CodecError):
        f.read_float(b"\x00\x01\x02")


def test_big_endian_read() -> None:
    assert f.read_sfloat(bytes.fromhex("003F"), big_endian=True) == 63
