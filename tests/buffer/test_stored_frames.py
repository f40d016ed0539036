"""The store keeps an oximetry chunk without its raw frames when they are the canonical ones.

A chunk whose raw 0x2A5F frames are exactly what rebuild scheme 1 makes of its samples
(:mod:`dho_protocol.rawframes`) is stored framed ``REBUILT_PLAIN`` (or ``REBUILT_ZSTD``),
without the frames (``docs/buffer.md``, "Storage format"). The properties (hypothesis): every
reading reads back from the store exactly, frames and all; a stored row restores byte for byte
to the protocol's row; a frame that is not exactly the canonical one is never left out; and the
sealing makes the same payload of the stored rows as of the protocol's rows, in every batch
version, so the wire does not change. Then the real store, claim to receiver, and the
receiver's refusal of the store's framings on the wire.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard
from hw_mocks.synthetic import ReadingFactory
from hypothesis import event, given, settings
from hypothesis import strategies as st

import dho_protocol as p
from agent.buffer import Buffer, FileKeySource, codec
from agent.model import Reading
from dho_protocol import rowpayload, rows
from receiver.core import Receiver
from receiver.store import SqliteStore
from tests.uplink import factories as f
from tests.uplink.test_rawframes import _chunks
from tests.uplink.test_rows import BOX, KEY, SERVICE, _wire_rows


def _stored_rows(readings: list[Reading]) -> p.WireRows:
    """:func:`_wire_rows` with each row as the store encodes it (same references)."""
    proto = _wire_rows(readings)
    refs = [rows.peek(row) for row in proto.rows]
    return p.WireRows(
        reading_ids=proto.reading_ids,
        rows=tuple(
            codec.encode_reading(r, h.context_ref, h.boot_ref)
            for r, h in zip(readings, refs, strict=True)
        ),
        lanes=proto.lanes,
        contexts=proto.contexts,
        boots=proto.boots,
    )


def _body(row: bytes) -> bytes:
    """A protocol row's msgpack, decompressed."""
    if row[0] == rows.ZSTD:
        return zstandard.ZstdDecompressor().decompress(row[1:])
    return row[1:]


@settings(max_examples=300, deadline=None)
@given(st.lists(_chunks(), min_size=1, max_size=4), st.integers(0, 3))
def test_a_stored_row_is_the_protocol_row_with_canonical_frames_left_out(chunks, spots):
    readings = [*f.mixed_readings(spots, seed=3), *chunks]
    for r in readings:
        stored = codec.encode_reading(r, 1, 2)
        proto = rows.encode_reading(r, 1, 2)
        canonical = None if r.samples is None else p.canonical_frames(r.samples)
        if r.raw and canonical == r.raw and r.decode_error is None:
            event("stored without its frames")
            assert stored[0] in rows.REBUILT
            body = rows.rebuilt_body(stored)
            assert body is not None
            assert len(body) < len(_body(proto))
        else:
            assert stored == proto  # everything else: the protocol's row as it is
        plain = codec.row_plain(stored)
        assert plain[0] in (rows.PLAIN, rows.ZSTD)
        assert _body(plain) == _body(proto)  # byte for byte the row with its frames
        head = codec.peek(stored)
        assert (head.reading_id, head.has_raw) == (r.id, bool(r.raw))
        ctx = p.Context(r.device, r.patient)
        assert codec.decode_reading(stored).build(ctx, r.captured.boot_id, r.lane) == r


@settings(max_examples=150, deadline=None)
@given(st.lists(_chunks(), min_size=1, max_size=5), st.integers(0, 3))
def test_the_wire_is_the_same_whether_the_frames_were_stored_or_not(chunks, spots):
    readings = [*f.mixed_readings(spots, seed=8), *chunks]
    stored, proto = _stored_rows(readings), _wire_rows(readings)
    for version in (p.BATCH_VERSION, p.REBUILT_BATCH_VERSION, p.ROWS_BATCH_VERSION):
        batch = uuid.uuid4()
        a, _ = p.seal_rows(BOX, 1, stored, KEY, created_ms=1, batch_id=batch, version=version)
        b, _ = p.seal_rows(BOX, 1, proto, KEY, created_ms=1, batch_id=batch, version=version)
        assert a.payload == b.payload
        assert p.batch_contents(a).readings == tuple(readings)
    # rows sent as stored (zstd left compressed): still the same readings
    env, _ = p.seal_rows(BOX, 1, stored, KEY, created_ms=1, plain_rows=False)
    assert p.batch_contents(env).readings == tuple(readings)


def test_a_60_second_chunk_is_stored_in_188_bytes_not_about_290():
    """The bench's chunks (a drifting SpO2 and pulse, 1 % dropouts): 188 bytes each, sealed
    216, four rows to a 1 KiB page (``docs/buffer.md``, "Storage format")."""
    make = ReadingFactory(seed=2)
    for _ in range(20):
        r = make.oximetry_chunk(60)
        stored = codec.encode_reading(r, 1, 2)
        assert stored[0] == rows.REBUILT_PLAIN
        assert len(stored) == 188 < 240 < len(rows.encode_reading(r, 1, 2))


def test_frames_that_are_not_the_canonical_ones_are_kept():
    r = f.continuous_reading(0, samples=60)
    odd = (b"\x01" + r.raw[0][1:], *r.raw[1:])  # a status flag the rebuild cannot know
    quirky = replace(r, raw=odd)
    assert codec.encode_reading(quirky, 1, 2) == rows.encode_reading(quirky, 1, 2)


def test_the_receiver_refuses_the_store_s_framings_on_the_wire():
    r = f.continuous_reading(0, samples=60)
    stored = codec.encode_reading(r, 1, 2)
    with pytest.raises(p.MalformedMessageError, match="framing 2"):
        rows.decode_reading(stored)
    zipped = b"\x03" + zstandard.ZstdCompressor().compress(stored[1:])
    assert codec.decode_reading(zipped).reading_id == r.id
    with pytest.raises(p.MalformedMessageError, match="framing 3"):
        rows.decode_reading(zipped)


def test_a_stored_row_that_does_not_rebuild_is_a_format_error():
    spot = codec.encode_reading(f.bp_reading(1), 1, 2)
    with pytest.raises(codec.FormatError):
        codec.decode_reading(b"\x02" + spot[1:])  # no samples to rebuild from
    with pytest.raises(codec.FormatError):
        codec.decode_reading(b"\x03not zstd")


def test_the_store_claims_chunks_and_the_receiver_gets_them_with_their_frames(tmp_path: Path):
    chunks = [f.continuous_reading(i, samples=60) for i in range(6)]
    readings = [*f.mixed_readings(5), *chunks]
    store = SqliteStore(tmp_path / "r.db")
    with Buffer.open(tmp_path / "b.db", FileKeySource(tmp_path / "b.kek")) as buf:
        buf.append(readings)
        claim = buf.claim_rows(100)
        assert claim is not None
        assert claim.raw_frames
        assert sum(row[0] == rows.REBUILT_PLAIN for row in claim.rows.rows) == len(chunks)
        env, wire = p.seal_rows(BOX, 1, claim.rows, KEY, created_ms=1)
        assert set(p.batch_readings(env)) == set(readings)
        try:
            store.enrol(BOX, p.public_key_bytes(KEY), ["pt-0001"])
            out = Receiver(store, SERVICE).handle(p.batch_topic(BOX), wire)
            assert (out.accepted, out.stored) == (True, len(readings))
            assert {s.reading for s in store.readings()} == set(readings)
        finally:
            store.close()
        buf.ack(claim.batch_id)
    # decoded claims (and compaction) read the frames back too
    with Buffer.open(tmp_path / "c.db", FileKeySource(tmp_path / "c.kek")) as buf:
        buf.append(chunks)
        got = buf.claim(100)
        assert got is not None
        assert set(got.readings) == set(chunks)


def test_dropping_ids_still_works_on_rows_stored_without_frames():
    r = f.continuous_reading(0, samples=60)
    w = _stored_rows([r])
    short, schemes = rowpayload.elide_rows(w)
    assert schemes == b"\x01"
    assert short.rows[0][0] == rows.PLAIN
    assert len(rowpayload.drop_id(short.rows[0], r.id)) == len(short.rows[0]) - 17


def test_a_stored_row_too_large_or_not_zstd_is_a_format_error() -> None:
    """Every way a rebuilt row fails to rebuild is the store's typed error (the outbox
    quarantines on it), also a body that would decompress past the row limit."""
    huge = zstandard.ZstdCompressor().compress(bytes(rows.MAX_ROW_BYTES + 1))
    for bad in (bytes([rows.REBUILT_ZSTD]) + huge, bytes([rows.REBUILT_ZSTD]) + b"junk"):
        with pytest.raises(rows.FormatError):
            codec.row_plain(bad)
        with pytest.raises(rows.FormatError):
            codec.decode_reading(bad)
