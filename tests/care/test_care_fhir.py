"""The service's side of care readings: FHIR export (validated with fhir.resources) and the
receiver's one-alarm-with-its-paths view."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from hw_mocks.nights import NightScript
from hw_mocks.synthetic import OXIMETER, PATIENT

from agent.care import readings as cr
from agent.care.oximetry import summarise
from agent.care.thresholds import Evaluator, Thresholds
from receiver import fhir
from receiver.alarms import alarm_records
from receiver.store import StoredReading
from tests.care.helpers import captured, chunk

T0 = datetime(2026, 11, 15, 2, 0, tzinfo=UTC)


def stored(*readings):
    return [StoredReading(r, "box-0001", 0) for r in readings]


def alarm_and_note():
    ev = Evaluator()
    ev.set(Thresholds.from_args({"patient": PATIENT, "spo2_below": 88, "spo2_for_s": 120}))
    (a,) = ev.evaluate([chunk(T0, [85] * 130)], T0 + timedelta(minutes=5))
    alarm = cr.alarm_reading(a, captured(T0 + timedelta(seconds=121)))
    note = cr.path_reading(
        alarm.id,
        device=OXIMETER,
        patient=PATIENT,
        captured=captured(T0 + timedelta(minutes=20)),
        sms_numbers=2,
    )
    ack = cr.path_reading(
        alarm.id,
        device=OXIMETER,
        patient=PATIENT,
        captured=captured(T0 + timedelta(minutes=21)),
        acknowledged_after_s=1200,
    )
    return alarm, note, ack


def test_summary_and_alarm_export_validates() -> None:
    night = NightScript(T0 - timedelta(hours=4)).steady(300).dip(5, 30).steady(4 * 3600 - 480)
    s = summarise(night.samples)
    assert s is not None
    summary = cr.summary_reading(s, device=OXIMETER, patient=PATIENT, captured=captured(T0))
    alarm, note, ack = alarm_and_note()
    bundle = fhir.bundle(stored(summary, alarm, note, ack))
    text = fhir.dumps(bundle)
    Bundle.model_validate_json(text)
    obs = [
        e["resource"]
        for e in json.loads(text)["entry"]
        if e["resource"]["resourceType"] == "Observation"
    ]
    night_obs = [o for o in obs if o["code"]["coding"][0]["display"] == "DHO_OXIM_NIGHT_SUMMARY"]
    assert len(night_obs) == 1
    comps = {
        c["code"]["coding"][0]["display"]: c.get("valueQuantity", {}).get("value")
        for c in night_obs[0]["component"]
    }
    assert comps["DHO_OXIM_ODI3"] == 0.2  # 1 desaturation in 4 h: 0.25, half-even
    assert comps["DHO_OXIM_TIME_VALID"] == 240
    assert night_obs[0]["effectivePeriod"]["start"].startswith("2026-11-14T22:00:00")
    alarms = [o for o in obs if "interpretation" in o]
    assert len(alarms) == 1
    a: Any = alarms[0]
    assert a["interpretation"][0]["coding"][0]["code"] == "LL"
    assert a["valueQuantity"]["value"] == 85
    paths = sorted(e["valueCode"] for e in a["extension"] if e["url"] == fhir.ALARM_PATH_EXT)
    assert paths == ["sms", "uplink"]
    derived = [o for o in obs if "derivedFrom" in o]
    assert len(derived) == 2
    assert {d["derivedFrom"][0]["identifier"]["value"] for d in derived} == {
        a["identifier"][0]["value"]
    }


def test_the_service_sees_one_alarm_with_its_paths() -> None:
    alarm, note, ack = alarm_and_note()
    (only,) = alarm_records(stored(alarm, note, note, ack))  # a note delivered twice: still one
    assert only.reading_id == alarm.id
    assert only.paths == ("sms", "uplink")
    assert only.sms_numbers == 2
    assert only.acknowledged_at_box
    assert only.rule == "spo2-below"
    (plain,) = alarm_records(stored(alarm))
    assert plain.paths == ("uplink",)
    assert not plain.acknowledged_at_box
