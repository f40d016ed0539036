"""The store's SQLite file: schema and migrations, pragmas, the one-process lock, transactions
with commit hooks, and what SQLite's errors mean for the store.

Durability (``security-and-reliability.md`` section 4.3): WAL with ``synchronous=FULL``, so a
returned ``COMMIT`` survives a power cut; ``secure_delete=ON`` so deleted rows are zeroed;
``auto_vacuum=INCREMENTAL`` so freed pages can be given back to the filesystem.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from agent.buffer.results import BufferConfig
from agent.errors import StorageFullError, StoreCorruptError, StoreError

# Primary result codes (https://www.sqlite.org/rescode.html); extended codes keep them in the
# low byte.
SQLITE_IOERR: Final = 10
SQLITE_CORRUPT: Final = 11
SQLITE_FULL: Final = 13
SQLITE_CANTOPEN: Final = 14
SQLITE_NOTADB: Final = 26

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


def error_code(exc: BaseException) -> int | None:
    """The primary SQLite result code of an exception, if it carries one."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def is_full(exc: BaseException) -> bool:
    """SQLITE_FULL: the filesystem (or the database's own limit) has no room."""
    return isinstance(exc, sqlite3.Error) and (
        error_code(exc) == SQLITE_FULL or "database or disk is full" in str(exc)
    )


def is_full_here(exc: BaseException, directory: Path, slack: int = 1 << 20) -> bool:
    """SQLITE_FULL, or what SQLite says about a full disk while opening: creating or growing
    the ``-shm``/``-wal`` fails as an I/O error or "cannot open". Those count as "full" when
    the filesystem really has (almost) no room left."""
    if is_full(exc):
        return True
    if not isinstance(exc, sqlite3.OperationalError) or error_code(exc) not in (
        SQLITE_IOERR,
        SQLITE_CANTOPEN,
    ):
        return False
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < slack


def is_corruption(exc: BaseException) -> bool:
    """Only these mean the file itself is damaged: SQLITE_CORRUPT and SQLITE_NOTADB.

    Everything else SQLite can say at open (full disk, I/O error, read-only, cannot open) is
    about the environment, not the file; setting a healthy store aside for it would take every
    undelivered reading out of delivery.
    """
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = error_code(exc)
    if code is not None:
        return code in (SQLITE_CORRUPT, SQLITE_NOTADB)
    text = str(exc)
    return "malformed" in text or "not a database" in text


def apply_pragmas(conn: sqlite3.Connection, cfg: BufferConfig) -> None:
    """The store's durability and privacy settings (also used by the benchmark's plain
    SQLite baseline, so that both run with the same ones)."""
    if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only before the first table
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA secure_delete = ON")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA journal_size_limit = 4194304")
    conn.execute(f"PRAGMA wal_autocheckpoint = {int(cfg.wal_autocheckpoint_pages)}")


def connect(path: Path, cfg: BufferConfig) -> sqlite3.Connection:
    """Open with the durability settings, check integrity, and migrate the schema.

    Raises:
        StoreCorruptError: ``integrity_check`` reported damage.
        sqlite3.Error: anything else SQLite reported (see :func:`is_corruption`).
    """
    if not path.exists():
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # -wal/-shm inherit 0600
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        apply_pragmas(conn, cfg)
        if cfg.check_integrity:
            result = [r[0] for r in conn.execute("PRAGMA integrity_check(20)")]
            if result != ["ok"]:
                raise StoreCorruptError("integrity_check failed: " + "; ".join(result[:3]))
        MIGRATIONS.apply(Database(conn))
    except BaseException:
        conn.close()
        raise
    return conn


class StoreLock:
    """One process per store: two writers would hand out the same sequence numbers."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise StoreError(f"store {path.stem} is open in another process") from None

    @property
    def held(self) -> bool:
        """Whether this process still holds the lock."""
        return self._fd >= 0

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases the flock). Safe to call twice."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


SET_ASIDE_INFIX: Final = ".set-aside-"


def set_aside(path: Path, reason: str) -> str:
    """Rename a damaged store and its WAL/SHM aside, keeping them; returns the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}{SET_ASIDE_INFIX}{reason}-{stamp}")
    n = 1
    while target.exists():  # two in the same second: never overwrite a kept store
        n += 1
        target = path.with_name(f"{path.name}{SET_ASIDE_INFIX}{reason}-{stamp}-{n}")
    for suffix in ("", "-wal", "-shm"):
        src = path.with_name(path.name + suffix)
        if src.exists():
            os.replace(src, target.with_name(target.name + suffix))
    return target.name


def set_aside_stores(path: Path) -> list[str]:
    """Names of every store set aside next to ``path`` (not their -wal/-shm), oldest first."""
    prefix = path.name + SET_ASIDE_INFIX
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return []
    return sorted(
        n for n in names if n.startswith(prefix) and not n.endswith(("-wal", "-shm", "-journal"))
    )


class Tx:
    """Hooks of one transaction.

    In-memory state (counters, caches, the active key) must follow the database: it changes
    only after ``COMMIT`` returned (``after_commit``), and whatever was changed early is undone
    when the transaction does not commit (``on_rollback``). A transaction retried after
    SQLITE_FULL therefore never counts twice.
    """

    __slots__ = ("_after", "_before", "_undo")

    def __init__(self) -> None:
        self._before: list[Callable[[], object]] = []
        self._after: list[Callable[[], object]] = []
        self._undo: list[Callable[[], object]] = []

    def before_commit(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` inside the transaction, just before ``COMMIT``."""
        self._before.append(fn)

    def after_commit(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` once ``COMMIT`` has returned."""
        self._after.append(fn)

    def on_rollback(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` if the transaction does not commit."""
        self._undo.append(fn)


class Db:
    """The store's connection and its ``BEGIN IMMEDIATE … COMMIT`` transactions."""

    def __init__(self, conn: sqlite3.Connection, on_full: Callable[[], object]) -> None:
        self.conn = conn
        self._on_full = on_full

    @contextlib.contextmanager
    def tx(self) -> Iterator[Tx]:
        """One write transaction; SQLITE_FULL becomes :class:`StorageFullError`."""
        tx = Tx()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield tx
                for fn in tx._before:
                    fn()
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        except BaseException as exc:
            for fn in reversed(tx._undo):
                fn()
            if is_full(exc):
                self._on_full()
                raise StorageFullError(
                    "the disk under the buffer is full; delivered rows are purged and bulk data "
                    "compacted automatically, free space on the data partition if it persists"
                ) from exc
            raise
        for fn in tx._after:
            fn()
