"""``pair``, ``assign``, ``unassign`` and ``scan`` against the mock BlueZ: the table is written
by the tool, a device of another family is refused, and every failure is a clear error."""

from __future__ import annotations

import json
import os
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hw_mocks.bluez import dbus_daemon_path
from hw_mocks.bluez.bus import PrivateBus
from hw_mocks.bluez.devices import AndCuff, PlxOximeter
from hw_mocks.bluez.threaded import ThreadedMockBlueZ

from agent.drivers.ble import DeviceAssignment
from provisioning.ui import ExitCode
from tests.provision.conftest import provision


@pytest.fixture(scope="module")
def bus() -> Iterator[PrivateBus]:
    if dbus_daemon_path() is None:
        pytest.skip("dbus-daemon is not installed")
    with PrivateBus() as b:
        yield b


@pytest.fixture
def bluez(bus: PrivateBus, monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadedMockBlueZ]:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
    with ThreadedMockBlueZ(bus.address) as mock:
        yield mock


@pytest.fixture
def box(tmp_path: Path) -> Path:
    assert provision("install", "--root", tmp_path).exit_code == 0
    assert provision("init", "--root", tmp_path, "--box-id", "box-devices").exit_code == 0
    return tmp_path


def _devices(box: Path) -> list[dict[str, object]]:
    cfg = tomllib.loads((box / "etc/dho-gateway/agent.toml").read_text())
    found: list[dict[str, object]] = cfg.get("devices", [])
    return found


def test_pair_writes_the_devices_table_itself(bluez: ThreadedMockBlueZ, box: Path) -> None:
    address = bluez.call(
        lambda m: (
            m.adapter()
            .add_peripheral(AndCuff(pairing="passkey", passkey=123456))
            .peripheral.address
        )
    )
    args = ["pair", "and-bpm", address, "--patient", "pt-42", "--scan-timeout", "10"]
    done = provision(*args, "--root", box, input="123456\n")
    assert done.exit_code == 0, done.output
    assert "paired and assigned" in done.stdout
    assert "written to agent.toml" in done.stdout
    assert bluez.call(lambda m: m.adapter().device(address).paired)
    (table,) = _devices(box)
    assignment = DeviceAssignment.from_config(table)
    assert assignment.address == address
    assert assignment.patient == "pt-42"
    assert assignment.serial  # read from Device Information while paired
    # Pairing it again replaces its table instead of adding a second one.
    again = provision(*args, "--root", box, input="123456\n")
    assert again.exit_code == 0, again.output
    assert "replacing its old table" in again.stdout
    assert len(_devices(box)) == 1


def test_pair_refuses_a_device_of_another_family(bluez: ThreadedMockBlueZ, box: Path) -> None:
    cuff = bluez.call(lambda m: m.adapter().add_peripheral(AndCuff()).peripheral.address)
    done = provision("pair", "nonin", cuff, "-p", "pt-1", "--scan-timeout", "10", "--root", box)
    assert done.exit_code == ExitCode.HARDWARE, done.output
    assert "not a nonin device: it is a blood-pressure cuff" in done.stderr
    assert "and-bpm" in done.stderr
    assert _devices(box) == []
    assert not bluez.call(lambda m: m.adapter().device(cuff).paired)


def test_pair_says_the_running_agent_holds_the_devices(bluez: ThreadedMockBlueZ, box: Path) -> None:
    report = {"written_at": time.time(), "pid": os.getpid(), "uplink": {"link": "connected"}}
    (box / "var/lib/dho-gateway/status.json").write_text(json.dumps(report))
    cuff = bluez.call(lambda m: m.adapter().add_peripheral(AndCuff()).peripheral.address)
    done = provision("pair", "and-bpm", cuff, "-p", "pt-1", "--root", box)
    assert done.exit_code == ExitCode.BUSY
    assert "the agent is running" in done.stderr
    assert "holds the Bluetooth devices" in done.stderr
    assert "not advertising" not in done.output


def test_pair_with_a_missing_adapter(bluez: ThreadedMockBlueZ, box: Path) -> None:
    done = provision(
        "pair", "and-bpm", "00:09:1F:00:00:01", "-p", "pt", "--adapter", "hci7", "--root", box
    )
    assert done.exit_code == ExitCode.HARDWARE
    assert "no Bluetooth adapter hci7" in done.stderr
    assert "Traceback" not in done.output


def test_pair_without_dbus(box: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path / 'no-bus'}")
    done = provision("pair", "and-bpm", "00:09:1F:00:00:01", "-p", "pt", "--root", box)
    assert done.exit_code == ExitCode.HARDWARE
    assert "cannot reach BlueZ over the system D-Bus" in done.stderr


def test_pair_refuses_a_patient_not_bound_to_the_box(box: Path) -> None:
    ident = box / "etc/dho-gateway/identity.json"
    data = json.loads(ident.read_text())
    data["patients"] = ["PT-REAL"]
    ident.write_text(json.dumps(data))
    done = provision("assign", "and-bpm", "00:09:1F:00:00:01", "-p", "PT-TYPO", "--root", box)
    assert done.exit_code == ExitCode.USAGE
    assert "not one of the 1 the service bound" in done.stderr
    assert "PT-TYPO" not in done.output  # the reference is not echoed
    ok = provision("assign", "and-bpm", "00:09:1F:00:00:01", "-p", "PT-REAL", "--root", box)
    assert ok.exit_code == 0, ok.output


def test_assign_and_unassign_other_transports(box: Path, tmp_path: Path) -> None:
    card = tmp_path / "card"
    card.mkdir()
    done = provision("assign", "cpap-card", card, "-p", "pt-cpap", "--root", box)
    assert done.exit_code == 0, done.output
    (table,) = _devices(box)
    assert table["transport"] == "cpap-card"
    assert table["path"] == str(card)
    bad = provision("assign", "and-bpm", "not-an-address", "-p", "pt", "--root", box)
    assert bad.exit_code == ExitCode.USAGE
    assert "AA:BB:CC:DD:EE:FF" in bad.stderr
    unknown = provision("assign", "toaster", "x", "-p", "pt", "--root", box)
    assert unknown.exit_code == ExitCode.USAGE
    assert "unknown device family 'toaster'" in unknown.stderr
    gone = provision("unassign", str(card), "--root", box)
    assert gone.exit_code == 0, gone.output
    assert _devices(box) == []
    missing = provision("unassign", "00:11:22:33:44:55", "--root", box)
    assert missing.exit_code == ExitCode.USAGE


def test_scan_shows_what_each_device_is(bluez: ThreadedMockBlueZ, box: Path) -> None:
    cuff = bluez.call(lambda m: m.adapter().add_peripheral(AndCuff()).peripheral.address)
    oxi = bluez.call(lambda m: m.adapter().add_peripheral(PlxOximeter()).peripheral.address)
    done = provision("scan", "--timeout", "3", "--root", box, "--json")
    assert done.exit_code == 0, done.output
    kinds = {d["address"]: d["kind"] for d in json.loads(done.stdout)}
    assert kinds.get(cuff) == "blood-pressure cuff"
    assert kinds.get(oxi) == "pulse oximeter"
    table = provision("scan", "--timeout", "2", "--root", box)
    assert table.exit_code == 0
    assert "Bluetooth device(s) heard" in table.stdout


def test_help_renders_the_devices_table_name() -> None:
    for command in ("pair", "assign", "unassign"):
        done = provision(command, "--help")
        assert done.exit_code == 0
        assert "[[devices]]" in done.stdout, command


def test_every_command_has_help_and_completion() -> None:
    top = provision("--help")
    for command in (
        "install",
        "init",
        "enroll",
        "scan",
        "pair",
        "assign",
        "unassign",
        "serial",
        "status",
        "selftest",
        "decommission",
    ):
        assert command in top.stdout
        assert provision(command, "--help").exit_code == 0
    assert "--install-completion" in top.stdout
    assert provision("--version").exit_code == 0
