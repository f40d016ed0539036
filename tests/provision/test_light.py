"""The status light: every concern has its own rhythm (told apart without colour), the light
shows the worst concern of the report, and it runs on gpiozero's mock pins."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from agent.health import Concern
from agent.light import PATTERNS, GpioLed, StatusLight


def test_every_concern_has_a_pattern_of_its_own_rhythm() -> None:
    assert set(PATTERNS) == set(Concern)
    rhythms = [p.steps for p in PATTERNS.values()]
    assert len(set(rhythms)) == len(rhythms), "two states blink alike"
    # told apart by rhythm alone: steady, 1 s on/off, two flashes and a pause, fast
    assert PATTERNS[Concern.WELL].steps[0][1] == 0
    assert PATTERNS[Concern.OFFLINE].steps == ((1.0, 1.0),)
    assert len(PATTERNS[Concern.DEVICE].steps) == 2
    assert max(on for on, _ in PATTERNS[Concern.FAULT].steps) <= 0.1


class Recorder:
    """The light's clock: records (seconds, LED colour) instead of sleeping."""

    def __init__(self, led: GpioLed, stop_after: int) -> None:
        self.led = led
        self.steps: list[tuple[float, tuple[float, ...]]] = []
        self.stop_after = stop_after

    async def __call__(self, seconds: float) -> None:
        value = self.led.colour
        self.steps.append((seconds, tuple(round(v, 2) for v in value)))
        if len(self.steps) >= self.stop_after:
            raise asyncio.CancelledError


def _report(path: Path, **sections: Any) -> None:
    path.write_text(json.dumps({"written_at": time.time(), "pid": 1, **sections}))


def _run(light: StatusLight) -> None:
    asyncio.run(light.run())


def _play(status: Path, steps: int) -> list[tuple[float, tuple[float, ...]]]:
    factory = MockFactory(pin_class=MockPWMPin)
    led = GpioLed((17, 27, 22), factory=factory)
    rec = Recorder(led, steps)
    light = StatusLight(led, status, sleep=rec)
    with pytest.raises(asyncio.CancelledError):
        _run(light)
    assert led.colour == (0.0, 0.0, 0.0)  # dark when the service stops
    led.close()
    return rec.steps


def test_all_well_is_steady_green(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    _report(status, uplink={"link": "connected"}, buffer={"alarms": []})
    steps = _play(status, 3)
    assert all(colour == (0.0, 1.0, 0.0) for _, colour in steps)


def test_offline_blinks_slowly_blue(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    _report(status, uplink={"link": "backing-off", "last_error": "BrokerUnreachableError: x"})
    steps = _play(status, 4)
    assert steps == [(1.0, (0.0, 0.3, 1.0)), (1.0, (0, 0, 0))] * 2


def test_a_device_needing_attention_double_blinks_amber(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    device = {"device": "bp-cuff-1", "family": "and-bpm", "state": "re-pair-needed"}
    _report(status, uplink={"link": "connected"}, ble={"devices": [device]})
    steps = _play(status, 4)
    assert [s for s, _ in steps] == [0.2, 0.3, 0.2, 1.3]
    assert steps[0][1] == (1.0, 0.5, 0.0)
    assert steps[1][1] == (0, 0, 0)


def test_a_stopped_agent_is_a_fast_red_blink(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    status.write_text(json.dumps({"written_at": time.time() - 3600, "pid": 1}))
    steps = _play(status, 6)
    assert [s for s, _ in steps] == [0.1] * 6
    assert steps[0][1] == (1.0, 0.0, 0.0)


def test_extra_conditions_join_the_report(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    _report(status, uplink={"link": "connected"})
    factory = MockFactory(pin_class=MockPWMPin)
    led = GpioLed((5, 6, 13), factory=factory)
    light = StatusLight(led, status, conditions=[lambda: Concern.DEVICE])
    assert light.judge() is Concern.DEVICE
    led.close()


def test_a_single_colour_led_blinks_the_same_rhythms(tmp_path: Path) -> None:
    factory = MockFactory()
    led = GpioLed((4,), factory=factory)
    led.show((1.0, 0.0, 0.0))
    assert factory.pin(4).state
    led.off()
    assert not factory.pin(4).state
    led.close()
    with pytest.raises(ValueError, match="1 pin"):
        GpioLed((1, 2), factory=factory)
