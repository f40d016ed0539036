"""``dho-agent decode``: every spec vector in shared/reference/ble-gatt.md through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.drivers import decode
from agent.errors import CodecError

runner = CliRunner()
AGENT = Path(sys.executable).parent / "dho-agent"


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["decode", *args])
    return result.exit_code, result.stdout, result.stderr


def decoded(*args: str) -> dict[str, Any]:
    code, out, err = run(*args)
    assert code == 0, err
    assert err == ""
    doc = json.loads(out, parse_float=Decimal)
    assert isinstance(doc, dict)
    assert set(doc) == {"profile", "observations", "status", "fields", "raw"}
    for obs in doc["observations"]:
        assert set(obs) == {"code", "mdc", "value", "unit", "time"}
    return doc


def values(doc: dict[str, Any]) -> list[tuple[str | None, int, Any, str]]:
    return [(o["code"], o["mdc"], o["value"], o["unit"]) for o in doc["observations"]]


def test_vector_1_bpm_full() -> None:
    doc = decoded("ble.bpm", "1E 8A 00 58 00 78 00 00 00 04 11 14 29 3B 3C 00 01 27 00")
    assert doc["profile"] == "ble.bpm"
    assert values(doc) == [
        ("8480-6", 150021, 138, "mm[Hg]"),
        ("8462-4", 150022, 88, "mm[Hg]"),
        ("8478-0", 150023, 120, "mm[Hg]"),
        ("8867-4", 149546, 60, "/min"),
    ]
    assert all(o["time"] is None for o in doc["observations"])  # year 0 = unknown
    assert doc["status"] == [
        "body-movement",
        "cuff-too-loose",
        "irregular-pulse",
        "improper-measurement-position",
    ]
    assert doc["fields"]["user_id"] == 1
    assert doc["fields"]["status"]["pulse_rate_range"] == "in-range"
    assert doc["fields"]["timestamp"]["year"] == 0
    assert doc["raw"] == "1e8a00580078000000041114293b3c00012700"


def test_vector_3_bpm_minimal_keeps_decimals_exact() -> None:
    code, out, _ = run("ble.bpm", "00 BD F0 0B 00 9F F0")
    assert code == 0
    assert '"value": 18.9,' in out  # written from the Decimal, not a binary float
    doc = json.loads(out, parse_float=Decimal)
    assert [o["value"] for o in doc["observations"]] == [
        Decimal("18.9"),
        Decimal("11"),
        Decimal("15.9"),
    ]


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ("01 02 03 04 05 06", "payload is 6 bytes, but flags 0x01 require 7"),
        ("03 02 03 04 05 06 07", "payload is 7 bytes, but flags 0x03 require 14"),
    ],
)
def test_vector_4_bpm_invalid_exits_2_with_one_line(wire: str, message: str) -> None:
    code, out, err = run("ble.bpm", wire)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("error: ble.bpm: ")
    assert message in err


def test_vector_6_bpm_time() -> None:
    doc = decoded("ble.bpm", "16 7C 00 56 00 61 00 E8 07 06 0F 11 11 1B 33 00 00 00")
    assert values(doc)[0] == ("8480-6", 150021, 124, "mm[Hg]")
    assert {o["time"] for o in doc["observations"]} == {"2024-06-15T17:17:27"}
    assert doc["status"] == []


def test_hex_as_separate_arguments() -> None:
    wire = "16 7C 00 56 00 61 00 E8 07 06 0F 11 11 1B 33 00 00 00"
    doc = decoded("ble.bpm", *wire.split(" "))
    assert values(doc)[3] == ("8867-4", 149546, 51, "/min")


@pytest.mark.parametrize("wire", ["00 E8 F3 84 F3", "00 64 00 5A 00"])
def test_vector_9_plx_continuous(wire: str) -> None:
    doc = decoded("ble.plx-cont", wire)
    assert values(doc) == [("2708-6", 150456, 100, "%"), ("8867-4", 149530, 90, "/min")]


def test_vector_10_plx_continuous_simple() -> None:
    doc = decoded("ble.plx-cont", "1C 5F 00 5A 00 20 00 00 00 00 57 F0")
    assert values(doc) == [
        ("2708-6", 150456, 95, "%"),
        ("8867-4", 149530, 90, "/min"),
        (None, 150448, Decimal("8.7"), "%"),
    ]
    assert doc["status"] == ["measurement-ongoing"]


def test_vector_14_date_time() -> None:
    doc = decoded("ble.date-time", "E2 07 04 11 0F 33 00")
    assert doc["observations"] == []
    assert doc["fields"]["iso"] == "2018-04-17T15:51:00"


@pytest.mark.parametrize(
    ("wire", "field", "expected"),
    [
        ("06 00 01 01", "outcome_name", "success"),
        ("06 00 01 06", "outcome_name", "no-records-found"),
        ("05 00 02 01", "count", 258),
    ],
)
def test_vector_15_racp(wire: str, field: str, expected: object) -> None:
    doc = decoded("ble.racp", wire)
    assert doc["fields"][field] == expected


@pytest.mark.parametrize(
    ("wire", "special"),
    [
        ("FF 07", "nan"),
        ("00 08", "nres"),
        ("FE 07", "+inf"),
        ("02 08", "-inf"),
        ("01 08", "reserved"),
    ],
)
def test_vector_16_specials_are_null_and_named(wire: str, special: str) -> None:
    # the SFLOAT special values in the systolic slot of a minimal BPM frame
    doc = decoded("ble.bpm", f"00 {wire} 58 00 78 00")
    assert doc["observations"][0]["value"] is None
    assert doc["fields"]["systolic"] is None
    assert doc["fields"]["specials"] == {"systolic": special}


def test_beurer_quirk_by_model() -> None:
    wire = "56 6A 00 47 00 00 00 EA 07 08 0B 12 1F 00 00 3F 00 00 00"
    doc = decoded("ble.bpm", wire, "--model", "Beurer BM85")
    assert values(doc) == [
        ("8480-6", 150021, 106, "mm[Hg]"),
        ("8462-4", 150022, 71, "mm[Hg]"),
        ("8478-0", 150023, None, "mm[Hg]"),
        ("8867-4", 149546, 63, "/min"),
    ]
    assert doc["fields"]["specials"] == {"mean_arterial": "missing"}
    assert doc["fields"]["quirks"] == "beurer-bm"
    assert doc["fields"]["user_id"] == 0
    code, _, err = run("ble.bpm", wire)
    assert code == 2
    assert "payload is 19 bytes, but flags 0x56 require 18" in err


def test_vector_18_and_command() -> None:
    doc = decoded("ble.and-command", "08 01 01 0E 03 0B 13 0C 22" + " 00" * 11)
    assert doc["observations"] == []
    assert doc["fields"]["command_name"] == "set-time"
    assert doc["fields"]["type"] == "write"
    assert doc["fields"]["decoded_as"] == "AndCommand"
    assert doc["fields"]["set_time"] == "2014-03-11T19:12:34"


def test_nonin() -> None:
    doc = decoded("ble.nonin-oximetry", "0A 14 1F 00 7D 01 02 61 00 48")
    assert values(doc) == [
        ("2708-6", 150456, 97, "%"),
        ("8867-4", 149530, 72, "/min"),
        (None, 150448, Decimal("1.25"), "%"),
    ]
    assert doc["status"] == ["smartpoint", "correct-check"]
    doc = decoded("ble.nonin-oximetry", "0A 08 1F 00 00 00 03 7F 01 FF")
    assert [o["value"] for o in doc["observations"][:2]] == [None, None]
    assert doc["fields"]["specials"] == {"spo2": "missing", "pulse_rate": "missing"}


def test_plx_spot_and_features() -> None:
    doc = decoded("ble.plx-spot", "01 61 00 48 00 E8 07 06 0F 11 11 1B")
    assert {o["time"] for o in doc["observations"]} == {"2024-06-15T17:17:27"}
    doc = decoded("ble.plx-features", "0C 00")
    assert doc["fields"]["features"] == ["spot-check-measurement-storage", "spot-check-time-stamp"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("ble.nope", "00"), "unknown profile 'ble.nope'"),
        (("ble.bpm", "0Z"), "non-hex character 'Z'"),
        (("ble.bpm", "001"), "odd number of digits"),
        (("ble.racp", "09 00"), "ble.racp: op code 0x09 is not defined"),
    ],
)
def test_bad_input_exits_2(args: tuple[str, ...], message: str) -> None:
    code, out, err = run(*args)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert message in err


def test_parse_hex_accepts_separators() -> None:
    assert decode.parse_hex("0x1e:8a-00 58") == bytes.fromhex("1e8a0058")
    assert decode.parse_hex("") == b""


def test_every_registered_profile_has_a_decoder() -> None:
    required = {
        "ble.bpm",
        "ble.icp",
        "ble.plx-spot",
        "ble.plx-cont",
        "ble.plx-features",
        "ble.racp",
        "ble.date-time",
        "ble.nonin-oximetry",
    }
    assert required <= set(decode.PROFILES)


@pytest.mark.skipif(not AGENT.exists(), reason="console script not installed")
def test_installed_console_script() -> None:
    proc = subprocess.run(
        [str(AGENT), "decode", "ble.bpm", "00 BD F0 0B 00 9F F0"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["observations"][0]["value"] == 18.9
    proc = subprocess.run(
        [str(AGENT), "decode", "ble.bpm", "01 02 03 04 05 06"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: ble.bpm: payload is 6 bytes, but flags 0x01 require 7 "
        "(flags 1 + systolic 2 + diastolic 2 + mean arterial pressure 2)"
    ]


def test_profile_for_characteristic() -> None:
    bpm = decode.profile_for_characteristic("00002a35-0000-1000-8000-00805f9b34fb")
    assert bpm is not None
    assert bpm.name == "ble.bpm"
    serial = decode.profile_for_characteristic("2A25")
    assert serial is not None
    assert serial.name == "ble.dis"
    nonin = decode.profile_for_characteristic("0AAD7EA0-0D60-11E2-8E3C-0002A5D5C51B")
    assert nonin is not None
    assert nonin.name == "ble.nonin-oximetry"
    assert decode.profile_for_characteristic("2a99") is None


def test_decode_payload_pieces_for_a_reading() -> None:
    d = decode.decode_payload("ble.plx-spot", bytes.fromhex("01 61 00 48 00 E8 07 06 0F 11 11 1B"))
    assert [o.mdc for o in d.observations] == [150456, 149530]
    assert d.device_time is not None
    assert d.device_time.isoformat() == "2024-06-15T17:17:27"
    assert d.status == ()
    assert d.raw.hex() == "01610048" + "00e807060f11111b"


def test_a_codec_bug_still_surfaces_as_codec_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(data: bytes, model: str | None) -> object:
        raise IndexError("bug")

    prof = decode.PROFILES["ble.bpm"]
    monkeypatch.setitem(
        decode.PROFILES,
        "ble.bpm",
        decode.Profile(prof.name, prof.characteristic, prof.summary, broken),
    )
    with pytest.raises(CodecError, match="decoder failed unexpectedly") as err:
        decode.decode_payload("ble.bpm", b"\x00")
    assert err.value.raw == b"\x00"
    with pytest.raises(KeyError, match="unknown profile"):
        decode.decode_payload("ble.nope", b"")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("8.90"), "8.90"),
        (Decimal("100.0"), "100.0"),
        (Decimal("120E-8"), "0.00000120"),
        (Decimal("1.20E+5"), "120000"),
        (Decimal("459.67"), "459.67"),
        (Decimal("-1E+127"), "-1E+127"),
    ],
)
def test_json_numbers_are_exact(value: Decimal, text: str) -> None:
    assert decode.to_json({"v": value}) == '{"v": ' + text + "}"
    assert json.loads(decode.to_json([value]), parse_float=Decimal) == [value]


# Every other byte vector in ble-gatt.md, by section, through the command.
OTHER_VECTORS = [
    ("ble.date-time", "00 00 00 00 12 1A 20"),  # 1.3 date unknown
    ("ble.current-time", "E8 07 06 06 0C 04 2C 04 80 00"),  # 1.3
    ("ble.racp", "05 00 01"),  # 1.6 Nordic 1-byte count
    ("ble.racp", "05 00 04 03 02 01"),  # 1.6 Nordic 4-byte count
    ("ble.racp", "06 00 0C 02"),  # 1.6 op 12 not supported
    ("ble.racp", "01 01"),  # 1.6 report all
    ("ble.racp", "01 06"),  # 1.6 report last
    ("ble.racp", "04 01"),  # 1.6 number of all
    ("ble.racp", "03 00"),  # 1.6 abort
    ("ble.racp", "02 01"),  # 1.6 delete all
    ("ble.and-command", "03 01 A6 02"),  # 2.2 set buffer size
    ("ble.nonin-control", "60 4E 4D 49 06 44 54 4D 3F 0D 0A"),  # 2.5 get date/time
    ("ble.nonin-control", "60 4E 4D 49 12 44 54 4D 3D 32 34 30 36 30 36 31 32 30 34 34 34 0D 0A"),
    ("ble.nonin-control", "61 05"),  # 2.5 display sync
    ("ble.nonin-control", "62 4E 4D 49"),  # 2.5 measurement complete
]


@pytest.mark.parametrize(("profile", "wire"), OTHER_VECTORS)
def test_other_reference_vectors(profile: str, wire: str) -> None:
    doc = decoded(profile, wire)
    assert doc["raw"] == bytes.fromhex(wire).hex()
    assert doc["fields"]["specials"] == {}
