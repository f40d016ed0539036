"""What the patient sees and hears: the alarm and reminder light, the buzzer, the button.

:class:`GpioIndicator` drives them with gpiozero (a red LED blinking fast for an alarm, an
amber LED blinking slowly for a reminder, a buzzer, a push button); tests use gpiozero's mock
pin factory. The box's status light (``agent/health.py`` concerns: well, offline, device,
fault) is the provisioning work's; this module only shows care's two states and can be given
that light's LED pins when the two are merged. :class:`NullIndicator` does nothing (no GPIO).

* alarm: red blinks fast and the buzzer beeps until the button is pressed;
* reminder due: amber blinks slowly; :meth:`Indicator.chime` is the short sound at the start
  and at each repeat (the planner already left it out in quiet hours).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

_LOG = logging.getLogger(__name__)


class Indicator(Protocol):
    """The seam between the care service and the hardware."""

    def show(self, *, alarm: bool, reminder: bool) -> None:
        """Show these states (called often; only changes do anything)."""

    def chime(self) -> None:
        """A short reminder sound."""

    def on_button(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the event loop when the button is pressed."""


class NullIndicator:
    """No light, no buzzer, no button."""

    def show(self, *, alarm: bool, reminder: bool) -> None:
        """Nothing to show."""

    def chime(self) -> None:
        """Nothing to sound."""

    def on_button(self, callback: Callable[[], None]) -> None:
        """No button."""


@dataclass(frozen=True, slots=True)
class GpioPins:
    """BCM pin numbers (``[care]`` in the configuration)."""

    alarm_led: int
    reminder_led: int
    buzzer: int
    button: int


class GpioIndicator:
    """gpiozero LEDs, buzzer and button (``pin_factory`` for tests: ``MockFactory()``)."""

    def __init__(self, pins: GpioPins, *, pin_factory: Any = None) -> None:
        from gpiozero import LED, Button, Buzzer

        self.alarm_led = LED(pins.alarm_led, pin_factory=pin_factory)
        self.reminder_led = LED(pins.reminder_led, pin_factory=pin_factory)
        self.buzzer = Buzzer(pins.buzzer, pin_factory=pin_factory)
        self.button = Button(pins.button, pin_factory=pin_factory, bounce_time=None)
        self._state = (False, False)
        self._callback: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.button.when_pressed = self._pressed

    def _pressed(self) -> None:  # gpiozero's thread
        loop, cb = self._loop, self._callback
        if loop is not None and cb is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(cb)

    def on_button(self, callback: Callable[[], None]) -> None:
        """Deliver presses to ``callback`` on the running loop."""
        self._callback = callback
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()

    def show(self, *, alarm: bool, reminder: bool) -> None:
        """Blink and beep for the states that changed."""
        if self._loop is None:
            with contextlib.suppress(RuntimeError):
                self._loop = asyncio.get_running_loop()
        if (alarm, reminder) == self._state:
            return
        self._state = (alarm, reminder)
        if alarm:
            self.alarm_led.blink(on_time=0.2, off_time=0.2)
            self.buzzer.beep(on_time=0.3, off_time=0.7)
        else:
            self.alarm_led.off()
            self.buzzer.off()
        if reminder:
            self.reminder_led.blink(on_time=1.0, off_time=2.0)
        else:
            self.reminder_led.off()

    def chime(self) -> None:
        """Two short beeps (not while the alarm beeps)."""
        if not self._state[0]:
            self.buzzer.beep(on_time=0.1, off_time=0.1, n=2)

    def close(self) -> None:
        """Release the pins."""
        for dev in (self.alarm_led, self.reminder_led, self.buzzer, self.button):
            dev.close()
