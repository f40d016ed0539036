"""The outbox state machine over the ``readings`` table.

::

    append ──> pending (0) ──claim──> claimed (in memory, batch n) ──ack──> deleted
                  ^                          │                                  │
                  └──── release / restart ───┘               purge: out of the WAL

A claim is kept in memory (the rows stay pending in the file; an open turns every claim back
into pending anyway), and an acknowledgement deletes the rows it delivers, so a row's pages are
written by its append and its acknowledgement only (``docs/buffer.md``, "Flash"). Rows with a
state in the file (1 claimed, 2 delivered: an older release) are still acknowledged, released,
recovered and purged by their state tags. Every write is one transaction. The in-memory
counters follow the database: a transaction's changes to them are collected in a
:class:`Delta` and applied only after ``COMMIT`` returned, so a transaction retried after
SQLITE_FULL never counts twice.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar

from agent.buffer import alarms, codec, integrity
from agent.buffer.dedup import GENERATION_SHIFT, Key, Seen
from agent.buffer.integrity import Anchor, Ledger, state_tag, tag_ok
from agent.buffer.keyring import TAG_BYTES, Keyring
from agent.buffer.keys import NONCE_BYTES
from agent.buffer.lanes import CLAIM_ORDER, POLICIES, lane_of
from agent.buffer.refs import Refs
from agent.buffer.results import AppendResult, BufferConfig, Claim, RowClaim
from agent.buffer.schema import Db, Tx
from agent.errors import RowAuthenticationError
from agent.model import Lane, Reading
from dho_protocol.rowpayload import WireRows

_LOGGER = logging.getLogger(__name__)

PENDING: Final = 0
CLAIMED: Final = 1
ACKED: Final = 2
STATES: Final = (PENDING, CLAIMED, ACKED)
_MIN_BLOB: Final = NONCE_BYTES + TAG_BYTES
_LANE_VALUES: Final = ",".join(str(int(ln)) for ln in POLICIES)
_PENDING_OF_LANE: Final = {
    # ``readings_pending`` leaves the continuous lane out (migration m006: one WAL page less
    # per chunk appended); its rows are read in ``seq`` order, the table's own. The other
    # lanes name the index's condition literally, so that SQLite may use it.
    lane: (
        "SELECT seq, key_id, blob FROM readings WHERE state = 0 AND lane = ? ORDER BY seq LIMIT ?"
        if lane is Lane.CONTINUOUS
        else "SELECT seq, key_id, blob FROM readings WHERE state = 0 AND lane != 2"
        " AND lane = ? ORDER BY seq LIMIT ?"
    )
    for lane in POLICIES
}
"""The pending rows of a lane, oldest first (parameters: the lane, a limit)."""
assert int(Lane.CONTINUOUS) == 2  # the literal of m006's partial index


BATCH_BLOCK: Final = 64
"""Batch numbers reserved by one write of ``meta.next_batch`` (claims are kept in memory)."""
MAX_BATCHES_KEPT: Final = 256
"""Released batches whose rows are remembered for a late acknowledgement by batch (the
oldest are forgotten first; a late acknowledgement by reading id, ``ack_ids``, still works)."""

_T = TypeVar("_T")
_R = TypeVar("_R")


def _reading_id(item: object) -> uuid.UUID:
    if isinstance(item, Reading):
        return item.id
    assert isinstance(item, tuple)
    head = item[0]
    assert isinstance(head, codec.RowHead)
    return head.reading_id


@dataclass
class Counts:
    """Rows by lane and state, and quarantined rows: what ``stats()`` reports without a scan."""

    rows: dict[tuple[Lane, int], int] = field(
        default_factory=lambda: {(ln, st): 0 for ln in Lane for st in STATES}
    )
    quarantined: int = 0

    def pending(self, lane: Lane) -> int:
        """Pending rows of ``lane``."""
        return self.rows[lane, PENDING]

    def state(self, state: int) -> int:
        """Rows in ``state``, all lanes."""
        return sum(n for (_, st), n in self.rows.items() if st == state)

    @property
    def live(self) -> int:
        """Rows in the outbox, any state."""
        return sum(self.rows.values())

    def apply(self, delta: Delta) -> None:
        """Add a committed transaction's changes."""
        for key, n in delta.rows.items():
            self.rows[key] += n
        self.quarantined += delta.quarantined


@dataclass
class Delta:
    """Counter changes of one transaction, applied after it committed."""

    rows: dict[tuple[Lane, int], int] = field(default_factory=dict)
    quarantined: int = 0
    # Rows changed behind the buffer's back while it ran: the counters cannot be trusted to
    # know their old state, so the transaction counts the table again before it commits.
    recount: bool = False

    def total(self, state: int | None = None) -> int:
        """Net change of rows (in ``state``, or in any state)."""
        return sum(n for (_, st), n in self.rows.items() if state is None or st == state)

    def move(self, lane: Lane | None, old: int | None, new: int | None, n: int = 1) -> None:
        """``n`` rows of ``lane`` went from state ``old`` to ``new`` (``None``: in/out)."""
        if lane is None:
            return
        if old is not None:
            self.rows[lane, old] = self.rows.get((lane, old), 0) - n
        if new is not None:
            self.rows[lane, new] = self.rows.get((lane, new), 0) + n


def decode_row(
    keyring: Keyring, refs: Refs, seq: int, lane: Lane, key_id: object, blob: object
) -> tuple[Reading, codec.PackedReading]:
    """Decrypt and decode one row of a store, resolving its references.

    Raises:
        RowAuthenticationError: the row or a reference it needs does not open.
        codec.FormatError: authenticated plaintext this version cannot decode.
    """
    packed = codec.decode_reading(keyring.open("readings", seq, key_id, lane, blob))
    try:
        ctx = refs.resolve(packed.context_ref)
        boot = refs.resolve(packed.boot_ref)
    except RowAuthenticationError as exc:
        raise RowAuthenticationError(seq, f"its reference {exc.reason}") from None
    if not isinstance(ctx, codec.Context) or not isinstance(boot, uuid.UUID):
        raise RowAuthenticationError(seq, "reference of the wrong kind")
    return packed.build(ctx, boot, Lane(lane)), packed


class Outbox:
    """Append, claim, acknowledge, release, quarantine, compact and purge rows."""

    def __init__(
        self,
        db: Db,
        keyring: Keyring,
        refs: Refs,
        seen: Seen,
        config: BufferConfig,
        alarm_set: set[str],
        store_path: Path,
    ) -> None:
        self._db = db
        self._path = store_path
        self._keyring = keyring
        self._refs = refs
        self._seen = seen
        self._config = config
        self._alarms = alarm_set
        self.counts = Counts()
        self.next_seq = 1
        self.next_batch = 1
        self.ledger = Ledger(store_id=os.urandom(16))
        self.deleted = False
        """Rows were deleted or rewritten (purge, compaction) since the owner last reset this:
        their old ciphertext may linger in the WAL until a checkpoint truncates it."""
        self.unpurged = 0
        """Rows deleted on their acknowledgement since the last purge (their ciphertext may
        linger in the WAL until the purge's checkpoint truncates it)."""
        self._anchored = (-1, 0.0)
        self._inflight: dict[uuid.UUID, int] = {}
        self._claimed: dict[int, tuple[int, Lane]] = {}
        """Rows claimed by this process, ``seq -> (batch, lane)``: in memory only. A claim
        writes nothing to the card (an open turns every claim back into pending anyway, and
        the receiver de-duplicates by reading id); the rows stay pending in the file."""
        self._batches: dict[int, list[int]] = {}
        """The rows each batch of this process was given, also after a release (a late
        acknowledgement by batch still finds them); dropped on its acknowledgement."""
        self._batch_ceiling = 0
        """``meta.next_batch``: the batch numbers below it are reserved, handed out by claims
        without a write; an open starts at it, so no number is ever handed out twice."""

    def _tag(self, seq: int, state: int, batch: int | None) -> bytes:
        return state_tag(self._keyring, seq, state, batch)

    def _commit(self, tx: Tx, delta: Delta) -> None:
        """Apply ``delta`` to the counters after ``COMMIT``, and rewrite the ledger before it."""
        new: list[Ledger] = []
        recounted: list[Counts] = []

        def write() -> None:
            if delta.recount:
                recounted.append(self.count_rows())
                c, d = recounted[0], Delta()
            else:
                c, d = self.counts, delta
            ledger = dataclasses.replace(
                self.ledger,
                tx=self.ledger.tx + 1,
                live=c.live + d.total(),
                acked=c.state(ACKED) + d.total(ACKED),
                quarantined=c.quarantined + d.quarantined,
                next_batch=self.next_batch,
                next_ref=self._refs.next_id,
                sticky=set(self.ledger.sticky),
            )
            self._write_ledger(ledger)
            new.append(ledger)

        def applied() -> None:
            if recounted:
                self.counts = recounted[0]
            else:
                self.counts.apply(delta)
            self.ledger = new[-1]

        tx.before_commit(write)
        tx.after_commit(applied)

    def count_rows(self) -> Counts:
        """Count the table (a scan): rows by valid lane and state, quarantined readings."""
        conn = self._db.conn
        counts = Counts()
        for lane_value, state, n in conn.execute(
            "SELECT lane, state, count(*) FROM readings GROUP BY lane, state"
        ):
            lane = lane_of(lane_value)
            if lane is not None and type(state) is int and state in STATES:
                counts.rows[lane, state] += n
        counts.quarantined = conn.execute(
            "SELECT count(*) FROM quarantine WHERE source = 'readings'"
        ).fetchone()[0]
        # Rows claimed in memory are pending in the file.
        for seq, _, _, _, _ in self._rows_of(list(self._claimed), "AND state = 0"):
            lane = self._claimed[seq][1]
            counts.rows[lane, PENDING] -= 1
            counts.rows[lane, CLAIMED] += 1
        return counts

    def _rows_of(
        self, seqs: Sequence[int], where: str = "AND state != 2"
    ) -> list[tuple[int, object, object, object, object]]:
        """``(seq, lane, state, batch, tag)`` of the rows of ``seqs`` still in the table."""
        rows: list[tuple[int, object, object, object, object]] = []
        for i in range(0, len(seqs), 500):
            part = seqs[i : i + 500]
            marks = ",".join("?" * len(part))
            rows += self._db.conn.execute(
                f"SELECT seq, lane, state, batch, tag FROM readings WHERE seq IN ({marks})"  # noqa: S608
                f" {where}",
                part,
            ).fetchall()
        return rows

    def _write_ledger(self, ledger: Ledger) -> None:
        body, mac = ledger.pack(self._keyring)
        # The de-duplication tail rides along (dedup.Seen.add): no page of seen_log per append.
        self._db.conn.execute(
            "INSERT OR REPLACE INTO ledger (id, body, mac, seen_tail) VALUES (1, ?, ?, ?)",
            (body, mac, self._seen.tail_blob()),
        )

    def raise_sticky(self, tx: Tx, name: str) -> None:
        """Raise an alarm that is kept in the ledger (written by this transaction)."""

        def add() -> None:
            self._alarms.add(name)
            self.ledger.sticky.add(name)

        tx.after_commit(add)
        self.ledger.sticky.add(name)  # so this transaction's ledger write carries it
        tx.on_rollback(lambda: self.ledger.sticky.discard(name))

    def write_anchor(self) -> None:
        """Record the ledger's transaction counter outside the database."""
        anchor = Anchor(self.ledger.store_id, self.ledger.tx, self.next_batch)
        integrity.write_anchor(self._path, self._keyring, anchor)
        self._anchored = (self.ledger.tx, time.monotonic())

    def maybe_anchor(self, *, force: bool = False) -> None:
        """Write the anchor when the ledger moved on and the last one is old enough."""
        tx, at = self._anchored
        due = force or time.monotonic() - at >= self._config.anchor_interval_s
        if tx != self.ledger.tx and due:
            try:
                self.write_anchor()
            except OSError as exc:  # a full disk: the next one will do
                _LOGGER.warning("store anchor not written: %s", exc.strerror)

    # -- restart ------------------------------------------------------------------------

    def recover(self, *, keys_repaired: int = 0, reblind: bool = False) -> None:
        """Restart recovery, one scan of the outbox and one transaction.

        * Rows whose cleartext columns are not what this buffer writes (an unknown lane,
          state or data key, a batch or ciphertext of the wrong type) are quarantined: they
          cannot be delivered, and must not stop the rest.
        * The file is counted against the ledger: rows deleted, or marked delivered, behind
          the buffer's back raise sticky alarms; delivered rows whose state tag does not say
          so go back to pending.
        * Claimed rows go back to pending (at-least-once; the receiver de-duplicates).
        * The anchor says whether committed transactions were lost (a truncated WAL).
        """
        conn = self._db.conn
        kr = self._keyring
        body, mac, tail = conn.execute(
            "SELECT body, mac, seen_tail FROM ledger WHERE id = 1"
        ).fetchone() or (None, None, None)
        self._seen.load_tail(tail)
        fresh = body == b"" and mac == b""  # new store, or one from before the ledger
        stored = None if fresh else Ledger.unpack(kr, body, mac)
        actual_live, actual_acked, per_cell, all_valid = self._count_rows()
        actual_q = conn.execute(
            "SELECT count(*) FROM quarantine WHERE source = 'readings'"
        ).fetchone()[0]
        counts = Counts(quarantined=actual_q)
        for cell, n in per_cell.items():
            counts.rows[cell] = n
        bad = counts.live < actual_live
        self.counts = counts
        delta = Delta()
        with self._db.tx() as tx:
            if bad:
                self._quarantine_bad_rows(tx, delta)
            if stored is not None:
                self.ledger = dataclasses.replace(stored, sticky=set(stored.sticky))
                self._check_against_ledger(tx, stored, actual_live, actual_acked, actual_q)
            elif not fresh:
                _LOGGER.error("the store's ledger row was altered or removed; counting anew")
                self.raise_sticky(tx, "store.ledger-invalid")
            if fresh:  # tag every row once, trusting the states as they are
                conn.executemany(
                    "UPDATE readings SET tag = ? WHERE seq = ?",
                    [
                        (self._tag(seq, st, b), seq)
                        for seq, st, b in conn.execute(
                            "SELECT seq, state, batch FROM readings WHERE tag IS NULL"
                        ).fetchall()
                    ],
                )
            self._recheck_acked(tx, delta)
            none_claimed = all_valid and counts.state(CLAIMED) == 0  # no scan for nothing
            claimed = (
                []
                if none_claimed
                else conn.execute(
                    "SELECT seq, lane, batch FROM readings WHERE state = 1"
                ).fetchall()
            )
            conn.executemany(
                "UPDATE readings SET state = 0, tag = ? WHERE seq = ?",
                [(self._tag(seq, PENDING, b), seq) for seq, _, b in claimed],
            )
            for _, lane_value, _ in claimed:
                delta.move(lane_of(lane_value), CLAIMED, PENDING)
            self._refs.refresh(tx, reblind=reblind)
            if keys_repaired or self._refs.repaired or self._refs.replaced:
                _LOGGER.warning(
                    "damage repaired at open: %d key rows, %d reference copies, %d references lost",
                    keys_repaired,
                    self._refs.repaired,
                    self._refs.replaced,
                )
                self.raise_sticky(tx, "store.repaired")
            self._restore_numbers(tx, stored)
            self._commit(tx, delta)
        self.write_anchor()
        for name in self.ledger.sticky:
            self._alarms.add(name)
        if self.counts.quarantined:
            self._alarms.add(alarms.ROWS_QUARANTINED)

    def _count_rows(self) -> tuple[int, int, dict[tuple[Lane, int], int], bool]:
        """Rows in the file, rows marked delivered, the valid rows per (lane, state), and
        whether every row is valid (then the counts are exact for every state).

        The usual case, a file whose every row is valid and whose indexes ``integrity_check``
        has just verified: one scan for the validity predicate (nothing else per row), and
        the counts per state (the partial indexes, or a scan: ``readings_pending`` leaves
        the continuous lane out since m006).
        Otherwise (a damaged row, or no integrity check at open: the daemon's deferred check)
        one pass that computes each row's cell; constant memory either way (a GROUP BY over
        the table would sort every row in a temporary b-tree). At 1M rows: 0.3 s instead of 1.2 s.
        """
        conn = self._db.conn
        cells = [(ln, st) for ln in POLICIES for st in STATES]
        if self._config.check_integrity:
            invalid, claimed = conn.execute(
                "SELECT coalesce(sum(CASE WHEN"  # noqa: S608 - no input
                f" {self._valid_sql()} THEN 0 ELSE 1 END), 0), coalesce(sum(state = 1), 0)"
                " FROM readings",
                (_MIN_BLOB,),
            ).fetchone()
            if invalid == 0:
                per = dict.fromkeys(cells, 0)
                for st in STATES if claimed else (PENDING, ACKED):
                    for lane_value, n in conn.execute(  # a literal state: partial indexes
                        f"SELECT lane, count(*) FROM readings WHERE state = {int(st)}"  # noqa: S608
                        " GROUP BY lane"
                    ):
                        lane = lane_of(lane_value)
                        assert lane is not None  # every row is valid
                        per[lane, st] = int(n)
                total = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
                return int(total), sum(per[ln, ACKED] for ln in POLICIES), per, True
        # Each row's cell (lane * 3 + state) is computed once, in a subquery that LIMIT keeps
        # SQLite from flattening into the 12 sums (it runs as a co-routine, nothing stored).
        sums = ", ".join(f"coalesce(sum(c = {int(ln) * 3 + st}), 0)" for ln, st in cells)
        total, actual_acked, *per_cell = conn.execute(
            f"SELECT count(*), coalesce(sum(a), 0), {sums} FROM ("  # noqa: S608 - no input
            f" SELECT CASE WHEN {self._valid_sql()} THEN lane * 3 + state ELSE -1 END AS c,"
            " typeof(state) = 'integer' AND state = 2 AS a FROM readings LIMIT -1)",
            (_MIN_BLOB,),
        ).fetchone()
        per = {cell: int(n) for cell, n in zip(cells, per_cell, strict=True)}
        # Every row valid when every row fell in a cell (an invalid one counts in none): then
        # the claimed count is exact too, and recover() need not scan again for claimed rows.
        return int(total), int(actual_acked), per, sum(per.values()) == int(total)

    def _valid_sql(self) -> str:
        """An SQL predicate: the row's cleartext columns are what this buffer writes (one
        ``?`` for the minimum ciphertext length)."""
        keys = ",".join(str(k) for k in self._keyring.data_key_ids()) or "NULL"
        return (
            f"(typeof(lane) = 'integer' AND lane IN ({_LANE_VALUES})"
            " AND typeof(state) = 'integer' AND state IN (0, 1, 2)"
            f" AND typeof(key_id) = 'integer' AND key_id IN ({keys})"
            " AND typeof(blob) = 'blob' AND length(blob) >= ?"
            " AND (batch IS NULL OR typeof(batch) = 'integer'))"
        )

    def _quarantine_bad_rows(self, tx: Tx, delta: Delta) -> None:
        conn = self._db.conn
        rows = conn.execute(
            "SELECT seq, lane, state, batch, key_id, blob FROM readings"  # noqa: S608
            f" WHERE NOT ({self._valid_sql()})",
            (_MIN_BLOB,),
        ).fetchall()
        for seq, lane_value, state, batch, key_id, blob in rows:
            lane = lane_of(lane_value)
            if lane is None:
                why = f"cleartext lane {lane_value!r} is not a lane"
            elif type(state) is not int or state not in STATES:
                why = f"cleartext state {state!r} is not a state"
            elif not self._keyring.has(key_id):
                why = f"data key {key_id!r} is not in this store (lost or damaged)"
            elif type(batch) not in (int, type(None)):
                why = f"cleartext batch {batch!r} is not a batch number"
            else:
                why = "no ciphertext"
            # Counted under no lane: the recount above left these rows out already.
            self.quarantine(tx, delta, seq, None, None, key_id, why, blob, lane_value=lane_value)
        if rows:
            _LOGGER.error("%d rows with damaged cleartext columns quarantined", len(rows))

    def _check_against_ledger(
        self, tx: Tx, stored: Ledger, live: int, acked: int, quarantined: int
    ) -> None:
        """Compare the file with what the ledger says the buffer left in it.

        Undelivered rows that are gone raise ``rows.missing``; rows whose state changed raise
        ``rows.state-altered`` (those marked delivered go back to pending by their tags);
        rows the ledger does not account for raise ``store.ledger-invalid``. Delivered rows
        that were deleted lose nothing and are only logged.
        """
        to_acked = max(0, acked - stored.acked)
        missing = (stored.live - stored.acked) - (live - acked) - to_acked
        if missing > 0:
            _LOGGER.error("%d undelivered rows were removed behind the store's back", missing)
            self.raise_sticky(tx, "rows.missing")
        if to_acked or (acked < stored.acked and live == stored.live):
            _LOGGER.error(
                "%d rows changed state behind the store's back", abs(acked - stored.acked)
            )
            self.raise_sticky(tx, "rows.state-altered")
        elif live < stored.live and missing <= 0:
            _LOGGER.warning(
                "%d delivered rows were deleted behind the store's back", stored.live - live
            )
        if live > stored.live or quarantined != stored.quarantined:
            _LOGGER.error("the store holds rows its ledger does not account for")
            self.raise_sticky(tx, "store.ledger-invalid")

    def _recheck_acked(self, tx: Tx, delta: Delta) -> None:
        """Delivered rows whose tag does not say "delivered" go back to pending."""
        conn = self._db.conn
        back = [
            (seq, lane_value, batch)
            for seq, lane_value, batch, tag in conn.execute(
                "SELECT seq, lane, batch, tag FROM readings WHERE state = 2"
            ).fetchall()
            if not tag_ok(self._keyring, seq, ACKED, batch, tag)
        ]
        if not back:
            return
        conn.executemany(
            "UPDATE readings SET state = 0, tag = ? WHERE seq = ?",
            [(self._tag(seq, PENDING, b), seq) for seq, _, b in back],
        )
        for _, lane_value, _ in back:
            delta.move(lane_of(lane_value), ACKED, PENDING)
        _LOGGER.error("%d rows marked delivered without delivery: back to pending", len(back))
        self.raise_sticky(tx, "rows.state-altered")

    def _restore_numbers(self, tx: Tx, stored: Ledger | None) -> None:
        """Sequence, batch and reference numbers never go back (a reused batch number could
        let a late acknowledgement mark the wrong rows delivered)."""
        conn = self._db.conn
        # ``meta.seq_floor`` (migration m005) is the highest seq ever used as of the last
        # purge that deleted rows; rows appended since are still in the table.
        seq_row = conn.execute(
            "SELECT max(coalesce((SELECT max(seq) FROM readings), 0),"
            " coalesce((SELECT v FROM meta WHERE k = 'seq_floor'), 0),"
            " coalesce((SELECT max(seq) FROM quarantine WHERE source = 'readings'), 0))"
        ).fetchone()
        floor = seq_row[0] if type(seq_row[0]) is int else 0
        self.next_seq = max(self.next_seq, int(floor) + 1)
        meta = conn.execute("SELECT v FROM meta WHERE k = 'next_batch'").fetchone()
        top_batch = conn.execute(  # max() skips NULLs; the WHERE lets it use readings_batch
            "SELECT max(batch) FROM readings WHERE batch IS NOT NULL"
        ).fetchone()[0]
        candidates = [1]
        if meta is not None and type(meta[0]) is int:
            candidates.append(meta[0])
            self._batch_ceiling = meta[0]
        if type(top_batch) is int:
            candidates.append(top_batch + 1)
        if stored is not None:
            candidates.append(stored.next_batch)
        anchor = integrity.read_anchor(self._path, self._keyring, self.ledger.store_id)
        if anchor is not None and anchor.store_id == self.ledger.store_id:
            candidates.append(anchor.next_batch)
            if stored is not None and anchor.tx > stored.tx:
                _LOGGER.error(
                    "the store is %d transactions older than its anchor: committed changes "
                    "were lost (a truncated WAL, or an older copy of the file)",
                    anchor.tx - stored.tx,
                )
                self.raise_sticky(tx, "store.rolled-back")
        self.next_batch = max(candidates)
        top_ref = conn.execute(
            "SELECT max(coalesce((SELECT max(ref_id) FROM refs), 0),"
            " coalesce((SELECT max(seq) FROM quarantine WHERE source = 'refs'), 0))"
        ).fetchone()[0]
        self._refs.next_id = max(int(top_ref) + 1, stored.next_ref if stored else 1)

    # -- append -------------------------------------------------------------------------

    def append(self, readings: Sequence[Reading]) -> AppendResult:
        """Store readings durably in one transaction; duplicates are skipped."""
        first_seq = seq = self.next_seq
        delta = Delta()
        duplicates = 0
        gen = seq >> GENERATION_SHIFT
        kr = self._keyring
        refs = self._refs
        with self._db.tx() as tx:
            # One pass derives each reading's natural key and packs its observations (they
            # share the work on each observation), one more blinds the keys (Seen.keys_of:
            # the HMAC states prepared once per append); the rows are encoded after the
            # duplicates are known, and sealed in one more pass that builds the rows to
            # insert (Keyring.seal_rows; blobs as bytearray, which sqlite3 binds directly).
            seen = self._seen
            packed_and_key = codec.packed_and_key
            key_prefix = codec.key_prefix
            packed: list[list[object]] = []
            nks: list[bytes | None] = []
            prefix_of, prefix = None, ""
            for r in readings:
                if r.device is not prefix_of:
                    prefix_of, prefix = r.device, key_prefix(r.device)
                obs, nk = packed_and_key(r, prefix)
                packed.append(obs)
                nks.append(nk)
            keys = seen.keys_of(readings, nks)
            known = seen.known(keys)
            fresh: list[Key] = []
            plain: list[tuple[int, int, bytes]] = []
            lanes: dict[Lane, int] = {}
            encode = codec.encode_packed
            # The references of the reading before: an append's readings mostly share them.
            device, patient, context, boot_id, boot = None, None, 0, None, 0
            for r, key, obs in zip(readings, keys, packed, strict=True):
                if key in known:
                    duplicates += 1
                    continue
                known.add(key)  # a twin later in the same call is a duplicate too
                fresh.append(key)
                if r.device is not device or r.patient is not patient:
                    device, patient, context = r.device, r.patient, refs.context_ref(tx, r)
                if r.captured.boot_id is not boot_id:
                    boot_id = r.captured.boot_id
                    boot = refs.boot_ref(tx, boot_id)
                lane = r.lane
                plain.append((seq, lane, encode(r, obs, context, boot)))
                lanes[lane] = lanes.get(lane, 0) + 1
                seq += 1
            # No state tag: a pending row needs none, and none is ever written now (a claim is
            # kept in memory, an acknowledgement deletes the rows; only a row marked delivered
            # in the file by an older release needs one that says so to be purged). Until 7
            # December 2026 the row kept 16 bytes for the claim's tag (zeroblob(16)); without
            # them more chunk rows share a 1 KiB leaf ("Flash" in docs/buffer.md).
            rows = kr.seal_rows("readings", plain)
            for lane, n in lanes.items():
                delta.move(lane, None, PENDING, n)
            self._seen.add(tx, fresh, gen)
            self._db.conn.executemany(
                "INSERT INTO readings (seq, lane, state, key_id, blob, tag)"
                " VALUES (?, ?, 0, ?, ?, NULL)",
                rows,
            )
            self._commit(tx, delta)
            tx.on_rollback(lambda: setattr(self, "next_seq", first_seq))
            self.next_seq = seq
        return AppendResult(stored=len(rows), duplicates=duplicates)

    # -- claim --------------------------------------------------------------------------

    def claim(self, max_readings: int, max_bytes: int | None) -> Claim | None:
        """Move pending rows into a new batch, highest priority and oldest first.

        Rows that fail authentication are quarantined and reported, not returned.
        """
        got = self._claim(max_readings, max_bytes, self._take_reading)
        if got is None:
            return None
        batch_id, taken, failed, size = got
        return Claim(batch_id, tuple(r for r, _ in taken), failed, size)

    def claim_rows(self, max_readings: int, max_bytes: int | None) -> RowClaim | None:
        """Like :meth:`claim`, but the rows stay as stored: decrypted, never decoded.

        What the uplink sends (batch version 4, payload v4): each row's plaintext as it is
        (the sealing puts zstd-framed rows in plain and leaves out canonical raw frames of
        oximetry chunks and the row's id), with the contexts and boots its references stand
        for. Only the row's id and references are read (msgpack); building readings is left to
        the receiver.
        """
        checked: set[tuple[int, int]] = set()  # references already resolved in this claim

        def take(
            seq: int, lane: Lane, key_id: int, blob: bytes
        ) -> tuple[codec.RowHead, bytes, Lane]:
            plaintext = self._keyring.open("readings", seq, key_id, lane, blob)
            head = codec.peek(plaintext)
            refs = (head.context_ref, head.boot_ref)
            if refs not in checked:
                self._check_refs(seq, head)
                checked.add(refs)
            return head, plaintext, lane

        got = self._claim(max_readings, max_bytes, take)
        if got is None:
            return None
        batch_id, taken, failed, size = got
        ids: list[uuid.UUID] = []
        plain: list[bytes] = []
        lanes = bytearray()
        raw = False
        for (head, pt, lane), _ in taken:
            ids.append(head.reading_id)
            plain.append(pt)
            lanes.append(lane)
            raw = raw or head.has_raw
        rows = WireRows(
            reading_ids=tuple(ids),
            rows=tuple(plain),
            lanes=bytes(lanes),
            contexts={c: self._refs_of(c, codec.Context) for c, _ in checked},
            boots={b: self._refs_of(b, uuid.UUID) for _, b in checked},
        )
        return RowClaim(batch_id, rows, raw, failed, size)

    def _check_refs(self, seq: int, head: codec.RowHead) -> None:
        """That a row's references resolve to a context and a boot (else it is quarantined)."""
        try:
            ctx = self._refs.resolve(head.context_ref)
            boot = self._refs.resolve(head.boot_ref)
        except RowAuthenticationError as exc:
            raise RowAuthenticationError(seq, f"its reference {exc.reason}") from None
        if not isinstance(ctx, codec.Context) or not isinstance(boot, uuid.UUID):
            raise RowAuthenticationError(seq, "reference of the wrong kind")

    def _refs_of(self, ref: int, kind: type[_R]) -> _R:
        value = self._refs.resolve(ref)  # resolved (and cached) while the row was taken
        assert isinstance(value, kind)
        return value

    def _take_reading(self, seq: int, lane: Lane, key_id: int, blob: bytes) -> Reading:
        return self.decode_row(seq, lane, key_id, blob)

    def _claim(
        self,
        max_readings: int,
        max_bytes: int | None,
        take: Callable[[int, Lane, int, bytes], _T],
    ) -> tuple[int, list[tuple[_T, int]], tuple[RowAuthenticationError, ...], int] | None:
        """Select, take and mark claimed, in one transaction; ``take`` opens each row."""
        conn = self._db.conn
        with self._db.tx() as tx:
            batch_id = self.next_batch
            selected: list[tuple[int, Lane, int, bytes]] = []
            size = 0
            full = False
            for lane in CLAIM_ORDER:
                if full or len(selected) >= max_readings:
                    break
                # Rows claimed in memory are pending in the file: step over them (at most
                # as many as this lane has claimed).
                skip = self.counts.rows[lane, CLAIMED]
                for seq, key_id, blob in conn.execute(
                    _PENDING_OF_LANE[lane], (int(lane), max_readings - len(selected) + skip)
                ):
                    if seq in self._claimed:
                        continue
                    if len(selected) >= max_readings:
                        break
                    n = len(blob) if type(blob) is bytes else 0
                    if max_bytes is not None and selected and size + n > max_bytes:
                        full = True
                        break
                    selected.append((seq, lane, key_id, blob))
                    size += n
            if not selected:
                return None
            taken: list[tuple[_T, int]] = []
            failed: list[RowAuthenticationError] = []
            claimed: list[tuple[int, Lane]] = []
            ids: list[uuid.UUID] = []
            delta = Delta()
            moved: dict[Lane, int] = {}
            for seq, lane, key_id, blob in selected:
                try:
                    item = take(seq, lane, key_id, blob)
                    taken.append((item, seq))
                    claimed.append((seq, lane))
                    moved[lane] = moved.get(lane, 0) + 1
                except RowAuthenticationError as exc:
                    self.quarantine(tx, delta, seq, lane, PENDING, key_id, exc.reason, blob)
                    failed.append(exc)
                except codec.FormatError as exc:
                    err = RowAuthenticationError(seq, f"undecodable plaintext: {exc}")
                    self.quarantine(tx, delta, seq, lane, PENDING, key_id, err.reason, blob)
                    failed.append(err)
            for lane, n in moved.items():
                delta.move(lane, PENDING, CLAIMED, n)
            # The claim itself is kept in memory (``_claimed``): the rows are not rewritten.
            # Only a batch number at the reserved ceiling writes (``meta.next_batch``, a block
            # of BATCH_BLOCK numbers ahead), and a quarantined row.
            self.next_batch = batch_id + 1
            tx.on_rollback(lambda: setattr(self, "next_batch", batch_id))
            wrote = bool(failed)
            if batch_id >= self._batch_ceiling:
                ceiling = batch_id + BATCH_BLOCK
                # UPDATE, not INSERT OR REPLACE: a replace deletes and re-inserts the row,
                # which also rewrites meta's primary-key index (one more page in the WAL).
                if not conn.execute(
                    "UPDATE meta SET v = ? WHERE k = 'next_batch'", (ceiling,)
                ).rowcount:
                    conn.execute("INSERT INTO meta (k, v) VALUES ('next_batch', ?)", (ceiling,))
                tx.after_commit(lambda: setattr(self, "_batch_ceiling", ceiling))
                wrote = True
            if wrote:
                self._commit(tx, delta)
            else:  # nothing the ledger counts changed: no write at all
                tx.after_commit(lambda: self.counts.apply(delta))
            ids = [_reading_id(item) for item, _ in taken]

            def track() -> None:
                for rid, (_, s) in zip(ids, taken, strict=True):
                    self._inflight[rid] = s
                for s, ln in claimed:
                    self._claimed[s] = (batch_id, ln)
                self._batches[batch_id] = [s for s, _ in claimed]
                if len(self._batches) > MAX_BATCHES_KEPT:  # released, never acknowledged
                    for old in [b for b in self._batches if not self._claimed_of(b)]:
                        del self._batches[old]
                        if len(self._batches) <= MAX_BATCHES_KEPT:
                            break

            tx.after_commit(track)
        if failed:
            _LOGGER.error("%d stored rows failed authentication and were quarantined", len(failed))
        return batch_id, taken, tuple(failed), size

    def decode_row(self, seq: int, lane: Lane, key_id: int, blob: bytes) -> Reading:
        """Decrypt and decode one row, resolving its references."""
        return self.decode_packed(seq, lane, key_id, blob)[0]

    def decode_packed(
        self, seq: int, lane: Lane, key_id: int, blob: bytes
    ) -> tuple[Reading, codec.PackedReading]:
        """Decrypt and decode one row; also return its packed form (for compaction)."""
        return decode_row(self._keyring, self._refs, seq, lane, key_id, blob)

    # -- quarantine ---------------------------------------------------------------------

    def quarantine(
        self,
        tx: Tx,
        delta: Delta,
        seq: int,
        lane: Lane | None,
        state: int | None,
        key_id: object,
        reason: str,
        blob: object,
        *,
        lane_value: object = None,
    ) -> None:
        """Move a row to ``quarantine`` byte for byte, with the reason (inside ``tx``)."""
        self._db.conn.execute(
            "INSERT INTO quarantine (source, seq, lane, key_id, reason, blob)"
            " VALUES ('readings', ?, ?, ?, ?, ?)",
            (seq, int(lane) if lane is not None else lane_value, key_id, reason, blob),
        )
        self._db.conn.execute("DELETE FROM readings WHERE seq = ?", (seq,))
        delta.move(lane, state, None)
        delta.quarantined += 1
        tx.after_commit(lambda: self._alarms.add(alarms.ROWS_QUARANTINED))

    def quarantine_batch(self, batch_id: int, reason: str) -> int:
        """Move a claimed batch that can never be delivered to the quarantine."""
        conn = self._db.conn
        with self._db.tx() as tx:
            mine = self._claimed_of(batch_id)
            rows: list[tuple[int, object, object, object]] = []
            for i in range(0, len(mine), 500):
                part = mine[i : i + 500]
                marks = ",".join("?" * len(part))
                rows += conn.execute(
                    f"SELECT seq, lane, key_id, blob FROM readings WHERE seq IN ({marks})",  # noqa: S608
                    part,
                ).fetchall()
            rows += conn.execute(  # claimed in the file (before claims were kept in memory)
                "SELECT seq, lane, key_id, blob FROM readings WHERE batch = ? AND state = 1",
                (batch_id,),
            ).fetchall()
            delta = Delta()
            for seq, lane_value, key_id, blob in rows:
                lane = lane_of(lane_value)
                self.quarantine(
                    tx, delta, seq, lane, CLAIMED, key_id, reason, blob, lane_value=lane_value
                )
            if rows:
                self._commit(tx, delta)
            tx.after_commit(lambda: self._forget_inflight({r[0] for r in rows}))
            tx.after_commit(lambda: self._batches.pop(batch_id, None))
        if rows:
            _LOGGER.error("%d undeliverable readings quarantined: %s", len(rows), reason)
        return len(rows)

    # -- acknowledge and release --------------------------------------------------------

    def ack(self, batch_id: int) -> int:
        """Delete a delivered batch's rows (also a released batch whose acknowledgement came
        late, wherever its rows are now).

        The rows are those this process gave the batch (in memory); rows given it in the file
        (an older release) count only when their state tag says so: a pending row whose
        ``batch`` column was changed to this number does not.
        """
        conn = self._db.conn
        with self._db.tx() as tx:
            mine = self._rows_of(self._batches.get(batch_id, []))
            known = {r[0] for r in mine}
            # Rows given this batch in the file (claimed or released before claims were kept
            # in memory): their state tags must say so.
            filed = [
                r
                for r in conn.execute(
                    "SELECT seq, lane, state, batch, tag FROM readings"
                    " WHERE batch = ? AND state != 2",
                    (batch_id,),
                ).fetchall()
                if r[0] not in known
            ]
            done = self._mark_acked(tx, mine, filed)
            tx.after_commit(lambda: self._batches.pop(batch_id, None))
            return done

    def ack_ids(self, ids: Iterable[uuid.UUID]) -> int:
        """Delete delivered readings by id (they must have been claimed by this process)."""
        seqs = [s for i in ids if (s := self._inflight.get(i, 0))]
        if not seqs:
            return 0
        with self._db.tx() as tx:
            done = self._mark_acked(tx, self._rows_of(seqs), [])
            tx.after_commit(lambda: self._forget_inflight(set(seqs)))
        return done

    def _mark_acked(
        self,
        tx: Tx,
        mine: Sequence[tuple[int, object, object, object, object]],
        filed: Sequence[tuple[int, object, object, object, object]],
    ) -> int:
        """Delete delivered rows: ``mine`` were claimed by this process (in memory), ``filed``
        were given the batch in the file and count only when their state tag says so."""
        kr = self._keyring
        good = list(mine) + [r for r in filed if tag_ok(kr, r[0], r[2], r[3], r[4])]
        if len(good) < len(mine) + len(filed):
            _LOGGER.error(
                "%d rows named in an acknowledgement were not given that batch: left as they are",
                len(mine) + len(filed) - len(good),
            )
            self.raise_sticky(tx, "rows.state-altered")
        # Delivered rows are deleted here, in the pages the acknowledgement had to rewrite
        # anyway (secure_delete zeroes them), instead of being marked delivered here and
        # deleted by the next purge: each row's pages are written once, not twice, and the
        # purge's checkpoint copies a database of pending rows only ("Flash" in
        # docs/buffer.md). The ciphertext may linger in the WAL until that purge truncates
        # it: ``unpurged`` counts these rows until then (``stats().acknowledged``).
        if good:
            # Deleting the top rows lowers max(seq): keep the floor, as purge_rows does (no
            # page is written when the floor is already there).
            self._db.conn.execute(
                "UPDATE meta SET v = ? WHERE k = 'seq_floor' AND v < ?",
                (self.next_seq - 1, self.next_seq - 1),
            )
        self._db.conn.executemany("DELETE FROM readings WHERE seq = ?", [(r[0],) for r in good])
        delta = Delta()
        for seq, lane_value, state, _, _ in good:
            was = CLAIMED if seq in self._claimed else state if state in STATES else None
            delta.move(lane_of(lane_value), was, None)
        self._commit(tx, delta)
        gone = {r[0] for r in good}

        def done() -> None:
            self._forget_inflight(gone)
            for seq in gone:
                self._claimed.pop(seq, None)
            if gone:
                self.unpurged += len(gone)
                self.deleted = True

        tx.after_commit(done)
        return len(good)

    def _forget_inflight(self, seqs: set[int]) -> None:
        if seqs:
            self._inflight = {k: v for k, v in self._inflight.items() if v not in seqs}

    def release(self, batch_id: int) -> int:
        """Give a batch back to pending (its acknowledgement did not come in time)."""
        conn = self._db.conn
        rows = conn.execute(  # claimed in the file (before claims were kept in memory)
            "SELECT seq, lane FROM readings WHERE batch = ? AND state = 1", (batch_id,)
        ).fetchall()
        if rows:
            with self._db.tx() as tx:
                conn.executemany(
                    "UPDATE readings SET state = 0, tag = ? WHERE seq = ?",
                    [(self._tag(seq, PENDING, batch_id), seq) for seq, _ in rows],
                )
                delta = Delta()
                for _, lane_value in rows:
                    delta.move(lane_of(lane_value), CLAIMED, PENDING)
                self._commit(tx, delta)
        # A claim in memory: its rows are pending in the file already, nothing to write.
        mine = self._claimed_of(batch_id)
        delta = Delta()
        for seq in mine:
            delta.move(self._claimed.pop(seq)[1], CLAIMED, PENDING)
        self.counts.apply(delta)
        return len(rows) + len(mine)

    def _claimed_of(self, batch_id: int) -> list[int]:
        """The rows of ``batch_id`` still claimed by it (in memory)."""
        return [
            s for s in self._batches.get(batch_id, ()) if self._claimed.get(s, (0,))[0] == batch_id
        ]

    # -- purge and compaction -----------------------------------------------------------

    def purge_rows(self) -> int:
        """Delete delivered rows, old de-duplication keys and unused retired data keys.

        Returns the delivered rows gone since the last purge: those an acknowledgement
        deleted (:attr:`unpurged`) and rows marked delivered (state 2, by a release before
        acknowledgements deleted rows) deleted now. A row is deleted only when its state tag
        says it was delivered; one whose ``state`` column says so without a matching tag goes
        back to pending instead.
        """
        earlier, self.unpurged = self.unpurged, 0
        try:
            return earlier + self._purge_rows()
        except BaseException:
            self.unpurged += earlier
            raise

    def _purge_rows(self) -> int:
        conn = self._db.conn
        kr = self._keyring
        with self._db.tx() as tx:
            changes = conn.total_changes
            acked = conn.execute(
                "SELECT seq, lane, batch, tag FROM readings WHERE state = 2"
            ).fetchall()
            delta = Delta()
            gone = [r for r in acked if tag_ok(kr, r[0], ACKED, r[2], r[3])]
            if gone:
                # Deleting the top rows lowers max(seq): keep the floor, so that no seq is
                # ever handed out twice (migration m005; AUTOINCREMENT did this at every
                # append, one WAL page each).
                conn.execute(
                    "UPDATE meta SET v = max(v, ?) WHERE k = 'seq_floor'", (self.next_seq - 1,)
                )
            conn.executemany("DELETE FROM readings WHERE seq = ?", [(r[0],) for r in gone])
            for _, lane_value, _, _ in gone:
                delta.move(lane_of(lane_value), ACKED, None)
            if len(gone) < len(acked):
                self._recheck_acked(tx, delta)
                delta.recount = True
            tail_changed = self._seen.forget_before(
                tx, self.next_seq, self._config.seen_generations
            )
            self._keyring.retire_unused(self._db, tx, self._key_in_use)
            if conn.total_changes == changes and not delta.recount and not tail_changed:
                # Nothing to delete: no ledger write, so the commit writes nothing (an idle
                # box's maintenance timer wrote a WAL frame and the anchor every minute).
                return 0
            self._commit(tx, delta)
            tx.after_commit(lambda: setattr(self, "deleted", True))
        return len(gone)

    def _key_in_use(self, key_id: int) -> bool:
        return bool(
            self._db.conn.execute(
                "SELECT EXISTS (SELECT 1 FROM readings WHERE key_id = ?)", (key_id,)
            ).fetchone()[0]
        )

    def used_bytes(self) -> int:
        """Bytes of the database in use (pages not on the freelist)."""
        conn = self._db.conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * page_size)

    def compact(self, lane: Lane, *, until_bytes: int = 0, batch: int = 200) -> int:
        """Replace pending sample chunks of ``lane`` by per-period summaries, oldest first.

        Returns how many rows were compacted. Spot readings are never touched. Compacted
        readings keep their id (so delivery stays exactly-once) and carry the status flag
        ``gateway-compacted``; their raw frames are dropped.
        """
        done = 0
        last_seq = 0
        conn = self._db.conn
        while True:
            with self._db.tx() as tx:
                rows = conn.execute(
                    "SELECT seq, key_id, blob FROM readings WHERE state = 0 AND lane = ? "
                    "AND seq > ? ORDER BY lane, seq LIMIT ?",
                    (int(lane), last_seq, batch),
                ).fetchall()
                delta = Delta()
                rewritten = quarantined = 0
                for seq, key_id, blob in rows:
                    last_seq = seq
                    if seq in self._claimed:  # in flight: its plaintext is in a batch
                        continue
                    try:
                        reading, packed = self.decode_packed(seq, lane, key_id, blob)
                    except (RowAuthenticationError, codec.FormatError) as exc:
                        self.quarantine(tx, delta, seq, lane, PENDING, key_id, str(exc), blob)
                        quarantined += 1
                        continue
                    small = reading.compacted(self._config.compact_period_ms)
                    if small is reading:
                        continue
                    pt = codec.encode_reading(small, packed.context_ref, packed.boot_ref)
                    conn.execute(
                        "UPDATE readings SET key_id = ?, blob = ? WHERE seq = ?",
                        (self._keyring.active, self._keyring.seal("readings", seq, lane, pt), seq),
                    )
                    rewritten += 1
                if rewritten or quarantined:
                    # Nothing changed, nothing written: on a full disk a ledger write for an
                    # empty lane failed the append's retry before it was tried.
                    self._commit(tx, delta)
                if rewritten:
                    tx.after_commit(lambda: setattr(self, "deleted", True))
            done += rewritten
            if not rows or (until_bytes and self.used_bytes() <= until_bytes):
                break
        if done:
            _LOGGER.warning("disk pressure: compacted %d %s chunks", done, lane.name.lower())
        return done
