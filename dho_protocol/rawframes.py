"""Canonical raw frames: the raw notifications a receiver can rebuild from a chunk's values.

An oximetry chunk (:class:`~agent.model.SampleChunk`) carries its decoded SpO2 and pulse
samples and, for audit, the raw PLX Continuous Measurement 0x2A5F notifications they were
decoded from. For most oximeters every one of those notifications is exactly what an encoder
makes of the decoded values: flags 0, the two SFLOATs at the channel's exponent. Batch payload
v3 (``docs/uplink-protocol.md`` section 5.5) leaves such frames out and the receiver rebuilds
the identical bytes; everything else travels as before.

Rebuild scheme 1, *PLX continuous, canonical* (:data:`SCHEME_PLX_CONTINUOUS`), of a chunk with
exactly two channels, MDC 150456 (SpO2) and MDC 149530 (pulse rate), neither a statistic, in
either order: sample ``i`` is the 5-byte frame ::

    0x00 | SFLOAT(SpO2[i]) | SFLOAT(pulse[i])       (SFLOAT little-endian)
    SFLOAT(v) = (exponent & 0xF) << 12 | (v & 0xFFF)  at the channel's exponent,
                0x07FF (NaN) for a missing sample

(IEEE 11073-20601 SFLOAT, ``shared/reference/ble-gatt.md`` sections 1.2 and 1.5; the layout of
``agent/drivers/gatt/plx.py``). A value whose mantissa does not fit 12 bits, an exponent
outside -8..7, or a mantissa at exponent 0 that is one of the reserved special values has no
canonical frame: such a chunk is never elided.

Safety does not depend on devices behaving: the box elides a row's frames only when the frames
it stored are byte for byte what :func:`canonical_frames` rebuilds (:func:`elide`), and the
receiver runs the very same function (:func:`restore`). A quirky device, a reserved bit, a
status field, a special value other than NaN, a missing or extra frame: the bytes differ, and
the frames travel as they came.

Both functions work on a row's plain msgpack (row format 1, :mod:`dho_protocol.rows`) by
splicing its last field: a row without a decode error ends with its raw-frame list, so the
rest of the row is sent, and rebuilt, byte for byte as stored. Pure code, no I/O.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal

import msgspec

from agent import codes
from agent.model import SampleChunk
from dho_protocol.errors import MalformedMessageError, MessageTooLargeError
from dho_protocol.payload import MAX_CHANNELS, MAX_INTERVAL_MS, MAX_SAMPLES

SCHEME_NONE: Final = 0
"""The row's raw frames are in the row, as they came."""
SCHEME_PLX_CONTINUOUS: Final = 1
"""The row's raw frames were left out: they are :func:`canonical_frames` of its samples."""
SCHEMES: Final = frozenset({SCHEME_NONE, SCHEME_PLX_CONTINUOUS})

_SPO2: Final = codes.SPO2.mdc
_PULSE: Final = codes.PULSE_RATE_OXIM.mdc
_FRAME_HEAD: Final = b"\xc4\x05\x00"  # msgpack bin 8 of 5 bytes, then flags 0
_NAN: Final = 0x07FF  # SFLOAT NaN
_SPECIALS: Final = frozenset({0x07FE, 0x07FF, -0x800, -0x7FF, -0x7FE})
"""Mantissas that, at exponent 0, are SFLOAT's special values (+INF, NaN, NRes, reserved,
-INF), so no number encodes to them."""
_EMPTY_LIST: Final = b"\x90"
_I64: Final = 2**63


def _sfloat(value: int, exponent: int) -> int | None:
    """The SFLOAT of ``value`` at ``exponent`` (an integer), ``None`` if it has none."""
    if not -0x800 <= value <= 0x7FF or (exponent == 0 and value in _SPECIALS):
        return None
    return ((exponent & 0xF) << 12) | (value & 0xFFF)


def _array_header(n: int) -> bytes:
    """A msgpack array header for ``n`` entries, as ``msgpack.packb`` writes it."""
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _packed(
    channels: Sequence[tuple[int, int, Sequence[int | None], object]],
) -> bytes | None:
    """Scheme 1 over ``(mdc, exponent, values, stat)`` per channel, as the msgpack list of
    binaries a row holds its raw frames in (what ``msgpack.packb`` makes of the frames);
    ``None``: no canonical frames (not an SpO2 + pulse chunk, or a value SFLOAT cannot
    carry)."""
    if len(channels) != 2:
        return None
    by_mdc = {mdc: (exp, values, stat) for mdc, exp, values, stat in channels}
    spo2, pulse = by_mdc.get(_SPO2), by_mdc.get(_PULSE)
    if spo2 is None or pulse is None or spo2[2] is not None or pulse[2] is not None:
        return None
    (e_s, v_s, _), (e_p, v_p, _) = spo2, pulse
    n = len(v_s)
    if not (-8 <= e_s <= 7 and -8 <= e_p <= 7) or len(v_p) != n or not n:
        return None
    # A device sends few distinct values: each one's SFLOAT is made once, and the frames are
    # packed in one call (a night is 28,800 of them).
    words = []
    for values, exponent in ((v_s, e_s), (v_p, e_p)):
        table: dict[int | None, int | None] = {None: _NAN}
        for v in set(values):
            if v is not None:
                table[v] = _sfloat(v, exponent)
        if None in table.values():
            return None
        words.append(list(map(table.__getitem__, values)))
    flat: list[bytes | int | None] = [None] * (3 * n)
    flat[0::3] = [_FRAME_HEAD] * n
    flat[1::3] = words[0]
    flat[2::3] = words[1]
    return _array_header(n) + _frame_struct(n).pack(*flat)


@functools.lru_cache(maxsize=8)
def _frame_struct(n: int) -> struct.Struct:
    """``n`` frames as a row holds them: bin 8 of 5 bytes and flags 0 (:data:`_FRAME_HEAD`),
    then the two SFLOATs, little-endian."""
    return struct.Struct("<" + "3sHH" * n)


def _unpacked(packed: bytes, n: int) -> tuple[bytes, ...]:
    start = len(packed) - 7 * n
    return tuple(packed[i + 2 : i + 7] for i in range(start, len(packed), 7))


def canonical_frames(samples: SampleChunk) -> tuple[bytes, ...] | None:
    """The raw 0x2A5F notifications rebuild scheme 1 makes of ``samples`` (module doc), one
    per sample, or ``None`` when the chunk has none (wrong channels, a value SFLOAT cannot
    carry, no samples)."""
    packed = _packed([(c.mdc, c.exponent, c.values, c.stat) for c in samples.channels])
    return None if packed is None else _unpacked(packed, samples.sample_count)


# -- rows ---------------------------------------------------------------------------------


@functools.cache
def _decoder() -> msgspec.msgpack.Decoder[Any]:
    """A bounded decoder of a row's samples; the rest (the raw frames too) is skipped unread."""
    whole = Annotated[int, msgspec.Meta(ge=-_I64, le=_I64 - 1)]

    def record(name: str, fields: list[Any]) -> Any:
        return msgspec.defstruct(
            f"_Raw{name}", fields, array_like=True, forbid_unknown_fields=True, gc=False
        )

    # (a tuple type with ``Any`` in a union crashes msgspec 0.23 at exit: a record instead)
    code = Annotated[int, msgspec.Meta(ge=0)] | record(
        "Code", [("mdc", whole), ("loinc", msgspec.Raw)]
    )
    channel = record(
        "Channel",
        [
            ("code", code),
            ("unit", msgspec.Raw),
            ("exponent", whole),
            ("values", Annotated[tuple[whole | None, ...], msgspec.Meta(max_length=MAX_SAMPLES)]),
            ("stat", msgspec.Raw),
        ],
    )
    samples = record(
        "Samples",
        [
            ("interval", Annotated[int, msgspec.Meta(ge=1, le=MAX_INTERVAL_MS)]),
            (
                "channels",
                Annotated[
                    tuple.__class_getitem__((channel, ...)), msgspec.Meta(max_length=MAX_CHANNELS)
                ],
            ),
        ],
    )
    row = record(
        "Row",
        [
            ("version", Literal[1]),
            ("id", msgspec.Raw),
            ("context_ref", msgspec.Raw),
            ("observations", msgspec.Raw),
            ("captured", msgspec.Raw),
            ("device_time", msgspec.Raw),
            ("status", msgspec.Raw),
            ("samples", samples | None),
            ("raw", msgspec.Raw),
            ("decode_error", msgspec.Raw, None),
        ],
    )
    return msgspec.msgpack.Decoder(row)


def _row_frames(body: bytes) -> tuple[Any, bytes | None]:
    """The decoded head of a row's plain msgpack and the packed frames scheme 1 makes of it."""
    row = _decoder().decode(body)
    if row.decode_error is not None or row.samples is None:
        return row, None
    channels = []
    for c in row.samples.channels:
        if type(c.code) is int:
            if c.code >= len(codes.ALL_CODES):
                return row, None
            mdc = codes.ALL_CODES[c.code].mdc
        else:
            mdc = c.code.mdc
        stat = None if bytes(c.stat) == b"\xc0" else c.stat  # msgpack nil
        channels.append((mdc, c.exponent, c.values, stat))
    return row, _packed(channels)


def elide(body: bytes) -> bytes | None:
    """The box's side: ``body`` (a row's plain msgpack) without its raw frames, when they
    are exactly :func:`canonical_frames` of its samples (and packed as ``msgpack.packb``
    packs them); else ``None`` (send it as it is).

    The result is ``body`` with its last field, the raw-frame list, replaced by an empty list.
    """
    try:
        row, packed = _row_frames(body)
    except msgspec.DecodeError:
        return None  # not for this function to judge: the row travels as stored
    # The frames are the canonical ones exactly when the row's raw-frame list is their packed
    # form, byte for byte; it is the row's last field (no decode error), so the row ends with it.
    if packed is None or bytes(row.raw) != packed or not body.endswith(packed):
        return None
    return body[: -len(packed)] + _EMPTY_LIST


def restore(body: bytes, budget: int) -> bytes:
    """The receiver's side: the row's plain msgpack as the box stored it, from ``body`` that
    :func:`elide` made (scheme 1): its empty raw-frame list replaced by the rebuilt frames.

    Args:
        budget: how many bytes the restored row may have (the payload's decompression budget).

    Raises:
        MalformedMessageError: ``body`` is not a row of scheme 1 (a decode error, raw frames
            present, no samples, or samples scheme 1 cannot rebuild).
        MessageTooLargeError: the restored row would exceed ``budget``.
    """
    try:
        row, packed = _row_frames(body)
    except msgspec.DecodeError as err:
        raise MalformedMessageError(f"a rebuilt row is not a valid row: {err}") from err
    if row.decode_error is not None or bytes(row.raw) != _EMPTY_LIST:
        raise MalformedMessageError("a rebuilt row must end with an empty raw-frame list")
    if packed is None:
        raise MalformedMessageError("a rebuilt row's samples have no canonical frames")
    if len(body) - 1 + len(packed) > budget:
        raise MessageTooLargeError("a rebuilt row exceeds the payload's budget")
    return body[:-1] + packed
