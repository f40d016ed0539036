"""PostgreSQL storage for the receiver (the central service at scale).

Same rules and the same tables as :class:`receiver.store.SqliteStore`:

* ``readings.reading_id`` is the primary key and ``(box_id, natural_key)`` (SHA-256 of the PHD
  natural key, scoped to the box) is ``UNIQUE``; a batch's readings go in with one
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
  When the server stays away longer, the operation raises
  :class:`~receiver.errors.StoreUnavailableError` (the receiver backs off and tries again).

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
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from agent.model import Reading
from dho_protocol import AckResult
from receiver.errors import (
    BoxNotEnrolledError,
    ReceiverConfigError,
    StoreError,
    StoreUnavailableError,
)
from receiver.registry import Box, check_box_id, check_patient_refs
from receiver.store import (
    AuditLimits,
    CommitResult,
    RefusedBatch,
    RefusedEntry,
    StoredReading,
    bodies_for,
    cut_for_audit,
    decode_one,
    natural_key_hash,
)

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
    natural_key BYTEA,
    box_id      TEXT NOT NULL,
    batch_seq   BIGINT NOT NULL,
    patient     TEXT NOT NULL,
    lane        SMALLINT NOT NULL,
    captured_ns BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    body        BYTEA NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS readings_box ON readings (box_id, n)",
    # Natural keys are unique per box (the first layout had them unique across all boxes).
    """DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'readings_natural_key_key'
               AND conrelid = 'readings'::regclass) THEN
        ALTER TABLE readings DROP CONSTRAINT readings_natural_key_key;
    END IF;
END $$""",
    "CREATE UNIQUE INDEX IF NOT EXISTS readings_box_natural_key ON readings (box_id, natural_key)",
    """CREATE TABLE IF NOT EXISTS box_patients (
    box_id      TEXT NOT NULL,
    patient     TEXT NOT NULL,
    assigned_at BIGINT NOT NULL,
    PRIMARY KEY (box_id, patient)
)""",
    """CREATE TABLE IF NOT EXISTS refused (
    n           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at BIGINT NOT NULL,
    box_id      TEXT NOT NULL,
    batch_id    BYTEA,
    seq         BIGINT,
    reason      TEXT NOT NULL,
    detail      TEXT NOT NULL,
    size        BIGINT NOT NULL,
    truncated   BOOLEAN NOT NULL,
    wire        BYTEA NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS refused_box ON refused (box_id, n)",
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


class _ForeignReadingIdError(Exception):
    """Raised inside a commit to roll it back: a reading id belongs to another box."""

    def __init__(self, high_water: int) -> None:
        super().__init__("a reading id another box delivered")
        self.high_water = high_water


def _first_line(err: BaseException) -> str:
    """The first line of a driver error (libpq messages run over several lines)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def available() -> bool:
    """True when the psycopg driver can be imported."""
    return importlib.util.find_spec("psycopg") is not None


class PostgresStore:
    """The receiver's store on PostgreSQL: one connection, used by one thread at a time.

    Several processes (or several stores in one process) may share one database.
    """

    def __init__(self, dsn: str, *, create: bool = True) -> None:
        """Connect and (with ``create``) create or upgrade the tables.

        Raises:
            ReceiverConfigError: no psycopg driver, or ``dsn`` is not a connection string.
            StoreUnavailableError: the server cannot be reached or refuses the connection.
            NotAStoreError: without ``create``, the database holds no receiver store.
        """
        try:
            import psycopg
        except ImportError as err:
            raise ReceiverConfigError(
                "the PostgreSQL store needs the psycopg driver",
                hint="install it on the service host: pip install 'dho-gateway[postgres]'",
            ) from err
        try:
            psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as err:
            raise ReceiverConfigError(
                f"the PostgreSQL connection string is not valid: {_first_line(err)}"
            ) from err
        self._dsn = dsn
        self._lock = threading.Lock()
        self._conn = self._connect()
        try:
            with self._lock:
                if create:
                    self._run(self._create_schema)
                else:
                    self._run(self._check_schema)
        except BaseException:
            self._conn.close()
            raise

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        import psycopg

        try:
            conn = psycopg.connect(self._dsn, autocommit=True)
        except psycopg.OperationalError as err:
            raise StoreUnavailableError(
                f"cannot connect to PostgreSQL: {_first_line(err)}"
            ) from err
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

    @staticmethod
    def _check_schema(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        from receiver.errors import NotAStoreError

        row = conn.execute(
            "SELECT to_regclass('boxes') IS NOT NULL AND to_regclass('box_patients') IS NOT NULL"
        ).fetchone()
        if row is None or not row[0]:
            raise NotAStoreError(
                "this PostgreSQL database (and search_path) holds no receiver store of the"
                " current layout",
                hint="check --postgres, or start `dho-receiver run` on it once",
            )

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
            except StoreUnavailableError:
                if attempt == _RETRIES:
                    raise
                _LOG.warning("PostgreSQL unreachable; trying again (attempt %d)", attempt)
                time.sleep(min(_RECONNECT_CAP_S, _RECONNECT_BASE_S * 2**attempt))
            except psycopg.OperationalError as err:
                if attempt == _RETRIES or not (self._conn.closed or self._conn.broken):
                    raise StoreUnavailableError(
                        f"PostgreSQL cannot be used now: {_first_line(err)}"
                    ) from err
                _LOG.warning("PostgreSQL connection lost; reconnecting (attempt %d)", attempt)
                time.sleep(min(_RECONNECT_CAP_S, _RECONNECT_BASE_S * 2**attempt))
            except psycopg.Error as err:
                raise StoreError(f"PostgreSQL refused an operation: {_first_line(err)}") from err
        raise AssertionError("unreachable")  # pragma: no cover

    # -- box registry ----------------------------------------------------------------------

    def enrol(self, box_id: str, public_key: bytes, patients: Iterable[str] = ()) -> None:
        """Record (or replace) a box's public key and assign ``patients`` to it.

        Replacing the key resets its replay window. See :class:`receiver.registry.BoxRegistry`.
        """
        check_box_id(box_id)
        refs = sorted(check_patient_refs(patients))
        if len(public_key) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        now = int(time.time())

        def work(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
            conn.execute(
                "INSERT INTO boxes (box_id, public_key, enrolled_at, high_water)"
                " VALUES (%s, %s, %s, 0) ON CONFLICT (box_id) DO UPDATE SET"
                " public_key = excluded.public_key, enrolled_at = excluded.enrolled_at,"
                " high_water = 0",
                (box_id, public_key, now),
            )
            conn.execute("DELETE FROM batches WHERE box_id = %s", (box_id,))
            self._add_patients(conn, box_id, refs, now)

        with self._lock:
            self._run(work)

    @staticmethod
    def _add_patients(
        conn: psycopg.Connection[tuple[Any, ...]], box_id: str, refs: list[str], now: int
    ) -> None:
        conn.execute(
            "INSERT INTO box_patients (box_id, patient, assigned_at)"
            " SELECT %s, p, %s FROM unnest(%s::text[]) AS p ON CONFLICT DO NOTHING",
            (box_id, now, refs),
        )

    @staticmethod
    def _require_box(conn: psycopg.Connection[tuple[Any, ...]], box_id: str) -> None:
        row = conn.execute("SELECT 1 FROM boxes WHERE box_id = %s FOR UPDATE", (box_id,)).fetchone()
        if row is None:
            raise BoxNotEnrolledError(f"box {box_id} is not enrolled")

    def assign(self, box_id: str, patients: Iterable[str]) -> None:
        """Let an enrolled box deliver readings for ``patients`` too."""
        check_box_id(box_id)
        refs = sorted(check_patient_refs(patients))
        now = int(time.time())

        def work(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
            self._require_box(conn, box_id)
            self._add_patients(conn, box_id, refs, now)

        with self._lock:
            self._run(work)

    def unassign(self, box_id: str, patients: Iterable[str]) -> None:
        """Stop accepting new readings from the box for ``patients`` (stored ones stay)."""
        check_box_id(box_id)
        refs = sorted(check_patient_refs(patients))

        def work(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
            self._require_box(conn, box_id)
            conn.execute(
                "DELETE FROM box_patients WHERE box_id = %s AND patient = ANY(%s::text[])",
                (box_id, refs),
            )

        with self._lock:
            self._run(work)

    def _boxes(self, box_id: str | None) -> list[Box]:
        where, args = ("WHERE box_id = %s", (box_id,)) if box_id is not None else ("", ())

        def work(
            conn: psycopg.Connection[tuple[Any, ...]],
        ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            rows = conn.execute(
                f"SELECT box_id, public_key, enrolled_at FROM boxes {where} ORDER BY box_id",  # noqa: S608
                args,
            ).fetchall()
            pats = conn.execute(
                f"SELECT box_id, patient FROM box_patients {where}",  # noqa: S608
                args,
            ).fetchall()
            return rows, pats

        with self._lock:
            rows, pats = self._run(work)
        by_box: dict[str, set[str]] = {}
        for b, p in pats:
            by_box.setdefault(str(b), set()).add(str(p))
        return [
            Box(str(b), bytes(k), int(t), frozenset(by_box.get(str(b), ()))) for b, k, t in rows
        ]

    def box(self, box_id: str) -> Box | None:
        """The enrolled box, or None."""
        found = self._boxes(box_id)
        return found[0] if found else None

    def boxes(self) -> list[Box]:
        """Every enrolled box, by id."""
        return self._boxes(None)

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
        bodies: Sequence[bytes] | None = None,
    ) -> CommitResult:
        """Store a verified batch exactly once, in one durable transaction.

        The rules of :meth:`receiver.store.SqliteStore.commit_batch`: ``DUPLICATE`` for an
        envelope already committed, ``REJECTED_REPLAY`` for another envelope under a committed
        ``(box, seq)`` or one below the window, ``REJECTED_FORBIDDEN`` for a reading id another
        box delivered, otherwise each reading is stored unless this box already delivered its
        id or natural key.
        """
        ids = [r.id.bytes for r in readings]
        keys = [natural_key_hash(r) for r in readings]
        patients = [r.patient for r in readings]
        lanes = [int(r.lane) for r in readings]
        captured = [r.captured.wall_ns for r in readings]
        store_bodies = bodies_for(readings, bodies)

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
                (box_id, seq, now_ms, ids, keys, patients, lanes, captured, store_bodies),
            )
            stored = max(0, cur.rowcount)
            # After the insert, not before: ON CONFLICT waited for any concurrent transaction
            # inserting one of these ids, and this statement's snapshot sees its commit.
            clash = conn.execute(
                "SELECT 1 FROM readings WHERE reading_id = ANY(%b::bytea[]) AND box_id <> %s"
                " LIMIT 1",
                (ids, box_id),
            ).fetchone()
            if clash is not None:
                raise _ForeignReadingIdError(high_water)
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
            try:
                return self._run(work)
            except _ForeignReadingIdError as err:  # the transaction was rolled back
                return CommitResult(
                    AckResult.REJECTED_FORBIDDEN,
                    0,
                    0,
                    err.high_water,
                    "a reading id another box delivered",
                )

    # -- refused batches (audit) -------------------------------------------------------------

    def keep_refused(self, entry: RefusedBatch, limits: AuditLimits) -> None:
        """Keep a refused batch for audit, then drop the oldest beyond ``limits``."""
        e = cut_for_audit(entry, limits)

        def work(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
            conn.execute(
                "INSERT INTO refused (received_at, box_id, batch_id, seq, reason, detail, size,"
                " truncated, wire) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    e.received_at_ms,
                    e.box_id,
                    None if e.batch_id is None else e.batch_id.bytes,
                    e.seq,
                    e.reason,
                    e.detail,
                    e.size,
                    e.truncated,
                    e.wire,
                ),
            )
            conn.execute(
                "DELETE FROM refused WHERE box_id = %s AND n NOT IN"
                " (SELECT n FROM refused WHERE box_id = %s ORDER BY n DESC LIMIT %s)",
                (e.box_id, e.box_id, limits.per_box),
            )
            conn.execute(
                "DELETE FROM refused WHERE n NOT IN"
                " (SELECT n FROM refused ORDER BY n DESC LIMIT %s)",
                (limits.max_rows,),
            )
            conn.execute(
                "DELETE FROM refused WHERE n <= (SELECT n FROM (SELECT n, SUM(length(wire))"
                " OVER (ORDER BY n DESC) AS total FROM refused) AS t WHERE total > %s"
                " ORDER BY n DESC LIMIT 1)",
                (limits.max_bytes,),
            )

        with self._lock:
            self._run(work)

    def refused(self, box_id: str | None = None, limit: int = 100) -> list[RefusedEntry]:
        """The latest kept refusals, newest first (optionally of one box)."""
        where, args = ("WHERE box_id = %s", (box_id,)) if box_id is not None else ("", ())

        def work(conn: psycopg.Connection[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
            return conn.execute(
                "SELECT n, received_at, box_id, batch_id, seq, reason, detail, size, truncated"  # noqa: S608
                f" FROM refused {where} ORDER BY n DESC LIMIT %s",
                (*args, limit),
            ).fetchall()

        with self._lock:
            rows = self._run(work)
        return [
            RefusedEntry(
                n=int(n),
                received_at_ms=int(received),
                box_id=str(box),
                batch_id=None if batch_id is None else uuid.UUID(bytes=bytes(batch_id)),
                seq=None if seq is None else int(seq),
                reason=str(reason),
                detail=str(detail),
                size=int(size),
                truncated=bool(truncated),
            )
            for n, received, box, batch_id, seq, reason, detail, size, truncated in rows
        ]

    def refused_counts(self) -> dict[str, int]:
        """How many refusals are kept, by reason."""

        def work(conn: psycopg.Connection[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
            return conn.execute(
                "SELECT reason, count(*) FROM refused GROUP BY reason ORDER BY reason"
            ).fetchall()

        with self._lock:
            rows = self._run(work)
        return {str(r): int(n) for r, n in rows}

    def refused_wire(self, n: int) -> bytes | None:
        """The kept bytes of refusal ``n`` (for audit tools), or None."""

        def work(conn: psycopg.Connection[tuple[Any, ...]]) -> bytes | None:
            row = conn.execute("SELECT wire FROM refused WHERE n = %s", (n,)).fetchone()
            return None if row is None else bytes(row[0])

        with self._lock:
            return self._run(work)

    # -- reading ---------------------------------------------------------------------------

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
