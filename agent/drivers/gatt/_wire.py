"""Bounds-checked reading and writing helpers shared by the GATT codecs (no I/O).

Every failure is a :class:`~agent.errors.CodecError` naming the profile and keeping the raw
bytes, so a caller can store what failed for audit. Messages name fields, offsets, lengths
and flags, never a measured value (the rule in :mod:`agent.errors`): they end up in logs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from agent.drivers import ieee11073
from agent.errors import CodecError

MAX_ATTRIBUTE_LEN: Final = 512
"""The longest value a GATT attribute can hold (Core spec, Vol 3 Part F 3.2.9)."""


def fail(profile: str, data: bytes, message: str) -> CodecError:
    """A :class:`CodecError` for ``profile`` that keeps ``data`` (raise the result)."""
    return CodecError(profile, message, bytes(data))


def require_length(
    profile: str, data: bytes, parts: Sequence[tuple[str, int]], *, flags: int | None = None
) -> None:
    """Check that ``data`` is exactly as long as the fields in ``parts`` add up to.

    ``parts`` lists ``(field name, size)`` for every field the flags (or the format) call for;
    the error message spells them out, so a technician sees what the device should have sent.
    """
    need = sum(size for _, size in parts)
    if len(data) == need:
        return
    detail = " + ".join(f"{name} {size}" for name, size in parts if size)
    what = f"flags 0x{flags:02X} require" if flags is not None else "the format requires"
    raise fail(profile, data, f"payload is {len(data)} bytes, but {what} {need} ({detail})")


def require_min_length(profile: str, data: bytes, need: int, what: str) -> None:
    """Check that ``data`` holds at least ``need`` bytes (e.g. the flags byte)."""
    if len(data) < need:
        raise fail(profile, data, f"payload is {len(data)} bytes, at least {need} needed ({what})")


class Cursor:
    """Reads fields front to back from one payload; never reads past its end."""

    __slots__ = ("_data", "_pos", "profile")

    def __init__(self, profile: str, data: bytes) -> None:
        self.profile = profile
        self._data = bytes(data)
        self._pos = 0

    @property
    def data(self) -> bytes:
        """The whole payload."""
        return self._data

    @property
    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self._data) - self._pos

    def take(self, n: int, what: str) -> bytes:
        """The next ``n`` bytes, or a :class:`CodecError` saying which field is cut short."""
        if n < 0 or self._pos + n > len(self._data):
            raise fail(
                self.profile,
                self._data,
                f"{what} at offset {self._pos} needs {n} bytes, payload is {len(self._data)}",
            )
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def uint(self, n: int, what: str, *, big_endian: bool = False) -> int:
        """An unsigned ``n``-byte integer (little-endian unless ``big_endian``)."""
        return int.from_bytes(self.take(n, what), "big" if big_endian else "little")

    def u8(self, what: str) -> int:
        """An unsigned byte."""
        return self.uint(1, what)

    def s8(self, what: str) -> int:
        """A signed byte."""
        return int.from_bytes(self.take(1, what), "little", signed=True)

    def u16(self, what: str, *, big_endian: bool = False) -> int:
        """An unsigned 16-bit integer."""
        return self.uint(2, what, big_endian=big_endian)

    def u24(self, what: str) -> int:
        """An unsigned 24-bit little-endian integer."""
        return self.uint(3, what)

    def sfloat(self, what: str, *, big_endian: bool = False) -> ieee11073.Value:
        """An IEEE 11073 SFLOAT."""
        raw = self.uint(2, what, big_endian=big_endian)
        return ieee11073.decode_sfloat_raw(raw)

    def end(self) -> None:
        """Check that every byte was consumed."""
        if self._pos != len(self._data):
            raise fail(
                self.profile,
                self._data,
                f"{len(self._data) - self._pos} unexpected trailing bytes after offset "
                f"{self._pos} (payload is {len(self._data)} bytes)",
            )


def sfloat(value: ieee11073.Value, *, big_endian: bool = False) -> bytes:
    """Encode an SFLOAT for an encoder, with a message naming the problem on failure."""
    return ieee11073.sfloat_bytes(value, big_endian=big_endian)


def uint(value: int, n: int, what: str, *, big_endian: bool = False) -> bytes:
    """Encode an unsigned integer field, refusing values that do not fit."""
    if not 0 <= value < (1 << (8 * n)):
        raise ValueError(f"{what} {value} does not fit in {n} unsigned byte(s)")
    return value.to_bytes(n, "big" if big_endian else "little")


def bit_names(raw: int, names: Iterable[tuple[int, str]]) -> tuple[str, ...]:
    """The names of the set bits in ``raw``, in bit order, from ``(bit, name)`` pairs."""
    return tuple(name for bit, name in names if raw & (1 << bit))


def bits_of(names: Iterable[str], table: Iterable[tuple[int, str]]) -> int:
    """The inverse of :func:`bit_names`; unknown names are a :class:`ValueError`."""
    by_name = {name: bit for bit, name in table}
    raw = 0
    for name in names:
        if name not in by_name:
            raise ValueError(f"unknown flag name {name!r}")
        raw |= 1 << by_name[name]
    return raw
