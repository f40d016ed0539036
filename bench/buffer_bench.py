"""Buffer benchmarks: append rate, bytes on disk, memory with a 1M backlog, claim latency.

Run through ``make bench`` (``python -m bench.run``). Each figure is measured here, on this
machine, in one run; nothing is a timed test. RSS figures come from fresh child processes so
that the empty-store and the 1M-row store are compared under the same conditions.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from hw_mocks.synthetic import ReadingFactory  # on the path: bench/__init__.py

from agent.buffer import Buffer, BufferConfig, FileKeySource, codec
from agent.buffer.schema import apply_pragmas
from agent.model import Reading

ROOT = Path(__file__).resolve().parents[1]

BATCH = 500


def _open(d: Path) -> Buffer:
    return Buffer.open(d / "buffer.db", FileKeySource(d / "kek"), config=BufferConfig())


def _db_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.glob("buffer.db*") if p.suffix != ".reserve")


def _batches(make: Iterator[Reading], n: int) -> Iterator[list[Reading]]:
    batch: list[Reading] = []
    for _ in range(n):
        batch.append(next(make))
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _spots(seed: int) -> Iterator[Reading]:
    f = ReadingFactory(seed=seed)
    while True:
        yield f.bp()


def append_and_size(n_spot: int = 100_000, n_chunks: int = 2_000) -> dict[str, float]:
    """Append rate for spot readings (batched commits) and bytes on disk per reading/sample."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        buf = _open(d)
        buf._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        base = _db_bytes(d)
        batches = list(_batches(_spots(1), n_spot))  # made first: time only the buffer
        t0 = time.perf_counter()
        for b in batches:
            buf.append(b)
        elapsed = time.perf_counter() - t0
        buf._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        spot_bytes = (_db_bytes(d) - base) / n_spot
        f = ReadingFactory(seed=2)
        chunks = [f.oximetry_chunk(60) for _ in range(n_chunks)]
        before = _db_bytes(d)
        for i in range(0, len(chunks), 100):
            buf.append(chunks[i : i + 100])
        buf._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        sample_bytes = (_db_bytes(d) - before) / (n_chunks * 60)
        buf.close()
    return {
        "append_readings_per_s": round(n_spot / elapsed),
        "disk_bytes_per_spot_reading": round(spot_bytes, 1),
        "disk_bytes_per_continuous_sample": round(sample_bytes, 2),
    }


PLAIN_SCHEMA = (
    # The outbox table and its indexes as a new store has them after every migration
    # (agent.buffer.migrations: m005 dropped AUTOINCREMENT, m006 took the continuous lane
    # out of the pending index); nothing else. tests/bench/test_buffer_baseline.py checks
    # them against a freshly created store.
    "CREATE TABLE readings (seq INTEGER PRIMARY KEY, lane INTEGER NOT NULL,"
    " state INTEGER NOT NULL, batch INTEGER, key_id INTEGER NOT NULL, blob BLOB NOT NULL,"
    " tag BLOB)",
    "CREATE INDEX readings_pending ON readings(lane, seq) WHERE state = 0 AND lane != 2",
    "CREATE INDEX readings_batch ON readings(batch) WHERE batch IS NOT NULL",
    "CREATE INDEX readings_acked ON readings(seq) WHERE state = 2",
)
"""The plain baseline's schema (:func:`plain_connect`)."""


def plain_connect(path: Path) -> sqlite3.Connection:
    """The plain sqlite3 baseline at ``path``: the store's pragmas (:func:`apply_pragmas`
    with the default :class:`BufferConfig`: page size, WAL, ``synchronous=FULL``, ...) and
    :data:`PLAIN_SCHEMA`."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        apply_pragmas(conn, BufferConfig())
        for sql in PLAIN_SCHEMA:
            conn.execute(sql)
    except BaseException:
        conn.close()
        raise
    return conn


def _plain_rate(
    d: Path, rows: list[bytes], batch: int, readings: list[Reading] | None = None
) -> tuple[float, float]:
    """Plain sqlite3: insert ``rows`` (plaintext) with the store's pragmas and batching; with
    ``readings``, encode each of them inside the timed loop instead (the same bytes).
    Rows per second of wall clock and of this process's CPU time."""
    conn = plain_connect(d / "plain.db")
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        seq = 1
        for i in range(0, len(rows), batch):
            if readings is not None:
                chunk = [codec.encode_reading(r, 1, 2) for r in readings[i : i + batch]]
            else:
                chunk = rows[i : i + batch]
            part = [(seq + j, 1, 1, pt) for j, pt in enumerate(chunk)]
            seq += len(part)
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO readings (seq, lane, state, key_id, blob) VALUES (?, ?, 0, ?, ?)",
                part,
            )
            conn.execute("COMMIT")
        return len(rows) / (time.perf_counter() - t0), len(rows) / (time.process_time() - c0)
    finally:
        conn.close()


def _buffer_rate(d: Path, batches: list[list[Reading]]) -> tuple[float, float]:
    buf = _open(d)
    try:
        n = sum(len(b) for b in batches)
        t0, c0 = time.perf_counter(), time.process_time()
        for b in batches:
            buf.append(b)
        return n / (time.perf_counter() - t0), n / (time.process_time() - c0)
    finally:
        buf.close()


def append_over_plain(n: int = 50_000, rounds: int = 5) -> dict[str, float]:
    """Encrypted appends against plain sqlite3 inserts of the same plaintext rows, same
    pragmas, same 500-row commits, measured in turn in the same run (absolute rates on this
    shared machine swing 3x with load; the ratio is what is compared). Median of ``rounds``;
    the order alternates between rounds."""
    f = ReadingFactory(seed=5)
    readings = [f.bp() for _ in range(n)]
    batches = [readings[i : i + BATCH] for i in range(0, n, BATCH)]
    # The rows as the store encodes them (one device and one boot: references 1 and 2).
    rows = [codec.encode_reading(r, 1, 2) for r in readings]
    assert rows == [codec.encode_reading(r, 1, 2) for r in readings]  # deterministic
    enc: list[tuple[float, float]] = []
    plain: list[tuple[float, float]] = []
    plain_enc: list[tuple[float, float]] = []
    for k in range(rounds):
        with (
            tempfile.TemporaryDirectory() as a,
            tempfile.TemporaryDirectory() as b,
            tempfile.TemporaryDirectory() as c,
        ):
            runs: list[tuple[list[tuple[float, float]], Callable[[], tuple[float, float]]]] = [
                (enc, functools.partial(_buffer_rate, Path(a), batches)),
                (plain, functools.partial(_plain_rate, Path(b), rows, BATCH)),
                (plain_enc, functools.partial(_plain_rate, Path(c), rows, BATCH, readings)),
            ]
            for out, run in runs[k % 3 :] + runs[: k % 3]:
                out.append(run())
    e, p, pe = (statistics.median(x for x, _ in r) for r in (enc, plain, plain_enc))
    e_cpu, p_cpu = (statistics.median(c for _, c in r) for r in (enc, plain))
    return {
        "append_over_plain_sqlite": round(e / p, 3),
        "append_encrypted_per_s_same_run": round(e),
        "insert_plain_sqlite_per_s_same_run": round(p),
        # The same, with the plain side also encoding each reading in its timed loop: what
        # encryption, de-duplication and the outbox's bookkeeping add on top of encoding.
        "append_over_plain_sqlite_encoding_included": round(e / pe, 3),
        "insert_plain_sqlite_encoding_included_per_s_same_run": round(pe),
        # The same ratio in CPU time of this process (no goal): what the code costs, without
        # the fsync waits and the other processes that move the wall-clock ratio from run to run.
        "append_over_plain_sqlite_cpu": round(e_cpu / p_cpu, 3),
        "append_cpu_us_per_reading": round(1e6 / e_cpu, 2),
        "insert_plain_cpu_us_per_row": round(1e6 / p_cpu, 2),
    }


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def child_probe(state: str) -> None:
    """In a fresh process: open the store, claim and ack 10 batches, print RSS and timings."""
    d = Path(state)
    t0 = time.perf_counter()
    buf = _open(d)
    opened = time.perf_counter() - t0
    claims = []
    for _ in range(10):
        t = time.perf_counter()
        c = buf.claim(1000)
        claims.append((time.perf_counter() - t) * 1000)
        if c is not None:
            buf.ack(c.batch_id)
    print(json.dumps({"rss_kb": _rss_kb(), "open_s": opened, "claim_ms": claims}))
    buf.close()


def _probe(d: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'hw-mocks'}"}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from bench.buffer_bench import child_probe; child_probe({str(d)!r})",
        ],
        check=True,
        capture_output=True,
        env=env,
        cwd=ROOT,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def backlog(n: int = 1_000_000) -> dict[str, float]:
    """RSS of a process holding a 1M-reading backlog vs an empty store; claim latency."""
    with tempfile.TemporaryDirectory() as tmp:
        empty, full = Path(tmp) / "empty", Path(tmp) / "full"
        empty.mkdir()
        full.mkdir()
        _open(empty).close()
        buf = _open(full)
        rss_before = _rss_kb()
        for b in _batches(_spots(3), n):
            buf.append(b)
        rss_fill = _rss_kb() - rss_before
        buf.close()
        e = _probe(empty)
        f = _probe(full)
        # Claims from the empty store return nothing; only the full store's count.
        claim = statistics.median(f["claim_ms"])  # type: ignore[arg-type]
        return {
            "rss_growth_mb_1m": round((f["rss_kb"] - e["rss_kb"]) / 1024, 2),
            "rss_growth_mb_while_filling_1m": round(rss_fill / 1024, 2),
            "claim_batch_ms": round(claim, 2),
            "open_with_integrity_check_s_1m": round(f["open_s"], 2),
            "file_mb_1m": round(_db_bytes(full) / 2**20, 1),
        }


GOALS: dict[str, tuple[str, float]] = {
    "append_readings_per_s": (">=", 20_000),
    "disk_bytes_per_spot_reading": ("<=", 256),
    "disk_bytes_per_continuous_sample": ("<=", 8),
    "rss_growth_mb_1m": ("<=", 20),
    "append_over_plain_sqlite": (">=", 0.5),
}


def run(backlog_size: int = 1_000_000) -> dict[str, float]:
    """All buffer figures for ``bench/report.json``."""
    return {**append_over_plain(), **append_and_size(), **backlog(backlog_size)}
