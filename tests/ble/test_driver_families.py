"""End to end per simulated device: advertisement -> pairing -> time set -> stored records ->
readings in the encrypted buffer, with the real bleak against the mock BlueZ."""

from datetime import datetime
from decimal import Decimal

from hw_mocks.bluez import MockBlueZ
from hw_mocks.bluez.devices import (
    CURRENT_TIME,
    RACP,
    AndCuff,
    BeurerCuff,
    NoninOximeter,
    OmronCuff,
    PlxOximeter,
)
from hw_mocks.bluez.payloads import BloodPressureRecord, PlxContinuousSample, PlxSpotRecord

from agent import codes
from agent.buffer import AsyncBuffer
from agent.drivers.ble import BleDriver, DeviceFamily
from agent.model import Lane, Reading
from tests.ble.driver_support import (
    NOW,
    PATIENT,
    assignment,
    bp_key,
    eventually,
    fast_options,
    running,
    stored,
    value,
)
from tests.ble.driver_support import hang_guard as hang_guard  # autouse fixture
from tests.ble.driver_support import store as store  # the fixture

RECORDS = [
    BloodPressureRecord(120 + i, 80 + i, pulse=60 + i, timestamp=datetime(2026, 11, 20, 8, i, 0))
    for i in range(5)
]


def samples_of(reading: Reading) -> dict[int, list[Decimal | None]]:
    """Channel mdc -> sample values of a chunk reading."""
    assert reading.samples is not None
    return {c.mdc: [c.decimal(i) for i in range(len(c.values))] for c in reading.samples.channels}


def expected(records: list[BloodPressureRecord]) -> list[tuple[object, ...]]:
    return sorted((r.systolic, r.diastolic, r.pulse, r.timestamp) for r in records)


async def test_and_cuff(bluez: MockBlueZ, store: AsyncBuffer) -> None:
    cuff = AndCuff(records=RECORDS)
    device = bluez.adapter().add_peripheral(cuff)
    a = assignment(DeviceFamily.AND_BPM, cuff.address, "UA-651BLE", manufacturer="A&D")
    driver = BleDriver([a], store, options=fast_options())
    status = driver.workers[0].status
    async with running(driver) as task:
        await eventually(
            lambda: status.readings_stored == 5 and status.transfers >= 1, task=task, driver=driver
        )
    readings = await stored(store)
    assert sorted(bp_key(r) for r in readings) == expected(RECORDS)
    assert {r.patient for r in readings} == {PATIENT}
    assert device.paired
    assert cuff.paired
    assert cuff.clock_set_to == NOW
    assert cuff.records == []
    assert not bluez.was_called("RemoveDevice")


async def test_omron_cuff(bluez: MockBlueZ, store: AsyncBuffer) -> None:
    cuff = OmronCuff(records=RECORDS, clock=None, pairing_mode=True, cts_write_att_error=0x80)
    device = bluez.adapter().add_peripheral(cuff)
    a = assignment(DeviceFamily.OMRON_BPM, cuff.address, "BP7000", delete_after_transfer=True)
    driver = BleDriver([a], store, options=fast_options())
    status = driver.workers[0].status
    async with running(driver) as task:
        await eventually(
            lambda: status.readings_stored == 5 and status.transfers >= 1, task=task, driver=driver
        )
        await eventually(lambda: cuff.store.records == [], task=task, driver=driver)
    readings = await stored(store)
    assert sorted(bp_key(r) for r in readings) == expected(RECORDS)
    assert device.paired
    assert cuff.time_written == NOW  # the Current Time written back (ATT 0x80 tolerated)
    writes = cuff.events_of("write", CURRENT_TIME)
    assert len(writes[0].data) == 10
    # the delete came only after the report completed (and the readings were stored)
    racp = [e.data[:2] for e in cuff.events_of("write", RACP)]
    assert racp[0] == bytes([0x01, 0x01])
    assert bytes([0x02, 0x02]) in racp  # delete <= advertised sequence number
    assert not bluez.was_called("RemoveDevice")


async def test_plx_oximeter(bluez: MockBlueZ, store: AsyncBuffer) -> None:
    spots = [
        PlxSpotRecord(95 + i, 70 + i, timestamp=datetime(2026, 11, 21, 22, i, 0)) for i in range(3)
    ]
    samples = [PlxContinuousSample(97, 64), PlxContinuousSample(96, 65, pulse_amplitude_index=8)]
    oxi = PlxOximeter(stored=spots, samples=samples, interval=0.05, repeat=False)
    device = bluez.adapter().add_peripheral(oxi)
    a = assignment(DeviceFamily.PLX, oxi.address, "PLX-100")
    driver = BleDriver([a], store, options=fast_options())
    status = driver.workers[0].status
    async with running(driver) as task:
        await eventually(lambda: status.transfers >= 1, task=task, driver=driver)
    readings = await stored(store)
    spot = [r for r in readings if r.lane is Lane.SPOT]
    cont = [r for r in readings if r.lane is Lane.CONTINUOUS]
    assert sorted(
        (value(r, codes.SPO2), value(r, codes.PULSE_RATE_OXIM), r.device_time) for r in spot
    ) == [(s.spo2, s.pulse, s.timestamp) for s in spots]
    assert all("data-from-measurement-storage" in r.status for r in spot)
    first = samples_of(cont[0])
    assert first[codes.SPO2.mdc][:2] == [Decimal(97), Decimal(96)]
    assert first[codes.PULSE_RATE_OXIM.mdc][:2] == [Decimal(64), Decimal(65)]
    assert first[codes.PERFUSION_INDEX.mdc][:2] == [None, Decimal(8)]
    assert all(r.device_time is None and r.samples is not None for r in cont)
    assert device.paired
    assert status.decode_errors == 0


async def test_nonin_oximeter(bluez: MockBlueZ, store: AsyncBuffer) -> None:
    nonin = NoninOximeter(samples=[(97, 64), (96, 66), (None, None)], interval=0.05, repeat=False)
    device = bluez.adapter().add_peripheral(nonin)
    a = assignment(DeviceFamily.NONIN, nonin.address, "3230")
    driver = BleDriver([a], store, options=fast_options())
    status = driver.workers[0].status
    async with running(driver) as task:
        await eventually(lambda: status.transfers >= 1, task=task, driver=driver)
    readings = await stored(store)
    first = samples_of(min(readings, key=lambda r: r.captured.mono_ns))
    assert first[codes.SPO2.mdc][:3] == [Decimal(97), Decimal(96), None]
    assert first[codes.PULSE_RATE_OXIM.mdc][:3] == [Decimal(64), Decimal(66), None]
    assert {r.lane for r in readings} == {Lane.CONTINUOUS}
    assert nonin.clock_set_to == NOW
    assert device.paired


async def test_beurer_cuff_quirks_and_settle_delay(bluez: MockBlueZ, store: AsyncBuffer) -> None:
    cuff = BeurerCuff(records=RECORDS[:3], settle_time=0.05)
    bluez.adapter().add_peripheral(cuff)
    a = assignment(DeviceFamily.BPM, cuff.address, "BM85", manufacturer="Beurer")
    driver = BleDriver([a], store, options=fast_options())
    status = driver.workers[0].status
    async with running(driver) as task:
        # the cuff keeps its records: the second transfer sends them again
        await eventually(lambda: status.transfers >= 2, task=task, driver=driver)
    readings = await stored(store)
    assert sorted(bp_key(r) for r in readings) == expected(RECORDS[:3])
    assert status.readings_stored == 3
    assert status.duplicates >= 3  # the re-sent records, dropped by the buffer's natural key
    assert all(value(r, codes.BP_MEAN) is None for r in readings)  # MAP 00 00 = not measured


async def test_and_cuff_new_measurement_later(bluez: MockBlueZ, store: AsyncBuffer) -> None:
    cuff = AndCuff(records=RECORDS[:2])
    bluez.adapter().add_peripheral(cuff)
    a = assignment(DeviceFamily.AND_BPM, cuff.address, "UA-651BLE")
    driver = BleDriver([a], store, options=fast_options())
    status = driver.workers[0].status
    async with running(driver) as task:
        await eventually(lambda: status.readings_stored == 2, task=task, driver=driver)
        await eventually(lambda: not cuff.advertising, task=task, driver=driver)  # asleep
        cuff.add_record(RECORDS[2])  # the patient measures again; the cuff advertises
        await eventually(lambda: status.readings_stored == 3, task=task, driver=driver)
    readings = await stored(store)
    assert sorted(bp_key(r) for r in readings) == expected(RECORDS[:3])
    assert [c.member for c in bluez.calls].count("Pair") == 1


async def test_omron_downloads_only_new_records(bluez: MockBlueZ, store: AsyncBuffer) -> None:
    cuff = OmronCuff(records=RECORDS[:4], clock=None, pairing_mode=True)
    bluez.adapter().add_peripheral(cuff)
    a = assignment(DeviceFamily.OMRON_BPM, cuff.address, "BP7000")
    driver = BleDriver([a], store, options=fast_options())
    status = driver.workers[0].status
    async with running(driver) as task:
        await eventually(lambda: status.readings_stored == 4, task=task, driver=driver)
        await eventually(lambda: status.transfers >= 2, task=task, driver=driver)
        cuff.add_record(RECORDS[4])  # advertised as sequence number 5
        await eventually(lambda: status.readings_stored == 5, task=task, driver=driver)
    readings = await stored(store)
    assert sorted(bp_key(r) for r in readings) == expected(RECORDS)
    requests = [e.data for e in cuff.events_of("write", RACP)]
    assert requests[0] == bytes([0x01, 0x01])  # all, the first time
    assert bytes([0x01, 0x03, 0x01, 0x05, 0x00]) in requests  # then >= 5 only
    assert requests.count(bytes([0x01, 0x01])) == 1
    assert status.duplicates == 0  # nothing was sent twice


async def test_several_devices_at_once(bluez: MockBlueZ, store: AsyncBuffer) -> None:
    nonin = NoninOximeter(samples=[(97, 64)] * 8, interval=0.05, repeat=True)
    cuff = AndCuff(records=RECORDS)
    omron = OmronCuff("28:FF:B2:A8:3A:77", records=RECORDS[:2], clock=None, pairing_mode=True)
    for p in (nonin, cuff, omron):
        bluez.adapter().add_peripheral(p)
    driver = BleDriver(
        [
            assignment(DeviceFamily.NONIN, nonin.address, "3230"),
            assignment(DeviceFamily.AND_BPM, cuff.address, "UA-651BLE"),
            assignment(DeviceFamily.OMRON_BPM, omron.address, "BP7000"),
        ],
        store,
        options=fast_options(),
    )
    oxi, bp, om = (w.status for w in driver.workers)
    async with running(driver) as task:
        await eventually(
            lambda: bp.readings_stored == 5 and om.readings_stored == 2 and nonin.connected,
            task=task,
            driver=driver,
        )
    readings = await stored(store)
    cuffs = [r for r in readings if r.lane is Lane.SPOT]
    assert sorted(bp_key(r) for r in cuffs) == sorted(expected(RECORDS) + expected(RECORDS[:2]))
    assert len({r.device.serial for r in cuffs}) == 2
    assert oxi.connections >= 1
