"""Scripted nights of 1 Hz oximetry whose summaries are known by construction.

A :class:`NightScript` is built step by step (steady SpO2, desaturations, sensor-off,
artefacts, gaps with no samples at all) and gives the samples, a ``time,spo2,pulse`` CSV file
(the input of ``dho-agent oximetry-summary``) or the streams the simulated oximeters send.
Tests and the demo use it; every step adds exactly the seconds it says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

Sample = tuple[datetime, int | None, int | None]


@dataclass
class NightScript:
    """A night, one second per sample, from ``start``."""

    start: datetime
    baseline: int = 96
    pulse: int = 62
    samples: list[Sample] = field(default_factory=list)
    _t: datetime | None = None

    def _now(self) -> datetime:
        return self.start if self._t is None else self._t

    def _emit(self, spo2: int | None, pulse: int | None, seconds: int) -> NightScript:
        t = self._now()
        for i in range(seconds):
            self.samples.append((t + timedelta(seconds=i), spo2, pulse))
        self._t = t + timedelta(seconds=seconds)
        return self

    def steady(
        self, seconds: int, spo2: int | None = None, pulse: int | None = None
    ) -> NightScript:
        """``seconds`` of steady SpO2 (the baseline unless given) and pulse."""
        return self._emit(
            self.baseline if spo2 is None else spo2, self.pulse if pulse is None else pulse, seconds
        )

    def dip(self, drop: int, seconds: int, *, recover: int = 150) -> NightScript:
        """A desaturation: ``drop`` points below the baseline for ``seconds``, then
        ``recover`` seconds at the baseline (so the next dip has a clean 120 s baseline)."""
        self._emit(self.baseline - drop, self.pulse + 8, seconds)
        return self.steady(recover)

    def sensor_off(self, seconds: int) -> NightScript:
        """Samples present but without values (finger out, device flagged invalid)."""
        return self._emit(None, None, seconds)

    def artefact(self, seconds: int, spo2: int = 127) -> NightScript:
        """Samples with implausible SpO2 (e.g. a device's 127 'no data' sent as a value)."""
        return self._emit(spo2, self.pulse, seconds)

    def gap(self, seconds: int) -> NightScript:
        """No samples at all for ``seconds`` (a reconnect, the device out of range)."""
        self._t = self._now() + timedelta(seconds=seconds)
        return self

    def csv(self) -> str:
        """The night as a ``time,spo2,pulse`` file (empty cells for missing values)."""
        lines = ["time,spo2,pulse"]
        for t, spo2, pulse in self.samples:
            lines.append(
                f"{t.isoformat()},{'' if spo2 is None else spo2},{'' if pulse is None else pulse}"
            )
        return "\n".join(lines) + "\n"

    def pairs(self) -> list[tuple[int | None, int | None]]:
        """(SpO2, pulse) in order, without times (what a simulated oximeter streams)."""
        return [(s, p) for _, s, p in self.samples]
