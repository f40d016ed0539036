"""Pairing through our own org.bluez.Agent1: the technician's pair_device, passkeys, refusals,
and what the driver must never do with a bond (RemoveDevice). Also: no patient data in logs."""

import logging
from datetime import datetime

import pytest
from bleak import BleakClient
from bleak.backends.device import BLEDevice
from bleak.exc import BleakDBusError
from hw_mocks.bluez import MockBlueZ
from hw_mocks.bluez.devices import AndCuff, NoninOximeter
from hw_mocks.bluez.payloads import BloodPressureRecord

from agent.buffer import AsyncBuffer
from agent.drivers.ble import (
    BleDriver,
    BleTransportError,
    DeviceFamily,
    ErrorClass,
    pair_device,
)
from tests.ble.driver_support import (
    NOW,
    PATIENT,
    assignment,
    eventually,
    fast_options,
    running,
)
from tests.ble.driver_support import hang_guard as hang_guard  # autouse fixture
from tests.ble.driver_support import store as store  # the fixture

RECORDS = [
    BloodPressureRecord(118 + i, 79, pulse=61, timestamp=datetime(2026, 11, 21, 9, i))
    for i in range(3)
]


async def test_pair_device_just_works_reads_device_information(bluez: MockBlueZ) -> None:
    cuff = AndCuff()
    device = bluez.adapter().add_peripheral(cuff)
    enrolled = await pair_device(
        assignment(DeviceFamily.AND_BPM, cuff.address), scan_timeout=5, device_time=lambda: NOW
    )
    assert device.paired
    assert device.trusted
    assert enrolled.address == cuff.address
    assert (enrolled.manufacturer, enrolled.model, enrolled.serial) == (
        "A&D Medical",
        "UA-651BLE",
        "5140400123",
    )
    assert enrolled.time_set
    assert cuff.clock_set_to == NOW  # A&D pair mode: Date Time, then disconnect
    assert "5140400123" not in repr(enrolled)
    assert not bluez.was_called("RemoveDevice")


async def test_pair_device_with_passkey_from_the_technician(bluez: MockBlueZ) -> None:
    cuff = AndCuff(pairing="passkey", passkey=123456)
    device = bluez.adapter().add_peripheral(cuff)
    asked: list[str] = []

    async def passkey(address: str) -> int | None:
        asked.append(address)
        return 123456

    await pair_device(
        assignment(DeviceFamily.AND_BPM, cuff.address), passkey=passkey, scan_timeout=5
    )
    assert asked == [cuff.address]
    assert device.paired


async def test_pair_device_wrong_passkey_is_a_pairing_error(bluez: MockBlueZ) -> None:
    cuff = AndCuff(pairing="passkey", passkey=123456)
    device = bluez.adapter().add_peripheral(cuff)

    async def wrong(address: str) -> int | None:
        return 111111

    with pytest.raises(BleTransportError) as excinfo:
        await pair_device(assignment(DeviceFamily.AND_BPM, cuff.address), passkey=wrong)
    assert excinfo.value.error_class is ErrorClass.PAIRING
    assert "pairing mode" in str(excinfo.value)
    assert not device.paired


async def test_pair_device_outside_the_bonding_window(bluez: MockBlueZ) -> None:
    nonin = NoninOximeter(bonding_window_open=False)
    bluez.adapter().add_peripheral(nonin)
    with pytest.raises(BleTransportError) as excinfo:
        await pair_device(assignment(DeviceFamily.NONIN, nonin.address), scan_timeout=5)
    assert excinfo.value.error_class is ErrorClass.PAIRING


async def test_pair_device_not_advertising(bluez: MockBlueZ) -> None:
    cuff = AndCuff(advertising=False)
    bluez.adapter().add_peripheral(cuff)
    with pytest.raises(BleTransportError) as excinfo:
        await pair_device(assignment(DeviceFamily.AND_BPM, cuff.address), scan_timeout=0.3)
    assert excinfo.value.error_class is ErrorClass.NOT_FOUND


async def test_bonded_device_is_not_paired_again(bluez: MockBlueZ, store: AsyncBuffer) -> None:
    cuff = AndCuff(records=RECORDS)
    bluez.adapter().add_peripheral(cuff)
    a = assignment(DeviceFamily.AND_BPM, cuff.address, "UA-651BLE")
    await pair_device(a, scan_timeout=5)
    driver = BleDriver([a], store, options=fast_options())
    status = driver.workers[0].status
    async with running(driver) as task:
        await eventually(lambda: status.readings_stored == 3, task=task, driver=driver)
    assert [c.member for c in bluez.calls].count("Pair") == 1


async def test_driver_agent_refuses_devices_not_assigned(
    bluez: MockBlueZ, store: AsyncBuffer
) -> None:
    ours = AndCuff(records=RECORDS)
    stranger = AndCuff("00:09:1F:4B:6B:42")
    bluez.adapter().add_peripheral(ours)
    foreign = bluez.adapter().add_peripheral(stranger)
    a = assignment(DeviceFamily.AND_BPM, ours.address, "UA-651BLE")
    driver = BleDriver([a], store, options=fast_options())
    status = driver.workers[0].status
    async with running(driver) as task:
        await eventually(lambda: status.readings_stored == 3, task=task, driver=driver)
        # another program on the box tries to pair a stranger's device: our agent says no
        await eventually(lambda: foreign.exported, driver=driver)
        seen = BLEDevice(stranger.address, None, {"path": foreign.path, "props": {}})
        client = BleakClient(seen, pair=True, timeout=5)
        with pytest.raises(BleakDBusError) as excinfo:
            await client.connect()
        await client.disconnect()
    assert excinfo.value.dbus_error == "org.bluez.Error.AuthenticationRejected"
    assert not foreign.paired


async def test_no_patient_data_in_log_lines(
    bluez: MockBlueZ, store: AsyncBuffer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent")
    cuff = AndCuff(records=RECORDS)
    cuff.faults.malformed_frames = frozenset({1})
    bluez.adapter().add_peripheral(cuff)
    a = assignment(DeviceFamily.AND_BPM, cuff.address, "UA-651BLE", serial="SER-998877")
    driver = BleDriver([a], store, options=fast_options())
    status = driver.workers[0].status
    async with running(driver) as task:
        await eventually(lambda: status.readings_stored == 3, task=task, driver=driver)
    ours = [r for r in caplog.records if r.name.startswith("agent.")]
    assert ours, "the driver logs what it does"
    text = "\n".join(r.getMessage() for r in ours)
    for secret in (PATIENT, cuff.address, cuff.address.replace(":", "_"), "SER-998877", "118"):
        assert secret not in text
    assert a.log_id in text
    report = str(driver.status())
    for secret in (PATIENT, cuff.address, "SER-998877"):
        assert secret not in report


async def test_just_works_asked_as_a_confirmation(bluez: MockBlueZ, store: AsyncBuffer) -> None:
    bluez.just_works_confirmation = True  # some BlueZ versions ask RequestConfirmation(0)
    cuff = AndCuff(records=RECORDS)
    device = bluez.adapter().add_peripheral(cuff)
    a = assignment(DeviceFamily.AND_BPM, cuff.address, "UA-651BLE")
    driver = BleDriver([a], store, options=fast_options())
    status = driver.workers[0].status
    async with running(driver) as task:
        await eventually(lambda: status.readings_stored == 3, task=task, driver=driver)
    assert device.paired
