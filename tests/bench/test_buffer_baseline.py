"""The plain SQLite baseline of ``buffer.append_over_plain_sqlite`` has the store's schema.

``bench/buffer_bench.py`` divides the store's append rate by plain ``sqlite3`` inserts into
"the same table and indexes with the same pragmas". Both sides are built here on real files,
the store by :meth:`agent.buffer.Buffer.open` (every migration applied), the baseline by
:func:`bench.buffer_bench.plain_connect`, and compared through ``sqlite_master`` and
``PRAGMA``: a migration that changes the outbox table, its indexes or the pragmas fails this
test until the baseline follows.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.buffer import Buffer, BufferConfig, FileKeySource
from bench import buffer_bench

FILE_PRAGMAS = ("page_size", "auto_vacuum", "journal_mode")
"""Kept in the file: read back by a fresh connection."""
CONNECTION_PRAGMAS = (
    *FILE_PRAGMAS,
    "synchronous",
    "secure_delete",
    "temp_store",
    "journal_size_limit",
    "wal_autocheckpoint",
    "locking_mode",
    "cache_size",
    "mmap_size",
    "foreign_keys",
    "cell_size_check",
)
"""Settings of the connection that writes (each changes what an insert costs)."""


def _norm(sql: str | None) -> str | None:
    """``sql`` as text to compare: whitespace collapsed, identifier quotes dropped (a table
    renamed by a migration is stored as ``CREATE TABLE "readings"``)."""
    if sql is None:
        return None
    return re.sub(r"\s+", " ", sql.replace('"', "")).strip()


def _tables(conn: sqlite3.Connection) -> dict[str, str | None]:
    return {
        name: _norm(sql)
        for name, sql in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    }


def _columns(conn: sqlite3.Connection, table: str) -> list[tuple[object, ...]]:
    return [tuple(row) for row in conn.execute(f"PRAGMA table_xinfo({table})")]


def _indexes(conn: sqlite3.Connection, table: str) -> dict[str, tuple[object, ...]]:
    """Every index of ``table``: its SQL, whether unique and partial, and its columns."""
    out: dict[str, tuple[object, ...]] = {}
    for _, name, unique, origin, partial in conn.execute(f"PRAGMA index_list({table})"):
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()
        cols = tuple(tuple(r) for r in conn.execute(f"PRAGMA index_xinfo({name})"))
        out[name] = (_norm(sql), unique, origin, partial, cols)
    return out


def _pragmas(conn: sqlite3.Connection, names: tuple[str, ...]) -> dict[str, object]:
    return {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in names}


@pytest.fixture
def both(tmp_path: Path) -> Iterator[tuple[sqlite3.Connection, sqlite3.Connection]]:
    """The store's writing connection and the baseline's, each on its own new file."""
    (tmp_path / "store").mkdir()
    (tmp_path / "plain").mkdir()
    buf = Buffer.open(
        tmp_path / "store" / "buffer.db",
        FileKeySource(tmp_path / "store" / "kek"),
        config=BufferConfig(),  # as the benchmark opens it
    )
    plain = buffer_bench.plain_connect(tmp_path / "plain" / "plain.db")
    try:
        yield buf._conn, plain
    finally:
        plain.close()
        buf.close()


def test_baseline_tables_are_the_stores(
    both: tuple[sqlite3.Connection, sqlite3.Connection],
) -> None:
    store, plain = both
    store_tables, plain_tables = _tables(store), _tables(plain)
    assert plain_tables, "the baseline has no table"
    for table in plain_tables:
        assert table in store_tables, f"the store has no table {table!r}"
        assert _columns(plain, table) == _columns(store, table), table
        # AUTOINCREMENT and WITHOUT ROWID are not columns; they change what an insert writes.
        for clause in ("AUTOINCREMENT", "WITHOUT ROWID"):
            assert (clause in (plain_tables[table] or "").upper()) == (
                clause in (store_tables[table] or "").upper()
            ), f"{table}: {clause}"


def test_baseline_indexes_are_the_stores(
    both: tuple[sqlite3.Connection, sqlite3.Connection],
) -> None:
    store, plain = both
    for table in _tables(plain):
        assert _indexes(plain, table) == _indexes(store, table), table


def test_baseline_pragmas_are_the_stores(
    both: tuple[sqlite3.Connection, sqlite3.Connection],
) -> None:
    store, plain = both
    assert _pragmas(plain, CONNECTION_PRAGMAS) == _pragmas(store, CONNECTION_PRAGMAS)


def test_baseline_file_settings_are_the_stores(tmp_path: Path) -> None:
    """The page size, auto-vacuum and journal mode the files keep, read by new connections."""
    (tmp_path / "store").mkdir()
    Buffer.open(tmp_path / "store" / "buffer.db", FileKeySource(tmp_path / "store" / "kek")).close()
    buffer_bench.plain_connect(tmp_path / "plain.db").close()
    files = (tmp_path / "store" / "buffer.db", tmp_path / "plain.db")
    settings = []
    for path in files:
        conn = sqlite3.connect(path)
        try:
            settings.append(_pragmas(conn, FILE_PRAGMAS))
        finally:
            conn.close()
    assert settings[0] == settings[1]
