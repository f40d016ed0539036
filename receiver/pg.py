"""PostgreSQL storage for the receiver (the central service at scale).

Same rules and the same three tables as :class:`receiver.store.SqliteStore`:

* ``readings.reading_id`` is the primary key and ``readings.natural_key`` (SHA-256 of the PHD
  natural key) is ``UNIQUE``; a batch's readings go in with one
  ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING``, so the database itself decides,
  under its unique indexes, which readings are new: two receivers storing overlapping batches at
  the same moment store each reading once (no check-then-insert anywhere).
* The batch decision (new, duplicate envelope, replay) runs in the same transaction, which first
  locks the box's row (``SELECT ... FOR UPDATE``): batches of one box are serialised across
  every receiver process.
* A commit returns only once PostgreSQL has flushed it to its write-ahead log: the session runs
  with ``synchronous_commit`` at least ``on`` (raised from ``off``/``local`` if the server
  default is weaker), and a warning is logged when the server runs with ``fsync = off``.
* A lost connection is re-opened (with growing waits, about 3 s in all) and the operation
  retried; a deadlock or serialisation failure is retried. Every operation is idempotent, so a
  commit whose outcome was lost with the connection is answered ``DUPLICATE`` on the retry.

Needs the ``psycopg`` (v3) driver, which is not a dependency of the gateway: install the
``postgres`` extra on the service host (``pip install '.[postgres]'``). It is imported only when
a :class:`PostgresStore` is opened.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from agent.model import Reading
from dho_protocol import AckResult
from receiver.store import CommitResult, StoredReading, decode_one, encode_one, natural_key_hash

if TYPE_CHECKING:
    import psycopg

_LOG = logging.getLogger("receiver")
_T = TypeVar("_T")

_SCHEMA_LOCK: Final = 0x64686F01
"""Advisory lock key that serialises schema creation by concurrent receivers."""

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS boxes (
    box_id      TEXT PRIMARY KEY,
    public_key  BYTEA NOT NULL,
    enrolled_at BIGINT NOT NULL,
    high_water  BIGINT NOT NULL DEFAULT 0
)""",
    """CREATE TABLE IF NOT EXISTS batches (
    box_id      TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    digest      BYTEA NOT NULL,
    batch_id    BYTEA NOT NULL,
    readings    INTEGER NOT NULL,
    stored      INTEGER NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (box_id, seq)
)""",
    """CREATE TABLE IF NOT EXISTS readings (
    n           BIGINT GENERATED ALWAYS AS IDENTITY,
    reading_id  BYTEA PRIMARY KEY,
    natural_key BYTEA UNIQUE,
    box_id      TEXT NOT NULL,
    batch_seq   BIGINT NOT NULL,
    patient     TEXT NOT NULL,
    lane        SMALLINT NOT NULL,
    captured_ns BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    body        BYTEA NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS readings_box ON readings (box_id, n)",
)

_INSERT_READINGS: Final = (
    "INSERT INTO readings (reading_id, natural_key, box_id, batch_seq, patient, lane,"
    " captured_ns, received_at, body)"
    " SELECT r.id, r.nk, %s, %s, r.patient, r.lane, r.captured, %s, r.body"
    " FROM unnest(%b::bytea[], %b::bytea[], %b::text[], %b::smallint[], %b::bigint[],"
    " %b::bytea[]) WITH ORDINALITY AS r(id, nk, patient, lane, captured, body, i)"
    " ORDER BY r.i"
    " ON CONFLICT DO NOTHING"
)

_RETRIES: Final = 5
_RECONNECT_BASE_S: Final = 0.1
_RECONNECT_CAP_S: Final = 2.0
"""Waits between reconnection attempts: 0.2, 0.4, 0.8, 1.6 s (a server restart is absorbed)."""


def available() -> bool:
    """True when the psycopg driver can be imported."""
    return importlib.util.find_spec("psycopg") is not None


class PostgresStore:
    """The receiver's store on PostgreSQL: one connection, used by one thread at a time.

    Several processes (or several stores in one process) may share one database.
    """

    def __init__(self, dsn: str) -> None:
        try:
            import psycopg  # noqa: F401 - fail early with a clear message
        except ImportError as err:
            raise RuntimeError(
                "the PostgreSQL store needs the psycopg driver: pip install 'psycopg[binary]'"
            ) from err
        self._dsn = dsn
        self._lock = threading.Lock()
        self._conn = self._connect()
        with self._lock:
            self._run(self._create_schema)

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        import psycopg

        conn = psycopg.connect(self._dsn, autocommit=True)
        try:
            sync = conn.execute("SHOW synchronous_commit").fetchone()
            if sync is not None and sync[0] in ("off", "local"):
                conn.execute("SET synchronous_commit = on")
            fsync = conn.execute("SHOW fsync").fetchone()
            if fsync is not None and fsync[0] != "on":
                _LOG.warning("the PostgreSQL server runs with fsync=off: commits are not durable")
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _create_schema(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        for stmt in _SCHEMA:
            conn.execute(stmt)

    def _run(self, work: Callable[[psycopg.Connection[tuple[Any, ...]]], _T]) -> _T:
        """Run ``work`` in one transaction; retry on deadlock, serialisation failure or a
        lost connection (re-opened). The caller holds ``self._lock``."""
        import psycopg
        from psycopg import errors

        for attempt in range(1, _RETRIES + 1):
            try:
                if self._conn.closed or self._conn.broken:
                    self._conn = self._connect()
                with self._conn.transaction():
                    return work(self._conn)
            except (errors.DeadlockDetected, errors.SerializationFailure) as err:
                if attempt == _RETRIES:
                    raise
                _LOG.warning("PostgreSQL transaction retried (%s)", type(err).__name__)
            except psycopg.OperationalError:
                if attempt == _RETRIES or not (self._conn.closed or self._conn.broken):
                    raise
                _LOG.warning("PostgreSQL connection lost; reconnecting (attempt %d)", attempt)
                time.sleep(min(_RECONNECT_CAP_S, _RECONNECT_BASE_S * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def enrol(self, box_id: str, public_key: bytes) -> None:
        """Record (or replace) a box's public key; replacing resets its replay window."""
        if len(public_key) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")

        def work(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
            conn.execute(
                "INSERT INTO boxes (box_id, public_key, enrolled_at, high_water)"
                " VALUES (%s, %s, %s, 0) ON CONFLICT (box_id) DO UPDATE SET"
                " public_key = excluded.public_key, enrolled_at = excluded.enrolled_at,"
                " high_water = 0",
                (box_id, public_key, int(time.time())),
            )
            conn.execute("DELETE FROM batches WHERE box_id = %s", (box_id,))

        with self._lock:
            self._run(work)

    def box_key(self, box_id: str) -> bytes | None:
        """The enrolled public key of a box, or None."""

        def work(conn: psycopg.Connection[tuple[Any, ...]]) -> bytes | None:
            row = conn.execute(
                "SELECT public_key FROM boxes WHERE box_id = %s", (box_id,)
            ).fetchone()
            return None if row is None else bytes(row[0])

        with self._lock:
            return self._run(work)

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

        The rules of :meth:`receiver.store.SqliteStore.commit_batch`: ``DUPLICATE`` for an
        envelope already committed, ``REJECTED_REPLAY`` for another envelope under a committed
        ``(box, seq)`` or one below the window, otherwise each reading is stored unless its id
        or natural key already is.
        """
        ids = [r.id.bytes for r in readings]
        keys = [natural_key_hash(r) for r in readings]
        patients = [r.patient for r in readings]
        lanes = [int(r.lane) for r in readings]
        captured = [r.captured.wall_ns for r in readings]
        bodies = [encode_one(r) for r in readings]

        def work(conn: psycopg.Connection[tuple[Any, ...]]) -> CommitResult:
            now_ms = time.time_ns() // 1_000_000
            row = conn.execute(
                "SELECT high_water FROM boxes WHERE box_id = %s FOR UPDATE", (box_id,)
            ).fetchone()
            if row is None:
                return CommitResult(AckResult.REJECTED_REPLAY, 0, 0, 0, "unknown box")
            high_water = int(row[0])
            seen = conn.execute(
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
            cur = conn.execute(
                _INSERT_READINGS,
                (box_id, seq, now_ms, ids, keys, patients, lanes, captured, bodies),
            )
            stored = max(0, cur.rowcount)
            conn.execute(
                "INSERT INTO batches (box_id, seq, digest, batch_id, readings, stored,"
                " received_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (box_id, seq, digest, batch_id.bytes, len(readings), stored, now_ms),
            )
            new_hw = max(high_water, seq)
            if new_hw != high_water:
                conn.execute("UPDATE boxes SET high_water = %s WHERE box_id = %s", (new_hw, box_id))
                conn.execute(
                    "DELETE FROM batches WHERE box_id = %s AND seq <= %s",
                    (box_id, new_hw - window),
                )
            return CommitResult(AckResult.STORED, stored, len(readings) - stored, new_hw)

        with self._lock:
            return self._run(work)

    def readings(self, box_id: str | None = None) -> Iterator[StoredReading]:
        """Every stored reading in arrival order (optionally of one box)."""
        sql = "SELECT reading_id, box_id, received_at, body FROM readings"
        args: tuple[str, ...] = ()
        if box_id is not None:
            sql += " WHERE box_id = %s"
            args = (box_id,)

        def work(conn: psycopg.Connection[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
            return conn.execute(sql + " ORDER BY n", args).fetchall()

        with self._lock:
            rows = self._run(work)
        for rid, box, received, body in rows:
            yield StoredReading(
                decode_one(bytes(body), uuid.UUID(bytes=bytes(rid))), str(box), int(received)
            )

    def reading_ids(self) -> list[uuid.UUID]:
        """Every stored reading id in arrival order (tests and audits)."""

        def work(conn: psycopg.Connection[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
            return conn.execute("SELECT reading_id FROM readings ORDER BY n").fetchall()

        with self._lock:
            rows = self._run(work)
        return [uuid.UUID(bytes=bytes(r[0])) for r in rows]

    def count(self) -> int:
        """How many readings are stored."""

        def work(conn: psycopg.Connection[tuple[Any, ...]]) -> int:
            row = conn.execute("SELECT count(*) FROM readings").fetchone()
            return 0 if row is None else int(row[0])

        with self._lock:
            return self._run(work)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()
