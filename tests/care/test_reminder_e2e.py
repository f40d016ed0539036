"""Issue 11's reminder test, end to end: the service sets a schedule with a signed
``set-schedule`` through the real broker; the reminder fires (light and chime, neither in
quiet hours), stops when the measurement arrives, and a window with nothing is reported
missed: the missed-measurement reading reaches the real receiver through the real uplink
(Mosquitto with TLS), once, and is exported as FHIR.

The care service runs its own loop (``run``, ticks of 50 ms); only its wall clock is the
test's, stepped through two mornings; the uplink, the broker and the receiver run in real time.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fhir.resources.R4B.bundle import Bundle
from gpiozero.pins.mock import MockFactory, MockPWMPin
from hw_mocks.synthetic import PATIENT

import dho_protocol as protocol
from agent import codes
from agent.care.indicator import GpioIndicator, GpioPins
from agent.care.service import CareService, CareSettings, CareSink, DeliveryWatch
from agent.health import Concern
from agent.light import GpioLed, StatusLight
from receiver import fhir
from receiver.localstack import enrol
from receiver.store import SqliteStore
from tests.care.helpers import bp, cancel_all
from tests.uplink.conftest import RawClient, open_agent, wait_until


class Wall:
    """The care service's wall clock, stepped by the test."""

    def __init__(self, t: datetime) -> None:
        self.t = t.timestamp()

    def __call__(self) -> float:
        return self.t

    def set(self, t: datetime) -> None:
        self.t = t.timestamp()


class Counting(GpioIndicator):
    """The real gpiozero buzzer and button (mock pins), counting ticks and chimes."""

    def __init__(self, factory: MockFactory) -> None:
        super().__init__(GpioPins(buzzer=24, button=23), pin_factory=factory)
        self.shows = 0
        self.chimes = 0

    def show(self, *, alarm: bool, reminder: bool) -> None:
        self.shows += 1
        super().show(alarm=alarm, reminder=reminder)

    def chime(self) -> None:
        self.chimes += 1
        super().chime()


def stored(db: Path) -> list[Any]:
    s = SqliteStore(db)
    try:
        return [r.reading for r in s.readings("box-0001")]
    finally:
        s.close()


def missed(db: Path) -> list[Any]:
    return [r for r in stored(db) if "missed:bp" in r.status]


async def test_a_reminder_fires_stops_on_the_measurement_and_a_miss_reaches_the_service(
    broker, receivers, pki, tmp_path: Path
) -> None:
    key = Ed25519PrivateKey.generate()
    db = tmp_path / "receiver.db"
    enrol(db, "box-0001", key, [PATIENT])
    receivers(1, db=db)
    uplink, buf = await open_agent(broker, tmp_path / "agent", "box-0001", key)
    day1 = datetime(2026, 11, 16, 6, 55).astimezone()  # the box's local time zone
    wall = Wall(day1)
    indicator = Counting(MockFactory())
    care = CareService(
        CareSettings(tick_s=0.05),
        buf,
        state_dir=tmp_path / "agent",
        kek=lambda: b"k" * 32,
        box_id="box-0001",
        wall=wall,
        indicator=indicator,
    )
    uplink.buffer = DeliveryWatch(buf, care.delivered)
    uplink.commands = care.command
    status = tmp_path / "status.json"
    led = GpioLed((17, 27, 22), factory=MockFactory(pin_class=MockPWMPin))
    light = StatusLight(led, status, conditions=[care.light_concern])

    def shown() -> Concern:
        """What the one status light shows now, with a fresh report of a connected box."""
        report = {"written_at": time.time(), "uplink": {"link": "connected"}}
        status.write_text(json.dumps(report))
        return light.judge()

    service = RawClient(broker, "dho-service", subscribe=(protocol.report_topic("box-0001"),))
    tasks = [asyncio.create_task(care.run()), asyncio.create_task(uplink.run())]

    async def at(t: datetime) -> None:
        """Step the wall clock to ``t`` and wait for two ticks of the care service after it."""
        wall.set(t)
        seen = indicator.shows
        await wait_until(lambda: indicator.shows >= seen + 2, 30, f"care ticks at {t:%H:%M}")

    try:
        await care.ready.wait()
        await wait_until(lambda: uplink.connected, 30, "connected")
        await asyncio.sleep(0.3)  # subscriptions in place
        now = int(datetime.now(UTC).timestamp() * 1000)
        args: dict[str, str | int | bool | None] = {
            "patient": PATIENT,
            "bp": "07:00-08:00",
            "quiet": "21:00-07:30",
            "remind_every_min": 20,
        }
        cmd = protocol.Command("box-0001", uuid.uuid4(), 1, now, now + 60_000, "set-schedule", args)
        service.publish(
            protocol.command_topic("box-0001"), protocol.seal_command(cmd, pki.service_key)
        )
        report = json.loads((await asyncio.to_thread(service.get, timeout=15))[1])
        assert report["ok"] is True
        assert report["windows"] == 1

        # Day 1. 07:01: due; quiet hours until 07:30, so no light and no sound (kept).
        await at(day1.replace(hour=7, minute=1))
        assert care.counters["reminders"] == 0
        assert indicator.chimes == 0
        assert care.light_concern() is None
        assert shown() is Concern.WELL
        # 07:31: quiet hours are over: reminded at once, light and chime.
        await at(day1.replace(hour=7, minute=31))
        assert care.counters["reminders"] == 1
        assert indicator.chimes == 1
        assert shown() is Concern.REMINDER
        # 07:35: the blood pressure arrives (through the sink the drivers use): reminding stops.
        await at(day1.replace(hour=7, minute=35))
        measured = bp(day1.replace(hour=7, minute=34).astimezone(UTC), 128)
        await CareSink(buf, care).append([measured])
        await wait_until(lambda: care.light_concern() is None, 30, "the reminder stopped")
        await at(day1.replace(hour=7, minute=59))
        await at(day1.replace(hour=8, minute=5))
        assert care.counters["reminders"] == 1
        assert indicator.chimes == 1
        assert care.counters["missed"] == 0
        assert shown() is Concern.WELL

        # Day 2: nothing comes. Held at 07:01 (quiet), reminded at 07:31 and 07:51; missed at
        # 08:00.
        day2 = day1 + timedelta(days=1)
        await at(day2.replace(hour=7, minute=1))
        await at(day2.replace(hour=7, minute=31))
        await at(day2.replace(hour=7, minute=51))
        assert care.counters["reminders"] == 3
        assert indicator.chimes == 3
        await at(day2.replace(hour=8, minute=1))
        assert care.counters["missed"] == 1
        assert care.light_concern() is None
        await wait_until(lambda: len(missed(db)) >= 1, 60, "the missed measurement at the service")
        await at(day2.replace(hour=9, minute=0))
        await at(day2.replace(hour=12, minute=0))
        for _ in range(600):  # everything acknowledged by the receiver
            stats = await buf.stats()
            if not any(stats.pending_by_lane.values()) and not stats.claimed:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the buffer did not drain")
        await asyncio.sleep(1.0)  # anything sent twice would arrive by now
        (miss,) = missed(db)
        values = {o.mdc: o.value for o in miss.observations}
        assert values[codes.MEASUREMENT_MISSED.mdc] == 60  # the window, minutes
        assert values[codes.REMINDERS_GIVEN.mdc] == 2  # 07:31 and 07:51, none in quiet hours
        assert miss.device_time == day2.replace(hour=7, minute=0)
        assert miss.device.kind.value == "bp-cuff"  # the patient's cuff, seen on day 1
        everything = stored(db)
        assert [r.id for r in everything].count(measured.id) == 1
        assert len(everything) == 2  # the measurement and the miss, once each
        # what a clinician's system gets: the miss as a FHIR observation (validated)
        store = SqliteStore(db)
        try:
            text = fhir.dumps(fhir.bundle(list(store.readings("box-0001"))))
        finally:
            store.close()
        Bundle.model_validate_json(text)
        (obs,) = [
            e["resource"]
            for e in json.loads(text)["entry"]
            if e["resource"]["resourceType"] == "Observation"
            and e["resource"]["code"]["coding"][0]["code"] == str(codes.MEASUREMENT_MISSED.mdc)
        ]
        assert obs["valueQuantity"]["value"] == 60
        assert any("missed:bp" in n["text"] for n in obs["note"])
    finally:
        await cancel_all(tasks)
        await buf.close()
        service.close()
        indicator.close()
        led.close()
