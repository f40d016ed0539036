"""De-duplication memory: blind keys of what was stored, kept after delivery.

A reading with a device timestamp is known by its natural key (device + device time +
values): a cuff that re-sends its stored records creates no twins. A reading without one (a
chunk of continuous samples, a spot value with no device clock) is known by its reading id, so
the *same* reading appended twice (a cancelled append that committed anyway, then retried) is
stored once, while two equal values a minute apart stay two measurements.

Keys are blinded with the index key (HMAC), so the table reveals neither. They are grouped in
*buckets*, one per week of the reading's own time (the device time, or the time inside its
UUIDv7 id), the bucket name itself blinded: an append writes one ``seen_log`` row per bucket it
touches, holding that append's 12-byte keys, instead of one B-tree insert per reading at a
random place (which cost a page write per reading, 3x the whole insert of the rows themselves,
and wore the SD card). The table is one b-tree keyed by ``(gen, bucket, id)`` without a rowid
or an index (migration ``m004``), so that row is one page of the WAL, not three.
A lookup reads the few rows of the buckets concerned; the buckets in use
are cached. The table reveals how many readings share an (unnamed) week, no more than the order
and number of outbox rows already do.

The keys of the latest appends are not in ``seen_log`` yet: they are the *tail*, kept in the
ledger row (``ledger.seen_tail``, migration ``m007``), which every transaction rewrites anyway.
An append then writes no page of ``seen_log``; once the tail holds more than
``BufferConfig.seen_tail_keys`` keys, the append that overflows it moves them all to
``seen_log`` (one row per generation and bucket). The tail is part of the same transaction as
the rows, so a power cut keeps both or neither.

Stores from before ``seen_log`` keep their old ``seen`` rows (16-byte keys, the same HMACs) and
consult them too, until those expire.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Sequence
from typing import Final

from agent.buffer.keyring import Keyring
from agent.buffer.schema import Db, Tx
from agent.model import Reading

GENERATION_SHIFT: Final = 16  # one generation per 65,536 readings
MAC_BYTES: Final = 12  # per bucket, 96 bits: a collision is never expected
_PARAMS: Final = 500  # stay under SQLite's bound-parameter limit
_CACHED_BUCKETS: Final = 8
_EPOCH_ORDINAL: Final = 719163  # date(1970, 1, 1).toordinal()
_MS_PER_DAY: Final = 86_400_000
_BLIND_BYTES: Final = 16  # Keyring.blind's length

Key = tuple[bytes, bytes]  # (bucket, full 16-byte blind key; its first 12 bytes are stored)
_TAIL: Final = struct.Struct(">I4s12s")  # a tail record: generation, bucket, key
Tail = list[tuple[int, bytes, bytes]]


def pack_tail(tail: Tail) -> bytes:
    """The tail as stored in ``ledger.seen_tail``."""
    return b"".join(_TAIL.pack(gen, bucket, mac) for gen, bucket, mac in tail)


def unpack_tail(blob: object) -> Tail:
    """The tail stored in ``ledger.seen_tail``; anything else than whole records is none (a
    damaged tail forgets at most ``seen_tail_keys`` keys; the receiver de-duplicates by
    reading id and natural key as well)."""
    if type(blob) is not bytes or len(blob) % _TAIL.size:
        return []
    return [_TAIL.unpack_from(blob, i) for i in range(0, len(blob), _TAIL.size)]


class Seen:
    """The ``seen_log`` table (and the legacy ``seen`` of older stores)."""

    def __init__(self, db: Db, keyring: Keyring, tail_keys: int = 32) -> None:
        self._db = db
        self._keyring = keyring
        self._tail_keys = tail_keys
        self._tail: Tail = []  # committed: what ledger.seen_tail holds
        self._tail_set: set[tuple[bytes, bytes]] = set()  # its (bucket, key)s
        self._next_tail: Tail | None = None  # the open transaction's, until it ends
        self._buckets: dict[int, bytes] = {}  # week -> blinded bucket name
        self._cache: OrderedDict[bytes, set[bytes]] = OrderedDict()
        self._legacy: bool | None = None

    def _bucket(self, week: int) -> bytes:
        b = self._buckets.get(week)
        if b is None:
            b = self._buckets[week] = self._keyring.blind(b"wk|", struct.pack(">q", week))[:4]
        return b

    def key(self, r: Reading) -> Key:
        """The blind de-duplication key of a reading, with its bucket."""
        return self.key_of(r, r.natural_key)

    def key_of(self, r: Reading, nk: bytes | None) -> Key:
        """:meth:`key` with the reading's natural key already derived (``nk``, or ``None``)."""
        if nk is None:
            days = (r.id.int >> 80) // _MS_PER_DAY  # the UUIDv7 timestamp
            return self._bucket(days // 7), self._keyring.blind(b"id|", r.id.bytes)
        assert r.device_time is not None
        days = r.device_time.toordinal() - _EPOCH_ORDINAL
        return self._bucket(days // 7), self._keyring.blind(b"nk|", nk)

    def keys_of(self, readings: Sequence[Reading], nks: Sequence[bytes | None]) -> list[Key]:
        """:meth:`key_of` of each reading with its natural key (``nks``, in order), in one
        pass: the labels' HMAC states are prepared once for the whole call and each key's
        HMAC runs inline (an append keys 500 readings; ``tests/buffer/test_buffer.py``
        checks the keys are :meth:`key_of`'s)."""
        by_nk = self._keyring.blinder(b"nk|")
        by_id = self._keyring.blinder(b"id|")
        nk_inner, id_inner, outer = by_nk.inner, by_id.inner, by_nk.outer
        buckets = self._buckets
        out: list[Key] = []
        append = out.append
        for r, nk in zip(readings, nks, strict=True):
            if nk is None:
                days = (r.id.int >> 80) // _MS_PER_DAY  # the UUIDv7 timestamp
                h = id_inner.copy()
                h.update(r.id.bytes)
            else:
                t = r.device_time
                assert t is not None
                days = t.toordinal() - _EPOCH_ORDINAL
                h = nk_inner.copy()
                h.update(nk)
            o = outer.copy()
            o.update(h.digest())
            week = days // 7
            bucket = buckets.get(week)
            if bucket is None:
                bucket = self._bucket(week)
            append((bucket, o.digest()[:_BLIND_BYTES]))
        return out

    def _buckets_keys(self, buckets: set[bytes]) -> dict[bytes, set[bytes]]:
        """The stored keys of each of ``buckets``: from the cache, the others in one query."""
        out: dict[bytes, set[bytes]] = {}
        missing: list[bytes] = []
        for b in buckets:
            got = self._cache.get(b)
            if got is None:
                missing.append(b)
            else:
                self._cache.move_to_end(b)
                out[b] = got
        conn = self._db.conn
        gens = self._generations() if missing else []
        for i in range(0, len(missing), _PARAMS):
            part = missing[i : i + _PARAMS]
            fresh: dict[bytes, set[bytes]] = {b: set() for b in part}
            marks = ",".join("?" * len(part))
            for gen in gens:  # a seek into each generation's range of the key
                for bucket, blob in conn.execute(
                    "SELECT bucket, keys FROM seen_log"  # noqa: S608 - placeholders only
                    f" WHERE gen = ? AND bucket IN ({marks})",
                    (gen, *part),
                ):
                    if type(bucket) is bytes and bucket in fresh and type(blob) is bytes:
                        fresh[bucket].update(
                            blob[j : j + MAC_BYTES] for j in range(0, len(blob), MAC_BYTES)
                        )
            for b, got in fresh.items():
                out[b] = self._cache[b] = got
        while len(self._cache) > _CACHED_BUCKETS:
            self._cache.popitem(last=False)
        return out

    def known(self, keys: Sequence[Key]) -> set[Key]:
        """Which of ``keys`` are already remembered."""
        by_bucket = self._buckets_keys({k[0] for k in keys})
        found = {k for k in keys if k[1][:MAC_BYTES] in by_bucket[k[0]]}
        tail = self._tail_set
        if tail:  # at most seen_tail_keys of them
            found.update(k for k in keys if (k[0], k[1][:MAC_BYTES]) in tail)
        if self._has_legacy():
            rest = [k for k in keys if k not in found]
            by_old = {k[1]: k for k in rest}
            old = list(by_old)
            conn = self._db.conn
            for i in range(0, len(old), _PARAMS):
                part = old[i : i + _PARAMS]
                marks = ",".join("?" * len(part))
                found.update(
                    by_old[row[0]]
                    for row in conn.execute(
                        f"SELECT nk FROM seen WHERE nk IN ({marks})",  # noqa: S608 - placeholders
                        part,
                    )
                )
        return found

    def _generations(self) -> list[object]:
        """The generations ``seen_log`` holds (at most ``seen_generations`` + 1), one index
        seek each: the table is keyed by ``(gen, bucket, id)``."""
        conn = self._db.conn
        out: list[object] = []
        gen = conn.execute("SELECT min(gen) FROM seen_log").fetchone()[0]
        while gen is not None:
            out.append(gen)
            gen = conn.execute("SELECT min(gen) FROM seen_log WHERE gen > ?", (gen,)).fetchone()[0]
        return out

    def _has_legacy(self) -> bool:
        if self._legacy is None:
            self._legacy = bool(
                self._db.conn.execute("SELECT EXISTS (SELECT 1 FROM seen)").fetchone()[0]
            )
        return self._legacy

    def load_tail(self, blob: object) -> None:
        """Take the tail the ledger row holds (at open)."""
        self._tail = unpack_tail(blob)
        self._tail_set = {(b, m) for _, b, m in self._tail}
        self._next_tail = None

    def tail_blob(self) -> bytes:
        """What ``ledger.seen_tail`` must hold at the end of the open transaction."""
        return pack_tail(self._tail if self._next_tail is None else self._next_tail)

    def add(self, tx: Tx, keys: Sequence[Key], gen: int) -> None:
        """Remember ``keys`` (inside ``tx``): in the tail, which the transaction's ledger
        write stores; an overflowing tail goes to ``seen_log``, one row per bucket."""
        base = self._tail if self._next_tail is None else self._next_tail
        added: dict[bytes, list[bytes]] = {}  # this call's keys by bucket
        for bucket, full in keys:
            macs = added.get(bucket)
            if macs is None:
                macs = added[bucket] = []
            macs.append(full[:MAC_BYTES])
        tail: Tail
        if len(base) + len(keys) > self._tail_keys:
            rows: dict[tuple[int, bytes], list[bytes]] = {}
            for g, bucket, mac in base:
                rows.setdefault((g, bucket), []).append(mac)
            for bucket, macs in added.items():
                rows.setdefault((gen, bucket), []).extend(macs)
            # One row per bucket, at the end of its (gen, bucket) range: the page the last
            # flush of this bucket wrote, so a flush writes one page of this table.
            self._db.conn.executemany(
                "INSERT INTO seen_log (gen, bucket, id, keys) VALUES (?1, ?2, (SELECT"
                " coalesce(max(id), 0) + 1 FROM seen_log WHERE gen = ?1 AND bucket = ?2), ?3)",
                [(g, b, b"".join(macs)) for (g, b), macs in rows.items()],
            )
            tail = []
        else:
            tail = base + [(gen, b, mac) for b, macs in added.items() for mac in macs]
        self._next_tail = tail

        def committed() -> None:
            self._tail = tail
            self._tail_set = {(b, m) for _, b, m in tail}
            self._next_tail = None
            for b, macs in added.items():
                cached = self._cache.get(b)
                if cached is not None:
                    cached.update(macs)

        def rolled_back() -> None:
            self._next_tail = None

        tx.after_commit(committed)
        tx.on_rollback(rolled_back)

    def forget_before(self, tx: Tx, next_seq: int, generations: int) -> bool:
        """Drop generations older than the last ``generations`` (inside ``tx``). Returns
        whether the tail changed: then the transaction must write the ledger row."""
        keep_from = (next_seq >> GENERATION_SHIFT) - generations
        if keep_from <= 0:
            return False
        conn = self._db.conn
        base = self._tail if self._next_tail is None else self._next_tail
        tail = [t for t in base if t[0] >= keep_from]
        changed = len(tail) < len(base)
        if changed:
            self._next_tail = tail

            def committed() -> None:
                self._tail = tail
                self._tail_set = {(b, m) for _, b, m in tail}
                self._next_tail = None

            tx.after_commit(committed)
            tx.on_rollback(lambda: setattr(self, "_next_tail", None))
        gone = conn.execute("DELETE FROM seen_log WHERE gen < ?", (keep_from,)).rowcount
        if self._has_legacy():
            conn.execute("DELETE FROM seen WHERE gen < ?", (keep_from,))
            tx.after_commit(lambda: setattr(self, "_legacy", None))
        if gone or changed:  # the cached buckets hold the tail's keys too
            tx.after_commit(self._cache.clear)
        return changed

    def clear(self) -> None:
        """Forget the cache and the tail (after a shred)."""
        self._cache.clear()
        self._tail, self._tail_set, self._next_tail = [], set(), None
        self._buckets.clear()
        self._legacy = None
