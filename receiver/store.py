"""Durable, idempotent storage of received readings (SQLite by default).

One transaction per batch decides, under the database's own locking, whether the batch is
new, a duplicate delivery of an envelope already committed, or a replay, and stores the new
readings with ``INSERT OR IGNORE`` keyed by reading id and by the hash of the PHD natural key
(device + device time + values). Several receiver processes may share one database file: the
``BEGIN IMMEDIATE`` transaction serialises them.

Tables (see ``docs/receiver.md``):

* ``boxes``: enrolled boxes, their Ed25519 public key and the replay high-water mark,
* ``batches``: the envelopes committed inside the replay window (box, seq, digest),
* ``readings``: one row per reading, with the reading in the uplink's compact encoding.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from agent.model import Reading
from dho_protocol import AckResult, decode_readings, encode_readings

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS boxes (
    box_id      TEXT PRIMARY KEY,
    public_key  BLOB NOT NULL,
    enrolled_at INTEGER NOT NULL,
    high_water  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS batches (
    box_id      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    digest      BLOB NOT NULL,
    batch_id    BLOB NOT NULL,
    readings    INTEGER NOT NULL,
    stored      INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (box_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS readings (
    reading_id  BLOB PRIMARY KEY,
    natural_key BLOB UNIQUE,
    box_id      TEXT NOT NULL,
    batch_seq   INTEGER NOT NULL,
    patient     TEXT NOT NULL,
    lane        INTEGER NOT NULL,
    captured_ns INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    body        BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS readings_box ON readings (box_id);
"""


@dataclass(frozen=True, slots=True)
class CommitResult:
    """What :meth:`Store.commit_batch` did."""

    result: AckResult
    stored: int
    duplicates: int
    high_water: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StoredReading:
    """A reading as stored, with where it came from."""

    reading: Reading
    box_id: str
    received_at_ms: int


def natural_key_hash(reading: Reading) -> bytes | None:
    """SHA-256 of the reading's PHD natural key, or None when it has none."""
    key = reading.natural_key
    return None if key is None else hashlib.sha256(key).digest()


def encode_one(reading: Reading) -> bytes:
    """One reading in the compact encoding (raw frames included)."""
    return encode_readings([reading])


def decode_one(body: bytes, reading_id: uuid.UUID) -> Reading:
    """The inverse of :func:`encode_one`."""
    (r,) = decode_readings(body, [reading_id])
    return r


class Store(Protocol):
    """Storage used by the receiver (SQLite here; PostgreSQL has the same shape)."""

    def enrol(self, box_id: str, public_key: bytes) -> None: ...
    def box_key(self, box_id: str) -> bytes | None: ...
    def commit_batch(
        self,
        box_id: str,
        seq: int,
        batch_id: uuid.UUID,
        digest: bytes,
        readings: Sequence[Reading],
        window: int,
    ) -> CommitResult: ...
    def readings(self, box_id: str | None = None) -> Iterator[StoredReading]: ...
    def count(self) -> int: ...
    def close(self) -> None: ...


class SqliteStore:
    """The receiver's SQLite store (WAL, ``synchronous=FULL``: a commit survives power loss).

    Safe to use from one thread at a time; several processes may open the same file.
    """

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)

    def enrol(self, box_id: str, public_key: bytes) -> None:
        """Record (or replace) a box's public key. Replacing resets its replay window."""
        if len(public_key) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT INTO boxes (box_id, public_key, enrolled_at, high_water)"
                    " VALUES (?, ?, ?, 0) ON CONFLICT (box_id) DO UPDATE SET"
                    " public_key = excluded.public_key, enrolled_at = excluded.enrolled_at,"
                    " high_water = 0",
                    (box_id, public_key, int(time.time())),
                )
                self._conn.execute("DELETE FROM batches WHERE box_id = ?", (box_id,))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def box_key(self, box_id: str) -> bytes | None:
        """The enrolled public key of a box, or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT public_key FROM boxes WHERE box_id = ?", (box_id,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def commit_batch(
        self,
        box_id: str,
        seq: int,
        batch_id: uuid.UUID,
        digest: bytes,
        readings: Sequence[Reading],
        window: int,
    ) -> CommitResult:
        """Store a verified batch exactly once, in one durable transaction.

        * same ``(box, seq)`` and same digest as a committed envelope: ``DUPLICATE``;
        * same ``(box, seq)`` with other content, or ``seq`` at or below
          ``high_water - window``: ``REJECTED_REPLAY``, nothing stored;
        * otherwise each reading is stored unless its id or natural key is already there.
        """
        now_ms = time.time_ns() // 1_000_000
        rows = [
            (
                r.id.bytes,
                natural_key_hash(r),
                box_id,
                seq,
                r.patient,
                int(r.lane),
                r.captured.wall_ns,
                now_ms,
                encode_one(r),
            )
            for r in readings
        ]
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                hw_row = c.execute(
                    "SELECT high_water FROM boxes WHERE box_id = ?", (box_id,)
                ).fetchone()
                if hw_row is None:
                    c.execute("ROLLBACK")
                    return CommitResult(AckResult.REJECTED_REPLAY, 0, 0, 0, "unknown box")
                high_water = int(hw_row[0])
                seen = c.execute(
                    "SELECT digest, stored, readings FROM batches WHERE box_id = ? AND seq = ?",
                    (box_id, seq),
                ).fetchone()
                if seen is not None:
                    c.execute("ROLLBACK")
                    if bytes(seen[0]) == digest:
                        return CommitResult(AckResult.DUPLICATE, 0, int(seen[2]), high_water)
                    return CommitResult(
                        AckResult.REJECTED_REPLAY, 0, 0, high_water, "sequence number reused"
                    )
                if seq <= high_water - window:
                    c.execute("ROLLBACK")
                    return CommitResult(
                        AckResult.REJECTED_REPLAY, 0, 0, high_water, "outside the replay window"
                    )
                before = c.total_changes
                c.executemany(
                    "INSERT OR IGNORE INTO readings (reading_id, natural_key, box_id, batch_seq,"
                    " patient, lane, captured_ns, received_at, body)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                stored = c.total_changes - before
                c.execute(
                    "INSERT INTO batches (box_id, seq, digest, batch_id, readings, stored,"
                    " received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (box_id, seq, digest, batch_id.bytes, len(rows), stored, now_ms),
                )
                new_hw = max(high_water, seq)
                if new_hw != high_water:
                    c.execute("UPDATE boxes SET high_water = ? WHERE box_id = ?", (new_hw, box_id))
                    c.execute(
                        "DELETE FROM batches WHERE box_id = ? AND seq <= ?",
                        (box_id, new_hw - window),
                    )
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
        return CommitResult(AckResult.STORED, stored, len(rows) - stored, new_hw)

    def readings(self, box_id: str | None = None) -> Iterator[StoredReading]:
        """Every stored reading in arrival order (optionally of one box)."""
        sql = "SELECT reading_id, box_id, received_at, body FROM readings"
        args: tuple[str, ...] = ()
        if box_id is not None:
            sql += " WHERE box_id = ?"
            args = (box_id,)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY rowid", args).fetchall()
        for rid, box, received, body in rows:
            yield StoredReading(decode_one(bytes(body), uuid.UUID(bytes=bytes(rid))), box, received)

    def reading_ids(self) -> list[uuid.UUID]:
        """Every stored reading id (tests and audits)."""
        with self._lock:
            rows = self._conn.execute("SELECT reading_id FROM readings ORDER BY rowid").fetchall()
        return [uuid.UUID(bytes=bytes(r[0])) for r in rows]

    def count(self) -> int:
        """How many readings are stored."""
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM readings").fetchone()[0])

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()
