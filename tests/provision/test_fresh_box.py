"""A fresh box from ``install --root`` to readings delivered at the service, with only the
commands a technician and the service's operator run (and ``dho-agent run`` as systemd runs
it), against the real broker and receiver and the mock BlueZ; and ``make demo``'s command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hw_mocks.bluez import dbus_daemon_path
from hw_mocks.bluez.bus import PrivateBus
from hw_mocks.bluez.devices import AndCuff
from hw_mocks.bluez.payloads import BloodPressureRecord
from hw_mocks.bluez.threaded import ThreadedMockBlueZ

from receiver.store import SqliteStore
from tests.provision.conftest import Service, provision, receiver

BIN = Path(sys.executable).parent


def _delivered(service: Service, box_id: str) -> int:
    store = SqliteStore(service.receiver.db)
    try:
        return sum(1 for _ in store.readings(box_id))
    finally:
        store.close()


@pytest.mark.skipif(dbus_daemon_path() is None, reason="dbus-daemon is not installed")
def test_install_to_delivered_readings_with_cli_commands_only(
    service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import datetime, timedelta

    box = tmp_path / "box"
    with PrivateBus() as bus, ThreadedMockBlueZ(bus.address) as bluez:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
        now = datetime.now().replace(microsecond=0)
        cuff = AndCuff(
            records=[
                BloodPressureRecord(120 + i, 80, pulse=60, timestamp=now - timedelta(hours=i))
                for i in range(1, 4)
            ]
        )
        bluez.call(lambda m: m.adapter().add_peripheral(cuff))
        desk = service.desk_args()
        install: list[str | Path] = [
            "install", "--root", box,
            "--enrol-host", "127.0.0.1",
            "--enrol-port", desk[desk.index("--port") + 1],
            "--enrol-ca", desk[desk.index("--ca") + 1],
            "--enrol-password", desk[desk.index("--password") + 1],
        ]  # fmt: skip
        assert provision(*install).exit_code == 0
        assert provision("init", "--root", box, "--box-id", "box-fresh-1").exit_code == 0
        token = service.token("box-fresh-1", "PT-FRESH-1")
        done = provision("enroll", token, "--root", box)
        assert done.exit_code == 0, done.output
        done = provision("pair", "and-bpm", cuff.address, "-p", "PT-FRESH-1", "--root", box)
        assert done.exit_code == 0, done.output
        check = provision("selftest", "--root", box)
        assert check.exit_code == 0, check.output
        agent = subprocess.Popen(
            [str(BIN / "dho-agent"), "run", "--root", str(box)],
            env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus.address},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 90
            while _delivered(service, "box-fresh-1") < 3:
                assert agent.poll() is None, agent.stderr.read() if agent.stderr else ""
                assert time.monotonic() < deadline, "readings were not delivered in 90 s"
                time.sleep(0.5)
            # The technician's view catches up with the next report (every 10 s).
            while True:
                status = json.loads(provision("status", "--root", box, "--json").stdout)
                assert status["agent"]["running"] is True
                if (status["delivery"]["readings_acknowledged"] or 0) >= 3:
                    break
                assert time.monotonic() < deadline + 60, status
                time.sleep(0.5)
            assert status["link"] == "connected"
            assert status["delivery"]["last_acknowledged_upload"] is not None
            # The service's half: a signed command to the box, answered over the uplink.
            asked = receiver(
                "command", "box-fresh-1", "status-report", "--config", service.config,
                "--wait", "60", "--json",
            )  # fmt: skip
            assert asked.exit_code == 0, asked.output
            answer = json.loads(asked.stdout)
            assert answer["answered"] is True, answer
            answer_counter = answer["counter"]
            assert answer["answer"]["status"]["box_id"] == "box-fresh-1"
            # A typo is refused at the service, before anything is signed or sent (the box's
            # own "unsupported command" answer: tests/care/test_care_commands.py).
            bad = receiver("command", "box-fresh-1", "reboot", "--config", service.config,
                           "--wait", "30", "--json")  # fmt: skip
            assert bad.exit_code == 2, bad.output
            assert "unknown command 'reboot' (known: status-report, " in bad.stderr
            again = receiver("command", "box-fresh-1", "status-report", "--config",
                             service.config, "--wait", "60", "--json")  # fmt: skip
            assert again.exit_code == 0, again.output
            assert json.loads(again.stdout)["counter"] == answer_counter + 1  # none used
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)
            if agent.stderr:
                agent.stderr.close()
    assert agent.returncode == 0
    boxes = json.loads(receiver("boxes", "--config", service.config, "--json").stdout)
    fresh = next(b for b in boxes if b["box_id"] == "box-fresh-1")
    assert fresh["readings"] == 3
    assert fresh["last_upload"] is not None
    assert fresh["refusals"] == 0
    assert fresh["backlog_reported"] is not None  # from the status-report answer
    stopped = json.loads(provision("status", "--root", box, "--json").stdout)
    assert stopped["agent"]["running"] is False
    assert stopped["agent"]["stopped_at"] is not None
    assert stopped["delivery"]["readings_acknowledged"] >= 3
    assert stopped["delivery"]["batches_refused"] == 0


def test_the_demo_delivers_everything_once_and_keeps_the_box_under_its_directory(
    tmp_path: Path,
) -> None:
    if dbus_daemon_path() is None:
        pytest.skip("dbus-daemon is not installed")
    box = tmp_path / "demo-box"
    done = subprocess.run(
        [str(BIN / "dho-agent"), "demo", "--duration", "15", "--json", "--state-dir", str(box)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    last = done.stdout.strip().splitlines()[-1]
    summary = json.loads(last)
    assert done.returncode == 0, done.stderr[-3000:]
    assert summary["ok"] is True
    assert summary["lost"] == 0
    assert summary["duplicates"] == 0
    assert summary["delivered"] >= 3 + 1 + 2  # the cuff's memory, one offline, two spots
    assert summary["produced"] == summary["delivered"] + summary["waiting"]
    assert summary["patient_in_clear"] == []
    assert summary["link_outages"] == 1
    assert summary["backlog_peak"] > 0  # captured while the link was down, then drained
    devices = summary["devices"]
    assert len(devices) == 4
    serial = devices["pulse oximeter Nonin, DF8 stream (USB serial)"]
    assert serial["received"] >= 1  # the oximeter on the pty
    assert serial["captured"] == serial["received"]
    cuff = devices["blood-pressure cuff A&D UA-651BLE (Bluetooth)"]
    assert cuff["received"] == 3 + 1
    assert len({d["id"] for d in devices.values()}) == 4  # every device told apart
    assert sum(d["captured"] for d in devices.values()) <= summary["produced"]
    # What the technician ran, in order, with the same CLI.
    shown = [line for line in done.stderr.splitlines() if line.startswith("$ ")]
    for command in (
        "dho-provision install",
        "dho-provision init",
        "dho-receiver token",
        "dho-provision enroll",
        "dho-provision pair and-bpm",
        "dho-provision pair plx",
        "dho-provision serial",
        "dho-provision assign serial",
        "dho-provision assign cpap-card",
        "dho-provision selftest",
    ):
        assert any(line.startswith(f"$ {command}") for line in shown), command
    assert "the mobile link is CUT" in done.stderr
    assert "drained:" in done.stderr
    for f in (
        "etc/dho-gateway/box.crt",
        "etc/dho-gateway/agent.toml",
        "var/lib/dho-gateway/buffer.db",
    ):
        assert (box / f).exists(), f
    for path in box.rglob("*"):
        if path.is_file() and path.name not in ("agent.toml", "identity.json"):
            assert b"DEMO-PATIENT-1" not in path.read_bytes(), path
