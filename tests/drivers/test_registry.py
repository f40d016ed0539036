"""The transport registry: ``[[devices]]`` tables -> one driver per transport, errors name keys."""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from agent.buffer import AppendResult, AsyncBuffer
from agent.config import AgentConfig, BleSettings
from agent.daemon import services_from_config
from agent.drivers import registry
from agent.drivers.contract import (
    DeviceTable,
    DeviceTableError,
    Driver,
    DriverContext,
    ReadingSink,
)
from agent.errors import ConfigError
from agent.model import Reading

PATIENT = "pt-secret-4711"
ADDRESS = "00:09:1F:4B:6B:01"


def ble(**overrides: Any) -> dict[str, Any]:
    table: dict[str, Any] = {"family": "and-bpm", "patient": PATIENT, "address": ADDRESS}
    table.update(overrides)
    return table


class Sink:
    async def append(self, readings: Sequence[Reading]) -> AppendResult:
        return AppendResult(len(readings), 0)


def build(tables: Sequence[object], **kwargs: Any) -> list[Driver]:
    return registry.create_drivers(tables, Sink(), state_dir=Path("/nonexistent"), **kwargs)


@pytest.mark.parametrize("name", sorted(registry.TRANSPORTS))
def test_every_transport_builds_from_a_device_table(name: str) -> None:
    # All three transports of issue 7 are written: none may be "not available" (that path is
    # test_only_an_absent_transport_module_counts_as_not_available).
    assert set(registry.TRANSPORTS) == {"ble", "serial", "cpap-card"}
    factory = registry.transport(name)
    assert factory.name == name
    (driver,) = build([{"transport": name, **factory.example}])
    assert driver.name == name
    assert callable(driver.run)
    assert callable(driver.status_section)


def test_a_table_without_transport_is_ble_and_one_driver_serves_all() -> None:
    from agent.drivers.ble import BleDriver

    tables = [
        ble(),
        ble(transport="ble", address="00:09:1F:4B:6B:02", family="omron-bpm"),
        ble(address="", name="Nonin3230_1", family="nonin"),
    ]
    (driver,) = build(tables, settings={"ble": {"adapter": "hci7"}})
    assert isinstance(driver, BleDriver)
    assert driver.name == "ble"
    assert [str(a.family) for a in driver.assignments] == ["and-bpm", "omron-bpm", "nonin"]
    assert driver.options.adapter == "hci7"


def test_validate_device_table_returns_the_transports_settings() -> None:
    from agent.drivers.ble import DeviceAssignment

    checked = registry.validate_device_table(3, ble(model="UA-651BLE"))
    assert checked.index == 3
    assert checked.transport == "ble"
    assert checked.key("address") == "[[devices]][3].address"
    assert isinstance(checked.settings, DeviceAssignment)
    assert checked.settings.model == "UA-651BLE"
    assert DeviceAssignment.from_config(checked.settings.to_config()) == checked.settings
    assert checked.settings.to_config()["transport"] == "ble"


def test_an_unknown_transport_is_rejected_naming_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        build([ble(), {"transport": "usb", "port": "/dev/ttyUSB0"}])
    assert str(err.value) == (
        "[[devices]][1].transport: unknown transport 'usb'; known: ble, cpap-card, serial"
    )
    assert isinstance(err.value, DeviceTableError)
    assert err.value.key == "[[devices]][1].transport"
    with pytest.raises(ConfigError, match=r"^\[\[devices\]\]\[0\]\.transport: unknown transport"):
        build([{"transport": 7}])


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (ble(address="nope"), "[[devices]][1].address: must look like AA:BB:CC:DD:EE:FF"),
        (ble(family="toaster"), "[[devices]][1].family: must be one of "),
        (ble(colour="red"), "[[devices]][1].colour: unknown key; a BLE device table has "),
        (ble(bond="yes"), "[[devices]][1].bond: must be true or false"),
        (ble(patient=""), "[[devices]][1].patient: an assignment needs a patient reference"),
        (ble(patient=42), "[[devices]][1].patient: must be a string"),
        (ble(address=""), "[[devices]][1].address: an assignment needs an address or an "),
        ("family = 'bpm'", "[[devices]][1]: must be a table"),
    ],
)
def test_bad_tables_are_rejected_naming_the_key(table: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build([ble(address="00:09:1F:4B:6B:09"), table])
    assert str(err.value).startswith(message)
    assert PATIENT not in str(err.value)
    with pytest.raises(DeviceTableError) as again:
        registry.validate_device_table(1, table)
    assert str(again.value) == str(err.value)


def test_one_device_in_two_tables_is_rejected() -> None:
    with pytest.raises(ConfigError) as err:
        build([ble(), ble(family="bpm")])
    assert str(err.value) == (
        "[[devices]][1].address: the same device as [[devices]][0] (one table per device)"
    )
    with pytest.raises(ConfigError, match=r"^\[\[devices\]\]\[2\]\.name: the same device"):
        build([ble(), ble(address="", name="X"), ble(address="", name="X")])


@dataclass
class FakeDriver:
    name: str
    devices: list[DeviceTable]
    context: DriverContext
    started: bool = False

    async def run(self) -> None:
        self.started = True

    async def status_section(self) -> Mapping[str, Any]:
        return {"devices": len(self.devices)}


@dataclass
class FakeTransport:
    name: str
    example: Mapping[str, Any] = field(default_factory=lambda: {"port": "/dev/ttyUSB0"})

    def validate(self, table: Mapping[str, Any]) -> str:
        port = table.get("port")
        if not isinstance(port, str):
            raise DeviceTableError("port", "must be a device path")
        return port

    def create(
        self, devices: Sequence[DeviceTable], sink: ReadingSink, context: DriverContext
    ) -> Driver:
        return FakeDriver(self.name, list(devices), context)


def test_tables_are_grouped_per_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("tests_fake_serial_transport")
    module.TRANSPORT = FakeTransport("serial")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cast(dict[str, str], registry.TRANSPORTS), "serial", module.__name__)
    drivers = build(
        [
            {"transport": "serial", "port": "/dev/ttyUSB0"},
            ble(),
            {"transport": "serial", "port": "/dev/ttyUSB1"},
        ],
        settings={"serial": {"baud": 1}},
    )
    assert [d.name for d in drivers] == ["serial", "ble"]
    serial = drivers[0]
    assert isinstance(serial, FakeDriver)
    assert [(d.index, d.settings) for d in serial.devices] == [
        (0, "/dev/ttyUSB0"),
        (2, "/dev/ttyUSB1"),
    ]
    assert serial.context.settings == {"baud": 1}
    assert not serial.started  # building does no I/O
    with pytest.raises(ConfigError, match=r"^\[\[devices\]\]\[1\]\.port: must be a device path"):
        build([ble(), {"transport": "serial"}])


def test_only_an_absent_transport_module_counts_as_not_available(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    transports = cast(dict[str, str], registry.TRANSPORTS)
    monkeypatch.setitem(transports, "serial", "agent.drivers.ble.no_such_module")
    with pytest.raises(registry.TransportUnavailableError):
        registry.transport("serial")
    # a module that exists but needs a missing library is an error, not "not available yet"
    package = tmp_path / "halfdone"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "transport.py").write_text("import a_library_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(transports, "serial", "halfdone.transport")
    with pytest.raises(ModuleNotFoundError, match="a_library_that_is_not_installed"):
        registry.transport("serial")
    module = types.ModuleType("tests_fake_broken_transport")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(transports, "serial", module.__name__)
    with pytest.raises(AttributeError):  # a module without TRANSPORT is a bug too
        registry.transport("serial")


def test_importing_and_validating_loads_no_transport_library() -> None:
    code = (
        "import sys\n"
        "from agent.drivers import registry, decode\n"
        "registry.validate_device_table(0, {'family': 'and-bpm', 'patient': 'p',"
        " 'address': '00:09:1F:4B:6B:01'})\n"
        "bad = sorted(m for m in ('bleak', 'bleak_retry_connector', 'dbus_fast', 'serial')"
        " if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_the_daemon_builds_drivers_through_the_registry(tmp_path: Path) -> None:
    from agent.drivers.ble import BleDriver

    buffer = cast(AsyncBuffer, object())  # only handed to the sink; nothing is appended
    cfg = AgentConfig(state_dir=tmp_path, ble=BleSettings(adapter="hci3"), devices=(ble(),))
    care, service = services_from_config(cfg, buffer)  # the care service is always there
    assert care.name == "care"
    assert isinstance(service, BleDriver)
    assert service.options.adapter == "hci3"
    bad = AgentConfig(state_dir=tmp_path, devices=(ble(), {"transport": "zigbee"}))
    with pytest.raises(ConfigError, match=r"^\[\[devices\]\]\[1\]\.transport: unknown"):
        services_from_config(bad, buffer)
    assert [s.name for s in services_from_config(AgentConfig(state_dir=tmp_path), buffer)] == [
        "care"
    ]
