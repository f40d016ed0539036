"""End to end: simulated serial devices on ptys -> the real pyserial -> the serial driver ->
the encrypted buffer -> uplink over mTLS MQTT -> a real Mosquitto -> the reference receiver.

Also: a cable pulled mid-stream and plugged back, garbage on the line, and a cuff and an
oximeter that send their stored records/sessions again (each stored once at the receiver)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hw_mocks.serial import BeurerBM65, ContecB, CuffRecord, Nonin, StoredSession

from agent.drivers.serial.driver import SerialDevice, SerialDriver
from agent.drivers.serial.hotplug import InjectedMonitor
from agent.model import Lane, Reading
from receiver.localstack import enrol
from receiver.store import SqliteStore
from tests.serial.test_driver import PATIENT, options
from tests.uplink.conftest import open_agent, wait_until

BOX = "box-serial-0001"


def delivered(db: Path) -> list[Reading]:
    try:
        store = SqliteStore(db)
    except sqlite3.Error:
        return []
    try:
        return [s.reading for s in store.readings()]
    finally:
        store.close()


async def test_serial_devices_end_to_end_exactly_once(broker, receivers, tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    db = tmp_path / "receiver.db"
    enrol(db, BOX, key, [PATIENT])
    receivers(1, db=db)
    uplink, buf = await open_agent(broker, tmp_path / "agent", BOX, key)

    class Sink:
        async def append(self, readings):
            result = await buf.append(readings)
            uplink.wake()
            return result

    ports = tmp_path / "by-path"
    ports.mkdir()
    start = dt.datetime(2025, 6, 14, 23, 0, 0)
    oxi = ContecB(
        ports / "usb-0:1.2",
        interval=0.002,
        live_timeout=1.0,
        sessions=[StoredSession(start, [(96, 60)] * 6)],
    )
    cuff = BeurerBM65(
        ports / "usb-0:1.3",
        records=[
            CuffRecord(126, 83, 72, dt.datetime(2025, 6, 14, 8, 30)),
            CuffRecord(131, 85, 70, dt.datetime(2025, 6, 15, 8, 0)),
        ],
    )
    nonin = Nonin(ports / "usb-0:1.4", data_format="df8", interval=0.01)
    monitor = InjectedMonitor()
    devices = [
        SerialDevice.from_config(
            {"family": "contec", "port": oxi.path, "patient": PATIENT, "serial": "CMS-1"}
        ),
        SerialDevice.from_config(
            {"family": "beurer-bm65", "port": cuff.path, "patient": PATIENT, "serial": "BM-1"}
        ),
        SerialDevice.from_config(
            {"family": "nonin-df8", "port": nonin.path, "patient": PATIENT, "serial": "NON-1"}
        ),
    ]
    driver = SerialDriver(devices, Sink(), monitor=monitor, options=options(download_interval=0.5))
    with oxi, cuff, nonin:
        up = asyncio.create_task(uplink.run())
        drv = asyncio.create_task(driver.run())
        try:
            await wait_until(lambda: cuff.downloads >= 2, 60, "the cuff downloaded twice")
            await wait_until(
                lambda: len([r for r in delivered(db) if r.lane is Lane.CONTINUOUS]) >= 4,
                60,
                "live chunks",
            )
            # unplug the Nonin mid-stream, put garbage on the Contec line, then plug back in
            nonin.unplug()
            monitor.remove(nonin.path)
            oxi.inject_noise(data=bytes(range(0x30)))
            await wait_until(
                lambda: driver.workers[2].status.state == "absent", 30, "unplugged shown"
            )
            nonin.replug()
            monitor.add(nonin.path)
            await wait_until(lambda: driver.workers[2].status.opens == 2, 30, "re-opened")
            # the oximeter is re-opened too, so it sends its stored session again
            oxi.unplug()
            oxi.replug()
            monitor.add(oxi.path)
            await wait_until(lambda: driver.workers[0].status.opens == 2, 30, "oximeter re-opened")
            await wait_until(lambda: oxi.count("download") >= 2, 30, "session sent again")
            await wait_until(
                lambda: driver.workers[0].status.duplicates >= 2, 30, "re-sent chunks dropped"
            )
            status = await driver.status_section()
            drv.cancel()  # the devices stop producing; everything stored must arrive
            with contextlib.suppress(asyncio.CancelledError):
                await drv
            for _ in range(600):  # until the buffer has nothing left to send (60 s at most)
                stats = await buf.stats()
                if not stats.pending and not stats.claimed:
                    break
                await asyncio.sleep(0.1)
            assert not (await buf.stats()).pending
        finally:
            for t in (drv, up):
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await buf.close()
    got = delivered(db)
    ids = [r.id for r in got]
    assert len(ids) == len(set(ids))
    spots = [r for r in got if r.lane is Lane.SPOT and r.decode_error is None]
    assert sorted(r.device_time for r in spots if r.device_time) == [
        dt.datetime(2025, 6, 14, 8, 30),
        dt.datetime(2025, 6, 15, 8, 0),
    ]
    bulk = [r for r in got if r.lane is Lane.BULK]
    assert sorted(r.device_time for r in bulk if r.device_time) == [
        start,
        start + dt.timedelta(seconds=4),
    ]
    keys = [r.natural_key for r in got if r.natural_key is not None]
    assert len(keys) == len(set(keys))
    bad = [r for r in got if r.decode_error is not None]
    assert any(bytes(range(0x30)) in r.raw[0] for r in bad)
    assert {r.device.serial for r in got} == {"CMS-1", "BM-1", "NON-1"}
    ports_status = {p["family"]: p for p in status["ports"]}
    assert ports_status["nonin-df8"]["unplugs"] == 1
    assert ports_status["nonin-df8"]["errors"] == 0
    assert ports_status["beurer-bm65"]["duplicates"] >= 2
