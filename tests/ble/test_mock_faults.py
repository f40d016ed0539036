"""Fault injection: link drops mid-transfer, repeated and malformed indications, adapter off,
adapter gone and back. The driver-level guarantees (nothing lost, nothing duplicated) are tested
with the agent later; these tests pin down what the mock does to the real bleak."""

import asyncio
from datetime import datetime

import pytest
from bleak import BleakClient, BleakScanner
from bleak.exc import BleakBluetoothNotAvailableError, BleakDBusError
from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from hw_mocks.bluez import MockBlueZ
from hw_mocks.bluez.devices import BPM, DATE_TIME, AndCuff
from hw_mocks.bluez.payloads import BloodPressureRecord, bpm, date_time

from tests.ble.helpers import STEP, Link, connect, find
from tests.ble.pairing_agent import TestAgent

RECORDS = [
    BloodPressureRecord(120 + i, 80 + i, pulse=60 + i, timestamp=datetime(2026, 11, 20, 8, i, 0))
    for i in range(5)
]
FRAMES = [bpm(r) for r in RECORDS]


async def _transfer(address: str, *, pair: bool = False) -> Link:
    """What the A&D driver does: subscribe, write Date Time, collect until the cuff hangs up."""
    link = await connect(address, pair=pair)
    await link.subscribe(BPM)
    await link.client.write_gatt_char(DATE_TIME, date_time(datetime(2026, 11, 22, 6)), True)
    await link.wait_disconnected()
    await link.close()
    return link


async def test_link_dropped_mid_transfer_then_everything_again(
    bluez: MockBlueZ, agent: TestAgent
) -> None:
    cuff = AndCuff(records=RECORDS)
    cuff.faults.drop_link_after = 2
    bluez.adapter().add_peripheral(cuff)
    first = await _transfer(cuff.address, pair=True)
    assert first.received[BPM] == FRAMES[:2]
    assert cuff.events_of("disconnect")[0].detail == "fault: drop link mid-transfer"
    assert len(cuff.records) == 5  # not confirmed as complete, so kept
    cuff.faults.drop_link_after = None
    second = await _transfer(cuff.address, pair=True)
    assert second.received[BPM] == FRAMES  # the first two come again: the driver must dedupe
    assert cuff.records == []


async def test_repeated_indications(bluez: MockBlueZ) -> None:
    cuff = AndCuff(records=RECORDS[:2])
    cuff.faults.repeat_frames = 1
    bluez.adapter().add_peripheral(cuff)
    link = await _transfer(cuff.address)
    assert link.received[BPM] == [FRAMES[0], FRAMES[0], FRAMES[1], FRAMES[1]]


async def test_malformed_payloads(bluez: MockBlueZ) -> None:
    cuff = AndCuff(records=RECORDS[:3])
    cuff.faults.malformed_frames = frozenset({1})
    cuff.faults.corrupt = lambda i, data: b"\xff" if i == 2 else data
    bluez.adapter().add_peripheral(cuff)
    link = await _transfer(cuff.address)
    assert link.received[BPM] == [FRAMES[0], FRAMES[1][:-1], b"\xff"]


async def test_silent_device_never_sends(bluez: MockBlueZ) -> None:
    cuff = AndCuff(records=RECORDS[:1])
    cuff.faults.silent = True
    bluez.adapter().add_peripheral(cuff)
    link = await connect(cuff.address)
    try:
        await link.subscribe(BPM)
        await link.client.write_gatt_char(DATE_TIME, date_time(datetime(2026, 11, 22)), True)
        with pytest.raises(TimeoutError):
            await link.next(BPM, seconds=0.2)
    finally:
        await link.close()


async def _set_powered(powered: bool) -> None:
    """Power the adapter through D-Bus, as the agent's adapter recovery will."""
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(
            Message(
                destination="org.bluez",
                path="/org/bluez/hci0",
                interface="org.freedesktop.DBus.Properties",
                member="Set",
                signature="ssv",
                body=["org.bluez.Adapter1", "Powered", Variant("b", powered)],
            )
        )
        assert reply is not None
        assert reply.message_type == MessageType.METHOD_RETURN
    finally:
        bus.disconnect()
        await bus.wait_for_disconnect()


async def test_adapter_off_drops_links_and_power_cycle_recovers(bluez: MockBlueZ) -> None:
    cuff = AndCuff(records=RECORDS[:1], session_timeout=STEP)
    bluez.adapter().add_peripheral(cuff)
    link = await connect(cuff.address)
    bluez.adapter().power_off()
    await link.wait_disconnected()
    await link.close()
    assert cuff.events_of("disconnect")[0].detail == "adapter powered off"
    await _until_no_adapter()
    await _set_powered(True)
    assert bluez.adapter().powered
    await _until_adapter_usable()
    link = await connect(cuff.address)
    await link.close()
    await _set_powered(False)
    assert not bluez.adapter().powered


async def _until_no_adapter() -> None:
    """Scan until bleak reports no usable adapter. bleak learns that the adapter is off or gone
    from a signal that BlueZ sends after the links dropped, so the first try may be early."""
    async with asyncio.timeout(STEP):
        while True:
            try:
                await BleakScanner.discover(timeout=0.05)
            except BleakBluetoothNotAvailableError:
                return
            except BleakDBusError as exc:  # bleak has not seen the signal yet
                if exc.dbus_error not in (
                    "org.freedesktop.DBus.Error.UnknownObject",  # adapter removed
                    "org.bluez.Error.NotReady",  # adapter powered off
                ):
                    raise
            await asyncio.sleep(0.01)


async def _until_adapter_usable() -> None:
    """Scan until bleak sees a powered adapter again (Powered=true arrives as a signal)."""
    async with asyncio.timeout(STEP):
        while True:
            try:
                await BleakScanner.discover(timeout=0.05)
            except BleakBluetoothNotAvailableError:
                await asyncio.sleep(0.01)
            else:
                return


async def test_adapter_vanishes_and_returns_with_its_bonds(
    bluez: MockBlueZ, agent: TestAgent
) -> None:
    hci0 = bluez.adapter()
    cuff = AndCuff(records=RECORDS[:1], session_timeout=STEP)
    device = hci0.add_peripheral(cuff)
    link = await connect(cuff.address, pair=True)
    hci0.vanish()
    await link.wait_disconnected()
    await link.close()
    assert not device.exported
    await _until_no_adapter()
    hci0.reappear()
    # bonded: reloaded from storage with its GATT cache
    assert [device.exported, device.gatt_exported, device.paired] == [True, True, True]
    await _until_adapter_usable()
    link = await connect(cuff.address, pair=True)
    try:
        assert link.client.is_connected
        assert agent.names() == ["RequestAuthorization"]  # no second pairing
    finally:
        await link.close()


async def test_device_that_stopped_advertising_cannot_be_connected(bluez: MockBlueZ) -> None:
    cuff = AndCuff()
    bluez.adapter().add_peripheral(cuff)
    device = await find(cuff.address)
    cuff.set_advertising(False)
    bluez.absent_connect_delay = 0.05
    client = BleakClient(device, timeout=0.5)
    with pytest.raises(TimeoutError):  # bleak waits for a link that never comes
        await client.connect()
    await client.disconnect()
    assert [c.member for c in bluez.calls].count("Connect") == 1


async def test_wedged_scanner_is_cured_by_a_power_cycle(bluez: MockBlueZ) -> None:
    hci0 = bluez.adapter()
    cuff = AndCuff()
    hci0.add_peripheral(cuff)
    hci0.wedge()
    found = await BleakScanner.discover(timeout=0.3)
    assert found == []  # Discovering, but nothing reported
    await _set_powered(False)
    await _set_powered(True)
    await _until_adapter_usable()
    assert (await find(cuff.address)).address == cuff.address
