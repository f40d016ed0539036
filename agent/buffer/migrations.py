"""The store's schema migrations (sqlite-utils ``Migrations``), applied by
:func:`agent.buffer.schema.connect` only when one is pending.

This is the only module of the agent that imports sqlite-utils: an up-to-date store is opened
without it (:func:`agent.buffer.schema.migrations_pending` reads the migrations table with
plain :mod:`sqlite3`), which keeps sqlite-utils and its imports out of the daemon's memory.
A new migration is added here *and* to :data:`agent.buffer.schema.MIGRATION_NAMES`.
"""

from __future__ import annotations

import sqlite3

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from agent.buffer.schema import MIGRATION_SET

MIGRATIONS = Migrations(MIGRATION_SET)


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


@MIGRATIONS()
def m002_redundancy_and_ledger(db: Database) -> None:
    """Second copies of wrapped keys and refs, state tags, and the MAC'd ledger.

    * ``keys.wrapped_copy``: a second wrapping of each data key (its own nonce), so one
      damaged byte does not lose every row sealed with that key.
    * ``refs.copy``: a second sealed copy of each reference (``key_id (4) || nonce || ct``,
      its own key id), and ``h`` no longer unique: a damaged reference is replaced by a new
      row with the same blind index while the rows that depend on the old one keep it.
    * ``readings.tag``: HMAC of (seq, state, batch), see :mod:`agent.buffer.integrity`.
    * ``ledger``: one row; an empty body means "not written yet" (a store from before this
      migration), which the first open fills in from the file.

    Single statements, not ``executescript`` (which would commit half-way): the whole
    migration and its record are one transaction.
    """
    for sql in (
        "ALTER TABLE keys ADD COLUMN wrapped_copy BLOB",
        "CREATE TABLE refs_v2 (ref_id INTEGER PRIMARY KEY, h BLOB NOT NULL,"
        " key_id INTEGER NOT NULL, blob BLOB NOT NULL, copy BLOB)",
        "INSERT INTO refs_v2 (ref_id, h, key_id, blob) SELECT ref_id, h, key_id, blob FROM refs",
        "DROP TABLE refs",
        "ALTER TABLE refs_v2 RENAME TO refs",
        "CREATE INDEX refs_h ON refs(h)",
        "ALTER TABLE readings ADD COLUMN tag BLOB",
        "CREATE TABLE ledger (id INTEGER PRIMARY KEY CHECK (id = 1),"
        " body BLOB NOT NULL, mac BLOB NOT NULL)",
        "INSERT INTO ledger (id, body, mac) VALUES (1, x'', x'')",
    ):
        db.execute(sql)


@MIGRATIONS()
def m003_seen_log(db: Database) -> None:
    """De-duplication keys grouped per append and bucket (see :mod:`agent.buffer.dedup`);
    the old ``seen`` table stays for lookups until its rows expire, now with an index on
    ``gen`` so that expiring them is not a scan of the whole table every purge."""
    for sql in (
        "CREATE TABLE seen_log (id INTEGER PRIMARY KEY, gen INTEGER NOT NULL,"
        " bucket BLOB NOT NULL, keys BLOB NOT NULL)",
        "CREATE INDEX seen_log_bucket ON seen_log(bucket)",
        "CREATE INDEX seen_log_gen ON seen_log(gen)",
        "CREATE INDEX seen_gen ON seen(gen)",
    ):
        db.execute(sql)


@MIGRATIONS()
def m004_seen_log_clustered(db: Database) -> None:
    """``seen_log`` as one b-tree keyed by ``(gen, bucket, id)``, without a rowid or indexes.

    An append then writes one page of the de-duplication memory instead of three (the table
    and its ``bucket`` and ``gen`` indexes, each a whole page in the WAL at every commit:
    ``docs/buffer.md``, "Flash"). Expiring a generation is a range delete on the key's
    prefix; a lookup seeks each generation's range for the bucket. The rows keep their
    values, so the store de-duplicates exactly as before.
    """
    for sql in (
        "CREATE TABLE seen_log_v2 (gen INTEGER NOT NULL, bucket BLOB NOT NULL,"
        " id INTEGER NOT NULL, keys BLOB NOT NULL, PRIMARY KEY (gen, bucket, id)) WITHOUT ROWID",
        "INSERT INTO seen_log_v2 (gen, bucket, id, keys) SELECT gen, bucket, id, keys"
        " FROM seen_log",
        "DROP TABLE seen_log",
        "ALTER TABLE seen_log_v2 RENAME TO seen_log",
    ):
        db.execute(sql)


@MIGRATIONS()
def m005_readings_without_autoincrement(db: Database) -> None:
    """``readings`` without ``AUTOINCREMENT``; the sequence's floor kept in ``meta``.

    ``AUTOINCREMENT`` rewrote the ``sqlite_sequence`` page at every append: one of the five
    pages an append wrote to the WAL (``docs/buffer.md``, "Flash"). The store picks each
    ``seq`` itself (``Outbox.next_seq``), so all ``AUTOINCREMENT`` did was remember the
    highest one ever used after the top rows were purged. A ``seq`` must never be reused:
    it is bound into each row's AEAD associated data and state tag, and the de-duplication
    memory is kept per generation of ``seq``. That floor is now ``meta.seq_floor``, written
    here from ``sqlite_sequence`` and raised by every purge that deletes rows (the only
    statement that can lower ``max(seq)``); at open ``next_seq`` is one past the largest of
    the floor, ``max(seq)`` and the quarantine's. Rows keep their ``seq``, ciphertext and
    tags, so a store with pending rows is delivered exactly as before.
    """
    columns = "seq, lane, state, batch, key_id, blob, tag"
    for sql in (
        "CREATE TABLE readings_v2 (seq INTEGER PRIMARY KEY, lane INTEGER NOT NULL,"
        " state INTEGER NOT NULL, batch INTEGER, key_id INTEGER NOT NULL,"
        " blob BLOB NOT NULL, tag BLOB)",
        f"INSERT INTO readings_v2 ({columns}) SELECT {columns} FROM readings",  # noqa: S608
        "INSERT OR REPLACE INTO meta (k, v) SELECT 'seq_floor', max("
        " coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'readings'), 0),"
        " coalesce((SELECT max(seq) FROM readings), 0),"
        " coalesce((SELECT v FROM meta WHERE k = 'seq_floor'), 0))",
        "DROP TABLE readings",
        "ALTER TABLE readings_v2 RENAME TO readings",
        "CREATE INDEX readings_pending ON readings(lane, seq) WHERE state = 0",
        "CREATE INDEX readings_batch ON readings(batch) WHERE batch IS NOT NULL",
        "CREATE INDEX readings_acked ON readings(seq) WHERE state = 2",
    ):
        db.execute(sql)


@MIGRATIONS()
def m006_pending_index_without_chunks(db: Database) -> None:
    """``readings_pending`` without the continuous lane (``lane != 2``).

    Every append of an oximetry chunk wrote a page of that index to the WAL (one of the six
    pages of a chunk's commit; ``docs/buffer.md``, "Flash"). The continuous lane needs no
    index to be claimed oldest first: its rows are found in ``seq`` order, which is the
    table's own order, and a claim stops at its limit; what it steps over are the rows not
    yet purged and the pending rows of the bulk lane (claimed after it). The other lanes
    keep the index (alarms and spot readings are claimed first, however deep the backlog).
    Rows are not touched.
    """
    for sql in (
        "DROP INDEX readings_pending",
        "CREATE INDEX readings_pending ON readings(lane, seq) WHERE state = 0 AND lane != 2",
    ):
        db.execute(sql)


@MIGRATIONS()
def m007_seen_tail_in_the_ledger(db: Database) -> None:
    """``ledger.seen_tail``: the de-duplication keys of the latest appends, until they move
    to ``seen_log`` (:mod:`agent.buffer.dedup`). The ledger row is rewritten by every
    transaction, so an append that keeps its keys there writes no page of ``seen_log`` (one
    of the five pages of a chunk's commit after m006; ``docs/buffer.md``, "Flash"). NULL is
    an empty tail; nothing else changes."""
    db.execute("ALTER TABLE ledger ADD COLUMN seen_tail BLOB")


def apply_migrations(conn: sqlite3.Connection) -> None:
    """Apply every pending migration (each in its own transaction, with its record)."""
    MIGRATIONS.apply(Database(conn))
