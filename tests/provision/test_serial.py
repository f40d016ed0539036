"""``dho-provision serial`` and ``assign serial``: ports and what answers on them, against the
pty simulators (real pyserial, the agent's own codecs and detection)."""

from __future__ import annotations

import datetime as dt
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from hw_mocks.serial import BeurerBM65, ContecA, ContecB, CuffRecord, Masimo, Nonin
from hw_mocks.serial.port import SimulatedPort

from provisioning.serialprobe import score_stream
from provisioning.ui import ExitCode
from tests.provision.conftest import fresh_box, provision

EXPECTED = {
    "nonin-df8": "nonin-df8",
    "nonin-df1": "nonin-df1",
    "nonin-df2": "nonin-df2",
    "nonin-ascii": "nonin-ascii",
    "masimo": "masimo",
    "contec-a": "contec",
    "contec-b": "contec",
    "bm65": "beurer-bm65",
}


@pytest.fixture
def ports(tmp_path: Path) -> Iterator[dict[str, SimulatedPort]]:
    by_path = tmp_path / "by-path"
    by_path.mkdir()
    when = dt.datetime(2026, 11, 30, 8, 15)
    sims: dict[str, SimulatedPort] = {
        "nonin-df8": Nonin(by_path / "nonin-df8", data_format="df8"),
        "nonin-df1": Nonin(by_path / "nonin-df1", data_format="df1"),
        "nonin-df2": Nonin(by_path / "nonin-df2", data_format="df2"),
        "nonin-ascii": Nonin(by_path / "nonin-ascii", data_format="ascii"),
        "masimo": Masimo(by_path / "masimo"),
        "contec-a": ContecA(by_path / "contec-a"),
        "contec-b": ContecB(by_path / "contec-b"),
        "bm65": BeurerBM65(by_path / "bm65", records=[CuffRecord(131, 84, 66, when)]),
    }
    for sim in sims.values():
        sim.start()
    try:
        yield sims
    finally:
        for sim in sims.values():
            sim.stop()


def test_serial_finds_every_family_on_its_port(
    ports: dict[str, SimulatedPort], tmp_path: Path
) -> None:
    box = fresh_box(tmp_path / "box", "box-serial-1")
    named = [ports[k].path for k in EXPECTED]
    done = provision("serial", *named, "--root", box, "--json")
    assert done.exit_code == 0, done.output
    found = {p["path"]: p for p in json.loads(done.stdout)}
    for key, family in EXPECTED.items():
        entry = found[ports[key].path]
        assert entry["family"] == family, (key, entry)
        assert entry["tty"] == ports[key].tty_name
        assert entry["assigned"] is None
    assert "protocol A" in found[ports["contec-a"].path]["answer"]
    assert "protocol B" in found[ports["contec-b"].path]["answer"]
    assert "Beurer BM65" in found[ports["bm65"].path]["answer"]
    # Listening came first: nothing was sent to the devices that only stream.
    for key in ("nonin-df8", "nonin-df1", "masimo"):
        assert not ports[key].received, key


def test_assign_serial_detects_the_family_and_serial_shows_it_assigned(
    ports: dict[str, SimulatedPort], tmp_path: Path
) -> None:
    box = fresh_box(tmp_path / "box", "box-serial-2")
    port = ports["nonin-df8"].path
    done = provision("assign", "serial", port, "-p", "PT-SERIAL-1", "--root", box)
    assert done.exit_code == 0, done.output
    tables = tomllib.loads((box / "etc/dho-gateway/agent.toml").read_text())["devices"]
    assert tables == [
        {"transport": "serial", "family": "nonin-df8", "port": port, "patient": "PT-SERIAL-1"}
    ]
    shown = provision("serial", "--root", box, "--no-probe", "--json")
    entry = next(p for p in json.loads(shown.stdout) if p["path"] == port)
    assert entry["assigned"]
    assert entry["answer"] == "not probed"
    table = provision("serial", port, ports["masimo"].path, "--root", box)
    assert table.exit_code == 0, table.output
    assert "nonin-df8" in table.stdout
    assert f"next: dho-provision assign serial {ports['masimo'].path}" in table.stdout
    assert f"assign serial {port} " not in table.stdout  # already assigned


def test_a_busy_an_absent_and_a_silent_port(
    ports: dict[str, SimulatedPort], tmp_path: Path
) -> None:
    box = fresh_box(tmp_path / "box", "box-serial-3")
    held = serial.Serial(ports["masimo"].path, 9600, exclusive=True)
    silent = ports["nonin-df1"]
    silent.silent = True
    try:
        done = provision(
            "serial",
            ports["masimo"].path,
            str(tmp_path / "by-path/unplugged"),
            silent.path,
            "--root",
            box,
            "--json",
        )
    finally:
        held.close()
    found = {p["path"]: p for p in json.loads(done.stdout)}
    assert found[ports["masimo"].path]["family"] is None
    assert "busy" in found[ports["masimo"].path]["answer"]
    assert found[str(tmp_path / "by-path/unplugged")]["tty"] is None
    assert "absent" in found[str(tmp_path / "by-path/unplugged")]["answer"]
    assert found[silent.path]["family"] is None
    assert "silent" in found[silent.path]["answer"]
    no = provision("assign", "serial", silent.path, "-p", "PT-SERIAL-3", "--root", box)
    assert no.exit_code == ExitCode.HARDWARE
    assert "nothing known answers" in no.stderr
    assert "--family" in no.stderr
    assert "Traceback" not in no.output
    given = provision(
        "assign", "serial", silent.path, "--family", "nonin-df1", "-p", "PT-SERIAL-3", "--root", box
    )
    assert given.exit_code == 0, given.output
    wrong = provision(
        "assign", "serial", silent.path, "--family", "nonin-df9", "-p", "PT-SERIAL-3", "--root", box
    )
    assert wrong.exit_code != 0
    assert "family" in wrong.stderr


def test_the_stream_scorer_needs_frames_not_noise() -> None:
    from agent.drivers.serial import nonin

    assert score_stream(b"").family is None
    assert score_stream(bytes(range(256)) * 4).family is None
    df8 = b"".join(nonin.encode_df1(96, 70, status2=0) for _ in range(3))
    df1 = b"".join(nonin.encode_df1(96, 70) for _ in range(3))
    assert score_stream(df8).family == "nonin-df8"
    assert score_stream(df1).family == "nonin-df1"
    assert score_stream(df1[:3]).family is None  # one frame is not enough
