"""A device that deletes what it sent (A&D) against a buffer that is busy or failing.

The A&D cuff deletes its records once BlueZ has confirmed the indications (BlueZ confirms
them itself, before the driver sees them), so a record it sent exists only in the agent's
memory until the buffer has appended it; a SIGKILL then loses it. The FULL fault campaign
lost A&D records exactly so (``docs/proof.md``): the buffer's one thread busy with a hundred
cuffs' downloads, then its disk full, then a kill. The invariant tested here: **whenever the
cuff has deleted a record, the buffer has committed it** (so a kill at any moment loses
nothing). The buffer's thread is held by a call that blocks, as a long backlog does.

Real bleak against the mock BlueZ, real encrypted buffer; plus the driver's flusher shutdown
(a cancellation arriving while the flusher stops is not swallowed).
"""

import asyncio
import threading
from collections.abc import Sequence
from datetime import datetime

import pytest
from hw_mocks.bluez import MockBlueZ
from hw_mocks.bluez.devices import AndCuff
from hw_mocks.bluez.payloads import BloodPressureRecord

from agent.buffer import AppendResult, AsyncBuffer
from agent.clock import SystemClock
from agent.drivers.ble import DeviceFamily, DeviceState, ErrorClass
from agent.drivers.ble.collector import Collector
from agent.drivers.ble.driver import DeviceWorker
from agent.errors import StorageFullError
from agent.model import Reading
from tests.ble.driver_support import (
    WAIT,
    and_driver,
    assignment,
    bp_expected,
    bp_key,
    bp_records,
    busy,
    eventually,
    fast_options,
    running,
    stored,
)
from tests.ble.driver_support import hang_guard as hang_guard  # autouse fixture
from tests.ble.driver_support import store as store  # the fixture


def _records(n: int) -> list[BloodPressureRecord]:
    return bp_records(n, datetime(2026, 11, 30, 11, 0, 0))


async def test_a_cuff_that_deletes_is_not_served_while_the_buffer_is_busy(
    bluez: MockBlueZ, store: AsyncBuffer
) -> None:
    records = _records(5)
    cuff = AndCuff(records=records, frame_interval=0.02)
    driver = and_driver(bluez, store, cuff)
    status = driver.workers[0].status
    async with running(driver) as task:
        async with busy(store):
            await eventually(lambda: status.last_seen is not None, task=task, driver=driver)
            await asyncio.sleep(1.5)  # on main: connected, received, cuff deleted them all
            deleted = len(records) - len(cuff.records)
            assert deleted == 0, (
                f"the cuff deleted {deleted} records the buffer has not committed "
                "(a kill now loses them)"
            )
            assert cuff.transfers_completed == 0
            assert status.state is DeviceState.HELD
            assert status.connections == 0
        await eventually(lambda: cuff.records == [], task=task, driver=driver)
        await eventually(lambda: status.readings_stored == 5, task=task, driver=driver)
    assert sorted(bp_key(r) for r in await stored(store)) == bp_expected(records)
    assert status.held_for_store >= 1


async def test_the_driver_hangs_up_when_the_buffer_stalls_mid_transfer(
    bluez: MockBlueZ, store: AsyncBuffer
) -> None:
    records = _records(20)
    cuff = AndCuff(records=records, frame_interval=0.1)  # a 2 s transfer
    driver = and_driver(bluez, store, cuff, store_wait=0.3)
    status = driver.workers[0].status
    async with running(driver) as task:
        await eventually(lambda: status.readings_stored >= 2, task=task, driver=driver)
        async with busy(store):  # the buffer stops taking records mid-transfer
            await cuff.wait_for("disconnect", seconds=WAIT)
            assert len(cuff.records) == 20, "the cuff completed a transfer we only held"
            assert cuff.transfers_completed == 0
            assert status.hung_up_for_store == 1
        await eventually(lambda: cuff.records == [], task=task, driver=driver)
        await eventually(lambda: status.readings_stored == 20, task=task, driver=driver)
    assert sorted(bp_key(r) for r in await stored(store)) == bp_expected(records)
    assert status.last_error_class is ErrorClass.STORE
    assert status.duplicates >= 2  # what came before the hang-up came again, recognised


async def test_the_driver_hangs_up_when_appends_fail_mid_transfer(
    bluez: MockBlueZ, store: AsyncBuffer, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = _records(20)
    cuff = AndCuff(records=records, frame_interval=0.1)
    driver = and_driver(bluez, store, cuff)
    status = driver.workers[0].status
    real_append = store.sync.append
    full = threading.Event()

    def append(readings: Sequence[Reading]) -> AppendResult:
        if full.is_set():
            raise StorageFullError("the filesystem is full")
        return real_append(readings)

    monkeypatch.setattr(store.sync, "append", append)
    async with running(driver) as task:
        await eventually(lambda: status.readings_stored >= 2, task=task, driver=driver)
        full.set()  # the disk fills up mid-transfer
        await cuff.wait_for("disconnect", seconds=WAIT)
        assert len(cuff.records) == 20, "the cuff completed a transfer we only held"
        assert status.hung_up_for_store == 1
        assert store.transfer_hold() == "store-failing"
        await asyncio.sleep(0.5)
        assert cuff.transfers_completed == 0  # not served again while appends fail
        full.clear()  # space again: the readings held are stored, then the cuff is served
        await eventually(lambda: cuff.records == [], task=task, driver=driver)
        await eventually(lambda: status.readings_stored == 20, task=task, driver=driver)
    assert sorted(bp_key(r) for r in await stored(store)) == bp_expected(records)


class _Sink:
    async def append(self, readings: Sequence[Reading]) -> AppendResult:
        return AppendResult(len(readings), 0)


async def test_a_cancel_while_the_flusher_stops_is_not_swallowed() -> None:
    a = assignment(DeviceFamily.AND_BPM, "00:09:1F:4B:6B:01", "UA-651BLE")
    options = fast_options()
    worker = DeviceWorker(a, _Sink(), SystemClock(), options, asyncio.Semaphore(1))
    collector = Collector(a, _Sink(), SystemClock(), worker.status, options.backoff)
    stopping = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(WAIT)
        except asyncio.CancelledError:
            stopping.set()
            await asyncio.sleep(0.3)  # e.g. a store call finishing
            raise

    flusher = asyncio.create_task(slow_to_stop())
    finish = asyncio.create_task(worker._finish(collector, flusher, None))
    async with asyncio.timeout(WAIT):
        await stopping.wait()
    finish.cancel()  # the supervisor stops the driver just then
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(WAIT):
            await finish
    assert finish.cancelled()
    async with asyncio.timeout(WAIT):
        await asyncio.wait([flusher])
