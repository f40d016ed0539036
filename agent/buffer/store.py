"""The encrypted SQLite outbox: a reading is safe exactly when :meth:`Buffer.append` returns.

:class:`Buffer` is the facade the rest of the agent uses (``docs/buffer-api.md``); the parts
live in their own modules (``docs/buffer.md`` has the reasoning and the numbers):

* :mod:`~agent.buffer.schema`: the SQLite file, pragmas (WAL, ``synchronous=FULL``,
  ``secure_delete=ON``), migrations, the one-process lock, transactions with commit hooks;
* :mod:`~agent.buffer.keyring`: data keys wrapped by the KEK (:mod:`~agent.buffer.keys`),
  ChaCha20-Poly1305 sealing with the row's position as associated data, blind indexes;
* :mod:`~agent.buffer.refs`: device + patient and boot ids, stored once, encrypted;
* :mod:`~agent.buffer.dedup`: the ``seen`` table (natural keys, or reading ids);
* :mod:`~agent.buffer.outbox`: the state machine pending -> claimed (in memory) -> delivered
  (deleted at the acknowledgement) -> purged (out of the WAL);
* :mod:`~agent.buffer.pressure`: the cap, compaction and the reserve file;
* :mod:`~agent.buffer.lanes`: the lane policy table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from agent.atomicfile import write_atomic
from agent.buffer import alarms
from agent.buffer.dedup import Seen
from agent.buffer.intake import intake_dir
from agent.buffer.keyring import Keyring
from agent.buffer.keys import KeySource
from agent.buffer.lanes import uses_alarm_reserve
from agent.buffer.outbox import ACKED, CLAIMED, Outbox
from agent.buffer.pressure import Pressure, Reserve
from agent.buffer.refs import Refs
from agent.buffer.results import AppendResult, BufferConfig, BufferStats, Claim, RowClaim
from agent.buffer.salvage import Salvage
from agent.buffer.schema import (
    Db,
    StoreLock,
    connect,
    is_corruption,
    is_full_here,
    set_aside,
    set_aside_stores,
)
from agent.errors import AgentError, KeyLostError, StorageFullError, StoreCorruptError
from agent.model import Lane, Reading

__all__ = ["AppendResult", "Buffer", "BufferConfig", "BufferStats", "Claim"]

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")


def unverified_path(path: Path) -> Path:
    """``<store>.unverified``: an open deferred the integrity check and it has not passed."""
    return path.with_name(path.name + ".unverified")


def _mark_unverified(path: Path) -> None:
    try:
        write_atomic(unverified_path(path), b"integrity_check owed\n")
    except OSError as exc:  # a full disk: the deferred check still runs, only not remembered
        _LOGGER.warning("store marker not written: %s", exc.strerror)


class Buffer:
    """The encrypted outbox. Not thread-safe: use it from one thread (see AsyncBuffer)."""

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        keys: KeySource,
        config: BufferConfig,
        lock: StoreLock,
    ) -> None:
        self.path = path
        self.config = config
        self.integrity_owed = False
        """An integrity check this open deferred and :meth:`verify_integrity` has not passed."""
        self._verifying: sqlite3.Connection | None = None
        self._exclusive_wanted = False
        """The open deferred the exclusive lock (``BufferConfig.exclusive_lock``) to after
        :meth:`verify_integrity`; :meth:`take_exclusive_lock` takes it."""
        self._exclusive_due = False
        self._verify_running = False
        self._verify_stopped = False
        self._keys = keys
        self._lock = lock
        self._set_aside: list[str] = []
        self._housekept = False
        self._alarms: set[str] = set()
        self._db = Db(conn, on_full=lambda: self._alarms.add(alarms.STORAGE_FULL))
        self._keyring = Keyring()
        self._refs = Refs(self._db, self._keyring)
        self._seen = Seen(self._db, self._keyring, config.seen_tail_keys)
        self._outbox = Outbox(
            self._db, self._keyring, self._refs, self._seen, config, self._alarms, path
        )
        reserve = Reserve(path, config.reserve_bytes, self._alarms)
        self._pressure = Pressure(self._db, self._outbox, config, reserve, self._alarms)
        self._salvage = Salvage(self._db, path, keys, self.append)

    @property
    def _conn(self) -> sqlite3.Connection:
        """The SQLite connection (tests and benchmarks inspect the file through it)."""
        return self._db.conn

    @property
    def _active_key(self) -> int:
        """The id of the data key new rows are sealed with."""
        return self._keyring.active

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

        Only real damage sets a store aside: a file that fails ``integrity_check`` or is not
        SQLite, or whose keys the KEK opens none of, is renamed aside (``<name>.set-aside-
        <reason>-<time>``, with its WAL) and a fresh store is created, so capture goes on.
        Every set-aside store next to ``path`` is reported at every open (``store.set-aside``,
        ``stats().set_aside``) and kept, and its readable undelivered readings are imported.

        A full disk is not damage: the reserve is given back and the open tried again.

        Raises:
            StorageFullError: the disk is full even without the reserve; the store is intact.
            KeyUnavailableError: the key source cannot deliver the KEK now.
            sqlite3.Error: SQLite cannot use the file for another reason (permissions, I/O);
                the store is left as it is.
        """
        path = Path(path)
        cfg = config or BufferConfig()
        if cap_bytes is not None:
            cfg.cap_bytes = cap_bytes
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = StoreLock(path.with_name(path.name + ".lock"))
        unverified = unverified_path(path)
        deferred = cfg.check_integrity and cfg.defer_integrity_check and not unverified.exists()
        exclusive_later = False
        if deferred:
            # The check runs on a second connection (verify_integrity), which the exclusive
            # lock would shut out: the store takes that lock once the check passed.
            exclusive_later = cfg.exclusive_lock
            cfg = dataclasses.replace(  # counts by the full scan
                cfg, check_integrity=False, exclusive_lock=False
            )
        reserve = Reserve(path, cfg.reserve_bytes, set())
        aside = False
        released = False
        try:
            while True:
                try:
                    buf = cls._open_once(path, keys, cfg, lock)
                except (StoreCorruptError, sqlite3.DatabaseError, StorageFullError) as exc:
                    if is_full_here(exc, path.parent) or isinstance(exc, StorageFullError):
                        if released:
                            raise StorageFullError(
                                "the disk under the buffer is full, even after giving back the "
                                "reserve: the store is intact; free space on the data partition"
                            ) from exc
                        _LOGGER.error("disk full at open: giving back the reserve")
                        reserve.release(keep=0)
                        released = True
                        continue
                    if aside or not (isinstance(exc, StoreCorruptError) or is_corruption(exc)):
                        raise
                    name = set_aside(path, "corrupt")
                    _LOGGER.error("store set aside as %s (corrupt): %s", name, exc)
                    aside = True
                    continue
                except KeyLostError as exc:
                    if aside:
                        raise
                    name = set_aside(path, "keys")
                    _LOGGER.error("store set aside as %s (keys): %s", name, exc)
                    aside = True
                    continue
                break
            if released:
                buf._alarms.add(alarms.STORAGE_FULL)
            if deferred:
                # Until verify_integrity passes, the next open checks before it trusts the file.
                buf.integrity_owed = True
                buf._exclusive_wanted = exclusive_later
                _mark_unverified(path)
            elif cfg.check_integrity:
                unverified.unlink(missing_ok=True)  # checked at this open
            buf._report_set_aside()
            buf._salvage_some()
            return buf
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _open_once(cls, path: Path, keys: KeySource, cfg: BufferConfig, lock: StoreLock) -> Buffer:
        conn = connect(path, cfg)
        try:
            buf = cls(path, conn, keys, cfg, lock)
            report = buf._keyring.load(buf._db, keys)
            if buf._keyring.permissions_fixed:
                buf._alarms.add(alarms.KEY_PERMISSIONS)
            buf._outbox.recover(
                keys_repaired=report.repaired + len(report.lost),
                reblind=report.index_replaced,
            )
            buf._pressure.tune_checkpoints()
            buf._pressure.reserve.ensure()
        except BaseException:
            conn.close()
            raise
        return buf

    def _report_set_aside(self) -> None:
        self._set_aside = set_aside_stores(self.path)
        if self._set_aside:
            self._alarms.add(alarms.STORE_SET_ASIDE)

    def _salvage_some(self) -> None:
        """Import a bounded number of readings from set-aside stores (never fails the caller)."""
        if not self._set_aside:
            return
        try:
            self._salvage.run(self.config.salvage_batch)
        except (AgentError, sqlite3.Error, OSError) as exc:
            _LOGGER.warning("importing from a set-aside store deferred: %s", exc)

    # -- public API ---------------------------------------------------------------------

    @property
    def intake_keyring(self) -> Keyring:
        """The store's keys, for the intake journal only (:mod:`agent.buffer.intake`)."""
        return self._keyring

    def append(self, readings: Sequence[Reading]) -> AppendResult:
        """Store readings durably in one transaction; duplicates are skipped.

        Raises:
            BufferFullError: continuous or bulk readings while the store is over its cap.
            StorageFullError: the filesystem is full even after freeing the reserve.
        """
        if not readings:
            return AppendResult(0, 0)
        self._pressure.relieve(readings)
        try:
            return self._outbox.append(readings)
        except StorageFullError:
            # Give half the reserve back to the filesystem, make room, and try once more. The
            # other half stays for acknowledging and purging, which is what frees space.
            reserve = self._pressure.reserve
            reserve.release(keep=reserve.target() // 2)
            self._pressure.checkpoint()
            try:
                self._pressure.relieve(readings, force=True)
            except StorageFullError:
                # Compaction rewrites rows, which a full disk may not allow either; the
                # append is still tried (an alarm or a spot reading needs no compaction).
                _LOGGER.warning("disk full: compaction deferred")
            try:
                return self._outbox.append(readings)
            except StorageFullError:
                if not any(uses_alarm_reserve(r.lane) for r in readings):
                    raise
                # An alarm may use a quarter more; the last quarter stays for draining.
                reserve.release(keep=reserve.target() // 4)
                self._pressure.checkpoint()
                return self._outbox.append(readings)
        finally:
            self._outbox.maybe_anchor()

    def _maintenance(self, fn: Callable[[], _T]) -> _T:
        """Run a state change that frees or keeps space; on a full disk, use the reserve."""
        try:
            try:
                return fn()
            except StorageFullError:
                self._pressure.reserve.release(keep=0)
                self._pressure.checkpoint()
                return fn()
        finally:
            self._outbox.maybe_anchor()

    def claim(self, max_readings: int = 500, max_bytes: int | None = None) -> Claim | None:
        """Move pending rows into a new batch, highest priority and oldest first.

        Rows that fail authentication are quarantined and reported, not returned.
        """
        return self._maintenance(lambda: self._outbox.claim(max_readings, max_bytes))

    def claim_rows(self, max_readings: int = 500, max_bytes: int | None = None) -> RowClaim | None:
        """Like :meth:`claim`, but the rows are handed over as stored, not decoded.

        The uplink seals them into a batch as they are (batch version 4, payload v4: rows put
        in plain, canonical raw frames of oximetry chunks and the rows' ids left out), which
        saves decoding every reading into objects and encoding it again for the wire.
        """
        return self._maintenance(lambda: self._outbox.claim_rows(max_readings, max_bytes))

    def _decode_row(self, seq: int, lane: int, key_id: int, blob: bytes) -> Reading:
        """Decrypt one stored row (tests compare what is on disk with what was promised)."""
        return self._outbox.decode_row(seq, Lane(lane), key_id, blob)

    def ack(self, batch_id: int) -> int:
        """Delete a batch's rows: delivered (the service's signed acknowledgement arrived).

        They count as ``stats().acknowledged`` until the next purge truncated the WAL."""
        return self._maintenance(lambda: self._outbox.ack(batch_id))

    def ack_ids(self, ids: Iterable[uuid.UUID]) -> int:
        """Delete delivered readings by id (they must have been claimed by this process)."""
        wanted = list(ids)
        return self._maintenance(lambda: self._outbox.ack_ids(wanted))

    def quarantine_batch(self, batch_id: int, reason: str) -> int:
        """Move a claimed batch that can never be delivered to the quarantine.

        For the uplink's last resort: a reading the wire format or the service refuses even
        alone would otherwise sit at the head of its lane forever and block everything behind
        it. The rows are kept (encrypted, with ``reason``) for a technician, never deleted.
        """
        return self._maintenance(lambda: self._outbox.quarantine_batch(batch_id, reason))

    def release(self, batch_id: int) -> int:
        """Give a batch back to pending (its acknowledgement did not come in time)."""
        return self._maintenance(lambda: self._outbox.release(batch_id))

    def purge(self) -> int:
        """Delete delivered rows, forget old de-duplication keys and unused retired keys,
        give free pages back to the filesystem and truncate the WAL (so deleted ciphertext
        does not linger in it)."""
        self.take_exclusive_lock()
        n = self._maintenance(self._outbox.purge_rows)
        if self._verify_running:
            # The check's read transaction holds an old snapshot: a truncating checkpoint
            # would wait out the busy timeout (5 s) on this thread. The next purge does it
            # (``deleted`` stays set until then).
            _LOGGER.debug("WAL truncation left for the next purge: integrity check running")
        elif self._outbox.deleted or not self._housekept:
            # Only after a deletion (and once after opening: a crash may have left deleted
            # rows in the WAL): with nothing deleted no ciphertext lingers, and an idle box
            # then writes nothing at all to its card.
            self._outbox.deleted = False
            self._pressure.housekeeping()
            self._housekept = True
        self._report_set_aside()
        self._salvage_some()
        return n

    def compact(self, lane: Lane, *, until_bytes: int = 0, batch: int = 200) -> int:
        """Replace pending sample chunks of ``lane`` by per-period summaries, oldest first.

        Returns how many rows were compacted. Spot readings are never touched. Compacted
        readings keep their id (so delivery stays exactly-once) and carry the status flag
        ``gateway-compacted``; their raw frames are dropped.
        """
        return self._outbox.compact(lane, until_bytes=until_bytes, batch=batch)

    def used_bytes(self) -> int:
        """Bytes of the database in use (pages not on the freelist).

        The WAL is not counted against the cap: ``wal_autocheckpoint`` bounds its growth,
        ``journal_size_limit`` (4 MiB) what is left of it after a checkpoint, and a purge that
        deleted rows truncates it. ``stats().file_bytes`` shows both files together.
        """
        return self._outbox.used_bytes()

    # -- keys ---------------------------------------------------------------------------

    def rotate_data_key(self) -> int:
        """Start encrypting new rows under a fresh data key; old rows stay readable.

        The ``refs`` rows are re-encrypted under the new key so that, once every older row is
        delivered and purged, the old key can be destroyed.
        """
        with self._db.tx() as tx:
            new_id = self._keyring.rotate_data_key(self._db, tx, self._keys)
            self._refs.reseal_all(tx)
        _LOGGER.info("data key rotated to key %d", new_id)
        return new_id

    def rotate_kek(self, new_kek: bytes | None = None) -> None:
        """Re-wrap every data key under a new KEK, crash-safely, then store the new KEK."""
        self._keyring.rotate_kek(self._db, self._keys, new_kek)

    def shred(self) -> None:
        """Crypto-shred: destroy every data key and the KEK. The store becomes unreadable.

        Used when a box is decommissioned. The rows are deleted as well, but what makes them
        unrecoverable (also in the WAL, on freed pages, or in an SD card's remapped blocks) is
        that their keys no longer exist anywhere.
        """
        with self._db.tx():
            for table in ("keys", "refs", "readings", "seen", "seen_log", "quarantine"):
                self._db.conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
            # A new store may be made in this file: its ledger starts afresh, no alarm.
            self._db.conn.execute("UPDATE ledger SET body = x'', mac = x'', seen_tail = NULL")
        self._pressure.housekeeping()
        self._keyring.clear()
        self._refs.clear()
        self._seen.clear()
        try:
            self._keys.destroy()
        finally:
            self.close()
        # Stores set aside were sealed under the same KEK (or an older, lost one): unreadable
        # now; remove them with the anchor, so nothing of the box's data stays behind.
        for name in set_aside_stores(self.path):
            for suffix in ("", "-wal", "-shm"):
                self.path.with_name(name + suffix).unlink(missing_ok=True)
        self.path.with_name(self.path.name + ".anchor").unlink(missing_ok=True)
        unverified_path(self.path).unlink(missing_ok=True)
        shutil.rmtree(intake_dir(self.path), ignore_errors=True)  # sealed under the old keys

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
        c = self._outbox.counts
        return BufferStats(
            pending_by_lane={lane.name.lower(): c.pending(lane) for lane in Lane},
            claimed=c.state(CLAIMED),
            acknowledged=c.state(ACKED) + self._outbox.unpurged,
            quarantined=c.quarantined,
            used_bytes=self.used_bytes(),
            file_bytes=file_bytes,
            cap_bytes=self.config.cap_bytes,
            alarms=tuple(sorted(self._alarms)),
            set_aside=tuple(self._set_aside),
            salvaged=self._salvage.imported,
        )

    def verify_integrity(self) -> float:
        """Run the ``integrity_check`` an open with ``defer_integrity_check`` left owed.

        On a read-only connection of its own, so call it from another thread than the one
        using the buffer: the buffer's operations go on meanwhile (WAL: readers do not block
        the writer). Returns the seconds it took; a pass removes ``<store>.unverified``.

        Raises:
            StoreCorruptError: the file is damaged. ``<store>.unverified`` stays, so the next
                open checks first and sets the store aside (and salvages it) as it would
                have at this one; the caller should close and open the store again.
            sqlite3.Error: the check could not run (I/O); the marker stays as well.
        """
        started = time.monotonic()
        self._verify_running = True
        uri = self.path.resolve().as_uri() + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        except BaseException:
            self._verify_running = False
            raise
        self._verifying = conn
        try:
            if self._verify_stopped:
                raise sqlite3.OperationalError("interrupted")
            result = [r[0] for r in conn.execute("PRAGMA integrity_check(20)")]
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise
            result = [str(exc)]
        finally:
            self._verifying = None
            conn.close()
            self._verify_running = False
        if result != ["ok"]:
            _mark_unverified(self.path)  # it is there; unless its write failed at open
            raise StoreCorruptError("integrity_check failed: " + "; ".join(result[:3]))
        unverified_path(self.path).unlink(missing_ok=True)
        self.integrity_owed = False
        self._exclusive_due = self._exclusive_wanted
        return time.monotonic() - started

    def take_exclusive_lock(self) -> bool:
        """Reopen the store's connection with ``locking_mode=EXCLUSIVE`` if the open deferred
        it until the integrity check passed (on the buffer's thread, like every operation;
        :meth:`AsyncBuffer.verify_integrity` calls it, and so does every :meth:`purge`).

        The old connection is the last one on the file, so closing it checkpoints the WAL and
        removes the ``-wal`` and ``-shm``; the new one keeps the WAL index in memory. If the
        exclusive lock cannot be had (another process reads the file), the store goes on
        with a shared-memory index. Returns whether the lock is held now.
        """
        if not self._exclusive_due:
            return self.config.exclusive_lock and not self._exclusive_wanted
        self._exclusive_due = False
        self._exclusive_wanted = False
        self._db.conn.close()
        want = dataclasses.replace(self.config, check_integrity=False, exclusive_lock=True)
        try:
            self._db.conn = connect(self.path, want)
        except sqlite3.Error as exc:
            _LOGGER.warning("store kept its shared WAL index: %s", exc)
            self._db.conn = connect(self.path, dataclasses.replace(want, exclusive_lock=False))
            return False
        self.config.exclusive_lock = True
        self._pressure.tune_checkpoints()
        return True

    def interrupt_verify(self) -> None:
        """Stop a :meth:`verify_integrity` running on another thread (it raises
        ``sqlite3.OperationalError``; the check stays owed). For a stop of the agent."""
        self._verify_stopped = True
        conn = self._verifying
        if conn is not None:
            conn.interrupt()

    def integrity_ok(self) -> bool:
        """Run ``PRAGMA integrity_check`` now."""
        return bool(self._db.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok")

    def close(self) -> None:
        """Anchor, checkpoint and close. Safe to call twice."""
        if self._lock.held:
            with contextlib.suppress(OSError, sqlite3.Error):
                self._outbox.maybe_anchor(force=True)
        with contextlib.suppress(sqlite3.Error):
            self._db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with contextlib.suppress(sqlite3.Error):
            self._db.conn.close()
        with contextlib.suppress(OSError):
            self._lock.release()

    def __enter__(self) -> Buffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
