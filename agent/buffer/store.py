"""The encrypted SQLite outbox: a reading is safe exactly when :meth:`Buffer.append` returns.

Design (``docs/buffer.md`` has the reasoning and the numbers):

* SQLite in WAL mode with ``synchronous=FULL`` and ``secure_delete=ON``; one ``BEGIN
  IMMEDIATE`` transaction per append call, so a returned append survives a crash or power cut.
* Every row is sealed with ChaCha20-Poly1305 under a data key, with a random 96-bit nonce. The
  associated data is ``(format, table, seq, key_id, lane)``, so an edited row, a row moved to
  another position, or two swapped rows fail to open. Only what the outbox needs to work is in
  clear: the row's sequence number, lane, state, batch number and key id. Device identity,
  patient reference, values and every timestamp are inside the ciphertext.
* Device + patient and boot ids are stored once in an encrypted ``refs`` table and referenced
  by number, which keeps a spot reading under 256 bytes on disk.
* De-duplication: an HMAC of the reading's natural key (device + device time + values) goes in
  ``seen``, which outlives delivery, so a cuff that re-sends old records creates no twins.
* Outbox states: pending (0) -> claimed (1, in a batch) -> acknowledged (2) -> purged (row
  deleted). Opening the store turns claimed rows back into pending.
* Disk cap: above 90% of ``cap_bytes`` the buffer purges delivered rows, then compacts bulk and
  continuous chunks into per-minute summaries, and raises an alarm. Above the cap it refuses
  bulk and continuous data with :class:`BufferFullError`; spot readings and alarms are never
  refused by the cap. A reserve file is given back to the filesystem when SQLite reports the
  disk full, so compaction and the spot reading can still be written.
* Damage: a row that fails authentication is moved to ``quarantine`` and reported; a store
  whose ``integrity_check`` fails at open is renamed aside for forensics and a fresh one
  opened, so capture goes on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hmac
import logging
import os
import sqlite3
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from agent.buffer import codec
from agent.buffer.keys import KEY_BYTES, NONCE_BYTES, KeySource, unwrap_key, wrap_key
from agent.errors import (
    BufferFullError,
    KeyLostError,
    KeyUnavailableError,
    RowAuthenticationError,
    StorageFullError,
    StoreError,
)
from agent.model import Lane, Reading

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")

PENDING: Final = 0
CLAIMED: Final = 1
ACKED: Final = 2

PURPOSE_DATA: Final = "data"
PURPOSE_INDEX: Final = "index"

_SQLITE_FULL: Final = 13
_SEEN_GENERATION_SHIFT: Final = 16  # one ``seen`` generation per 65,536 readings
_COMPACTABLE: Final = (Lane.BULK, Lane.CONTINUOUS)  # compacted in this order

ALARM_PRESSURE: Final = "buffer.pressure"
ALARM_FULL: Final = "buffer.full"
ALARM_STORAGE_FULL: Final = "storage.full"
ALARM_STORE_SET_ASIDE: Final = "store.set-aside"
ALARM_ROWS_QUARANTINED: Final = "rows.quarantined"
ALARM_KEY_PERMISSIONS: Final = "key.permissions"

MIGRATIONS = Migrations("dho-buffer")


@MIGRATIONS()
def m001_initial(db: Database) -> None:
    """Keys, encrypted refs, the outbox, the de-duplication index and the quarantine."""
    db.executescript(
        """
        CREATE TABLE keys (
            key_id INTEGER PRIMARY KEY,
            purpose TEXT NOT NULL,
            state TEXT NOT NULL,          -- active | retired
            wrapped BLOB NOT NULL,        -- nonce || ChaCha20-Poly1305(KEK, DEK)
            wrapped_next BLOB             -- set only while a KEK rotation is in progress
        );
        CREATE TABLE refs (
            ref_id INTEGER PRIMARY KEY,
            h BLOB NOT NULL UNIQUE,       -- HMAC(index key, plaintext): lookup without decrypting
            key_id INTEGER NOT NULL,
            blob BLOB NOT NULL
        );
        CREATE TABLE readings (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            lane INTEGER NOT NULL,
            state INTEGER NOT NULL,
            batch INTEGER,
            key_id INTEGER NOT NULL,
            blob BLOB NOT NULL            -- nonce || ciphertext || tag
        );
        CREATE INDEX readings_pending ON readings(lane, seq) WHERE state = 0;
        CREATE INDEX readings_batch ON readings(batch) WHERE batch IS NOT NULL;
        CREATE INDEX readings_acked ON readings(seq) WHERE state = 2;
        CREATE TABLE seen (nk BLOB PRIMARY KEY, gen INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE quarantine (
            qid INTEGER PRIMARY KEY,
            source TEXT NOT NULL,         -- readings | refs
            seq INTEGER NOT NULL,
            lane INTEGER,
            key_id INTEGER,
            reason TEXT NOT NULL,
            blob BLOB NOT NULL
        );
        CREATE TABLE meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
        INSERT INTO meta (k, v) VALUES ('next_batch', 1);
        """
    )


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What an append did: readings stored, and readings skipped as duplicates."""

    stored: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class Claim:
    """A batch of readings handed to the uplink."""

    batch_id: int
    readings: tuple[Reading, ...]
    quarantined: tuple[RowAuthenticationError, ...] = ()
    encrypted_bytes: int = 0


@dataclass(frozen=True, slots=True)
class BufferStats:
    """Counts and health for the status command and the uplink. No patient data."""

    pending_by_lane: dict[str, int]
    claimed: int
    acknowledged: int
    quarantined: int
    used_bytes: int
    file_bytes: int
    cap_bytes: int | None
    alarms: tuple[str, ...]
    set_aside: tuple[str, ...] = ()

    @property
    def pending(self) -> int:
        """All readings waiting to be sent."""
        return sum(self.pending_by_lane.values())


@dataclass
class BufferConfig:
    """Tunables. Defaults suit a Raspberry Pi with a 16 GB card."""

    cap_bytes: int | None = None
    compact_at: float = 0.9  # fraction of the cap where compaction starts
    compact_to: float = 0.8  # ... and where it stops
    compact_period_ms: int = 60_000
    reserve_bytes: int = 4 * 2**20  # given back to the filesystem on SQLITE_FULL
    # Pages the WAL may hold before SQLite checkpoints them into the database. Must stay well
    # under half the reserve: on a full disk, the checkpoint needs that much room to run.
    wal_autocheckpoint_pages: int = 256
    seen_generations: int = 32  # de-duplication memory: 32 * 65,536 readings
    check_integrity: bool = True


@dataclass
class _Counts:
    pending: dict[Lane, int] = field(default_factory=lambda: dict.fromkeys(Lane, 0))
    claimed: int = 0
    acked: int = 0
    quarantined: int = 0


def _aad(table: str, seq: int, key_id: int, lane: int) -> bytes:
    # Fixed-width binary layout: no field can run into another.
    return b"dho-buffer/v1/" + table.encode() + struct.pack(">QIB", seq, key_id, lane)


class _StoreLock:
    """One process per store: two writers would hand out the same sequence numbers."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise StoreError(f"store {path.stem} is open in another process") from None

    def release(self) -> None:
        os.close(self._fd)


class Buffer:
    """The encrypted outbox. Not thread-safe: use it from one thread (see AsyncBuffer)."""

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        keys: KeySource,
        config: BufferConfig,
        lock: _StoreLock,
        set_aside: list[str],
    ) -> None:
        self.path = path
        self._conn = conn
        self._db = Database(conn)
        self._keys = keys
        self.config = config
        self._lock = lock
        self._set_aside = set_aside
        self._alarms: set[str] = set()
        if set_aside:
            self._alarms.add(ALARM_STORE_SET_ASIDE)
        self._data_keys: dict[int, ChaCha20Poly1305] = {}
        self._active_key = 0
        self._index_key = b""
        self._ref_ids: dict[bytes, int] = {}
        self._refs: dict[int, codec.Context | uuid.UUID] = {}
        # (device, patient) or boot id -> ref id, so appends skip encoding and hashing them
        self._ref_cache: dict[object, int] = {}
        self._inflight: dict[uuid.UUID, int] = {}
        self._counts = _Counts()
        self._next_seq = 1
        self._page_size = 4096

    # -- opening ------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: Path,
        keys: KeySource,
        *,
        cap_bytes: int | None = None,
        config: BufferConfig | None = None,
    ) -> Buffer:
        """Open (or create) the store at ``path``, checking it and recovering claimed rows.

        A store that fails ``integrity_check``, cannot be read as SQLite, or whose data keys
        do not open with ``keys`` is renamed aside (``<name>.set-aside-<time>``) with its WAL
        and a fresh store is created: capture must go on. ``stats().set_aside`` names the files.
        """
        path = Path(path)
        cfg = config or BufferConfig()
        if cap_bytes is not None:
            cfg.cap_bytes = cap_bytes
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = _StoreLock(path.with_name(path.name + ".lock"))
        set_aside: list[str] = []
        try:
            for _attempt in range(2):
                try:
                    conn = _connect(path, cfg)
                except (StoreError, sqlite3.DatabaseError) as exc:
                    if _attempt:
                        raise
                    set_aside.append(_set_aside(path, "corrupt"))
                    _LOGGER.error("store set aside (corrupt): %s", exc)
                    continue
                buf = cls(path, conn, keys, cfg, lock, set_aside)
                try:
                    buf._load_keys()
                except KeyLostError as exc:
                    conn.close()
                    if _attempt:
                        raise
                    set_aside.append(_set_aside(path, "keys"))
                    _LOGGER.error("store set aside (keys): %s", exc)
                    continue
                except BaseException:
                    conn.close()
                    raise
                buf._recover()
                return buf
            raise AssertionError("unreachable")
        except BaseException:
            lock.release()
            raise

    def _load_keys(self) -> None:
        """Load the KEK and unwrap the data keys, creating both for a new store.

        Raises:
            KeyLostError: the KEK is gone or is not this store's (the caller sets it aside).
            KeyUnavailableError: the key source cannot deliver the KEK now (configuration).
        """
        rows = self._conn.execute(
            "SELECT key_id, purpose, state, wrapped, wrapped_next FROM keys"
        ).fetchall()
        has_data = self._conn.execute("SELECT EXISTS (SELECT 1 FROM readings)").fetchone()[0]
        kek = self._keys.load(create=not rows and not has_data)
        if getattr(self._keys, "permissions_fixed", False):
            self._alarms.add(ALARM_KEY_PERMISSIONS)
        if not rows:
            if has_data:
                raise KeyLostError("store has readings but no data keys (shredded)")
            with self._tx():
                self._add_key(kek, PURPOSE_INDEX, "active")
                self._add_key(kek, PURPOSE_DATA, "active")
            rows = self._conn.execute(
                "SELECT key_id, purpose, state, wrapped, wrapped_next FROM keys"
            ).fetchall()
        pending_rotation = any(r[4] is not None for r in rows)
        try:
            plain = {r[0]: unwrap_key(kek, r[3], r[0], r[1]) for r in rows}
        except KeyLostError:
            if not pending_rotation:
                raise
            # A KEK rotation stopped after the new KEK was stored but before the rows were
            # switched over: the current KEK opens the "next" wrapping. Finish it.
            plain = {r[0]: unwrap_key(kek, r[4], r[0], r[1]) for r in rows}
            with self._tx():
                self._conn.execute("UPDATE keys SET wrapped = wrapped_next, wrapped_next = NULL")
        else:
            if pending_rotation:  # rotation stopped before the new KEK was stored: undo it
                with self._tx():
                    self._conn.execute("UPDATE keys SET wrapped_next = NULL")
        for key_id, purpose, state, *_ in rows:
            if purpose == PURPOSE_INDEX:
                self._index_key = plain[key_id]
            else:
                self._data_keys[key_id] = ChaCha20Poly1305(plain[key_id])
                if state == "active":
                    self._active_key = key_id
        if not self._index_key or not self._active_key:
            raise KeyUnavailableError("store has no active data key or no index key")

    def _add_key(self, kek: bytes, purpose: str, state: str) -> tuple[int, bytes]:
        key_id = int(
            self._conn.execute("SELECT coalesce(max(key_id), 0) + 1 FROM keys").fetchone()[0]
        )
        dek = os.urandom(KEY_BYTES)
        self._conn.execute(
            "INSERT INTO keys (key_id, purpose, state, wrapped) VALUES (?, ?, ?, ?)",
            (key_id, purpose, state, wrap_key(kek, dek, key_id, purpose)),
        )
        return key_id, dek

    def _recover(self) -> None:
        """Restart recovery: claimed rows go back to pending; counters are rebuilt once."""
        with self._tx():
            self._conn.execute("UPDATE readings SET state = 0 WHERE state = 1")
        self._page_size = self._conn.execute("PRAGMA page_size").fetchone()[0]
        seq_row = self._conn.execute(
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'readings'), 0),"
            " coalesce((SELECT max(seq) FROM quarantine WHERE source = 'readings'), 0))"
        ).fetchone()
        self._next_seq = int(seq_row[0]) + 1
        counts = _Counts()
        for lane, state, n in self._conn.execute(
            "SELECT lane, state, count(*) FROM readings GROUP BY lane, state"
        ):
            if state == PENDING:
                counts.pending[Lane(lane)] = n
            elif state == ACKED:
                counts.acked += n
        counts.quarantined = self._conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        if counts.quarantined:
            self._alarms.add(ALARM_ROWS_QUARANTINED)
        self._counts = counts
        self._ensure_reserve()

    # -- transactions and errors --------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; SQLITE_FULL becomes StorageFullError."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL or "full" in str(exc):
                self._alarms.add(ALARM_STORAGE_FULL)
                raise StorageFullError(
                    "the disk under the buffer is full; delivered rows are purged and bulk data "
                    "compacted automatically, free space on the data partition if it persists"
                ) from exc
            raise

    # -- encryption ---------------------------------------------------------------------

    def _seal(self, table: str, seq: int, lane: int, plaintext: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        aead = self._data_keys[self._active_key]
        return nonce + aead.encrypt(nonce, plaintext, _aad(table, seq, self._active_key, lane))

    def _open_row(self, table: str, seq: int, key_id: int, lane: int, blob: bytes) -> bytes:
        aead = self._data_keys.get(key_id)
        if aead is None:
            raise KeyUnavailableError(f"data key {key_id} is not in this store (shredded?)")
        try:
            return aead.decrypt(
                blob[:NONCE_BYTES], blob[NONCE_BYTES:], _aad(table, seq, key_id, lane)
            )
        except InvalidTag:
            raise RowAuthenticationError(seq, f"{table} row does not authenticate") from None

    def _blind(self, label: bytes, data: bytes) -> bytes:
        return hmac.digest(self._index_key, label + data, "sha256")[:16]

    def _natural(self, r: Reading) -> bytes | None:
        nk = r.natural_key
        return None if nk is None else self._blind(b"nk|", nk)

    def _seen_already(self, keys: list[bytes]) -> set[bytes]:
        found: set[bytes] = set()
        for i in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
            part = keys[i : i + 500]
            marks = ",".join("?" * len(part))
            found.update(
                row[0]
                for row in self._conn.execute(
                    f"SELECT nk FROM seen WHERE nk IN ({marks})",  # noqa: S608 - placeholders only
                    part,
                )
            )
        return found

    def _context_ref(self, r: Reading, new: list[bytes]) -> int:
        key = (r.device, r.patient)
        ref = self._ref_cache.get(key)
        if ref is None:
            ctx = codec.Context(r.device, r.patient)
            ref = self._ref_cache[key] = self._ref(codec.encode_context(ctx), ctx, new)
        return ref

    def _boot_ref(self, boot: uuid.UUID, new: list[bytes]) -> int:
        ref = self._ref_cache.get(boot)
        if ref is None:
            ref = self._ref_cache[boot] = self._ref(codec.encode_boot(boot), boot, new)
        return ref

    # -- refs ---------------------------------------------------------------------------

    def _ref(self, plaintext: bytes, value: codec.Context | uuid.UUID, new: list[bytes]) -> int:
        h = self._blind(b"ref|", plaintext)
        ref_id = self._ref_ids.get(h)
        if ref_id is not None:
            return ref_id
        row = self._conn.execute("SELECT ref_id FROM refs WHERE h = ?", (h,)).fetchone()
        if row is None:
            ref_id = int(
                self._conn.execute("SELECT coalesce(max(ref_id), 0) + 1 FROM refs").fetchone()[0]
            )
            self._conn.execute(
                "INSERT INTO refs (ref_id, h, key_id, blob) VALUES (?, ?, ?, ?)",
                (ref_id, h, self._active_key, self._seal("refs", ref_id, 0, plaintext)),
            )
            new.append(h)
        else:
            ref_id = int(row[0])
        self._ref_ids[h] = ref_id
        self._refs[ref_id] = value
        return ref_id

    def _resolve(self, ref_id: int) -> codec.Context | uuid.UUID:
        value = self._refs.get(ref_id)
        if value is not None:
            return value
        row = self._conn.execute(
            "SELECT key_id, blob FROM refs WHERE ref_id = ?", (ref_id,)
        ).fetchone()
        if row is None:
            raise RowAuthenticationError(ref_id, "reference row is missing")
        value = codec.decode_ref(self._open_row("refs", ref_id, row[0], 0, row[1]))
        self._refs[ref_id] = value
        return value

    # -- public API ---------------------------------------------------------------------

    def append(self, readings: Sequence[Reading]) -> AppendResult:
        """Store readings durably in one transaction; duplicates are skipped.

        Raises:
            BufferFullError: continuous or bulk readings while the store is over its cap.
            StorageFullError: the filesystem is full even after freeing the reserve.
        """
        if not readings:
            return AppendResult(0, 0)
        self._relieve_pressure(readings)
        try:
            return self._append(readings)
        except StorageFullError:
            # Give half the reserve back to the filesystem, make room, and try once more. The
            # other half stays for acknowledging and purging, which is what frees space.
            self._release_reserve(keep=self.config.reserve_bytes // 2)
            self._relieve_pressure(readings, force=True)
            return self._append(readings)

    def _maintenance(self, fn: Callable[[], _T]) -> _T:
        """Run a state change that frees or keeps space; on a full disk, use the reserve."""
        try:
            return fn()
        except StorageFullError:
            self._release_reserve(keep=0)
            return fn()

    def _append(self, readings: Sequence[Reading]) -> AppendResult:
        new_refs: list[bytes] = []
        first_seq = seq = self._next_seq
        rows: list[tuple[int, int, int, bytes]] = []
        lanes: list[Lane] = []
        duplicates = 0
        gen = seq >> _SEEN_GENERATION_SHIFT
        try:
            with self._tx():
                keys = [self._natural(r) for r in readings]
                wanted = [k for k in keys if k is not None]
                known = self._seen_already(wanted)
                fresh: list[tuple[bytes, int]] = []
                for r, nk in zip(readings, keys, strict=True):
                    if nk is not None:
                        if nk in known:
                            duplicates += 1
                            continue
                        known.add(nk)  # a twin later in the same call is a duplicate too
                        fresh.append((nk, gen))
                    ctx_ref = self._context_ref(r, new_refs)
                    boot_ref = self._boot_ref(r.captured.boot_id, new_refs)
                    pt = codec.encode_reading(r, ctx_ref, boot_ref)
                    rows.append(
                        (
                            seq,
                            int(r.lane),
                            self._active_key,
                            self._seal("readings", seq, r.lane, pt),
                        )
                    )
                    lanes.append(r.lane)
                    seq += 1
                self._conn.executemany("INSERT INTO seen (nk, gen) VALUES (?, ?)", fresh)
                self._conn.executemany(
                    "INSERT INTO readings (seq, lane, state, key_id, blob) VALUES (?, ?, 0, ?, ?)",
                    rows,
                )
        except BaseException:
            for h in new_refs:  # the refs rows were rolled back with the transaction
                self._refs.pop(self._ref_ids.pop(h), None)
            self._ref_cache.clear()
            self._next_seq = first_seq
            raise
        self._next_seq = seq
        for lane in lanes:
            self._counts.pending[lane] += 1
        return AppendResult(stored=len(rows), duplicates=duplicates)

    def claim(self, max_readings: int = 500, max_bytes: int | None = None) -> Claim | None:
        """Move pending rows into a new batch, highest priority and oldest first.

        Rows that fail authentication are quarantined and reported, not returned.
        """
        return self._maintenance(lambda: self._claim(max_readings, max_bytes))

    def _claim(self, max_readings: int, max_bytes: int | None) -> Claim | None:
        with self._tx():
            batch_id = int(
                self._conn.execute("SELECT v FROM meta WHERE k = 'next_batch'").fetchone()[0]
            )
            selected: list[tuple[int, int, int, bytes]] = []
            size = 0
            for seq, lane, key_id, blob in self._conn.execute(
                "SELECT seq, lane, key_id, blob FROM readings WHERE state = 0"
                " ORDER BY lane, seq LIMIT ?",
                (max_readings,),
            ):
                if max_bytes is not None and selected and size + len(blob) > max_bytes:
                    break
                selected.append((seq, lane, key_id, blob))
                size += len(blob)
            if not selected:
                return None
            readings: list[Reading] = []
            failed: list[RowAuthenticationError] = []
            claimed: list[tuple[int, int]] = []
            for seq, lane, key_id, blob in selected:
                try:
                    readings.append(self._decode_row(seq, lane, key_id, blob))
                    claimed.append((batch_id, seq))
                except RowAuthenticationError as exc:
                    self._quarantine("readings", seq, lane, key_id, exc.reason, blob)
                    self._counts.pending[Lane(lane)] -= 1
                    failed.append(exc)
                except codec.FormatError as exc:
                    err = RowAuthenticationError(seq, f"undecodable plaintext: {exc}")
                    self._quarantine("readings", seq, lane, key_id, err.reason, blob)
                    self._counts.pending[Lane(lane)] -= 1
                    failed.append(err)
            self._conn.executemany(
                "UPDATE readings SET state = 1, batch = ? WHERE seq = ?", claimed
            )
            self._conn.execute("UPDATE meta SET v = v + 1 WHERE k = 'next_batch'")
        for r in readings:
            self._counts.pending[r.lane] -= 1
        self._counts.claimed += len(readings)
        for r, (_, seq) in zip(readings, claimed, strict=True):
            self._inflight[r.id] = seq
        if failed:
            _LOGGER.error("%d stored rows failed authentication and were quarantined", len(failed))
        return Claim(batch_id, tuple(readings), tuple(failed), size)

    def _decode_row(self, seq: int, lane: int, key_id: int, blob: bytes) -> Reading:
        return self._decode_packed(seq, lane, key_id, blob)[0]

    def _decode_packed(
        self, seq: int, lane: int, key_id: int, blob: bytes
    ) -> tuple[Reading, codec.PackedReading]:
        packed = codec.decode_reading(self._open_row("readings", seq, key_id, lane, blob))
        try:
            ctx = self._resolve(packed.context_ref)
            boot = self._resolve(packed.boot_ref)
        except RowAuthenticationError as exc:
            raise RowAuthenticationError(seq, f"its reference {exc.reason}") from None
        if not isinstance(ctx, codec.Context) or not isinstance(boot, uuid.UUID):
            raise RowAuthenticationError(seq, "reference of the wrong kind")
        return packed.build(ctx, boot, Lane(lane)), packed

    def _quarantine(
        self, source: str, seq: int, lane: int | None, key_id: int | None, reason: str, blob: bytes
    ) -> None:
        self._conn.execute(
            "INSERT INTO quarantine (source, seq, lane, key_id, reason, blob)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (source, seq, lane, key_id, reason, blob),
        )
        if source == "readings":
            self._conn.execute("DELETE FROM readings WHERE seq = ?", (seq,))
        self._counts.quarantined += 1
        self._alarms.add(ALARM_ROWS_QUARANTINED)

    def ack(self, batch_id: int) -> int:
        """Mark a batch delivered (the service's signed acknowledgement arrived)."""
        return self._maintenance(lambda: self._ack(batch_id))

    def _ack(self, batch_id: int) -> int:
        with self._tx():
            rows = self._conn.execute(
                "SELECT seq, state FROM readings WHERE batch = ? AND state != 2", (batch_id,)
            ).fetchall()
            self._conn.execute(
                "UPDATE readings SET state = 2 WHERE batch = ? AND state != 2", (batch_id,)
            )
        self._count_acked(rows)
        return len(rows)

    def ack_ids(self, ids: Iterable[uuid.UUID]) -> int:
        """Mark readings delivered by id (they must have been claimed by this process)."""
        seqs = [s for i in ids if (s := self._inflight.pop(i, 0))]
        if not seqs:
            return 0
        with self._tx():
            marks = ",".join("?" * len(seqs))
            rows = self._conn.execute(
                f"SELECT seq, state FROM readings WHERE seq IN ({marks}) AND state != 2",  # noqa: S608
                seqs,
            ).fetchall()
            self._conn.executemany(
                "UPDATE readings SET state = 2 WHERE seq = ?", [(s,) for s, _ in rows]
            )
        self._count_acked(rows)
        return len(rows)

    def _count_acked(self, rows: Sequence[tuple[int, int]]) -> None:
        if not rows:
            return
        lanes: dict[int, int] = {}
        pending = [s for s, st in rows if st == PENDING]
        if pending:  # released rows whose late acknowledgement arrived
            marks = ",".join("?" * len(pending))
            for lane, n in self._conn.execute(
                f"SELECT lane, count(*) FROM readings WHERE seq IN ({marks}) GROUP BY lane",  # noqa: S608
                pending,
            ):
                lanes[lane] = n
        for lane, n in lanes.items():
            self._counts.pending[Lane(lane)] -= n
        self._counts.claimed -= len(rows) - len(pending)
        self._counts.acked += len(rows)
        seqs = {s for s, _ in rows}
        self._inflight = {k: v for k, v in self._inflight.items() if v not in seqs}

    def quarantine_batch(self, batch_id: int, reason: str) -> int:
        """Move a claimed batch that can never be delivered to the quarantine.

        For the uplink's last resort: a reading the wire format or the service refuses even
        alone would otherwise sit at the head of its lane forever and block everything behind
        it. The rows are kept (encrypted, with ``reason``) for a technician, never deleted.
        """
        return self._maintenance(lambda: self._quarantine_batch(batch_id, reason))

    def _quarantine_batch(self, batch_id: int, reason: str) -> int:
        with self._tx():
            rows = self._conn.execute(
                "SELECT seq, lane, key_id, blob FROM readings WHERE batch = ? AND state = 1",
                (batch_id,),
            ).fetchall()
            for seq, lane, key_id, blob in rows:
                self._quarantine("readings", seq, lane, key_id, reason, blob)
        self._counts.claimed -= len(rows)
        seqs = {r[0] for r in rows}
        self._inflight = {k: v for k, v in self._inflight.items() if v not in seqs}
        if rows:
            _LOGGER.error("%d undeliverable readings quarantined: %s", len(rows), reason)
        return len(rows)

    def release(self, batch_id: int) -> int:
        """Give a batch back to pending (its acknowledgement did not come in time)."""
        return self._maintenance(lambda: self._release(batch_id))

    def _release(self, batch_id: int) -> int:
        with self._tx():
            rows = self._conn.execute(
                "SELECT lane, count(*) FROM readings WHERE batch = ? AND state = 1 GROUP BY lane",
                (batch_id,),
            ).fetchall()
            self._conn.execute(
                "UPDATE readings SET state = 0 WHERE batch = ? AND state = 1", (batch_id,)
            )
        n = 0
        for lane, count in rows:
            self._counts.pending[Lane(lane)] += count
            n += count
        self._counts.claimed -= n
        return n

    def purge(self) -> int:
        """Delete delivered rows, forget old de-duplication keys and unused retired keys,
        give free pages back to the filesystem and truncate the WAL (so deleted ciphertext
        does not linger in it)."""
        return self._maintenance(lambda: self._purge())

    def _purge(self) -> int:
        with self._tx():
            n = self._conn.execute("DELETE FROM readings WHERE state = 2").rowcount
            keep_from = (self._next_seq >> _SEEN_GENERATION_SHIFT) - self.config.seen_generations
            if keep_from > 0:
                self._conn.execute("DELETE FROM seen WHERE gen < ?", (keep_from,))
            retired = [
                r[0]
                for r in self._conn.execute(
                    "SELECT key_id FROM keys WHERE state = 'retired' AND purpose = 'data'"
                )
            ]
            for key_id in retired:
                in_use = self._conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM readings WHERE key_id = ?)", (key_id,)
                ).fetchone()[0]
                if not in_use:  # routine crypto-shredding of delivered data
                    self._conn.execute("DELETE FROM keys WHERE key_id = ?", (key_id,))
                    self._data_keys.pop(key_id, None)
        self._counts.acked -= n
        self._housekeeping()
        return n

    def _housekeeping(self) -> None:
        """Give free pages back and truncate the WAL, so deleted ciphertext does not linger.

        Both need a little disk space themselves; on a full disk they are left for the next
        purge (the WAL is always consistent, just longer).
        """
        try:
            self._conn.execute("PRAGMA incremental_vacuum")
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) != _SQLITE_FULL:
                raise
            self._release_reserve(keep=0)
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError:
                _LOGGER.warning("disk full: WAL checkpoint deferred")
                return
        self._ensure_reserve()

    # -- keys ---------------------------------------------------------------------------

    def rotate_data_key(self) -> int:
        """Start encrypting new rows under a fresh data key; old rows stay readable.

        The ``refs`` rows are re-encrypted under the new key so that, once every older row is
        delivered and purged, the old key can be destroyed.
        """
        kek = self._keys.load(create=False)
        with self._tx():
            refs = [
                (ref_id, self._open_row("refs", ref_id, key_id, 0, blob))
                for ref_id, key_id, blob in self._conn.execute(
                    "SELECT ref_id, key_id, blob FROM refs"
                ).fetchall()
            ]
            self._conn.execute("UPDATE keys SET state = 'retired' WHERE purpose = 'data'")
            new_id, dek = self._add_key(kek, PURPOSE_DATA, "active")
            old_active = self._active_key
            self._data_keys[new_id] = ChaCha20Poly1305(dek)
            self._active_key = new_id
            try:
                for ref_id, pt in refs:
                    self._conn.execute(
                        "UPDATE refs SET key_id = ?, blob = ? WHERE ref_id = ?",
                        (new_id, self._seal("refs", ref_id, 0, pt), ref_id),
                    )
            except BaseException:
                self._active_key = old_active
                raise
        _LOGGER.info("data key rotated to key %d", new_id)
        return new_id

    def rotate_kek(self, new_kek: bytes | None = None) -> None:
        """Re-wrap every data key under a new KEK, crash-safely, then store the new KEK.

        Step 1 writes the new wrapping beside the old (``wrapped_next``); step 2 replaces the
        KEK in its source; step 3 switches the rows over. Opening the store after a crash at
        any point finishes or undoes the rotation (see ``_load_keys``).
        """
        old = self._keys.load(create=False)
        new = new_kek or os.urandom(KEY_BYTES)
        rows = self._conn.execute("SELECT key_id, purpose, wrapped FROM keys").fetchall()
        with self._tx():
            for key_id, purpose, wrapped in rows:
                dek = unwrap_key(old, wrapped, key_id, purpose)
                self._conn.execute(
                    "UPDATE keys SET wrapped_next = ? WHERE key_id = ?",
                    (wrap_key(new, dek, key_id, purpose), key_id),
                )
        self._keys.replace(new)
        with self._tx():
            self._conn.execute("UPDATE keys SET wrapped = wrapped_next, wrapped_next = NULL")
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def shred(self) -> None:
        """Crypto-shred: destroy every data key and the KEK. The store becomes unreadable.

        Used when a box is decommissioned. The rows are deleted as well, but what makes them
        unrecoverable (also in the WAL, on freed pages, or in an SD card's remapped blocks) is
        that their keys no longer exist anywhere.
        """
        with self._tx():
            for table in ("keys", "refs", "readings", "seen", "quarantine"):
                self._conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
        self._housekeeping()
        self._data_keys.clear()
        self._index_key = b""
        self._refs.clear()
        self._ref_ids.clear()
        try:
            self._keys.destroy()
        finally:
            self.close()

    # -- disk pressure ------------------------------------------------------------------

    def used_bytes(self) -> int:
        """Bytes of the database in use (pages not on the freelist).

        The WAL is not counted against the cap: ``journal_size_limit`` bounds it (4 MiB) and it
        is truncated after every purge. ``stats().file_bytes`` shows both files together.
        """
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * self._page_size)

    def _relieve_pressure(self, readings: Sequence[Reading], *, force: bool = False) -> None:
        cap = self.config.cap_bytes
        if cap is None and not force:
            return
        used = self.used_bytes()
        if cap is not None and not force and used < cap * self.config.compact_at:
            self._alarms.discard(ALARM_PRESSURE)
            self._alarms.discard(ALARM_FULL)
            return
        self._alarms.add(ALARM_PRESSURE)
        target = cap * self.config.compact_to if cap is not None else 0
        if self._counts.acked:
            self._purge()
            used = self.used_bytes()
        for lane in _COMPACTABLE:
            if used <= target:
                break
            self.compact(lane, until_bytes=int(target))
            used = self.used_bytes()
        if cap is not None and used >= cap:
            refused = [r for r in readings if r.lane in _COMPACTABLE]
            if refused:
                self._alarms.add(ALARM_FULL)
                raise BufferFullError(refused[0].lane.name.lower(), used, cap)
        else:
            self._alarms.discard(ALARM_FULL)

    def compact(self, lane: Lane, *, until_bytes: int = 0, batch: int = 200) -> int:
        """Replace pending sample chunks of ``lane`` by per-period summaries, oldest first.

        Returns how many rows were compacted. Spot readings are never touched. Compacted
        readings keep their id (so delivery stays exactly-once) and carry the status flag
        ``gateway-compacted``; their raw frames are dropped.
        """
        done = 0
        last_seq = 0
        while True:
            with self._tx():
                rows = self._conn.execute(
                    "SELECT seq, key_id, blob FROM readings WHERE state = 0 AND lane = ? "
                    "AND seq > ? ORDER BY lane, seq LIMIT ?",
                    (int(lane), last_seq, batch),
                ).fetchall()
                for seq, key_id, blob in rows:
                    last_seq = seq
                    try:
                        reading, packed = self._decode_packed(seq, int(lane), key_id, blob)
                    except (RowAuthenticationError, codec.FormatError) as exc:
                        self._quarantine("readings", seq, int(lane), key_id, str(exc), blob)
                        self._counts.pending[lane] -= 1
                        continue
                    small = reading.compacted(self.config.compact_period_ms)
                    if small is reading:
                        continue
                    pt = codec.encode_reading(small, packed.context_ref, packed.boot_ref)
                    self._conn.execute(
                        "UPDATE readings SET key_id = ?, blob = ? WHERE seq = ?",
                        (self._active_key, self._seal("readings", seq, lane, pt), seq),
                    )
                    done += 1
            if not rows or (until_bytes and self.used_bytes() <= until_bytes):
                break
        if done:
            _LOGGER.warning("disk pressure: compacted %d %s chunks", done, lane.name.lower())
        return done

    def _reserve_path(self) -> Path:
        return self.path.with_name(self.path.name + ".reserve")

    def _ensure_reserve(self) -> None:
        """(Re-)create the reserve when it would take at most half of the free space."""
        size = self.config.reserve_bytes
        path = self._reserve_path()
        have = path.stat().st_size if path.exists() else 0
        if size <= 0 or have >= size:
            return
        st = os.statvfs(self.path.parent)
        if st.f_bavail * st.f_frsize < 2 * (size - have):
            return
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"\0" * size)  # real blocks, not a sparse file
                self._alarms.discard(ALARM_STORAGE_FULL)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            path.unlink(missing_ok=True)

    def _release_reserve(self, keep: int) -> None:
        path = self._reserve_path()
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return
        if size <= keep:
            return  # what is left is not this caller's to use
        if keep:
            os.truncate(path, keep)
        else:
            path.unlink()
        _LOGGER.error("disk full: released %d bytes of the reserve", size - keep)

    # -- status -------------------------------------------------------------------------

    def stats(self) -> BufferStats:
        """Counts by lane and state, bytes used and active alarms. Cheap: no table scans."""
        try:
            file_bytes = sum(
                p.stat().st_size
                for p in (self.path, self.path.with_name(self.path.name + "-wal"))
                if p.exists()
            )
        except OSError:
            file_bytes = 0
        c = self._counts
        return BufferStats(
            pending_by_lane={lane.name.lower(): n for lane, n in c.pending.items()},
            claimed=c.claimed,
            acknowledged=c.acked,
            quarantined=c.quarantined,
            used_bytes=self.used_bytes(),
            file_bytes=file_bytes,
            cap_bytes=self.config.cap_bytes,
            alarms=tuple(sorted(self._alarms)),
            set_aside=tuple(self._set_aside),
        )

    def integrity_ok(self) -> bool:
        """Run ``PRAGMA integrity_check`` now."""
        return bool(self._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok")

    def close(self) -> None:
        """Checkpoint and close. Safe to call twice."""
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        with contextlib.suppress(OSError):
            self._lock.release()

    def __enter__(self) -> Buffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_new(conn: sqlite3.Connection) -> bool:
    return bool(conn.execute("SELECT count(*) FROM keys").fetchone()[0] == 0)


def _connect(path: Path, cfg: BufferConfig) -> sqlite3.Connection:
    """Open with the durability settings, check integrity, and migrate the schema."""
    if not path.exists():
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # -wal/-shm inherit 0600
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only before the first table
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA journal_size_limit = 4194304")
        conn.execute(f"PRAGMA wal_autocheckpoint = {int(cfg.wal_autocheckpoint_pages)}")
        if cfg.check_integrity:
            result = [r[0] for r in conn.execute("PRAGMA integrity_check(20)")]
            if result != ["ok"]:
                raise StoreError("integrity_check failed: " + "; ".join(result[:3]))
        MIGRATIONS.apply(Database(conn))
    except BaseException:
        conn.close()
        raise
    return conn


def _set_aside(path: Path, reason: str) -> str:
    """Rename a damaged store and its WAL/SHM aside, keeping them for forensics."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.set-aside-{reason}-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = path.with_name(path.name + suffix)
        if src.exists():
            os.replace(src, target.with_name(target.name + suffix))
    return target.name
