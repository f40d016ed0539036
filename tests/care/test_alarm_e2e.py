"""Issue 11's alarm test, end to end: an oximeter's desaturation with the network down raises
one alarm, goes out by SMS once (modem simulator on a pty), and reaches the service once when
the network returns (real BLE driver on the mock BlueZ, real Mosquitto with TLS, the real
receiver); the service sees one alarm with both paths."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hw_mocks.bluez import MockBlueZ
from hw_mocks.bluez.devices import NoninOximeter
from hw_mocks.link import MobileLink
from hw_mocks.modem import ModemSimulator
from hw_mocks.serial import Nonin as SerialNonin

from agent.care import readings as cr
from agent.care.modem import SmsModem
from agent.care.service import CareService, CareSettings, CareSink, DeliveryWatch
from agent.drivers.ble import BleDriver, DeviceFamily
from receiver.alarms import alarm_records
from receiver.localstack import enrol
from receiver.store import SqliteStore
from tests.ble.driver_support import PATIENT, assignment, fast_options, running
from tests.care.helpers import cancel_all
from tests.uplink.conftest import link_config, open_agent, wait_until

NUMBERS = "+4791234567,+4799887766"


async def wait_for(pred, seconds: float, what: str) -> None:
    await wait_until(pred, seconds, what)


def stored_alarms(db: Path):
    s = SqliteStore(db)
    try:
        return alarm_records(s.readings()), [r.reading for r in s.readings()]
    finally:
        s.close()


@contextlib.asynccontextmanager
async def box(tmp_path: Path, broker, modem: ModemSimulator) -> AsyncIterator[tuple[Any, ...]]:
    """Buffer, care service (SMS after 1 s), uplink through a mobile link that is down."""
    key = Ed25519PrivateKey.generate()
    db = tmp_path / "receiver.db"
    enrol(db, "box-0001", key, [PATIENT])
    link = MobileLink(broker.port)
    await link.start()
    link.down()
    from dataclasses import replace

    uplink, buf = await open_agent(
        broker,
        tmp_path / "agent",
        "box-0001",
        key,
        link=replace(link_config(broker, "box-0001"), port=link.port),
    )
    care = CareService(
        CareSettings(tick_s=0.1, sms_after_s=1.0),
        buf,
        state_dir=tmp_path / "agent",
        kek=lambda: b"k" * 32,
        box_id="box-0001",
        sms=SmsModem(modem.path, submit_timeout=10),
    )
    uplink.buffer = DeliveryWatch(buf, care.delivered)
    uplink.commands = care.command
    tasks = [asyncio.create_task(care.run()), asyncio.create_task(uplink.run())]
    await care.ready.wait()
    for name, args in (
        ("set-thresholds", {"patient": PATIENT, "spo2_below": 88, "spo2_for_s": 5}),
        ("set-alarm-sms", {"patient": PATIENT, "numbers": NUMBERS, "label": "Hus 4"}),
    ):
        assert (await care.command(name, args) or {}).get("ok")
    try:
        yield care, buf, link, db
    finally:
        await cancel_all(tasks)
        await buf.close()
        await link.close()


async def deliver_and_check(care, link, db, modem, receivers) -> None:
    await wait_for(lambda: len(modem.sent) == 2, 30, "one SMS to each number")
    assert care.counters["alarms"] == 1
    receivers(1, db=db)
    link.up()
    await wait_for(lambda: all(o.delivered for o in care.outgoing), 60, "the alarm delivered")
    await asyncio.sleep(1.0)  # more ticks: nothing is sent again
    alarms, everything = stored_alarms(db)
    assert len(alarms) == 1
    assert alarms[0].paths == ("sms", "uplink")
    assert alarms[0].sms_numbers == 2
    assert alarms[0].rule == "spo2-below"
    assert sum(1 for r in everything if cr.is_alarm(r)) == 1
    assert len(modem.sent) == 2
    assert sorted(s.number for s in modem.sent) == sorted(NUMBERS.split(","))
    assert PATIENT not in modem.sent[0].text


async def test_alarm_from_a_ble_oximeter_with_the_network_down(
    bluez: MockBlueZ, broker, receivers, tmp_path: Path
) -> None:
    with ModemSimulator(tmp_path / "modem") as modem:
        async with box(tmp_path, broker, modem) as (care, buf, link, db):
            samples = [(95, 70)] * 3 + [(84, 90)] * 12 + [(95, 70)] * 3
            nonin = NoninOximeter(samples=samples, interval=0.05, repeat=False)
            bluez.adapter().add_peripheral(nonin)
            a = assignment(DeviceFamily.NONIN, nonin.address, "3230")
            driver = BleDriver([a], CareSink(buf, care), options=fast_options())
            async with running(driver):
                await wait_for(lambda: care.counters["alarms"] >= 1, 30, "the alarm raised")
            await deliver_and_check(care, link, db, modem, receivers)


async def test_alarm_from_a_serial_oximeter_with_the_network_down(
    broker, receivers, tmp_path: Path
) -> None:
    """A Nonin serial oximeter (DF1) on a pty, read by the real serial driver (pyserial)."""
    from agent.drivers.serial.driver import SerialDevice, SerialDriver, SerialDriverOptions
    from agent.drivers.serial.hotplug import InjectedMonitor

    script: list[tuple[int, int] | None] = [
        (84, 90) if 3 <= i < 15 else (95, 70) for i in range(18)
    ]
    with (
        ModemSimulator(tmp_path / "modem") as modem,
        SerialNonin(tmp_path / "oxi", data_format="df1", values=script, interval=0.02) as oxi,
    ):
        async with box(tmp_path, broker, modem) as (care, buf, link, db):
            device = SerialDevice.from_config(
                {"family": "nonin-df1", "port": str(oxi.path), "patient": PATIENT}
            )
            driver = SerialDriver(
                [device],
                CareSink(buf, care),
                monitor=InjectedMonitor(),
                options=SerialDriverOptions(rescan_interval=0.5, chunk_samples=60),
            )
            task = asyncio.create_task(driver.run())
            try:
                await wait_for(lambda: care.counters["alarms"] >= 1, 30, "the alarm raised")
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await deliver_and_check(care, link, db, modem, receivers)
