"""End to end per simulated device: advertisement -> pairing -> time set -> stored records ->
readings in the encrypted buffer, with the real bleak against the mock BlueZ."""

from datetime import datetime

from hw_mocks.bluez import MockBlueZ
from hw_mocks.bluez.devices import AndCuff
from hw_mocks.bluez.payloads import BloodPressureRecord

from agent.buffer import AsyncBuffer
from agent.drivers.ble import BleDriver, DeviceFamily
from tests.ble.driver_support import (
    NOW,
    PATIENT,
    assignment,
    bp_key,
    eventually,
    fast_options,
    running,
    stored,
)
from tests.ble.driver_support import store as store  # the fixture

RECORDS = [
    BloodPressureRecord(120 + i, 80 + i, pulse=60 + i, timestamp=datetime(2026, 11, 20, 8, i, 0))
    for i in range(5)
]


def expected(records: list[BloodPressureRecord]) -> list[tuple[object, ...]]:
    return sorted((r.systolic, r.diastolic, r.pulse, r.timestamp) for r in records)


async def test_and_cuff(bluez: MockBlueZ, store: AsyncBuffer) -> None:
    cuff = AndCuff(records=RECORDS)
    device = bluez.adapter().add_peripheral(cuff)
    a = assignment(DeviceFamily.AND_BPM, cuff.address, "UA-651BLE", manufacturer="A&D")
    driver = BleDriver([a], store, options=fast_options())
    status = driver.workers[0].status
    async with running(driver) as task:
        await eventually(lambda: status.readings_stored == 5 and status.transfers >= 1, task=task)
    readings = await stored(store)
    assert sorted(bp_key(r) for r in readings) == expected(RECORDS)
    assert {r.patient for r in readings} == {PATIENT}
    assert device.paired
    assert cuff.paired
    assert cuff.clock_set_to == NOW
    assert cuff.records == []
    assert not bluez.was_called("RemoveDevice")
