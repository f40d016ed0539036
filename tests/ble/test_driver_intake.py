"""A ``kill -9`` after an A&D cuff deleted its records and before the buffer committed them.

The cuff deletes its records once BlueZ has confirmed the indications (before the driver
sees them), so from then until the buffer's append commits they exist only in the agent: the
default fault campaign lost 2 A&D records so (``docs/proof.md``), an append waiting behind a
running call. Here a real agent process (real bleak, mock BlueZ, real encrypted buffer) has
its buffer's thread held by a long purge while the cuff completes its transfer; the test
kills it with SIGKILL and opens the store again, as the restarted agent does. Every record
the cuff deleted must be in the store: the intake journal (``agent/buffer/intake.py``) made
each durable as it arrived, and the open replays it.
"""

import asyncio
import errno
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from hw_mocks.bluez import MockBlueZ
from hw_mocks.bluez.devices import AndCuff

from agent.buffer.intake import SUFFIX, IntakeJournal, intake_dir
from agent.drivers.ble import ErrorClass
from tests.ble.driver_support import (
    WAIT,
    and_driver,
    bp_expected,
    bp_key,
    bp_records,
    eventually,
    open_store,
    running,
    stored,
)
from tests.ble.driver_support import hang_guard as hang_guard  # autouse fixture

ROOT = Path(__file__).resolve().parents[2]


async def test_a_kill_after_the_cuff_deleted_its_records_loses_none(
    bluez: MockBlueZ, tmp_path: Path
) -> None:
    records = bp_records(5, datetime(2026, 11, 30, 11, 0, 0))
    cuff = AndCuff(records=records, frame_interval=0.02)
    bluez.adapter().add_peripheral(cuff)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "hw-mocks"), str(ROOT)]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.ble.and_kill_worker",
        str(tmp_path),
        cuff.address,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(WAIT):
            assert await proc.stdout.readline() == b"purging\n"
        await eventually(lambda: cuff.transfers_completed == 1 and cuff.records == [])
        await asyncio.sleep(0.2)  # the append still waits behind the purge
        assert proc.returncode is None, "the agent ended by itself"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        async with asyncio.timeout(WAIT):
            returncode = await proc.wait()
    assert returncode == -signal.SIGKILL
    journals = list(intake_dir(tmp_path / "buffer.db").glob("*" + SUFFIX))
    blob = b"".join(p.read_bytes() for p in journals)
    assert b"patient-ref" not in blob  # nothing in clear
    assert b"UA-651" not in blob
    store = await open_store(tmp_path)  # the agent's restart
    try:
        got = sorted(bp_key(r) for r in await stored(store))
    finally:
        await store.close()
    assert got == bp_expected(records), (
        f"the cuff deleted {len(records)} records; after the kill the store has {len(got)}"
    )
    assert journals, "recovered, but not from the intake journal"
    assert not list(intake_dir(tmp_path / "buffer.db").glob("*" + SUFFIX))  # replayed, gone


async def test_a_cuff_that_deletes_waits_while_the_agent_runs_late(
    bluez: MockBlueZ, tmp_path: Path
) -> None:
    """While the event loop runs callbacks late (an agent just started on a loaded box), a
    record the cuff sent would wait unjournaled in the agent's D-Bus socket: the transfer is
    put off (``agent-busy``) until the loop is on time again."""
    store = await open_store(tmp_path)
    records = bp_records(3, datetime(2026, 11, 30, 13, 0, 0))
    cuff = AndCuff(records=records, frame_interval=0.02)
    driver = and_driver(bluez, store, cuff)
    status = driver.workers[0].status
    loop = asyncio.get_running_loop()
    late = True

    def block() -> None:  # the loop runs 0.6 s late, again and again
        if late:
            time.sleep(0.6)
            loop.call_later(0.05, block)

    try:
        async with running(driver) as task:
            loop.call_soon(block)
            await eventually(lambda: status.held_for_store >= 1, task=task, driver=driver)
            assert status.store_wait_reason == "agent-busy"
            assert cuff.transfers_completed == 0
            assert len(cuff.records) == 3
            late = False
            await eventually(lambda: status.readings_stored == 3, task=task, driver=driver)
        assert sorted(bp_key(r) for r in await stored(store)) == bp_expected(records)
    finally:
        late = False
        await store.close()


async def test_a_cuff_that_deletes_waits_while_the_journal_cannot_be_made(
    bluez: MockBlueZ, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A card already full when the session starts: no journal file, so the transfer is not
    started (the cuff keeps its records); once the card has room it is served."""
    store = await open_store(tmp_path)
    records = bp_records(3, datetime(2026, 11, 30, 14, 0, 0))
    cuff = AndCuff(records=records, frame_interval=0.02)
    driver = and_driver(bluez, store, cuff)
    status = driver.workers[0].status
    real_create = IntakeJournal._create
    full = True

    def create(self: IntakeJournal) -> None:
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_create(self)

    monkeypatch.setattr(IntakeJournal, "_create", create)
    try:
        async with running(driver) as task:
            await eventually(lambda: status.errors >= 1, task=task, driver=driver)
            assert status.last_error_class is ErrorClass.STORE
            assert status.connections == 0
            assert len(cuff.records) == 3
            full = False
            await eventually(lambda: status.readings_stored == 3, task=task, driver=driver)
        assert sorted(bp_key(r) for r in await stored(store)) == bp_expected(records)
        assert not list(intake_dir(tmp_path / "buffer.db").glob("*" + SUFFIX))
    finally:
        await store.close()
