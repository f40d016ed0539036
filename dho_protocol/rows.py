"""One reading as a compact row (row format 1): what the box stores and what travels.

The box's encrypted buffer stores each reading as such a row (inside the row's ciphertext),
and batch payloads v4, v3 and v2 (``docs/uplink-protocol.md`` section 5) carry the same bytes
(rows put in plain; v4, what boxes send, leaves out the row's id, 5.6, and like v3 an
oximetry chunk's raw frames when they are exactly the canonical encoding of its samples;
section 5.5): a claim hands the
decrypted rows to the envelope as they are, with no decoding into objects and no encoding
again. The receiver decodes each row once, here, and stores it as it came.

A row refers to its device and patient (the *context*) and to its boot by small integers,
the box's own reference numbers; the payload carries the table of those references.

Layout: the first byte says how the rest is packed (:data:`PLAIN` msgpack, or :data:`ZSTD`
compressed msgpack for rows above 192 bytes, i.e. sample chunks). The box's store has two more
framings, never sent: :data:`REBUILT_PLAIN` and :data:`REBUILT_ZSTD`, a row whose raw frames
are left out because they are exactly the canonical frames of its samples (an oximetry chunk,
:mod:`dho_protocol.rawframes`): the store keeps a 60-sample chunk in about 190 bytes instead
of 290, and the sealing sends it as payload v4 sends every such chunk (plain, frames left out,
scheme byte 1), so the wire does not change. The msgpack array is::

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

:func:`decode_reading` trusts nothing: the row is read by a typed msgspec decoder of this
layout (C; every field type- and range-checked as it is read, a list refused at its header when
it is longer than its limit), compressed rows are decompressed within a budget, and the model's
own checks run; anything wrong is a :class:`FormatError` (a
:class:`~dho_protocol.errors.MalformedMessageError`). The bytes are plain msgpack: msgspec only
reads them.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Final, Literal

import msgpack
import msgspec
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
REBUILT_PLAIN: Final = 0x02
"""The box's store only, never on the wire: plain msgpack of a row whose raw frames were left
out because they are the canonical frames of its samples (rebuild scheme 1,
:mod:`dho_protocol.rawframes`): the row ends with an empty raw-frame list, and the row the
framing stands for is that body with the rebuilt frames in its place (:func:`rebuilt_body`)."""
REBUILT_ZSTD: Final = 0x03
""":data:`REBUILT_PLAIN`, zstd-compressed (an elided body above 192 bytes: a long chunk)."""
REBUILT: Final = frozenset({REBUILT_PLAIN, REBUILT_ZSTD})
MAX_ROW_BYTES: Final = 64 * 2**20
"""The most one row may decompress to (a budget passed to :func:`unframe` may be smaller)."""

_CODE_INDEX: Final = {(c.mdc, c.loinc): i for i, c in enumerate(codes.ALL_CODES)}
_UNIT_INDEX: Final = {u: i for i, u in enumerate(codes.KNOWN_UNITS)}
_EPOCH: Final = datetime(1970, 1, 1)
_COMPRESS_OVER: Final = 192  # bytes of msgpack above which zstd pays for its frame header
_MAX_I64: Final = 2**63


class _Zstd(threading.local):
    """One compressor, decompressor and msgpack encoder per thread: they are not thread-safe,
    and the buffer's thread, the sealing worker and a receiver may all use this module."""

    def __init__(self) -> None:
        self.c = zstandard.ZstdCompressor(level=6, write_content_size=True, write_checksum=False)
        self.d = zstandard.ZstdDecompressor()
        # msgspec writes the same msgpack bytes as ``msgpack.Packer(use_bin_type=True)`` for
        # what a row holds (``tests/buffer/test_codec.py``), about 5x faster.
        self.e = msgspec.msgpack.Encoder()


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


def _pack_unit(unit: str) -> Any:
    idx = _UNIT_INDEX.get(unit)
    return idx if idx is not None else unit


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
    if t.tzinfo is None:  # the common case: a device's local clock
        delta = t - _EPOCH
        if not delta.microseconds:
            return delta.days * 86_400 + delta.seconds
    offset = t.utcoffset()
    naive = t.replace(tzinfo=None)
    delta = naive - _EPOCH
    secs = delta.days * 86_400 + delta.seconds
    if offset is None and delta.microseconds == 0:
        return secs
    off_min = None if offset is None else int(offset.total_seconds()) // 60
    return [secs, delta.microseconds, off_min]


def pack_observation(o: Observation) -> list[Any]:
    """An observation's row entry: ``[code, value, unit]`` or ``[code, None, unit, absent]``."""
    out = [_pack_code(o.mdc, o.loinc), None, _pack_unit(o.unit)]
    if o.value is not None:
        out[1] = _pack_decimal(o.value)
    else:
        assert o.absent is not None
        out.append(str(o.absent))
    return out


_PACKED: Final[dict[tuple[int, str | None, str, str, bool], list[Any]]] = {}
_PACKED_CACHED: Final = 1024


def packed_observations(obs: tuple[Observation, ...]) -> list[list[Any]]:
    """The packed form of each observation (:func:`pack_observation`), from a cache: a
    device sends few distinct values, and a decimal's text names it exactly (its digits and
    exponent), so ``(code, unit, text)`` says what the packed entry is."""
    out = []
    cache = _PACKED
    for o in obs:
        v = o.value
        key = (o.mdc, o.loinc, o.unit, str(o.absent) if v is None else str(v), v is None)
        packed = cache.get(key)
        if packed is None:
            if len(cache) >= _PACKED_CACHED:
                cache.clear()
            packed = cache[key] = pack_observation(o)
        out.append(packed)
    return out


def _pack_samples(s: SampleChunk) -> list[Any]:
    return [
        s.interval_ms,
        [
            [_pack_code(c.mdc, c.loinc), _pack_unit(c.unit), c.exponent, c.values, c.stat]
            for c in s.channels
        ],
    ]


def frame(obj: Any) -> bytes:
    """msgpack ``obj`` and frame it: plain, or zstd above 192 bytes."""
    body: bytes = _zstd.e.encode(obj)
    if len(body) > _COMPRESS_OVER:
        return b"\x01" + _zstd.c.compress(body)
    return b"\x00" + body


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
    return encode_packed(r, packed_observations(r.observations), context_ref, boot_ref)


def encode_packed(
    r: Reading,
    observations: list[Any],
    context_ref: int,
    boot_ref: int,
    *,
    rebuilt: bool = False,
) -> bytes:
    """:func:`encode_reading` with the reading's observations already packed (each entry as
    :func:`pack_observation` makes it, in order): for a writer that packed them in a pass of
    its own (the buffer's append, which derives the natural key in the same pass).

    ``rebuilt``: the caller has checked that ``r.raw`` is exactly the canonical frames of its
    samples (:func:`dho_protocol.rawframes.canonical_frames`); the row leaves them out and is
    framed :data:`REBUILT_PLAIN` or :data:`REBUILT_ZSTD` (the box's store only)."""
    c = r.captured
    t = r.device_time
    if t is None:
        packed_time: Any = None
    elif t.tzinfo is None and not t.microsecond:  # _pack_time's common case, inline
        delta = t - _EPOCH
        packed_time = delta.days * 86_400 + delta.seconds
    else:
        packed_time = _pack_time(t)
    row = [
        FORMAT_VERSION,
        r.id.int.to_bytes(16, "big"),  # r.id.bytes without the property's Python frame
        context_ref,
        observations,
        [c.wall_ns, boot_ref, c.mono_ns, c.synced],
        packed_time,
        sorted(r.status) if r.status else [],
        None if r.samples is None else _pack_samples(r.samples),
        () if rebuilt else r.raw,  # a tuple packs as the same msgpack array a list does
    ]
    if r.decode_error is not None:
        if rebuilt:
            raise ValueError("a row with a decode error keeps its raw frames")
        row.append(r.decode_error)
    z = _zstd  # frame(row), inline: the box's append encodes every reading here
    body: bytes = z.e.encode(row)
    if len(body) > _COMPRESS_OVER:
        return (b"\x03" if rebuilt else b"\x01") + z.c.compress(body)
    return (b"\x02" if rebuilt else b"\x00") + body


def rebuilt_body(data: bytes, budget: int = MAX_ROW_BYTES) -> bytes | None:
    """The plain msgpack of a :data:`REBUILT_PLAIN` or :data:`REBUILT_ZSTD` row (its raw
    frames left out, to be rebuilt by :func:`dho_protocol.rawframes.restore`), decompressed
    within ``budget``; ``None`` for any other framing.

    Raises:
        FormatError: bad zstd.
        MessageTooLargeError: it decompresses past ``budget``.
    """
    if not data or data[0] not in REBUILT:
        return None
    return _decompressed(bytes((data[0] - REBUILT_PLAIN,)) + data[1:], budget)


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


@functools.lru_cache(maxsize=4)
def _row_decoder(lim: Limits) -> msgspec.msgpack.Decoder[Any]:
    """A typed msgspec decoder of the row layout under ``lim`` (built once per limits).

    Every field's type and range is a constraint of the decoder's schema, checked in C while
    the row is read: a list is refused at its header when it is longer than its limit (before
    any element is read), a value of the wrong type (a list where a number goes, a bool for
    an integer) at once, and extra entries in a fixed-shape record too. Nothing outside the
    schema is ever built, so a row costs at most a small multiple of its own bytes.
    """

    def text(lo: int, hi: int) -> Any:
        return Annotated[str, msgspec.Meta(min_length=lo, max_length=hi)]

    def whole(lo: int, hi: int) -> Any:
        return Annotated[int, msgspec.Meta(ge=lo, le=hi)]

    def many(item: Any, most: int) -> Any:
        """A list of at most ``most`` entries of ``item``, decoded as a tuple."""
        return Annotated[tuple.__class_getitem__((item, ...)), msgspec.Meta(max_length=most)]

    def record(name: str, fields: list[Any]) -> Any:
        return msgspec.defstruct(
            f"_{name}", fields, array_like=True, forbid_unknown_fields=True, frozen=True, gc=False
        )

    pair_code = record(
        "CodePair",
        [("mdc", whole(0, 2**32 - 1)), ("loinc", text(lim.min_text, lim.code_text) | None)],
    )
    pair_value = record(
        "ValuePair",
        [
            ("mantissa", whole(-_MAX_I64, _MAX_I64 - 1)),
            ("exponent", whole(-lim.exponent, lim.exponent)),
        ],
    )
    code = whole(0, len(codes.ALL_CODES) - 1) | pair_code
    unit = whole(0, len(codes.KNOWN_UNITS) - 1) | text(0, lim.code_text)
    observation = record(
        "Observation",
        [
            ("code", code),
            (
                "value",
                whole(-_MAX_I64, _MAX_I64 - 1)
                | text(lim.min_text, lim.decimal_text)
                | pair_value
                | None,
            ),
            ("unit", unit),
            # no None in the type: a fourth entry that is nil is refused (the default is None)
            ("absent", text(lim.min_text, lim.code_text), None),
        ],
    )
    off = lim.utc_offset_s // 60
    device_time = record(
        "DeviceTime",
        [
            ("secs", whole(-(2**40), 2**40)),
            ("micros", whole(0, 999_999)),
            ("offset", whole(-off, off) | None),
        ],
    )
    sample = Annotated[int, msgspec.Meta(gt=-SAMPLE_LIMIT, lt=SAMPLE_LIMIT)] | None
    channel = record(
        "Channel",
        [
            ("code", code),
            ("unit", unit),
            ("exponent", whole(-lim.exponent, lim.exponent)),
            ("values", many(sample, lim.samples)),
            ("stat", text(lim.min_text, lim.code_text) | None),
        ],
    )
    samples = record(
        "Samples",
        [
            ("interval", whole(1, lim.interval_ms)),
            ("channels", many(channel, lim.channels)),
        ],
    )
    capture = record(
        "Capture",
        [
            ("wall_ns", whole(0, _MAX_I64 - 1)),
            ("boot_ref", whole(0, _MAX_I64 - 1)),
            ("mono_ns", whole(0, _MAX_I64 - 1)),
            ("synced", bool),
        ],
    )
    row = record(
        "Row",
        [
            ("version", Literal[1]),
            ("id", Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]),
            ("context_ref", whole(0, _MAX_I64 - 1)),
            ("observations", many(observation, lim.observations)),
            ("captured", capture),
            ("device_time", whole(-(2**40), 2**40) | device_time | None),
            ("status", many(text(lim.min_text, lim.code_text), lim.status_flags)),
            ("samples", samples | None),
            (
                "raw",
                many(
                    Annotated[bytes, msgspec.Meta(max_length=lim.raw_frame_bytes)], lim.raw_frames
                ),
            ),
            ("decode_error", text(lim.min_text, lim.error_text), None),
        ],
    )
    return msgspec.msgpack.Decoder(row)


_OBSERVATIONS: Final[dict[Any, Observation]] = {}
_OBSERVATIONS_CACHED: Final = 1024


def _code(c: Any) -> tuple[int, str | None]:
    if type(c) is int:
        known = codes.ALL_CODES[c]
        return known.mdc, known.loinc
    return c.mdc, c.loinc


def _array_items(row: Any) -> int:
    """msgpack items (values and list headers) of a decoded row: each list counts its
    entries and its own header, as :class:`~dho_protocol.bounded.BoundedReader` counts."""
    n = 11 if row.decode_error is not None else 10
    n += len(row.observations) + 1 + 5 + len(row.status) + 1 + len(row.raw) + 1
    for o in row.observations:
        n += 4 if o.absent is None else 5
        if type(o.code) is not int:
            n += 3
        v = o.value
        if v is not None and type(v) is not int and type(v) is not str:
            n += 3
    if type(row.device_time) is not int and row.device_time is not None:
        n += 4
    s = row.samples
    if s is not None:
        n += 3 + len(s.channels) + 1
        for c in s.channels:
            n += 6 + len(c.values) + 1 + (0 if type(c.code) is int else 3)
    return n


def decode_reading(
    data: bytes,
    budget: int = MAX_ROW_BYTES,
    items: int = MAX_ITEMS,
    *,
    lim: Limits | None = None,
    expect: uuid.UUID | None = None,
) -> PackedReading:
    """Decode a row, bounded; the caller resolves its references and calls ``build``.

    The row is read by a typed msgspec decoder (:func:`_row_decoder`): every field is type-
    and range-checked against ``lim`` (the limits of section 5.2) while it is read, before
    anything is built from it; then the model's own checks run.

    Args:
        budget: how many bytes a compressed row may decompress to.
        items: how many msgpack items (values and list headers) it may hold.
        expect: the id the row must carry (an envelope's); it is then the reading's id.

    Raises:
        FormatError: anything outside the layout or its limits, or not a valid reading, or
            a row whose id is not ``expect``.
        MessageTooLargeError: it decompresses past ``budget`` or holds more than ``items``.
    """
    lim = lim or WIRE_LIMITS
    body = _decompressed(data, budget)
    try:
        row = _row_decoder(lim).decode(body)
    except msgspec.DecodeError as err:  # ValidationError is one: a type, range or length
        raise FormatError(f"not a valid version-1 reading row: {err}") from err
    used = _array_items(row)
    if used > items:
        raise MessageTooLargeError("the message holds more items than the limit allows")
    units = codes.KNOWN_UNITS
    try:
        observations: list[Observation] = []
        cache = _OBSERVATIONS
        for o in row.observations:
            # Observations are values, and a device sends few distinct ones: the decoded
            # entry (a frozen msgspec struct of this decoder's own type) is the key.
            known = cache.get(o)
            if known is not None:
                observations.append(known)
                continue
            if len(cache) >= _OBSERVATIONS_CACHED:
                cache.clear()
            mdc, loinc = _code(o.code)
            u = o.unit
            unit = units[u] if type(u) is int else u
            v = o.value
            if o.absent is not None:
                if v is not None:
                    raise FormatError("a special value carries a value")
                observations.append(ob := Observation(mdc, loinc, None, unit, Absent(o.absent)))
                cache[o] = ob
                continue
            if type(v) is int:
                value = Decimal(v)
            elif type(v) is str:
                value = _unpack_decimal(v)
            elif v is None:
                raise FormatError("value is not a decimal")
            else:
                value = Decimal(v.mantissa).scaleb(v.exponent)
            observations.append(ob := Observation(mdc, loinc, value, unit))
            cache[o] = ob
        dt = row.device_time
        device_time: datetime | None = None
        if dt is not None:
            if type(dt) is int:
                secs, micros, off_min = dt, 0, None
            else:
                secs, micros, off_min = dt.secs, dt.micros, dt.offset
            try:
                device_time = _EPOCH + timedelta(seconds=secs, microseconds=micros)
            except OverflowError as err:
                raise FormatError(f"device time out of range: {err}") from err
            if off_min is not None:
                device_time = device_time.replace(
                    tzinfo=UTC if off_min == 0 else timezone(timedelta(minutes=off_min))
                )
        samples: SampleChunk | None = None
        s = row.samples
        if s is not None:
            channels: list[Channel] = []
            total = 0
            for c in s.channels:
                total += len(c.values)
                mdc, loinc = _code(c.code)
                u = c.unit
                channels.append(
                    Channel(
                        mdc, loinc, units[u] if type(u) is int else u, c.exponent, c.values, c.stat
                    )
                )
            if total > lim.reading_samples:
                raise FormatError(f"more than {lim.reading_samples} samples a reading")
            samples = SampleChunk(s.interval, tuple(channels))
    except FormatError:
        raise
    except (ValueError, TypeError, ArithmeticError, OverflowError) as err:
        raise FormatError(f"row does not make a valid reading: {err}") from err
    if expect is None:
        reading_id = uuid.UUID(bytes=row.id)
    elif expect.bytes == row.id:
        reading_id = expect
    else:
        raise FormatError("a row's id is not the envelope's")
    cap = row.captured
    wall_ns, mono_ns, synced = cap.wall_ns, cap.mono_ns, cap.synced
    obs = tuple(observations)
    status = frozenset(row.status)
    raw: tuple[bytes, ...] = row.raw
    decode_error: str | None = row.decode_error

    def build(ctx: Context, boot: uuid.UUID, lane: Lane) -> Reading:
        try:
            return Reading(
                id=reading_id,
                device=ctx.device,
                patient=ctx.patient,
                observations=obs,
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

    return PackedReading(reading_id, row.context_ref, cap.boot_ref, build, len(body), used)


@dataclass(frozen=True, slots=True)
class RowHead:
    """What a claim needs to know of a row without decoding it into a reading."""

    reading_id: uuid.UUID
    context_ref: int
    boot_ref: int
    has_raw: bool


def peek(data: bytes) -> RowHead:
    """The id and references of a row (msgpack only: no reading is built), also of a row the
    box stored without its canonical raw frames (:data:`REBUILT_PLAIN`: it has raw frames, the
    receiver rebuilds them).

    Raises:
        FormatError: not a row.
    """
    rebuilt = rebuilt_body(data)
    try:
        h = _head_decoder().decode(
            _decompressed(data, MAX_ROW_BYTES) if rebuilt is None else rebuilt
        )
    except msgspec.DecodeError as err:
        raise FormatError(f"not a version-1 reading row: {err}") from err
    frames = bytes(memoryview(h.raw)[:5])  # the list header (fix, 16 or 32 bit count)
    has_raw = rebuilt is not None or not frames.startswith(
        (b"\x90", b"\xdc\x00\x00", b"\xdd\x00\x00\x00\x00")
    )
    return RowHead(uuid.UUID(bytes=h.id), h.context_ref, h.captured[1], has_raw)


@functools.cache
def _head_decoder() -> msgspec.msgpack.Decoder[Any]:
    """A decoder of a row's id, references and raw frames; the rest is skipped unread
    (:class:`msgspec.Raw`), so a claim builds nothing of the reading."""
    whole = Annotated[int, msgspec.Meta(ge=0, le=_MAX_I64 - 1)]
    head = msgspec.defstruct(
        "_RowHead",
        [
            ("version", Literal[1]),
            ("id", Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]),
            ("context_ref", whole),
            ("observations", msgspec.Raw),
            ("captured", tuple[Any, whole, Any, Any]),
            ("device_time", msgspec.Raw),
            ("status", msgspec.Raw),
            ("samples", msgspec.Raw),
            ("raw", msgspec.Raw),
            ("decode_error", msgspec.Raw, msgspec.Raw()),
        ],
        array_like=True,
        forbid_unknown_fields=True,
        gc=False,
    )
    return msgspec.msgpack.Decoder(head)
