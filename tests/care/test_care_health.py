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


def test_the_technicians_status_says_what_the_patients_light_says(tmp_path) -> None:
    """``dho-provision status`` shows the light's state and its words in the box's language
    (``[care] language``, Bokmål by default), from the catalogue like the printed card."""
    import json
    import os

    from tests.provision.conftest import fresh_box, provision

    box = fresh_box(tmp_path / "box", "box-light-1")
    report = {
        "written_at": time.time(),
        "pid": os.getpid(),
        "status-light": {"state": "reminder", "pattern": "short-flash"},
    }
    (box / "var/lib/dho-gateway/status.json").write_text(json.dumps(report))
    done = provision("status", "--root", box, "--json")
    assert done.exit_code == 0, done.output
    light = json.loads(done.stdout)["light"]
    assert light == {"state": "reminder", "pattern": "short-flash", "says": "tid for måling"}
    table = provision("status", "--root", box)
    assert 'short-flash: "tid for måling"' in table.stdout
