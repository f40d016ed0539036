"""A device that deletes what it sent (A&D), held because the buffer cannot take its records:
the hold has no limit, but after ``hold_alarm_after`` it is visible to the technician.

The cuff's memory is finite (30 records by default on the UA-651BLE, ``ble-gatt.md`` 2.2), so
a hold that lasts must not be silent: the device's status entry carries the alarm
``ble.held-for-store`` (with since when and why, no values), ``agent.health`` turns it into a
problem for ``dho-provision status`` and the status light, and the systemd status line names
it. The alarm clears with the device's next complete transfer. Real bleak against the mock
BlueZ, real encrypted buffer.
"""

import asyncio
import json
import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime

import pytest
from hw_mocks.bluez import MockBlueZ
from hw_mocks.bluez.devices import AndCuff
from hw_mocks.bluez.payloads import BloodPressureRecord

from agent.buffer import AppendResult, AsyncBuffer
from agent.clock import SystemClock
from agent.drivers.ble import BleDriver, DeviceFamily, DeviceState
from agent.drivers.ble.driver import DeviceWorker
from agent.drivers.ble.status import HELD_ALARM
from agent.errors import StorageFullError
from agent.health import Concern, assess
from agent.model import Reading
from agent.status import status_line
from tests.ble.driver_support import (
    PATIENT,
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
    return bp_records(n, datetime(2026, 12, 1, 8, 0, 0), systolic=120, diastolic=80, pulse=64)


def _report(driver: BleDriver) -> dict[str, object]:
    """A status report as the agent writes it, with only the BLE section."""
    return {"written_at": time.time(), "ble": driver.status()}


def _no_values(text: str, records: Sequence[BloodPressureRecord]) -> None:
    assert PATIENT not in text
    # (not the values as bare numbers: the report's wall-clock floats contain such digits)
    assert "mmHg" not in text
    assert "mm[Hg]" not in text
    for r in records:
        assert r.timestamp is None or r.timestamp.isoformat() not in text


async def test_a_long_hold_raises_the_alarm_and_the_next_transfer_clears_it(
    bluez: MockBlueZ, store: AsyncBuffer, caplog: pytest.LogCaptureFixture
) -> None:
    records = _records(5)
    cuff = AndCuff(records=records, frame_interval=0.02)
    driver = and_driver(bluez, store, cuff, hold_alarm_after=2.0)
    status = driver.workers[0].status
    caplog.set_level(logging.INFO, logger="agent.drivers.ble")
    async with running(driver) as task:
        async with busy(store, 4 * WAIT):
            await eventually(lambda: status.state is DeviceState.HELD, task=task, driver=driver)
            assert status.alarm is None  # a short hold is normal (a busy buffer)
            await eventually(lambda: status.alarm == HELD_ALARM, task=task, driver=driver)
            assert status.state is DeviceState.HELD, "the hold does not give up"
            assert len(cuff.records) == 5
            assert cuff.transfers_completed == 0
            entry = driver.status()["devices"][0]
            assert entry["alarm"] == HELD_ALARM
            assert entry["store_wait_reason"] == "store-busy"
            assert isinstance(entry["store_wait_since"], float)
            health = assess(_report(driver))
            problem = next(p for p in health.problems if p.code == HELD_ALARM)
            assert problem.concern is Concern.FAULT
            assert "store-busy" in problem.what
            assert "min" in problem.what
            line = status_line(_report(driver))
            assert line.startswith("attention:")
            assert HELD_ALARM in line
            _no_values(json.dumps(_report(driver)) + problem.what + line, records)
        await eventually(lambda: cuff.records == [], task=task, driver=driver)
        await eventually(lambda: status.alarm is None, task=task, driver=driver)
    assert sorted(bp_key(r) for r in await stored(store)) == bp_expected(records)
    assert status.store_wait_since is None
    assert status.store_wait_reason is None
    assert status.store_alarms == 1
    assert not any(p.code == HELD_ALARM for p in assess(_report(driver)).problems)
    raised = [r for r in caplog.records if HELD_ALARM in r.getMessage()]
    assert [r.levelno for r in raised] == [logging.ERROR, logging.WARNING]  # raised, cleared
    _no_values(" ".join(r.getMessage() for r in caplog.records), records)


async def test_a_full_disk_raises_the_alarm_though_no_single_hold_lasts(
    bluez: MockBlueZ, store: AsyncBuffer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a full disk the worker is held, then connected, hangs up at the first failed append,
    and retries what it received: the alarm measures the whole wait, not one hold."""
    records = _records(6)
    cuff = AndCuff(records=records, frame_interval=0.05)
    driver = and_driver(bluez, store, cuff, hold_alarm_after=1.5)
    status = driver.workers[0].status
    real_append = store.sync.append
    full = threading.Event()
    full.set()

    def append(readings: Sequence[Reading]) -> AppendResult:
        if full.is_set():
            raise StorageFullError("the filesystem is full")
        return real_append(readings)

    monkeypatch.setattr(store.sync, "append", append)
    async with running(driver) as task:
        await eventually(lambda: status.hung_up_for_store >= 1, task=task, driver=driver)
        assert status.alarm is None
        await eventually(
            lambda: driver.status()["devices"][0]["alarm"] == HELD_ALARM, task=task, driver=driver
        )
        assert len(cuff.records) == 6
        assert cuff.transfers_completed == 0
        assert status.store_wait_reason in ("store", "store-failing")
        full.clear()  # space again
        await eventually(lambda: cuff.records == [], task=task, driver=driver)
        await eventually(lambda: status.alarm is None, task=task, driver=driver)
    assert sorted(bp_key(r) for r in await stored(store)) == bp_expected(records)


def _earlier(worker: DeviceWorker, seconds: float) -> None:
    """As if the wait had begun ``seconds`` earlier (no sleeping on a loaded machine)."""
    assert worker._store_wait_since is not None
    worker._store_wait_since -= seconds


def test_the_wait_adds_up_over_holds_and_hang_ups_until_a_complete_transfer() -> None:
    a = assignment(DeviceFamily.AND_BPM, "00:09:1F:4B:6B:02", "UA-651BLE")
    options = fast_options(hold_alarm_after=10.0)

    class _Sink:
        async def append(self, readings: Sequence[Reading]) -> AppendResult:
            return AppendResult(len(readings), 0)

    worker = DeviceWorker(a, _Sink(), SystemClock(), options, asyncio.Semaphore(1))
    worker._store_trouble("store-failing")  # a hold of 10 s on a full disk ...
    _earlier(worker, 4.0)
    worker._store_trouble("store")  # ... then a hang-up at the first failed append
    assert worker.status.snapshot()["alarm"] is None
    _earlier(worker, 7.0)
    worker._store_trouble("store-failing")  # held again: 11 s in all
    assert worker.status.snapshot()["alarm"] == HELD_ALARM
    assert worker.status.store_wait_reason == "store-failing"
    worker._store_trouble_over()
    assert worker.status.snapshot()["alarm"] is None
    assert worker.status.store_wait_since is None
    worker._store_trouble("store-busy")  # a new wait starts from zero
    assert worker.status.snapshot()["alarm"] is None
    assert worker.status.store_alarms == 1
