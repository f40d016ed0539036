"""``dho-provision pair`` against the mock BlueZ: passkey from the technician, TOML out."""

from __future__ import annotations

import tomllib

import pytest
from hw_mocks.bluez.bus import PrivateBus
from hw_mocks.bluez.devices import AndCuff
from hw_mocks.bluez.threaded import ThreadedMockBlueZ
from typer.testing import CliRunner

from agent.drivers.ble import DeviceAssignment
from provisioning.cli import app


def test_pair_asks_the_technician_for_the_passkey_and_prints_the_assignment(
    private_bus: PrivateBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", private_bus.address)
    with ThreadedMockBlueZ(private_bus.address) as bluez:
        address = bluez.call(
            lambda m: (
                m.adapter()
                .add_peripheral(AndCuff(pairing="passkey", passkey=123456))
                .peripheral.address
            )
        )
        args = ["pair", "and-bpm", address, "--patient", "pt-42", "--scan-timeout", "10"]
        result = CliRunner().invoke(app, args, input="123456\n")
        assert result.exit_code == 0, result.output
        assert bluez.call(lambda m: m.adapter().device(address).paired)
    toml = result.output.split("add to /etc/dho-gateway/agent.toml:\n", 1)[1]
    table = tomllib.loads(toml)["devices"][0]
    assignment = DeviceAssignment.from_config(table)
    assert assignment.address == address
    assert assignment.patient == "pt-42"
    assert assignment.serial  # read from Device Information while paired


def test_pair_refuses_an_unknown_family() -> None:
    result = CliRunner().invoke(app, ["pair", "toaster", "00:11:22:33:44:55", "--patient", "p"])
    assert result.exit_code == 2
