"""The care service with a list as its buffer, the modem simulator and a mock GPIO."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory
from hw_mocks.modem import ModemSimulator
from hw_mocks.synthetic import PATIENT

from agent.buffer import AppendResult
from agent.care import readings as cr
from agent.care.indicator import GpioIndicator, GpioPins
from agent.care.modem import SmsModem
from agent.care.service import CareService, CareSettings, DeliveryWatch
from agent.health import Concern
from agent.model import Lane, Reading
from tests.care.helpers import bp, chunk

T0 = datetime(2026, 11, 15, 2, 0, tzinfo=UTC)
KEK = b"k" * 32


class ListSink:
    def __init__(self) -> None:
        self.readings: list[Reading] = []

    async def append(self, readings: Sequence[Reading]) -> AppendResult:
        self.readings.extend(readings)
        return AppendResult(stored=len(readings), duplicates=0)

    def flagged(self, flag: str) -> list[Reading]:
        return [r for r in self.readings if flag in r.status]


class Wall:
    def __init__(self, t: datetime) -> None:
        self.t = t.timestamp()

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


@pytest.fixture
def modem(tmp_path: Path) -> Iterator[ModemSimulator]:
    with ModemSimulator(tmp_path / "modem") as sim:
        yield sim


def service(tmp_path: Path, wall: Wall, sink: ListSink, **kw) -> CareService:
    return CareService(
        CareSettings(sms_after_s=600, night_close_after_s=1800, min_night_valid_min=30),
        sink,
        state_dir=tmp_path / "state",
        kek=lambda: KEK,
        box_id="box-0001",
        wall=wall,
        **kw,
    )


def ok(answer: dict[str, object] | None) -> bool:
    assert answer is not None
    return bool(answer["ok"])


async def configure(svc: CareService) -> None:
    assert ok(
        await svc.command(
            "set-thresholds", {"patient": PATIENT, "spo2_below": 88, "spo2_for_s": 120}
        )
    )
    assert ok(
        await svc.command(
            "set-alarm-sms",
            {"patient": PATIENT, "numbers": "+4791234567,+4799887766", "label": "Hus 4"},
        )
    )


async def test_alarm_light_button_and_one_sms_when_the_uplink_stays_down(tmp_path, modem) -> None:
    factory = MockFactory()
    pins = GpioPins(buzzer=22, button=23)
    indicator = GpioIndicator(pins, pin_factory=factory)
    wall, sink = Wall(T0), ListSink()
    svc = service(
        tmp_path, wall, sink, indicator=indicator, sms=SmsModem(modem.path, submit_timeout=10)
    )
    await svc._load()
    await configure(svc)
    await svc._process((chunk(T0, [95] * 30 + [85] * 150),))
    alarms = sink.flagged(cr.ALARM)
    assert len(alarms) == 1
    assert alarms[0].lane is Lane.ALARM
    assert "alarm:spo2-below" in alarms[0].status
    await svc._tick()
    assert indicator._state == (True, False)  # the buzzer beeping
    assert svc.light_concern() is Concern.ALARM  # the status light flashing magenta
    # ten minutes later, still not acknowledged by the service: one SMS to each number
    wall.advance(601)
    await svc._tick()
    assert [s.number for s in modem.sent] == ["+4791234567", "+4799887766"]
    assert "oksygenmetning under 88 % i 2 min" in modem.sent[0].text
    assert PATIENT not in modem.sent[0].text
    assert "Hus 4." in modem.sent[0].text
    notes = sink.flagged(cr.PATH_SMS)
    assert len(notes) == 1
    assert cr.alarm_ref(notes[0]) == alarms[0].id
    wall.advance(3600)
    await svc._tick()
    assert len(modem.sent) == 2  # never twice
    # the patient presses the button: light and buzzer stop, the service is told
    factory.pin(23).drive_low()
    await asyncio.sleep(0.1)
    await svc._tick()
    assert indicator._state == (False, False)
    assert not indicator.buzzer.is_active
    assert svc.light_concern() is None
    assert len(sink.flagged(cr.ACKNOWLEDGED)) == 1
    indicator.close()


async def test_no_sms_when_the_service_acknowledged_in_time(tmp_path, modem) -> None:
    wall, sink = Wall(T0), ListSink()
    svc = service(tmp_path, wall, sink, sms=SmsModem(modem.path))
    await svc._load()
    await configure(svc)
    await svc._process((chunk(T0, [85] * 130),))
    alarm = sink.flagged(cr.ALARM)[0]

    class Claim:
        batch_id = 7
        readings = (alarm,)
        quarantined = ()

    class Buf:
        async def claim(self, *a, **k):
            return Claim()

        async def ack(self, batch_id):
            return 1

    watch = DeliveryWatch(Buf(), svc.delivered)
    await watch.claim(10)
    await watch.ack(7)
    wall.advance(3600)
    await svc._tick()
    assert modem.sent == []
    assert (await svc.status_section())["alarms_open"] == 0


async def test_a_modem_without_network_is_retried_and_the_state_survives_a_restart(
    tmp_path, modem
) -> None:
    wall, sink = Wall(T0), ListSink()
    modem.registered = False
    svc = service(tmp_path, wall, sink, sms=SmsModem(modem.path))
    await svc._load()
    await configure(svc)
    await svc._process((chunk(T0, [85] * 130),))
    wall.advance(601)
    await svc._tick()
    assert modem.sent == []
    assert svc.last_sms_error == "no-network"
    await svc._save(force=True)
    # the agent restarts; the network comes back; the alarm goes out once
    modem.registered = True
    again = service(tmp_path, wall, sink, sms=SmsModem(modem.path))
    await again._load()
    assert again.evaluator.rules_for(PATIENT)
    wall.advance(121)
    await again._tick()
    assert len(modem.sent) == 2
    assert len(sink.flagged(cr.PATH_SMS)) == 1


async def test_a_night_is_summarised_once_it_ends(tmp_path) -> None:
    wall, sink = Wall(T0), ListSink()
    svc = service(tmp_path, wall, sink)
    await svc._load()
    start = T0 - timedelta(hours=4)
    for i in range(0, 4 * 3600, 600):
        await svc._process((chunk(start + timedelta(seconds=i), [95] * 600),))
    await svc._tick()
    assert sink.flagged(cr.SUMMARY) == []  # still going
    wall.advance(1801)
    await svc._tick()
    summaries = sink.flagged(cr.SUMMARY)
    assert len(summaries) == 1
    s = summaries[0]
    assert s.lane is Lane.SPOT
    values = {o.mdc: o.value for o in s.observations}
    from agent import codes

    assert values[codes.OXIM_VALID.mdc] == 240
    assert values[codes.OXIM_SPO2_MEAN.mdc] == 95
    assert values[codes.OXIM_ODI3.mdc] == 0
    assert s.device_time == start
    wall.advance(3600)
    await svc._tick()
    assert len(sink.flagged(cr.SUMMARY)) == 1  # nothing new: no second summary


async def test_a_reminder_fires_stops_on_the_measurement_and_misses_are_reported(tmp_path) -> None:
    local = datetime(2026, 11, 16, 6, 59).astimezone()
    wall, sink = Wall(local), ListSink()
    svc = service(tmp_path, wall, sink)
    await svc._load()
    assert ok(await svc.command("set-schedule", {"patient": PATIENT, "bp": "07:00-08:00"}))
    await svc._tick()
    wall.advance(120)  # 07:01
    await svc._tick()
    assert svc.counters["reminders"] == 1
    assert len(svc.planner.due()) == 1
    assert svc.light_concern() is Concern.REMINDER
    when = datetime.fromtimestamp(wall(), UTC)
    await svc._process((bp(when, 128),))
    await svc._tick()
    assert svc.planner.due() == []
    assert svc.light_concern() is None
    # the next morning nothing comes: reported missed once, at 08:00
    wall.advance(24 * 3600)
    await svc._tick()
    assert len(svc.planner.due()) == 1
    wall.advance(3600)
    await svc._tick()
    missed = [r for r in sink.readings if "missed:bp" in r.status]
    assert len(missed) == 1
    assert missed[0].device.kind.value == "bp-cuff"  # the patient's cuff, seen before
    assert missed[0].lane is Lane.SPOT


async def test_in_quiet_hours_a_reminder_is_not_on_the_light_but_an_alarm_is(tmp_path) -> None:
    """A patient at night: a due measurement neither lights nor sounds; an alarm does both."""
    factory = MockFactory()
    indicator = GpioIndicator(GpioPins(buzzer=22, button=23), pin_factory=factory)
    local = datetime(2026, 11, 16, 1, 59).astimezone()
    wall, sink = Wall(local), ListSink()
    svc = service(tmp_path, wall, sink, indicator=indicator)
    await svc._load()
    await configure(svc)
    schedule = {"patient": PATIENT, "oximetry": "02:00-04:00", "quiet": "22:00-07:00"}
    assert ok(await svc.command("set-schedule", schedule))
    await svc._tick()
    wall.advance(120)  # 02:01: due, in quiet hours
    await svc._tick()
    assert len(svc.planner.due()) == 1  # kept
    assert svc.counters["reminders"] == 0
    assert svc.light_concern() is None  # no white flash into the bedroom
    assert not indicator.buzzer.is_active  # and no chime
    await svc._process((chunk(datetime.fromtimestamp(wall(), UTC), [95] * 30 + [85] * 150),))
    await svc._tick()
    assert svc.light_concern() is Concern.ALARM  # magenta, at any hour
    assert indicator._state == (True, False)  # the buzzer beeping
    indicator.close()


async def test_unknown_and_bad_commands(tmp_path) -> None:
    svc = service(tmp_path, Wall(T0), ListSink())
    await svc._load()
    assert await svc.command("rotate-keys", {}) is None
    assert await svc.command("set-schedule", {"idle_poll_s": 5}) is None  # the uplink's
    bad = await svc.command("set-alarm-sms", {"patient": PATIENT, "numbers": "12345"})
    assert bad is not None
    assert "E.164" in bad["error"]
    assert PATIENT not in str(bad)


async def test_run_loop_raises_from_observed_readings(tmp_path) -> None:
    sink = ListSink()
    svc = CareService(CareSettings(tick_s=0.05), sink, state_dir=tmp_path, kek=lambda: KEK)
    task = asyncio.create_task(svc.run())
    await svc.ready.wait()
    await svc.command("set-thresholds", {"patient": PATIENT, "sys_above": 180})
    svc.observe([bp(datetime.now(UTC), 190)])
    for _ in range(200):
        if sink.flagged(cr.ALARM):
            break
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(sink.flagged(cr.ALARM)) == 1
    assert (tmp_path / "care" / "state.bin").read_bytes()[:8] == b"DHOCARE1"
    assert PATIENT.encode() not in (tmp_path / "care" / "state.bin").read_bytes()


async def test_the_cpap_cards_sad_oximetry_gets_a_summary_too(tmp_path) -> None:
    """SAD chunks come in the bulk lane the morning after, timed by the machine's naive clock."""
    from agent.model import DeviceIdentity, DeviceKind, Transport

    cpap = DeviceIdentity(DeviceKind.CPAP, "ResMed", "AirSense 10", "23181234567", Transport.FILE)
    wall, sink = Wall(T0 + timedelta(hours=8)), ListSink()
    svc = service(tmp_path, wall, sink)
    await svc._load()
    start = datetime(2026, 11, 14, 23, 0)  # naive: the machine's local time
    hour = [95] * 3600
    for h in range(5):
        at = start + timedelta(hours=h)
        await svc._process((chunk(T0, hour, device=cpap, lane=Lane.BULK, device_time=at),))
    wall.advance(1801)
    await svc._tick()
    (summary,) = sink.flagged(cr.SUMMARY)
    assert summary.device == cpap
    assert summary.device_time is not None
    assert summary.device_time.replace(tzinfo=None) == start
    from agent import codes

    values = {o.mdc: o.value for o in summary.observations}
    assert values[codes.OXIM_RECORDING.mdc] == 300
    assert sink.flagged(cr.ALARM) == []  # old data raises no alarm
