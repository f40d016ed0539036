"""Disk cap, compaction of the lowest lanes, and a filesystem that really runs out of space."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hw_mocks.synthetic import ReadingFactory

from agent.buffer import Buffer, BufferConfig, FileKeySource
from agent.errors import BufferFullError, StorageFullError
from agent.model import STATUS_COMPACTED, Lane, Reading


def test_cap_compacts_continuous_then_refuses_it_but_never_spot(
    store_path: Path, keys: FileKeySource, factory: ReadingFactory
) -> None:
    cfg = BufferConfig(cap_bytes=600 * 1024, reserve_bytes=0)
    b = Buffer.open(store_path, keys, config=cfg)
    try:
        chunks = []
        refused = None
        for _ in range(2000):
            r = factory.oximetry_chunk(300)
            try:
                b.append([r])
            except BufferFullError as exc:
                refused = exc
                break
            chunks.append(r)
        assert refused is not None, "the cap was never reached"
        assert refused.lane == "continuous"
        s = b.stats()
        assert {"buffer.pressure", "buffer.full"} <= set(s.alarms)
        # Spot readings and alarms are still accepted above the cap.
        spots = [factory.bp() for _ in range(200)]
        alarm = factory.bp(200, lane=Lane.ALARM)
        for r in [*spots, alarm]:
            assert b.append([r]).stored == 1
        # Nothing was dropped: every chunk is still there, the oldest compacted.
        got = {}
        while (c := b.claim(500)) is not None:
            got.update({r.id: r for r in c.readings})
            b.ack(c.batch_id)
        assert set(got) == {r.id for r in [*chunks, *spots, alarm]}
        compacted = [got[r.id] for r in chunks if STATUS_COMPACTED in got[r.id].status]
        assert compacted, "no chunk was compacted"
        first = compacted[0]
        assert first.raw == ()
        assert first.samples is not None
        assert first.samples.interval_ms == 60_000
        assert {ch.stat for ch in first.samples.channels} == {"min", "mean", "max"}
        assert all(got[r.id] == r for r in spots)  # spot readings untouched
        # Delivering the backlog relieves the pressure and bulk data is accepted again.
        b.purge()
        assert b.append([factory.oximetry_chunk(300)]).stored == 1
        assert "buffer.full" not in b.stats().alarms
    finally:
        b.close()


def test_compaction_order_is_bulk_before_continuous(buf: Buffer, factory: ReadingFactory) -> None:
    bulk = factory.oximetry_chunk(600, lane=Lane.BULK)
    cont = factory.oximetry_chunk(600)
    buf.append([cont, bulk])
    assert buf.compact(Lane.BULK) == 1
    c = buf.claim(5)
    assert c is not None
    by_id = {r.id: r for r in c.readings}
    assert STATUS_COMPACTED in by_id[bulk.id].status
    assert STATUS_COMPACTED not in by_id[cont.id].status


@contextlib.contextmanager
def _tiny_filesystem(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
            check=True,
            capture_output=True,
        )
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small filesystem needs root")
def test_full_filesystem_is_handled_not_fatal(tmp_path: Path, factory: ReadingFactory) -> None:
    with _tiny_filesystem(tmp_path / "tiny", "3m") as fs:
        keys = FileKeySource(fs / "kek")
        cfg = BufferConfig(reserve_bytes=1024 * 1024, wal_autocheckpoint_pages=64)
        b = Buffer.open(fs / "buffer.db", keys, config=cfg)
        stored = []
        error = None
        for _ in range(20_000):
            r = factory.bp()
            try:
                b.append([r])
            except StorageFullError as exc:
                error = exc
                break
            stored.append(r)
        assert error is not None, "the filesystem never filled"
        assert (fs / "buffer.db.reserve").stat().st_size <= cfg.reserve_bytes // 2  # half used
        assert "storage.full" in b.stats().alarms
        assert b.integrity_ok()
        # Delivering frees space; capture resumes without a restart.
        c = b.claim(2000)
        assert c is not None
        b.ack(c.batch_id)
        b.purge()
        assert b.append([factory.bp()]).stored == 1
        b.close()
        # Every reading whose append returned is intact after a reopen.
        b = Buffer.open(fs / "buffer.db", keys, config=cfg)
        try:
            assert b.integrity_ok()
            rest: list[Reading] = []
            while (c := b.claim(2000)) is not None:
                rest += c.readings
                b.ack(c.batch_id)
            assert len(rest) == len(stored) + 1 - 2000
        finally:
            b.close()
