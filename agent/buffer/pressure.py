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

from agent.buffer import alarms
from agent.buffer.lanes import COMPACTION_ORDER, refused_when_full
from agent.buffer.outbox import Outbox
from agent.buffer.results import BufferConfig
from agent.buffer.schema import Db, is_full
from agent.errors import BufferFullError
from agent.model import Reading

_LOGGER = logging.getLogger(__name__)


class Reserve:
    """A file of real blocks (``<store>.reserve``) kept for when the filesystem fills up."""

    def __init__(self, store_path: Path, size: int, alarm_set: set[str]) -> None:
        self.path = store_path.with_name(store_path.name + ".reserve")
        self.size = size
        self._alarms = alarm_set

    def ensure(self) -> None:
        """(Re-)create the reserve when it would take at most half of the free space."""
        size = self.size
        have = self.path.stat().st_size if self.path.exists() else 0
        if size <= 0 or have >= size:
            return
        st = os.statvfs(self.path.parent)
        if st.f_bavail * st.f_frsize < 2 * (size - have):
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, b"\0" * size)  # real blocks, not a sparse file
                self._alarms.discard(alarms.STORAGE_FULL)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            self.path.unlink(missing_ok=True)

    def release(self, keep: int) -> None:
        """Give all but ``keep`` bytes of the reserve back to the filesystem."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size <= keep:
            return  # what is left is not this caller's to use
        if keep:
            os.truncate(self.path, keep)
        else:
            self.path.unlink()
        _LOGGER.error("disk full: released %d bytes of the reserve", size - keep)


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

    def housekeeping(self) -> None:
        """Give free pages back and truncate the WAL, so deleted ciphertext does not linger.

        Both need a little disk space themselves; on a full disk they are left for the next
        purge (the WAL is always consistent, just longer).
        """
        conn = self._db.conn
        try:
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
