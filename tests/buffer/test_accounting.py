"""The in-memory counters follow the database: after any operation, committed or failed with
SQLITE_FULL and retried, ``stats()`` equals a recount of the file. Real SQLITE_FULL comes from
``PRAGMA max_page_count`` (the database may not grow), on a real SQLite file."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hw_mocks.synthetic import ReadingFactory

from agent.buffer import Buffer, BufferConfig, FileKeySource
from agent.buffer.pressure import Reserve
from agent.errors import StorageFullError
from agent.model import Lane


def _recount(buf: Buffer) -> dict[str, Any]:
    """Count the file (through the store's own connection: its lock is exclusive)."""
    con = buf._conn
    rows = con.execute("SELECT lane, state, count(*) FROM readings GROUP BY lane, state")
    pending = dict.fromkeys((ln.name.lower() for ln in Lane), 0)
    claimed = acked = 0
    for lane, state, n in rows:
        if state == 0:
            pending[Lane(lane).name.lower()] += n
        elif state == 1:
            claimed += n
        elif state == 2:
            acked += n
    quarantined = con.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    # A claim is kept in memory: its rows are pending in the file.
    for seq, (_, lane) in buf._outbox._claimed.items():
        row = con.execute("SELECT state FROM readings WHERE seq = ?", (seq,)).fetchone()
        if row is not None and row[0] == 0:
            pending[lane.name.lower()] -= 1
            claimed += 1
    # An acknowledgement deletes its rows; until the next purge they count as "acknowledged,
    # not purged" (their ciphertext may linger in the WAL).
    acked += buf._outbox.unpurged
    return {"pending": pending, "claimed": claimed, "acked": acked, "quarantined": quarantined}


def _counted(buf: Buffer) -> dict[str, Any]:
    s = buf.stats()
    return {
        "pending": s.pending_by_lane,
        "claimed": s.claimed,
        "acked": s.acknowledged,
        "quarantined": s.quarantined,
    }


def _freeze_size(buf: Buffer) -> None:
    """From now on the database file may not grow: the next page it needs is SQLITE_FULL."""
    buf._conn.execute("PRAGMA incremental_vacuum")
    pages = buf._conn.execute("PRAGMA page_count").fetchone()[0]
    buf._conn.execute(f"PRAGMA max_page_count = {pages}")


def _unfreeze(buf: Buffer) -> None:
    buf._conn.execute("PRAGMA max_page_count = 1073741823")


def _tamper_all(buf: Buffer) -> int:
    """Flip a byte in every pending row, so a claim must quarantine each of them (through
    the store's own connection: its lock is exclusive)."""
    con = buf._conn
    rows = con.execute("SELECT seq, blob FROM readings WHERE state = 0").fetchall()
    for seq, blob in rows:
        b = bytearray(blob)
        b[20] ^= 0x40
        con.execute("UPDATE readings SET blob = ? WHERE seq = ?", (bytes(b), seq))
    return len(rows)


@pytest.fixture
def retried(monkeypatch: pytest.MonkeyPatch) -> Callable[[Buffer], None]:
    """Make "give the reserve back" really make room: the retry after SQLITE_FULL succeeds."""

    def arm(buf: Buffer) -> None:
        original = Reserve.release

        def release(self: Reserve, keep: int) -> None:
            original(self, keep)
            _unfreeze(buf)

        monkeypatch.setattr(Reserve, "release", release)

    return arm


def test_quarantine_in_a_claim_retried_after_sqlite_full_counts_once(
    buf: Buffer, store_path: Path, factory: ReadingFactory, retried: Callable[[Buffer], None]
) -> None:
    buf.append([factory.bp() for _ in range(200)])
    assert _tamper_all(buf) == 200
    retried(buf)
    _freeze_size(buf)  # the quarantine table must grow: the first attempt fails part-way
    claim = buf.claim(500)
    assert claim is None or claim.readings == ()
    assert _counted(buf) == _recount(buf)
    assert buf.stats().quarantined == 200
    assert buf.stats().pending == 0


def test_every_operation_failing_with_sqlite_full_leaves_counts_exact(
    buf: Buffer, store_path: Path, factory: ReadingFactory
) -> None:
    """The class: whatever fails with SQLITE_FULL (no retry can help) changes no counter."""
    buf.append([factory.bp() for _ in range(50)])
    buf.append([factory.oximetry_chunk(120) for _ in range(20)])
    first = buf.claim(10)
    assert first is not None
    buf.ack(first.batch_id)
    second = buf.claim(10)
    assert second is not None
    expected = _recount(buf)
    assert _counted(buf) == expected

    operations: list[tuple[str, Callable[[], object]]] = [
        ("append spot", lambda: buf.append([factory.bp() for _ in range(300)])),
        ("append chunk", lambda: buf.append([factory.oximetry_chunk(600) for _ in range(5)])),
        ("claim", lambda: buf.claim(500)),
        ("compact", lambda: buf.compact(Lane.CONTINUOUS)),
    ]
    _freeze_size(buf)
    for name, op in operations:
        with contextlib.suppress(StorageFullError):
            op()
        assert _counted(buf) == _recount(buf), name
    _unfreeze(buf)
    # With room again, everything works and still counts exactly.
    buf.append([factory.bp() for _ in range(10)])
    buf.ack(second.batch_id)
    buf.release(buf.claim(5).batch_id)  # type: ignore[union-attr]
    buf.purge()
    assert _counted(buf) == _recount(buf)


def test_append_retried_after_sqlite_full_is_stored_and_counted_once(
    store_path: Path,
    keys: FileKeySource,
    factory: ReadingFactory,
    retried: Callable[[Buffer], None],
) -> None:
    b = Buffer.open(store_path, keys, config=BufferConfig(reserve_bytes=64 * 1024))
    try:
        b.append([factory.bp() for _ in range(20)])
        retried(b)
        _freeze_size(b)
        readings = [factory.bp() for _ in range(400)]
        assert b.append(readings).stored == 400
        assert _counted(b) == _recount(b)
        assert b.stats().pending == 420
    finally:
        b.close()
