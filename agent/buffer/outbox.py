"""The outbox state machine over the ``readings`` table.

::

    append ──> pending (0) ──claim──> claimed (1, batch n) ──ack──> acknowledged (2) ──purge──> gone
                  ^                        │
                  └──── release / restart ─┘

Every transition is one transaction. The in-memory counters follow the database: a
transaction's changes to them are collected in a :class:`Delta` and applied only after
``COMMIT`` returned, so a transaction retried after SQLITE_FULL never counts twice.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from agent.buffer import alarms, codec
from agent.buffer.dedup import GENERATION_SHIFT, Seen
from agent.buffer.keyring import Keyring
from agent.buffer.lanes import CLAIM_ORDER, lane_of
from agent.buffer.refs import Refs
from agent.buffer.results import AppendResult, BufferConfig, Claim
from agent.buffer.schema import Db, Tx
from agent.errors import RowAuthenticationError
from agent.model import Lane, Reading

_LOGGER = logging.getLogger(__name__)

PENDING: Final = 0
CLAIMED: Final = 1
ACKED: Final = 2
STATES: Final = (PENDING, CLAIMED, ACKED)


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

    def move(self, lane: Lane | None, old: int | None, new: int | None, n: int = 1) -> None:
        """``n`` rows of ``lane`` went from state ``old`` to ``new`` (``None``: in/out)."""
        if lane is None:
            return
        if old is not None:
            self.rows[lane, old] = self.rows.get((lane, old), 0) - n
        if new is not None:
            self.rows[lane, new] = self.rows.get((lane, new), 0) + n


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
    ) -> None:
        self._db = db
        self._keyring = keyring
        self._refs = refs
        self._seen = seen
        self._config = config
        self._alarms = alarm_set
        self.counts = Counts()
        self.next_seq = 1
        self._inflight: dict[uuid.UUID, int] = {}

    def _commit(self, tx: Tx, delta: Delta) -> None:
        tx.after_commit(lambda: self.counts.apply(delta))

    # -- restart ------------------------------------------------------------------------

    def recover(self) -> None:
        """Restart recovery: claimed rows go back to pending; counters are rebuilt once."""
        conn = self._db.conn
        with self._db.tx():
            conn.execute("UPDATE readings SET state = 0 WHERE state = 1")
        seq_row = conn.execute(
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'readings'), 0),"
            " coalesce((SELECT max(seq) FROM quarantine WHERE source = 'readings'), 0))"
        ).fetchone()
        self.next_seq = int(seq_row[0]) + 1
        counts = Counts()
        for lane_value, state, n in conn.execute(
            "SELECT lane, state, count(*) FROM readings GROUP BY lane, state"
        ):
            lane = lane_of(lane_value)
            if lane is not None and state in STATES:
                counts.rows[lane, state] = n
        counts.quarantined = conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        if counts.quarantined:
            self._alarms.add(alarms.ROWS_QUARANTINED)
        self.counts = counts

    # -- append -------------------------------------------------------------------------

    def append(self, readings: Sequence[Reading]) -> AppendResult:
        """Store readings durably in one transaction; duplicates are skipped."""
        first_seq = seq = self.next_seq
        rows: list[tuple[int, int, int, bytes]] = []
        delta = Delta()
        duplicates = 0
        gen = seq >> GENERATION_SHIFT
        with self._db.tx() as tx:
            keys = [self._seen.key(r) for r in readings]
            known = self._seen.known(keys)
            fresh: list[tuple[bytes, int]] = []
            for r, key in zip(readings, keys, strict=True):
                if key in known:
                    duplicates += 1
                    continue
                known.add(key)  # a twin later in the same call is a duplicate too
                fresh.append((key, gen))
                ctx_ref = self._refs.context_ref(tx, r)
                boot_ref = self._refs.boot_ref(tx, r.captured.boot_id)
                pt = codec.encode_reading(r, ctx_ref, boot_ref)
                blob = self._keyring.seal("readings", seq, r.lane, pt)
                rows.append((seq, int(r.lane), self._keyring.active, blob))
                delta.move(r.lane, None, PENDING)
                seq += 1
            self._seen.add(fresh)
            self._db.conn.executemany(
                "INSERT INTO readings (seq, lane, state, key_id, blob) VALUES (?, ?, 0, ?, ?)",
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
        conn = self._db.conn
        with self._db.tx() as tx:
            batch_id = int(conn.execute("SELECT v FROM meta WHERE k = 'next_batch'").fetchone()[0])
            selected: list[tuple[int, Lane, int, bytes]] = []
            size = 0
            full = False
            for lane in CLAIM_ORDER:
                if full or len(selected) >= max_readings:
                    break
                for seq, key_id, blob in conn.execute(
                    "SELECT seq, key_id, blob FROM readings WHERE state = 0 AND lane = ?"
                    " ORDER BY seq LIMIT ?",
                    (int(lane), max_readings - len(selected)),
                ):
                    if max_bytes is not None and selected and size + len(blob) > max_bytes:
                        full = True
                        break
                    selected.append((seq, lane, key_id, blob))
                    size += len(blob)
            if not selected:
                return None
            readings: list[Reading] = []
            failed: list[RowAuthenticationError] = []
            claimed: list[tuple[int, int]] = []
            delta = Delta()
            for seq, lane, key_id, blob in selected:
                try:
                    readings.append(self.decode_row(seq, lane, key_id, blob))
                    claimed.append((batch_id, seq))
                    delta.move(lane, PENDING, CLAIMED)
                except RowAuthenticationError as exc:
                    self.quarantine(tx, delta, seq, lane, PENDING, key_id, exc.reason, blob)
                    failed.append(exc)
                except codec.FormatError as exc:
                    err = RowAuthenticationError(seq, f"undecodable plaintext: {exc}")
                    self.quarantine(tx, delta, seq, lane, PENDING, key_id, err.reason, blob)
                    failed.append(err)
            conn.executemany("UPDATE readings SET state = 1, batch = ? WHERE seq = ?", claimed)
            conn.execute("UPDATE meta SET v = v + 1 WHERE k = 'next_batch'")
            self._commit(tx, delta)

            def track() -> None:
                for r, (_, s) in zip(readings, claimed, strict=True):
                    self._inflight[r.id] = s

            tx.after_commit(track)
        if failed:
            _LOGGER.error("%d stored rows failed authentication and were quarantined", len(failed))
        return Claim(batch_id, tuple(readings), tuple(failed), size)

    def decode_row(self, seq: int, lane: Lane, key_id: int, blob: bytes) -> Reading:
        """Decrypt and decode one row, resolving its references."""
        return self.decode_packed(seq, lane, key_id, blob)[0]

    def decode_packed(
        self, seq: int, lane: Lane, key_id: int, blob: bytes
    ) -> tuple[Reading, codec.PackedReading]:
        """Decrypt and decode one row; also return its packed form (for compaction)."""
        packed = codec.decode_reading(self._keyring.open("readings", seq, key_id, lane, blob))
        try:
            ctx = self._refs.resolve(packed.context_ref)
            boot = self._refs.resolve(packed.boot_ref)
        except RowAuthenticationError as exc:
            raise RowAuthenticationError(seq, f"its reference {exc.reason}") from None
        if not isinstance(ctx, codec.Context) or not isinstance(boot, uuid.UUID):
            raise RowAuthenticationError(seq, "reference of the wrong kind")
        return packed.build(ctx, boot, Lane(lane)), packed

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
            rows = conn.execute(
                "SELECT seq, lane, key_id, blob FROM readings WHERE batch = ? AND state = 1",
                (batch_id,),
            ).fetchall()
            delta = Delta()
            for seq, lane_value, key_id, blob in rows:
                lane = lane_of(lane_value)
                self.quarantine(
                    tx, delta, seq, lane, CLAIMED, key_id, reason, blob, lane_value=lane_value
                )
            self._commit(tx, delta)
            tx.after_commit(lambda: self._forget_inflight({r[0] for r in rows}))
        if rows:
            _LOGGER.error("%d undeliverable readings quarantined: %s", len(rows), reason)
        return len(rows)

    # -- acknowledge and release --------------------------------------------------------

    def ack(self, batch_id: int) -> int:
        """Mark a batch delivered (also a released batch whose acknowledgement came late)."""
        conn = self._db.conn
        with self._db.tx() as tx:
            rows = conn.execute(
                "SELECT seq, lane, state FROM readings WHERE batch = ? AND state != 2", (batch_id,)
            ).fetchall()
            conn.execute(
                "UPDATE readings SET state = 2 WHERE batch = ? AND state != 2", (batch_id,)
            )
            self._count_acked(tx, rows)
        return len(rows)

    def ack_ids(self, ids: Iterable[uuid.UUID]) -> int:
        """Mark readings delivered by id (they must have been claimed by this process)."""
        seqs = [s for i in ids if (s := self._inflight.get(i, 0))]
        if not seqs:
            return 0
        conn = self._db.conn
        with self._db.tx() as tx:
            rows: list[tuple[int, int, int]] = []
            for i in range(0, len(seqs), 500):
                part = seqs[i : i + 500]
                marks = ",".join("?" * len(part))
                rows += conn.execute(
                    f"SELECT seq, lane, state FROM readings WHERE seq IN ({marks})"  # noqa: S608
                    " AND state != 2",
                    part,
                ).fetchall()
            conn.executemany("UPDATE readings SET state = 2 WHERE seq = ?", [(r[0],) for r in rows])
            self._count_acked(tx, rows)
            tx.after_commit(lambda: self._forget_inflight(set(seqs)))
        return len(rows)

    def _count_acked(self, tx: Tx, rows: Sequence[tuple[int, int, int]]) -> None:
        delta = Delta()
        for _, lane_value, state in rows:
            delta.move(lane_of(lane_value), state if state in STATES else None, ACKED)
        self._commit(tx, delta)
        tx.after_commit(lambda: self._forget_inflight({r[0] for r in rows}))

    def _forget_inflight(self, seqs: set[int]) -> None:
        if seqs:
            self._inflight = {k: v for k, v in self._inflight.items() if v not in seqs}

    def release(self, batch_id: int) -> int:
        """Give a batch back to pending (its acknowledgement did not come in time)."""
        conn = self._db.conn
        with self._db.tx() as tx:
            rows = conn.execute(
                "SELECT lane, count(*) FROM readings WHERE batch = ? AND state = 1 GROUP BY lane",
                (batch_id,),
            ).fetchall()
            conn.execute("UPDATE readings SET state = 0 WHERE batch = ? AND state = 1", (batch_id,))
            delta = Delta()
            for lane_value, n in rows:
                delta.move(lane_of(lane_value), CLAIMED, PENDING, n)
            self._commit(tx, delta)
        return sum(n for _, n in rows)

    # -- purge and compaction -----------------------------------------------------------

    def purge_rows(self) -> int:
        """Delete acknowledged rows, old de-duplication keys and unused retired data keys."""
        conn = self._db.conn
        with self._db.tx() as tx:
            acked = conn.execute(
                "SELECT lane, count(*) FROM readings WHERE state = 2 GROUP BY lane"
            ).fetchall()
            n = conn.execute("DELETE FROM readings WHERE state = 2").rowcount
            self._seen.forget_before(self.next_seq, self._config.seen_generations)
            self._keyring.retire_unused(self._db, tx, self._key_in_use)
            delta = Delta()
            for lane_value, count in acked:
                delta.move(lane_of(lane_value), ACKED, None, count)
            self._commit(tx, delta)
        return int(n)

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
                rewritten = 0
                for seq, key_id, blob in rows:
                    last_seq = seq
                    try:
                        reading, packed = self.decode_packed(seq, lane, key_id, blob)
                    except (RowAuthenticationError, codec.FormatError) as exc:
                        self.quarantine(tx, delta, seq, lane, PENDING, key_id, str(exc), blob)
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
                self._commit(tx, delta)
            done += rewritten
            if not rows or (until_bytes and self.used_bytes() <= until_bytes):
                break
        if done:
            _LOGGER.warning("disk pressure: compacted %d %s chunks", done, lane.name.lower())
        return done
