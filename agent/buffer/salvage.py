"""Readings of a store that was set aside are delivered after all, when the key opens them.

A store is set aside only for real damage (``integrity_check`` failed, or the file is not
SQLite) or when the KEK opens none of its keys. Damage is usually a few pages: the rest of the
rows are fine, and their keys are wrapped by the same KEK. So every set-aside store is kept,
and its readable undelivered rows are imported into the live store, a bounded number per call
(at open, then at every purge), oldest first, skipping past damaged pages. Importing goes
through :meth:`Buffer.append`, so de-duplication (by natural key or reading id) makes an import
interrupted and repeated store nothing twice; progress is kept in the live store's ``meta``.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent.buffer import codec
from agent.buffer.keyring import Keyring
from agent.buffer.keys import KeySource
from agent.buffer.lanes import lane_of
from agent.buffer.outbox import ACKED, decode_row
from agent.buffer.refs import Refs
from agent.buffer.results import AppendResult
from agent.buffer.schema import Db, set_aside_stores
from agent.errors import AgentError, RowAuthenticationError
from agent.model import Reading

_LOGGER = logging.getLogger(__name__)

_PAGE: Final = 200  # rows read per query
_DONE: Final = -1
_MAX_PROBES: Final = 64  # queries spent stepping over one damaged region


_Row = tuple[int, object, object, object, object]


@dataclass
class _Source:
    """An open set-aside store."""

    conn: sqlite3.Connection
    keyring: Keyring
    refs: Refs
    top: int  # the highest sequence number it may hold


class Salvage:
    """Imports undelivered readings from the set-aside stores next to a live store."""

    def __init__(
        self,
        live: Db,
        path: Path,
        keys: KeySource,
        append: Callable[[Sequence[Reading]], AppendResult],
    ) -> None:
        self._live = live
        self._path = path
        self._keys = keys
        self._append = append
        self._unopenable: set[str] = set()  # tried in this process: the key does not open it
        self.imported = 0

    def progress(self, name: str) -> int:
        """The last sequence number imported from ``name`` (-1: done; 0: not started)."""
        row = self._live.conn.execute(
            "SELECT v FROM meta WHERE k = ?", (f"salvage:{name}",)
        ).fetchone()
        return row[0] if row is not None and type(row[0]) is int else 0

    def _record(self, name: str, value: int) -> None:
        with self._live.tx():
            self._live.conn.execute(
                "INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (f"salvage:{name}", value)
            )

    def pending(self) -> list[str]:
        """Set-aside stores not yet fully imported (and not known to be unopenable)."""
        return [
            n
            for n in set_aside_stores(self._path)
            if n not in self._unopenable and self.progress(n) != _DONE
        ]

    def run(self, budget: int) -> int:
        """Import up to ``budget`` readings; returns how many were stored."""
        stored = 0
        for name in self.pending():
            if stored >= budget:
                break
            stored += self._one(name, budget - stored)
        self.imported += stored
        return stored

    def _open(self, name: str) -> _Source | None:
        path = self._path.with_name(name)
        try:
            conn = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA query_only = ON")
            db = Db(conn, on_full=lambda: None)
            keyring = Keyring()
            keyring.load(db, self._keys, writable=False)
        except (sqlite3.Error, AgentError) as exc:
            with_conn = locals().get("conn")
            if isinstance(with_conn, sqlite3.Connection):
                with_conn.close()
            _LOGGER.warning("set-aside store %s cannot be read with this key (%s)", name, exc)
            self._unopenable.add(name)
            return None
        # A store from before migration m005 knows its highest seq in sqlite_sequence; a
        # newer one has no such row (its floor in meta may be older than its newest rows),
        # so the search past damage is bounded only by its probe count.
        top = 1 << 62
        try:
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
            if row is not None and type(row[0]) is int:
                top = row[0]
        except sqlite3.DatabaseError:
            pass
        return _Source(conn, keyring, Refs(db, keyring, writable=False), top)

    def _one(self, name: str, budget: int) -> int:
        last = self.progress(name)
        src = self._open(name)
        if src is None:
            return 0
        stored = 0
        unreadable = 0
        try:
            while stored < budget:
                rows, after, skipped = self._page(src, last)
                unreadable += skipped
                if rows is not None and after <= last:
                    # A damaged table can answer anything; never go round in circles on it.
                    rows = None
                last = after
                if rows is None:  # nothing left
                    self._record(name, _DONE)
                    _LOGGER.warning(
                        "set-aside store %s: every readable undelivered reading imported "
                        "(%d rows could not be read)",
                        name,
                        unreadable,
                    )
                    break
                readings = []
                for seq, lane_value, state, key_id, blob in rows:
                    lane = lane_of(lane_value)
                    if lane is None or state == ACKED:
                        continue  # delivered, or not a row anyone can deliver
                    try:
                        readings.append(
                            decode_row(src.keyring, src.refs, seq, lane, key_id, blob)[0]
                        )
                    except (RowAuthenticationError, codec.FormatError):
                        unreadable += 1
                if readings:
                    stored += self._append(readings).stored
                self._record(name, last)
        finally:
            src.conn.close()
        if stored:
            _LOGGER.warning("imported %d readings from set-aside store %s", stored, name)
        return stored

    def _page(self, src: _Source, last: int) -> tuple[list[_Row] | None, int, int]:
        """The next rows after ``last``, stepping over damaged pages.

        Returns ``(rows, new last, rows given up as unreadable)``; ``rows`` is ``None`` when
        nothing is left, and may be empty when only damage was stepped over.
        """
        try:
            rows = self._rows(src, last, _PAGE)
        except sqlite3.DatabaseError:
            pass
        else:
            return (rows or None), (rows[-1][0] if rows else last), 0
        # Damage within the next page: take the rows before it one at a time ...
        rows = []
        cur = last
        for _ in range(_PAGE):
            try:
                one = self._rows(src, cur, 1)
            except sqlite3.DatabaseError:
                break
            if not one:
                return (rows or None), cur, 0
            rows += one
            cur = one[0][0]
        if rows:
            return rows, cur, 0

        # ... and at the damage itself, find the first sequence number beyond it that reads:
        # double the step, then narrow back down to the edge.
        def reads(start: int) -> bool:
            try:
                self._rows(src, start, 1)
            except sqlite3.DatabaseError:
                return False
            return True

        lo, step = cur, 1
        for _ in range(_MAX_PROBES):
            hi = cur + step
            if hi >= src.top:
                return None, cur, max(0, src.top - cur)
            if reads(hi):
                break
            lo, step = hi, step * 2
        else:
            return None, cur, 0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if reads(mid):
                hi = mid
            else:
                lo = mid
        return [], hi, hi - cur

    def _rows(self, src: _Source, after: int, limit: int) -> list[_Row]:
        """Rows with ``seq > after``; a row whose sequence number cannot be the store's (a
        damaged page can decode to anything: out of range, not above ``after``, or out of
        order) counts as damage, so every page read moves strictly forward."""
        rows: list[_Row] = src.conn.execute(
            "SELECT seq, lane, state, key_id, blob FROM readings WHERE seq > ? ORDER BY seq"
            " LIMIT ?",
            (after, limit),
        ).fetchall()
        prev = after
        for row in rows:
            if type(row[0]) is not int or row[0] > src.top or row[0] <= prev:
                raise sqlite3.DatabaseError("sequence number out of range or out of order")
            prev = row[0]
        return rows
