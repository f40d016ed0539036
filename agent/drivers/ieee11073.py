"""IEEE 11073-20601 SFLOAT (16-bit) and FLOAT (32-bit) medical numbers, both directions.

Layout (``shared/reference/ble-gatt.md`` section 1.2, checked there against Nordic's
Android-BLE-Library ``Data.java`` and Stanford Spezi ``MedFloatTests.swift``)::

    SFLOAT  uint16, little-endian on the wire: [EEEE MMMM MMMM MMMM]
            E = 4-bit exponent, two's complement (-8..+7)
            M = 12-bit mantissa, two's complement (-2048..+2047)
    FLOAT   uint32, little-endian on the wire: [EEEEEEEE MMMM...(24)]
            E = 8-bit two's complement, M = 24-bit two's complement
    value = M * 10**E

The exponent is **two's complement, not excess-8**: ``78 00`` is 120, not 1.2e-6 (the
mistake ``bluetooth-sig-python`` makes, ble-gatt.md section 1.2).

Special values have exponent 0 and a reserved mantissa. They decode to an
:class:`agent.model.Absent`, each kept distinct, and are never turned into a number:

==========  ==========  ============  ====================
meaning     SFLOAT raw  FLOAT raw     decoded
==========  ==========  ============  ====================
NaN         0x07FF      0x007FFFFF    ``Absent.NAN``
NRes        0x0800      0x00800000    ``Absent.NRES``
+INFINITY   0x07FE      0x007FFFFE    ``Absent.POS_INF``
-INFINITY   0x0802      0x00800002    ``Absent.NEG_INF``
reserved    0x0801      0x00800001    ``Absent.RESERVED``
==========  ==========  ============  ====================

Numbers decode to :class:`decimal.Decimal` with the device's own exponent kept
(``E8 F3`` is ``Decimal("100.0")``), so decoding then encoding gives the same raw value for
every non-special input.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Final, TypeAlias

from agent.errors import CodecError
from agent.model import Absent

Value: TypeAlias = Decimal | Absent
"""A decoded medical number: an exact decimal, or the special value the device sent."""


@dataclass(frozen=True, slots=True)
class _Format:
    """The bit geometry of one of the two formats."""

    name: str
    size: int  # bytes on the wire
    mantissa_bits: int
    exponent_bits: int
    specials: dict[int, Absent]

    @property
    def mantissa_min(self) -> int:
        return -(1 << (self.mantissa_bits - 1))

    @property
    def mantissa_max(self) -> int:
        return (1 << (self.mantissa_bits - 1)) - 1

    @property
    def exponent_min(self) -> int:
        return -(1 << (self.exponent_bits - 1))

    @property
    def exponent_max(self) -> int:
        return (1 << (self.exponent_bits - 1)) - 1


SFLOAT_NAN: Final = 0x07FF
SFLOAT_NRES: Final = 0x0800
SFLOAT_POS_INF: Final = 0x07FE
SFLOAT_NEG_INF: Final = 0x0802
SFLOAT_RESERVED: Final = 0x0801

FLOAT_NAN: Final = 0x007FFFFF
FLOAT_NRES: Final = 0x00800000
FLOAT_POS_INF: Final = 0x007FFFFE
FLOAT_NEG_INF: Final = 0x00800002
FLOAT_RESERVED: Final = 0x00800001

_SFLOAT: Final = _Format(
    name="SFLOAT",
    size=2,
    mantissa_bits=12,
    exponent_bits=4,
    specials={
        SFLOAT_NAN: Absent.NAN,
        SFLOAT_NRES: Absent.NRES,
        SFLOAT_POS_INF: Absent.POS_INF,
        SFLOAT_NEG_INF: Absent.NEG_INF,
        SFLOAT_RESERVED: Absent.RESERVED,
    },
)
_FLOAT: Final = _Format(
    name="FLOAT",
    size=4,
    mantissa_bits=24,
    exponent_bits=8,
    specials={
        FLOAT_NAN: Absent.NAN,
        FLOAT_NRES: Absent.NRES,
        FLOAT_POS_INF: Absent.POS_INF,
        FLOAT_NEG_INF: Absent.NEG_INF,
        FLOAT_RESERVED: Absent.RESERVED,
    },
)


def _signed(value: int, bits: int) -> int:
    """Interpret the low ``bits`` of ``value`` as a two's-complement number."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def _decode_raw(fmt: _Format, raw: int) -> Value:
    special = fmt.specials.get(raw)
    if special is not None:
        return special
    mantissa = _signed(raw, fmt.mantissa_bits)
    exponent = _signed(raw >> fmt.mantissa_bits, fmt.exponent_bits)
    return Decimal(mantissa).scaleb(exponent)


def _special_raw(fmt: _Format, value: Absent) -> int:
    for raw, special in fmt.specials.items():
        if special is value:
            return raw
    raise ValueError(f"{fmt.name} has no encoding for {value.value!r}")


def _encode_raw(fmt: _Format, value: Value | int) -> int:
    if isinstance(value, Absent):
        return _special_raw(fmt, value)
    number = Decimal(value)
    if not number.is_finite():
        raise ValueError(f"{fmt.name} numbers are finite; use an Absent special value")
    sign, digits, exp = number.as_tuple()
    assert isinstance(exp, int)
    mantissa = int("".join(map(str, digits)) or "0")
    if sign:
        mantissa = -mantissa
    exponent = exp
    if mantissa == 0:
        # Zero at the nearest representable exponent (0E+99 is still exactly zero).
        exponent = min(max(exponent, fmt.exponent_min), fmt.exponent_max)
    # Prefer the number's own exponent (keeps the device's resolution); move it only when
    # it is out of range or the mantissa does not fit, and only where no digit is lost.
    while exponent > fmt.exponent_max and fmt.mantissa_min <= mantissa * 10 <= fmt.mantissa_max:
        mantissa *= 10
        exponent -= 1
    while (
        mantissa % 10 == 0
        and exponent < fmt.exponent_max
        and (exponent < fmt.exponent_min or not fmt.mantissa_min <= mantissa <= fmt.mantissa_max)
    ):
        mantissa //= 10
        exponent += 1
    if not (
        fmt.mantissa_min <= mantissa <= fmt.mantissa_max
        and fmt.exponent_min <= exponent <= fmt.exponent_max
    ):
        raise ValueError(f"{number} cannot be represented exactly as an IEEE 11073 {fmt.name}")
    mask = (1 << fmt.mantissa_bits) - 1
    raw = ((exponent & ((1 << fmt.exponent_bits) - 1)) << fmt.mantissa_bits) | (mantissa & mask)
    if raw in fmt.specials:
        # Exponent 0 with a reserved mantissa; none of these mantissas ends in 0 and a finer
        # exponent overflows, so there is no exact alternative.
        raise ValueError(
            f"{number} cannot be represented as an IEEE 11073 {fmt.name}: "
            "its encoding is a reserved special value"
        )
    return raw


def decode_sfloat_raw(raw: int) -> Value:
    """Decode a 16-bit SFLOAT given as an unsigned integer (``0x0000``..``0xFFFF``)."""
    if not 0 <= raw <= 0xFFFF:
        raise ValueError(f"SFLOAT raw value out of range: {raw}")
    return _decode_raw(_SFLOAT, raw)


def decode_float_raw(raw: int) -> Value:
    """Decode a 32-bit FLOAT given as an unsigned integer (``0``..``0xFFFFFFFF``)."""
    if not 0 <= raw <= 0xFFFFFFFF:
        raise ValueError(f"FLOAT raw value out of range: {raw}")
    return _decode_raw(_FLOAT, raw)


def encode_sfloat_raw(value: Value | int) -> int:
    """The 16-bit raw SFLOAT for an exact decimal (or int) or a special value.

    Raises :class:`ValueError` when the number cannot be represented exactly (too many
    digits, exponent out of range) or for :attr:`Absent.MISSING`, which has no encoding.
    """
    return _encode_raw(_SFLOAT, value)


def encode_float_raw(value: Value | int) -> int:
    """The 32-bit raw FLOAT for an exact decimal (or int) or a special value.

    Raises :class:`ValueError` like :func:`encode_sfloat_raw`.
    """
    return _encode_raw(_FLOAT, value)


def _take(fmt: _Format, data: bytes, offset: int, profile: str, big_endian: bool) -> int:
    end = offset + fmt.size
    if offset < 0 or end > len(data):
        raise CodecError(
            profile,
            f"{fmt.name} at offset {offset} needs {fmt.size} bytes, payload is {len(data)}",
            bytes(data),
        )
    return int.from_bytes(data[offset:end], "big" if big_endian else "little")


def read_sfloat(
    data: bytes, offset: int = 0, *, profile: str = "ieee11073", big_endian: bool = False
) -> Value:
    """Decode the SFLOAT at ``data[offset:offset+2]`` (little-endian unless ``big_endian``).

    Raises :class:`CodecError` naming ``profile`` when the bytes are not there.
    """
    return _decode_raw(_SFLOAT, _take(_SFLOAT, data, offset, profile, big_endian))


def read_float(
    data: bytes, offset: int = 0, *, profile: str = "ieee11073", big_endian: bool = False
) -> Value:
    """Decode the FLOAT at ``data[offset:offset+4]`` (little-endian unless ``big_endian``).

    Raises :class:`CodecError` naming ``profile`` when the bytes are not there.
    """
    return _decode_raw(_FLOAT, _take(_FLOAT, data, offset, profile, big_endian))


def sfloat_bytes(value: Value | int, *, big_endian: bool = False) -> bytes:
    """The two wire bytes of an SFLOAT (little-endian unless ``big_endian``)."""
    return encode_sfloat_raw(value).to_bytes(2, "big" if big_endian else "little")


def float_bytes(value: Value | int, *, big_endian: bool = False) -> bytes:
    """The four wire bytes of a FLOAT (little-endian unless ``big_endian``)."""
    return encode_float_raw(value).to_bytes(4, "big" if big_endian else "little")


def is_special(value: Value | None) -> bool:
    """True when ``value`` is a special value (NaN, NRes, infinity, reserved, missing)."""
    return isinstance(value, Absent)
