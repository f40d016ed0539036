"""Shared pieces of the BLE driver tests: a real encrypted buffer, fast timings, run/stop.

The driver runs with the real bleak against the mock BlueZ (fixture ``bluez``); only the
timings are shortened. Every wait is bounded so a broken driver fails a test, never hangs it.
"""

import asyncio
import contextlib
import faulthandler
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hw_mocks.bluez import MockBlueZ
from hw_mocks.bluez.devices import AndCuff
from hw_mocks.bluez.payloads import BloodPressureRecord

from agent import codes
from agent.buffer import AsyncBuffer, FileKeySource
from agent.drivers.ble import (
    BackoffPolicy,
    BleDriver,
    BleDriverOptions,
    DeviceAssignment,
    DeviceFamily,
    SessionOptions,
)
from agent.model import Reading

NOW = datetime(2026, 11, 22, 6, 30, 0)
PATIENT = "patient-ref-7f3a"
WAIT = 15.0  # the longest any single expectation may take


def fast_options(**changes: Any) -> BleDriverOptions:
    """Driver options with test timings (the behaviour is the production one)."""
    session = SessionOptions(
        idle_timeout=0.6, step_timeout=5.0, time_notify_wait=1.0, racp_timeout=1.5
    )
    options = BleDriverOptions(
        session=session,
        backoff=BackoffPolicy(scale=0.01),
        cooldown=0.3,
        connect_timeout=10.0,
        watchdog_interval=0.1,
        scanner_silence=30.0,
        power_off_seconds=0.05,
        device_time=lambda: NOW,
    )
    return replace(options, **changes)


async def open_store(path: Path) -> AsyncBuffer:
    """A real encrypted buffer in ``path``."""
    return await AsyncBuffer.open(path / "buffer.db", FileKeySource(path / "buffer.kek"))


HARD_LIMIT = 120.0  # seconds: beyond this a driver test is hung, whatever the event loop does


@pytest.fixture(autouse=True)
def hang_guard() -> Iterator[None]:
    """Dump every thread's stack and end the run if one test outlives ``HARD_LIMIT``.

    Every wait in these tests is bounded by ``asyncio`` timeouts, which cannot fire if the
    event loop itself is blocked; this guard runs on its own thread. Import it into each test
    module (autouse fixtures apply where they are visible).
    """
    faulthandler.dump_traceback_later(HARD_LIMIT, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AsyncBuffer]:
    """A real encrypted buffer for one test (import this fixture into the test module)."""
    buffer = await open_store(tmp_path)
    try:
        yield buffer
    finally:
        async with asyncio.timeout(WAIT):
            await buffer.close()


def assignment(
    family: DeviceFamily, address: str, model: str = "", **kwargs: Any
) -> DeviceAssignment:
    """An assignment of a simulated device to the test patient."""
    return DeviceAssignment(family, PATIENT, address=address, model=model, **kwargs)


@contextlib.asynccontextmanager
async def running(driver: BleDriver) -> AsyncIterator[asyncio.Task[None]]:
    """Run the driver as the supervisor would; cancel it (bounded) at the end."""
    task = asyncio.create_task(driver.run(), name="test-ble-driver")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(WAIT):
                await task


async def eventually(
    predicate: Callable[[], bool],
    seconds: float = WAIT,
    task: asyncio.Task[None] | None = None,
    driver: BleDriver | None = None,
) -> None:
    """Wait until ``predicate()`` holds (the driver's state changes on D-Bus signals).

    On timeout the assertion shows the driver's status, which says where it got stuck.
    """
    try:
        async with asyncio.timeout(seconds):
            while not predicate():
                if task is not None and task.done():
                    task.result()  # the driver died: show why
                    raise AssertionError("driver stopped")
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(
            f"not reached in {seconds} s; status: {driver.status() if driver else '-'}"
        ) from None


async def stored(store: AsyncBuffer) -> list[Reading]:
    """Every pending reading in the buffer, decrypted (claimed, then released again)."""
    claim = await store.claim(max_readings=100_000)
    if claim is None:
        return []
    await store.release(claim.batch_id)
    return list(claim.readings)


def value(reading: Reading, code: codes.Code) -> Decimal | None:
    """The value of the observation with ``code`` in ``reading``."""
    for o in reading.observations:
        if o.mdc == code.mdc:
            return o.value
    raise KeyError(code.mdc)


def bp_key(reading: Reading) -> tuple[object, ...]:
    """(systolic, diastolic, pulse, device time) of a blood-pressure reading."""
    return (
        value(reading, codes.BP_SYSTOLIC),
        value(reading, codes.BP_DIASTOLIC),
        value(reading, codes.PULSE_RATE_BP),
        reading.device_time,
    )


# -- a device that deletes what it sent (A&D) against a busy buffer ----------------------------


def bp_records(
    n: int, first: datetime, systolic: int = 110, diastolic: int = 70, pulse: int = 60
) -> list[BloodPressureRecord]:
    """``n`` cuff records a minute apart from ``first``, each value one higher than the last."""
    return [
        BloodPressureRecord(
            systolic + i, diastolic + i, pulse=pulse + i, timestamp=first + timedelta(minutes=i)
        )
        for i in range(n)
    ]


def bp_expected(records: Sequence[BloodPressureRecord]) -> list[tuple[object, ...]]:
    """What :func:`bp_key` of the stored readings must be, sorted."""
    return sorted((r.systolic, r.diastolic, r.pulse, r.timestamp) for r in records)


@contextlib.asynccontextmanager
async def busy(store: AsyncBuffer, limit: float = WAIT) -> AsyncIterator[None]:
    """Hold the buffer's one thread with a call that blocks until the block ends (at most
    ``limit`` seconds), as a long backlog does."""
    release = threading.Event()
    call = asyncio.ensure_future(store._run(release.wait, limit))  # ended by the test
    await asyncio.sleep(0.05)
    try:
        yield
    finally:
        release.set()
        async with asyncio.timeout(WAIT):
            await call


def and_driver(bluez: MockBlueZ, store: AsyncBuffer, cuff: AndCuff, **options: object) -> BleDriver:
    """A driver for one A&D cuff on the mock BlueZ, with fast timings and ``options``."""
    bluez.adapter().add_peripheral(cuff)
    a = assignment(DeviceFamily.AND_BPM, cuff.address, "UA-651BLE")
    return BleDriver([a], store, options=fast_options(**options))
