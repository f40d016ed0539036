"""The threshold evaluator: readings in, alarm decisions out (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hw_mocks.synthetic import PATIENT
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.care.thresholds import (
    Direction,
    Evaluator,
    Quantity,
    Rule,
    ThresholdError,
    Thresholds,
)
from tests.care.helpers import bp, chunk, spot

T0 = datetime(2026, 11, 15, 3, 0, tzinfo=UTC)
COPD = {"patient": PATIENT, "spo2_below": 88, "spo2_for_s": 120, "sys_above": 180, "sys_below": 90}


def evaluator(**args: object) -> Evaluator:
    ev = Evaluator()
    ev.set(Thresholds.from_args({**COPD, **args}))
    return ev


def test_defaults_are_off() -> None:
    ev = Evaluator()
    assert ev.evaluate([chunk(T0, [70] * 600), bp(T0, 250)], T0 + timedelta(minutes=10)) == []


def test_spo2_below_88_for_two_minutes() -> None:
    ev = evaluator()
    # 119 s below: nothing
    assert (
        ev.evaluate([chunk(T0, [95] * 60 + [86] * 119 + [95] * 60)], T0 + timedelta(hours=1)) == []
    )
    # 120 s below: one alarm, when the 120th second ends, with the lowest value
    later = T0 + timedelta(minutes=10)
    samples = [95] * 30 + [87] * 60 + [84] * 60 + [87] * 100 + [95] * 30
    alarms = ev.evaluate([chunk(later, samples)], later + timedelta(minutes=10))
    assert len(alarms) == 1
    a = alarms[0]
    assert a.rule.id == "spo2-below"
    assert a.started == later + timedelta(seconds=30)
    assert a.raised_at == later + timedelta(seconds=150)
    assert a.duration_s == 120
    assert a.value == 84
    assert a.patient == PATIENT


def test_a_run_spans_chunks_and_short_sensor_holes() -> None:
    ev = evaluator()
    first = chunk(T0, [95] * 10 + [85] * 50)
    second = chunk(T0 + timedelta(seconds=60), [None] * 5 + [85] * 55)  # 5 s hole
    third = chunk(T0 + timedelta(seconds=120), [85] * 30)
    now = T0 + timedelta(minutes=5)
    assert ev.evaluate([first, second], now) == []
    alarms = ev.evaluate([third], now)
    assert [a.raised_at for a in alarms] == [T0 + timedelta(seconds=130)]


def test_a_long_hole_or_a_good_sample_ends_the_run() -> None:
    ev = evaluator()
    hole = chunk(T0, [85] * 100 + [None] * 11 + [85] * 100)
    assert ev.evaluate([hole], T0 + timedelta(minutes=5)) == []
    good = chunk(T0 + timedelta(minutes=10), [85] * 100 + [90] + [85] * 100)
    assert ev.evaluate([good], T0 + timedelta(minutes=15)) == []


def test_one_alarm_per_episode_and_rearming() -> None:
    ev = evaluator()
    samples = [85] * 300 + [92] * 30 + [85] * 300  # back for 30 s only: same episode
    assert len(ev.evaluate([chunk(T0, samples)], T0 + timedelta(minutes=15))) == 1
    later = T0 + timedelta(minutes=20)
    samples = [92] * 60 + [85] * 130  # 60 s good (re-armed), then a new episode
    assert len(ev.evaluate([chunk(later, samples)], later + timedelta(minutes=5))) == 1


def test_blood_pressure_spot_rules() -> None:
    ev = evaluator()
    now = T0 + timedelta(minutes=1)
    alarms = ev.evaluate([bp(T0, 185), bp(T0 + timedelta(seconds=30), 150), bp(T0, 85)], now)
    assert [(a.rule.id, a.value) for a in alarms] == [
        ("sys-above", Decimal(185)),
        ("sys-below", Decimal(85)),
    ]
    assert alarms[0].started == alarms[0].raised_at == T0
    # each new breaching measurement is its own alarm
    assert len(ev.evaluate([bp(T0 + timedelta(seconds=40), 190)], now)) == 1


def test_a_spot_check_cannot_satisfy_a_sustained_rule() -> None:
    ev = evaluator()
    assert ev.evaluate([spot(T0, 80)], T0) == []
    ev = evaluator(spo2_for_s=0)
    assert [a.value for a in ev.evaluate([spot(T0, 80)], T0)] == [80]


def test_stale_readings_raise_nothing() -> None:
    ev = evaluator()
    assert ev.evaluate([bp(T0, 200)], T0 + timedelta(hours=2)) == []
    assert ev.evaluate([chunk(T0, [80] * 300)], T0 + timedelta(hours=3)) == []


def test_other_patients_are_not_judged_by_these_rules() -> None:
    ev = evaluator()
    assert ev.evaluate([bp(T0, 200, patient="someone-else")], T0) == []


def test_setting_new_rules_replaces_the_old() -> None:
    ev = evaluator()
    ev.set(Thresholds.from_args({"patient": PATIENT}))
    assert ev.rules_for(PATIENT) == ()
    assert ev.evaluate([bp(T0, 250)], T0) == []


def test_command_arguments() -> None:
    t = Thresholds.from_args({**COPD, "pulse_above": "130.5"})
    assert set(t.rules) == {
        Rule(Quantity.SPO2, Direction.BELOW, Decimal(88), 120),
        Rule(Quantity.SYSTOLIC, Direction.ABOVE, Decimal(180)),
        Rule(Quantity.SYSTOLIC, Direction.BELOW, Decimal(90)),
        Rule(Quantity.PULSE, Direction.ABOVE, Decimal("130.5")),
    }
    assert Thresholds.from_args(t.to_args()) == t


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "patient: required"),
        ({"patient": PATIENT, "spo2_below": 30}, "spo2_below: must be from 50"),
        ({"patient": PATIENT, "spo2_below": "low"}, "spo2_below: must be a number"),
        ({"patient": PATIENT, "spo2_below": True}, "spo2_below: must be a number"),
        ({"patient": PATIENT, "spo2_for_s": -1}, "spo2_for_s: must be a whole number"),
        ({"patient": PATIENT, "sys_for_s": 60}, "sys_for_s: blood pressure"),
        ({"patient": PATIENT, "temperature_above": 39}, "temperature_above: unknown"),
    ],
)
def test_bad_arguments_name_the_key(args: dict[str, object], message: str) -> None:
    with pytest.raises(ThresholdError, match=message):
        Thresholds.from_args(args)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.integers(70, 100)), min_size=1, max_size=600),
    st.integers(1, 120),
    st.integers(1, 9),
)
def test_chunking_does_not_change_the_decisions(
    samples: list[int | None], for_s: int, pieces: int
) -> None:
    whole = evaluator(spo2_for_s=for_s)
    split = evaluator(spo2_for_s=for_s)
    now = T0 + timedelta(hours=1)
    expected = [
        (a.started, a.raised_at, a.value) for a in whole.evaluate([chunk(T0, samples)], now)
    ]
    got = []
    size = max(1, len(samples) // pieces)
    for i in range(0, len(samples), size):
        part = chunk(T0 + timedelta(seconds=i), samples[i : i + size])
        got += [(a.started, a.raised_at, a.value) for a in split.evaluate([part], now)]
    assert got == expected
    for started, raised, value in got:
        assert raised - started >= timedelta(seconds=for_s)
        assert value < 88
