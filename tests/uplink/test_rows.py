"""Batch payloads v2 and v3: the box's stored rows go on the wire as they are, decoded once.

From the buffer's claim to the receiver's store: the rows are never decoded into readings on
the box and never encoded again anywhere; the receiver decodes each once (checking
everything) and stores it as it came.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

import dho_protocol as p
from agent.buffer import Buffer, FileKeySource
from agent.clock import ClockAnchor
from agent.model import STATUS_TIME_CORRECTED, DeviceIdentity, Lane
from receiver.core import Receiver
from receiver.store import SqliteStore
from tests.uplink import factories as f

BOX = "box-0001"
KEY = Ed25519PrivateKey.generate()
SERVICE = Ed25519PrivateKey.generate()


@pytest.fixture
def buffer(tmp_path: Path):
    with Buffer.open(tmp_path / "b.db", FileKeySource(tmp_path / "b.kek")) as b:
        yield b


def _wire_rows(readings):
    """What a buffer claim produces, built directly (context 1.., boot 100..)."""
    contexts: dict[tuple[DeviceIdentity, str], int] = {}
    boots: dict[uuid.UUID, int] = {}
    rows = []
    for r in readings:
        c = contexts.setdefault((r.device, r.patient), len(contexts) + 1)
        b = boots.setdefault(r.captured.boot_id, 100 + len(boots))
        rows.append(p.encode_reading(r, c, b))
    return p.WireRows(
        reading_ids=tuple(r.id for r in readings),
        rows=tuple(rows),
        lanes=bytes(int(r.lane) for r in readings),
        contexts={c: p.Context(device, patient) for (device, patient), c in contexts.items()},
        boots={b: u for u, b in boots.items()},
    )


def test_rows_round_trip_exactly_and_bodies_decode_to_the_same_reading():
    readings = [*f.mixed_readings(20), f.continuous_reading(0), f.continuous_reading(1)]
    env, wire = p.seal_rows(BOX, 5, _wire_rows(readings), KEY, created_ms=1)
    assert env.version == p.BATCH_VERSION == 4  # v4: ids from the envelope, frames rebuilt
    parsed = p.parse_batch(wire).verify(KEY.public_key())
    assert p.batch_readings(parsed) == tuple(readings)
    contents = p.batch_contents(parsed)
    assert contents.readings == tuple(readings)
    for r, body in zip(readings, contents.bodies, strict=True):
        assert p.decode_stored(body, r.id) == r
    # the readings' natural keys (the receiver's de-duplication) are unchanged
    assert [r.natural_key for r in contents.readings] == [r.natural_key for r in readings]


def test_older_boxes_v1_batches_are_still_accepted():
    readings = f.mixed_readings(5)
    _, wire = p.seal_batch(BOX, 1, readings, KEY, created_ms=1)
    env = p.parse_batch(wire).envelope
    assert env.version == 1
    contents = p.batch_contents(env)
    assert contents.readings == tuple(readings)
    assert [
        p.decode_stored(b, r.id) for r, b in zip(readings, contents.bodies, strict=True)
    ] == readings


def test_the_clock_anchor_corrects_unsynced_readings_of_its_boot_only():
    r = f.mixed_readings(1)[0]
    early = replace(
        r, captured=replace(r.captured, wall_ns=1_000, mono_ns=5_000_000_000, synced=False)
    )
    other = replace(
        f.mixed_readings(1, seed=4)[0],
        captured=replace(r.captured, boot_id=uuid.uuid4(), synced=False),
    )
    anchor = ClockAnchor(r.captured.boot_id, 1_790_000_000_000_000_000)
    env, _ = p.seal_rows(BOX, 1, _wire_rows([early, other]), KEY, created_ms=1, anchor=anchor)
    contents = p.batch_contents(env)
    fixed, kept = contents.readings
    assert fixed.captured.synced
    assert fixed.captured.wall_ns == 5_000_000_000 + anchor.offset_ns
    assert STATUS_TIME_CORRECTED in fixed.status
    assert kept == other  # another boot: stays uncertain
    assert p.decode_stored(contents.bodies[0], early.id) == fixed  # stored as corrected


def test_the_buffer_claim_hands_over_its_rows_byte_for_byte(buffer):
    readings = [*f.mixed_readings(30), f.continuous_reading(0)]
    alarm = f.bp_reading(99, lane=Lane.ALARM)
    buffer.append([*readings, alarm])
    claim = buffer.claim_rows(100)
    assert claim is not None
    assert claim.readings == 32
    assert claim.raw_frames
    assert claim.rows.reading_ids[0] == alarm.id  # alarms first
    assert claim.rows.lanes[0] == Lane.ALARM
    # the rows are exactly what the store decrypts: no decode, no re-encode
    for rid, row in zip(claim.rows.reading_ids, claim.rows.rows, strict=True):
        head = p.peek(row)
        assert head.reading_id == rid
        assert head.context_ref in claim.rows.contexts
        assert head.boot_ref in claim.rows.boots
    env, _ = p.seal_rows(BOX, 1, claim.rows, KEY, created_ms=1)
    assert sorted(r.id for r in p.batch_readings(env)) == sorted(r.id for r in [*readings, alarm])
    assert set(p.batch_readings(env)) == {*readings, alarm}
    assert buffer.stats().claimed == 32
    assert buffer.ack(claim.batch_id) == 32


def test_the_receiver_stores_each_row_as_it_came(tmp_path):
    store = SqliteStore(tmp_path / "r.db")
    try:
        store.enrol(BOX, p.public_key_bytes(KEY), ["pt-0001"])
        readings = f.mixed_readings(12)
        rows = _wire_rows(readings)
        _, wire = p.seal_rows(BOX, 1, rows, KEY, created_ms=1)
        out = Receiver(store, SERVICE).handle(p.batch_topic(BOX), wire)
        assert (out.accepted, out.stored) == (True, 12)
        assert [s.reading for s in store.readings()] == readings
        # what is stored carries the row bytes the box sent
        body = store._conn.execute("SELECT body FROM readings ORDER BY rowid").fetchone()[0]
        assert msgpack.unpackb(bytes(body))[5] == [rows.rows[0]]
    finally:
        store.close()


def test_a_row_that_is_not_the_envelopes_is_malformed():
    readings = f.mixed_readings(3)
    rows = _wire_rows(readings)
    swapped = replace(rows, rows=(rows.rows[1], rows.rows[0], rows.rows[2]))
    env, _ = p.seal_rows(BOX, 1, swapped, KEY, created_ms=1)
    with pytest.raises(p.MalformedMessageError, match="id"):
        p.batch_readings(env)
    orphan = replace(rows, contexts={})
    env, _ = p.seal_rows(BOX, 1, orphan, KEY, created_ms=1)
    with pytest.raises(p.MalformedMessageError, match="context"):
        p.batch_readings(env)


def test_compressed_rows_count_against_the_payload_limit():
    chunk = f.continuous_reading(0, samples=3000)
    rows = _wire_rows([chunk])
    assert rows.rows[0][0] == 0x01  # zstd-framed row, sent as stored (as older boxes do)
    env, _ = p.seal_rows(BOX, 1, rows, KEY, created_ms=1, plain_rows=False)
    assert p.batch_readings(env) == (chunk,)
    raw = len(zstandard.ZstdDecompressor().decompress(env.payload))
    with pytest.raises(p.MessageTooLargeError):
        p.batch_readings(env, max_payload_bytes=raw + 100)


def test_rows_go_plain_so_the_payload_compresses_across_them():
    """A box seals chunk rows plain inside the payload's zstd frame: the same readings come
    out, and a few minutes of oximetry take less room than the rows as stored."""
    chunks = [f.continuous_reading(i, samples=60) for i in range(10)]
    rows = _wire_rows(chunks)
    assert all(r[0] == 0x01 for r in rows.rows)
    plain, _ = p.seal_rows(BOX, 1, rows, KEY, created_ms=1)
    stored, _ = p.seal_rows(BOX, 1, rows, KEY, created_ms=1, plain_rows=False)
    assert p.batch_readings(plain) == p.batch_readings(stored) == tuple(chunks)
    raw = zstandard.ZstdDecompressor().decompress(plain.payload)
    assert all(body[0] == 0x00 for body in msgpack.unpackb(raw)[6])
    assert len(plain.payload) < len(stored.payload)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_signed_but_mangled_v2_payloads_give_typed_errors_only(data):
    """A box with a bug (or a stolen key) can sign anything: decoding must still be safe."""
    readings = [*f.mixed_readings(2), f.continuous_reading(0, samples=60)]
    env, _ = p.seal_rows(BOX, 1, _wire_rows(readings), KEY, created_ms=1)
    raw = zstandard.ZstdDecompressor().decompress(env.payload)
    pos = data.draw(st.integers(0, len(raw) - 1))
    mangled = raw[:pos] + bytes([data.draw(st.integers(0, 255))]) + raw[pos + 1 :]
    bad = replace(env, payload=zstandard.ZstdCompressor().compress(mangled))
    with contextlib.suppress(p.ProtocolError):
        p.batch_contents(bad)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_rows_give_typed_errors_only(data):
    def decode() -> None:
        packed = p.decode_reading(data)
        packed.build(p.Context(f.mixed_readings(1)[0].device, "pt"), uuid.uuid4(), Lane.SPOT)

    with pytest.raises(p.ProtocolError):
        decode()


def test_a_row_bomb_is_refused_cheaply():
    """16 MiB of empty lists inside one compressed row: refused at the row's first header."""
    import resource
    import time

    readings = f.mixed_readings(1)
    rows = _wire_rows(readings)
    bomb = b"\x01" + zstandard.ZstdCompressor().compress(b"\x9a" + b"\x90" * (16 * 2**20 - 64))
    env, _ = p.seal_rows(BOX, 1, replace(rows, rows=(bomb,)), KEY, created_ms=1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.process_time()
    with pytest.raises(p.ProtocolError):
        p.batch_contents(env)
    assert time.process_time() - start < 2.0
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200


def _row_fields(reading) -> list[Any]:
    row = p.encode_reading(reading, 1, 2)
    assert row[0] == 0x00  # plain msgpack
    fields: list[Any] = msgpack.unpackb(row[1:])
    return fields


def _set_row(path, value):
    def mutate(v: list[Any]) -> None:
        node = v
        for i in path[:-1]:
            node = node[i]
        node[path[-1]] = value

    return mutate


# In the v2 row layout [1, id, ctx, observations, capture, device_time, status, samples, raw]
# (a spot reading for the first entries, a sample chunk for those under "samples").
BAD_ROWS = {
    "format version 2": ("spot", _set_row((0,), 2)),
    "id of 15 bytes": ("spot", _set_row((1,), b"x" * 15)),
    "context reference negative": ("spot", _set_row((2,), -1)),
    "context reference as text": ("spot", _set_row((2,), "1")),
    "capture time 2**64 - 1": ("spot", _set_row((4, 0), 2**64 - 1)),
    "capture time below zero": ("spot", _set_row((4, 0), -1)),
    "capture time as a float": ("spot", _set_row((4, 0), 1.5)),
    "synced as 1": ("spot", _set_row((4, 3), 1)),
    "capture with a fifth entry": ("spot", lambda v: v[4].append(0)),
    "code index outside the table": ("spot", _set_row((3, 0, 0), 10_000)),
    "MDC code over 32 bits": ("spot", _set_row((3, 0, 0), [2**32, None])),
    "LOINC of 65 characters": ("spot", _set_row((3, 0, 0), [1, "1" * 65])),
    "unit index outside the table": ("spot", _set_row((3, 0, 2), 9999)),
    "unit of 65 characters": ("spot", _set_row((3, 0, 2), "u" * 65)),
    "value as bytes": ("spot", _set_row((3, 0, 1), b"\x01")),
    "value as a bool": ("spot", _set_row((3, 0, 1), True)),
    "value over 64 bits": ("spot", _set_row((3, 0, 1), 2**64 - 1)),
    "value text nan": ("spot", _set_row((3, 0, 1), "NaN")),
    "value text not a decimal": ("spot", _set_row((3, 0, 1), "12,5")),
    "exponent 100000": ("spot", _set_row((3, 0, 1), [1, 100_000])),
    "a value and a special value": ("spot", lambda v: v[3][0].append("nan")),
    "no value and no special value": ("spot", _set_row((3, 0, 1), None)),
    "special value nil": ("spot", lambda v: (v[3][0].__setitem__(1, None), v[3][0].append(None))),
    "unknown special value": (
        "spot",
        lambda v: (v[3][0].__setitem__(1, None), v[3][0].append("x")),
    ),
    "observation of 5 entries": ("spot", lambda v: v[3][0].extend(["nan", 1])),
    "observation as a map": ("spot", _set_row((3, 0), {"a": 1})),
    "65 observations": ("spot", _set_row((3,), [[1, 1, 1]] * 65)),
    "device time beyond 2**40 s": ("spot", _set_row((5,), 2**41)),
    "device time offset of a day": ("spot", _set_row((5,), [0, 0, 1440])),
    "device time µs of a second": ("spot", _set_row((5,), [0, 1_000_000, None])),
    "33 status flags": ("spot", _set_row((6,), [f"f{i}" for i in range(33)])),
    "empty status flag": ("spot", _set_row((6,), [""])),
    "raw frame as text": ("spot", _set_row((8,), ["frame"])),
    "raw frames as empty lists": ("spot", _set_row((8,), [[]] * 1000)),
    "decode error nil": ("spot", lambda v: v.append(None)),
    "decode error empty": ("spot", lambda v: v.append("")),
    "an eleventh entry": ("spot", lambda v: v.extend(["err", 1])),
    "a row of 8 entries": ("spot", lambda v: v.pop()),
    "sample interval 0": ("samples", _set_row((7, 0), 0)),
    "sample interval over a day": ("samples", _set_row((7, 0), 86_400_001)),
    "sample beyond 2**62": ("samples", _set_row((7, 1, 0, 3, 0), 2**62)),
    "sample as text": ("samples", _set_row((7, 1, 0, 3, 0), "2")),
    "sample as a list": ("samples", _set_row((7, 1, 0, 3, 0), [])),
    "channel statistic empty": ("samples", _set_row((7, 1, 0, 4), "")),
    "channels of unequal length": ("samples", lambda v: v[7][1][0][3].pop()),
    "33 channels": ("samples", _set_row((7, 1), [[6, 2, 0, [1], None]] * 33)),
    "channel with a sixth entry": ("samples", lambda v: v[7][1][0].append(None)),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_every_row_field_is_checked_by_the_typed_decoder(case):
    kind, mutate = BAD_ROWS[case]
    reading = f.bp_reading(1) if kind == "spot" else f.continuous_reading(0, samples=3)
    fields = _row_fields(reading)
    ctx = p.Context(reading.device, reading.patient)
    good = b"\x00" + msgpack.packb(fields, use_bin_type=True)
    assert p.decode_reading(good).build(ctx, reading.captured.boot_id, reading.lane) == reading
    mutate(fields)
    bad = b"\x00" + msgpack.packb(fields, use_bin_type=True)
    with pytest.raises(p.FormatError):
        p.decode_reading(bad).build(ctx, reading.captured.boot_id, reading.lane)
