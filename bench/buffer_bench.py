"""Buffer benchmarks: append rate, bytes on disk, memory with a 1M backlog, claim latency.

Run through ``make bench`` (``python -m bench.run``). Each figure is measured here, on this
machine, in one run; nothing is a timed test. RSS figures come from fresh child processes so
that the empty-store and the 1M-row store are compared under the same conditions.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from agent.buffer import Buffer, BufferConfig, FileKeySource
from agent.model import Reading

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hw-mocks"))

from hw_mocks.synthetic import ReadingFactory  # noqa: E402

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
}


def run(backlog_size: int = 1_000_000) -> dict[str, float]:
    """All buffer figures for ``bench/report.json``."""
    return {**append_and_size(), **backlog(backlog_size)}
