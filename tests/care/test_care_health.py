"""The technician's status judges the care section, in the patient's words."""

from __future__ import annotations

import time

from agent.health import Concern, assess


def report(**care: object) -> dict[str, object]:
    return {"written_at": time.time(), "care": care}


def test_an_unacknowledged_alarm_is_the_worst_concern() -> None:
    h = assess(report(alarms_unacknowledged=1, alarms_open=1))
    assert h.concern is Concern.ALARM
    assert [p.code for p in h.problems] == ["care.alarm"]
    assert Concern.ALARM.said("nb") == "alarm: trykk på knappen for å kvittere"
    assert Concern.ALARM.said("en") == Concern.ALARM.meaning


def test_a_failing_modem_matters_only_while_an_alarm_is_open() -> None:
    assert assess(report(last_sms_error="no-network", alarms_open=0)).ok
    h = assess(report(last_sms_error="no-network", alarms_open=1))
    assert [p.code for p in h.problems] == ["care.sms"]
    assert "no-network" in h.problems[0].what


def test_every_concern_is_in_the_message_catalogue() -> None:
    from agent.care.i18n import LIGHT

    assert {c.meaning for c in Concern} <= set(LIGHT.values())
    assert Concern.OFFLINE.said("nn") == "fråkopla, målingane er trygt lagra i boksen"
