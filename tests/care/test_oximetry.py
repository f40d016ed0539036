"""The overnight oximetry summary on synthetic nights whose answers are known by construction
(``hw_mocks.nights``), its properties (hypothesis), and ``dho-agent oximetry-summary``."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hw_mocks.nights import NightScript
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from agent.care.oximetry import (
    OximetryInputError,
    OximetryNight,
    parse_csv,
    summarise,
    summarise_csv,
)
from agent.cli import app

EVENING = datetime(2026, 11, 14, 22, 0, tzinfo=UTC)
runner = CliRunner()


def summary_of(script: NightScript):
    s = summarise(script.samples)
    assert s is not None
    return s


def test_a_flat_night() -> None:
    s = summary_of(NightScript(EVENING).steady(8 * 3600))
    assert s.recording_min == s.valid_min == 480
    assert s.mean_spo2 == s.min_spo2 == 96
    assert s.t90_min == s.t88_min == 0
    assert s.t90_pct == 0
    assert s.desaturations3 == s.desaturations4 == 0
    assert s.odi3 == s.odi4 == 0
    assert s.mean_pulse == s.min_pulse == s.max_pulse == 62
    assert s.artefact_ms == s.sensor_off_ms == 0
    assert s.night == date(2026, 11, 14)


def test_a_night_with_scripted_desaturations() -> None:
    night = NightScript(EVENING).steady(300)
    for _ in range(5):
        night.dip(5, 30)  # to 91: both rules
    for _ in range(3):
        night.dip(3, 20)  # to 93: 3 points only
    for _ in range(2):
        night.dip(8, 60)  # to 88: below 90, not below 88
    for _ in range(2):
        night.dip(10, 15)  # to 86: below 88
    for _ in range(4):
        night.dip(6, 9)  # 9 s: too short for either rule
    used = len(night.samples)
    night.steady(2 * 3600 - used)  # exactly two hours
    s = summary_of(night)
    assert s.valid_min == 120
    assert s.desaturations3 == 5 + 3 + 2 + 2
    assert s.desaturations4 == 5 + 2 + 2
    assert s.odi3 == Decimal("6.0")
    assert s.odi4 == Decimal("4.5")
    assert s.t90_ms == (2 * 60 + 2 * 15) * 1000
    assert s.t88_ms == 2 * 15 * 1000
    assert s.t90_pct == Decimal("2.1")  # 150 s of 7200 s
    assert s.min_spo2 == 86


def test_desaturations_against_a_lower_baseline() -> None:
    """The baseline is the night's own (mean of the last 120 s), not a fixed 96."""
    s = summary_of(NightScript(EVENING, baseline=92).steady(300).dip(4, 12).steady(60))
    assert (s.desaturations3, s.desaturations4) == (1, 1)
    s = summary_of(NightScript(EVENING, baseline=92).steady(300).dip(2, 30).steady(60))
    assert (s.desaturations3, s.desaturations4) == (0, 0)


def test_a_night_with_sensor_off_gaps_and_artefacts() -> None:
    night = (
        NightScript(EVENING)
        .steady(2 * 3600)
        .sensor_off(30 * 60)
        .steady(10)
        .dip(5, 20)  # 10 s after the sensor is back: no baseline yet, not scored
        .steady(3600 - 180)
        .artefact(10 * 60)
        .steady(20 * 60)
    )
    s = summary_of(night)
    assert s.recording_min == 240
    assert s.sensor_off_ms == 30 * 60 * 1000
    assert s.artefact_ms == 10 * 60 * 1000
    assert s.valid_min == 200
    assert s.desaturations3 == 0
    assert s.t90_min == 0  # the dip went to 91
    assert s.t90_pct == 0
    # the same dip 40 s after the sensor came back has its baseline and counts
    s = summary_of(NightScript(EVENING).steady(600).sensor_off(600).steady(40).dip(5, 20))
    assert s.desaturations3 == 1


def test_an_event_cut_by_the_sensor_coming_off_counts_if_long_enough() -> None:
    s = summary_of(NightScript(EVENING).steady(300).dip(5, 12, recover=0).sensor_off(60).steady(60))
    assert s.desaturations3 == 1
    s = summary_of(NightScript(EVENING).steady(300).dip(5, 8, recover=0).sensor_off(60).steady(60))
    assert s.desaturations3 == 0


def test_a_night_crossing_midnight() -> None:
    oslo = timezone(timedelta(hours=1))
    start = datetime(2026, 11, 14, 23, 30, tzinfo=oslo)
    s = summary_of(NightScript(start).steady(3600).dip(5, 30).steady(3600 - 180))
    assert s.start == start
    assert s.end == datetime(2026, 11, 15, 1, 30, tzinfo=oslo)
    assert s.recording_min == 120
    assert s.night == date(2026, 11, 14)  # the evening it began
    assert s.desaturations3 == 1
    # and one starting just after midnight still belongs to the evening before
    assert summary_of(NightScript(start + timedelta(hours=1)).steady(60)).night == date(
        2026, 11, 14
    )


def test_a_night_split_by_a_reconnect() -> None:
    night = NightScript(EVENING).steady(3600).gap(300).steady(3600)
    s = summary_of(night)
    assert s.recording_min == 125
    assert s.valid_min == 120
    assert s.sensor_off_ms == 0
    # fed as the two chunks the driver stored, the second sent twice: the same answer
    first, second = night.samples[:3600], night.samples[3600:]
    acc = OximetryNight()
    for part in (first, second, second):
        acc.add_series(part[0][0], 1000, [v for _, v, _ in part], [p for _, _, p in part])
    again = acc.summary()
    assert again is not None
    assert again.to_json() | {"overlap_samples": 0} == s.to_json()
    assert again.overlap_samples == 3600


def test_a_desaturation_across_a_reconnect_is_not_joined() -> None:
    """A gap ends an event: 6 s before and 6 s after a gap are two short events, not one."""
    s = summary_of(NightScript(EVENING).steady(300).dip(5, 6, recover=0).gap(30).dip(5, 6))
    assert s.desaturations3 == 0


def test_state_round_trips_mid_event() -> None:
    night = NightScript(EVENING).steady(300).dip(5, 30).steady(100)
    samples = night.samples
    acc = OximetryNight()
    for at, spo2, pulse in samples[:315]:  # stop in the middle of the dip
        acc.add(at, spo2, pulse)
    restored = OximetryNight.from_state(json.loads(json.dumps(acc.state())))
    for at, spo2, pulse in samples[315:]:
        restored.add(at, spo2, pulse)
    assert restored.summary() == summary_of(night)


def test_damaged_state_is_refused() -> None:
    with pytest.raises(ValueError, match="damaged"):
        OximetryNight.from_state({"v": 1})
    with pytest.raises(ValueError, match="version"):
        OximetryNight.from_state({"v": 99})


def test_mixed_offsets_are_refused() -> None:
    acc = OximetryNight()
    acc.add(EVENING, 96)
    with pytest.raises(ValueError, match="offset"):
        acc.add(EVENING.replace(tzinfo=None) + timedelta(seconds=1), 96)


# -- properties ------------------------------------------------------------------------------

step = st.one_of(
    st.tuples(st.just("steady"), st.integers(1, 400), st.integers(40, 100)),
    st.tuples(st.just("dip"), st.integers(1, 40), st.integers(1, 15)),
    st.tuples(st.just("off"), st.integers(1, 200), st.just(0)),
    st.tuples(st.just("artefact"), st.integers(1, 50), st.sampled_from([0, 30, 101, 127])),
    st.tuples(st.just("gap"), st.integers(1, 300), st.just(0)),
)


def build(steps: list[tuple[str, int, int]]) -> NightScript:
    night = NightScript(EVENING)
    for kind, seconds, value in steps:
        if kind == "steady":
            night.steady(seconds, spo2=value)
        elif kind == "dip":
            night.dip(value, seconds, recover=0)
        elif kind == "off":
            night.sensor_off(seconds)
        elif kind == "artefact":
            night.artefact(seconds, value)
        else:
            night.gap(seconds)
    return night


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=1, max_size=25), st.integers(1, 500))
def test_properties(steps: list[tuple[str, int, int]], split: int) -> None:
    night = build(steps)
    if not night.samples:
        return
    s = summary_of(night)
    assert s.desaturations3 >= 0
    assert s.desaturations4 >= 0
    assert s.odi3 is None or s.odi3 >= 0
    assert s.odi4 is None or s.odi4 >= 0
    assert 0 <= s.t88_ms <= s.t90_ms <= s.valid_ms
    if s.t90_pct is not None:
        assert 0 <= s.t88_pct <= s.t90_pct <= 100
    assert s.valid_ms + s.artefact_ms + s.sensor_off_ms <= s.recording_ms
    if s.mean_spo2 is not None:
        assert s.min_spo2 is not None
        assert s.min_spo2 <= s.mean_spo2 <= 100
    if s.mean_pulse is not None:
        assert s.min_pulse is not None
        assert s.max_pulse is not None
        assert s.min_pulse <= s.mean_pulse <= s.max_pulse
    # feeding in two pieces, with a persist/restore between them, changes nothing
    acc = OximetryNight()
    cut = split % len(night.samples)
    for at, spo2, pulse in night.samples[:cut]:
        acc.add(at, spo2, pulse)
    acc = OximetryNight.from_state(json.loads(json.dumps(acc.state())))
    for at, spo2, pulse in night.samples[cut:]:
        acc.add(at, spo2, pulse)
    assert acc.summary() == s


@settings(max_examples=60, deadline=None)
@given(st.lists(step, min_size=1, max_size=12))
def test_the_csv_file_gives_the_same_summary(steps: list[tuple[str, int, int]]) -> None:
    night = build(steps)
    if not night.samples:
        return
    assert summarise_csv(night.csv()) == summary_of(night)


# -- the CSV file and the command ------------------------------------------------------------


def test_csv_rows() -> None:
    rows = parse_csv("time,spo2,pulse\n2026-11-14T22:00:00Z,96,61\n2026-11-14T22:00:01Z,,\n")
    assert rows[0] == (datetime(2026, 11, 14, 22, 0, tzinfo=UTC), Decimal(96), Decimal(61))
    assert rows[1][1:] == (None, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("time,spo2,pulse\n", "no samples"),
        ("when,sat,hr\n2026-11-14T22:00:00,96,60\n", "line 1: the header"),
        ("time,spo2,pulse\nyesterday,96,60\n", "line 2: time is not an ISO-8601"),
        ("time,spo2,pulse\n2026-11-14T22:00:00,high,60\n", "line 2: spo2 is not a number"),
        ("time,spo2,pulse\n2026-11-14T22:00:00,NaN,60\n", "line 2: spo2 is not a finite"),
        ("time,spo2,pulse\n2026-11-14T22:00:00,96\n", "line 2: expected 3 cells"),
        (
            "time,spo2,pulse\n2026-11-14T22:00:01,96,60\n2026-11-14T22:00:00,96,60\n",
            "line 3: time does not increase",
        ),
        (
            "time,spo2,pulse\n2026-11-14T22:00:00,96,60\n2026-11-14T22:00:01Z,96,60\n",
            "line 3: times mix",
        ),
    ],
)
def test_bad_files(text: str, message: str) -> None:
    with pytest.raises(OximetryInputError, match=message):
        summarise_csv(text)


def test_the_command_prints_the_summary(tmp_path: Path) -> None:
    night = NightScript(EVENING).steady(300)
    for _ in range(4):
        night.dip(5, 30)
    night.steady(3600 - len(night.samples))
    path = tmp_path / "night.csv"
    path.write_text(night.csv())
    result = runner.invoke(app, ["oximetry-summary", str(path)])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    for key in ("valid_min", "mean_spo2", "min_spo2", "t90_min", "t90_pct", "odi3", "odi4"):
        assert key in doc
    assert doc["valid_min"] == 60
    assert doc["odi3"] == doc["odi4"] == 4
    assert doc["min_spo2"] == 91
    assert doc["mean_pulse"] == 62.3  # 120 s at 70 in 3600 s at 62
    assert doc["night"] == "2026-11-14"
    assert '"t90_pct": 0.0' in result.stdout  # exact decimals, not floats


def test_the_installed_command_fails_in_one_line(tmp_path: Path) -> None:
    agent = str(Path(sys.executable).parent / "dho-agent")
    missing = subprocess.run(
        [agent, "oximetry-summary", str(tmp_path / "none.csv")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1
    assert missing.stderr.startswith("error: cannot read")
    (tmp_path / "bad.csv").write_bytes(b"\xff\xfe binary")
    bad = runner.invoke(app, ["oximetry-summary", str(tmp_path / "bad.csv")])
    assert bad.exit_code == 2
    assert bad.stderr.strip().endswith("not UTF-8 text")
    (tmp_path / "dir").mkdir()
    assert runner.invoke(app, ["oximetry-summary", str(tmp_path / "dir")]).exit_code == 2
