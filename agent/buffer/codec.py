"""Compact plaintext encoding of readings for the encrypted store (format version 1).

This is what goes *inside* each row's ciphertext. It is small because the box keeps days of
backlog on an SD card: a blood-pressure reading is about 100 bytes before encryption.

* msgpack arrays, not maps; codes and units are interned through the append-only tables in
  :mod:`agent.codes` (``ALL_CODES``, ``KNOWN_UNITS``), with an explicit fallback for others.
* Device identity + patient reference, and boot ids, change rarely, so a row stores a small
  integer reference to an encrypted ``refs`` row (see :mod:`agent.buffer.store`).
* Decimal values are exact: an integer when the exponent is 0, else ``[mantissa, exponent]``.
* Chunks of samples are zstd-compressed; spot readings are not (too small to gain).

The first byte says how the rest is packed (:data:`PLAIN` or :data:`ZSTD`). The format is
versioned by the leading element of the array; decoders refuse versions they do not know.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Final

import msgpack
import zstandard

from agent import codes
from agent.clock import CaptureTime
from agent.model import (
    Absent,
    Channel,
    DeviceIdentity,
    DeviceKind,
    Lane,
    Observation,
    Reading,
    SampleChunk,
    Transport,
)

FORMAT_VERSION: Final = 1
PLAIN: Final = 0x00
ZSTD: Final = 0x01

_CODE_INDEX: Final = {(c.mdc, c.loinc): i for i, c in enumerate(codes.ALL_CODES)}
_UNIT_INDEX: Final = {u: i for i, u in enumerate(codes.KNOWN_UNITS)}
_EPOCH: Final = datetime(1970, 1, 1)
_COMPRESS_OVER: Final = 192  # bytes of msgpack above which zstd pays for its frame header

_zc = zstandard.ZstdCompressor(level=6, write_content_size=True, write_checksum=False)
_zd = zstandard.ZstdDecompressor()


class FormatError(ValueError):
    """Authenticated plaintext that this version cannot decode (a bug, or a newer writer)."""


@dataclass(frozen=True, slots=True)
class Context:
    """What a ``refs`` row holds for a reading: the device and the patient it belongs to."""

    device: DeviceIdentity
    patient: str


# -- small pieces -------------------------------------------------------------------------


def _pack_code(mdc: int, loinc: str | None) -> Any:
    idx = _CODE_INDEX.get((mdc, loinc))
    return idx if idx is not None else [mdc, loinc]


def _unpack_code(v: Any) -> tuple[int, str | None]:
    if isinstance(v, int):
        c = codes.ALL_CODES[v]
        return c.mdc, c.loinc
    return int(v[0]), v[1]


def _pack_unit(unit: str) -> Any:
    idx = _UNIT_INDEX.get(unit)
    return idx if idx is not None else unit


def _unpack_unit(v: Any) -> str:
    return codes.KNOWN_UNITS[v] if isinstance(v, int) else str(v)


def _pack_decimal(d: Decimal) -> Any:
    sign, digits, exponent = d.as_tuple()
    if exponent == 0 and len(digits) < 19 and (digits != (0,) or not sign):
        return int(d)  # the common case: whole numbers from a cuff or an oximeter
    assert isinstance(exponent, int)  # finite, checked by Observation
    mantissa = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    if not -(2**63) <= mantissa < 2**63 or (sign and not mantissa):
        return str(d)  # beyond what any device sends (or -0); exact all the same
    return mantissa if exponent == 0 else [mantissa, exponent]


def _unpack_decimal(v: Any) -> Decimal:
    if isinstance(v, int):
        return Decimal(v)
    if isinstance(v, str):
        return Decimal(v)
    return Decimal(int(v[0])).scaleb(int(v[1]))


def _pack_time(t: datetime) -> Any:
    offset = t.utcoffset()
    naive = t.replace(tzinfo=None)
    delta = naive - _EPOCH
    secs = delta.days * 86_400 + delta.seconds
    if offset is None and delta.microseconds == 0:
        return secs
    off_min = None if offset is None else int(offset.total_seconds()) // 60
    return [secs, delta.microseconds, off_min]


def _unpack_time(v: Any) -> datetime:
    if isinstance(v, int):
        return _EPOCH + timedelta(seconds=v)
    secs, micros, off_min = v
    t = _EPOCH + timedelta(seconds=secs, microseconds=micros)
    if off_min is None:
        return t
    tz = UTC if off_min == 0 else timezone(timedelta(minutes=off_min))
    return t.replace(tzinfo=tz)


def _pack_observation(o: Observation) -> list[Any]:
    out = [_pack_code(o.mdc, o.loinc), None, _pack_unit(o.unit)]
    if o.value is not None:
        out[1] = _pack_decimal(o.value)
    else:
        assert o.absent is not None
        out.append(str(o.absent))
    return out


def _unpack_observation(v: Sequence[Any]) -> Observation:
    mdc, loinc = _unpack_code(v[0])
    unit = _unpack_unit(v[2])
    if len(v) > 3:
        return Observation(mdc, loinc, None, unit, Absent(v[3]))
    return Observation(mdc, loinc, _unpack_decimal(v[1]), unit)


def _pack_samples(s: SampleChunk) -> list[Any]:
    return [
        s.interval_ms,
        [
            [_pack_code(c.mdc, c.loinc), _pack_unit(c.unit), c.exponent, list(c.values), c.stat]
            for c in s.channels
        ],
    ]


def _unpack_samples(v: Sequence[Any]) -> SampleChunk:
    channels = []
    for code, unit, exponent, values, stat in v[1]:
        mdc, loinc = _unpack_code(code)
        channels.append(Channel(mdc, loinc, _unpack_unit(unit), exponent, tuple(values), stat))
    return SampleChunk(interval_ms=int(v[0]), channels=tuple(channels))


def _frame(obj: Any) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    if len(body) > _COMPRESS_OVER:
        return bytes([ZSTD]) + _zc.compress(body)
    return bytes([PLAIN]) + body


def _unframe(data: bytes) -> Any:
    if not data:
        raise FormatError("empty plaintext")
    kind, body = data[0], data[1:]
    if kind == ZSTD:
        body = _zd.decompress(body, max_output_size=64 * 2**20)
    elif kind != PLAIN:
        raise FormatError(f"unknown plaintext framing {kind}")
    return msgpack.unpackb(body, raw=False, strict_map_key=True)


# -- readings -----------------------------------------------------------------------------


def encode_reading(r: Reading, context_ref: int, boot_ref: int) -> bytes:
    """Pack a reading; ``context_ref`` and ``boot_ref`` are ``refs`` row ids."""
    c = r.captured
    return _frame(
        [
            FORMAT_VERSION,
            r.id.bytes,
            context_ref,
            [_pack_observation(o) for o in r.observations],
            [c.wall_ns, boot_ref, c.mono_ns, c.synced],
            None if r.device_time is None else _pack_time(r.device_time),
            sorted(r.status),
            None if r.samples is None else _pack_samples(r.samples),
            list(r.raw),
            *(() if r.decode_error is None else (r.decode_error,)),
        ]
    )


@dataclass(frozen=True, slots=True)
class PackedReading:
    """A decoded row before its references are resolved."""

    context_ref: int
    boot_ref: int
    build: Callable[[Context, uuid.UUID, Lane], Reading]


def decode_reading(data: bytes) -> PackedReading:
    """Unpack a row's plaintext. The caller resolves the refs and calls ``build``."""
    v = _unframe(data)
    if not isinstance(v, list) or not v or v[0] != FORMAT_VERSION:
        raise FormatError("not a version-1 reading")
    _, rid, context_ref, obs, cap, dev_time, status, samples, raw, *rest = v
    decode_error = rest[0] if rest else None
    wall_ns, boot_ref, mono_ns, synced = cap

    def build(ctx: Context, boot: uuid.UUID, lane: Lane) -> Reading:
        return Reading(
            id=uuid.UUID(bytes=rid),
            device=ctx.device,
            patient=ctx.patient,
            observations=tuple(_unpack_observation(o) for o in obs),
            captured=CaptureTime(wall_ns=wall_ns, boot_id=boot, mono_ns=mono_ns, synced=synced),
            lane=lane,
            device_time=None if dev_time is None else _unpack_time(dev_time),
            status=frozenset(status),
            samples=None if samples is None else _unpack_samples(samples),
            raw=tuple(bytes(b) for b in raw),
            decode_error=decode_error,
        )

    return PackedReading(context_ref=int(context_ref), boot_ref=int(boot_ref), build=build)


# -- refs ---------------------------------------------------------------------------------

REF_CONTEXT: Final = 0
REF_BOOT: Final = 1


def encode_context(ctx: Context) -> bytes:
    """Pack a device + patient reference row."""
    d = ctx.device
    return _frame(
        [REF_CONTEXT, str(d.kind), d.manufacturer, d.model, d.serial, str(d.transport), ctx.patient]
    )


def encode_boot(boot_id: uuid.UUID) -> bytes:
    """Pack a boot id reference row."""
    return _frame([REF_BOOT, boot_id.bytes])


def decode_ref(data: bytes) -> Context | uuid.UUID:
    """Unpack a reference row: a :class:`Context` or a boot id."""
    v = _unframe(data)
    if v[0] == REF_CONTEXT:
        _, kind, manufacturer, model, serial, transport, patient = v
        device = DeviceIdentity(DeviceKind(kind), manufacturer, model, serial, Transport(transport))
        return Context(device, patient)
    if v[0] == REF_BOOT:
        return uuid.UUID(bytes=v[1])
    raise FormatError(f"unknown reference kind {v[0]!r}")
