"""``dho-agent decode serial.<profile>`` for all eight serial profiles, through the CLI.

The byte vectors are the reference's (``shared/reference/serial-and-cpap.md``: the section is
named at each one; it names the public source). Each profile must print the same JSON shape
as the BLE profiles (observations with LOINC/MDC code, value, unit; status flags), one
document per reading when a stream yields several, and exit 2 with a one-line error on bytes
that yield nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent import codes
from agent.cli import app
from agent.drivers.profiles import PROFILES
from agent.drivers.serial import nonin

runner = CliRunner()
AGENT = Path(sys.executable).parent / "dho-agent"
SPO2, PR = codes.SPO2.mdc, codes.PULSE_RATE_OXIM.mdc
SYS, DIA, PR_BP = codes.BP_SYSTOLIC.mdc, codes.BP_DIASTOLIC.mdc, codes.PULSE_RATE_BP.mdc

SERIAL_PROFILES = (
    "serial.contec-a",
    "serial.contec-b",
    "serial.nonin-df1",
    "serial.nonin-df2",
    "serial.nonin-df8",
    "serial.nonin-ascii",
    "serial.masimo",
    "serial.beurer-bm65",
)


def hexof(text: bytes) -> str:
    return text.hex(" ")


def _df2_packet() -> str:
    """A DF2 packet (section 2.3): the reference's frames 1-3, then 22 frames it describes."""
    frames = ["01 83 7A 00 FE", "01 82 7B 48 46", "01 82 7C 61 60"]  # SYNC/HR MSB 0, HR 72, SpO2 97
    data = dict.fromkeys(range(3, 25), 0)
    data |= {3: 0x31, 8: 97, 9: 97, 10: 97, 13: 0, 14: 72, 15: 97, 16: 97}
    data |= {19: 0, 20: 72, 21: 0, 22: 72}
    frames += [hexof(nonin.df2_frame(0x82, 0x7C, data[i])) for i in range(3, 25)]
    return " ".join(frames)


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["decode", *args])
    return result.exit_code, result.stdout, result.stderr


def documents(profile: str, wire: str) -> list[dict[str, Any]]:
    code, out, err = run(profile, wire)
    assert code == 0, err
    docs = [json.loads(line, parse_float=Decimal) for line in out.splitlines()]
    for doc in docs:
        # The BLE profiles' shape (tests/drivers/test_decode_cli.py::decoded).
        assert set(doc) == {"profile", "observations", "status", "fields", "raw"}
        assert doc["profile"] == profile
        assert isinstance(doc["status"], list)
        assert all(isinstance(s, str) for s in doc["status"])
        for obs in doc["observations"]:
            assert set(obs) == {"code", "mdc", "value", "unit", "time"}
    return docs


def values(doc: dict[str, Any]) -> list[tuple[str | None, int, Any, str]]:
    return [(o["code"], o["mdc"], o["value"], o["unit"]) for o in doc["observations"]]


OXI_97_72 = [("2708-6", SPO2, 97, "%"), ("8867-4", PR, 72, "/min")]


def test_every_serial_profile_is_registered_as_a_stream() -> None:
    for name in SERIAL_PROFILES:
        assert PROFILES[name].stream is not None, name
    assert {n for n in PROFILES if n.startswith("serial.")} == set(SERIAL_PROFILES)


def test_contec_a_live_frames_one_document_each() -> None:
    # Section 6 table: 85 3A 07 48 61 = pulse 72, SpO2 97; C5 3A 47 48 61 = pulse 200, beep.
    docs = documents("serial.contec-a", "85 3A 07 48 61 C5 3A 47 48 61")
    assert [values(d) for d in docs] == [
        OXI_97_72,
        [("2708-6", SPO2, 97, "%"), ("8867-4", PR, 200, "/min")],
    ]
    assert docs[1]["status"] == ["pulse-beep"]
    assert docs[0]["raw"] == "853a074861"


def test_contec_b_live_and_stored_packets() -> None:
    # Section 6 table: B live 01 E0 85 B3 96 C1 E1 FF FF = pulse 65, SpO2 97, PI n/a (headrotor);
    # B stored 0f 80 e2 c6 e2 c6 e2 c6 = 3 x (98 %, 70 bpm) (MarkMLl).
    docs = documents("serial.contec-b", "01 E0 85 B3 96 C1 E1 FF FF 0f 80 e2 c6 e2 c6 e2 c6")
    assert len(docs) == 2
    assert values(docs[0]) == [("2708-6", SPO2, 97, "%"), ("8867-4", PR, 65, "/min")]
    assert "pi-invalid" in docs[0]["status"]
    assert values(docs[1]) == [("2708-6", SPO2, 98, "%"), ("8867-4", PR, 70, "/min")] * 3


def test_nonin_df1_three_frames() -> None:
    # Section 2.2 worked examples.
    docs = documents("serial.nonin-df1", "80 48 61 81 48 61 90 3C 5C")
    assert [values(d) for d in docs] == [
        OXI_97_72,
        [("2708-6", SPO2, 97, "%"), ("8867-4", PR, 200, "/min")],
        [("2708-6", SPO2, 92, "%"), ("8867-4", PR, 60, "/min")],
    ]
    assert [d["status"] for d in docs] == [[], [], ["low-perfusion"]]


def test_nonin_df1_missing_markers_are_null_with_named_flags() -> None:
    # SpO2 127 and HR 511 are the missing markers (section 2.2), with SNSD + OOT set.
    (doc,) = documents("serial.nonin-df1", "E3 7F 7F")
    assert [o["value"] for o in doc["observations"]] == [None, None]
    assert doc["status"] == ["sensor-disconnect", "out-of-track"]


def test_nonin_df8_status2_flags() -> None:
    # Section 2.2: DF8 = DF1 + STATUS2 (SmartPoint 0x20, finger off 0x08, low battery 0x01).
    docs = documents("serial.nonin-df8", "80 48 61 29 80 48 61 00")
    assert [values(d) for d in docs] == [OXI_97_72, OXI_97_72]
    assert docs[0]["status"] == ["smartpoint", "finger-off", "low-battery"]
    assert docs[1]["status"] == []


def test_nonin_df2_packets() -> None:
    packet = _df2_packet()
    docs = documents("serial.nonin-df2", f"{packet} {packet}")
    assert [values(d) for d in docs] == [OXI_97_72, OXI_97_72]
    assert docs[0]["fields"]["firmware_revision"] == 0x31


def test_nonin_ascii_lines() -> None:
    # Section 2.1: the power-up header is ignored, '---' is missing.
    text = b"Nonin 2500 v1.0\r\nSPO2=097 HR=072\r\n12:00:01 SPO2=--- HR=--- *\r\n"
    docs = documents("serial.nonin-ascii", hexof(text))
    assert [values(d) for d in docs] == [
        OXI_97_72,
        [("2708-6", SPO2, None, "%"), ("8867-4", PR, None, "/min")],
    ]


def test_masimo_lines() -> None:
    # Section 2.5: the OpenICE Radical-5 line and the Rad-8 line (dashes are missing).
    text = (
        b"09/15/10 15:10:29 SPO2=097% BPM=064 PI=11.82% ALARM=20 EXC=800\r\n"
        b"03/19/16 13:37:12 SN=0000093112 SPO2=---% BPM=--- PI=--.--% SPCO=--.-% "
        b"SPMET=--.-% DESAT=-- PIDELTA=+-- ALARM=0000 EXC=000021\r\n"
    )
    docs = documents("serial.masimo", hexof(text))
    assert len(docs) == 2
    assert values(docs[0]) == [
        ("2708-6", SPO2, 97, "%"),
        ("8867-4", PR, 64, "/min"),
        (None, codes.PERFUSION_INDEX.mdc, Decimal("11.82"), "%"),
    ]
    assert {o["time"] for o in docs[0]["observations"]} == {"2010-09-15T15:10:29"}
    assert docs[0]["status"] == ["alarm-silenced", "masimo-set"]
    assert all(o["value"] is None for o in docs[1]["observations"])
    assert {"no-sensor", "sensor-off"} <= set(docs[1]["status"])


def test_beurer_bm65_records() -> None:
    # Section 3.1 worked example: SYS 126, DIA 83, pulse 72, 2024-11-27 08:30 (and 08:31).
    docs = documents("serial.beurer-bm65", "80 65 3A 48 0B 1B 08 1E 18 80 65 3A 48 0B 1B 08 1F 18")
    expected = [("8480-6", SYS, 126, "mm[Hg]"), ("8462-4", DIA, 83, "mm[Hg]")]
    assert [values(d)[:2] for d in docs] == [expected, expected]
    assert values(docs[0])[2][1:] == (PR_BP, 72, "/min")
    assert [d["observations"][0]["time"] for d in docs] == [
        "2024-11-27T08:30:00",
        "2024-11-27T08:31:00",
    ]


def test_garbage_between_readings_is_skipped_and_reported() -> None:
    code, out, err = run("serial.nonin-df1", "80 48 61 00 00 80 48 61")
    assert code == 0
    assert len(out.splitlines()) == 2
    assert err.startswith("skipped 2 bytes: ")


@pytest.mark.parametrize("profile", SERIAL_PROFILES)
@pytest.mark.parametrize("wire", ["00 00 00", "FF", "30 31 32 33"])
def test_bytes_that_yield_nothing_exit_2_with_one_line(profile: str, wire: str) -> None:
    code, out, err = run(profile, wire)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"error: {profile}: no reading in ")


def test_installed_console_script_serial() -> None:
    ok = subprocess.run(
        [str(AGENT), "decode", "serial.nonin-df1", "80 48 61 90 3C 5C"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert len(ok.stdout.splitlines()) == 2
    bad = subprocess.run(
        [str(AGENT), "decode", "serial.masimo", "00"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.count("\n") == 1
    assert "Traceback" not in bad.stderr
