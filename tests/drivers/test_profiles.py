"""The one profile registry: payload, stream and path profiles, and ``dho-agent decode`` on each."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from agent import codes
from agent.cli import app
from agent.drivers import decode, profiles
from agent.drivers.contract import Decoded, JsonValue, Profile, Undecodable
from agent.drivers.gatt import uuids
from agent.errors import CodecError
from agent.model import Lane, Observation


def test_decode_shows_the_one_registry() -> None:
    assert decode.PROFILES is profiles.PROFILES
    assert decode.profile is profiles.profile
    assert all(name == p.name for name, p in profiles.PROFILES.items())
    assert all(p.input in ("payload", "stream", "path") for p in profiles.PROFILES.values())


def test_measurement_characteristics_and_their_lanes() -> None:
    measured = {
        uuid: (p.name, p.lane, p.dedupe_repeats)
        for uuid, p in profiles.BY_CHARACTERISTIC.items()
        if p.lane is not None
    }
    assert measured == {
        uuids.BLOOD_PRESSURE_MEASUREMENT: ("ble.bpm", Lane.SPOT, True),
        uuids.PLX_SPOT_CHECK_MEASUREMENT: ("ble.plx-spot", Lane.SPOT, True),
        uuids.PLX_CONTINUOUS_MEASUREMENT: ("ble.plx-cont", Lane.CONTINUOUS, False),
        uuids.NONIN_CONTINUOUS_OXIMETRY: ("ble.nonin-oximetry", Lane.CONTINUOUS, True),
    }
    assert profiles.measurement_for_characteristic(uuids.BATTERY_LEVEL) is None
    assert profiles.measurement_for_characteristic(uuids.RECORD_ACCESS_CONTROL_POINT) is None


def test_a_profile_has_exactly_one_form() -> None:
    def nothing(data: bytes, model: str | None) -> object:
        return data

    with pytest.raises(ValueError, match="exactly one"):
        Profile("x.y", None, "neither")
    with pytest.raises(ValueError, match="exactly one"):
        Profile("x.y", None, "both", nothing, read_path=lambda p: [])
    with pytest.raises(ValueError, match=r"<transport>\.<format>"):
        Profile("plain", None, "no transport", nothing)


# A made-up stream format, only for these tests: "S<spo2>;" frames, anything else is garbage.


@dataclass(frozen=True, slots=True)
class Frame:
    spo2: int
    JSON_EXTRAS: ClassVar[tuple[str, ...]] = ("doubled",)

    @property
    def doubled(self) -> int:
        return self.spo2 * 2


class FrameDecoder:
    def __init__(self) -> None:
        self.pending = b""

    def feed(self, data: bytes) -> Sequence[Decoded | Undecodable]:
        self.pending += data
        out: list[Decoded | Undecodable] = []
        while b";" in self.pending:
            frame, _, self.pending = self.pending.partition(b";")
            start = frame.find(b"S")
            if start > 0:
                out.append(Undecodable("test.frames", frame[:start], "test.frames: garbage"))
            if start < 0 or not frame[start + 1 :].isdigit():
                out.append(Undecodable("test.frames", frame + b";", "test.frames: bad frame"))
                continue
            value = Frame(int(frame[start + 1 :]))
            obs = (Observation.of(codes.SPO2, value.spo2, "%"),)
            out.append(Decoded("test.frames", value, obs, None, (), frame[start:] + b";"))
        return out

    def close(self) -> Sequence[Decoded | Undecodable]:
        left, self.pending = self.pending, b""
        return [Undecodable("test.frames", left, "test.frames: truncated")] if left else []


def read_nights(path: Path) -> Sequence[Mapping[str, JsonValue]]:
    if not (path / "STR.edf").exists():
        raise CodecError("test.card", f"{path} holds no card")
    return [{"date": "2024-11-28", "usage_min": 475}, {"date": "2024-11-29", "usage_min": 0}]


@pytest.fixture
def extra_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        profiles.PROFILES,
        "test.frames",
        Profile("test.frames", None, "test frames", stream=FrameDecoder, lane=Lane.CONTINUOUS),
    )
    monkeypatch.setitem(
        profiles.PROFILES, "test.card", Profile("test.card", None, "a card", read_path=read_nights)
    )


@pytest.mark.usefixtures("extra_profiles")
def test_a_stream_profile_prints_every_reading_and_reports_garbage() -> None:
    data = b"xxS97;S98;S?;S9"
    out = decode.decode_input("test.frames", [data.hex()])
    docs = [json.loads(line) for line in out.lines]
    assert [d["observations"][0]["value"] for d in docs] == [97, 98]
    assert docs[0]["profile"] == "test.frames"
    assert docs[0]["raw"] == b"S97;".hex()
    assert docs[0]["fields"] == {
        "spo2": 97,
        "doubled": 194,
        "decoded_as": "Frame",
        "specials": {},
    }
    assert [s.raw for s in out.skipped] == [b"xx", b"S?;", b"S9"]
    with pytest.raises(CodecError, match=r"^test.frames: no reading in 4 bytes \(test.frames: bad"):
        decode.decode_input("test.frames", ["53 3f 3f 3b"])


@pytest.mark.usefixtures("extra_profiles")
def test_a_path_profile_reads_a_path(tmp_path: Path) -> None:
    (tmp_path / "STR.edf").write_bytes(b"")
    out = decode.decode_input("test.card", [str(tmp_path)])
    assert [json.loads(line)["usage_min"] for line in out.lines] == [475, 0]
    with pytest.raises(CodecError, match="holds no card"):
        decode.decode_input("test.card", [str(tmp_path / "empty")])
    with pytest.raises(ValueError, match="takes one PATH"):
        decode.decode_input("test.card", ["a", "b"])
    with pytest.raises(CodecError, match="takes stream input"):
        decode.decode_payload("test.frames", b"S1;")


@pytest.mark.usefixtures("extra_profiles")
def test_the_decode_command_on_stream_and_path_profiles(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["decode", "test.frames", b"S97;zzS98;".hex()])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["fields"]["spo2"] for line in result.stdout.splitlines()] == [97, 98]
    assert result.stderr.splitlines() == ["skipped 2 bytes: test.frames: garbage"]
    result = runner.invoke(app, ["decode", "test.frames", "53 39"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: test.frames: no reading in 2 bytes (test.frames: truncated)"
    ]
    result = runner.invoke(app, ["decode", "test.card", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: test.card: {tmp_path} holds no card"]
    (tmp_path / "STR.edf").write_bytes(b"")
    result = runner.invoke(app, ["decode", "test.card", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2
