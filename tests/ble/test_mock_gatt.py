"""The real bleak (scanner, client, bleak-retry-connector) against the mock BlueZ: basics."""

import asyncio
from typing import Unpack

import pytest
from bleak import BleakClient, BleakScanner
from bleak.args.bluez import OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.exc import (
    BleakBluetoothNotAvailableError,
    BleakDBusError,
    BleakError,
    BleakGATTProtocolError,
)
from hw_mocks.bluez import (
    AttError,
    Characteristic,
    Descriptor,
    GattService,
    MockBlueZ,
    SimPeripheral,
    uuid16,
)
from hw_mocks.bluez.peripheral import PeripheralOptions

from tests.ble.helpers import STEP, connect, eventually, find

ADDR = "C0:FF:EE:00:00:01"
SVC = "12345678-1234-5678-1234-56789abcdef0"
CH_READ = "12345678-1234-5678-1234-56789abcdef1"
CH_WRITE = "12345678-1234-5678-1234-56789abcdef2"
CH_NOTIFY = "12345678-1234-5678-1234-56789abcdef3"
CH_INDICATE = "12345678-1234-5678-1234-56789abcdef4"
CH_CMD = "12345678-1234-5678-1234-56789abcdef5"
USER_DESC = uuid16(0x2901)


class Gadget(SimPeripheral):
    """A generic peripheral with one characteristic per GATT feature."""

    def __init__(self, address: str = ADDR, **kwargs: Unpack[PeripheralOptions]) -> None:
        options: PeripheralOptions = {
            "rssi": -48,
            "manufacturer_data": {0xFFFF: b"\x01\x02\x03"},
            "service_data": {SVC: b"\x09"},
        }
        options.update(kwargs)
        super().__init__(
            address,
            "Gadget",
            [
                GattService(
                    SVC,
                    [
                        Characteristic(
                            CH_READ,
                            ("read",),
                            b"hello",
                            descriptors=[Descriptor(USER_DESC, b"greeting")],
                        ),
                        Characteristic(CH_WRITE, ("read", "write")),
                        Characteristic(CH_NOTIFY, ("notify",)),
                        Characteristic(CH_INDICATE, ("indicate",)),
                        Characteristic(CH_CMD, ("write-without-response",)),
                    ],
                )
            ],
            service_uuids=[SVC],
            **options,
        )
        self.reject_writes_with: int | None = None

    def on_write(self, char: Characteristic, data: bytes, with_response: bool) -> None:
        if self.reject_writes_with is not None:
            raise AttError(self.reject_writes_with)
        char.value = data


async def test_scanner_sees_advertisement_with_manufacturer_data(bluez: MockBlueZ) -> None:
    bluez.adapter().add_peripheral(Gadget())
    seen = asyncio.Event()
    adverts = []

    def on_advert(device, adv) -> None:
        if device.address == ADDR:
            adverts.append((device, adv))
            seen.set()

    async with BleakScanner(on_advert):
        await asyncio.wait_for(seen.wait(), STEP)
    device, adv = adverts[0]
    assert device.name == "Gadget"
    assert adv.local_name == "Gadget"
    assert adv.manufacturer_data == {0xFFFF: b"\x01\x02\x03"}
    assert adv.service_data == {SVC: b"\x09"}
    assert adv.service_uuids == [SVC]
    assert adv.rssi == -48
    assert bluez.was_called("StartDiscovery")
    assert bluez.was_called("StopDiscovery")
    assert not bluez.adapter().discovering


async def test_anonymous_device_and_service_filter(bluez: MockBlueZ) -> None:
    hci0 = bluez.adapter()
    hci0.add_peripheral(Gadget())
    anon = SimPeripheral("C0:FF:EE:00:00:02", None, [], service_uuids=[uuid16(0x1822)])
    hci0.add_peripheral(anon)
    found = await BleakScanner.discover(timeout=0.3, return_adv=True)
    assert found["C0:FF:EE:00:00:02"][0].name is None
    assert found[ADDR][0].name == "Gadget"
    only = await BleakScanner.discover(timeout=0.3, service_uuids=[uuid16(0x1822)])
    assert [d.address for d in only] == ["C0:FF:EE:00:00:02"]


async def test_device_that_starts_advertising_during_a_scan_is_found(bluez: MockBlueZ) -> None:
    gadget = Gadget(advertising=False)
    bluez.adapter().add_peripheral(gadget)
    asyncio.get_running_loop().call_later(0.2, gadget.set_advertising, True)
    device = await find(ADDR)
    assert device.name == "Gadget"


async def test_connect_read_write_and_descriptors(bluez: MockBlueZ) -> None:
    gadget = Gadget()
    bluez.adapter().add_peripheral(gadget)
    link = await connect(ADDR)
    try:
        client = link.client
        assert client.is_connected
        service = client.services.get_service(SVC)
        assert service is not None
        assert {c.uuid for c in service.characteristics} == {
            CH_READ,
            CH_WRITE,
            CH_NOTIFY,
            CH_INDICATE,
            CH_CMD,
        }
        notify_char = service.get_characteristic(CH_NOTIFY)
        assert notify_char is not None
        assert [d.uuid for d in notify_char.descriptors] == [uuid16(0x2902)]
        assert await client.read_gatt_char(CH_READ) == b"hello"
        read_char = service.get_characteristic(CH_READ)
        assert read_char is not None
        desc = read_char.get_descriptor(USER_DESC)
        assert desc is not None
        assert await client.read_gatt_descriptor(desc) == b"greeting"
        await client.write_gatt_char(CH_WRITE, b"\x01\x02", response=True)
        assert gadget.char(CH_WRITE).value == b"\x01\x02"
        assert await client.read_gatt_char(CH_WRITE) == b"\x01\x02"
        await client.write_gatt_char(CH_CMD, b"\x07", response=False)
        assert gadget.events_of("write", CH_CMD)[0].data == b"\x07"
        cccd = notify_char.descriptors[0]
        assert await client.read_gatt_descriptor(cccd) == b"\x00\x00"
    finally:
        await link.close()
    assert not gadget.connected
    assert gadget.events_of("disconnect")[0].detail == "local host terminated"


async def test_gatt_errors_map_to_bleak_errors(bluez: MockBlueZ) -> None:
    gadget = Gadget()
    bluez.adapter().add_peripheral(gadget)
    link = await connect(ADDR)
    try:
        gadget.reject_writes_with = 0x80
        with pytest.raises(BleakGATTProtocolError) as excinfo:
            await link.client.write_gatt_char(CH_WRITE, b"\x01", response=True)
        assert excinfo.value.code == 0x80
        with pytest.raises(BleakGATTProtocolError):
            await link.client.read_gatt_char(CH_NOTIFY)  # not readable
        bluez.adapter().device(ADDR).fail_next(
            "ReadValue", "org.bluez.Error.InProgress", "In Progress"
        )
        assert await link.client.read_gatt_char(CH_READ) == b"hello"  # bleak retries
    finally:
        await link.close()


@pytest.mark.parametrize("use_start_notify", [True, False], ids=["StartNotify", "AcquireNotify"])
async def test_notifications_reach_the_callback(bluez: MockBlueZ, use_start_notify: bool) -> None:
    gadget = Gadget()
    bluez.adapter().add_peripheral(gadget)
    link = await connect(ADDR)
    try:
        await link.subscribe(CH_NOTIFY, bluez={"use_start_notify": use_start_notify})
        await gadget.wait_for("subscribe", CH_NOTIFY)
        assert gadget.char(CH_NOTIFY).notifying
        for i in range(3):
            assert gadget.notify(CH_NOTIFY, bytes([i]))
        assert [await link.next(CH_NOTIFY) for _ in range(3)] == [b"\x00", b"\x01", b"\x02"]
        await asyncio.wait_for(link.client.stop_notify(CH_NOTIFY), STEP)
        await gadget.wait_for("unsubscribe", CH_NOTIFY)
        assert not gadget.notify(CH_NOTIFY, b"late")
        assert gadget.events_of("dropped", CH_NOTIFY)[0].data == b"late"
    finally:
        await link.close()


async def test_indications_and_peer_disconnect_fire_the_callback(bluez: MockBlueZ) -> None:
    gadget = Gadget()
    bluez.adapter().add_peripheral(gadget)
    link = await connect(ADDR)
    await link.subscribe(CH_INDICATE)
    assert gadget.notify(CH_INDICATE, b"\xaa")
    assert await link.next(CH_INDICATE) == b"\xaa"
    gadget.disconnect("peer went to sleep")
    await link.wait_disconnected()
    assert not link.client.is_connected
    await link.close()
    device = bluez.adapter().device(ADDR)
    assert not device.connected
    assert not device.services_resolved
    assert device.gatt_exported  # BlueZ keeps the GATT objects after a disconnect


async def test_retry_connector_survives_le_connection_abort(bluez: MockBlueZ) -> None:
    gadget = Gadget()
    gadget.faults.connect_errors = [("org.bluez.Error.Failed", "le-connection-abort-by-local")]
    bluez.adapter().add_peripheral(gadget)
    link = await connect(ADDR)
    try:
        assert link.client.is_connected
        assert [c.member for c in bluez.calls].count("Connect") == 2
    finally:
        await link.close()


async def test_reconnect_after_disconnect(bluez: MockBlueZ) -> None:
    gadget = Gadget()
    bluez.adapter().add_peripheral(gadget)
    for _ in range(2):
        link = await connect(ADDR)
        assert await link.client.read_gatt_char(CH_READ) == b"hello"
        await link.close()
    assert gadget.connections == 2


async def test_bond_required_gives_insufficient_authentication(bluez: MockBlueZ) -> None:
    gadget = Gadget(require_bond=True)
    bluez.adapter().add_peripheral(gadget)
    link = await connect(ADDR)
    try:
        with pytest.raises(BleakGATTProtocolError) as excinfo:
            await link.client.read_gatt_char(CH_READ)
        assert excinfo.value.code == 0x05
    finally:
        await link.close()


async def test_adapter_powered_off_means_no_bluetooth(bluez: MockBlueZ) -> None:
    bluez.adapter().power_off()
    with pytest.raises(BleakBluetoothNotAvailableError):
        await BleakScanner.discover(timeout=0.1)


async def test_start_discovery_error_is_reported(bluez: MockBlueZ) -> None:
    bluez.adapter().fail_next("StartDiscovery", "org.bluez.Error.InProgress", "In Progress")
    with pytest.raises(BleakDBusError) as excinfo:
        await BleakScanner.discover(timeout=0.1)
    assert excinfo.value.dbus_error == "org.bluez.Error.InProgress"
    await BleakScanner.discover(timeout=0.1)  # the next attempt works


async def test_adverts_repeat_while_advertising_and_stop_when_it_stops(bluez: MockBlueZ) -> None:
    gadget = Gadget()
    bluez.adapter().add_peripheral(gadget)
    seen: list[int] = []
    enough = asyncio.Event()

    def on_advert(device, adv) -> None:
        seen.append(adv.rssi)
        if len(seen) >= 3:
            enough.set()

    async with BleakScanner(on_advert):
        await asyncio.wait_for(enough.wait(), STEP)  # RSSI refreshes keep coming
        gadget.update_advertisement(rssi=-70, manufacturer_data={0xFFFF: b"\x04"})
        await eventually(lambda: seen[-1] == -70)
        gadget.set_advertising(False)  # e.g. the cuff went back to sleep
        await asyncio.sleep(0.1)
        count = len(seen)
        await asyncio.sleep(0.3)
        assert len(seen) == count  # silence: what a scanner watchdog would notice


async def test_client_by_address_string_scans_then_connects(bluez: MockBlueZ) -> None:
    bluez.adapter().add_peripheral(Gadget())
    async with BleakClient(ADDR, timeout=STEP) as client:
        assert await client.read_gatt_char(CH_READ) == b"hello"
    assert (await BleakScanner.find_device_by_name("Gadget", timeout=STEP)) is not None


async def test_passive_scanning_is_reported_unsupported(bluez: MockBlueZ) -> None:
    scanner = BleakScanner(
        scanning_mode="passive",
        bluez={"or_patterns": [OrPattern(0, AdvertisementDataType.FLAGS, b"\x06")]},
    )
    with pytest.raises(BleakError, match="passive scanning"):
        await scanner.start()
