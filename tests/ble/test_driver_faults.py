"""The driver under each fault of the mock: no reading lost, none duplicated, it reconnects.

Faults: the link dropped mid-transfer, repeated indications, malformed payloads, pairing
refused, the adapter switched off, the adapter vanishing and returning, scanner start
failures (power-cycle recovery), connection aborts. Real bleak, real encrypted buffer.
"""

import asyncio
from datetime import datetime

from hw_mocks.bluez import MockBlueZ
from hw_mocks.bluez.devices import AndCuff, OmronCuff
from hw_mocks.bluez.payloads import BloodPressureRecord, bpm

from agent.buffer import AsyncBuffer
from agent.drivers.ble import BleDriver, DeviceFamily, DeviceState, ErrorClass
from agent.supervisor import Supervisor
from tests.ble.driver_support import (
    PATIENT,
    WAIT,
    assignment,
    bp_key,
    eventually,
    fast_options,
    running,
    stored,
)
from tests.ble.driver_support import hang_guard as hang_guard  # autouse fixture
from tests.ble.driver_support import store as store  # the fixture

RECORDS = [
    BloodPressureRecord(120 + i, 80 + i, pulse=60 + i, timestamp=datetime(2026, 11, 20, 8, i, 0))
    for i in range(5)
]
EXPECTED = sorted((r.systolic, r.diastolic, r.pulse, r.timestamp) for r in RECORDS)


def _and_driver(
    bluez: MockBlueZ, store: AsyncBuffer, cuff: AndCuff, **options: object
) -> BleDriver:
    bluez.adapter().add_peripheral(cuff)
    a = assignment(DeviceFamily.AND_BPM, cuff.address, "UA-651BLE")
    return BleDriver([a], store, options=fast_options(**options))


async def _exactly_all(store: AsyncBuffer) -> None:
    readings = await stored(store)
    assert sorted(bp_key(r) for r in readings) == EXPECTED  # none lost, none twice


async def test_link_dropped_mid_transfer_and_cuff(bluez: MockBlueZ, store: AsyncBuffer) -> None:
    cuff = AndCuff(records=RECORDS)
    cuff.faults.drop_link_after = 2
    driver = _and_driver(bluez, store, cuff)
    status = driver.workers[0].status
    async with running(driver) as task:
        await cuff.wait_for("disconnect", seconds=WAIT)
        assert cuff.events_of("disconnect")[0].detail == "fault: drop link mid-transfer"
        assert len(cuff.records) == 5  # the cuff keeps records of an incomplete transfer
        cuff.faults.drop_link_after = None
        await eventually(lambda: cuff.records == [], task=task, driver=driver)
        await eventually(lambda: status.readings_stored == 5, task=task, driver=driver)
    await _exactly_all(store)
    assert status.duplicates >= 2  # the first two came again and were recognised
    assert status.connections >= 2


async def test_link_dropped_mid_racp_download(bluez: MockBlueZ, store: AsyncBuffer) -> None:
    cuff = OmronCuff(records=RECORDS, clock=None, pairing_mode=True)
    cuff.faults.drop_link_after = 3
    bluez.adapter().add_peripheral(cuff)
    a = assignment(DeviceFamily.OMRON_BPM, cuff.address, "BP7000", delete_after_transfer=True)
    driver = BleDriver([a], store, options=fast_options())
    status = driver.workers[0].status
    async with running(driver) as task:
        await eventually(
            lambda: status.last_error_class is ErrorClass.LINK_LOST, task=task, driver=driver
        )
        assert len(cuff.store.records) == 5  # nothing deleted after an incomplete download
        cuff.faults.drop_link_after = None
        await eventually(lambda: cuff.store.records == [], task=task, driver=driver)
    await _exactly_all(store)
    assert status.readings_stored == 5


async def test_repeated_indications(bluez: MockBlueZ, store: AsyncBuffer) -> None:
    cuff = AndCuff(records=RECORDS)
    cuff.faults.repeat_frames = 2
    driver = _and_driver(bluez, store, cuff)
    status = driver.workers[0].status
    async with running(driver) as task:
        await eventually(lambda: status.transfers >= 1, task=task, driver=driver)
    await _exactly_all(store)
    assert status.readings_stored == 5
    assert status.duplicates == 10  # each record came three times


async def test_malformed_payloads_are_stored_raw(bluez: MockBlueZ, store: AsyncBuffer) -> None:
    cuff = AndCuff(records=RECORDS)
    cuff.faults.malformed_frames = frozenset({1})  # truncated by a byte
    cuff.faults.corrupt = lambda i, data: b"\xff" if i == 3 else data
    driver = _and_driver(bluez, store, cuff)
    status = driver.workers[0].status
    async with running(driver) as task:
        await eventually(lambda: status.transfers >= 1, task=task, driver=driver)
    readings = await stored(store)
    good = sorted(bp_key(r) for r in readings if r.decode_error is None)
    bad = [r for r in readings if r.decode_error is not None]
    assert good == [EXPECTED[0], EXPECTED[2], EXPECTED[4]]
    assert sorted(r.raw[0] for r in bad) == sorted([bpm(RECORDS[1])[:-1], b"\xff"])
    assert all(r.observations == () and r.patient == PATIENT for r in bad)
    assert all(r.decode_error is not None and "ble.bpm" in r.decode_error for r in bad)
    assert status.decode_errors == 2
    assert status.readings_stored == 5


async def test_pairing_refused_then_accepted(bluez: MockBlueZ, store: AsyncBuffer) -> None:
    cuff = AndCuff(records=RECORDS)
    cuff.faults.refuse_pairing = True
    driver = _and_driver(bluez, store, cuff)
    status = driver.workers[0].status
    async with running(driver) as task:
        await eventually(
            lambda: status.state is DeviceState.REPAIR_NEEDED, task=task, driver=driver
        )
        assert status.last_error_class is ErrorClass.PAIRING
        assert status.readings_stored == 0
        cuff.faults.refuse_pairing = False  # the technician put the cuff in pairing mode
        await eventually(lambda: status.readings_stored == 5, task=task, driver=driver)
    await _exactly_all(store)
    assert bluez.adapter().device(cuff.address).paired
    assert not bluez.was_called("RemoveDevice")  # never: it would destroy a single bond


async def test_omron_outside_pairing_mode(bluez: MockBlueZ, store: AsyncBuffer) -> None:
    cuff = OmronCuff(records=RECORDS, clock=None, pairing_mode=False)
    bluez.adapter().add_peripheral(cuff)
    a = assignment(DeviceFamily.OMRON_BPM, cuff.address, "BP7000")
    driver = BleDriver([a], store, options=fast_options())
    status = driver.workers[0].status
    async with running(driver) as task:
        await eventually(
            lambda: status.state is DeviceState.REPAIR_NEEDED, task=task, driver=driver
        )
        cuff.set_pairing_mode(True)
        await eventually(lambda: status.readings_stored == 5, task=task, driver=driver)
    await _exactly_all(store)
    assert not bluez.was_called("RemoveDevice")


async def test_adapter_switched_off_mid_transfer(bluez: MockBlueZ, store: AsyncBuffer) -> None:
    cuff = AndCuff(records=RECORDS, frame_interval=0.05)
    driver = _and_driver(bluez, store, cuff)
    status = driver.workers[0].status
    async with running(driver) as task:
        await eventually(lambda: status.readings_stored >= 1, task=task, driver=driver)
        bluez.adapter().power_off()
        await eventually(lambda: driver.adapter.power_ons >= 1, task=task, driver=driver)
        await eventually(lambda: cuff.records == [], task=task, driver=driver)
        await eventually(lambda: status.readings_stored == 5, task=task, driver=driver)
    await _exactly_all(store)
    assert bluez.adapter().powered


async def test_adapter_vanishes_and_returns(bluez: MockBlueZ, store: AsyncBuffer) -> None:
    cuff = AndCuff(records=RECORDS, frame_interval=0.05)
    driver = _and_driver(bluez, store, cuff)
    status = driver.workers[0].status
    hci0 = bluez.adapter()
    async with running(driver) as task:
        await eventually(lambda: status.readings_stored >= 1, task=task, driver=driver)
        hci0.vanish()
        await eventually(lambda: driver.adapter.state == "missing", task=task, driver=driver)
        await asyncio.sleep(0.3)  # the driver keeps running without an adapter
        assert not task.done()
        hci0.reappear()
        await eventually(lambda: cuff.records == [], task=task, driver=driver)
        await eventually(lambda: status.readings_stored == 5, task=task, driver=driver)
    await _exactly_all(store)
    assert driver.adapter.scanner_starts >= 2


async def test_scanner_failures_power_cycle_the_adapter(
    bluez: MockBlueZ, store: AsyncBuffer
) -> None:
    cuff = AndCuff(records=RECORDS)
    hci0 = bluez.adapter()
    hci0.fail_next(
        "StartDiscovery", "org.bluez.Error.InProgress", "Operation already in progress", 2
    )
    driver = _and_driver(bluez, store, cuff)
    status = driver.workers[0].status
    async with running(driver) as task:
        await eventually(lambda: status.readings_stored == 5, task=task, driver=driver)
    await _exactly_all(store)
    assert driver.adapter.power_cycles == 1
    powered = [c.args for c in bluez.calls if c.member == "Set" and c.path == hci0.path]
    assert [args[1] for args in powered] == ["Powered", "Powered"]
    assert [args[2].value for args in powered] == [False, True]


async def test_connection_aborts_are_retried(bluez: MockBlueZ, store: AsyncBuffer) -> None:
    cuff = AndCuff(records=RECORDS)
    cuff.faults.connect_errors = [("org.bluez.Error.Failed", "le-connection-abort-by-local")] * 2
    driver = _and_driver(bluez, store, cuff)
    status = driver.workers[0].status
    async with running(driver) as task:
        await eventually(lambda: status.readings_stored == 5, task=task, driver=driver)
    await _exactly_all(store)


async def test_unassigned_devices_are_ignored(bluez: MockBlueZ, store: AsyncBuffer) -> None:
    ours = AndCuff(records=RECORDS)
    neighbour = AndCuff("00:09:1F:4B:6B:99", records=RECORDS)
    bluez.adapter().add_peripheral(neighbour)
    driver = _and_driver(bluez, store, ours)
    status = driver.workers[0].status
    async with running(driver) as task:
        await eventually(lambda: status.readings_stored == 5, task=task, driver=driver)
        await asyncio.sleep(0.3)
    assert neighbour.events_of("connect") == []
    assert len(neighbour.records) == 5
    assert not driver.is_assigned(neighbour.address)
    await _exactly_all(store)


async def test_silent_scanner_is_restarted(bluez: MockBlueZ, store: AsyncBuffer) -> None:
    cuff = AndCuff(records=RECORDS, advertising=False)  # nothing on the air at all
    driver = _and_driver(bluez, store, cuff, scanner_silence=0.3)
    async with running(driver) as task:
        await eventually(lambda: driver.adapter.scanner_restarts >= 2, task=task, driver=driver)
        cuff.set_advertising(True)
        status = driver.workers[0].status
        await eventually(lambda: status.readings_stored == 5, task=task, driver=driver)
    assert [c.member for c in bluez.calls].count("StartDiscovery") >= 3
    assert driver.adapter.power_cycles == 0  # silence alone never power-cycles the radio


async def test_wedged_device_is_a_gatt_failure_and_kept(
    bluez: MockBlueZ, store: AsyncBuffer
) -> None:
    cuff = OmronCuff(records=RECORDS, clock=None, pairing_mode=True, idle_timeout=30)
    cuff.faults.silent = True  # accepts the link, then never answers RACP
    bluez.adapter().add_peripheral(cuff)
    a = assignment(DeviceFamily.OMRON_BPM, cuff.address, "BP7000", delete_after_transfer=True)
    driver = BleDriver([a], store, options=fast_options())
    status = driver.workers[0].status
    async with running(driver) as task:
        await eventually(
            lambda: status.last_error_class is ErrorClass.GATT, task=task, driver=driver
        )
        assert status.state in (DeviceState.BACKOFF, DeviceState.WAITING, DeviceState.CONNECTING)
        cuff.faults.silent = False
        await eventually(lambda: status.readings_stored == 5, task=task, driver=driver)
    await _exactly_all(store)


async def test_runs_under_the_supervisor(bluez: MockBlueZ, store: AsyncBuffer) -> None:
    cuff = AndCuff(records=RECORDS)
    driver = _and_driver(bluez, store, cuff)
    supervisor = Supervisor([driver])
    status = driver.workers[0].status
    task = asyncio.create_task(supervisor.run())
    try:
        await eventually(lambda: status.readings_stored == 5, driver=driver)
        assert supervisor.states["ble"].state == "running"
    finally:
        supervisor.stop()
        async with asyncio.timeout(10):
            await task
    assert status.state is DeviceState.STOPPED
    await _exactly_all(store)
