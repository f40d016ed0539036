"""One light for the box: the care alarm and a due measurement show on the status light
(``agent/light.py``, ``[light]``) as concerns of their own, the alarm the worst; the buzzer and
the button stay with care. On gpiozero's mock pins, the light's clock driven by the test."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPWMPin
from hw_mocks.synthetic import PATIENT

from agent.buffer import AsyncBuffer
from agent.care.indicator import GpioIndicator
from agent.care.service import CareService
from agent.config import AgentConfig, BufferSettings, CareTable, LightSettings
from agent.daemon import services_from_config
from agent.errors import ConfigError
from agent.health import Concern
from agent.light import MAGENTA, PATTERNS, WHITE, GpioLed, StatusLight
from tests.care.helpers import chunk


class Recorder:
    """The light's clock: records (seconds, colour) and stops after ``n`` steps."""

    def __init__(self, led: GpioLed, n: int) -> None:
        self.led, self.n = led, n
        self.steps: list[tuple[float, tuple[float, ...]]] = []

    async def __call__(self, seconds: float) -> None:
        self.steps.append((seconds, tuple(round(v, 2) for v in self.led.colour)))
        if len(self.steps) >= self.n:
            raise asyncio.CancelledError


def report(path: Path, **sections: Any) -> Path:
    path.write_text(json.dumps({"written_at": time.time(), "pid": 1, **sections}))
    return path


OFFLINE = {"link": "backing-off", "last_error": "BrokerUnreachableError: x"}
DEVICE = {"devices": [{"device": "bp-1", "family": "and-bpm", "state": "re-pair-needed"}]}


def play(status: Path, care: Concern | None, n: int) -> list[tuple[float, tuple[float, ...]]]:
    led = GpioLed((17, 27, 22), factory=MockFactory(pin_class=MockPWMPin))
    rec = Recorder(led, n)
    light = StatusLight(led, status, conditions=[lambda: care], sleep=rec)
    try:
        with pytest.raises(asyncio.CancelledError):
            asyncio.run(light.run())
    finally:
        led.close()
    return rec.steps


def test_the_alarm_is_the_worst_concern(tmp_path: Path) -> None:
    assert max(Concern, key=lambda c: c.rank) is Concern.ALARM
    status = report(tmp_path / "status.json", uplink=OFFLINE, ble=DEVICE)
    steps = play(status, Concern.ALARM, 6)
    assert steps == [
        (0.15, MAGENTA),
        (0.15, (0, 0, 0)),
        (0.15, MAGENTA),
        (0.15, (0, 0, 0)),
        (0.15, MAGENTA),
        (0.75, (0, 0, 0)),
    ]


def test_a_due_measurement_flashes_white_over_offline_but_not_over_a_device(
    tmp_path: Path,
) -> None:
    offline = report(tmp_path / "offline.json", uplink=OFFLINE)
    assert play(offline, Concern.REMINDER, 4) == [(0.3, WHITE), (2.7, (0, 0, 0))] * 2
    device = report(tmp_path / "device.json", uplink={"link": "connected"}, ble=DEVICE)
    assert [s for s, _ in play(device, Concern.REMINDER, 4)] == [0.2, 0.3, 0.2, 1.3]
    assert PATTERNS[Concern.REMINDER].steps not in [
        p.steps for c, p in PATTERNS.items() if c is not Concern.REMINDER
    ]


def test_nothing_from_care_leaves_the_report_s_concern(tmp_path: Path) -> None:
    well = report(tmp_path / "status.json", uplink={"link": "connected"})
    assert play(well, None, 2) == [(2.0, (0.0, 1.0, 0.0))] * 2


def test_the_care_pins_are_the_buzzer_and_the_button_only(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("[care]\nbuzzer_pin = 24\n")
    with pytest.raises(ConfigError, match="buzzer_pin and button_pin: set both or neither"):
        AgentConfig.load(tmp_path / "a.toml")
    (tmp_path / "b.toml").write_text("[care]\nalarm_led_pin = 17\n")
    with pytest.raises(ConfigError, match=r"alarm_led_pin: unknown setting .*\[light\] pins"):
        AgentConfig.load(tmp_path / "b.toml")


@pytest.fixture
def mock_gpio() -> Iterator[MockFactory]:
    """gpiozero's default pin factory replaced by mock PWM pins (what the daemon opens)."""
    before = Device.pin_factory
    factory = MockFactory(pin_class=MockPWMPin)
    Device.pin_factory = factory
    try:
        yield factory
    finally:
        factory.reset()
        Device.pin_factory = before


async def test_the_agent_builds_one_light_fed_by_care(tmp_path: Path, mock_gpio) -> None:
    """``services_from_config`` with ``[light]`` and ``[care]`` pins: one light on the light's
    pins, the buzzer and button on care's; an alarm lights it at once and the button puts it
    out (no pin is taken twice: gpiozero would refuse)."""
    cfg = AgentConfig(
        state_dir=tmp_path / "state",
        buffer=BufferSettings(reserve_mb=0),
        care=CareTable(buzzer_pin=24, button_pin=23),
        light=LightSettings(pins=(17, 27, 22)),
    )
    cfg.state_dir.mkdir()
    report(cfg.state_dir / "status.json", uplink={"link": "connected"})
    buf = await AsyncBuffer.open(cfg.buffer_path, cfg.key_source(), config=cfg.buffer_config())
    try:
        services = services_from_config(cfg, buf)
        (care,) = [s for s in services if isinstance(s, CareService)]
        (light,) = [s for s in services if isinstance(s, StatusLight)]
        assert light.conditions == [care.light_concern]
        assert isinstance(care.indicator, GpioIndicator)
        await care._load()
        answer = await care.command(
            "set-thresholds", {"patient": PATIENT, "spo2_below": 88, "spo2_for_s": 60}
        )
        assert answer is not None
        assert answer.get("ok")
        assert light.judge() is Concern.WELL
        start = datetime.now(UTC) - timedelta(seconds=200)
        await care._process((chunk(start, [95] * 30 + [84] * 90),))
        assert light.judge() is Concern.ALARM
        assert care.indicator.buzzer.is_active or care.indicator._state == (True, False)
        mock_gpio.pin(23).drive_low()  # the patient presses the button
        await asyncio.sleep(0.1)
        await care._tick()
        assert light.judge() is Concern.WELL
        assert care.counters["alarms"] == 1
        assert isinstance(light.led, GpioLed)
        light.led.close()
        care.indicator.close()
    finally:
        await buf.close()
