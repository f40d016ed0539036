"""Outbox behaviour: append, claim in priority order, acknowledge, release, purge, restart."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from hw_mocks.synthetic import ReadingFactory

from agent.buffer import AsyncBuffer, Buffer, BufferConfig, FileKeySource
from agent.errors import StoreError
from agent.ids import uuid7
from agent.model import Lane, Reading


def test_append_claim_roundtrip_is_exact(buf: Buffer, factory: ReadingFactory) -> None:
    readings = [factory.bp(), factory.spo2_spot(), factory.oximetry_chunk(30)]
    assert buf.append(readings).stored == 3
    claim = buf.claim(10)
    assert claim is not None
    assert sorted(claim.readings, key=lambda r: r.id) == sorted(readings, key=lambda r: r.id)


def test_priority_lanes_then_oldest_first(buf: Buffer, factory: ReadingFactory) -> None:
    bulk = factory.oximetry_chunk(10, lane=Lane.BULK)
    cont = factory.oximetry_chunk(10)
    spot1, spot2 = factory.bp(), factory.bp()
    alarm = factory.bp(190, lane=Lane.ALARM)
    buf.append([bulk, cont, spot1])
    buf.append([spot2, alarm])
    order = []
    while (c := buf.claim(2)) is not None:
        order += [r.id for r in c.readings]
        buf.ack(c.batch_id)
    assert order == [alarm.id, spot1.id, spot2.id, cont.id, bulk.id]


def test_ack_release_and_purge(buf: Buffer, factory: ReadingFactory) -> None:
    buf.append([factory.bp() for _ in range(10)])
    first = buf.claim(4)
    assert first is not None
    assert buf.stats().claimed == 4
    assert buf.release(first.batch_id) == 4
    again = buf.claim(4)
    assert again is not None
    assert [r.id for r in again.readings] == [r.id for r in first.readings]
    assert again.batch_id != first.batch_id
    assert buf.ack(again.batch_id) == 4
    s = buf.stats()
    assert (s.pending, s.claimed, s.acknowledged) == (6, 0, 4)
    assert buf.purge() == 4
    assert buf.stats().acknowledged == 0


def test_an_idle_purge_writes_nothing(buf: Buffer, factory: ReadingFactory) -> None:
    """With nothing delivered since the last purge, a purge writes neither the database, its
    WAL nor the anchor (an idle box's maintenance timer wrote all three every minute)."""
    buf.append([factory.bp() for _ in range(3)])
    c = buf.claim(3)
    assert c is not None
    buf.ack(c.batch_id)
    assert buf.purge() == 3  # deletes, then truncates the WAL
    buf.append([factory.bp()])  # a commit since: still no reason to checkpoint
    buf._outbox.maybe_anchor(force=True)  # (the anchor may catch up with the append)
    files = [buf.path, buf.path.with_name(buf.path.name + "-wal")]
    anchor = buf.path.with_name(buf.path.name + ".anchor")
    before = [(f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    anchored = anchor.stat().st_mtime_ns if anchor.exists() else None
    tx = buf._outbox.ledger.tx
    for _ in range(3):
        assert buf.purge() == 0
    assert buf._outbox.ledger.tx == tx
    assert [(f.stat().st_size, f.stat().st_mtime_ns) for f in files] == before
    assert (anchor.stat().st_mtime_ns if anchor.exists() else None) == anchored
    c = buf.claim(3)
    assert c is not None
    buf.ack(c.batch_id)
    assert buf.purge() == 1  # a delivered row is still purged, the WAL truncated
    assert buf.path.with_name(buf.path.name + "-wal").stat().st_size == 0


def test_late_ack_of_released_batch_still_counts(buf: Buffer, factory: ReadingFactory) -> None:
    buf.append([factory.bp() for _ in range(3)])
    c = buf.claim(3)
    assert c is not None
    buf.release(c.batch_id)  # the ack timed out ...
    assert buf.ack(c.batch_id) == 3  # ... then arrived: the service has them durably
    assert buf.stats().pending == 0
    assert buf.claim(3) is None


def test_ack_by_reading_id(buf: Buffer, factory: ReadingFactory) -> None:
    buf.append([factory.bp() for _ in range(5)])
    c = buf.claim(5)
    assert c is not None
    assert buf.ack_ids([r.id for r in c.readings[:2]]) == 2
    s = buf.stats()
    assert (s.claimed, s.acknowledged) == (3, 2)


def test_max_bytes_bounds_a_batch(buf: Buffer, factory: ReadingFactory) -> None:
    buf.append([factory.oximetry_chunk(60) for _ in range(10)])
    c = buf.claim(100, max_bytes=1)
    assert c is not None
    assert len(c.readings) == 1  # at least one, even when it alone exceeds the bound


@pytest.mark.parametrize("check", ["at open", "deferred"])
def test_restart_turns_claimed_back_into_pending(
    store_path: Path,
    keys: FileKeySource,
    config: BufferConfig,
    factory: ReadingFactory,
    check: str,
) -> None:
    # Deferred (the daemon's open): the counts come from the full scan, not the indexes.
    config = replace(config, defer_integrity_check=check == "deferred")
    b = Buffer.open(store_path, keys, config=config)
    readings = [factory.bp() for _ in range(6)]
    b.append(readings)
    c = b.claim(4)
    assert c is not None
    if b.integrity_owed:
        b.verify_integrity()  # else the next open would check first
    b.close()  # no ack: the process "restarts"
    b = Buffer.open(store_path, keys, config=config)
    try:
        assert b.integrity_owed == (check == "deferred")
        s = b.stats()
        assert (s.pending, s.claimed) == (6, 0)
        c2 = b.claim(10)
        assert c2 is not None
        assert [r.id for r in c2.readings] == [r.id for r in readings]
        assert c2.batch_id > c.batch_id  # batch numbers never repeat across restarts
    finally:
        b.close()


def test_dedup_by_natural_key_survives_delivery(buf: Buffer, factory: ReadingFactory) -> None:
    t = datetime(2026, 11, 20, 7, 30)
    first = factory.bp(128, device_time=t)
    # A cuff re-sending its memory: a new capture (new id), the same record.
    resent = replace(factory.bp(128, device_time=t), observations=first.observations)
    assert buf.append([first]).stored == 1
    c = buf.claim()
    assert c is not None
    buf.ack(c.batch_id)
    buf.purge()
    result = buf.append([resent])
    assert (result.stored, result.duplicates) == (0, 1)
    # A different value at the same device time is another measurement.
    assert buf.append([factory.bp(129, device_time=t)]).stored == 1


def test_readings_without_device_time_are_never_deduplicated(
    buf: Buffer, factory: ReadingFactory
) -> None:
    a = factory.spo2_spot(97)
    b = replace(a, id=uuid7())
    assert buf.append([a, b]).stored == 2


def test_one_process_per_store(buf: Buffer, store_path: Path, keys: FileKeySource) -> None:
    with pytest.raises(StoreError, match="another process"):
        Buffer.open(store_path, keys)


def test_files_are_private(buf: Buffer, factory: ReadingFactory, tmp_path: Path) -> None:
    buf.append([factory.bp()])
    for p in (tmp_path / "state").iterdir():
        if p.is_file():
            assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, p.name


def test_key_file_permissions_are_repaired_and_reported(
    store_path: Path, keys: FileKeySource, config: BufferConfig
) -> None:
    Buffer.open(store_path, keys, config=config).close()
    os.chmod(keys.path, 0o644)
    b = Buffer.open(store_path, keys, config=config)
    try:
        assert stat.S_IMODE(keys.path.stat().st_mode) == 0o600
        assert "key.permissions" in b.stats().alarms
    finally:
        b.close()


async def test_async_buffer_runs_off_the_loop(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> None:
    ab = await AsyncBuffer.open(store_path, keys, config=config)
    try:
        await ab.append([factory.bp(), factory.bp()])
        c = await ab.claim(5)
        assert c is not None
        assert len(c.readings) == 2
        assert await ab.ack(c.batch_id) == 2
        assert await ab.purge() == 2
        assert (await ab.stats()).pending == 0
    finally:
        await ab.close()


def test_an_undeliverable_batch_goes_to_quarantine_not_away(
    buf: Buffer, factory: ReadingFactory
) -> None:
    buf.append([factory.bp() for _ in range(3)])
    stuck = buf.claim(1)
    assert stuck is not None
    assert buf.quarantine_batch(stuck.batch_id, "refused by the service") == 1
    s = buf.stats()
    assert (s.pending, s.claimed, s.quarantined) == (2, 0, 1)
    assert "rows.quarantined" in s.alarms
    rest = buf.claim(10)
    assert rest is not None
    assert stuck.readings[0].id not in {r.id for r in rest.readings}


async def test_a_cancelled_append_that_committed_is_not_stored_again(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> None:
    """Cancelling ``await abuf.append`` cannot stop the job on the buffer's thread; a caller
    that puts the readings back and appends them again must not store them twice, also for
    continuous chunks, which have no natural key (issue 8: 300 chunks gave 600 rows)."""
    import asyncio
    import threading

    ab = await AsyncBuffer.open(store_path, keys, config=config)
    real_append = ab.sync._outbox.append
    started, go = threading.Event(), threading.Event()

    def held_append(readings):  # runs on the buffer's thread
        started.set()
        assert go.wait(60), "the test never let the append go on"
        return real_append(readings)

    try:
        chunks = [factory.oximetry_chunk(60) for _ in range(300)]
        duplicates = 0
        for chunk in chunks:
            started.clear()
            go.clear()
            ab.sync._outbox.append = held_append  # type: ignore[method-assign]
            task = asyncio.create_task(ab.append([chunk]))
            assert await asyncio.to_thread(started.wait, 60)  # the job is running now
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            go.set()  # ... and commits although its caller was cancelled
            ab.sync._outbox.append = real_append  # type: ignore[method-assign]
            duplicates += (await ab.append([chunk])).duplicates  # the collector's retry
        s = await ab.stats()
        assert s.pending == 300
        assert duplicates == 300  # every cancelled append did commit
        got = []
        while (c := await ab.claim(500)) is not None:
            got += [r.id for r in c.readings]
            await ab.ack(c.batch_id)
        assert sorted(got) == sorted(r.id for r in chunks)
    finally:
        await ab.close()


def test_same_reading_id_is_a_duplicate_without_natural_key(
    buf: Buffer, factory: ReadingFactory
) -> None:
    chunk = factory.oximetry_chunk(60)
    spot = factory.spo2_spot(97)  # no device clock: no natural key either
    assert chunk.natural_key is None
    assert spot.natural_key is None
    assert buf.append([chunk, spot]).stored == 2
    again = buf.append([chunk, spot, replace(spot, id=uuid7())])
    assert (again.stored, again.duplicates) == (1, 2)
    c = buf.claim(10)
    assert c is not None
    buf.ack(c.batch_id)
    buf.purge()
    assert buf.append([chunk]).duplicates == 1  # also after delivery


def test_an_appends_keys_are_the_readings_keys(buf: Buffer, factory: ReadingFactory) -> None:
    """Seen.keys_of (the append's one pass, HMAC states prepared per call) gives each
    reading's Seen.key: by natural key, by reading id without one, the week buckets too."""
    readings = [
        factory.bp(),
        factory.bp(device_time=datetime(1999, 1, 3, 0, 0, 1)),
        factory.spo2_spot(97),
        factory.oximetry_chunk(60),
        factory.bp(121),
    ]
    seen = buf._seen
    got = seen.keys_of(readings, [r.natural_key for r in readings])
    assert got == [seen.key(r) for r in readings]
    assert len(set(got)) == len(readings)


def test_dedup_keys_of_a_store_from_before_seen_log_still_count(
    buf: Buffer, factory: ReadingFactory
) -> None:
    """An older store kept 16-byte keys in ``seen``; they are consulted until they expire."""
    t = datetime(2026, 3, 1, 9, 0)
    old = factory.bp(120, device_time=t)
    key = buf._seen.key(old)[1]  # the same HMAC, all 16 bytes
    buf._conn.execute("INSERT INTO seen (nk, gen) VALUES (?, 0)", (key,))
    buf._seen.clear()
    resent = replace(factory.bp(120, device_time=t), observations=old.observations)
    assert buf.append([resent]).duplicates == 1


def test_dedup_memory_expires_by_generation(
    store_path: Path, keys: FileKeySource, factory: ReadingFactory
) -> None:
    b = Buffer.open(store_path, keys, config=BufferConfig(reserve_bytes=0, seen_generations=1))
    try:
        t = datetime(2026, 3, 1, 9, 0)
        first = factory.bp(120, device_time=t)
        b.append([first])
        c = b.claim()
        assert c is not None
        b.ack(c.batch_id)
        b._outbox.next_seq = 3 << 16  # as if 196,608 readings had been stored since
        b.purge()
        assert b._conn.execute("SELECT count(*) FROM seen_log").fetchone()[0] == 0
        twin = replace(factory.bp(120, device_time=t), observations=first.observations)
        assert b.append([twin]).stored == 1  # forgotten, as configured
    finally:
        b.close()


def test_the_migration_names_known_at_open_are_the_migrations() -> None:
    from sqlite_utils.migrations import Migrations

    from agent.buffer import migrations, schema

    assert tuple(m.name for m in migrations.MIGRATIONS._migrations) == schema.MIGRATION_NAMES
    assert Migrations.migrations_table == schema.MIGRATIONS_TABLE


def test_an_up_to_date_store_opens_without_sqlite_utils(
    buf: Buffer, factory: ReadingFactory, store_path: Path, keys: FileKeySource
) -> None:
    """The daemon's memory: sqlite-utils (and numpy, where installed) is loaded only to
    migrate, so a fresh process opening an existing store never imports it."""
    import subprocess
    import sys

    buf.append([factory.bp()])
    buf.close()
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from agent.buffer import Buffer, FileKeySource\n"
        f"b = Buffer.open(Path({str(store_path)!r}), FileKeySource(Path({str(keys.path)!r})))\n"
        "assert b.stats().pending == 1\n"
        "b.close()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('sqlite_utils', 'numpy', 'click')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_a_new_store_takes_the_page_size_and_an_old_one_keeps_its_own(
    store_path: Path, keys: FileKeySource, factory: ReadingFactory
) -> None:
    """``page_size`` is set before the first table (and before auto_vacuum, which would fix
    it); 1 KiB is the default for a new store; a store made with other pages (4 KiB, the
    default before) keeps them and works as it did: no migration VACUUMs a card. The same for
    ``auto_vacuum``: NONE for a new store, an INCREMENTAL one (before 7 December 2026) keeps it."""
    assert BufferConfig().page_size == 1024
    b = Buffer.open(store_path, keys, config=BufferConfig(reserve_bytes=0))
    assert b._conn.execute("PRAGMA page_size").fetchone()[0] == 1024
    assert b._conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0  # none
    b.close()
    old = store_path.with_name("old.db")
    made = BufferConfig(reserve_bytes=0, page_size=4096, auto_vacuum="incremental")
    b = Buffer.open(old, keys, config=made)
    b.append([factory.bp() for _ in range(5)])
    b.close()
    b = Buffer.open(old, keys, config=BufferConfig(reserve_bytes=0))
    try:
        assert b._conn.execute("PRAGMA page_size").fetchone()[0] == 4096
        assert b._conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental, still
        assert b.stats().pending == 5
        b.append([factory.oximetry_chunk(60) for _ in range(40)])
        c = b.claim(500)
        assert c is not None
        assert b.ack(c.batch_id) == 45
        assert b.purge() == 45
        assert b.stats().pending == 0
        assert b.integrity_ok()
    finally:
        b.close()


def _purged_top(b: Buffer, factory: ReadingFactory) -> list[Reading]:
    """5 spot readings left pending (seq 1-5) under 10 alarms (seq 6-15) delivered and purged:
    the store's highest seq ever used (15) is above every row it still holds."""
    spots = [factory.bp(100 + i) for i in range(5)]
    b.append(spots)
    b.append([factory.bp(150 + i, lane=Lane.ALARM) for i in range(10)])
    c = b.claim(10)
    assert c is not None
    assert {r.lane for r in c.readings} == {Lane.ALARM}
    b.ack(c.batch_id)
    assert b.purge() == 10
    assert b._conn.execute("SELECT max(seq) FROM readings").fetchone()[0] == 5
    return spots


def _top_seq(b: Buffer) -> int:
    return int(b._conn.execute("SELECT max(seq) FROM readings").fetchone()[0])


def test_a_purged_seq_is_never_handed_out_again(
    store_path: Path, keys: FileKeySource, factory: ReadingFactory
) -> None:
    """Without AUTOINCREMENT (m005) the floor in ``meta`` keeps the sequence from going back
    after the top rows were purged, across a reopen; an append writes no sqlite_sequence."""
    b = Buffer.open(store_path, keys, config=BufferConfig(reserve_bytes=0))
    _purged_top(b, factory)
    b.close()
    b = Buffer.open(store_path, keys, config=BufferConfig(reserve_bytes=0))
    try:
        b.append([factory.bp(170)])
        assert _top_seq(b) == 16
        assert b._conn.execute("SELECT count(*) FROM sqlite_sequence").fetchone()[0] == 0
        sql = b._conn.execute("SELECT sql FROM sqlite_master WHERE name = 'readings'").fetchone()
        assert "AUTOINCREMENT" not in sql[0].upper()
    finally:
        b.close()


def test_m005_migrates_a_store_with_pending_rows_and_keeps_its_sequence(
    store_path: Path, keys: FileKeySource, factory: ReadingFactory
) -> None:
    """A store from before m005 (``readings`` with AUTOINCREMENT, its high-water mark only in
    sqlite_sequence) is rebuilt at its next open: its pending rows are delivered unchanged,
    and the next seq is above every seq it ever used, not only above the rows left."""
    import sqlite3

    from agent.buffer import schema

    b = Buffer.open(store_path, keys, config=BufferConfig(reserve_bytes=0))
    spots = _purged_top(b, factory)
    b.close()
    # Put the store back as m004 left it.
    conn = sqlite3.connect(store_path, isolation_level=None)
    conn.executescript(
        "BEGIN;"
        "CREATE TABLE readings_old (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " lane INTEGER NOT NULL, state INTEGER NOT NULL, batch INTEGER,"
        " key_id INTEGER NOT NULL, blob BLOB NOT NULL, tag BLOB);"
        "INSERT INTO readings_old SELECT seq, lane, state, batch, key_id, blob, tag FROM readings;"
        "DROP TABLE readings;"
        "ALTER TABLE readings_old RENAME TO readings;"
        "CREATE INDEX readings_pending ON readings(lane, seq) WHERE state = 0;"
        "CREATE INDEX readings_batch ON readings(batch) WHERE batch IS NOT NULL;"
        "CREATE INDEX readings_acked ON readings(seq) WHERE state = 2;"
        "UPDATE sqlite_sequence SET seq = 15 WHERE name = 'readings';"
        "DELETE FROM meta WHERE k = 'seq_floor';"
        "DELETE FROM _sqlite_migrations WHERE name = 'm005_readings_without_autoincrement';"
        "COMMIT;"
    )
    assert (
        conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()[0] == 15
    )
    assert schema.migrations_pending(conn)
    conn.close()
    b = Buffer.open(store_path, keys, config=BufferConfig(reserve_bytes=0))
    try:
        assert not schema.migrations_pending(b._conn)
        sql = b._conn.execute("SELECT sql FROM sqlite_master WHERE name = 'readings'").fetchone()
        assert "AUTOINCREMENT" not in sql[0].upper()
        floor = b._conn.execute("SELECT v FROM meta WHERE k = 'seq_floor'").fetchone()[0]
        assert floor == 15
        assert b.integrity_ok()
        assert b.stats().pending == 5
        assert b.append([factory.bp(170)]).stored == 1
        assert _top_seq(b) == 16  # not 6: seq 6-15 were used and purged
        assert b.append(spots).duplicates == 5  # the de-duplication memory is kept
        c = b.claim(10)
        assert c is not None
        assert [r for r in c.readings if r.id in {s.id for s in spots}] == spots
        assert len(c.readings) == 6
        b.ack(c.batch_id)
    finally:
        b.close()


def test_m004_keeps_the_dedup_memory_of_a_store_from_before_it(
    store_path: Path, keys: FileKeySource, factory: ReadingFactory
) -> None:
    """A store made with ``seen_log`` and its two indexes (m003) is migrated to the clustered
    table at its next open, its rows kept: what it stored is still a duplicate."""
    import sqlite3

    from agent.buffer import schema

    cfg = BufferConfig(reserve_bytes=0, seen_tail_keys=0)  # every key in seen_log at once
    b = Buffer.open(store_path, keys, config=cfg)
    t = datetime(2026, 3, 1, 9, 0)
    first = factory.bp(120, device_time=t)
    chunk = factory.oximetry_chunk(60)
    b.append([first, chunk])
    rows = b._conn.execute("SELECT gen, bucket, keys FROM seen_log").fetchall()
    assert len(rows) == 2  # two buckets: the cuff's week, the chunk's week
    b.close()
    # Put the store back as m003 left it: the rowid table with its two indexes.
    conn = sqlite3.connect(store_path, isolation_level=None)
    conn.executescript(
        "DROP TABLE seen_log;"
        "CREATE TABLE seen_log (id INTEGER PRIMARY KEY, gen INTEGER NOT NULL,"
        " bucket BLOB NOT NULL, keys BLOB NOT NULL);"
        "CREATE INDEX seen_log_bucket ON seen_log(bucket);"
        "CREATE INDEX seen_log_gen ON seen_log(gen);"
    )
    conn.executemany("INSERT INTO seen_log (gen, bucket, keys) VALUES (?, ?, ?)", rows)
    conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm004_seen_log_clustered'")
    assert schema.migrations_pending(conn)
    conn.close()
    b = Buffer.open(store_path, keys, config=cfg)
    try:
        indexes = b._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'seen_log'"
        ).fetchall()
        assert indexes == []  # the key is the table itself; no index
        assert not schema.migrations_pending(b._conn)
        again = b._conn.execute("SELECT gen, bucket, keys FROM seen_log").fetchall()
        assert sorted(again) == sorted(rows)
        twin = replace(factory.bp(120, device_time=t), observations=first.observations)
        assert b.append([twin, chunk]).duplicates == 2
        assert b.append([factory.bp(121, device_time=t)]).stored == 1
        assert b.integrity_ok()
    finally:
        b.close()
