"""Each simulated device's script, driven by the real bleak the way the agent will drive it."""

import asyncio
from datetime import datetime
from decimal import Decimal

import pytest
from bleak import BleakScanner
from bleak.exc import BleakDBusError, BleakGATTProtocolError
from hw_mocks.bluez import MockBlueZ
from hw_mocks.bluez.devices import (
    BPM,
    CURRENT_TIME,
    DATE_TIME,
    NONIN_CONTROL,
    NONIN_OXIMETRY,
    OMRON_COMPANY_ID,
    PLX_CONT,
    PLX_FEATURES,
    PLX_SPOT,
    RACP,
    AndCuff,
    BeurerCuff,
    NoninOximeter,
    OmronCuff,
    PlxOximeter,
)
from hw_mocks.bluez.payloads import (
    BloodPressureRecord,
    PlxContinuousSample,
    PlxSpotRecord,
    bpm,
    current_time,
    date_time,
    plx_spot,
)

from tests.ble.helpers import connect
from tests.ble.pairing_agent import TestAgent

# ble-gatt.md §1.9 vector 6 (derdilla test): 124/86 MAP 97 mmHg, 2024-06-15 17:17:27, pulse 51
VECTOR_6 = BloodPressureRecord(
    124, 86, 97, pulse=51, timestamp=datetime(2024, 6, 15, 17, 17, 27), status=0
)
VECTOR_6_BYTES = bytes.fromhex("16 7C 00 56 00 61 00 E8 07 06 0F 11 11 1B 33 00 00 00")
RECORDS = [
    VECTOR_6,
    BloodPressureRecord(131, 84, pulse=66, timestamp=datetime(2024, 6, 16, 8, 1, 2), user_id=1),
    BloodPressureRecord(Decimal("18.9"), 11, Decimal("15.9")),  # vector 3, minimal frame
]
NOW = datetime(2026, 11, 22, 6, 30, 0)


async def test_and_cuff_sends_records_after_date_time_then_hangs_up(
    bluez: MockBlueZ, agent: TestAgent
) -> None:
    cuff = AndCuff(records=RECORDS)
    bluez.adapter().add_peripheral(cuff)
    link = await connect(cuff.address, pair=True)
    await link.subscribe(BPM)
    await asyncio.sleep(0.05)
    assert link.received[BPM] == []  # nothing before the Date Time write
    await link.client.write_gatt_char(DATE_TIME, date_time(NOW), response=True)
    await link.wait_disconnected()
    assert link.received[BPM] == [VECTOR_6_BYTES, bpm(RECORDS[1]), bytes.fromhex("00BDF00B009FF0")]
    assert cuff.clock_set_to == NOW
    assert cuff.records == []  # a complete transfer empties the memory
    assert cuff.transfers_completed == 1
    await link.close()
    assert await BleakScanner.find_device_by_address(cuff.address, timeout=0.3) is None  # asleep
    cuff.add_record(RECORDS[1])  # the patient measures again: it wakes up and advertises
    link = await connect(cuff.address, pair=True)
    await link.subscribe(BPM)
    await link.client.write_gatt_char(DATE_TIME, date_time(NOW), response=True)
    await link.wait_disconnected()
    assert link.received[BPM] == [bpm(RECORDS[1])]
    await link.close()


async def test_and_cuff_hangs_up_without_date_time(bluez: MockBlueZ) -> None:
    cuff = AndCuff(records=RECORDS, session_timeout=0.5)
    bluez.adapter().add_peripheral(cuff)
    link = await connect(cuff.address)
    await link.subscribe(BPM)
    await link.wait_disconnected()
    assert link.received[BPM] == []
    assert cuff.events_of("disconnect")[0].detail.startswith("A&D: no Date Time")
    assert len(cuff.records) == 3
    await link.close()


async def test_omron_advertises_state_and_runs_cts_and_racp(
    bluez: MockBlueZ, agent: TestAgent
) -> None:
    cuff = OmronCuff(records=RECORDS[:2], clock=None, idle_timeout=1.5)
    bluez.adapter().add_peripheral(cuff)
    found = await BleakScanner.discover(timeout=0.2, return_adv=True)
    _, adv = found[cuff.address]
    # 01 = user data, flags 0x24 = time not set + standard services, seq 2, count 2
    assert adv.manufacturer_data[OMRON_COMPANY_ID] == bytes([0x01, 0x24, 0x02, 0x00, 0x02])
    link = await connect(cuff.address)
    with pytest.raises(BleakDBusError):  # not in pairing mode: the cuff refuses a new bond
        await link.client.pair()
    await link.close()
    cuff.set_pairing_mode(True)
    found = await BleakScanner.discover(timeout=0.2, return_adv=True)
    assert found[cuff.address][1].manufacturer_data[OMRON_COMPANY_ID][1] == 0x2C

    link = await connect(cuff.address, pair=True)
    try:
        await link.subscribe(CURRENT_TIME)
        assert await link.next(CURRENT_TIME) == bytes(10)  # its clock is not set
        await link.client.write_gatt_char(CURRENT_TIME, current_time(NOW), response=True)
        assert cuff.time_written == NOW
        await link.subscribe(RACP)
        await link.subscribe(BPM)
        await link.client.write_gatt_char(RACP, b"\x04\x01", response=True)
        assert await link.next(RACP) == bytes.fromhex("05 00 02 00")
        await link.client.write_gatt_char(RACP, b"\x01\x01", response=True)
        assert [await link.next(BPM) for _ in range(2)] == [VECTOR_6_BYTES, bpm(RECORDS[1])]
        assert await link.next(RACP) == bytes.fromhex("06 00 01 01")
        await link.client.write_gatt_char(RACP, b"\x01\x03\x01\x02\x00", response=True)
        assert await link.next(BPM) == bpm(RECORDS[1])  # records with sequence >= 2
        assert await link.next(RACP) == bytes.fromhex("06 00 01 01")
        await link.client.write_gatt_char(RACP, b"\x02\x01", response=True)
        assert await link.next(RACP) == bytes.fromhex("06 00 02 01")
        await link.client.write_gatt_char(RACP, b"\x01\x01", response=True)
        assert await link.next(RACP) == bytes.fromhex("06 00 01 06")  # no records
        await link.client.write_gatt_char(RACP, b"\x03\x00", response=True)
        assert await link.next(RACP) == bytes.fromhex("06 00 03 01")  # abort (nothing running)
        await link.client.write_gatt_char(RACP, b"\x09\x01", response=True)
        assert await link.next(RACP) == bytes.fromhex("06 00 09 02")  # op not supported
        await link.wait_disconnected(seconds=4.0)  # it idles out
        assert cuff.events_of("disconnect")[-1].detail == "Omron: idle"
    finally:
        await link.close()
    assert cuff.manufacturer_data[OMRON_COMPANY_ID][1] & 0x04 == 0  # clock now set


async def test_omron_answers_the_time_write_with_att_0x80(bluez: MockBlueZ) -> None:
    cuff = OmronCuff(clock=NOW, cts_write_att_error=0x80)
    bluez.adapter().add_peripheral(cuff)
    link = await connect(cuff.address)
    try:
        with pytest.raises(BleakGATTProtocolError) as excinfo:
            await link.client.write_gatt_char(CURRENT_TIME, current_time(NOW), response=True)
        assert excinfo.value.code == 0x80
        assert cuff.time_written == NOW  # applied nevertheless
        with pytest.raises(BleakGATTProtocolError) as excinfo:  # RACP without its CCCD
            await link.client.write_gatt_char(RACP, b"\x01\x01", response=True)
        assert excinfo.value.code == 0xFD
    finally:
        await link.close()


async def test_plx_oximeter_streams_and_serves_stored_spot_checks(bluez: MockBlueZ) -> None:
    spot = PlxSpotRecord(95, 71, timestamp=datetime(2026, 11, 21, 22, 0, 0))
    oxi = PlxOximeter(
        samples=[
            PlxContinuousSample(100, 90),
            # ble-gatt.md §1.9 vector 10: status 0x0020, device status 0, PAI 8.7
            PlxContinuousSample(95, 90, 0x0020, 0, Decimal("8.7")),
        ],
        stored=[spot],
        interval=0.02,
    )
    bluez.adapter().add_peripheral(oxi)
    link = await connect(oxi.address)
    try:
        features = await link.client.read_gatt_char(PLX_FEATURES)
        assert features == bytes.fromhex("0D 00 00 02")
        assert await link.client.read_gatt_char(CURRENT_TIME) == bytes(10)  # clock not set
        await link.client.write_gatt_char(CURRENT_TIME, current_time(NOW), response=True)
        assert oxi.device_clock.written == NOW
        assert (await link.client.read_gatt_char(CURRENT_TIME))[:4] == current_time(NOW)[:4]
        await link.subscribe(PLX_CONT)
        assert await link.next(PLX_CONT) == bytes.fromhex("00 64 00 5A 00")  # vector 9 (plain)
        assert await link.next(PLX_CONT) == bytes.fromhex("1C 5F 00 5A 00 20 00 00 00 00 57 F0")
        await link.subscribe(RACP)
        with pytest.raises(BleakGATTProtocolError) as excinfo:  # spot-check CCCD not enabled
            await link.client.write_gatt_char(RACP, b"\x01\x01", response=True)
        assert excinfo.value.code == 0xFD
        await link.subscribe(PLX_SPOT)
        await link.client.write_gatt_char(RACP, b"\x01\x01", response=True)
        stored = await link.next(PLX_SPOT)
        assert stored[0] & 0x02  # measurement status present ...
        assert stored[-2:] == b"\x00\x02"  # ... with bit 9 "from measurement storage"
        assert await link.next(RACP) == bytes.fromhex("06 00 01 01")
        live = PlxSpotRecord(97, 66)
        assert oxi.take_spot_check(live)
        assert await link.next(PLX_SPOT) == plx_spot(live)
    finally:
        await link.close()


async def test_nonin_streams_frames_and_obeys_its_control_point(bluez: MockBlueZ) -> None:
    nonin = NoninOximeter(samples=[(97, 64), (None, None)], interval=0.02, repeat=False)
    bluez.adapter().add_peripheral(nonin)
    link = await connect(nonin.address)
    await link.subscribe(NONIN_OXIMETRY)
    first = await link.next(NONIN_OXIMETRY)
    second = await link.next(NONIN_OXIMETRY)
    assert len(first) == 10
    assert first[0] == 10
    assert first[1] & 0x10  # sensor attached
    assert int.from_bytes(first[5:7], "big") == 1
    assert first[7] == 97
    assert int.from_bytes(first[8:10], "big") == 64
    assert int.from_bytes(second[5:7], "big") == 2
    assert second[7] == 127  # missing
    assert int.from_bytes(second[8:10], "big") == 511
    assert not second[1] & 0x10
    await link.subscribe(NONIN_CONTROL)
    text = b"DTM=" + NOW.strftime("%y%m%d%H%M%S").encode() + b"\r\n"
    await link.client.write_gatt_char(
        NONIN_CONTROL, b"\x60NMI" + bytes([len(text)]) + text, response=True
    )
    assert await link.next(NONIN_CONTROL) == b"\x06"
    assert nonin.clock_set_to == NOW
    await link.client.write_gatt_char(NONIN_CONTROL, b"\x62NMI", response=True)
    await link.wait_disconnected()
    assert nonin.events_of("disconnect")[0].detail == "Nonin: measurement complete"
    await link.close()


async def test_beurer_sends_quirky_records_then_disconnects(bluez: MockBlueZ) -> None:
    record = BloodPressureRecord(
        120, 80, pulse=77, timestamp=datetime(2026, 11, 21, 7, 5, 9), user_id=2, status=0x0001
    )
    cuff = BeurerCuff(records=[record])
    bluez.adapter().add_peripheral(cuff)
    link = await connect(cuff.address)
    assert link.client.name == "BM85"
    await link.subscribe(BPM)
    await link.wait_disconnected()
    (payload,) = link.received[BPM]
    # flags 0x56 | 0x10 (status), 120/80, MAP 00 00, time, pulse BE, user 2, status BE
    assert payload == bytes.fromhex("56 78 00 50 00 00 00 EA 07 0B 15 07 05 09 00 4D 02 00 01")
    await link.close()


async def test_beurer_stays_silent_when_subscribed_too_early(bluez: MockBlueZ) -> None:
    cuff = BeurerCuff(records=[VECTOR_6], settle_time=3.0)
    bluez.adapter().add_peripheral(cuff)
    link = await connect(cuff.address)
    try:
        await link.subscribe(BPM)
        with pytest.raises(TimeoutError):
            await link.next(BPM, seconds=0.2)
    finally:
        await link.close()


async def test_omron_that_deletes_after_a_transfer(bluez: MockBlueZ) -> None:
    cuff = OmronCuff(records=RECORDS[:2], clock=NOW, delete_after_transfer=True)
    bluez.adapter().add_peripheral(cuff)
    link = await connect(cuff.address)
    try:
        await link.subscribe(RACP)
        await link.subscribe(BPM)
        await link.client.write_gatt_char(RACP, b"\x01\x06", response=True)  # last record
        assert await link.next(BPM) == bpm(RECORDS[1])
        assert await link.next(RACP) == bytes.fromhex("06 00 01 01")
        await link.client.write_gatt_char(RACP, b"\x04\x01", response=True)
        assert await link.next(RACP) == bytes.fromhex("05 00 01 00")
    finally:
        await link.close()
