"""What the store writes to the card (issue 12, ``docs/buffer.md``, "Flash"): the WAL index in
memory (``locking_mode=EXCLUSIVE``, no ``-shm`` file), and the store that defers its integrity
check and takes the lock once the check passed."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from hw_mocks.synthetic import ReadingFactory

from agent.buffer import AsyncBuffer, Buffer, BufferConfig, FileKeySource


def _shm(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + "-shm")


def _other_reader_can_read(store_path: Path) -> bool:
    conn = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=0)
    try:
        conn.execute("SELECT count(*) FROM readings").fetchone()
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise
        return False
    finally:
        conn.close()
    return True


def test_the_store_keeps_its_wal_index_in_memory(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> None:
    b = Buffer.open(store_path, keys, config=config)
    try:
        b.append([factory.bp()])
        assert b._conn.execute("PRAGMA locking_mode").fetchone()[0] == "exclusive"
        assert store_path.with_name(store_path.name + "-wal").exists()
        assert not _shm(store_path).exists()
        assert not _other_reader_can_read(store_path)  # the lock is held, not only the mode
        assert b.take_exclusive_lock()
    finally:
        b.close()
    assert _other_reader_can_read(store_path)  # given back at close


def test_a_deferred_check_runs_beside_the_store_which_then_takes_the_lock(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> None:
    cfg = replace(config, defer_integrity_check=True)
    Buffer.open(store_path, keys, config=config).close()  # made, so that this open defers
    b = Buffer.open(store_path, keys, config=cfg)
    try:
        assert b.integrity_owed
        readings = [factory.bp() for _ in range(30)]
        b.append(readings[:10])
        assert _shm(store_path).exists()  # the shared index the check's connection needs
        assert _other_reader_can_read(store_path)
        assert not b.take_exclusive_lock()  # not before the check passed
        b.verify_integrity()
        b.append(readings[10:20])  # an operation between the check and the lock
        assert b.purge() == 0  # a purge takes it (as AsyncBuffer.verify_integrity does)
        assert b._conn.execute("PRAGMA locking_mode").fetchone()[0] == "exclusive"
        assert not _shm(store_path).exists()
        assert not _other_reader_can_read(store_path)
        assert b.append(readings[20:]).stored == 10
        assert b.append(readings).duplicates == 30  # the de-duplication memory is intact
        c = b.claim(100)
        assert c is not None
        assert sorted(r.id for r in c.readings) == sorted(r.id for r in readings)
        assert b.ack(c.batch_id) == 30
        assert b.purge() == 30
    finally:
        b.close()
    b = Buffer.open(store_path, keys, config=config)
    try:
        assert b.stats().pending == 0
        assert b.integrity_ok()
    finally:
        b.close()


def test_the_lock_is_not_taken_while_another_process_reads(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> None:
    """A reader of the file (a technician's sqlite3 shell) keeps the store on its shared
    index instead of stopping it."""
    cfg = replace(config, defer_integrity_check=True)
    Buffer.open(store_path, keys, config=config).close()
    b = Buffer.open(store_path, keys, config=cfg)
    reader = sqlite3.connect(store_path)
    try:
        b.verify_integrity()
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM readings").fetchone()  # holds a read lock
        assert not b.take_exclusive_lock()
        assert b.append([factory.bp()]).stored == 1
        reader.execute("COMMIT")
    finally:
        reader.close()
        b.close()


def test_async_verify_takes_the_lock(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> None:
    async def main() -> None:
        Buffer.open(store_path, keys, config=config).close()
        ab = await AsyncBuffer.open(
            store_path, keys, config=replace(config, defer_integrity_check=True)
        )
        try:
            await ab.append([factory.bp()])
            assert _shm(store_path).exists()
            await ab.verify_integrity()
            assert not _shm(store_path).exists()
            assert (await ab.append([factory.bp()])).stored == 1
            assert (await ab.stats()).pending == 2
        finally:
            await ab.close()

    asyncio.run(main())


@pytest.mark.parametrize("exclusive", [True, False])
def test_a_store_opens_in_either_mode_after_the_other(
    store_path: Path,
    keys: FileKeySource,
    config: BufferConfig,
    factory: ReadingFactory,
    exclusive: bool,
) -> None:
    b = Buffer.open(store_path, keys, config=replace(config, exclusive_lock=not exclusive))
    b.append([factory.bp() for _ in range(5)])
    b._conn.close()  # a crash: no checkpoint, the WAL stays (and the -shm, if any)
    b._lock.release()
    b = Buffer.open(store_path, keys, config=replace(config, exclusive_lock=exclusive))
    try:
        assert b.stats().pending == 5
        assert b.integrity_ok()
    finally:
        b.close()


def _pending_index_sql(b: Buffer) -> str:
    row = b._conn.execute("SELECT sql FROM sqlite_master WHERE name = 'readings_pending'")
    return str(row.fetchone()[0])


def test_m006_leaves_chunks_out_of_the_pending_index_and_claims_stay_in_order(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> None:
    """A store from before m006 (every pending row in ``readings_pending``) is migrated at
    its next open; claims still take the lanes in priority order, oldest first, also rows
    given back by a release, and an append of a chunk writes no page of the index."""
    from agent.buffer import schema
    from agent.model import Lane

    b = Buffer.open(store_path, keys, config=config)
    chunks = [factory.oximetry_chunk(60) for _ in range(6)]
    spots = [factory.bp() for _ in range(3)]
    b.append(chunks[:3])
    b.append(spots[:1])
    b.append(chunks[3:])
    b.append(spots[1:])
    b.close()
    conn = sqlite3.connect(store_path, isolation_level=None)
    conn.executescript(
        "BEGIN;"
        "DROP INDEX readings_pending;"
        "CREATE INDEX readings_pending ON readings(lane, seq) WHERE state = 0;"
        "DELETE FROM _sqlite_migrations WHERE name = 'm006_pending_index_without_chunks';"
        "COMMIT;"
    )
    assert schema.migrations_pending(conn)
    conn.close()
    b = Buffer.open(store_path, keys, config=config)
    try:
        assert not schema.migrations_pending(b._conn)
        assert "lane != 2" in _pending_index_sql(b)
        assert b.integrity_ok()
        assert b.stats().pending_by_lane == {"alarm": 0, "spot": 3, "continuous": 6, "bulk": 0}
        first = b.claim(5)
        assert first is not None
        assert [r.id for r in first.readings] == [r.id for r in spots + chunks[:2]]
        second = b.claim(2)
        assert second is not None
        assert [r.id for r in second.readings] == [r.id for r in chunks[2:4]]
        assert b.release(first.batch_id) == 5  # back to pending, ahead of the rest again
        again = b.claim(10)
        assert again is not None
        assert [r.id for r in again.readings] == [r.id for r in spots + chunks[:2] + chunks[4:]]
        assert all(r.lane in (Lane.SPOT, Lane.CONTINUOUS) for r in again.readings)
        index_pages = {
            p
            for (p,) in b._conn.execute("SELECT pageno FROM dbstat WHERE name = 'readings_pending'")
        }
        b._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        b.append([factory.oximetry_chunk(60)])
        wal = store_path.with_name(store_path.name + "-wal").read_bytes()
        page = b._conn.execute("PRAGMA page_size").fetchone()[0]
        written = {
            int.from_bytes(wal[32 + i * (24 + page) : 36 + i * (24 + page)], "big")
            for i in range((len(wal) - 32) // (24 + page))
        }
        assert written
        assert not written & index_pages
    finally:
        b.close()


def _seen_log_rows(b: Buffer) -> int:
    return int(b._conn.execute("SELECT count(*) FROM seen_log").fetchone()[0])


def test_the_latest_dedup_keys_ride_in_the_ledger_row_and_survive_a_crash(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> None:
    """m007: an append keeps its de-duplication keys in the ledger row (rewritten by every
    commit anyway) until more than ``seen_tail_keys`` wait; they are duplicates all along,
    after a crash (no close) and after the tail moved to ``seen_log``."""
    cfg = replace(config, seen_tail_keys=8)
    b = Buffer.open(store_path, keys, config=cfg)
    chunks = [factory.oximetry_chunk(60) for _ in range(12)]
    cuff = [factory.bp() for _ in range(3)]
    for c in chunks[:6]:
        b.append([c])
    assert _seen_log_rows(b) == 0  # six keys: all in the tail
    b.append(cuff)  # 6 + 3 > 8: this append moves the tail to seen_log
    assert _seen_log_rows(b) > 0
    for c in chunks[6:8]:
        b.append([c])  # in the tail again
    tail = b._conn.execute("SELECT seen_tail FROM ledger").fetchone()[0]
    assert len(tail) == 2 * 20
    b._conn.close()  # a crash: nothing but the committed transactions
    b._lock.release()
    b = Buffer.open(store_path, keys, config=cfg)
    try:
        assert b.append(chunks[:8] + cuff).duplicates == 11
        for c in chunks[8:]:
            b.append([c])
        assert b.append(chunks + cuff).duplicates == 15
        assert b.stats().pending == 15
    finally:
        b.close()
    b = Buffer.open(store_path, keys, config=cfg)
    try:
        assert b.append(chunks + cuff).duplicates == 15
        assert b.integrity_ok()
    finally:
        b.close()


def test_m007_adds_the_tail_to_a_store_from_before_it(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> None:
    from agent.buffer import schema

    b = Buffer.open(store_path, keys, config=replace(config, seen_tail_keys=0))
    stored = [factory.bp() for _ in range(3)] + [factory.oximetry_chunk(60)]
    b.append(stored)
    b.close()
    conn = sqlite3.connect(store_path, isolation_level=None)
    conn.execute("ALTER TABLE ledger DROP COLUMN seen_tail")
    conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm007_seen_tail_in_the_ledger'")
    assert schema.migrations_pending(conn)
    conn.close()
    b = Buffer.open(store_path, keys, config=config)
    try:
        assert not schema.migrations_pending(b._conn)
        assert b.append(stored).duplicates == 4  # what it stored is still a duplicate
        assert b.append([factory.oximetry_chunk(60)]).stored == 1
        tail = b._conn.execute("SELECT seen_tail FROM ledger").fetchone()[0]
        assert isinstance(tail, bytes)
        assert len(tail) == 20  # the new chunk's key, in the ledger row
        assert b.stats().alarms == ()
    finally:
        b.close()


def test_a_damaged_tail_is_an_empty_one(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> None:
    b = Buffer.open(store_path, keys, config=config)
    b.append([factory.bp()])
    b._conn.execute("UPDATE ledger SET seen_tail = x'0102'")
    b.close()
    b = Buffer.open(store_path, keys, config=config)
    try:
        assert b.append([factory.bp()]).stored == 1
        assert b.stats().pending == 2
    finally:
        b.close()


def _anchor(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".anchor")


def test_the_anchor_is_overwritten_in_place_in_two_slots(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> None:
    """After the first (atomic) one, an anchor overwrites the older of two slots in the same
    file: no new inode, no rename; the newer record survives a torn write of the other."""
    from agent.buffer import integrity

    b = Buffer.open(store_path, keys, config=replace(config, anchor_interval_s=0))
    try:
        inode = _anchor(store_path).stat().st_ino
        seen = []
        for _ in range(4):
            b.append([factory.bp()])  # anchored after the commit (interval 0)
            tx = b._outbox.ledger.tx
            anchor = integrity.read_anchor(store_path, b._outbox._keyring)
            assert anchor is not None
            assert anchor.tx == tx
            seen.append(tx)
            assert _anchor(store_path).stat().st_ino == inode
        data = _anchor(store_path).read_bytes()
        slots = integrity._slots(b._outbox._keyring, data)
        assert sorted(a.tx for a in slots if a) == seen[-2:]  # the last two, one per slot
        # A power cut tears the slot being written: the other one still answers.
        newest = max((a.tx, i) for i, a in enumerate(slots) if a is not None)[1]
        torn = bytearray(data)
        torn[newest * integrity.ANCHOR_SLOT_BYTES + 5] ^= 0xFF
        _anchor(store_path).write_bytes(bytes(torn))
        anchor = integrity.read_anchor(store_path, b._outbox._keyring)
        assert anchor is not None
        assert anchor.tx == seen[-2]
        # ... and the next write replaces the torn slot, keeping the good one.
        b.append([factory.bp()])
        slots = integrity._slots(b._outbox._keyring, _anchor(store_path).read_bytes())
        assert sorted(a.tx for a in slots if a) == [seen[-2], b._outbox.ledger.tx]
    finally:
        b.close()
    b = Buffer.open(store_path, keys, config=config)
    try:
        assert not b.stats().alarms
    finally:
        b.close()


def test_a_one_record_anchor_from_before_the_slots_is_read_and_kept(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> None:
    """An anchor file as written before 4 December 2026 (one record, 49 bytes) still counts:
    a store older than it is noticed, and the first new anchor goes to the second slot."""
    from agent.buffer import integrity

    b = Buffer.open(store_path, keys, config=replace(config, anchor_interval_s=0))
    try:
        b.append([factory.bp()])
        keyring = b._outbox._keyring
        old = integrity.read_anchor(store_path, keyring)
        assert old is not None
        ahead = integrity.Anchor(old.store_id, old.tx + 10, old.next_batch)
        body = integrity._ANCHOR.pack(1, ahead.store_id, ahead.tx, ahead.next_batch)
        one = body + keyring.blind(b"anchor|", body)
        assert len(one) == 49
    finally:
        b.close()
    _anchor(store_path).write_bytes(one)  # the old format, ahead of the store
    b = Buffer.open(store_path, keys, config=config)
    try:
        assert "store.rolled-back" in b.stats().alarms
        slots = integrity._slots(b._outbox._keyring, _anchor(store_path).read_bytes())
        assert slots[0] == ahead  # kept: it is the newest record
        assert slots[1] is not None
        assert slots[1].tx == b._outbox.ledger.tx
    finally:
        b.close()


def test_an_anchor_slot_of_another_store_is_replaced_first(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> None:
    """A record of another store (same key, a store made anew beside an old anchor) is neither
    read as this store's nor kept over this store's own newest record."""
    from agent.buffer import integrity

    b = Buffer.open(store_path, keys, config=replace(config, anchor_interval_s=0))
    try:
        keyring = b._outbox._keyring
        mine = integrity.read_anchor(store_path, keyring)
        assert mine is not None
        other = integrity.Anchor(b"\x01" * 16, mine.tx + 100, 999)
        integrity.write_anchor(store_path, keyring, other)
        assert integrity.read_anchor(store_path, keyring, mine.store_id) == mine
        b.append([factory.bp()])  # overwrites the other store's slot, keeps its own
        slots = integrity._slots(keyring, _anchor(store_path).read_bytes())
        assert all(a is not None and a.store_id == mine.store_id for a in slots)
    finally:
        b.close()


def _wal_size(store_path: Path) -> int:
    wal = store_path.with_name(store_path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_a_claim_writes_nothing_and_an_ack_deletes_what_it_delivers(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> None:
    """Claims are kept in memory (only every BATCH_BLOCK-th batch number writes ``meta``), an
    acknowledgement deletes its rows and counts them as acknowledged until the purge."""
    from agent.buffer.outbox import BATCH_BLOCK

    b = Buffer.open(store_path, keys, config=config)
    try:
        b.append([factory.oximetry_chunk(60) for _ in range(30)])
        first = b.claim(5)  # reserves the block of batch numbers: one small write
        assert first is not None
        wal = _wal_size(store_path)
        claims = [b.claim(5) for _ in range(3)]
        assert all(c is not None for c in claims)
        assert _wal_size(store_path) == wal  # nothing written
        states = {r[0] for r in b._conn.execute("SELECT DISTINCT state FROM readings")}
        assert states == {0}  # the file holds pending rows only
        assert b.stats().claimed == 20
        assert b.ack(first.batch_id) == 5
        assert b._conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 25
        assert b.stats().acknowledged == 5  # until the purge truncated the WAL
        # A released batch's late acknowledgement by batch still settles it, also after its
        # rows were claimed again.
        late = claims[0]
        assert late is not None
        assert b.release(late.batch_id) == 5
        again = b.claim(5)
        assert again is not None
        assert {r.id for r in again.readings} == {r.id for r in late.readings}
        assert b.ack(late.batch_id) == 5
        assert b.ack(again.batch_id) == 0  # gone already
        assert b.stats().claimed == 10
        assert b.purge() == 10
        assert b.stats().acknowledged == 0
        top = max(c.batch_id for c in claims if c is not None)
    finally:
        b.close()
    b = Buffer.open(store_path, keys, config=config)
    try:
        assert b.stats().claimed == 0  # claims back to pending
        assert b.stats().pending == 20
        c = b.claim(500)
        assert c is not None
        assert top < c.batch_id <= first.batch_id + BATCH_BLOCK  # never handed out twice
        assert len(c.readings) == 20
    finally:
        b.close()


def test_states_an_older_release_wrote_into_rows_still_count_by_their_tags(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> None:
    """A store from before claims were kept in memory: rows it marked delivered are purged,
    rows it had claimed are pending again at open and a late acknowledgement of their batch
    still deletes them (their tags say they were given it); a forged batch is not obeyed."""
    from agent.buffer.outbox import Delta

    b = Buffer.open(store_path, keys, config=config)
    readings = [factory.bp(100 + i) for i in range(8)]
    b.append(readings)
    tag = b._outbox._tag
    con = b._conn
    for seq in (1, 2):  # delivered, not yet purged
        con.execute(
            "UPDATE readings SET state = 2, batch = 1, tag = ? WHERE seq = ?", (tag(seq, 2, 1), seq)
        )
    for seq in (3, 4):  # claimed in batch 2 when the old agent stopped
        con.execute(
            "UPDATE readings SET state = 1, batch = 2, tag = ? WHERE seq = ?", (tag(seq, 1, 2), seq)
        )
    con.execute("UPDATE readings SET batch = 2 WHERE seq = 5")  # pending, no tag: forged
    con.execute("UPDATE meta SET v = 3 WHERE k = 'next_batch'")
    # The ledger as the old agent left it (8 rows, 2 of them delivered).
    b._outbox.counts = b._outbox.count_rows()
    with b._db.tx() as tx:
        b._outbox._commit(tx, Delta())
    b.close()
    b = Buffer.open(store_path, keys, config=config)
    try:
        s = b.stats()
        assert (s.acknowledged, s.claimed, s.pending, s.alarms) == (2, 0, 6, ())
        assert b.ack(2) == 2  # rows 3 and 4 (their tags), not the forged row 5
        assert b.purge() == 4  # 1 and 2 from the file, 3 and 4 deleted by the ack
        c = b.claim(500)
        assert c is not None
        assert c.batch_id >= 3
        assert {r.id for r in c.readings} == {r.id for r in readings[4:]}
    finally:
        b.close()
