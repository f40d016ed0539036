"""The readings the care service adds to the buffer (pure): night summaries, alarms, alarm path
notes and missed measurements. Codes: :mod:`agent.codes` (local block 0xF200/0xF300 of
partition 128), listed in ``docs/care.md``.

Status flags name what a reading is, for the service:

* ``oximetry-summary`` (spot lane; ``oximetry-summary-revised`` when a night got more data
  after its first summary was sent);
* ``alarm`` and ``alarm:<rule>`` (alarm lane), e.g. ``alarm:spo2-below``;
* ``alarm-path:sms`` / ``alarm-acknowledged`` with ``alarm-ref:<reading id of the alarm>``
  (alarm lane): how an alarm travelled besides the uplink, and that the patient pressed the
  button; the service folds them into the one alarm they name;
* ``missed:<kind>`` (spot lane): a scheduled window with no measurement.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from agent import codes
from agent.care.oximetry import NightSummary
from agent.care.schedule import Occurrence
from agent.care.thresholds import Alarm
from agent.clock import CaptureTime
from agent.ids import uuid7
from agent.model import Absent, DeviceIdentity, Lane, Observation, Reading

SUMMARY = codes.STATUS_SUMMARY
SUMMARY_REVISED = codes.STATUS_SUMMARY_REVISED
ALARM = codes.STATUS_ALARM
PATH_SMS = codes.STATUS_PATH_SMS
ACKNOWLEDGED = codes.STATUS_ACKNOWLEDGED
REF_PREFIX = codes.STATUS_REF_PREFIX


def _obs(code: codes.Code, value: Decimal | int | None, unit: str) -> Observation:
    if value is None:
        return Observation.missing(code, unit, Absent.MISSING)
    return Observation.of(code, value, unit)


def summary_reading(
    s: NightSummary,
    *,
    device: DeviceIdentity,
    patient: str,
    captured: CaptureTime,
    revised: bool = False,
) -> Reading:
    """The night's summary as one spot-lane reading (device time: the night's start)."""
    observations = (
        _obs(codes.OXIM_RECORDING, s.recording_min, "min"),
        _obs(codes.OXIM_VALID, s.valid_min, "min"),
        _obs(codes.OXIM_SPO2_MEAN, s.mean_spo2, "%"),
        _obs(codes.OXIM_SPO2_MIN, s.min_spo2, "%"),
        _obs(codes.OXIM_T90, s.t90_min, "min"),
        _obs(codes.OXIM_T90_PCT, s.t90_pct, "%"),
        _obs(codes.OXIM_T88, s.t88_min, "min"),
        _obs(codes.OXIM_T88_PCT, s.t88_pct, "%"),
        _obs(codes.OXIM_ODI3, s.odi3, "/h"),
        _obs(codes.OXIM_ODI4, s.odi4, "/h"),
        _obs(codes.OXIM_DESAT3, s.desaturations3, "1"),
        _obs(codes.OXIM_DESAT4, s.desaturations4, "1"),
        _obs(codes.OXIM_PULSE_MEAN, s.mean_pulse, "/min"),
        _obs(codes.OXIM_PULSE_MIN, s.min_pulse, "/min"),
        _obs(codes.OXIM_PULSE_MAX, s.max_pulse, "/min"),
        _obs(codes.OXIM_ARTEFACT, s.artefact_min, "min"),
        _obs(codes.OXIM_SENSOR_OFF, s.sensor_off_min, "min"),
    )
    flags = {SUMMARY} | ({SUMMARY_REVISED} if revised else set())
    return Reading(
        id=uuid7(captured.wall_ns),
        device=device,
        patient=patient,
        observations=observations,
        captured=captured,
        lane=Lane.SPOT,
        device_time=s.start,
        status=frozenset(flags),
    )


def alarm_reading(alarm: Alarm, captured: CaptureTime) -> Reading:
    """The alarm as an alarm-lane reading: the measured extreme, the limit and the duration."""
    q = alarm.rule.quantity
    return Reading(
        id=uuid7(captured.wall_ns),
        device=alarm.device,
        patient=alarm.patient,
        observations=(
            Observation.of(q.code, alarm.value, q.unit if q.is_pressure else _unit(alarm)),
            Observation.of(codes.ALARM_LIMIT, alarm.rule.limit, q.unit),
            Observation.of(codes.ALARM_DURATION, alarm.duration_s, "s"),
        ),
        captured=captured,
        lane=Lane.ALARM,
        device_time=alarm.started,
        status=frozenset({ALARM, f"{ALARM}:{alarm.rule.id}"}),
    )


def _unit(alarm: Alarm) -> str:
    for o in alarm.source.observations:
        if o.mdc in alarm.rule.quantity.mdcs:
            return o.unit
    if alarm.source.samples is not None:
        for ch in alarm.source.samples.channels:
            if ch.mdc in alarm.rule.quantity.mdcs:
                return ch.unit
    return alarm.rule.quantity.unit


def path_reading(
    alarm_id: uuid.UUID,
    *,
    device: DeviceIdentity,
    patient: str,
    captured: CaptureTime,
    sms_numbers: int | None = None,
    acknowledged_after_s: int | None = None,
) -> Reading:
    """A note on an earlier alarm: sent by SMS to ``sms_numbers`` numbers, or acknowledged at
    the box ``acknowledged_after_s`` seconds after it was raised."""
    if sms_numbers is not None:
        obs = Observation.of(codes.ALARM_SMS, sms_numbers, "1")
        flag = PATH_SMS
    elif acknowledged_after_s is not None:
        obs = Observation.of(codes.ALARM_ACKNOWLEDGED, acknowledged_after_s, "s")
        flag = ACKNOWLEDGED
    else:
        raise ValueError("a path note says SMS or acknowledged")
    return Reading(
        id=uuid7(captured.wall_ns),
        device=device,
        patient=patient,
        observations=(obs,),
        captured=captured,
        lane=Lane.ALARM,
        status=frozenset({flag, f"{REF_PREFIX}{alarm_id}"}),
    )


def missed_reading(
    occ: Occurrence, *, reminders: int, device: DeviceIdentity, captured: CaptureTime
) -> Reading:
    """A scheduled window that closed with no measurement (device time: the window's start,
    so a second report of the same window is the same natural key)."""
    minutes = int((occ.end - occ.start).total_seconds() // 60)
    return Reading(
        id=uuid7(captured.wall_ns),
        device=device,
        patient=occ.patient,
        observations=(
            Observation.of(codes.MEASUREMENT_MISSED, minutes, "min"),
            Observation.of(codes.REMINDERS_GIVEN, reminders, "1"),
        ),
        captured=captured,
        lane=Lane.SPOT,
        device_time=occ.start,
        status=frozenset({f"missed:{occ.kind}"}),
    )


def alarm_ref(reading: Reading) -> uuid.UUID | None:
    """The alarm a path note refers to (``None`` for other readings)."""
    for flag in reading.status:
        if flag.startswith(REF_PREFIX):
            try:
                return uuid.UUID(flag[len(REF_PREFIX) :])
            except ValueError:
                return None
    return None


def is_alarm(reading: Reading) -> bool:
    """An alarm raised by the box (not a path note)."""
    return ALARM in reading.status


def short_ref(alarm_id: uuid.UUID) -> str:
    """A short reference for an SMS: the last 6 hex digits of the alarm's reading id (the
    service finds the alarm by it within the box)."""
    return alarm_id.hex[-6:].upper()


def local_hhmm(t: datetime) -> str:
    """``HH:MM`` in the box's local time."""
    return t.astimezone().strftime("%H:%M")
