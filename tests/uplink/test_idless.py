"""Payload v4: the rows' reading ids left out on the box and taken from the envelope.

The properties (hypothesis): for any mix of spot readings and oximetry chunks (canonical
frames or not), box-encode then receiver-decode gives back the same readings and the same
stored bodies as a v3 and a v2 batch of the same rows; leaving an id out and putting it back
is the identity on any bytes, and an id that is not the envelope's is never left out. Then
the receiver's refusals (a v4 payload in another batch version, a nil id outside v4) and v3
batches (boxes in the field) still accepted and stored the same.
"""

from __future__ import annotations

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
from dho_protocol.rowpayload import drop_id, put_id
from receiver.core import Receiver
from receiver.store import SqliteStore
from tests.uplink import factories as f
from tests.uplink.test_rawframes import _chunks
from tests.uplink.test_rows import _wire_rows

BOX = "box-0001"
KEY = Ed25519PrivateKey.generate()
SERVICE = Ed25519PrivateKey.generate()


def _payload(env: p.BatchEnvelope) -> list[Any]:
    body: list[Any] = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(env.payload))
    return body


def _contents(rows: p.WireRows, version: int) -> tuple[p.BatchEnvelope, p.DecodedRows]:
    env, wire = p.seal_rows(BOX, 1, rows, KEY, created_ms=1, version=version)
    assert env.version == version
    parsed = p.parse_batch(wire).verify(KEY.public_key())
    return parsed, p.batch_contents(parsed)


@settings(max_examples=200, deadline=None)
@given(st.lists(_chunks(), max_size=5), st.integers(0, 4))
def test_any_batch_comes_back_the_same_as_from_v3_and_v2(chunks, spots):
    readings = [*f.mixed_readings(spots, seed=3), *chunks]
    if not readings:
        readings = f.mixed_readings(1)
    rows = _wire_rows(readings)
    env, got4 = _contents(rows, p.BATCH_VERSION)
    _, got3 = _contents(rows, p.REBUILT_BATCH_VERSION)
    _, got2 = _contents(rows, p.ROWS_BATCH_VERSION)
    assert got4.readings == got3.readings == got2.readings == tuple(readings)
    assert got4.bodies == got3.bodies == got2.bodies  # stored byte for byte as from v2
    for r, body in zip(readings, got4.bodies, strict=True):
        assert p.decode_stored(body, r.id) == r
    payload = _payload(env)
    assert payload[0] == 4
    assert len(payload) == 7
    for row in payload[6]:
        assert row[3:4] == b"\xc0"  # every id left out: the box's rows are all plain
        assert msgpack.unpackb(row[1:])[1] is None


_HEADS = [b"", b"\x00\x99\x01", b"\x00\x9a\x01", b"\x01\x99\x01", b"\x00\x98\x01", b"\x00\x99\x02"]


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(_HEADS), st.booleans(), st.binary(max_size=30), st.uuids(), st.uuids())
def test_leaving_an_id_out_and_putting_it_back_is_the_identity(
    head: bytes, with_id: bool, tail: bytes, rid: uuid.UUID, other: uuid.UUID
):
    row = head + (b"\xc4\x10" + rid.bytes if with_id else b"") + tail
    plain = head in (b"\x00\x99\x01", b"\x00\x9a\x01")
    short = drop_id(row, rid)
    if plain and with_id:
        assert short == head + b"\xc0" + tail  # 17 bytes fewer
    else:
        assert short == row  # nothing the receiver could not put back exactly
    if not (plain and row[3:4] == b"\xc0"):
        assert put_id(short, rid) == row
    if other != rid:
        assert drop_id(row, other) == row  # only the envelope's id is ever left out


@given(st.uuids(), st.uuids())
def test_an_id_that_is_not_the_envelope_s_stays_in_the_row(mine: uuid.UUID, other: uuid.UUID):
    reading = replace(f.mixed_readings(1)[0], id=mine)
    (row,) = _wire_rows([reading]).rows
    if mine != other:
        assert drop_id(row, other) == row
    short = drop_id(row, mine)
    assert len(short) == len(row) - 17
    assert put_id(short, mine) == row


def test_a_row_that_kept_its_id_is_accepted_in_v4():
    """A box may leave an id in (a row it cannot judge); the receiver takes it as in v3."""
    readings = [*f.mixed_readings(2), f.continuous_reading(0, samples=60)]
    env, _ = p.seal_rows(BOX, 1, _wire_rows(readings), KEY, created_ms=1)
    payload = _payload(env)
    payload[6][0] = put_id(payload[6][0], readings[0].id)
    data = zstandard.ZstdCompressor().compress(msgpack.packb(payload, use_bin_type=True))
    assert p.batch_contents(replace(env, payload=data)).readings == tuple(readings)


def _edited(env: p.BatchEnvelope, edit: Any) -> p.BatchEnvelope:
    payload = _payload(env)
    edit(payload)
    data = zstandard.ZstdCompressor().compress(msgpack.packb(payload, use_bin_type=True))
    return replace(env, payload=data)


def test_nil_ids_and_versions_that_do_not_match_are_malformed():
    readings = [f.mixed_readings(1)[0], f.continuous_reading(0, samples=60)]
    rows = _wire_rows(readings)
    v4, _ = p.seal_rows(BOX, 1, rows, KEY, created_ms=1)
    v3, _ = p.seal_rows(BOX, 1, rows, KEY, created_ms=1, version=3)
    with pytest.raises(p.MalformedMessageError, match="version-4 payload in a version-3"):
        p.batch_contents(replace(v4, version=3))
    with pytest.raises(p.MalformedMessageError, match="version-3 payload in a version-4"):
        p.batch_contents(replace(v3, version=4))

    def nil_in_v3(payload: list[Any]) -> None:
        payload[6][0] = drop_id(payload[6][0], readings[0].id)

    with pytest.raises(p.MalformedMessageError):
        p.batch_contents(_edited(v3, nil_in_v3))

    def swapped(payload: list[Any]) -> None:  # rows and ids no longer in the same order
        payload[6].reverse()
        payload[4] = payload[4][::-1]
        payload[5] = payload[5][::-1]

    got = p.batch_contents(_edited(v4, swapped))  # the envelope's ids are the rows' ids
    assert [r.id for r in got.readings] == [r.id for r in readings]
    assert got.readings != tuple(readings)  # and the rows' contents follow the rows


def test_v4_goes_smaller_and_field_boxes_v3_is_stored_the_same(tmp_path: Path):
    chunks = [f.continuous_reading(i, samples=60) for i in range(30)]
    readings = [*f.mixed_readings(4), *chunks]
    rows = _wire_rows(readings)
    _, v3_wire = p.seal_rows(BOX, 1, rows, KEY, created_ms=1, version=3)
    _, v4_wire = p.seal_rows(BOX, 2, rows, KEY, created_ms=1)
    assert len(v4_wire) <= len(v3_wire) - 8 * len(readings)
    bodies = []
    for name, wire in (("v3", v3_wire), ("v4", v4_wire)):
        store = SqliteStore(tmp_path / f"{name}.db")
        try:
            store.enrol(BOX, p.public_key_bytes(KEY), ["pt-0001"])
            out = Receiver(store, SERVICE).handle(p.batch_topic(BOX), wire)
            assert (out.accepted, out.stored) == (True, len(readings))
            assert [s.reading for s in store.readings()] == readings
            bodies.append(
                sorted(bytes(b) for (b,) in store._conn.execute("SELECT body FROM readings"))
            )
        finally:
            store.close()
    assert bodies[0] == bodies[1]
