"""One reading as a compact row (row format 1): what the box stores and what travels.

The box's encrypted buffer stores each reading as such a row (inside the row's ciphertext),
and batch payload v2 (``docs/uplink-protocol.md`` section 5) carries the very same bytes: a
claim hands the decrypted rows to the envelope as they are, with no decoding into objects and
no encoding again. The receiver decodes each row once, here, and stores it as it came.

A row refers to its device and patient (the *context*) and to its boot by small integers,
the box's own reference numbers; the payload carries the table of those references.

Layout: the first byte says how the rest is packed (:data:`PLAIN` msgpack, or :data:`ZSTD`
compressed msgpack for rows above 192 bytes, i.e. sample chunks). The msgpack array is::

    [1, id, context_ref, observations, [wall_ns, boot_ref, mono_ns, synced],
     device_time, status, samples, raw, (decode_error)]

* codes and units are interned through the append-only tables of :mod:`agent.codes`
  (``ALL_CODES``, ``KNOWN_UNITS``), with an explicit fallback (``[mdc, loinc]``, the unit text);
* a decimal value is an integer when its exponent is 0, else ``[mantissa, exponent]``, or its
  exact text when the mantissa does not fit 64 bits (or for -0);
* ``observation = [code, value, unit]`` or ``[code, None, unit, absent]``;
* ``device_time`` is whole seconds since 1970-01-01 of the device's local time, or
  ``[seconds, microseconds, utc_offset_minutes | None]``;
* ``samples = [interval_ms, [[code, unit, exponent, values, stat], ...]]``.

:func:`decode_reading` trusts nothing: every field is type- and range-checked, compressed rows
are decompressed within a budget, and the model's own checks run; anything wrong is a
:class:`FormatError` (a :class:`~dho_protocol.errors.MalformedMessageError`).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import msgpack
import zstandard

from agent import codes
from agent.clock import CaptureTime
from agent.model import (
    SAMPLE_LIMIT,
    Absent,
    Channel,
    DeviceIdentity,
    Lane,
    Observation,
    Reading,
    SampleChunk,
)
from dho_protocol.bounded import BoundedReader
from dho_protocol.errors import MalformedMessageError, MessageTooLargeError
from dho_protocol.payload import (
    MAX_CHANNELS,
    MAX_CODE_TEXT,
    MAX_DECIMAL_TEXT,
    MAX_ERROR_TEXT,
    MAX_EXPONENT,
    MAX_INTERVAL_MS,
    MAX_ITEMS,
    MAX_OBSERVATIONS,
    MAX_RAW_FRAME_BYTES,
    MAX_RAW_FRAMES,
    MAX_READING_SAMPLES,
    MAX_SAMPLES,
    MAX_STATUS_FLAGS,
    MAX_UTC_OFFSET_S,
)

FORMAT_VERSION: Final = 1
PLAIN: Final = 0x00
ZSTD: Final = 0x01
MAX_ROW_BYTES: Final = 64 * 2**20
"""The most one row may decompress to (a budget passed to :func:`unframe` may be smaller)."""

_CODE_INDEX: Final = {(c.mdc, c.loinc): i for i, c in enumerate(codes.ALL_CODES)}
_UNIT_INDEX: Final = {u: i for i, u in enumerate(codes.KNOWN_UNITS)}
_EPOCH: Final = datetime(1970, 1, 1)
_COMPRESS_OVER: Final = 192  # bytes of msgpack above which zstd pays for its frame header
_MAX_I64: Final = 2**63
_MAX_STR_BYTES: Final = 4 * MAX_ERROR_TEXT  # UTF-8: up to 4 bytes a character


class _Zstd(threading.local):
    """One compressor and decompressor per thread: zstandard's objects are not thread-safe,
    and the buffer's thread, the sealing worker and a receiver may all use this module."""

    def __init__(self) -> None:
        self.c = zstandard.ZstdCompressor(level=6, write_content_size=True, write_checksum=False)
        self.d = zstandard.ZstdDecompressor()


_zstd = _Zstd()


class FormatError(MalformedMessageError):
    """A row that does not decode: malformed, a newer format, or not a valid reading."""


@dataclass(frozen=True, slots=True)
class Context:
    """What a context reference stands for: the device and the patient a reading belongs to."""

    device: DeviceIdentity
    patient: str


# -- small pieces -------------------------------------------------------------------------


def _pack_code(mdc: int, loinc: str | None) -> Any:
    idx = _CODE_INDEX.get((mdc, loinc))
    return idx if idx is not None else [mdc, loinc]


def _int(v: object, what: str) -> int:
    if type(v) is int:
        return v
    raise FormatError(f"{what} is not an integer")


def _unpack_code(v: Any) -> tuple[int, str | None]:
    if type(v) is int:
        if 0 <= v < len(codes.ALL_CODES):
            c = codes.ALL_CODES[v]
            return c.mdc, c.loinc
        raise FormatError("code index outside the code table")
    if type(v) is list and len(v) == 2 and (v[1] is None or type(v[1]) is str):
        return _int(v[0], "MDC code"), v[1]
    raise FormatError("code is neither an index nor [mdc, loinc]")


def _pack_unit(unit: str) -> Any:
    idx = _UNIT_INDEX.get(unit)
    return idx if idx is not None else unit


def _unpack_unit(v: Any) -> str:
    if type(v) is int:
        if 0 <= v < len(codes.KNOWN_UNITS):
            return codes.KNOWN_UNITS[v]
        raise FormatError("unit index outside the unit table")
    if type(v) is str:
        return v
    raise FormatError("unit is neither an index nor a string")


def _pack_decimal(d: Decimal) -> Any:
    text = str(d)  # a whole number >= 0 prints as its digits: 4x cheaper than as_tuple()
    if text.isdigit() and len(text) < 19:
        return int(text)  # the common case: whole numbers from a cuff or an oximeter
    sign, digits, exponent = d.as_tuple()
    if exponent == 0 and len(digits) < 19 and (digits != (0,) or not sign):
        return int(d)  # the common case: whole numbers from a cuff or an oximeter
    assert isinstance(exponent, int)  # finite, checked by Observation
    mantissa = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    if not -_MAX_I64 <= mantissa < _MAX_I64 or (sign and not mantissa):
        return str(d)  # beyond what any device sends (or -0); exact all the same
    return mantissa if exponent == 0 else [mantissa, exponent]


def _unpack_decimal(v: Any) -> Decimal:
    if type(v) is int:
        return Decimal(v)
    if type(v) is str:
        if len(v) > 400:
            raise FormatError("decimal text too long")
        try:
            d = Decimal(v)
        except InvalidOperation as err:
            raise FormatError("value text is not a decimal") from err
        if not d.is_finite():
            raise FormatError("value is not finite")
        return d
    if type(v) is list and len(v) == 2:
        exponent = _int(v[1], "exponent")
        if not -400 <= exponent <= 400:
            raise FormatError("exponent out of range")
        return Decimal(_int(v[0], "mantissa")).scaleb(exponent)
    raise FormatError("value is not a decimal")


def _pack_time(t: datetime) -> Any:
    offset = t.utcoffset()
    naive = t.replace(tzinfo=None)
    delta = naive - _EPOCH
    secs = delta.days * 86_400 + delta.seconds
    if offset is None and delta.microseconds == 0:
        return secs
    off_min = None if offset is None else int(offset.total_seconds()) // 60
    return [secs, delta.microseconds, off_min]


def _pack_observation(o: Observation) -> list[Any]:
    out = [_pack_code(o.mdc, o.loinc), None, _pack_unit(o.unit)]
    if o.value is not None:
        out[1] = _pack_decimal(o.value)
    else:
        assert o.absent is not None
        out.append(str(o.absent))
    return out


def _pack_samples(s: SampleChunk) -> list[Any]:
    return [
        s.interval_ms,
        [
            [_pack_code(c.mdc, c.loinc), _pack_unit(c.unit), c.exponent, list(c.values), c.stat]
            for c in s.channels
        ],
    ]


def frame(obj: Any) -> bytes:
    """msgpack ``obj`` and frame it: plain, or zstd above 192 bytes."""
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    if len(body) > _COMPRESS_OVER:
        return bytes([ZSTD]) + _zstd.c.compress(body)
    return bytes([PLAIN]) + body


def _decompressed(data: bytes, budget: int) -> bytes:
    """The msgpack bytes inside a framed row, decompressed to at most ``budget`` bytes."""
    if not data:
        raise FormatError("empty row")
    kind, body = data[0], data[1:]
    if kind == PLAIN:
        return body
    if kind != ZSTD:
        raise FormatError(f"unknown row framing {kind}")
    try:
        size = zstandard.get_frame_parameters(body).content_size
    except zstandard.ZstdError as err:
        raise FormatError(f"row is not valid zstd: {err}") from err
    if size != zstandard.CONTENTSIZE_UNKNOWN and size > budget:
        raise MessageTooLargeError("row decompresses past the limit")
    try:
        out = _zstd.d.decompress(body, max_output_size=max(budget, 1))
    except zstandard.ZstdError as err:
        raise FormatError(f"row is not valid zstd: {err}") from err
    if len(out) > budget:
        raise MessageTooLargeError("row decompresses past the limit")
    return bytes(out)


def unframe(data: bytes, budget: int = MAX_ROW_BYTES) -> Any:
    """Undo :func:`frame` for the writer's own data (reference rows; unbounded msgpack).

    Raises:
        FormatError: unknown framing, bad zstd, or not msgpack.
        MessageTooLargeError: it decompresses past ``budget``.
    """
    try:
        return msgpack.unpackb(
            _decompressed(data, budget), raw=False, strict_map_key=True, max_ext_len=0
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as err:
        if isinstance(err, FormatError):
            raise
        raise FormatError(f"row is not msgpack: {err}") from err


# -- readings -----------------------------------------------------------------------------


def encode_reading(r: Reading, context_ref: int, boot_ref: int) -> bytes:
    """A reading as a row; ``context_ref`` and ``boot_ref`` are the writer's reference ids."""
    c = r.captured
    return frame(
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
    """A decoded row before its references are resolved: call :attr:`build`."""

    reading_id: uuid.UUID
    context_ref: int
    boot_ref: int
    build: Callable[[Context, uuid.UUID, Lane], Reading]
    size: int = 0
    """Bytes of msgpack the row unpacked from (after decompression)."""
    items: int = 0
    """msgpack items (values and list headers) the row held."""


def _fields(v: Any) -> list[Any]:
    if type(v) is not list or not 9 <= len(v) <= 10 or v[0] != FORMAT_VERSION:
        raise FormatError("not a version-1 reading row")
    rid, ctx_ref, cap = v[1], v[2], v[4]
    if type(rid) is not bytes or len(rid) != 16:
        raise FormatError("reading id is not 16 bytes")
    if type(cap) is not list or len(cap) != 4:
        raise FormatError("capture time is not [wall, boot, mono, synced]")
    _int(ctx_ref, "context reference")
    _int(cap[1], "boot reference")
    return v


@dataclass(frozen=True, slots=True)
class Limits:
    """What a row may hold. :data:`WIRE_LIMITS` are the protocol's (section 5.2): the receiver
    refuses a row beyond them. :data:`STORE_LIMITS` accept every reading the model allows:
    the box reading back its own authenticated rows (compaction, older claims)."""

    min_text: int
    code_text: int
    decimal_text: int
    error_text: int
    status_flags: int
    observations: int
    channels: int
    samples: int
    reading_samples: int
    raw_frames: int
    raw_frame_bytes: int
    exponent: int
    interval_ms: int
    utc_offset_s: int
    str_bytes: int


WIRE_LIMITS: Final = Limits(
    min_text=1,
    code_text=MAX_CODE_TEXT,
    decimal_text=MAX_DECIMAL_TEXT,
    error_text=MAX_ERROR_TEXT,
    status_flags=MAX_STATUS_FLAGS,
    observations=MAX_OBSERVATIONS,
    channels=MAX_CHANNELS,
    samples=MAX_SAMPLES,
    reading_samples=MAX_READING_SAMPLES,
    raw_frames=MAX_RAW_FRAMES,
    raw_frame_bytes=MAX_RAW_FRAME_BYTES,
    exponent=MAX_EXPONENT,
    interval_ms=MAX_INTERVAL_MS,
    utc_offset_s=MAX_UTC_OFFSET_S,
    str_bytes=4 * MAX_ERROR_TEXT,
)
_ANY: Final = 2**31 - 1
STORE_LIMITS: Final = Limits(
    min_text=0,
    code_text=_ANY,
    decimal_text=_ANY,
    error_text=_ANY,
    status_flags=_ANY,
    observations=_ANY,
    channels=_ANY,
    samples=_ANY,
    reading_samples=_ANY,
    raw_frames=_ANY,
    raw_frame_bytes=MAX_ROW_BYTES,
    exponent=_ANY,
    interval_ms=_ANY,
    utc_offset_s=86_400 * 2,
    str_bytes=MAX_ROW_BYTES,
)


class _RowReader:
    """One row read with :class:`~dho_protocol.bounded.BoundedReader` in layout order, every
    field checked for its type and range (the limits of section 5.2) before it is used."""

    def __init__(self, body: bytes, items: int, lim: Limits) -> None:
        self.lim = lim
        self.r = BoundedReader(
            body,
            max_items=max(items, 0),
            max_str=self.lim.str_bytes,
            max_bin=self.lim.raw_frame_bytes,
            max_array=max(self.lim.samples, self.lim.raw_frames),
        )

    @staticmethod
    def _text(v: object, what: str, lo: int, hi: int) -> str:
        if type(v) is not str or not lo <= len(v) <= hi:
            raise FormatError(f"{what} is not a string of {lo} to {hi} characters")
        return v

    def code(self) -> tuple[int, str | None]:
        lim = self.lim
        r = self.r
        if r.is_array():
            mdc, loinc = r.record("code", 2)
            text = (
                None
                if loinc is None
                else self._text(loinc, "LOINC code", lim.min_text, lim.code_text)
            )
            return _int_in(mdc, 0, 2**32 - 1, "MDC code"), text
        return _unpack_code(r.scalar("code"))

    def unit(self) -> str:
        lim = self.lim
        v = self.r.scalar("unit")
        if type(v) is str:
            return self._text(v, "unit", 0, lim.code_text)
        return _unpack_unit(v)

    def value(self) -> Decimal:
        lim = self.lim
        r = self.r
        if r.is_array():
            mantissa, exponent = r.record("value", 2)
            m = _int_in(mantissa, -_MAX_I64, _MAX_I64 - 1, "mantissa")
            return Decimal(m).scaleb(_int_in(exponent, -lim.exponent, lim.exponent, "exponent"))
        v = r.scalar("value")
        if type(v) is int:
            return Decimal(_int_in(v, -_MAX_I64, _MAX_I64 - 1, "value"))
        if type(v) is str:
            self._text(v, "value text", lim.min_text, lim.decimal_text)
            return _unpack_decimal(v)
        raise FormatError("value is not a decimal")

    def observation(self) -> Observation:
        lim = self.lim
        r = self.r
        n = r.array("observation", 3, 4)
        # The common case inline (code and unit from the tables, a whole value): the decoder's
        # hottest path, three observations a spot reading.
        mdc, loinc = self.code() if r.is_array() else _unpack_code(r.scalar("code"))
        if n == 3:
            if r.is_array():
                value = self.value()
            else:
                v = r.scalar("value")
                if type(v) is int and -_MAX_I64 <= v < _MAX_I64:
                    value = Decimal(v)
                elif type(v) is str:
                    self._text(v, "value text", lim.min_text, lim.decimal_text)
                    value = _unpack_decimal(v)
                else:
                    raise FormatError("value is not a decimal")
            u = r.scalar("unit")
            unit = self._text(u, "unit", 0, lim.code_text) if type(u) is str else _unpack_unit(u)
            return Observation(mdc, loinc, value, unit)
        if r.scalar("value") is not None:
            raise FormatError("a special value carries a value")
        unit = self.unit()
        absent = self._text(r.scalar("special value"), "special value", lim.min_text, lim.code_text)
        return Observation(mdc, loinc, None, unit, Absent(absent))

    def device_time(self) -> datetime | None:
        lim = self.lim
        r = self.r
        if r.is_nil():
            return None
        if not r.is_array():
            secs = _int_in(r.scalar("device time"), -(2**40), 2**40, "device time")
            micros, off_min = 0, None
        else:
            raw_s, raw_us, raw_off = r.record("device time", 3)
            secs = _int_in(raw_s, -(2**40), 2**40, "device time")
            micros = _int_in(raw_us, 0, 999_999, "device time µs")
            off_min = (
                None
                if raw_off is None
                else _int_in(raw_off, -lim.utc_offset_s // 60, lim.utc_offset_s // 60, "offset")
            )
        try:
            t = _EPOCH + timedelta(seconds=secs, microseconds=micros)
            if off_min is None:
                return t
            return t.replace(tzinfo=UTC if off_min == 0 else timezone(timedelta(minutes=off_min)))
        except (OverflowError, ValueError) as err:
            raise FormatError(f"device time out of range: {err}") from err

    def samples(self) -> SampleChunk | None:
        lim = self.lim
        r = self.r
        if r.is_nil():
            return None
        r.array("samples", 2, 2)
        interval = _int_in(r.scalar("sample interval"), 1, lim.interval_ms, "sample interval")
        channels = []
        total = 0
        for _ in range(r.array("channels", 0, lim.channels)):
            r.array("channel", 5, 5)
            mdc, loinc = self.code()
            unit = self.unit()
            exponent = _int_in(r.scalar("exponent"), -lim.exponent, lim.exponent, "exponent")
            n = r.array("channel samples", 0, lim.samples)
            total += n
            if total > lim.reading_samples:
                raise FormatError(f"more than {lim.reading_samples} samples a reading")
            values: list[int | None] = []
            for v in r.scalars(n, "channel samples"):
                if v is None:
                    values.append(None)
                elif type(v) is int and -SAMPLE_LIMIT < v < SAMPLE_LIMIT:
                    values.append(v)
                else:
                    raise FormatError("a sample is not an integer in range")
            stat = r.scalar("statistic")
            channels.append(
                Channel(
                    mdc,
                    loinc,
                    unit,
                    exponent,
                    tuple(values),
                    None
                    if stat is None
                    else self._text(stat, "statistic", lim.min_text, lim.code_text),
                )
            )
        return SampleChunk(interval, tuple(channels))


def _int_in(v: object, lo: int, hi: int, what: str) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise FormatError(f"{what} is not an integer from {lo} to {hi}")
    return v


def decode_reading(
    data: bytes, budget: int = MAX_ROW_BYTES, items: int = MAX_ITEMS, *, lim: Limits | None = None
) -> PackedReading:
    """Decode a row, bounded; the caller resolves its references and calls ``build``.

    Args:
        budget: how many bytes a compressed row may decompress to.
        items: how many msgpack items (values and list headers) it may hold.

    Raises:
        FormatError: anything outside the layout or its limits, or not a valid reading.
        MessageTooLargeError: it decompresses past ``budget`` or holds more than ``items``.
    """
    lim = lim or WIRE_LIMITS
    body = _decompressed(data, budget)
    rr = _RowReader(body, items, lim)
    r = rr.r
    try:
        n = r.array("row", 9, 10)
        if r.scalar("row format") != FORMAT_VERSION:
            raise FormatError("not a version-1 reading row")
        rid = r.binary("reading id", 16, 16)
        context_ref = _int_in(r.scalar("context reference"), 0, _MAX_I64 - 1, "context ref")
        observations = tuple(
            rr.observation() for _ in range(r.array("observations", 0, lim.observations))
        )
        r.array("capture time", 4, 4)
        raw_wall, raw_boot, raw_mono, synced = r.scalars(4, "capture time")
        wall_ns = _int_in(raw_wall, 0, _MAX_I64 - 1, "wall time")
        boot_ref = _int_in(raw_boot, 0, _MAX_I64 - 1, "boot reference")
        mono_ns = _int_in(raw_mono, 0, _MAX_I64 - 1, "boot time")
        if type(synced) is not bool:
            raise FormatError("synced is not a boolean")
        device_time = rr.device_time()
        k = r.array("status", 0, lim.status_flags)
        status = frozenset(
            rr._text(v, "status flag", lim.min_text, lim.code_text) for v in r.scalars(k, "status")
        )
        samples = rr.samples()
        raw = r.binaries(r.array("raw frames", 0, lim.raw_frames), "raw frame", lim.raw_frame_bytes)
        decode_error = (
            rr._text(r.scalar("decode error"), "decode error", lim.min_text, lim.error_text)
            if n == 10
            else None
        )
        r.finish("row")
    except FormatError:
        raise
    except MalformedMessageError as err:  # from the reader: a row that is not a row
        raise FormatError(str(err)) from err
    except (ValueError, TypeError, ArithmeticError) as err:
        raise FormatError(f"row does not make a valid reading: {err}") from err
    reading_id = uuid.UUID(bytes=rid)

    def build(ctx: Context, boot: uuid.UUID, lane: Lane) -> Reading:
        try:
            return Reading(
                id=reading_id,
                device=ctx.device,
                patient=ctx.patient,
                observations=observations,
                captured=CaptureTime(wall_ns=wall_ns, boot_id=boot, mono_ns=mono_ns, synced=synced),
                lane=lane,
                device_time=device_time,
                status=status,
                samples=samples,
                raw=raw,
                decode_error=decode_error,
            )
        except (ValueError, TypeError) as err:
            raise FormatError(f"row does not make a valid reading: {err}") from err

    return PackedReading(reading_id, context_ref, boot_ref, build, len(body), items - r.left)


@dataclass(frozen=True, slots=True)
class RowHead:
    """What a claim needs to know of a row without decoding it into a reading."""

    reading_id: uuid.UUID
    context_ref: int
    boot_ref: int
    has_raw: bool


def peek(data: bytes) -> RowHead:
    """The id and references of a row (msgpack only: no reading is built).

    Raises:
        FormatError: not a row.
    """
    v = _fields(unframe(data))
    return RowHead(uuid.UUID(bytes=v[1]), v[2], v[4][1], bool(v[8]))
