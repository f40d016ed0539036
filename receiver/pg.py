"""PostgreSQL storage for the receiver (the central service at scale).

Same rules as :class:`receiver.store.SqliteStore`, same three tables. The batch check and the
inserts run in one transaction that first locks the box's row (``SELECT ... FOR UPDATE``), so
concurrent receivers serialise per box and stay exactly-once; readings are inserted with one
``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING`` per batch.

Needs the ``psycopg`` (v3) package, which is not a dependency of the gateway: install it on
the service host (``pip install 'psycopg[binary]'``). It is imported at run time only.
"""

from __future__ import annotations

import importlib
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Final

from agent.model import Reading
from agent.uplink.protocol import AckResult
from receiver.store import CommitResult, StoredReading, decode_one, encode_one, natural_key_hash

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS boxes (
    box_id      TEXT PRIMARY KEY,
    public_key  BYTEA NOT NULL,
    enrolled_at BIGINT NOT NULL,
    high_water  BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS batches (
    box_id      TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    digest      BYTEA NOT NULL,
    batch_id    BYTEA NOT NULL,
    readings    INTEGER NOT NULL,
    stored      INTEGER NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (box_id, seq)
);
CREATE TABLE IF NOT EXISTS readings (
    n           BIGSERIAL,
    reading_id  BYTEA PRIMARY KEY,
    natural_key BYTEA UNIQUE,
    box_id      TEXT NOT NULL,
    batch_seq   BIGINT NOT NULL,
    patient     TEXT NOT NULL,
    lane        SMALLINT NOT NULL,
    captured_ns BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    body        BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS readings_box ON readings (box_id);
"""


def available() -> bool:
    """True when the psycopg driver can be imported."""
    try:
        importlib.import_module("psycopg")
    except ImportError:
        return False
    return True


class PostgresStore:
    """The receiver's store on PostgreSQL (one connection; use one per thread/process)."""

    def __init__(self, dsn: str) -> None:
        psycopg: Any = importlib.import_module("psycopg")
        self._conn: Any = psycopg.connect(dsn, autocommit=False)
        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(424242)")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    self._conn.execute(stmt)

    def enrol(self, box_id: str, public_key: bytes) -> None:
        """Record (or replace) a box's public key; resets its replay window."""
        if len(public_key) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        with self._conn.transaction():
            self._conn.execute(
                "INSERT INTO boxes (box_id, public_key, enrolled_at, high_water)"
                " VALUES (%s, %s, %s, 0) ON CONFLICT (box_id) DO UPDATE SET"
                " public_key = excluded.public_key, enrolled_at = excluded.enrolled_at,"
                " high_water = 0",
                (box_id, public_key, int(time.time())),
            )
            self._conn.execute("DELETE FROM batches WHERE box_id = %s", (box_id,))

    def box_key(self, box_id: str) -> bytes | None:
        """The enrolled public key of a box, or None."""
        with self._conn.transaction():
            row = self._conn.execute(
                "SELECT public_key FROM boxes WHERE box_id = %s", (box_id,)
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
        """See :meth:`receiver.store.SqliteStore.commit_batch`."""
        now_ms = time.time_ns() // 1_000_000
        cols: list[list[Any]] = [[] for _ in range(7)]
        for r in readings:
            for col, value in zip(
                cols,
                (
                    r.id.bytes,
                    natural_key_hash(r),
                    r.patient,
                    int(r.lane),
                    r.captured.wall_ns,
                    encode_one(r),
                    None,
                ),
                strict=True,
            ):
                col.append(value)
        with self._conn.transaction():
            row = self._conn.execute(
                "SELECT high_water FROM boxes WHERE box_id = %s FOR UPDATE", (box_id,)
            ).fetchone()
            if row is None:
                return CommitResult(AckResult.REJECTED_REPLAY, 0, 0, 0, "unknown box")
            high_water = int(row[0])
            seen = self._conn.execute(
                "SELECT digest, readings FROM batches WHERE box_id = %s AND seq = %s",
                (box_id, seq),
            ).fetchone()
            if seen is not None:
                if bytes(seen[0]) == digest:
                    return CommitResult(AckResult.DUPLICATE, 0, int(seen[1]), high_water)
                return CommitResult(
                    AckResult.REJECTED_REPLAY, 0, 0, high_water, "sequence number reused"
                )
            if seq <= high_water - window:
                return CommitResult(
                    AckResult.REJECTED_REPLAY, 0, 0, high_water, "outside the replay window"
                )
            cur = self._conn.execute(
                "INSERT INTO readings (reading_id, natural_key, box_id, batch_seq, patient, lane,"
                " captured_ns, received_at, body)"
                " SELECT r.id, r.nk, %s, %s, r.patient, r.lane, r.captured, %s, r.body FROM"
                " unnest(%s::bytea[], %s::bytea[], %s::text[], %s::smallint[], %s::bigint[],"
                " %s::bytea[]) AS r(id, nk, patient, lane, captured, body)"
                " ON CONFLICT DO NOTHING",
                (box_id, seq, now_ms, *cols[:6]),
            )
            stored = int(cur.rowcount)
            self._conn.execute(
                "INSERT INTO batches (box_id, seq, digest, batch_id, readings, stored,"
                " received_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (box_id, seq, digest, batch_id.bytes, len(readings), stored, now_ms),
            )
            new_hw = max(high_water, seq)
            if new_hw != high_water:
                self._conn.execute(
                    "UPDATE boxes SET high_water = %s WHERE box_id = %s", (new_hw, box_id)
                )
                self._conn.execute(
                    "DELETE FROM batches WHERE box_id = %s AND seq <= %s",
                    (box_id, new_hw - window),
                )
        return CommitResult(AckResult.STORED, stored, len(readings) - stored, new_hw)

    def readings(self, box_id: str | None = None) -> Iterator[StoredReading]:
        """Every stored reading in arrival order (optionally of one box)."""
        sql = "SELECT reading_id, box_id, received_at, body FROM readings"
        args: tuple[str, ...] = ()
        if box_id is not None:
            sql += " WHERE box_id = %s"
            args = (box_id,)
        with self._conn.transaction():
            rows = self._conn.execute(sql + " ORDER BY n", args).fetchall()
        for rid, box, received, body in rows:
            yield StoredReading(decode_one(bytes(body), uuid.UUID(bytes=bytes(rid))), box, received)

    def count(self) -> int:
        """How many readings are stored."""
        with self._conn.transaction():
            return int(self._conn.execute("SELECT count(*) FROM readings").fetchone()[0])

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()
