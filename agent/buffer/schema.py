"""The store's SQLite file: which migrations it needs (applied by
:mod:`agent.buffer.migrations`), pragmas, the one-process lock, transactions with commit hooks,
and what SQLite's errors mean for the store.

Durability (``security-and-reliability.md`` section 4.3): WAL with ``synchronous=FULL``, so a
returned ``COMMIT`` survives a power cut; ``secure_delete=ON`` so deleted rows are zeroed;
``auto_vacuum`` (``BufferConfig.auto_vacuum``) ``NONE`` for a new store since 7 December 2026:
freed pages stay in the file and are reused by the next rows (no pointer-map page in every
commit that grows the file); a store made before keeps ``INCREMENTAL``, which gives freed
pages back to the filesystem at every purge.
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

from agent.buffer.results import BufferConfig
from agent.errors import StorageFullError, StoreCorruptError, StoreError

# Primary result codes (https://www.sqlite.org/rescode.html); extended codes keep them in the
# low byte.
SQLITE_IOERR: Final = 10
SQLITE_CORRUPT: Final = 11
SQLITE_FULL: Final = 13
SQLITE_CANTOPEN: Final = 14
SQLITE_NOTADB: Final = 26

MIGRATION_SET: Final = "dho-buffer"
MIGRATION_NAMES: Final = (
    "m001_initial",
    "m002_redundancy_and_ledger",
    "m003_seen_log",
    "m004_seen_log_clustered",
    "m005_readings_without_autoincrement",
    "m006_pending_index_without_chunks",
    "m007_seen_tail_in_the_ledger",
)
"""The schema's migrations (:mod:`agent.buffer.migrations`), in order; kept here so that opening
an up-to-date store need not import sqlite-utils (``tests/buffer/test_buffer.py`` checks that
the two agree)."""
MIGRATIONS_TABLE: Final = "_sqlite_migrations"
"""Where sqlite-utils records the applied migrations (``Migrations.migrations_table``)."""


def migrations_pending(conn: sqlite3.Connection) -> bool:
    """Whether a migration of :data:`MIGRATION_NAMES` is not recorded as applied (a new store,
    or one from an older release). Read-only; plain :mod:`sqlite3`."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (MIGRATIONS_TABLE,)
    ).fetchone()
    if exists is None:
        return True
    applied = {
        row[0]
        for row in conn.execute(
            f"SELECT name FROM {MIGRATIONS_TABLE} WHERE migration_set = ?",  # noqa: S608
            (MIGRATION_SET,),
        )
    }
    return not applied.issuperset(MIGRATION_NAMES)


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
    SQLite baseline, so that both run with the same ones).

    ``cfg.exclusive_lock``: ``locking_mode=EXCLUSIVE`` before the first access of the file, so
    that the WAL index lives in this connection's heap memory instead of the ``-shm`` file on
    the card (``docs/buffer.md``, "Flash"). The connection then holds the file's lock until it
    closes: no other connection, in this process or another, can read the store meanwhile.
    """
    if cfg.exclusive_lock:
        # Must be the first statement: the first access of a WAL file in NORMAL mode creates
        # the shared-memory index, and the mode cannot leave it afterwards.
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    if conn.execute("PRAGMA page_count").fetchone()[0] == 0:  # only before the first table
        # Every commit writes each page it touched to the WAL whole: an append of one chunk
        # touches 4 (row, pending index, ledger, de-duplication log); see
        # BufferConfig.page_size and docs/buffer.md, "Flash".
        conn.execute(f"PRAGMA page_size = {int(cfg.page_size)}")  # first: auto_vacuum fixes it
        # NONE: no pointer map, whose page every commit that takes a new page also wrote
        # (docs/buffer.md, "Flash"); a store keeps what it was made with (changing it needs a
        # VACUUM, which no migration does).
        mode = "INCREMENTAL" if cfg.auto_vacuum == "incremental" else "NONE"
        conn.execute(f"PRAGMA auto_vacuum = {mode}")
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
        if migrations_pending(conn):
            # sqlite-utils (and what it imports: click, pluggy, dateutil, numpy where it is
            # installed; about 11 MB resident, 33 MB with numpy) is loaded only to migrate.
            from agent.buffer.migrations import apply_migrations

            apply_migrations(conn)
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
