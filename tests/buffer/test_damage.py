"""Damage and tampering, as classes, on real SQLite files (issue 9).

* Every cleartext column is untrusted: any bad value in any of them quarantines that row,
  raises an alarm, and the queue moves on (at open and while running).
* One damaged byte in a shared row (a context reference, a wrapped key) loses nothing; a row
  damaged beyond repair loses only what really depends on it, and is replaced.
* Rows whose state was changed, rows deleted, and a truncated WAL are noticed (sticky alarms).
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from hw_mocks.synthetic import ReadingFactory

from agent.buffer import Buffer, BufferConfig, FileKeySource
from agent.model import Reading

_LIVE: dict[Path, Buffer] = {}


@pytest.fixture(autouse=True)
def _live_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remember the buffers the test opens: an open store holds its file's lock exclusively
    (``BufferConfig.exclusive_lock``), so damage done while it runs goes through its own
    connection (the bytes on disk are the same as another writer would leave)."""
    original = Buffer.open.__func__  # type: ignore[attr-defined]

    def open_(cls: type[Buffer], /, path: Path, *args: object, **kwargs: object) -> Buffer:
        b: Buffer = original(cls, path, *args, **kwargs)
        _LIVE[Path(path)] = b
        return b

    monkeypatch.setattr(Buffer, "open", classmethod(open_))
    _LIVE.clear()


def _sql(store_path: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    live = _LIVE.get(store_path)
    if live is not None and live._lock.held:
        return live._conn.execute(sql, args).fetchall()
    con = sqlite3.connect(store_path)
    try:
        rows = con.execute(sql, args).fetchall()
        con.commit()
    finally:
        con.close()
    return rows


def _drain(buf: Buffer) -> tuple[list[Reading], int]:
    """Claim and acknowledge everything; return the readings and how many were quarantined."""
    got: list[Reading] = []
    quarantined = 0
    for _ in range(100):
        c = buf.claim(500)
        if c is None:
            return got, quarantined
        got += c.readings
        quarantined += len(c.quarantined)
        buf.ack(c.batch_id)
    raise AssertionError("the queue never emptied")


@pytest.fixture
def stored(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> list[Reading]:
    """Ten spot readings in a closed store; the fourth (seq 4) is the one damaged."""
    b = Buffer.open(store_path, keys, config=config)
    readings = [factory.bp() for _ in range(10)]
    b.append(readings)
    b.close()
    return readings


def _reopen(store_path: Path, keys: FileKeySource, config: BufferConfig) -> Buffer:
    return Buffer.open(store_path, keys, config=config)


# -- cleartext columns --------------------------------------------------------------------

BAD_VALUES = [
    ("lane", 7),
    ("lane", -1),
    ("lane", "spot"),
    ("lane", b"\x01"),
    ("lane", 1.5),
    ("state", 5),
    ("state", "pending"),
    ("state", 0.5),
    ("key_id", 99),
    ("key_id", "1"),
    ("key_id", b"\x01"),
    ("batch", "x"),
    ("batch", b"\x00"),
    ("blob", "not a ciphertext"),
    ("blob", b"\x00" * 8),
    ("blob", 42),
]


@pytest.mark.parametrize(("column", "value"), BAD_VALUES)
def test_a_bad_cleartext_value_quarantines_that_row_and_the_queue_moves_on(
    store_path: Path,
    keys: FileKeySource,
    config: BufferConfig,
    stored: list[Reading],
    factory: ReadingFactory,
    column: str,
    value: object,
) -> None:
    _sql(store_path, f"UPDATE readings SET {column} = ? WHERE seq = 4", value)
    b = _reopen(store_path, keys, config)  # used to exit at every start (unknown lane)
    try:
        s = b.stats()
        assert "rows.quarantined" in s.alarms
        assert s.quarantined == 1
        later = factory.bp()  # capture goes on
        b.append([later])
        got, _ = _drain(b)
        want = [r.id for i, r in enumerate(stored) if i != 3]
        assert sorted(r.id for r in got) == sorted([*want, later.id])
        kept = _sql(store_path, "SELECT seq, reason FROM quarantine")
        assert [k[0] for k in kept] == [4]
    finally:
        b.close()


@pytest.mark.parametrize(
    ("column", "value"), [("key_id", 99), ("key_id", "x"), ("blob", "x"), ("blob", 7)]
)
def test_a_bad_cleartext_value_while_running_does_not_block_claims(
    buf: Buffer, store_path: Path, factory: ReadingFactory, column: str, value: object
) -> None:
    readings = [factory.bp() for _ in range(5)]
    buf.append(readings)
    _sql(store_path, f"UPDATE readings SET {column} = ? WHERE seq = 1", value)  # the head
    got, quarantined = _drain(buf)  # an unknown key id used to block every claim
    assert quarantined == 1
    assert [r.id for r in got] == [r.id for r in readings[1:]]
    assert "rows.quarantined" in buf.stats().alarms


def test_a_damaged_batch_counter_does_not_stop_or_rewind_batches(
    store_path: Path, keys: FileKeySource, config: BufferConfig, stored: list[Reading]
) -> None:
    b = _reopen(store_path, keys, config)
    c = b.claim(2)
    assert c is not None
    b.close()
    _sql(store_path, "UPDATE meta SET v = 'x' WHERE k = 'next_batch'")
    b = _reopen(store_path, keys, config)
    try:
        c2 = b.claim(2)
        assert c2 is not None
        assert c2.batch_id > c.batch_id
    finally:
        b.close()


# -- shared rows: context references --------------------------------------------------------


def _two_patients(factory: ReadingFactory) -> tuple[list[Reading], list[Reading]]:
    a = [factory.bp() for _ in range(6)]
    b = [replace(factory.bp(), patient="patient-B") for _ in range(4)]
    return a, b


def _flip(data: object, at: int = 20) -> bytes:
    assert isinstance(data, bytes)
    b = bytearray(data)
    b[at % len(b)] ^= 0x01
    return bytes(b)


REF_DAMAGE: dict[str, Callable[[dict[str, object]], dict[str, object]]] = {
    "main copy": lambda row: {"blob": _flip(row["blob"])},
    "second copy": lambda row: {"copy": _flip(row["copy"], 30)},
    "blind index": lambda row: {"h": _flip(row["h"], 3)},
    "key id": lambda row: {"key_id": 99},
    "main copy, last byte": lambda row: {"blob": _flip(row["blob"], -1)},
}


@pytest.mark.parametrize("damage", sorted(REF_DAMAGE))
def test_one_damaged_part_of_a_reference_loses_nothing(
    store_path: Path,
    keys: FileKeySource,
    config: BufferConfig,
    factory: ReadingFactory,
    damage: str,
) -> None:
    b = Buffer.open(store_path, keys, config=config)
    a, other = _two_patients(factory)
    b.append(a)  # ref 1 = device + patient A (ref 2 = the boot id)
    b.append(other)
    b.close()
    row = dict(
        zip(
            ("blob", "copy", "h", "key_id"),
            _sql(store_path, "SELECT blob, copy, h, key_id FROM refs WHERE ref_id = 1")[0],
            strict=True,
        )
    )
    for column, value in REF_DAMAGE[damage](row).items():
        _sql(store_path, f"UPDATE refs SET {column} = ? WHERE ref_id = 1", value)
    b = _reopen(store_path, keys, config)
    try:
        later = [factory.bp() for _ in range(3)]  # same device and patient as before
        b.append(later)
        got, quarantined = _drain(b)
        assert quarantined == 0
        assert sorted(r.id for r in got) == sorted(r.id for r in a + other + later)
        by_id = {r.id: r for r in got}
        assert all(by_id[r.id] == r for r in a + other + later)  # nothing misattributed
    finally:
        b.close()


def test_a_reference_damaged_beyond_repair_is_replaced_and_only_its_readings_quarantined(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> None:
    b = Buffer.open(store_path, keys, config=config)
    a, other = _two_patients(factory)
    b.append(a)
    b.append(other)
    b.close()
    blob, copy = _sql(store_path, "SELECT blob, copy FROM refs WHERE ref_id = 1")[0]
    _sql(
        store_path, "UPDATE refs SET blob = ?, copy = ? WHERE ref_id = 1", _flip(blob), _flip(copy)
    )
    b = _reopen(store_path, keys, config)
    try:
        later = [factory.bp() for _ in range(3)]  # used to reuse the broken reference
        b.append(later)
        got, quarantined = _drain(b)
        assert quarantined == len(a)  # only what really depended on the lost row
        assert sorted(r.id for r in got) == sorted(r.id for r in other + later)
        by_id = {r.id: r for r in got}
        assert all(by_id[r.id] == r for r in other + later)
        assert {"rows.quarantined", "store.repaired"} <= set(b.stats().alarms)
        b.close()
        # The new reference has a new id: the quarantined readings can never point at it.
        ids = [r[0] for r in _sql(store_path, "SELECT ref_id FROM refs ORDER BY ref_id")]
        assert 1 not in ids
        b = _reopen(store_path, keys, config)
        b.append([factory.bp()])
        got, quarantined = _drain(b)
        assert (len(got), quarantined) == (1, 0)
    finally:
        b.close()


# -- shared rows: wrapped keys ------------------------------------------------------------


@pytest.mark.parametrize("column", ["wrapped", "wrapped_copy", "purpose", "state"])
def test_one_damaged_part_of_a_key_row_is_repaired(
    store_path: Path,
    keys: FileKeySource,
    config: BufferConfig,
    stored: list[Reading],
    column: str,
) -> None:
    (value,) = _sql(store_path, f"SELECT {column} FROM keys WHERE purpose = 'data'")[0]
    bad = _flip(value, 5) if isinstance(value, bytes) else "dbta"
    _sql(store_path, f"UPDATE keys SET {column} = ? WHERE purpose = 'data'", bad)
    b = _reopen(store_path, keys, config)
    try:
        s = b.stats()
        assert not s.set_aside
        assert "store.repaired" in s.alarms
        got, quarantined = _drain(b)
        assert quarantined == 0
        assert [r.id for r in got] == [r.id for r in stored]
    finally:
        b.close()


def test_a_data_key_damaged_beyond_repair_loses_its_rows_not_the_store(
    store_path: Path,
    keys: FileKeySource,
    config: BufferConfig,
    stored: list[Reading],
    factory: ReadingFactory,
) -> None:
    w, c = _sql(store_path, "SELECT wrapped, wrapped_copy FROM keys WHERE purpose = 'data'")[0]
    _sql(
        store_path,
        "UPDATE keys SET wrapped = ?, wrapped_copy = ? WHERE purpose = 'data'",
        _flip(w),
        _flip(c),
    )
    b = _reopen(store_path, keys, config)
    try:
        s = b.stats()
        assert not s.set_aside  # one key row is not the whole store
        assert s.quarantined == len(stored)  # its rows cannot be opened by anyone
        new = [factory.bp() for _ in range(3)]
        b.append(new)
        got, _ = _drain(b)
        assert [r.id for r in got] == [r.id for r in new]
    finally:
        b.close()


def test_a_lost_index_key_is_replaced_and_every_reading_still_delivered(
    store_path: Path,
    keys: FileKeySource,
    config: BufferConfig,
    stored: list[Reading],
    factory: ReadingFactory,
) -> None:
    w, c = _sql(store_path, "SELECT wrapped, wrapped_copy FROM keys WHERE purpose = 'index'")[0]
    _sql(
        store_path,
        "UPDATE keys SET wrapped = ?, wrapped_copy = ? WHERE purpose = 'index'",
        _flip(w),
        _flip(c),
    )
    b = _reopen(store_path, keys, config)
    try:
        later = [factory.bp() for _ in range(2)]
        b.append(later)
        got, quarantined = _drain(b)
        assert quarantined == 0
        assert sorted(r.id for r in got) == sorted(r.id for r in stored + later)
        assert len(_sql(store_path, "SELECT ref_id FROM refs")) == 2  # refs found again
    finally:
        b.close()


# -- changed states, deleted rows, truncated WAL ------------------------------------------


def test_a_pending_row_marked_delivered_behind_the_buffers_back_is_delivered_anyway(
    store_path: Path, keys: FileKeySource, config: BufferConfig, stored: list[Reading]
) -> None:
    _sql(store_path, "UPDATE readings SET state = 2 WHERE seq IN (2, 3)")
    b = _reopen(store_path, keys, config)
    try:
        assert "rows.state-altered" in b.stats().alarms
        b.purge()
        got, _ = _drain(b)
        assert sorted(r.id for r in got) == sorted(r.id for r in stored)
    finally:
        b.close()


def test_state_and_batch_changed_while_running_are_not_purged_or_acknowledged(
    buf: Buffer, store_path: Path, factory: ReadingFactory
) -> None:
    readings = [factory.bp() for _ in range(6)]
    buf.append(readings)
    c = buf.claim(2)
    assert c is not None
    # A pending row is given the outstanding batch number, another is marked delivered.
    _sql(store_path, "UPDATE readings SET batch = ? WHERE seq = 5", c.batch_id)
    _sql(store_path, "UPDATE readings SET state = 2 WHERE seq = 6")
    assert buf.ack(c.batch_id) == 2  # not 3
    buf.purge()  # seq 6 is not deleted: back to pending
    assert {"rows.state-altered"} <= set(buf.stats().alarms)
    got, _ = _drain(buf)
    assert sorted(r.id for r in got) == sorted(r.id for r in readings[2:])


def test_deleted_rows_are_noticed_and_the_alarm_stays(
    store_path: Path, keys: FileKeySource, config: BufferConfig, stored: list[Reading]
) -> None:
    _sql(store_path, "DELETE FROM readings WHERE seq IN (3, 4)")
    for _ in range(2):  # also after the next restart
        b = _reopen(store_path, keys, config)
        try:
            assert "rows.missing" in b.stats().alarms
        finally:
            b.close()
    b = _reopen(store_path, keys, config)
    try:
        got, _ = _drain(b)
        assert len(got) == 8
    finally:
        b.close()


def test_deleting_delivered_rows_is_not_an_alarm(
    store_path: Path, keys: FileKeySource, config: BufferConfig, stored: list[Reading]
) -> None:
    b = _reopen(store_path, keys, config)
    c = b.claim(3)
    assert c is not None
    b.ack(c.batch_id)
    b.close()
    _sql(store_path, "DELETE FROM readings WHERE state = 2")
    b = _reopen(store_path, keys, config)
    try:
        assert not {"rows.missing", "rows.state-altered"} & set(b.stats().alarms)
    finally:
        b.close()


def test_an_edited_ledger_is_noticed(
    store_path: Path, keys: FileKeySource, config: BufferConfig, stored: list[Reading]
) -> None:
    (body,) = _sql(store_path, "SELECT body FROM ledger")[0]
    _sql(store_path, "UPDATE ledger SET body = ?", _flip(body, 30))
    b = _reopen(store_path, keys, config)
    try:
        assert "store.ledger-invalid" in b.stats().alarms
        assert len(_drain(b)[0]) == 10
    finally:
        b.close()


@pytest.fixture
def crash_image(tmp_path: Path) -> Path:
    d = tmp_path / "image"
    d.mkdir()
    return d


def test_a_truncated_wal_is_noticed(
    tmp_path: Path, factory: ReadingFactory, crash_image: Path
) -> None:
    state = tmp_path / "live"
    keys = FileKeySource(state / "buffer.kek")
    cfg = BufferConfig(reserve_bytes=0, anchor_interval_s=0)
    b = Buffer.open(state / "buffer.db", keys, config=cfg)
    b.append([factory.bp() for _ in range(5)])
    b.purge()  # checkpointed: the WAL is empty, the database file holds these
    for _ in range(3):
        b.append([factory.bp() for _ in range(5)])  # committed into the WAL, anchored
    # What a power cut leaves, with the WAL then cut short (torn by the card, or by hand).
    for p in state.iterdir():
        if p.name.startswith("buffer.") and not p.name.endswith(".lock"):
            shutil.copy(p, crash_image / p.name)
    b.close()
    (crash_image / "buffer.db-wal").write_bytes(b"")
    (crash_image / "buffer.db-shm").unlink(missing_ok=True)
    b = Buffer.open(
        crash_image / "buffer.db", FileKeySource(crash_image / "buffer.kek"), config=cfg
    )
    try:
        s = b.stats()
        assert "store.rolled-back" in s.alarms
        assert s.pending == 5
        # Batch numbers continue after what the lost transactions may have handed out.
        c = b.claim(1)
        assert c is not None
    finally:
        b.close()


def test_an_intact_crash_image_raises_no_alarm(
    tmp_path: Path, factory: ReadingFactory, crash_image: Path
) -> None:
    state = tmp_path / "live"
    keys = FileKeySource(state / "buffer.kek")
    cfg = BufferConfig(reserve_bytes=0, anchor_interval_s=0)
    b = Buffer.open(state / "buffer.db", keys, config=cfg)
    for _ in range(3):
        b.append([factory.bp() for _ in range(5)])
    for p in state.iterdir():
        if p.name.startswith("buffer.") and not p.name.endswith(".lock"):
            shutil.copy(p, crash_image / p.name)
    b.close()
    b = Buffer.open(
        crash_image / "buffer.db", FileKeySource(crash_image / "buffer.kek"), config=cfg
    )
    try:
        s = b.stats()
        assert not set(s.alarms) & {"store.rolled-back", "rows.missing", "store.ledger-invalid"}
        assert s.pending == 15
    finally:
        b.close()


def test_a_store_from_before_the_second_copies_and_tags_opens_cleanly(
    store_path: Path, keys: FileKeySource, config: BufferConfig, stored: list[Reading]
) -> None:
    """What migration m002 leaves of a store written by the previous version: no copies, no
    tags, an empty ledger. The first open fills them in and raises nothing."""
    _sql(store_path, "UPDATE refs SET copy = NULL")
    _sql(store_path, "UPDATE keys SET wrapped_copy = NULL")
    _sql(store_path, "UPDATE readings SET tag = NULL")
    _sql(store_path, "UPDATE ledger SET body = x'', mac = x''")
    b = _reopen(store_path, keys, config)
    try:
        assert b.stats().alarms == ()
        assert _sql(store_path, "SELECT count(*) FROM readings WHERE tag IS NULL") == [(0,)]
        assert _sql(store_path, "SELECT count(*) FROM refs WHERE copy IS NULL") == [(0,)]
        assert _sql(store_path, "SELECT count(*) FROM keys WHERE wrapped_copy IS NULL") == [(0,)]
        got, _ = _drain(b)
        assert [r.id for r in got] == [r.id for r in stored]
    finally:
        b.close()
