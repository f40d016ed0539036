"""The buffer's thread: calls in order, ``append_first`` ahead of the waiting ones, and the
view a driver asks before a transfer from a device that deletes what it sent."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
from hw_mocks.synthetic import ReadingFactory

from agent.buffer import AppendResult, AsyncBuffer, BufferConfig, FileKeySource
from agent.errors import StorageFullError
from agent.model import Reading


async def _open(tmp_path: Path) -> AsyncBuffer:
    return await AsyncBuffer.open(
        tmp_path / "buffer.db",
        FileKeySource(tmp_path / "buffer.kek"),
        config=BufferConfig(reserve_bytes=64 * 1024),
    )


async def test_append_first_runs_before_the_calls_waiting(
    tmp_path: Path, factory: ReadingFactory
) -> None:
    ab = await _open(tmp_path)
    try:
        release = threading.Event()
        running = asyncio.ensure_future(ab._run(release.wait, 10))
        await asyncio.sleep(0.05)
        done: list[str] = []
        waiting = [asyncio.ensure_future(ab.append([factory.bp()])) for _ in range(5)]
        for w in waiting:
            w.add_done_callback(lambda _: done.append("in order"))
        first = asyncio.ensure_future(ab.append_first([factory.bp()]))
        first.add_done_callback(lambda _: done.append("first"))
        probe = asyncio.ensure_future(ab.probe_first())
        await asyncio.sleep(0.6)
        assert ab.busy_for() >= 0.6
        assert ab.transfer_hold(0.5) == "store-busy"
        assert not probe.done()
        release.set()
        async with asyncio.timeout(10):
            await asyncio.gather(running, first, probe, *waiting)
        assert done[0] == "first"
        assert ab.busy_for() == 0.0
        assert ab.transfer_hold() is None
        assert sum((await ab.stats()).pending_by_lane.values()) == 6
    finally:
        await ab.close()


async def test_a_cancelled_call_that_had_not_started_never_runs(
    tmp_path: Path, factory: ReadingFactory
) -> None:
    ab = await _open(tmp_path)
    try:
        release = threading.Event()
        running = asyncio.ensure_future(ab._run(release.wait, 10))
        await asyncio.sleep(0.05)
        cancelled = asyncio.ensure_future(ab.append([factory.bp()]))
        kept = asyncio.ensure_future(ab.append_first([factory.spo2_spot()]))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        release.set()
        async with asyncio.timeout(10):
            await asyncio.gather(running, kept)
        assert sum((await ab.stats()).pending_by_lane.values()) == 1
        assert ab.busy_for() == 0.0
    finally:
        await ab.close()


async def test_a_failed_append_holds_transfers_until_one_succeeds(
    tmp_path: Path, factory: ReadingFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    ab = await _open(tmp_path)
    try:
        real = ab.sync.append
        full = True

        def append(readings: Sequence[Reading]) -> AppendResult:
            if full:
                raise StorageFullError("the filesystem is full")
            return real(readings)

        monkeypatch.setattr(ab.sync, "append", append)
        with pytest.raises(StorageFullError):
            await ab.append([factory.bp()])
        assert ab.transfer_hold() == "store-failing"
        full = False
        await ab.append_first([factory.bp()])
        assert ab.transfer_hold() is None
    finally:
        await ab.close()
