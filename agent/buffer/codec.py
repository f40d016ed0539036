"""Plaintext encoding of the encrypted store's rows (format version 1).

This is what goes *inside* each row's ciphertext. A reading row is the protocol's row format,
:mod:`dho_protocol.rows`: the uplink sends these rows (batch version 4, payload v4: each row
as stored, except that the sealing puts zstd-framed rows in plain, leaves out its reading id
(the envelope carries it) and an oximetry
chunk's raw frames when they are exactly the canonical encoding of its samples, for the
receiver to rebuild; ``docs/uplink-protocol.md`` 5.5), so a claim decrypts rows and hands them
to the envelope without decoding them into readings and encoding them again. The row is small
because the box keeps days of backlog on an SD card: a blood-pressure reading is about 100
bytes before encryption.

The store's row is that row, except for an oximetry chunk whose raw frames are exactly the
canonical frames of its samples: it is stored without them (framing ``REBUILT_PLAIN``,
:func:`encode_packed`) and gets them back on every read (:func:`row_plain`); the sealing sends
it as it sends any such chunk.

Device identity + patient reference (the *context*), and boot ids, change rarely, so a row
holds a small integer reference to an encrypted ``refs`` row, encoded here (see
:mod:`agent.buffer.refs`). Both use the same framing: a first byte saying plain msgpack or
zstd-compressed msgpack.
"""

from __future__ import annotations

import operator
import uuid
from datetime import datetime
from typing import Any, Final

from agent.model import DeviceIdentity, DeviceKind, Reading, Transport
from dho_protocol import rawframes, rows
from dho_protocol.errors import MalformedMessageError, MessageTooLargeError
from dho_protocol.rows import (
    FORMAT_VERSION,
    PLAIN,
    REBUILT_PLAIN,
    REBUILT_ZSTD,
    ZSTD,
    Context,
    FormatError,
    PackedReading,
    RowHead,
    frame,
    peek,
    unframe,
)

__all__ = [
    "FORMAT_VERSION",
    "PLAIN",
    "REBUILT_PLAIN",
    "REBUILT_ZSTD",
    "REF_BOOT",
    "REF_CONTEXT",
    "ZSTD",
    "Context",
    "FormatError",
    "PackedReading",
    "RowHead",
    "decode_reading",
    "decode_ref",
    "encode_boot",
    "encode_context",
    "encode_packed",
    "encode_reading",
    "key_prefix",
    "packed_and_key",
    "peek",
    "row_plain",
]


# -- the append's one pass over a reading's observations ----------------------------------

_Entry = tuple[list[Any], int, str]  # (packed row entry, mdc, natural-key part)
_ENTRIES: Final[dict[tuple[int, str | None, str, str, bool], _Entry]] = {}
_ENTRIES_CACHED: Final = 1024
_BY_MDC: Final = operator.itemgetter(1)
_PART: Final = operator.itemgetter(2)


_MONTHS: Final[dict[int, str]] = {}  # year * 16 + month -> isoformat's "YYYY-MM-"
_MONTHS_CACHED: Final = 1024
_TWO_DIGITS: Final = tuple(f"{i:02d}" for i in range(60))


def device_time_text(t: datetime) -> str:
    """``t.isoformat()``, the device time's text in :attr:`Reading.natural_key`, made
    without it for the common case (no time zone, whole seconds): ``isoformat`` formats
    through ``PyUnicode_FromFormat`` (``sprintf``), about 9,000 instructions of an append's
    97,000 per reading; here the year and month's text comes from a small cache (filled by
    ``isoformat`` itself) and the rest from a table of two digits. The same text
    (``tests/buffer/test_codec.py``)."""
    if t.tzinfo is not None or t.microsecond:
        return t.isoformat()
    month = _MONTHS.get(t.year * 16 + t.month)
    if month is None:
        if len(_MONTHS) >= _MONTHS_CACHED:
            _MONTHS.clear()
        text = t.isoformat()
        _MONTHS[t.year * 16 + t.month] = text[:8]
        return text
    two = _TWO_DIGITS
    return f"{month}{two[t.day]}T{two[t.hour]}:{two[t.minute]}:{two[t.second]}"


def key_prefix(device: DeviceIdentity) -> str:
    """The device's part of :attr:`Reading.natural_key` (for :func:`packed_and_key`)."""
    return "\x1f".join([device.transport, device.serial])


def packed_and_key(r: Reading, prefix: str) -> tuple[list[Any], bytes | None]:
    """The reading's packed observations (for :func:`encode_packed`) and its
    :attr:`~agent.model.Reading.natural_key`, in one pass over the observations.

    ``prefix`` is :func:`key_prefix` of ``r.device`` (an append computes it once per device).
    Both results equal what ``rows.encode_reading`` and ``Reading.natural_key`` compute
    (``tests/buffer/test_codec.py``); they share one cache entry per distinct observation, so
    a value's text is made once, not once for the row and once for the key. The append costs
    about 1.5 us less per reading this way (``docs/proof.md``).
    """
    packed: list[Any] = []
    entries: list[_Entry] = []
    cache = _ENTRIES
    for o in r.observations:
        v = o.value
        key = (o.mdc, o.loinc, o.unit, str(o.absent) if v is None else str(v), v is None)
        entry = cache.get(key)
        if entry is None:
            if len(cache) >= _ENTRIES_CACHED:
                cache.clear()
            # The part as Reading.natural_key writes it (model.py), the entry as the row does.
            part = f"{o.mdc}={o.absent if v is None else v}{o.unit}"
            entry = cache[key] = (rows.pack_observation(o), o.mdc, part)
        packed.append(entry[0])
        entries.append(entry)
    t = r.device_time
    if t is None or r.decode_error is not None:
        return packed, None
    if len(entries) > 1:
        entries.sort(key=_BY_MDC)  # stable, as Reading.natural_key's sort by mdc
    month = None
    if t.tzinfo is None and not t.microsecond:  # device_time_text's common case, inline
        month = _MONTHS.get(t.year * 16 + t.month)
    if month is None:
        parts = [prefix, device_time_text(t)]
    else:
        two = _TWO_DIGITS
        parts = [prefix, f"{month}{two[t.day]}T{two[t.hour]}:{two[t.minute]}:{two[t.second]}"]
    parts.extend(map(_PART, entries))
    s = r.samples
    if s is not None:
        parts.append(f"n={s.sample_count}")
        parts.append(f"dt={s.interval_ms}")
        parts.extend(f"ch={c.mdc}" for c in s.channels)
    return packed, "\x1f".join(parts).encode()


# -- the store's rows: canonical raw frames left out --------------------------------------

_encode_packed: Final = rows.encode_packed
_canonical: Final = rawframes.canonical_frames


def encode_packed(r: Reading, observations: list[Any], context_ref: int, boot_ref: int) -> bytes:
    """The store's row of ``r`` (:func:`dho_protocol.rows.encode_packed`, observations packed
    by :func:`packed_and_key`): an oximetry chunk whose raw frames are exactly the canonical
    frames of its samples (:func:`dho_protocol.rawframes.canonical_frames`, checked here byte
    for byte) is stored without them, framed :data:`REBUILT_PLAIN` (or :data:`REBUILT_ZSTD`):
    a 60-sample chunk is 188 bytes instead of about 292, and its sealed row fits four to a
    1 KiB page instead of two (``docs/buffer.md``, "Storage format"). Every other reading is
    the protocol's row as it is."""
    s = r.samples
    if s is None or not r.raw or r.decode_error is not None:
        return _encode_packed(r, observations, context_ref, boot_ref)
    rebuilt = _canonical(s) == r.raw
    return _encode_packed(r, observations, context_ref, boot_ref, rebuilt=rebuilt)


def encode_reading(r: Reading, context_ref: int, boot_ref: int) -> bytes:
    """The store's row of ``r`` (:func:`encode_packed`, the observations packed here)."""
    return encode_packed(r, rows.packed_observations(r.observations), context_ref, boot_ref)


def row_plain(data: bytes) -> bytes:
    """A stored row in the protocol's own framing (:data:`PLAIN` or :data:`ZSTD`): a row
    stored without its canonical raw frames gets them back (:func:`rawframes.restore`), byte
    for byte the row :func:`dho_protocol.rows.encode_reading` makes; any other row as it is.

    Raises:
        FormatError: a rebuilt row that does not rebuild (bad zstd, not a row of scheme 1).
    """
    try:
        body = rows.rebuilt_body(data)  # None: not a rebuilt row, nothing decompressed
        if body is None:
            return data
        return bytes((PLAIN,)) + rawframes.restore(body, rows.MAX_ROW_BYTES)
    except FormatError:
        raise
    except (MalformedMessageError, MessageTooLargeError) as err:
        raise FormatError(f"a row stored without its raw frames does not rebuild: {err}") from err


def decode_reading(data: bytes) -> PackedReading:
    """Decode one of the store's own rows (every reading the model allows reads back; a row
    stored without its canonical raw frames reads back with them)."""
    return rows.decode_reading(
        row_plain(data), lim=rows.STORE_LIMITS, items=rows.STORE_LIMITS.samples
    )


# -- refs ---------------------------------------------------------------------------------

REF_CONTEXT: Final = 0
REF_BOOT: Final = 1


def encode_context(ctx: Context) -> bytes:
    """Pack a device + patient reference row."""
    d = ctx.device
    return frame(
        [REF_CONTEXT, str(d.kind), d.manufacturer, d.model, d.serial, str(d.transport), ctx.patient]
    )


def encode_boot(boot_id: uuid.UUID) -> bytes:
    """Pack a boot id reference row."""
    return frame([REF_BOOT, boot_id.bytes])


def decode_ref(data: bytes) -> Context | uuid.UUID:
    """Unpack a reference row: a :class:`Context` or a boot id."""
    v = unframe(data)
    if v[0] == REF_CONTEXT:
        _, kind, manufacturer, model, serial, transport, patient = v
        device = DeviceIdentity(DeviceKind(kind), manufacturer, model, serial, Transport(transport))
        return Context(device, patient)
    if v[0] == REF_BOOT:
        return uuid.UUID(bytes=v[1])
    raise FormatError(f"unknown reference kind {v[0]!r}")
