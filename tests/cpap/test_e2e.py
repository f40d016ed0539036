"""End to end: a generated card -> the cpap-card driver -> the encrypted buffer -> the uplink
over mutual-TLS MQTT -> a real Mosquitto -> the receiver process. Every night summary and
every detail chunk arrives exactly once, summaries first."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import date
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hw_mocks.cpap import MockCard

from agent.drivers.cpap.driver import CpapCardOptions
from agent.model import Lane
from receiver.localstack import enrol
from receiver.store import SqliteStore, StoredReading
from tests.cpap.support import PATIENT, card_driver
from tests.uplink.conftest import broker, open_agent, pki, receivers, wait_until  # noqa: F401

BOX = "box-cpap-0001"


def _delivered(db: Path) -> list[StoredReading]:
    s = SqliteStore(db)
    try:
        return list(s.readings())
    finally:
        s.close()


async def test_card_to_receiver(broker, receivers, tmp_path):  # noqa: F811
    key = Ed25519PrivateKey.generate()
    db = tmp_path / "receiver.db"
    enrol(db, BOX, key, [PATIENT])
    receivers(1, db=db)
    agent_dir = tmp_path / "agent"
    uplink, buf = await open_agent(broker, agent_dir, BOX, key, batch_start=20, batch_max=50)
    mount = tmp_path / "mnt"
    card = MockCard(mount)
    for i in range(3):
        card.add_night(date(2026, 7, 1 + i), detail_minutes=15)
    card.write()
    driver = card_driver(
        buf, agent_dir, mount, CpapCardOptions(poll_interval=0.05, settle=0.1, rescan_interval=0.5)
    )
    drive = asyncio.create_task(driver.run())
    send = asyncio.create_task(uplink.run())
    try:
        await asyncio.wait_for(driver.started.wait(), 30)
        (watcher,) = driver.watchers
        await wait_until(lambda: watcher.status.readings_stored > 0, 60, "the import")
        expected = watcher.status.readings_stored
        # 3 summaries + 3 mask-on periods + 3 event counts; BRP 3 and PLD 1 chunks per night
        assert expected == 9 + 12
        await wait_until(lambda: uplink.readings_acked >= expected, 90, "all acknowledged")
    finally:
        for t in (drive, send):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await buf.close()
    got = await asyncio.to_thread(_delivered, db)
    assert len(got) == expected
    assert len({s.reading.id for s in got}) == expected
    assert len({s.reading.natural_key for s in got}) == expected
    lanes = [s.reading.lane for s in got]
    assert lanes.count(Lane.SPOT) == 9
    assert lanes.count(Lane.BULK) == 12
    assert lanes.index(Lane.BULK) > max(i for i, lane in enumerate(lanes) if lane is Lane.SPOT)
    summary = next(s.reading for s in got if "cpap-summary" in s.reading.status)
    assert summary.device.serial == "23232323232"
    assert summary.patient == PATIENT
    chunk = next(s.reading for s in got if s.reading.samples is not None)
    assert chunk.samples is not None
    assert chunk.samples.sample_count > 0
