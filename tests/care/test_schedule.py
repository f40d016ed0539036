"""Measurement reminders: the planner on a schedule (pure)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hw_mocks.synthetic import PATIENT

from agent.care.schedule import (
    ActionKind,
    Kind,
    Planner,
    Schedule,
    ScheduleError,
    kinds_of,
)
from tests.care.helpers import bp, chunk, spot

OSLO = ZoneInfo("Europe/Oslo")
DAY = datetime(2026, 11, 16, tzinfo=OSLO)  # a Monday
ARGS = {
    "patient": PATIENT,
    "bp": "07:00-10:00,19:00-22:00",
    "oximetry": "21:00-01:00",
    "quiet": "22:30-07:00",
    "remind_every_min": 15,
}


def at(hours: float) -> datetime:
    return DAY + timedelta(hours=hours)


def planner(**extra: object) -> Planner:
    p = Planner()
    p.set(Schedule.from_args({**ARGS, **extra}))
    return p


def kinds(actions) -> list[tuple[str, str, bool]]:
    return [(str(a.kind), str(a.occurrence.kind), a.sound) for a in actions]


def test_a_reminder_fires_repeats_and_stops_on_the_measurement() -> None:
    p = planner()
    assert p.tick(at(6.9)) == []
    assert kinds(p.tick(at(7))) == [("remind", "bp", True)]
    assert p.tick(at(7.1)) == []  # 6 minutes later: not yet again
    assert kinds(p.tick(at(7.25))) == [("remind", "bp", True)]  # 15 minutes
    assert [o.kind for o in p.due()] == [Kind.BP]
    p.measured(PATIENT, kinds_of(bp(at(7.3), 130)), at(7.3))
    actions = p.tick(at(7.31))
    assert [(str(a.kind), a.why) for a in actions] == [("stop", "measured")]
    assert p.due() == []
    assert p.tick(at(9.99)) == []  # nothing more for this window, and never "missed"
    assert p.tick(at(10.5)) == []


def test_a_window_with_nothing_is_reported_missed_once() -> None:
    p = planner()
    p.tick(at(19))
    p.tick(at(19.5))
    actions = p.tick(at(22.01))
    assert [(str(a.kind), a.why) for a in actions if a.occurrence.kind is Kind.BP] == [
        ("stop", "window-ended"),
        ("missed", ""),
    ]
    missed = next(a for a in actions if a.kind is ActionKind.MISSED)
    assert missed.reminders == 2  # at 19:00 and at 19:30 (the ticks)
    assert missed.occurrence.start == at(19)
    assert missed.occurrence.end == at(22)
    assert not [a for a in p.tick(at(22.2)) if a.kind is ActionKind.MISSED]


def test_quiet_hours_hold_a_reminder_and_a_window_closing_in_them_is_missed() -> None:
    """In quiet hours no light, no sound, no repeat; the reminder is kept."""
    p = planner()  # quiet 22:30-07:00; oximetry 21:00-01:00
    assert ("remind", "oximetry", True) in kinds(p.tick(at(21)))
    assert [o.kind for o in p.shown(at(21))] == [Kind.BP, Kind.OXIMETRY]
    assert [a for a in p.tick(at(22.75)) if a.occurrence.kind is Kind.OXIMETRY] == []  # 22:45
    assert [o.kind for o in p.due()] == [Kind.OXIMETRY]  # kept ...
    assert p.shown(at(22.75)) == []  # ... but not on the light
    assert p.tick(at(23.5)) == []  # no repeat either
    actions = p.tick(at(25.01))  # 01:00: the window closed in quiet hours
    assert [(str(a.kind), a.why) for a in actions] == [("stop", "window-ended"), ("missed", "")]
    assert actions[1].reminders == 1  # only the one before quiet hours was given


def test_a_reminder_held_by_quiet_hours_comes_at_once_when_they_end() -> None:
    p = planner(quiet="21:30-21:40", remind_every_min=60)
    p.measured(PATIENT, {Kind.BP}, at(19.2))
    assert kinds(p.tick(at(21))) == [("remind", "oximetry", True)]
    assert p.tick(at(21.5 + 1 / 60)) == []  # 21:31, quiet
    assert p.shown(at(21.5 + 1 / 60)) == []
    # The agent restarts in quiet hours: what is held is in the state (its last tick).
    p = Planner.from_state(json.loads(json.dumps(p.state())))
    # 21:41: quiet hours are over; 41 minutes after the last reminder, not 60: at once anyway
    assert kinds(p.tick(at(21 + 41 / 60))) == [("remind", "oximetry", True)]
    assert [o.kind for o in p.shown(at(21 + 41 / 60))] == [Kind.OXIMETRY]
    assert p.tick(at(21 + 50 / 60)) == []  # then every 60 minutes again
    assert kinds(p.tick(at(22 + 41 / 60))) == [("remind", "oximetry", True)]


def test_a_window_opening_in_quiet_hours_is_reminded_when_they_end() -> None:
    p = planner(quiet="22:30-07:30")  # bp 07:00-10:00 opens in quiet hours
    p.tick(at(24 + 6.9))
    assert [a for a in p.tick(at(24 + 7.05)) if a.occurrence.kind is Kind.BP] == []
    assert Kind.BP in [o.kind for o in p.due()]
    assert p.shown(at(24 + 7.05)) == []
    assert ("remind", "bp", True) in kinds(p.tick(at(24 + 7.5)))
    assert [o.kind for o in p.shown(at(24 + 7.5))] == [Kind.BP]


def test_night_oximetry_crosses_midnight_and_stops_on_samples() -> None:
    p = planner()
    p.measured(PATIENT, {Kind.BP}, at(19.2))
    assert kinds(p.tick(at(21))) == [("remind", "oximetry", True)]
    night = chunk(at(23.5), [95] * 60)
    assert kinds_of(night) == {Kind.SPO2, Kind.OXIMETRY}
    p.measured(PATIENT, kinds_of(night), at(23.5))
    assert [str(a.kind) for a in p.tick(at(23.6))] == ["stop"]
    # the next evening nothing comes: missed at 01:00 the day after
    p.tick(at(24 + 21))
    actions = p.tick(at(24 + 25.01))
    missed = [a for a in actions if a.kind is ActionKind.MISSED]
    assert [(a.occurrence.kind, a.occurrence.start) for a in missed] == [
        (Kind.BP, at(24 + 19)),
        (Kind.OXIMETRY, at(24 + 21)),
    ]


def test_a_measurement_before_the_window_does_not_count() -> None:
    p = planner()
    p.measured(PATIENT, {Kind.BP}, at(6.5))
    assert kinds(p.tick(at(7))) == [("remind", "bp", True)]


def test_weekdays() -> None:
    p = planner(bp="07:00-10:00", bp_days="tue,thu")
    assert [a for a in p.tick(at(7)) if a.occurrence.kind is Kind.BP] == []  # Monday
    assert ("remind", "bp", True) in kinds(p.tick(at(24 + 7)))  # Tuesday


def test_windows_missed_while_the_box_was_off_are_reported() -> None:
    p = planner(oximetry="21:00-23:00")
    assert p.tick(at(6)) == []  # the first tick judges nothing from before it
    actions = p.tick(at(48 + 6))  # two days later
    missed = [
        (a.occurrence.kind, a.occurrence.start) for a in actions if a.kind is ActionKind.MISSED
    ]
    assert missed == [
        (Kind.BP, at(7)),
        (Kind.BP, at(19)),
        (Kind.OXIMETRY, at(21)),
        (Kind.BP, at(24 + 7)),
        (Kind.BP, at(24 + 19)),
        (Kind.OXIMETRY, at(24 + 21)),
    ]


def test_a_new_schedule_stops_the_old_reminders() -> None:
    p = planner()
    p.tick(at(7))
    stops = p.set(Schedule.from_args({"patient": PATIENT}))
    assert [a.why for a in stops] == ["schedule-changed"]
    assert p.tick(at(10.5)) == []  # no schedule: nothing, not even "missed"


def test_state_round_trips() -> None:
    p = planner()
    p.tick(at(7))
    p.measured(PATIENT, {Kind.SPO2}, at(7.1))
    q = Planner.from_state(json.loads(json.dumps(p.state())))
    assert q.due() == p.due()
    assert q.tick(at(10.01)) == p.tick(at(10.01))


def test_spot_readings_count_for_spo2() -> None:
    assert kinds_of(spot(at(8), 95)) == {Kind.SPO2}
    assert kinds_of(bp(at(8), 120)) == {Kind.BP}


def test_daylight_saving_time_is_local_time() -> None:
    sunday = datetime(2026, 3, 29, tzinfo=OSLO)  # clocks go forward at 02:00
    p = Planner()
    p.set(Schedule.from_args({"patient": PATIENT, "bp": "07:00-10:00"}))
    actions = p.tick(datetime(2026, 3, 29, 7, 0, tzinfo=OSLO))
    assert actions[0].occurrence.start.utcoffset() == timedelta(hours=2)
    assert actions[0].occurrence.start == datetime(2026, 3, 29, 5, 0, tzinfo=ZoneInfo("UTC"))
    assert sunday.utcoffset() == timedelta(hours=1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "patient: required"),
        ({"patient": PATIENT, "bp": "7-10"}, "bp: windows are HH:MM-HH:MM"),
        ({"patient": PATIENT, "bp": "07:00-07:00"}, "bp: a window must not be empty"),
        ({"patient": PATIENT, "bp": "07:00-10:00", "bp_days": "someday"}, "bp_days: weekdays"),
        ({"patient": PATIENT, "quiet": 5}, "quiet: one window"),
        ({"patient": PATIENT, "remind_every_min": 1}, "remind_every_min: must be"),
        ({"patient": PATIENT, "weight": "07:00-08:00"}, "weight: unknown schedule key"),
    ],
)
def test_bad_arguments_name_the_key(args: dict[str, object], message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        Schedule.from_args(args)


def test_arguments_round_trip_and_the_uplinks_key_is_left_alone() -> None:
    s = Schedule.from_args({**ARGS, "bp_days": "mon,tue", "idle_poll_s": 60})
    assert Schedule.from_args(s.to_args()) == s
