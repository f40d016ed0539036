"""``status``, ``selftest`` and ``decommission`` on an enrolled box, with the real broker and
receiver, the mock BlueZ on a private D-Bus, and the agent's status report."""

from __future__ import annotations

import json
import os
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hw_mocks.bluez.bus import PrivateBus
from hw_mocks.bluez.devices import AndCuff
from hw_mocks.bluez.threaded import ThreadedMockBlueZ
from hw_mocks.synthetic import ReadingFactory

from agent.buffer import Buffer, BufferConfig, FileKeySource
from provisioning import boxconfig
from provisioning import selftest as selftest_module
from provisioning.layout import BoxLayout
from provisioning.ui import ExitCode
from receiver.localstack import free_port
from tests.provision.conftest import Service, fresh_box, provision, receiver

SECRET = "PT-SECRET-0042"


def enrolled_box(service: Service, root: Path, box_id: str) -> Path:
    fresh_box(root, box_id)
    token = service.token(box_id, SECRET)
    done = provision("enroll", token, "--root", root, *service.desk_args())
    assert done.exit_code == 0, done.output
    return root


def write_report(root: Path, **sections: Any) -> None:
    report = {"written_at": time.time(), "pid": os.getpid(), **sections}
    path = root / "var/lib/dho-gateway/status.json"
    path.write_text(json.dumps(report))


@pytest.fixture
def mock_bluez(private_bus_address: str) -> Iterator[ThreadedMockBlueZ]:
    with ThreadedMockBlueZ(private_bus_address) as bluez:
        yield bluez


@pytest.fixture(scope="module")
def private_bus_address() -> Iterator[str]:
    from hw_mocks.bluez import dbus_daemon_path

    if dbus_daemon_path() is None:
        pytest.skip("dbus-daemon is not installed")
    with PrivateBus() as bus:
        yield bus.address


@pytest.fixture
def system_bus(private_bus_address: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", private_bus_address)
    return private_bus_address


# --- status -----------------------------------------------------------------------------------


def test_status_refuses_a_directory_without_a_box(tmp_path: Path) -> None:
    done = provision("status", "--root", tmp_path)
    assert done.exit_code == ExitCode.NO_BOX
    assert "no dho-gateway box under" in done.stderr
    assert not any(tmp_path.iterdir()), "a read-only command created state"


def test_status_reads_the_running_agents_report(service: Service, tmp_path: Path) -> None:
    box = enrolled_box(service, tmp_path, "box-status-1")
    write_report(
        box,
        buffer={"pending": {"spot": 3, "continuous": 1}, "claimed": 0, "alarms": []},
        uplink={
            "link": "connected",
            "last_upload_unix": time.time() - 30,
            "batches_acked": 4,
            "readings_acked": 17,
            "batches_refused": 0,
        },
    )
    done = provision("status", "--root", box, "--json")
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    assert data["agent"]["running"] is True
    assert data["link"] == "connected"
    assert data["backlog_by_lane"] == {"spot": 3, "continuous": 1}
    assert data["delivery"]["readings_acknowledged"] == 17
    table = provision("status", "--root", box)
    assert table.exit_code == 0
    assert "running (report" in table.stdout
    assert "17 readings in 4 batches" in table.stdout
    assert "total" in table.stdout


def test_status_does_not_believe_a_stopped_agent(service: Service, tmp_path: Path) -> None:
    box = enrolled_box(service, tmp_path, "box-status-2")
    write_report(box, uplink={"link": "connected"}, buffer={"pending": {"spot": 2}})
    report = box / "var/lib/dho-gateway/status.json"
    data = json.loads(report.read_text())
    data["written_at"] = time.time() - 600
    report.write_text(json.dumps(data))
    done = provision("status", "--root", box, "--json")
    out = json.loads(done.stdout)
    assert out["agent"]["running"] is False
    assert out["link"].startswith("unknown")
    assert out["health"] == "fault"
    assert any("not running" in p["what"] for p in out["problems"])
    table = provision("status", "--root", box)
    assert "NOT RUNNING" in table.stdout
    assert "connected" not in table.stdout.split("link", 1)[1].splitlines()[0]


@pytest.mark.parametrize("how", ["clean-exit", "killed"])
def test_status_knows_at_once_that_the_agent_stopped(
    service: Service, tmp_path: Path, how: str
) -> None:
    """A fresh report is not believed once the agent has gone: its clean exit marks the
    report ``stopped_at``; a killed agent's process is gone."""
    from agent.status import mark_stopped

    box = enrolled_box(service, tmp_path, f"box-status-{how}")
    write_report(box, uplink={"link": "connected", "batches_unacknowledged": 2})
    report = box / "var/lib/dho-gateway/status.json"
    if how == "clean-exit":
        mark_stopped(report)
    else:
        child = subprocess.Popen(["true"])
        child.wait()
        data = json.loads(report.read_text())
        data["pid"] = child.pid
        report.write_text(json.dumps(data))
    out = json.loads(provision("status", "--root", box, "--json").stdout)
    assert out["agent"]["running"] is False
    assert out["agent"]["report_age_s"] < 45
    assert out["link"].startswith("unknown")
    stopped = [p["what"] for p in out["problems"] if p["code"] == "agent.stopped"]
    assert stopped, out["problems"]
    assert ("stopped" if how == "clean-exit" else "process is gone") in stopped[0]
    table = provision("status", "--root", box).stdout
    assert ("STOPPED" if how == "clean-exit" else "NOT RUNNING") in table


def test_status_shows_a_service_that_refuses_every_batch(service: Service, tmp_path: Path) -> None:
    box = enrolled_box(service, tmp_path, "box-status-3")
    write_report(
        box,
        uplink={
            "link": "connected",
            "batches_refused": 12,
            "last_refusal": "REJECTED_FORBIDDEN",
            "last_refused_unix": time.time(),
        },
    )
    out = json.loads(provision("status", "--root", box, "--json").stdout)
    assert out["health"] == "fault"
    assert any("refused 12 batch" in p["what"] for p in out["problems"])
    assert out["delivery"]["batches_refused"] == 12
    assert out["delivery"]["last_acknowledged_upload"] is None
    table = provision("status", "--root", box).stdout
    assert "refused / unacknowledged" in table
    assert "REJECTED_FORBIDDEN" in table
    assert "last acknowledged upload" in table
    assert "never" in table


# --- selftest ---------------------------------------------------------------------------------


def _checks(result: Any) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in json.loads(result.stdout)["checks"]}


def test_selftest_passes_on_a_good_box(
    service: Service, tmp_path: Path, system_bus: str, mock_bluez: ThreadedMockBlueZ
) -> None:
    box = enrolled_box(service, tmp_path, "box-selftest-1")
    done = provision("selftest", "--root", box, "--json")
    checks = _checks(done)
    assert done.exit_code == 0, done.output
    assert checks["broker"]["result"] == "pass"
    assert checks["allow-list"]["result"] == "pass", checks["allow-list"]
    assert "with this box's certificate" in checks["broker"]["detail"]
    assert checks["bluetooth"]["result"] in ("pass", "warn")
    assert checks["certificate"]["result"] == "pass"
    assert checks["serial ports"]["result"] == "skip"


def test_selftest_names_a_missing_adapter(
    service: Service, tmp_path: Path, system_bus: str
) -> None:
    box = enrolled_box(service, tmp_path, "box-selftest-2")
    with ThreadedMockBlueZ(system_bus, adapters=()):
        done = provision("selftest", "--root", box, "--json")
    assert done.exit_code == ExitCode.FAILED
    bt = _checks(done)["bluetooth"]
    assert bt["result"] == "fail"
    assert "no Bluetooth adapter hci0" in bt["detail"]
    assert "bluetoothctl list" in bt["next_step"]


def test_selftest_names_an_unreachable_broker(
    service: Service, tmp_path: Path, system_bus: str, mock_bluez: ThreadedMockBlueZ
) -> None:
    box = enrolled_box(service, tmp_path, "box-selftest-3")
    layout = BoxLayout(box)
    doc = boxconfig.read(layout)
    doc["uplink"]["port"] = free_port()
    boxconfig.write(layout, doc)
    done = provision("selftest", "--root", box, "--json")
    assert done.exit_code == ExitCode.FAILED
    broker = _checks(done)["broker"]
    assert broker["result"] == "fail"
    assert "cannot reach the DHO broker" in broker["detail"]
    table = provision("selftest", "--root", box)
    assert "FAIL" in table.stdout
    assert "1 check(s) failed" in table.stdout


def test_selftest_names_a_wrong_clock(
    service: Service,
    tmp_path: Path,
    system_bus: str,
    mock_bluez: ThreadedMockBlueZ,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import datetime as dt

    box = enrolled_box(service, tmp_path, "box-selftest-4")
    monkeypatch.setattr(selftest_module, "_now", lambda: dt.datetime(2001, 5, 1, tzinfo=dt.UTC))
    done = provision("selftest", "--root", box, "--json")
    assert done.exit_code == ExitCode.FAILED
    assert "the clock says 2001-05-01" in _checks(done)["clock"]["detail"]


def test_selftest_says_when_box_id_and_certificate_disagree(
    service: Service, tmp_path: Path, system_bus: str, mock_bluez: ThreadedMockBlueZ
) -> None:
    box = enrolled_box(service, tmp_path, "box-selftest-5")
    layout = BoxLayout(box)
    doc = boxconfig.read(layout)
    doc["uplink"]["box_id"] = "box-typo"
    boxconfig.write(layout, doc)
    cert = _checks(provision("selftest", "--root", box, "--json"))["certificate"]
    assert cert["result"] == "fail"
    assert "'box-selftest-5'" in cert["detail"]
    assert "'box-typo'" in cert["detail"]


# --- decommission -------------------------------------------------------------------------------


def _fill(root: Path, n: int) -> None:
    state = root / "var/lib/dho-gateway"
    buf = Buffer.open(
        state / "buffer.db",
        FileKeySource(state / "buffer.kek"),
        config=BufferConfig(reserve_bytes=0),
    )
    f = ReadingFactory(patient=SECRET)
    buf.append([f.bp() for _ in range(n)])
    buf.close()


def _assign(root: Path, cuff: str) -> None:
    layout = BoxLayout(root)
    doc = boxconfig.read(layout)
    boxconfig.set_devices(
        doc, [{"family": "and-bpm", "patient": SECRET, "address": cuff, "serial": "5140400999"}]
    )
    boxconfig.write(layout, doc)


def test_decommission_warns_first_then_leaves_nothing_of_the_patient(
    service: Service, tmp_path: Path, system_bus: str, mock_bluez: ThreadedMockBlueZ
) -> None:
    box = enrolled_box(service, tmp_path, "box-decom-1")
    cuff = mock_bluez.call(lambda m: m.adapter().add_peripheral(AndCuff()).peripheral.address)
    _assign(box, cuff)
    _fill(box, 3)
    write_report(box, uplink={"link": "connected"})
    report = box / "var/lib/dho-gateway/status.json"
    data = json.loads(report.read_text())
    data["written_at"] = time.time() - 3600  # an agent that stopped an hour ago
    report.write_text(json.dumps(data))

    refused = provision("decommission", "--root", box)
    assert refused.exit_code == ExitCode.USAGE, refused.output
    assert "3 readings were never delivered" in refused.stdout
    assert (box / "etc/dho-gateway/box.key").exists()

    done = provision("decommission", "--root", box, "--yes")
    assert done.exit_code == 0, done.output
    out = done.stdout
    assert out.index("3 readings were never delivered") < out.index("crypto-shred")
    assert "the service revoked box box-decom-1" in out
    etc, state = box / "etc/dho-gateway", box / "var/lib/dho-gateway"
    for name in (
        "box.key",
        "box-signing.pem",
        "box.crt",
        "box.csr",
        "ca.pem",
        "service.pub",
        "identity.json",
    ):
        assert not (etc / name).exists(), name
    assert sorted(p.name for p in state.iterdir()) == []
    cfg = tomllib.loads((etc / "agent.toml").read_text())
    assert "devices" not in cfg
    assert "uplink" not in cfg
    for f in box.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f
            assert cuff.encode() not in f.read_bytes(), f
    boxes = json.loads(receiver("boxes", "--config", service.config, "--json").stdout)
    assert next(b for b in boxes if b["box_id"] == "box-decom-1")["revoked_at"]
    again = provision("decommission", "--root", box, "--yes")
    assert again.exit_code == ExitCode.NO_BOX


def test_decommission_refuses_while_the_agent_runs(service: Service, tmp_path: Path) -> None:
    box = enrolled_box(service, tmp_path, "box-decom-2")
    write_report(box, uplink={"link": "connected"})
    done = provision("decommission", "--root", box, "--yes")
    assert done.exit_code == ExitCode.BUSY
    assert "systemctl stop dho-agent" in done.stderr


def test_decommission_without_the_service_says_what_remains(
    service: Service, tmp_path: Path, system_bus: str, mock_bluez: ThreadedMockBlueZ
) -> None:
    box = enrolled_box(service, tmp_path, "box-decom-3")
    layout = BoxLayout(box)
    doc = boxconfig.read(layout)
    doc["uplink"]["port"] = free_port()
    boxconfig.write(layout, doc)
    done = provision("decommission", "--root", box, "--yes")
    assert done.exit_code == 0, done.output
    assert "revoke at the service: not done" in done.stdout
    assert "dho-receiver revoke box-decom-3 --yes" in done.stdout
    assert not (box / "etc/dho-gateway/box.key").exists()


def test_decommission_refuses_an_empty_directory(tmp_path: Path) -> None:
    done = provision("decommission", "--root", tmp_path, "--yes")
    assert done.exit_code == ExitCode.NO_BOX
    assert not any(tmp_path.iterdir())
