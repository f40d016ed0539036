"""Batch payloads v2, v3 and v4 (v4 is what boxes send, below): the box's stored rows as they
are, with their reference tables.

Version 1 (:mod:`dho_protocol.payload`) re-encoded every reading for the wire, so a box had to
decode its stored rows into objects and encode them again for each batch. Version 2 carries
the stored rows themselves (:mod:`dho_protocol.rows`); the zstd frame around the payload still
compresses across them. The payload is the msgpack array::

    [2, contexts, boots, anchor, lanes, rows]
    contexts = [[context_ref, kind, manufacturer, model, serial, transport, patient], ...]
    boots    = [[boot_ref, boot_id (bin 16)], ...]
    anchor   = null | [boot_id (bin 16), offset_ns]
    lanes    = bin, one byte per row (the lane of each reading)
    rows     = [row (bin), ...]            # in the order of the envelope's reading ids

``context_ref`` and ``boot_ref`` are the box's own reference numbers (only meaningful inside
one payload). ``anchor`` is the box's clock anchor at sealing (its boot id and wall minus boot
clock, once the clock is synchronised): a reading captured in that boot before the clock was
synchronised gets its wall time re-based on it (``wall = mono + offset``), is marked synced
and flagged ``gateway-time-corrected``; the receiver applies it while decoding, exactly as a
v1 box did before encoding.

The receiver stores each reading as a one-row v2 payload (:attr:`DecodedRows.bodies`): the
row as received plus its context, boot and anchor, so nothing is encoded again.

Payload v3 (what boxes sent with batch version 3) is v2 with one more entry::

    [3, contexts, boots, anchor, lanes, rebuilt, rows]
    rebuilt  = bin, one byte per row: 0 the row's raw frames are in it as they came;
               1 they were left out and are the canonical 0x2A5F frames of its samples
               (:mod:`dho_protocol.rawframes`, rebuild scheme 1)

A row marked 1 is plain (framing byte 0x00) and ends with an empty raw-frame list; the
receiver puts the rebuilt frames back (:func:`~dho_protocol.rawframes.restore`) before it
decodes the row, so it decodes and stores exactly the row the box stored, as from v2.

Payload v4 (what boxes send since batch version 4) has v3's layout and leaves out what the
envelope already says: the reading id inside each row. Every row's id is the envelope's
reading id of its position (a receiver refuses any other), so the box sends it once, in
the envelope, where it is signed, and not a second time inside the compressed payload,
where its 62 random bits are 16 bytes zstd cannot shrink::

    [4, contexts, boots, anchor, lanes, rebuilt, rows]
    row      = as in v3, but a plain row may have nil (0xc0) for its id (item 1): the
               receiver puts the envelope's id back (:func:`put_id`) as ``bin 8`` of 16
               bytes, the only way a row's id is packed, before anything else

The box leaves the id out of every plain row whose id is packed that way and is the
envelope's (:func:`drop_id`); a row it cannot judge keeps its id, and the receiver takes
a row with its id as in v3. Either way the receiver decodes and stores the row byte for
byte as the box stored it.

The box's store keeps a chunk whose raw frames are the canonical ones without them, framed
:data:`~dho_protocol.rows.REBUILT_PLAIN` (or ``REBUILT_ZSTD``; ``agent.buffer.codec``):
:func:`elide_rows` sends such a row plain and marked 1, the very bytes it makes of the same
chunk stored with its frames, and :func:`encode_rows` puts the frames back into any such row
it gets unmarked (a v2 payload). Those framings never go on the wire.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from agent.clock import ClockAnchor
from agent.model import DeviceIdentity, DeviceKind, Lane, Reading, Transport
from dho_protocol.bounded import BoundedReader
from dho_protocol.errors import MalformedMessageError
from dho_protocol.payload import MAX_CODE_TEXT, MAX_ITEMS, MAX_TEXT
from dho_protocol.rawframes import SCHEME_NONE, SCHEME_PLX_CONTINUOUS, SCHEMES, elide, restore
from dho_protocol.rows import (
    MAX_ROW_BYTES,
    PLAIN,
    Context,
    FormatError,
    decode_reading,
    rebuilt_body,
)

PAYLOAD_VERSION: Final = 2
"""The version of the one-row payloads a receiver stores (and of v2 batches)."""
REBUILT_PAYLOAD_VERSION: Final = 3
"""Payload v3: v2 with canonical raw frames left out (module doc)."""
IDLESS_PAYLOAD_VERSION: Final = 4
"""Payload v4: v3 with the rows' reading ids left out (the envelope has them; module doc)."""
_ID_AT: Final = 3
"""Where a plain row's id starts: framing byte, array header (9 or 10 items), row format."""
_ID_PACKED: Final = b"\xc4\x10"
"""msgpack ``bin 8`` of 16 bytes: how a row's id is packed."""
_NIL: Final = b"\xc0"
_LANES: Final = frozenset(int(lane) for lane in Lane)
_MAX_TABLE: Final = 10_000  # contexts, boots: at most one per reading


@dataclass(frozen=True, slots=True)
class WireRows:
    """A claim's rows ready for a v2 or v3 payload.

    Attributes:
        reading_ids: the id of each row, in order (they go into the envelope).
        rows: the rows (:mod:`dho_protocol.rows`), as stored.
        lanes: one byte per row.
        contexts, boots: what the rows' reference numbers stand for (at least those used).
    """

    reading_ids: tuple[uuid.UUID, ...]
    rows: tuple[bytes, ...]
    lanes: bytes
    contexts: Mapping[int, Context]
    boots: Mapping[int, uuid.UUID]


def _context_entry(ref: int, ctx: Context) -> list[Any]:
    d = ctx.device
    return [ref, str(d.kind), d.manufacturer, d.model, d.serial, str(d.transport), ctx.patient]


def _anchor_entry(anchor: ClockAnchor | None) -> list[Any] | None:
    return None if anchor is None else [anchor.boot_id.bytes, anchor.offset_ns]


def _is_plain_row_head(row: bytes) -> bool:
    """``row`` starts as a plain row of format 1 does: framing, a 9- or 10-item array, 1."""
    return len(row) > _ID_AT and row[0] == PLAIN and row[1] in (0x99, 0x9A) and row[2] == 1


def drop_id(row: bytes, reading_id: uuid.UUID) -> bytes:
    """The box's side of payload v4: ``row`` with its id replaced by nil when it is plain
    and its id is ``reading_id`` packed as ``bin 8`` (17 bytes fewer); else ``row``."""
    end = _ID_AT + len(_ID_PACKED) + 16
    if _is_plain_row_head(row) and row[_ID_AT:end] == _ID_PACKED + reading_id.bytes:
        return row[:_ID_AT] + _NIL + row[end:]
    return row


def put_id(row: bytes, reading_id: uuid.UUID) -> bytes:
    """The receiver's side of payload v4: ``row`` with ``reading_id`` back in place of a nil
    id (:func:`drop_id` undone, byte for byte); any other row as it is (its id is checked
    against the envelope's when it is decoded)."""
    if _is_plain_row_head(row) and row[_ID_AT : _ID_AT + 1] == _NIL:
        return row[:_ID_AT] + _ID_PACKED + reading_id.bytes + row[_ID_AT + 1 :]
    return row


def encode_rows(
    w: WireRows,
    anchor: ClockAnchor | None,
    rebuilt: bytes | None = None,
    *,
    idless: bool = False,
) -> bytes:
    """The uncompressed v2 payload of ``w``, or with ``rebuilt`` (one scheme byte per row,
    :func:`elide_rows`) the v3 payload, or with ``idless`` too the v4 payload (each row's id
    left out where :func:`drop_id` can). A row the box stored without its canonical raw
    frames that :func:`elide_rows` did not take goes with its frames, plain.

    Raises:
        ValueError: ``w`` is inconsistent (a bug of the caller).
    """
    if not len(w.rows) == len(w.lanes) == len(w.reading_ids):
        raise ValueError("rows, lanes and reading ids differ in number")
    if rebuilt is not None and len(rebuilt) != len(w.rows):
        raise ValueError("rows and rebuild schemes differ in number")
    if idless and rebuilt is None:
        raise ValueError("a v4 payload has rebuild schemes")
    rows = [_with_frames(row) for row in w.rows]
    if idless:
        rows = [drop_id(row, rid) for row, rid in zip(rows, w.reading_ids, strict=True)]
    version = PAYLOAD_VERSION if rebuilt is None else REBUILT_PAYLOAD_VERSION
    body = [
        IDLESS_PAYLOAD_VERSION if idless else version,
        [_context_entry(ref, ctx) for ref, ctx in w.contexts.items()],
        [[ref, boot.bytes] for ref, boot in w.boots.items()],
        _anchor_entry(anchor),
        w.lanes,
        *(() if rebuilt is None else (rebuilt,)),
        rows,
    ]
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def elide_rows(w: WireRows) -> tuple[WireRows, bytes]:
    """Leave out the raw frames of every plain row whose frames the receiver can rebuild
    (:func:`dho_protocol.rawframes.elide`); the rows and their scheme bytes for
    :func:`encode_rows`. A row the box stored without them (framed
    :data:`~dho_protocol.rows.REBUILT_PLAIN` or ``REBUILT_ZSTD``) goes plain, scheme 1, as it
    is. A zstd-framed row, or one whose frames are not exactly the canonical ones, is left as
    it is (scheme 0)."""
    rows = []
    schemes = bytearray(len(w.rows))
    for i, row in enumerate(w.rows):
        if row[:1] == bytes([PLAIN]):
            short = elide(row[1:])
            if short is not None:
                row = row[:1] + short
                schemes[i] = SCHEME_PLX_CONTINUOUS
        else:
            body = rebuilt_body(row)
            if body is not None:  # stored without its frames: already what the wire sends
                row = bytes([PLAIN]) + body
                schemes[i] = SCHEME_PLX_CONTINUOUS
        rows.append(row)
    return dataclasses.replace(w, rows=tuple(rows)), bytes(schemes)


def _with_frames(row: bytes) -> bytes:
    """``row`` in a framing every payload version carries: a row the box stored without its
    canonical raw frames (:data:`~dho_protocol.rows.REBUILT_PLAIN`) with them back, plain."""
    body = rebuilt_body(row)
    return row if body is None else bytes([PLAIN]) + restore(body, MAX_ROW_BYTES)


@dataclass(frozen=True, slots=True)
class DecodedRows:
    """The readings of a v2 or v3 payload, and how the receiver stores each (one-row v2
    payloads, see module doc)."""

    readings: tuple[Reading, ...]
    bodies: tuple[bytes, ...]


def _text(v: object, what: str, lo: int, hi: int) -> str:
    if type(v) is not str or not lo <= len(v) <= hi:
        raise MalformedMessageError(f"{what} is not a string of {lo} to {hi} characters")
    return v


def _ref(v: object, what: str) -> int:
    if type(v) is not int or not 0 <= v < 2**63:
        raise MalformedMessageError(f"{what} is not a reference number")
    return v


def decode_rows(
    data: bytes,
    ids: Sequence[uuid.UUID],
    *,
    budget: int = MAX_ROW_BYTES,
    bodies: bool = True,
    version: int | None = None,
) -> DecodedRows:
    """Decode a v2, v3 or v4 payload (uncompressed), one row per envelope id, in order,
    bounded.

    The payload is read item by item against its layout
    (:class:`~dho_protocol.bounded.BoundedReader`), each row by the typed decoder of
    :func:`~dho_protocol.rows.decode_reading`, with one item budget for the whole payload and
    one byte budget for what its compressed rows decompress to; every field is checked
    against the limits of section 5.2 before anything is built from it. A v3 row whose raw
    frames were left out gets them back first (:func:`~dho_protocol.rawframes.restore`), so
    its reading and its stored form are those of the row the box stored; so does a v4 row
    whose id was left out (:func:`put_id`, before its frames are rebuilt).

    Args:
        budget: how many bytes the compressed rows may decompress to (and rebuilt rows
            restore to), all together.
        bodies: also build the stored form of each reading (the receiver does).
        version: the payload version the batch must carry (its batch version: 2, 3 or
            4); ``None`` accepts any.

    Raises:
        MalformedMessageError: anything that does not parse or make valid readings, a row
            whose id is not the envelope's, a reference without its table entry, or a row
            marked rebuilt that is not one scheme 1 can rebuild.
        MessageTooLargeError: the rows decompress past ``budget``, or more than
            :data:`~dho_protocol.payload.MAX_ITEMS` items.
    """
    n = len(ids)
    r = BoundedReader(
        data,
        max_items=MAX_ITEMS,
        max_str=4 * MAX_TEXT,
        max_bin=max(len(data), n, 16),
        max_array=max(n, 7),
    )
    fields = r.array("payload", 6, 7)
    found = r.scalar("payload version")
    if type(found) is not int or (found, fields) not in _LAYOUTS:
        raise MalformedMessageError("not a version-2, version-3 or version-4 payload")
    if version is not None and found != version:
        raise MalformedMessageError(f"a version-{found} payload in a version-{version} batch")
    table = min(n, _MAX_TABLE)
    contexts: dict[int, tuple[Context, list[Any]]] = {}
    for _ in range(r.array("contexts", 0, table)):
        ref, kind, man, model, serial, transport, patient = r.record("context", 7)
        try:
            device = DeviceIdentity(
                DeviceKind(_text(kind, "device kind", 1, MAX_CODE_TEXT)),
                _text(man, "manufacturer", 0, MAX_TEXT),
                _text(model, "model", 0, MAX_TEXT),
                _text(serial, "serial", 0, MAX_TEXT),
                Transport(_text(transport, "transport", 1, MAX_CODE_TEXT)),
            )
        except ValueError as err:
            raise MalformedMessageError(f"bad device entry: {err}") from err
        key = _ref(ref, "context reference")
        if key in contexts:
            raise MalformedMessageError("context reference repeats")
        entry = [key, kind, man, model, serial, transport, patient]
        contexts[key] = (Context(device, _text(patient, "patient reference", 1, MAX_TEXT)), entry)
    boots: dict[int, tuple[uuid.UUID, list[Any]]] = {}
    for _ in range(r.array("boots", 0, table)):
        ref, raw_boot = r.record("boot", 2)
        if type(raw_boot) is not bytes or len(raw_boot) != 16:
            raise MalformedMessageError("boot id is not 16 bytes")
        key = _ref(ref, "boot reference")
        if key in boots:
            raise MalformedMessageError("boot reference repeats")
        boots[key] = (uuid.UUID(bytes=raw_boot), [key, raw_boot])
    anchor: ClockAnchor | None = None
    anchor_entry: list[Any] | None = None
    if not r.is_nil():
        raw_id, offset = r.record("clock anchor", 2)
        if type(raw_id) is not bytes or len(raw_id) != 16 or type(offset) is not int:
            raise MalformedMessageError("clock anchor is not [boot id, offset]")
        if not -(2**63) <= offset < 2**63:
            raise MalformedMessageError("clock anchor offset out of range")
        anchor = ClockAnchor(uuid.UUID(bytes=raw_id), offset)
        anchor_entry = [raw_id, offset]
    lanes = r.binary("lanes", n, n)
    schemes = bytes(n) if fields == 6 else r.binary("rebuilt", n, n)
    r.array("rows", n, n)
    readings: list[Reading] = []
    stored: list[bytes] = []
    # The stored form of a reading is a one-row payload: all of it but the row is the same
    # for every row of one context, boot and lane, so it is packed once for each of those.
    heads: dict[tuple[int, int, int], bytes] = {}
    left = budget
    for rid, lane, scheme in zip(ids, lanes, schemes, strict=True):
        row = r.binary("row", 1, len(data))
        if found == IDLESS_PAYLOAD_VERSION:
            row = put_id(row, rid)
        if lane not in _LANES:
            raise MalformedMessageError(f"unknown lane {lane}")
        if scheme not in SCHEMES:
            raise MalformedMessageError(f"unknown rebuild scheme {scheme}")
        if scheme != SCHEME_NONE:
            if row[0] != PLAIN:
                raise MalformedMessageError("a rebuilt row is not plain")
            row = row[:1] + restore(row[1:], left)
        packed = decode_reading(row, left, r.left, expect=rid)
        left -= packed.size
        r.spend(packed.items)
        ctx = contexts.get(packed.context_ref)
        boot = boots.get(packed.boot_ref)
        if ctx is None or boot is None:
            raise FormatError("a row refers to a context or boot the payload does not carry")
        readings.append(packed.build(ctx[0], boot[0], _LANE_OF[lane]).with_time_corrected(anchor))
        if bodies:
            where = (packed.context_ref, packed.boot_ref, lane)
            head = heads.get(where)
            if head is None:
                head = heads[where] = _stored_head(ctx[1], boot[1], anchor_entry, lane)
            stored.append(head + _bin(row))
    r.finish("payload")
    return DecodedRows(tuple(readings), tuple(stored))


_LANE_OF: Final = {int(lane): lane for lane in Lane}
_LAYOUTS: Final = frozenset(
    {(PAYLOAD_VERSION, 6), (REBUILT_PAYLOAD_VERSION, 7), (IDLESS_PAYLOAD_VERSION, 7)}
)


def _bin(b: bytes) -> bytes:
    """``b`` as msgpack binary (bin 8, 16 or 32), as ``packb`` packs it."""
    n = len(b)
    if n < 0x100:
        return b"\xc4" + n.to_bytes(1, "big") + b
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big") + b
    return b"\xc6" + n.to_bytes(4, "big") + b


def _stored_head(ctx: list[Any], boot: list[Any], anchor: list[Any] | None, lane: int) -> bytes:
    """The msgpack of ``[2, [ctx], [boot], anchor, lane byte, [row]]`` up to the row itself:
    the same bytes ``packb`` gives for the whole list, less the row's own."""
    whole: bytes = msgpack.packb(
        [PAYLOAD_VERSION, [ctx], [boot], anchor, bytes((lane,)), [b""]], use_bin_type=True
    )
    assert whole.endswith(b"\x91\xc4\x00")  # one-entry list, then the empty row
    return whole[:-2]


def is_rows_payload(data: bytes) -> bool:
    """Whether ``data`` looks like a v2 payload (a 6-array starting with 2) rather than v1:
    what a receiver stores (v3 payloads are batches only)."""
    return data[:2] == b"\x96\x02"
