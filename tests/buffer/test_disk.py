"""Disk cap, compaction of the lowest lanes, and a filesystem that really runs out of space."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hw_mocks.synthetic import ReadingFactory

from agent.buffer import Buffer, BufferConfig, FileKeySource
from agent.errors import BufferFullError, StorageFullError, StoreError
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
        # A clinical alarm is still stored on the full disk (a quarter of the reserve is
        # its own); the last quarter stays for draining.
        alarm = factory.bp(200, lane=Lane.ALARM)
        assert b.append([alarm]).stored == 1
        stored.append(alarm)
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


def _fill(fs: Path) -> Path:
    """Fill the filesystem to the last byte with a filler file."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\xff" * size)
    finally:
        os.close(fd)
    st = os.statvfs(fs)
    assert st.f_bavail == 0, "the filesystem did not fill"
    return filler


def _all_ids(b: Buffer) -> list[str]:
    out = []
    while (c := b.claim(500)) is not None:
        out += [r.id.hex for r in c.readings]
        b.ack(c.batch_id)
    return out


def _store_with_backlog(fs: Path, factory: ReadingFactory, cfg: BufferConfig) -> list[str]:
    b = Buffer.open(fs / "buffer.db", FileKeySource(fs / "kek"), config=cfg)
    readings = [factory.bp() for _ in range(400)] + [factory.oximetry_chunk(60) for _ in range(20)]
    for i in range(0, len(readings), 50):
        b.append(readings[i : i + 50])
    assert b.claim(30) is not None  # claimed, unacknowledged: the next open must write
    b.close()
    return sorted(r.id.hex for r in readings)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small filesystem needs root")
def test_the_default_reserve_is_made_on_a_small_filesystem(
    tmp_path: Path, factory: ReadingFactory
) -> None:
    with _tiny_filesystem(tmp_path / "tiny", "4m") as fs:
        b = Buffer.open(fs / "buffer.db", FileKeySource(fs / "kek"), config=BufferConfig())
        try:
            size = (fs / "buffer.db.reserve").stat().st_size
            assert 128 * 1024 <= size <= 1024 * 1024  # a quarter of 4 MiB at most, not 0
            checkpoint = b._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
            page = b._conn.execute("PRAGMA page_size").fetchone()[0]
            assert checkpoint * page * 2 <= size  # a checkpoint fits in half the reserve
        finally:
            b.close()


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small filesystem needs root")
@pytest.mark.parametrize("reserve", ["kept", "gone"])
def test_restart_on_a_100_percent_full_disk_never_sets_a_healthy_store_aside(
    tmp_path: Path, factory: ReadingFactory, reserve: str
) -> None:
    """The class: an open that fails for lack of space is not corruption. With the reserve
    the store opens (the reserve is given back); without it the open fails with a typed
    error and the store is left exactly as it was; either way nothing is set aside and,
    once there is room, every reading is delivered."""
    cfg = BufferConfig()
    with _tiny_filesystem(tmp_path / "tiny", "4m") as fs:
        ids = _store_with_backlog(fs, factory, cfg)
        if reserve == "gone":
            (fs / "buffer.db.reserve").unlink()
        filler = _fill(fs)
        keys = FileKeySource(fs / "kek")
        try:
            b = Buffer.open(fs / "buffer.db", keys, config=cfg)
        except StorageFullError:
            assert reserve == "gone"
        else:
            try:
                s = b.stats()
                assert not s.set_aside
                assert "storage.full" in s.alarms
                assert s.pending == len(ids)  # recovered: the claimed rows are pending again
            finally:
                b.close()
        assert not [p.name for p in fs.iterdir() if ".set-aside-" in p.name]
        filler.unlink()
        b = Buffer.open(fs / "buffer.db", keys, config=cfg)
        try:
            s = b.stats()
            assert not s.set_aside
            assert "store.set-aside" not in s.alarms
            assert sorted(_all_ids(b)) == ids
            assert b.append([factory.bp()]).stored == 1
        finally:
            b.close()


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small filesystem needs root")
def test_a_read_only_filesystem_at_open_is_an_error_not_corruption(
    tmp_path: Path, factory: ReadingFactory
) -> None:
    cfg = BufferConfig()
    with _tiny_filesystem(tmp_path / "tiny", "4m") as fs:
        ids = _store_with_backlog(fs, factory, cfg)
        before = sorted(p.name for p in fs.iterdir())
        subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
        try:
            with pytest.raises((sqlite3.Error, OSError, StoreError)):
                Buffer.open(fs / "buffer.db", FileKeySource(fs / "kek"), config=cfg)
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(fs)], check=True)
        assert sorted(p.name for p in fs.iterdir()) == before
        b = Buffer.open(fs / "buffer.db", FileKeySource(fs / "kek"), config=cfg)
        try:
            assert not b.stats().set_aside
            assert sorted(_all_ids(b)) == ids
        finally:
            b.close()


def test_a_corrupt_store_is_set_aside_reported_at_every_start_and_its_readings_delivered(
    store_path: Path, keys: FileKeySource, config: BufferConfig, factory: ReadingFactory
) -> None:
    b = Buffer.open(store_path, keys, config=config)
    readings = [factory.bp() for _ in range(600)]
    b.append(readings)
    leaves = [
        r[0]
        for r in b._conn.execute(
            "SELECT pageno FROM dbstat WHERE name = 'readings' AND pagetype = 'leaf'"
            " ORDER BY pageno"
        )
    ]
    page = int(b._conn.execute("PRAGMA page_size").fetchone()[0])
    b.close()
    data = bytearray(store_path.read_bytes())
    leaf = leaves[len(leaves) // 2] - 1  # a leaf page of the readings table, mid-table
    for i in range(leaf * page + 100, leaf * page + 300):
        data[i] = 0xA5
    store_path.write_bytes(bytes(data))
    b = Buffer.open(store_path, keys, config=config)
    try:
        s = b.stats()
        assert len(s.set_aside) == 1
        assert "store.set-aside" in s.alarms
        assert s.salvaged > 0
        # Bounded per call: the rest comes with the following purges.
        while b.purge() >= 0 and b.stats().salvaged and b._salvage.pending():
            pass
        delivered = _all_ids(b)
    finally:
        b.close()
    assert len(delivered) == len(set(delivered))
    assert set(delivered) <= {r.id.hex for r in readings}
    assert len(delivered) >= 600 - 60  # only what sat on the damaged page(s) is lost
    for _ in range(2):  # still reported, still kept, never imported twice
        b = Buffer.open(store_path, keys, config=config)
        try:
            s = b.stats()
            assert "store.set-aside" in s.alarms
            assert (store_path.parent / s.set_aside[0]).exists()
            assert s.pending == 0
        finally:
            b.close()
