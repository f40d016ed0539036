"""The status light: what the patient sees of the box, told apart by blinking, not only colour.

One LED on the box's front (an RGB LED on three GPIO pins, or a single-colour LED on one)
shows the worst :class:`~agent.health.Concern` of the agent's latest status report:

=========================  ===========  =====================================================
concern                    colour       pattern (what a colour-blind patient tells apart)
=========================  ===========  =====================================================
all well                   green        steady on
offline, buffering safely  blue         slow blink: 1 s on, 1 s off
time to measure            white        a short flash every 3 s
a device needs attention   amber        double blink: two short flashes, then a pause
the box needs attention    red          fast blink: 5 times a second
an alarm (docs/care.md)    magenta      three quick flashes, then a pause
(box off or agent down)    -            off
=========================  ===========  =====================================================

The patterns differ in rhythm, so the states are told apart without any colour vision; the
colours add to that for those who have it. The printed card for patients is
``docs/status-light.md`` (Bokmål and Nynorsk).

Extending it: add a :class:`~agent.health.Concern` and its :class:`Pattern` in
:data:`PATTERNS`; :class:`StatusLight` takes extra condition callbacks whose concerns join the
report's. The care service (``docs/care.md``) is one: its unacknowledged alarm
(:attr:`~agent.health.Concern.ALARM`, the worst concern) and a due measurement
(:attr:`~agent.health.Concern.REMINDER`) show on this one light at the next cycle, without
waiting for the next report; its buzzer and button stay with it (``agent/care/indicator.py``).

gpiozero drives the pins (``LED`` / ``RGBLED``); tests use its ``MockFactory`` and drive the
light's clock, so nothing here waits on real time in a test.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from agent.health import Concern, assess
from agent.status import read_status

_LOGGER = logging.getLogger(__name__)

Colour = tuple[float, float, float]
GREEN: Final[Colour] = (0.0, 1.0, 0.0)
BLUE: Final[Colour] = (0.0, 0.3, 1.0)
AMBER: Final[Colour] = (1.0, 0.5, 0.0)
RED: Final[Colour] = (1.0, 0.0, 0.0)
MAGENTA: Final[Colour] = (1.0, 0.0, 1.0)
WHITE: Final[Colour] = (1.0, 1.0, 1.0)


@dataclass(frozen=True, slots=True)
class Pattern:
    """One state of the light: a colour and a rhythm.

    Attributes:
        steps: (seconds on, seconds off) pairs, played in order and repeated; an ``off`` of 0
            with a single step is steady on.
    """

    name: str
    colour: Colour
    steps: tuple[tuple[float, float], ...]

    @property
    def period(self) -> float:
        """Seconds of one cycle."""
        return sum(on + off for on, off in self.steps)


PATTERNS: Final[dict[Concern, Pattern]] = {
    Concern.WELL: Pattern("steady", GREEN, ((2.0, 0.0),)),
    Concern.OFFLINE: Pattern("slow-blink", BLUE, ((1.0, 1.0),)),
    Concern.REMINDER: Pattern("short-flash", WHITE, ((0.3, 2.7),)),
    Concern.DEVICE: Pattern("double-blink", AMBER, ((0.2, 0.3), (0.2, 1.3))),
    Concern.FAULT: Pattern("fast-blink", RED, ((0.1, 0.1),) * 10),
    Concern.ALARM: Pattern("triple-flash", MAGENTA, ((0.15, 0.15), (0.15, 0.15), (0.15, 0.75))),
}
"""What each concern looks like (every concern has one; the test checks they all differ)."""


class Led(Protocol):
    """What the light needs of an LED: on with a colour, off (gpiozero adapters below)."""

    def show(self, colour: Colour) -> None: ...
    def off(self) -> None: ...
    def close(self) -> None: ...


class GpioLed:
    """An RGB LED on three pins, or a single-colour LED on one (gpiozero)."""

    def __init__(
        self, pins: Sequence[int], *, active_high: bool = True, factory: Any = None
    ) -> None:
        from gpiozero import LED, RGBLED

        if len(pins) == 3:
            self._rgb: Any = RGBLED(*pins, active_high=active_high, pin_factory=factory)
            self._mono: Any = None
        elif len(pins) == 1:
            self._rgb = None
            self._mono = LED(pins[0], active_high=active_high, pin_factory=factory)
        else:
            raise ValueError("the status light takes 1 pin (one LED) or 3 pins (red, green, blue)")

    def show(self, colour: Colour) -> None:
        """Light up (a single-colour LED just turns on)."""
        if self._rgb is not None:
            self._rgb.color = colour
        else:
            self._mono.on()

    def off(self) -> None:
        """Dark."""
        if self._rgb is not None:
            self._rgb.off()
        else:
            self._mono.off()

    @property
    def colour(self) -> Colour:
        """What it shows now ((0, 0, 0) when dark; a single LED shows white)."""
        if self._rgb is not None:
            r, g, b = self._rgb.value
            return (float(r), float(g), float(b))
        return (1.0, 1.0, 1.0) if self._mono.is_lit else (0.0, 0.0, 0.0)

    def close(self) -> None:
        """Release the pins."""
        for dev in (self._rgb, self._mono):
            if dev is not None:
                dev.close()


Sleep = Callable[[float], Awaitable[None]]
Condition = Callable[[], Concern | None]


class StatusLight:
    """A supervised service: plays the pattern of the box's worst concern, forever.

    Args:
        led: the LED.
        status_file: the agent's status report (re-read once per cycle).
        conditions: more sources of concerns (the care service's alarm and reminder,
            :meth:`agent.care.service.CareService.light_concern`); called from a worker
            thread, so each must only read a value.
        sleep: the clock (tests pass one that records instead of waiting).
    """

    name = "status-light"

    def __init__(
        self,
        led: Led,
        status_file: Path,
        *,
        conditions: Sequence[Condition] = (),
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.led = led
        self.status_file = status_file
        self.conditions = list(conditions)
        self.sleep = sleep
        self.concern = Concern.WELL
        self.cycles = 0

    def judge(self) -> Concern:
        """The worst concern now (the report's, and the extra conditions')."""
        worst = assess(read_status(self.status_file)).concern
        for condition in self.conditions:
            extra = condition()
            if extra is not None and extra.rank > worst.rank:
                worst = extra
        return worst

    async def play(self, pattern: Pattern) -> None:
        """One cycle of a pattern."""
        for on, off in pattern.steps:
            self.led.show(pattern.colour)
            await self.sleep(on)
            if off > 0:
                self.led.off()
                await self.sleep(off)

    async def run(self) -> None:
        """Judge, play one cycle, again; the LED goes dark when the service stops."""
        try:
            while True:
                concern = await asyncio.to_thread(self.judge)
                if concern is not self.concern:
                    _LOGGER.info("status light: %s", concern.meaning)
                    self.concern = concern
                await self.play(PATTERNS[concern])
                self.cycles += 1
        finally:
            self.led.off()

    async def status_section(self) -> dict[str, Any]:
        """What the light shows (for the technician's status)."""
        return {"state": self.concern.name.lower(), "pattern": PATTERNS[self.concern].name}


def card(language: str = "nb") -> str:
    """The printed card for the patient (Markdown), every word from the message catalogue
    (``agent/care/i18n.py`` ``CARD``, ``CARD_ROWS``): one row per concern, worst last, and the
    light off. ``dho-agent card --language nn`` prints it; ``docs/status-light.md`` holds the
    Bokmål and Nynorsk cards as printed (a test keeps them in step)."""
    from agent.care import i18n

    def t(message: str) -> str:
        return i18n._(message, language)

    head = i18n.CARD
    lines = [
        f"## {t(head['title'])}",
        "",
        t(head["intro"]),
        "",
        f"| {t(head['light'])} | {t(head['means'])} | {t(head['do'])} |",
        "| --- | --- | --- |",
    ]
    for key in [c.name.lower() for c in sorted(Concern, key=lambda c: c.rank)] + ["off"]:
        rhythm, colour, means, do = i18n.CARD_ROWS[key]
        shown = f"**{t(rhythm)}**" + (f" ({t(colour)})" if colour is not None else "")
        lines.append(f"| {shown} | {t(means)} | {t(do)} |")
    lines += ["", f"{t(head['phone'])} ______________________"]
    return "\n".join(lines) + "\n"
