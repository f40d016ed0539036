"""At rest, tampering, key rotation, crypto-shredding, damaged stores and lost keys."""

from __future__ import annotations

import shutil
import sqlite3
import struct
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import msgpack
import pytest
from hw_mocks.synthetic import ReadingFactory

from agent.buffer import Buffer, BufferConfig, FileKeySource
from agent.errors import KeyLostError, StoreCorruptError
from agent.model import DeviceIdentity, DeviceKind, Reading, Transport

PATIENT_MARKER = "PATIENT-MARKER-4f1c"
SERIAL_MARKER = "SERIAL-MARKER-77ab"
RAW_MARKER = b"RAW-MARKER-BYTES"
VALUE_MARKER = 42424242  # as a mantissa: Decimal("4242.4242")


def _marker_patterns() -> list[bytes]:
    return [
        PATIENT_MARKER.encode(),
        SERIAL_MARKER.encode(),
        RAW_MARKER,
        str(VALUE_MARKER).encode(),
        struct.pack(">I", VALUE_MARKER),  # how msgpack stores it
        struct.pack("<I", VALUE_MARKER),
        msgpack.packb(VALUE_MARKER),
        b"4242.4242",
    ]


def _marked(factory: ReadingFactory) -> list[Reading]:
    device = DeviceIdentity(DeviceKind.BP_CUFF, "Acme", "M1", SERIAL_MARKER, Transport.BLE)
    out = []
    for _ in range(200):
        r = factory.bp(device=device)
        obs = (replace(r.observations[0], value=Decimal("4242.4242")), *r.observations[1:])
        out.append(replace(r, patient=PATIENT_MARKER, observations=obs, raw=(RAW_MARKER,)))
    return out


def _files(store_path: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in store_path.parent.iterdir()
        if p.name.startswith(store_path.name) and p.is_file()
    }


@pytest.mark.parametrize("exclusive", [True, False], ids=["exclusive", "shared-index"])
def test_no_marker_in_clear_in_db_wal_or_shm(
    store_path: Path,
    keys: FileKeySource,
    config: BufferConfig,
    factory: ReadingFactory,
    exclusive: bool,
) -> None:
    # exclusive: the default (no -shm file); shared-index: a store whose integrity check was
    # deferred has a -shm until the check passed.
    buf = Buffer.open(store_path, keys, config=replace(config, exclusive_lock=exclusive))
    try:
        _no_marker_in_clear(buf, store_path, factory, exclusive)
    finally:
        buf.close()


def _no_marker_in_clear(
    buf: Buffer, store_path: Path, factory: ReadingFactory, exclusive: bool
) -> None:
    for r in _marked(factory):
        buf.append([r])  # one commit each: many WAL frames
    files = _files(store_path)
    assert {"buffer.db", "buffer.db-wal"} <= files.keys()
    assert ("buffer.db-shm" in files) is not exclusive
    assert len(files["buffer.db-wal"]) > 0
    for name, data in files.items():
        for pattern in _marker_patterns():
            assert pattern not in data, f"{pattern!r} found in {name}"
    # ... and the readings are all there when decrypted.
    claim = buf.claim(500)
    assert claim is not None
    assert {r.patient for r in claim.readings} == {PATIENT_MARKER}


def test_purged_readings_leave_no_ciphertext_behind(
    buf: Buffer, store_path: Path, factory: ReadingFactory
) -> None:
    buf.append(_marked(factory)[:50])
    blobs = [row[0] for row in buf._conn.execute("SELECT blob FROM readings")]
    c = buf.claim(100)
    assert c is not None
    buf.ack(c.batch_id)
    buf.purge()
    data = b"".join(_files(store_path).values())
    assert not any(b[12:40] in data for b in blobs)  # secure_delete + WAL truncation


def test_purged_batches_leave_no_ciphertext_while_newer_rows_stay(
    buf: Buffer, store_path: Path, factory: ReadingFactory
) -> None:
    """The daemon's pattern: one commit per append, older batches delivered and purged
    while newer rows stay. With ``secure_delete=FAST`` (measured, not adopted: 0.2 MB a day
    less) the freed pages kept most of the purged rows' ciphertext in the file."""
    gone: list[bytes] = []
    for n, r in enumerate(_marked(factory)[:120]):
        buf.append([r])
        if n % 30 == 29 and n < 90:
            gone += [
                row[0] for row in buf._conn.execute("SELECT blob FROM readings WHERE state = 0")
            ]
            c = buf.claim(100)
            assert c is not None
            buf.ack(c.batch_id)
    buf.purge()
    assert (buf.stats().pending, buf.stats().acknowledged) == (30, 0)
    data = b"".join(_files(store_path).values())
    assert not [b for b in gone if b[12:40] in data]


def _tamper(buf: Buffer, sql: str, *args: object) -> None:
    """Change the open store's file behind the buffer's back: through its own connection,
    the only one its exclusive lock lets in (``BufferConfig.exclusive_lock``); the bytes on
    disk are what another writer would have left."""
    buf._conn.execute(sql, args)


def test_flipped_byte_is_detected_and_quarantined(
    buf: Buffer, store_path: Path, factory: ReadingFactory
) -> None:
    readings = [factory.bp() for _ in range(5)]
    buf.append(readings)
    seq, blob = buf._conn.execute(
        "SELECT seq, blob FROM readings ORDER BY seq LIMIT 1 OFFSET 2"
    ).fetchone()
    flipped = bytearray(blob)
    flipped[len(flipped) // 2] ^= 0x01
    _tamper(buf, "UPDATE readings SET blob = ? WHERE seq = ?", bytes(flipped), seq)
    claim = buf.claim(10)
    assert claim is not None
    assert [r.id for r in claim.readings] == [r.id for i, r in enumerate(readings) if i != 2]
    assert [e.seq for e in claim.quarantined] == [seq]
    s = buf.stats()
    assert s.quarantined == 1
    assert "rows.quarantined" in s.alarms
    kept = buf._conn.execute("SELECT blob, reason FROM quarantine").fetchone()
    assert kept[0] == bytes(flipped)  # kept for forensics, byte for byte


def test_swapped_ciphertexts_are_both_detected(
    buf: Buffer, store_path: Path, factory: ReadingFactory
) -> None:
    buf.append([factory.bp() for _ in range(4)])
    con = buf._conn
    (s1, b1), (s2, b2) = con.execute("SELECT seq, blob FROM readings ORDER BY seq LIMIT 2")
    _tamper(buf, "UPDATE readings SET blob = ? WHERE seq = ?", b2, s1)
    _tamper(buf, "UPDATE readings SET blob = ? WHERE seq = ?", b1, s2)
    claim = buf.claim(10)
    assert claim is not None
    assert len(claim.readings) == 2
    assert sorted(e.seq for e in claim.quarantined) == [s1, s2]


def test_moving_a_row_to_another_lane_is_detected(
    buf: Buffer, store_path: Path, factory: ReadingFactory
) -> None:
    buf.append([factory.bp()])
    _tamper(buf, "UPDATE readings SET lane = 0")  # promote to the alarm lane
    claim = buf.claim(10)
    assert claim is not None
    assert claim.readings == ()
    assert len(claim.quarantined) == 1


def test_key_rotation_keeps_old_rows_readable_and_retires_old_key(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> None:
    b = Buffer.open(store_path, keys, config=config)
    old = [factory.bp() for _ in range(3)]
    b.append(old)
    new_key = b.rotate_data_key()
    new = [factory.bp() for _ in range(3)]
    b.append(new)
    b.close()
    b = Buffer.open(store_path, keys, config=config)  # readable after a restart too
    try:
        c = b.claim(10)
        assert c is not None
        assert [r.id for r in c.readings] == [r.id for r in old + new]
        b.ack(c.batch_id)
        b.purge()
        data_keys = [
            r[0] for r in b._conn.execute("SELECT key_id FROM keys WHERE purpose = 'data'")
        ]
        assert data_keys == [new_key]  # the delivered data's key is gone: routine shredding
        b.append([factory.bp()])
        assert b.claim() is not None
    finally:
        b.close()


def test_kek_rotation_is_crash_safe(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> None:
    b = Buffer.open(store_path, keys, config=config)
    r = factory.bp()
    b.append([r])
    old_kek = keys.path.read_bytes()
    b.rotate_kek()
    assert keys.path.read_bytes() != old_kek
    b.close()

    # Crash between storing the new KEK and switching the rows over: the next open finishes.
    b = Buffer.open(store_path, keys, config=config)
    current = keys.path.read_bytes()
    wrapped = b._conn.execute("SELECT key_id, purpose, wrapped FROM keys").fetchall()
    from agent.buffer.keys import unwrap_key, wrap_key

    nxt = b"\x01" * 32
    with b._conn as con:  # the open store's own connection (its lock is exclusive)
        for key_id, purpose, w in wrapped:
            dek = unwrap_key(current, w, key_id, purpose)
            con.execute(
                "UPDATE keys SET wrapped_next = ? WHERE key_id = ?",
                (wrap_key(nxt, dek, key_id, purpose), key_id),
            )
    b.close()
    keys.replace(nxt)
    b = Buffer.open(store_path, keys, config=config)
    try:
        c = b.claim()
        assert c is not None
        assert c.readings[0].id == r.id
    finally:
        b.close()
    with sqlite3.connect(store_path) as con:
        assert (
            con.execute("SELECT count(*) FROM keys WHERE wrapped_next IS NOT NULL").fetchone()[0]
            == 0
        )


def test_crypto_shredding_makes_every_copy_unreadable(
    store_path: Path,
    keys: FileKeySource,
    config: BufferConfig,
    factory: ReadingFactory,
    tmp_path: Path,
) -> None:
    b = Buffer.open(store_path, keys, config=config)
    b.append(_marked(factory)[:20])
    b._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    stolen = tmp_path / "stolen"
    stolen.mkdir()
    shutil.copy(store_path, stolen / "buffer.db")  # a copy taken before decommissioning
    b.shred()
    assert not keys.path.exists()
    with sqlite3.connect(store_path) as con:
        assert con.execute("SELECT count(*) FROM keys").fetchone()[0] == 0
    # The copy still holds wrapped keys and ciphertext, but no key opens them any more.
    with pytest.raises(KeyLostError):
        FileKeySource(keys.path).load(create=False)
    b2 = Buffer.open(stolen / "buffer.db", FileKeySource(tmp_path / "other.kek"), config=config)
    try:
        s = b2.stats()
        assert s.pending == 0
        assert s.set_aside
        assert "keys" in s.set_aside[0]
    finally:
        b2.close()


def test_corrupt_store_is_set_aside_and_capture_continues(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> None:
    b = Buffer.open(store_path, keys, config=config)
    b.append([factory.bp() for _ in range(300)])
    page = int(b._conn.execute("PRAGMA page_size").fetchone()[0])
    b.close()
    data = bytearray(store_path.read_bytes())
    for i in range(2 * page, 2 * page + 200):  # scribble over a b-tree page
        data[i] = 0xA5
    store_path.write_bytes(bytes(data))
    b = Buffer.open(store_path, keys, config=config)
    try:
        s = b.stats()
        assert s.set_aside
        assert "corrupt" in s.set_aside[0]
        assert "store.set-aside" in s.alarms
        assert (store_path.parent / s.set_aside[0]).exists()  # kept for forensics
        assert b.append([factory.bp()]).stored == 1
        assert b.integrity_ok()
    finally:
        b.close()


def test_not_a_database_is_set_aside(
    store_path: Path, keys: FileKeySource, config: BufferConfig
) -> None:
    store_path.parent.mkdir(parents=True)
    store_path.write_bytes(b"this is not SQLite" * 300)
    b = Buffer.open(store_path, keys, config=config)
    try:
        assert b.stats().set_aside
    finally:
        b.close()


def test_lost_key_file_sets_store_aside(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> None:
    b = Buffer.open(store_path, keys, config=config)
    b.append([factory.bp()])
    b.close()
    keys.path.unlink()
    b = Buffer.open(store_path, keys, config=config)
    try:
        s = b.stats()
        assert s.set_aside
        assert "keys" in s.set_aside[0]
        assert b.append([factory.bp()]).stored == 1
    finally:
        b.close()


def _owed(b: Buffer) -> bool:
    return b.integrity_owed  # a call: mypy does not narrow it between two asserts


def _scribble_index(store_path: Path, b: Buffer, index: str = "seen_log") -> None:
    """Overwrite a leaf page of a b-tree that opening without ``integrity_check`` never
    reads (the de-duplication memory, an index-shaped table without a rowid), so only the
    check itself finds the damage."""
    (leaf,) = (
        r[0]
        for r in b._conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' LIMIT 1", (index,)
        )
    )
    page = int(b._conn.execute("PRAGMA page_size").fetchone()[0])
    b.close()
    data = bytearray(store_path.read_bytes())
    data[(leaf - 1) * page : leaf * page] = b"\xa5" * page
    store_path.write_bytes(bytes(data))


def test_a_deferred_integrity_check_is_owed_until_it_passes(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> None:
    cfg = replace(config, defer_integrity_check=True)
    marker = store_path.with_name("buffer.db.unverified")
    b = Buffer.open(store_path, keys, config=cfg)
    assert _owed(b)
    assert marker.exists()
    b.append([factory.bp() for _ in range(20)])
    assert b.verify_integrity() >= 0
    assert not _owed(b)
    assert not marker.exists()
    b.close()
    b = Buffer.open(store_path, keys, config=cfg)  # deferred again: the last check passed
    assert _owed(b)
    assert marker.exists()
    b.close()  # stopped (or power lost) before the check ran
    b = Buffer.open(store_path, keys, config=cfg)  # so this open checks first
    try:
        assert not _owed(b)
        assert not marker.exists()
        assert b.stats().pending == 20
    finally:
        b.close()


def test_damage_found_by_the_deferred_check_is_set_aside_and_salvaged_at_the_next_open(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> None:
    cfg = replace(config, defer_integrity_check=True)
    b = Buffer.open(store_path, keys, config=cfg)
    readings = [factory.bp() for _ in range(600)]
    b.append(readings)
    b.verify_integrity()
    _scribble_index(store_path, b)
    b = Buffer.open(store_path, keys, config=cfg)
    try:
        assert _owed(b)
        assert not b.stats().set_aside  # the open did not read the damaged page
        assert b.stats().pending == 600  # and the readings can go meanwhile
        with pytest.raises(StoreCorruptError):
            b.verify_integrity()
        assert _owed(b)
    finally:
        b.close()
    b = Buffer.open(store_path, keys, config=cfg)
    try:
        s = b.stats()
        assert len(s.set_aside) == 1
        assert "corrupt" in s.set_aside[0]
        assert "store.set-aside" in s.alarms
        assert s.salvaged == 600
        assert s.pending == 600
        assert not _owed(b)  # checked at this open
        assert not store_path.with_name("buffer.db.unverified").exists()
    finally:
        b.close()


def test_an_interrupted_deferred_check_stays_owed(
    store_path: Path, keys: FileKeySource, config: BufferConfig
) -> None:
    b = Buffer.open(store_path, keys, config=replace(config, defer_integrity_check=True))
    try:
        b.interrupt_verify()  # the agent stops while (or before) the check runs
        with pytest.raises(sqlite3.OperationalError, match="interrupted"):
            b.verify_integrity()
        assert _owed(b)
        assert store_path.with_name("buffer.db.unverified").exists()
    finally:
        b.close()


def test_a_purge_during_the_deferred_check_does_not_wait_for_its_snapshot(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> None:
    """The check's read transaction holds an old snapshot; a truncating checkpoint would
    wait out SQLite's busy timeout (5 s) on the buffer's thread, holding up appends."""
    import time

    b = Buffer.open(store_path, keys, config=replace(config, defer_integrity_check=True))
    try:
        b.append([factory.bp() for _ in range(10)])
        reader = sqlite3.connect(store_path)  # stands in for the check's connection
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM readings").fetchone()
        c = b.claim(10)
        assert c is not None
        b.ack(c.batch_id)
        b._verify_running = True  # as while verify_integrity reads the file
        started = time.monotonic()
        assert b.purge() == 10
        assert time.monotonic() - started < 2.5
        reader.close()
    finally:
        b.close()
