"""The D-Bus contract of ble-gatt.md §3.6, checked with a plain dbus-fast client, plus the bus
launcher and the demo entry point."""

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
from hw_mocks.bluez import MockBlueZ, PrivateBus
from hw_mocks.bluez.devices import PLX_FEATURES, PlxOximeter
from hw_mocks.bluez.testing import release_bleak_manager
from hw_mocks.bluez.threaded import ThreadedMockBlueZ

from tests.ble.helpers import connect, eventually

ROOT = Path(__file__).resolve().parents[2]


async def _managed_objects() -> dict[str, dict[str, dict[str, object]]]:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(
            Message(
                destination="org.bluez",
                path="/",
                interface="org.freedesktop.DBus.ObjectManager",
                member="GetManagedObjects",
            )
        )
        assert reply is not None
        assert reply.message_type == MessageType.METHOD_RETURN
        return reply.body[0]  # type: ignore[no-any-return]
    finally:
        bus.disconnect()
        await bus.wait_for_disconnect()


async def test_object_layout_and_property_types(bluez: MockBlueZ) -> None:
    oxi = PlxOximeter(manufacturer_data={0x1234: b"\x01"}, service_data={"x": b"\x02"})
    device = bluez.adapter().add_peripheral(oxi)
    link = await connect(oxi.address)  # exports the GATT objects
    await link.close()
    objects = await _managed_objects()
    adapter = objects["/org/bluez/hci0"]["org.bluez.Adapter1"]
    assert adapter["Powered"].value is True  # type: ignore[attr-defined]
    assert "central" in adapter["Roles"].value  # type: ignore[attr-defined]
    assert "org.bluez.AgentManager1" in objects["/org/bluez"]
    props = objects[device.path]["org.bluez.Device1"]
    assert props["ManufacturerData"].signature == "a{qv}"  # type: ignore[attr-defined]
    assert props["ServiceData"].signature == "a{sv}"  # type: ignore[attr-defined]
    assert props["RSSI"].signature == "n"  # type: ignore[attr-defined]
    chars = {
        path: ifaces["org.bluez.GattCharacteristic1"]
        for path, ifaces in objects.items()
        if "org.bluez.GattCharacteristic1" in ifaces
    }
    assert chars
    for path, char in chars.items():
        assert path[:-21] == device.path  # bleak's device_path_from_characteristic_path
        flags = char["Flags"].value  # type: ignore[attr-defined]
        assert ("NotifyAcquired" in char) == ("notify" in flags)


async def test_second_mock_cannot_take_the_name(bluez: MockBlueZ) -> None:
    with pytest.raises(RuntimeError, match="already owned"):
        await MockBlueZ(bluez.bus_address).start()


def test_mock_refuses_the_real_system_bus(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="system bus"):
        MockBlueZ("unix:path=/run/dbus/system_bus_socket")
    monkeypatch.delenv("DBUS_SYSTEM_BUS_ADDRESS", raising=False)
    with pytest.raises(ValueError, match="private bus"):
        MockBlueZ()


def test_private_bus_leaves_nothing_behind(private_bus: PrivateBus) -> None:
    bus = PrivateBus()
    with bus:
        pid = bus.pid
        socket_dir = bus.socket_path.parent
        assert bus.address.startswith("unix:path=")
        assert bus.socket_path.exists()
        assert pid is not None
        os.kill(pid, 0)  # running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not socket_dir.exists()
    with pytest.raises(RuntimeError):
        _ = bus.address


def test_demo_entry_point_prints_the_address(private_bus: PrivateBus, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "hw-mocks"), str(ROOT)]))
    address_file = tmp_path / "bus"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hw_mocks.bluez",
            "--seconds",
            "0.3",
            "--address-file",
            str(address_file),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=ROOT,
        check=True,
    )
    assert proc.stdout.startswith("DBUS_SYSTEM_BUS_ADDRESS=unix:path=")
    assert "AndCuff" in proc.stdout
    assert "NoninOximeter" in proc.stdout
    assert "ready" in proc.stdout
    assert proc.stdout.startswith("DBUS_SYSTEM_BUS_ADDRESS=" + address_file.read_text().strip())


async def test_advert_refresh_stops_with_discovery(bluez: MockBlueZ) -> None:
    hci0 = bluez.adapter()
    hci0.add_peripheral(PlxOximeter())
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        for member in ("StartDiscovery", "StopDiscovery"):
            reply = await bus.call(
                Message(
                    destination="org.bluez",
                    path=hci0.path,
                    interface="org.bluez.Adapter1",
                    member=member,
                )
            )
            assert reply is not None
            assert reply.message_type == MessageType.METHOD_RETURN
            assert hci0.discovering is (member == "StartDiscovery")
        reply = await bus.call(
            Message(
                destination="org.bluez",
                path=hci0.path,
                interface="org.bluez.Adapter1",
                member="StartDiscovery",
            )
        )
        assert hci0.discovering
    finally:
        bus.disconnect()  # a client that leaves the bus ends its discovery session
        await bus.wait_for_disconnect()
    await eventually(lambda: not hci0.discovering)


def test_threaded_mock_serves_synchronous_code(
    private_bus: PrivateBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", private_bus.address)
    with ThreadedMockBlueZ(private_bus.address) as bluez:
        address = bluez.call(lambda m: m.adapter().add_peripheral(PlxOximeter()).peripheral.address)

        async def scan_and_read() -> bytes:  # what a CLI does with its own asyncio.run
            try:
                link = await connect(address)
                value = bytes(await link.client.read_gatt_char(PLX_FEATURES))
                await link.close()
                return value
            finally:
                await release_bleak_manager()

        assert asyncio.run(scan_and_read()) == bytes.fromhex("0D 00 00 02")
        assert bluez.call(lambda m: m.adapter().device(address).peripheral.connections) == 1
    with pytest.raises(RuntimeError):
        bluez.call(lambda m: None)
