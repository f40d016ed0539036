"""Durable, idempotent storage of received readings (SQLite by default).

One transaction per batch decides, under the database's own locking, whether the batch is
new, a duplicate delivery of an envelope already committed, or a replay, and stores the new
readings with ``INSERT OR IGNORE``. De-duplication is **scoped to the box**: a reading is a
duplicate when the same box already delivered its id or its PHD natural key (device + device
time + values), so one box can never make another box's genuine reading a duplicate. A
reading id that another box already delivered refuses the batch (``REJECTED_FORBIDDEN``).
Several receiver processes may share one database file: the ``BEGIN IMMEDIATE`` transaction
serialises them.

Tables (see ``docs/receiver.md``):

* ``boxes``: enrolled boxes, their Ed25519 public key and the replay high-water mark,
* ``box_patients``: the patient references each box may deliver readings for,
* ``batches``: the envelopes committed inside the replay window (box, seq, digest),
* ``readings``: one row per reading, with the reading in the uplink's compact encoding,
* ``refused``: the latest refused batches, kept for audit within :class:`AuditLimits`.

Database trouble is typed: :class:`~receiver.errors.StoreUnavailableError` for what may pass
(locked, I/O error, disk full), :class:`~receiver.errors.NotAStoreError` for a file that is
not a receiver store.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from agent.model import Reading
from dho_protocol import AckResult, decode_stored, encode_readings
from receiver.errors import (
    BoxNotEnrolledError,
    NotAStoreError,
    StoreError,
    StoreMissingError,
    StoreUnavailableError,
)
from receiver.registry import Box, BoxRegistry, check_box_id, check_patient_refs

SCHEMA_VERSION: Final = 2
"""``PRAGMA user_version`` of the current layout (0: the first one, whose natural keys were
unique across all boxes; it is upgraded in place when a store opens it for writing)."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS boxes (
    box_id      TEXT PRIMARY KEY,
    public_key  BLOB NOT NULL,
    enrolled_at INTEGER NOT NULL,
    high_water  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS box_patients (
    box_id      TEXT NOT NULL,
    patient     TEXT NOT NULL,
    assigned_at INTEGER NOT NULL,
    PRIMARY KEY (box_id, patient)
) WITHOUT ROWID;
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
    natural_key BLOB,
    box_id      TEXT NOT NULL,
    batch_seq   INTEGER NOT NULL,
    patient     TEXT NOT NULL,
    lane        INTEGER NOT NULL,
    captured_ns INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    body        BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS readings_box ON readings (box_id);
CREATE UNIQUE INDEX IF NOT EXISTS readings_box_natural_key ON readings (box_id, natural_key);
CREATE TABLE IF NOT EXISTS refused (
    n           INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at INTEGER NOT NULL,
    box_id      TEXT NOT NULL,
    batch_id    BLOB,
    seq         INTEGER,
    reason      TEXT NOT NULL,
    detail      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    truncated   INTEGER NOT NULL,
    wire        BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS refused_box ON refused (box_id, n);
"""

_MIGRATE_FROM_1: Final = """
CREATE TABLE readings_v2 (
    reading_id  BLOB PRIMARY KEY,
    natural_key BLOB,
    box_id      TEXT NOT NULL,
    batch_seq   INTEGER NOT NULL,
    patient     TEXT NOT NULL,
    lane        INTEGER NOT NULL,
    captured_ns INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    body        BLOB NOT NULL
);
INSERT INTO readings_v2 (rowid, reading_id, natural_key, box_id, batch_seq, patient, lane,
                         captured_ns, received_at, body)
    SELECT rowid, reading_id, natural_key, box_id, batch_seq, patient, lane, captured_ns,
           received_at, body FROM readings ORDER BY rowid;
DROP TABLE readings;
ALTER TABLE readings_v2 RENAME TO readings;
"""
"""The first layout kept ``natural_key`` globally ``UNIQUE``; version 2 scopes it to the box
(the rows keep their order: ``rowid`` is copied)."""

_TRANSIENT: Final = frozenset(
    {
        5,  # SQLITE_BUSY: another process holds the write lock past the busy timeout
        6,  # SQLITE_LOCKED
        10,  # SQLITE_IOERR
        13,  # SQLITE_FULL: database or disk is full
        14,  # SQLITE_CANTOPEN
        15,  # SQLITE_PROTOCOL
    }
)
_NOTADB: Final = 26
_ID_CHUNK: Final = 500


@contextlib.contextmanager
def _typed_errors(path: Path) -> Iterator[None]:
    """Turn sqlite3 errors into the receiver's store errors (the message names the file)."""
    try:
        yield
    except sqlite3.DatabaseError as err:
        code = getattr(err, "sqlite_errorcode", None)
        primary = None if code is None else code & 0xFF
        if primary == _NOTADB:
            raise NotAStoreError(f"{path} is not a receiver database (not SQLite)") from err
        if primary in _TRANSIENT or (primary is None and isinstance(err, sqlite3.OperationalError)):
            raise StoreUnavailableError(f"the database {path} cannot be used now: {err}") from err
        raise StoreError(f"the database {path} refused an operation: {err}") from err


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


@dataclass(frozen=True, slots=True)
class AuditLimits:
    """How many refused batches are kept for audit; the oldest go first.

    Attributes:
        per_box: at most this many per box (one box cannot crowd out the others' entries).
        max_rows: at most this many in all.
        max_bytes: at most this many bytes of kept wire in all.
        max_entry_bytes: a longer message is kept truncated to this many bytes.
    """

    per_box: int = 100
    max_rows: int = 10_000
    max_bytes: int = 256 * 2**20
    max_entry_bytes: int = 512 * 1024


@dataclass(frozen=True, slots=True)
class RefusedBatch:
    """A refused message, kept for audit.

    ``box_id`` is the box named by the topic (the broker authenticated it), or ``""``.
    ``detail`` says what was wrong; it never holds a value or a patient reference.
    """

    received_at_ms: int
    box_id: str
    batch_id: uuid.UUID | None
    seq: int | None
    reason: str
    detail: str
    wire: bytes
    size: int = -1  # the message's full size, when ``wire`` was cut

    @property
    def truncated(self) -> bool:
        """True when only the start of the message was kept."""
        return self.size > len(self.wire)


@dataclass(frozen=True, slots=True)
class RefusedEntry:
    """One kept refusal, as listed (``dho-receiver refused``)."""

    n: int
    received_at_ms: int
    box_id: str
    batch_id: uuid.UUID | None
    seq: int | None
    reason: str
    detail: str
    size: int
    truncated: bool


def natural_key_hash(reading: Reading) -> bytes | None:
    """SHA-256 of the reading's PHD natural key, or None when it has none."""
    key = reading.natural_key
    return None if key is None else hashlib.sha256(key).digest()


def encode_one(reading: Reading) -> bytes:
    """One reading in the compact encoding (raw frames included)."""
    return encode_readings([reading])


def decode_one(body: bytes, reading_id: uuid.UUID) -> Reading:
    """A stored reading: a one-row payload v2 (the row a box sent in a v2, v3 or v4 batch, its
    rebuilt raw frames put back), or :func:`encode_one`."""
    return decode_stored(body, reading_id)


def bodies_for(readings: Sequence[Reading], bodies: Sequence[bytes] | None) -> list[bytes]:
    """The stored form of each reading: as received when given, else encoded here."""
    if bodies is None:
        return [encode_one(r) for r in readings]
    if len(bodies) != len(readings):
        raise ValueError("one stored body per reading")
    return list(bodies)


def cut_for_audit(entry: RefusedBatch, limits: AuditLimits) -> RefusedBatch:
    """``entry`` with its wire cut to ``limits.max_entry_bytes`` (its full size recorded)."""
    size = entry.size if entry.size >= 0 else len(entry.wire)
    wire = entry.wire[: limits.max_entry_bytes]
    return RefusedBatch(
        entry.received_at_ms,
        entry.box_id,
        entry.batch_id,
        entry.seq,
        entry.reason,
        entry.detail[:500],
        wire,
        size,
    )


class Store(BoxRegistry, Protocol):
    """Storage used by the receiver (SQLite here; PostgreSQL has the same shape)."""

    def box_key(self, box_id: str) -> bytes | None: ...
    def commit_batch(
        self,
        box_id: str,
        seq: int,
        batch_id: uuid.UUID,
        digest: bytes,
        readings: Sequence[Reading],
        window: int,
        bodies: Sequence[bytes] | None = None,
    ) -> CommitResult: ...
    def keep_refused(self, entry: RefusedBatch, limits: AuditLimits) -> None: ...
    def refused(self, box_id: str | None = None, limit: int = 100) -> list[RefusedEntry]: ...
    def refused_counts(self) -> dict[str, int]: ...
    def refused_wire(self, n: int) -> bytes | None: ...
    def readings(self, box_id: str | None = None) -> Iterator[StoredReading]: ...
    def count(self) -> int: ...
    def close(self) -> None: ...


class SqliteStore:
    """The receiver's SQLite store (WAL, ``synchronous=FULL``: a commit survives power loss).

    Safe to use from one thread at a time; several processes may open the same file.

    Args:
        path: the database file.
        create: make the file (and its directory) when missing; otherwise a missing file is a
            :class:`~receiver.errors.NotAStoreError`.
        read_only: open an existing store for reading only (export, stats): nothing is created
            or changed, not even the schema.

    Raises:
        NotAStoreError: missing (without ``create``), not SQLite, or another program's database.
        StoreUnavailableError: the file cannot be opened or locked now.
    """

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout_s: float = 30.0,
        create: bool = True,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        if self.path.is_dir():
            raise NotAStoreError(f"{self.path} is a directory, not a receiver database")
        if read_only or not create:
            if not self.path.is_file():
                raise StoreMissingError(f"no receiver database at {self.path}")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with _typed_errors(self.path):
            if read_only:
                self._conn = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro",
                    uri=True,
                    timeout=busy_timeout_s,
                    isolation_level=None,
                    check_same_thread=False,
                )
            else:
                self._conn = sqlite3.connect(
                    self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
                )
            try:
                self._prepare(read_only)
            except BaseException:
                self._conn.close()
                raise

    def _tables(self) -> set[str]:
        rows = self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return {str(r[0]) for r in rows}

    def _prepare(self, read_only: bool) -> None:
        tables = self._tables()
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if tables and "boxes" not in tables:
            raise NotAStoreError(
                f"{self.path} is an SQLite database but not a receiver store (no boxes table)"
            )
        if read_only:
            if not tables:
                raise NotAStoreError(f"{self.path} is an empty database, not a receiver store")
            if version < SCHEMA_VERSION:
                raise NotAStoreError(
                    f"{self.path} has the receiver's older layout {version}",
                    hint="start `dho-receiver run` on it once to upgrade it, then try again",
                )
            self._conn.execute("PRAGMA query_only = ON")
            return
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        if version > SCHEMA_VERSION:
            raise NotAStoreError(
                f"{self.path} has layout {version}, newer than this receiver ({SCHEMA_VERSION})"
            )
        if version == SCHEMA_VERSION:
            self._conn.executescript(_SCHEMA)
            return
        self._conn.execute("BEGIN IMMEDIATE")  # one process upgrades; the others wait
        try:
            version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
            if version < SCHEMA_VERSION:
                steps = _MIGRATE_FROM_1 if "readings" in self._tables() else ""
                for stmt in (steps + _SCHEMA).split(";"):
                    if stmt.strip():
                        self._conn.execute(stmt)
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction under the lock, errors typed."""
        with self._lock, _typed_errors(self.path):
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
                if c.in_transaction:
                    c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise

    # -- box registry ----------------------------------------------------------------------

    def enrol(self, box_id: str, public_key: bytes, patients: Iterable[str] = ()) -> None:
        """Record (or replace) a box's public key and assign ``patients`` to it.

        Replacing the key resets its replay window. See :class:`receiver.registry.BoxRegistry`.
        """
        check_box_id(box_id)
        refs = check_patient_refs(patients)
        if len(public_key) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        now = int(time.time())
        with self._write() as c:
            c.execute(
                "INSERT INTO boxes (box_id, public_key, enrolled_at, high_water)"
                " VALUES (?, ?, ?, 0) ON CONFLICT (box_id) DO UPDATE SET"
                " public_key = excluded.public_key, enrolled_at = excluded.enrolled_at,"
                " high_water = 0",
                (box_id, public_key, now),
            )
            c.execute("DELETE FROM batches WHERE box_id = ?", (box_id,))
            c.executemany(
                "INSERT OR IGNORE INTO box_patients (box_id, patient, assigned_at)"
                " VALUES (?, ?, ?)",
                [(box_id, p, now) for p in sorted(refs)],
            )

    def _require_box(self, c: sqlite3.Connection, box_id: str) -> None:
        if c.execute("SELECT 1 FROM boxes WHERE box_id = ?", (box_id,)).fetchone() is None:
            raise BoxNotEnrolledError(f"box {box_id} is not enrolled")

    def assign(self, box_id: str, patients: Iterable[str]) -> None:
        """Let an enrolled box deliver readings for ``patients`` too."""
        check_box_id(box_id)
        refs = check_patient_refs(patients)
        now = int(time.time())
        with self._write() as c:
            self._require_box(c, box_id)
            c.executemany(
                "INSERT OR IGNORE INTO box_patients (box_id, patient, assigned_at)"
                " VALUES (?, ?, ?)",
                [(box_id, p, now) for p in sorted(refs)],
            )

    def unassign(self, box_id: str, patients: Iterable[str]) -> None:
        """Stop accepting new readings from the box for ``patients`` (stored ones stay)."""
        check_box_id(box_id)
        refs = check_patient_refs(patients)
        with self._write() as c:
            self._require_box(c, box_id)
            c.executemany(
                "DELETE FROM box_patients WHERE box_id = ? AND patient = ?",
                [(box_id, p) for p in sorted(refs)],
            )

    def _boxes(self, box_id: str | None) -> list[Box]:
        where, args = ("WHERE box_id = ?", (box_id,)) if box_id is not None else ("", ())
        with self._lock, _typed_errors(self.path):
            rows = self._conn.execute(
                f"SELECT box_id, public_key, enrolled_at FROM boxes {where} ORDER BY box_id",  # noqa: S608
                args,
            ).fetchall()
            pats = self._conn.execute(
                f"SELECT box_id, patient FROM box_patients {where}",  # noqa: S608
                args,
            ).fetchall()
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
        with self._lock, _typed_errors(self.path):
            row = self._conn.execute(
                "SELECT public_key FROM boxes WHERE box_id = ?", (box_id,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    # -- batches ---------------------------------------------------------------------------

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

        ``bodies`` is how to store each reading (as the batch brought it, see
        :func:`dho_protocol.batch_contents`); without it each reading is encoded here.

        * same ``(box, seq)`` and same digest as a committed envelope: ``DUPLICATE``;
        * same ``(box, seq)`` with other content, or ``seq`` at or below
          ``high_water - window``: ``REJECTED_REPLAY``, nothing stored;
        * a reading id that another box delivered: ``REJECTED_FORBIDDEN``, nothing stored;
        * otherwise each reading is stored unless this box already delivered its id or its
          natural key (then it counts as a duplicate).
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
                body,
            )
            for r, body in zip(readings, bodies_for(readings, bodies), strict=True)
        ]
        with self._write() as c:
            hw_row = c.execute(
                "SELECT high_water FROM boxes WHERE box_id = ?", (box_id,)
            ).fetchone()
            if hw_row is None:
                return CommitResult(AckResult.REJECTED_REPLAY, 0, 0, 0, "unknown box")
            high_water = int(hw_row[0])
            seen = c.execute(
                "SELECT digest, stored, readings FROM batches WHERE box_id = ? AND seq = ?",
                (box_id, seq),
            ).fetchone()
            if seen is not None:
                if bytes(seen[0]) == digest:
                    return CommitResult(AckResult.DUPLICATE, 0, int(seen[2]), high_water)
                return CommitResult(
                    AckResult.REJECTED_REPLAY, 0, 0, high_water, "sequence number reused"
                )
            if seq <= high_water - window:
                return CommitResult(
                    AckResult.REJECTED_REPLAY, 0, 0, high_water, "outside the replay window"
                )
            ids = [row[0] for row in rows]
            for i in range(0, len(ids), _ID_CHUNK):
                chunk = ids[i : i + _ID_CHUNK]
                clash = c.execute(
                    "SELECT 1 FROM readings WHERE box_id <> ? AND reading_id IN"  # noqa: S608
                    f" ({','.join('?' * len(chunk))}) LIMIT 1",
                    (box_id, *chunk),
                ).fetchone()
                if clash is not None:
                    return CommitResult(
                        AckResult.REJECTED_FORBIDDEN,
                        0,
                        0,
                        high_water,
                        "a reading id another box delivered",
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
        return CommitResult(AckResult.STORED, stored, len(rows) - stored, new_hw)

    # -- refused batches (audit) ---------------------------------------------------------------

    def keep_refused(self, entry: RefusedBatch, limits: AuditLimits) -> None:
        """Keep a refused batch for audit, then drop the oldest beyond ``limits``."""
        e = cut_for_audit(entry, limits)
        with self._write() as c:
            c.execute(
                "INSERT INTO refused (received_at, box_id, batch_id, seq, reason, detail, size,"
                " truncated, wire) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    e.received_at_ms,
                    e.box_id,
                    None if e.batch_id is None else e.batch_id.bytes,
                    e.seq,
                    e.reason,
                    e.detail,
                    e.size,
                    int(e.truncated),
                    e.wire,
                ),
            )
            c.execute(
                "DELETE FROM refused WHERE box_id = ? AND n NOT IN"
                " (SELECT n FROM refused WHERE box_id = ? ORDER BY n DESC LIMIT ?)",
                (e.box_id, e.box_id, limits.per_box),
            )
            c.execute(
                "DELETE FROM refused WHERE n NOT IN"
                " (SELECT n FROM refused ORDER BY n DESC LIMIT ?)",
                (limits.max_rows,),
            )
            c.execute(
                "DELETE FROM refused WHERE n <= (SELECT n FROM (SELECT n, SUM(length(wire))"
                " OVER (ORDER BY n DESC) AS total FROM refused) WHERE total > ?"
                " ORDER BY n DESC LIMIT 1)",
                (limits.max_bytes,),
            )

    def refused(self, box_id: str | None = None, limit: int = 100) -> list[RefusedEntry]:
        """The latest kept refusals, newest first (optionally of one box)."""
        where, args = ("WHERE box_id = ?", (box_id,)) if box_id is not None else ("", ())
        with self._lock, _typed_errors(self.path):
            rows = self._conn.execute(
                "SELECT n, received_at, box_id, batch_id, seq, reason, detail, size, truncated"  # noqa: S608
                f" FROM refused {where} ORDER BY n DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [_refused_entry(r) for r in rows]

    def refused_counts(self) -> dict[str, int]:
        """How many refusals are kept, by reason."""
        with self._lock, _typed_errors(self.path):
            rows = self._conn.execute(
                "SELECT reason, count(*) FROM refused GROUP BY reason ORDER BY reason"
            ).fetchall()
        return {str(r): int(n) for r, n in rows}

    def refused_wire(self, n: int) -> bytes | None:
        """The kept bytes of refusal ``n`` (for audit tools), or None."""
        with self._lock, _typed_errors(self.path):
            row = self._conn.execute("SELECT wire FROM refused WHERE n = ?", (n,)).fetchone()
        return None if row is None else bytes(row[0])

    # -- reading ---------------------------------------------------------------------------

    def readings(self, box_id: str | None = None) -> Iterator[StoredReading]:
        """Every stored reading in arrival order (optionally of one box)."""
        sql = "SELECT reading_id, box_id, received_at, body FROM readings"
        args: tuple[str, ...] = ()
        if box_id is not None:
            sql += " WHERE box_id = ?"
            args = (box_id,)
        with self._lock, _typed_errors(self.path):
            rows = self._conn.execute(sql + " ORDER BY rowid", args).fetchall()
        for rid, box, received, body in rows:
            yield StoredReading(decode_one(bytes(body), uuid.UUID(bytes=bytes(rid))), box, received)

    def reading_ids(self) -> list[uuid.UUID]:
        """Every stored reading id (tests and audits)."""
        with self._lock, _typed_errors(self.path):
            rows = self._conn.execute("SELECT reading_id FROM readings ORDER BY rowid").fetchall()
        return [uuid.UUID(bytes=bytes(r[0])) for r in rows]

    def count(self) -> int:
        """How many readings are stored."""
        with self._lock, _typed_errors(self.path):
            return int(self._conn.execute("SELECT count(*) FROM readings").fetchone()[0])

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()


def _refused_entry(row: Sequence[object]) -> RefusedEntry:
    n, received, box, batch_id, seq, reason, detail, size, truncated = row
    return RefusedEntry(
        n=int(n),  # type: ignore[call-overload]
        received_at_ms=int(received),  # type: ignore[call-overload]
        box_id=str(box),
        batch_id=None if batch_id is None else uuid.UUID(bytes=bytes(batch_id)),  # type: ignore[call-overload]
        seq=None if seq is None else int(seq),  # type: ignore[call-overload]
        reason=str(reason),
        detail=str(detail),
        size=int(size),  # type: ignore[call-overload]
        truncated=bool(truncated),
    )
