"""The same storage rules on every backend: SQLite, and PostgreSQL.

PostgreSQL is a private throw-away cluster started for the session (or the server named by
``DHO_TEST_POSTGRES_DSN``), each test in a fresh schema: see ``tests/uplink/pg_fixtures.py``.
That half skips, with the reason, when the server binaries or the psycopg driver are missing.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.ids import uuid7
from dho_protocol import AckResult, public_key_bytes
from receiver import pg
from receiver.store import SqliteStore
from tests.uplink import factories as f


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    s: Any
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "r.db")
    else:
        s = pg.PostgresStore(request.getfixturevalue("pg_dsn"))
    yield s
    s.close()


def test_store_contract(store):
    box = f"box-{uuid.uuid4().hex[:8]}"
    store.enrol(box, public_key_bytes(Ed25519PrivateKey.generate()))
    assert store.box_key(box) is not None
    assert store.box_key("nobody") is None
    readings = f.mixed_readings(6)
    d1 = b"\1" * 32
    res = store.commit_batch(box, 10, uuid.uuid4(), d1, readings[:4], 100)
    assert (res.result, res.stored, res.duplicates, res.high_water) == (AckResult.STORED, 4, 0, 10)
    # the same envelope again
    assert (
        store.commit_batch(box, 10, uuid.uuid4(), d1, readings[:4], 100).result
        is AckResult.DUPLICATE
    )
    # another envelope under the same seq
    assert (
        store.commit_batch(box, 10, uuid.uuid4(), b"\2" * 32, readings, 100).result
        is AckResult.REJECTED_REPLAY
    )
    # overlap by reading id and by natural key
    resend = replace(readings[0], id=uuid7())
    res = store.commit_batch(box, 11, uuid.uuid4(), b"\3" * 32, [*readings[2:], resend], 100)
    assert (res.stored, res.duplicates) == (2, 3)
    # out of the window
    store.commit_batch(box, 500, uuid.uuid4(), b"\4" * 32, [f.spo2_reading(77)], 100)
    res = store.commit_batch(box, 12, uuid.uuid4(), b"\5" * 32, [f.spo2_reading(78)], 100)
    assert (res.result, res.high_water) == (AckResult.REJECTED_REPLAY, 500)
    assert store.count() == 7
    back = [s.reading for s in store.readings(box)]
    assert back[:6] == readings
    # re-enrolment resets the window
    store.enrol(box, public_key_bytes(Ed25519PrivateKey.generate()))
    assert (
        store.commit_batch(box, 1, uuid.uuid4(), b"\6" * 32, [f.spo2_reading(79)], 100).stored == 1
    )


def test_box_registry_contract(store):
    from receiver.errors import BoxNotEnrolledError, InvalidBoxIdError, InvalidPatientError

    box = f"box-{uuid.uuid4().hex[:8]}"
    key = public_key_bytes(Ed25519PrivateKey.generate())
    store.enrol(box, key, ["pt-1", "pt-2"])
    got = store.box(box)
    assert got is not None
    assert (got.box_id, got.public_key, got.patients) == (box, key, {"pt-1", "pt-2"})
    store.assign(box, ["pt-3", "pt-1"])
    store.unassign(box, ["pt-2", "pt-never"])
    assert store.box(box).patients == {"pt-1", "pt-3"}
    # re-enrolling (a new key) keeps the assignments and adds the new ones
    store.enrol(box, public_key_bytes(Ed25519PrivateKey.generate()), ["pt-4"])
    assert store.box(box).patients == {"pt-1", "pt-3", "pt-4"}
    assert box in [b.box_id for b in store.boxes()]
    assert store.box("box-nobody") is None
    with pytest.raises(BoxNotEnrolledError):
        store.assign("box-nobody", ["pt-1"])
    with pytest.raises(BoxNotEnrolledError):
        store.unassign("box-nobody", ["pt-1"])
    for bad in ("box/#", "+", "", "a\x00b", "dho-receiver-9"):
        with pytest.raises(InvalidBoxIdError):
            store.enrol(bad, key)
    for bad_ref in ("", " pt", "pt\n", "x" * 129):
        with pytest.raises(InvalidPatientError):
            store.assign(box, [bad_ref])
    with pytest.raises(ValueError, match="32 bytes"):
        store.enrol(box, b"short")


def test_natural_keys_and_reading_ids_are_scoped_to_the_box(store):
    a, b = f"box-a{uuid.uuid4().hex[:6]}", f"box-b{uuid.uuid4().hex[:6]}"
    for box in (a, b):
        store.enrol(box, public_key_bytes(Ed25519PrivateKey.generate()), ["pt-0001"])
    genuine = f.bp_reading(1)
    copy = replace(genuine, id=uuid7())
    assert store.commit_batch(a, 1, uuid.uuid4(), b"\1" * 32, [copy], 100).stored == 1
    res = store.commit_batch(b, 1, uuid.uuid4(), b"\2" * 32, [genuine], 100)
    assert (res.result, res.stored, res.duplicates) == (AckResult.STORED, 1, 0)
    res = store.commit_batch(a, 2, uuid.uuid4(), b"\3" * 32, [genuine, f.spo2_reading(5)], 100)
    assert (res.result, res.stored) == (AckResult.REJECTED_FORBIDDEN, 0)
    assert store.count() == 2  # nothing of the refused batch went in
    # the refused seq is still free: the box may send it again without those readings
    assert store.commit_batch(a, 2, uuid.uuid4(), b"\4" * 32, [f.spo2_reading(5)], 100).stored == 1


def test_refused_batches_are_kept_within_their_bounds(store):
    from receiver.store import AuditLimits, RefusedBatch

    limits = AuditLimits(per_box=3, max_rows=5, max_bytes=10_000, max_entry_bytes=1_000)

    def keep(box: str, size: int, n: int) -> None:
        store.keep_refused(
            RefusedBatch(n, box, uuid.uuid4(), n, "malformed", f"entry {n}", bytes(size)), limits
        )

    for n in range(6):
        keep("box-flood", 100, n)
    assert [e.detail for e in store.refused("box-flood")] == ["entry 5", "entry 4", "entry 3"]
    for n in range(6, 9):
        keep(f"box-{n}", 100, n)
    kept = store.refused()
    assert len(kept) == 5  # max_rows: the oldest went first
    assert kept[0].detail == "entry 8"
    keep("box-big", 5_000, 9)  # cut to max_entry_bytes, its size recorded
    (big,) = store.refused("box-big")
    assert (big.size, big.truncated, len(store.refused_wire(big.n))) == (5_000, True, 1_000)
    for n in range(10, 25):
        keep(f"box-x{n}", 1_000, n)
    total = sum(len(store.refused_wire(e.n) or b"") for e in store.refused(limit=100))
    assert total <= limits.max_bytes
    assert store.refused_counts() == {"malformed": len(store.refused(limit=100))}


_FIRST_LAYOUT = """
CREATE TABLE boxes (box_id TEXT PRIMARY KEY, public_key BLOB NOT NULL,
    enrolled_at INTEGER NOT NULL, high_water INTEGER NOT NULL DEFAULT 0);
CREATE TABLE batches (box_id TEXT NOT NULL, seq INTEGER NOT NULL, digest BLOB NOT NULL,
    batch_id BLOB NOT NULL, readings INTEGER NOT NULL, stored INTEGER NOT NULL,
    received_at INTEGER NOT NULL, PRIMARY KEY (box_id, seq)) WITHOUT ROWID;
CREATE TABLE readings (reading_id BLOB PRIMARY KEY, natural_key BLOB UNIQUE,
    box_id TEXT NOT NULL, batch_seq INTEGER NOT NULL, patient TEXT NOT NULL,
    lane INTEGER NOT NULL, captured_ns INTEGER NOT NULL, received_at INTEGER NOT NULL,
    body BLOB NOT NULL);
CREATE INDEX readings_box ON readings (box_id);
"""
"""The receiver's first layout (natural keys unique across every box)."""


def test_a_store_of_the_first_layout_is_upgraded_in_place(tmp_path):
    import sqlite3

    from receiver.store import SCHEMA_VERSION, encode_one, natural_key_hash

    db = tmp_path / "old.db"
    old = [f.bp_reading(i) for i in range(3)]
    with sqlite3.connect(db) as c:
        c.executescript(_FIRST_LAYOUT)
        c.execute("INSERT INTO boxes VALUES ('box-a', ?, 1, 7)", (bytes(32),))
        c.executemany(
            "INSERT INTO readings VALUES (?, ?, 'box-a', 7, 'pt-0001', 1, 0, 0, ?)",
            [(r.id.bytes, natural_key_hash(r), encode_one(r)) for r in reversed(old)],
        )
    with pytest.raises(Exception, match="older layout"):  # read-only commands do not upgrade
        SqliteStore(db, read_only=True)
    s = SqliteStore(db)
    try:
        assert s._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert [r.reading for r in s.readings()] == list(reversed(old))  # order kept
        s.enrol("box-b", public_key_bytes(Ed25519PrivateKey.generate()), ["pt-0001"])
        res = s.commit_batch("box-b", 1, uuid.uuid4(), b"\1" * 32, [replace(old[0], id=uuid7())], 9)
        assert res.stored == 1  # the natural key is now scoped to the box
    finally:
        s.close()
    SqliteStore(db, read_only=True).close()


def test_a_postgres_store_of_the_first_layout_is_upgraded(pg_dsn):
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as c:
        c.execute(
            "CREATE TABLE readings (n BIGINT GENERATED ALWAYS AS IDENTITY,"
            " reading_id BYTEA PRIMARY KEY, natural_key BYTEA UNIQUE, box_id TEXT NOT NULL,"
            " batch_seq BIGINT NOT NULL, patient TEXT NOT NULL, lane SMALLINT NOT NULL,"
            " captured_ns BIGINT NOT NULL, received_at BIGINT NOT NULL, body BYTEA NOT NULL)"
        )
    s = pg.PostgresStore(pg_dsn)
    try:
        for box in ("box-a", "box-b"):
            s.enrol(box, public_key_bytes(Ed25519PrivateKey.generate()), ["pt-0001"])
        r = f.bp_reading(1)
        assert s.commit_batch("box-a", 1, uuid.uuid4(), b"\1" * 32, [r], 9).stored == 1
        res = s.commit_batch("box-b", 1, uuid.uuid4(), b"\2" * 32, [replace(r, id=uuid7())], 9)
        assert res.stored == 1
    finally:
        s.close()
