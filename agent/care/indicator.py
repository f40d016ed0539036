"""What the patient hears and presses: the buzzer and the acknowledgement button.

What the patient *sees* is the box's one status light (:mod:`agent.light`, ``[light]``): the
care service feeds it the alarm (the worst concern) and a due measurement through
:meth:`agent.care.service.CareService.light_concern`. This module keeps the rest:

* alarm: the buzzer beeps until the button is pressed (the light flashes magenta meanwhile);
* reminder due: :meth:`Indicator.chime` is the short sound at the start and at each repeat;
  the light flashes white. In the patient's quiet hours neither: the planner gives no
  reminder then and the light leaves it out (an alarm still beeps and shows).

:class:`GpioIndicator` drives them with gpiozero (``Buzzer``, ``Button``); tests use its mock
pin factory. :class:`NullIndicator` does nothing (no buzzer or button on this box).
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
    """BCM pin numbers (``[care] buzzer_pin``, ``button_pin``)."""

    buzzer: int
    button: int


class GpioIndicator:
    """gpiozero buzzer and button (``pin_factory`` for tests: ``MockFactory()``)."""

    def __init__(self, pins: GpioPins, *, pin_factory: Any = None) -> None:
        from gpiozero import Button, Buzzer

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
        """Beep for an alarm until it is acknowledged (only changes do anything)."""
        if self._loop is None:
            with contextlib.suppress(RuntimeError):
                self._loop = asyncio.get_running_loop()
        if (alarm, reminder) == self._state:
            return
        self._state = (alarm, reminder)
        if alarm:
            self.buzzer.beep(on_time=0.3, off_time=0.7)
        else:
            self.buzzer.off()

    def chime(self) -> None:
        """Two short beeps (not while the alarm beeps)."""
        if not self._state[0]:
            self.buzzer.beep(on_time=0.1, off_time=0.1, n=2)

    def close(self) -> None:
        """Release the pins."""
        for dev in (self.buzzer, self.button):
            dev.close()
