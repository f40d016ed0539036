"""Disk pressure: the cap on the database, compaction of the lowest lanes, and a reserve file
that is given back to the filesystem when SQLite reports it full.

On every append:

1. below ``compact_at`` of the cap nothing happens;
2. above it the ``buffer.pressure`` alarm is raised, delivered rows are purged, then pending
   chunks of the compactable lanes (``lanes.COMPACTION_ORDER``) are summarised, oldest first,
   until usage is under ``compact_to``;
3. still over the cap, readings of lanes that are ``refused_when_full`` raise
   :class:`BufferFullError`; the other lanes are always stored.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from agent.buffer import alarms
from agent.buffer.lanes import COMPACTION_ORDER, refused_when_full
from agent.buffer.outbox import Outbox
from agent.buffer.results import BufferConfig
from agent.buffer.schema import Db, is_full
from agent.errors import BufferFullError
from agent.model import Reading

_LOGGER = logging.getLogger(__name__)


MIN_RESERVE: Final = 128 * 1024  # below this a reserve would not even open the store
FS_FRACTION: Final = 4  # the reserve never takes more than a quarter of the filesystem


class Reserve:
    """A file of real blocks (``<store>.reserve``) kept for when the filesystem fills up.

    Its size follows what exists: the configured size, but at most a quarter of the
    filesystem and at most half of the space free when it is made (a 4 MiB default on a
    3 MiB filesystem used to mean no reserve at all). It grows back toward that size whenever
    space allows (after every purge).
    """

    def __init__(self, store_path: Path, size: int, alarm_set: set[str]) -> None:
        self.path = store_path.with_name(store_path.name + ".reserve")
        self.size = size
        self._alarms = alarm_set

    def target(self) -> int:
        """The size this filesystem allows (0: no reserve)."""
        if self.size <= 0:
            return 0
        st = os.statvfs(self.path.parent)
        return min(self.size, st.f_blocks * st.f_frsize // FS_FRACTION)

    def have(self) -> int:
        """The reserve's current size."""
        try:
            return self.path.lstat().st_size
        except FileNotFoundError:
            return 0

    def ensure(self) -> None:
        """(Re-)create or grow the reserve, never taking more than half of the free space."""
        target = self.target()
        have = self.have()
        if have >= target:
            return
        st = os.statvfs(self.path.parent)
        size = min(target, have + st.f_bavail * st.f_frsize // 2) // 4096 * 4096
        if size < MIN_RESERVE or size <= have:
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                os.lseek(fd, have, os.SEEK_SET)
                os.write(fd, b"\0" * (size - have))  # real blocks, not a sparse file
                os.fsync(fd)
            finally:
                os.close(fd)
            self._alarms.discard(alarms.STORAGE_FULL)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            if have:
                os.truncate(self.path, have)
            else:
                self.path.unlink(missing_ok=True)

    def release(self, keep: int) -> None:
        """Give all but ``keep`` bytes of the reserve back to the filesystem."""
        size = self.have()
        if size <= keep:
            return  # what is left is not this caller's to use
        if keep:
            os.truncate(self.path, keep)
        else:
            self.path.unlink()
        _LOGGER.error("disk full: released %d bytes of the reserve", size - keep)

    def checkpoint_pages(self, configured: int, page_size: int) -> int:
        """WAL pages between checkpoints: a checkpoint grows the database by that much, which
        on a full disk must fit in half of the reserve."""
        target = self.target()
        if target <= 0:
            return configured
        return max(16, min(configured, target // (4 * page_size)))


class Pressure:
    """Keeps the store under its cap and the filesystem from stopping it."""

    def __init__(
        self, db: Db, outbox: Outbox, config: BufferConfig, reserve: Reserve, alarm_set: set[str]
    ) -> None:
        self._db = db
        self._outbox = outbox
        self._config = config
        self.reserve = reserve
        self._alarms = alarm_set

    def relieve(self, readings: Sequence[Reading], *, force: bool = False) -> None:
        """Purge and compact as the cap requires; refuse what the lane policy refuses.

        Raises:
            BufferFullError: over the cap after compaction, for a lane refused when full.
        """
        cap = self._config.cap_bytes
        if cap is None and not force:
            return
        used = self._outbox.used_bytes()
        if cap is not None and not force and used < cap * self._config.compact_at:
            self._alarms.discard(alarms.PRESSURE)
            self._alarms.discard(alarms.FULL)
            return
        self._alarms.add(alarms.PRESSURE)
        target = cap * self._config.compact_to if cap is not None else 0
        if self._outbox.counts.state(2):
            self._outbox.purge_rows()
            used = self._outbox.used_bytes()
        for lane in COMPACTION_ORDER:
            if used <= target:
                break
            self._outbox.compact(lane, until_bytes=int(target))
            used = self._outbox.used_bytes()
        if cap is not None and used >= cap:
            refused = [r for r in readings if refused_when_full(r.lane)]
            if refused:
                self._alarms.add(alarms.FULL)
                raise BufferFullError(refused[0].lane.name.lower(), used, cap)
        else:
            self._alarms.discard(alarms.FULL)

    def checkpoint(self) -> bool:
        """Copy the WAL back into the database (PASSIVE) so that the next write can restart it.

        On a full disk a write transaction cannot restart the WAL until a checkpoint has
        copied every frame back, and that copy must grow the database file by the pages the
        last commits added at its end. Run right after space was given back, before a retry.
        Returns whether every frame was copied back.
        """
        try:
            busy, log, done = self._db.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.OperationalError as exc:
            if not is_full(exc):
                raise
            _LOGGER.warning("disk full: WAL checkpoint failed")
            return False
        return bool(not busy and log == done)

    def housekeeping(self) -> None:
        """Give free pages back and truncate the WAL, so deleted ciphertext does not linger.

        Both need a little disk space themselves; on a full disk they are left for the next
        purge (the WAL is always consistent, just longer).
        """
        conn = self._db.conn
        try:
            if (
                conn.execute("PRAGMA auto_vacuum").fetchone()[0]
                and conn.execute("PRAGMA freelist_count").fetchone()[0]
            ):  # a store made with auto_vacuum=INCREMENTAL; it rewrites page 1 even with none
                conn.execute("PRAGMA incremental_vacuum")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError as exc:
            if not is_full(exc):
                raise
            self.reserve.release(keep=0)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError:
                _LOGGER.warning("disk full: WAL checkpoint deferred")
                return
        self.reserve.ensure()
        self.tune_checkpoints()

    def tune_checkpoints(self) -> None:
        """Keep the WAL checkpoint threshold under half of the reserve this disk allows."""
        conn = self._db.conn
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = self.reserve.checkpoint_pages(self._config.wal_autocheckpoint_pages, page)
        conn.execute(f"PRAGMA wal_autocheckpoint = {int(pages)}")
