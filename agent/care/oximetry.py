"""The overnight oximetry summary: pure, incremental, persistable.

A night of continuous SpO2 and pulse (1 Hz from a BLE or serial oximeter, or the CPAP card's
SAD file) is summarised into what a clinician reads first: recording and valid time, mean and
minimum SpO2, time and percentage below 90 % (T90) and below 88 % (T88), the oxygen
desaturation indices ODI3 and ODI4, and mean/min/max pulse.

Samples
    Each sample covers ``duration_ms`` from its time (1 s at 1 Hz). A sample is

    * **valid** when its SpO2 is within :attr:`Limits.spo2_min` .. :attr:`Limits.spo2_max`
      (50 .. 100 %: pulse oximeters are specified for 70 .. 100 %, and values below 50 % are
      taken as artefact, as are values above 100 %);
    * an **artefact** when it has an SpO2 value outside those limits;
    * **sensor-off** when it is present but has no SpO2 (the device flagged it invalid, the
      finger was out, the CSV cell is empty).

    Time with no sample at all (a reconnect, a pause) is **absent**. Valid time counts valid
    samples only; recording time runs from the first sample to the end of the last. Pulse is
    judged on its own (:attr:`Limits.pulse_min` .. :attr:`Limits.pulse_max`, 25 .. 250 /min).
    A sample that starts before the previous one ended (a chunk sent twice, an overlap
    between two sources) is ignored and counted in ``overlap_samples``.

T90 and T88
    Valid time with SpO2 strictly below 90 % and 88 %, and that time as a percentage of valid
    time (so T90 never exceeds valid time).

Desaturation rule (ODI)
    A desaturation is a fall of SpO2 to at least ``drop`` percentage points below the
    baseline, lasting at least 10 s, where the baseline is the mean valid SpO2 of the
    preceding 120 s. ``drop`` is 3 for ODI3 and 4 for ODI4. Sources: the AASM Manual for the
    Scoring of Sleep and Associated Events (hypopnoea rules 1A, >= 3 % desaturation, and 1B,
    >= 4 %; events last >= 10 s), and, for the baseline, Borsini et al., "Contribution of
    pulse oximetry in relation to respiratory flow events in a home-based approach aimed at
    diagnosing obstructive sleep apnea", Sleep Sci 2021;14(1):77-81,
    doi:10.5935/1984-0063.20200042: "a decrease in the mean oxygen saturation of >= 3 % (over
    the last 120 seconds) that lasts for at least 10 seconds". Details that rule leaves open
    and this code fixes (no scoring standard fixes them; Sleep Med 2022;100:479-486 shows how
    much they matter):

    * the baseline is frozen when an event starts, and needs at least 30 s of valid samples in
      its 120 s window (none at the very start of a recording, or just after a long gap);
    * an event continues while SpO2 stays at or below ``baseline - drop`` and ends at the
      first sample above it, at a non-valid sample or at a gap; it counts if its qualifying
      time reached 10 s;
    * a new event can start on the next sample after one ended.

    ODI = desaturations per hour of valid time.

Everything is exact: SpO2 and pulse are kept in tenths (devices report whole percent, or
tenths at most), times in integer milliseconds, and results are :class:`~decimal.Decimal`
rounded half-even to one decimal.
"""

from __future__ import annotations

import collections
import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Final

from agent.drivers.contract import JsonValue

ONE_PLACE: Final = Decimal("0.1")
HOUR_MS: Final = 3_600_000


@dataclass(frozen=True, slots=True)
class Limits:
    """What counts as a plausible sample (outside: artefact)."""

    spo2_min: int = 50
    spo2_max: int = 100
    pulse_min: int = 25
    pulse_max: int = 250


@dataclass(frozen=True, slots=True)
class DesaturationRule:
    """One desaturation rule (see the module docstring)."""

    drop_pct: int
    min_duration_ms: int = 10_000
    baseline_window_ms: int = 120_000
    min_baseline_ms: int = 30_000

    def describe(self) -> str:
        """The rule in one line, for the JSON output and the docs."""
        return (
            f"SpO2 at least {self.drop_pct} points below the mean valid SpO2 of the preceding "
            f"{self.baseline_window_ms // 1000} s (baseline frozen at the start, at least "
            f"{self.min_baseline_ms // 1000} s of valid samples in the window), lasting at "
            f"least {self.min_duration_ms // 1000} s (AASM hypopnoea rule 1A/1B thresholds; "
            "baseline after Borsini et al., Sleep Sci 2021;14(1):77-81)"
        )


ODI3: Final = DesaturationRule(3)
ODI4: Final = DesaturationRule(4)


class OximetryInputError(ValueError):
    """A night file that cannot be read; ``line`` is the 1-based line, when it applies."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message if line is None else f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True, slots=True)
class NightSummary:
    """The summary of one night. Minutes and percentages rounded to 0.1; see the module doc."""

    start: datetime
    end: datetime
    recording_ms: int
    valid_ms: int
    artefact_ms: int
    sensor_off_ms: int
    mean_spo2: Decimal | None
    min_spo2: Decimal | None
    t90_ms: int
    t88_ms: int
    desaturations3: int
    desaturations4: int
    pulse_valid_ms: int
    mean_pulse: Decimal | None
    min_pulse: Decimal | None
    max_pulse: Decimal | None
    overlap_samples: int = 0

    @property
    def night(self) -> date:
        """The night's date: the evening it began (the date 12 hours before its start)."""
        return (self.start - timedelta(hours=12)).date()

    @property
    def recording_min(self) -> Decimal:
        """Recording time in minutes."""
        return _minutes(self.recording_ms)

    @property
    def valid_min(self) -> Decimal:
        """Valid SpO2 time in minutes."""
        return _minutes(self.valid_ms)

    @property
    def artefact_min(self) -> Decimal:
        """Time with implausible SpO2 values, minutes."""
        return _minutes(self.artefact_ms)

    @property
    def sensor_off_min(self) -> Decimal:
        """Time with samples but no SpO2, minutes."""
        return _minutes(self.sensor_off_ms)

    @property
    def t90_min(self) -> Decimal:
        """Valid time with SpO2 below 90 %, minutes."""
        return _minutes(self.t90_ms)

    @property
    def t88_min(self) -> Decimal:
        """Valid time with SpO2 below 88 %, minutes."""
        return _minutes(self.t88_ms)

    @property
    def t90_pct(self) -> Decimal | None:
        """T90 as a percentage of valid time (``None`` without valid time)."""
        return _pct(self.t90_ms, self.valid_ms)

    @property
    def t88_pct(self) -> Decimal | None:
        """T88 as a percentage of valid time (``None`` without valid time)."""
        return _pct(self.t88_ms, self.valid_ms)

    @property
    def odi3(self) -> Decimal | None:
        """Desaturations of >= 3 points per valid hour (``None`` without valid time)."""
        return _per_hour(self.desaturations3, self.valid_ms)

    @property
    def odi4(self) -> Decimal | None:
        """Desaturations of >= 4 points per valid hour (``None`` without valid time)."""
        return _per_hour(self.desaturations4, self.valid_ms)

    def to_json(self) -> dict[str, JsonValue]:
        """The JSON document of ``dho-agent oximetry-summary`` (Decimals stay exact)."""
        return {
            "night": self.night.isoformat(),
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "recording_min": self.recording_min,
            "valid_min": self.valid_min,
            "artefact_min": _minutes(self.artefact_ms),
            "sensor_off_min": _minutes(self.sensor_off_ms),
            "mean_spo2": self.mean_spo2,
            "min_spo2": self.min_spo2,
            "t90_min": self.t90_min,
            "t90_pct": self.t90_pct,
            "t88_min": self.t88_min,
            "t88_pct": self.t88_pct,
            "desaturations3": self.desaturations3,
            "desaturations4": self.desaturations4,
            "odi3": self.odi3,
            "odi4": self.odi4,
            "mean_pulse": self.mean_pulse,
            "min_pulse": self.min_pulse,
            "max_pulse": self.max_pulse,
            "pulse_valid_min": _minutes(self.pulse_valid_ms),
            "overlap_samples": self.overlap_samples,
            "odi3_rule": ODI3.describe(),
            "odi4_rule": ODI4.describe(),
        }


def _round(value: Decimal) -> Decimal:
    return value.quantize(ONE_PLACE, rounding=ROUND_HALF_EVEN)


def _minutes(ms: int) -> Decimal:
    return _round(Decimal(ms) / Decimal(60_000))


def _pct(part_ms: int, whole_ms: int) -> Decimal | None:
    if whole_ms <= 0:
        return None
    return _round(Decimal(part_ms) * 100 / Decimal(whole_ms))


def _per_hour(events: int, valid_ms: int) -> Decimal | None:
    if valid_ms <= 0:
        return None
    return _round(Decimal(events) * HOUR_MS / Decimal(valid_ms))


def _tenths(value: Decimal | int | None) -> int | None:
    """A value in tenths, rounded half-even; ``None`` stays ``None``."""
    if value is None:
        return None
    return int((Decimal(value) * 10).to_integral_value(rounding=ROUND_HALF_EVEN))


def _from_tenths(value: int) -> Decimal:
    d = Decimal(value).scaleb(-1)
    return d.quantize(Decimal(1)) if value % 10 == 0 else d


@dataclass
class _Event:
    """The desaturation detector of one rule."""

    rule: DesaturationRule
    count: int = 0
    active: bool = False
    length_ms: int = 0
    base_sum: int = 0  # the frozen baseline as sum / n (tenths)
    base_n: int = 0

    def close(self) -> None:
        if self.active and self.length_ms >= self.rule.min_duration_ms:
            self.count += 1
        self.active = False
        self.length_ms = 0

    def pending(self) -> int:
        """Events counted so far, including an open one that already qualifies."""
        extra = self.active and self.length_ms >= self.rule.min_duration_ms
        return self.count + int(extra)

    def below(self, spo2: int, base_sum: int, base_n: int) -> bool:
        """``spo2 <= base_sum / base_n - drop`` exactly (all in tenths)."""
        return spo2 * base_n <= base_sum - self.rule.drop_pct * 10 * base_n

    def step(self, spo2: int, duration_ms: int, base: tuple[int, int] | None) -> None:
        if self.active:
            if self.below(spo2, self.base_sum, self.base_n):
                self.length_ms += duration_ms
                return
            self.close()
        if base is not None and self.below(spo2, *base):
            self.active = True
            self.base_sum, self.base_n = base
            self.length_ms = duration_ms


@dataclass
class OximetryNight:
    """The incremental summary of one night: feed samples in time order, ask for a summary.

    Feeding a night in any number of pieces gives the same summary as feeding it at once. The
    state is small (sums, counts, the 120 s baseline window) and round-trips through
    :meth:`state` / :meth:`from_state` as JSON, so the agent can keep it across restarts.
    """

    limits: Limits = field(default_factory=Limits)
    first_ms: int | None = None
    end_ms: int | None = None
    offset_s: int | None = None
    naive: bool = False
    valid_ms: int = 0
    artefact_ms: int = 0
    sensor_off_ms: int = 0
    spo2_sum: int = 0  # tenths x samples (weighted by duration in ms / 1000)
    spo2_weight: int = 0
    spo2_min: int | None = None
    t90_ms: int = 0
    t88_ms: int = 0
    pulse_ms: int = 0
    pulse_sum: int = 0
    pulse_weight: int = 0
    pulse_min: int | None = None
    pulse_max: int | None = None
    overlap_samples: int = 0
    samples: int = 0
    window: collections.deque[tuple[int, int, int]] = field(default_factory=collections.deque)
    """Valid samples of the last 120 s: (start ms, duration ms, SpO2 tenths)."""
    window_sum: int = 0
    window_ms: int = 0
    events: tuple[_Event, _Event] = field(default_factory=lambda: (_Event(ODI3), _Event(ODI4)))

    # -- feeding ------------------------------------------------------------------------

    def add(
        self,
        at: datetime,
        spo2: Decimal | int | None,
        pulse: Decimal | int | None = None,
        duration_ms: int = 1000,
    ) -> None:
        """One sample starting at ``at`` (all samples of a night: all aware or all naive)."""
        if duration_ms <= 0:
            raise ValueError("a sample lasts a positive time")
        if self.first_ms is None:
            self.naive = at.utcoffset() is None
            offset = at.utcoffset()
            self.offset_s = None if offset is None else int(offset.total_seconds())
        elif (at.utcoffset() is None) != self.naive:
            raise ValueError("a night mixes times with and without a UTC offset")
        t = _ms(at)
        if self.end_ms is not None and t < self.end_ms:
            self.overlap_samples += 1
            return
        self._sample(t, _tenths(spo2), _tenths(pulse), duration_ms)

    def add_series(
        self,
        start: datetime,
        interval_ms: int,
        spo2: Sequence[Decimal | int | None],
        pulse: Sequence[Decimal | int | None] | None = None,
    ) -> None:
        """Samples at a fixed interval from ``start`` (a sample chunk)."""
        for i, value in enumerate(spo2):
            p = None if pulse is None or i >= len(pulse) else pulse[i]
            self.add(start + timedelta(milliseconds=i * interval_ms), value, p, interval_ms)

    def _sample(self, t: int, spo2: int | None, pulse: int | None, duration_ms: int) -> None:
        if self.first_ms is None:
            self.first_ms = t
        gap = self.end_ms is not None and t > self.end_ms
        self.end_ms = t + duration_ms
        self.samples += 1
        for ev in self.events:
            if gap:
                ev.close()
        lim = self.limits
        if pulse is not None and lim.pulse_min * 10 <= pulse <= lim.pulse_max * 10:
            self.pulse_ms += duration_ms
            self.pulse_sum += pulse * duration_ms
            self.pulse_weight += duration_ms
            self.pulse_min = pulse if self.pulse_min is None else min(self.pulse_min, pulse)
            self.pulse_max = pulse if self.pulse_max is None else max(self.pulse_max, pulse)
        if spo2 is None or not lim.spo2_min * 10 <= spo2 <= lim.spo2_max * 10:
            if spo2 is None:
                self.sensor_off_ms += duration_ms
            else:
                self.artefact_ms += duration_ms
            for ev in self.events:
                ev.close()
            return
        self.valid_ms += duration_ms
        self.spo2_sum += spo2 * duration_ms
        self.spo2_weight += duration_ms
        self.spo2_min = spo2 if self.spo2_min is None else min(self.spo2_min, spo2)
        if spo2 < 900:
            self.t90_ms += duration_ms
        if spo2 < 880:
            self.t88_ms += duration_ms
        base = self._baseline(t)
        for ev in self.events:
            ev.step(spo2, duration_ms, base)
        self.window.append((t, duration_ms, spo2))
        self.window_sum += spo2
        self.window_ms += duration_ms

    def _baseline(self, t: int) -> tuple[int, int] | None:
        """The mean of the valid samples in ``[t - 120 s, t)`` as (sum, n), if enough."""
        horizon = t - ODI3.baseline_window_ms
        while self.window and self.window[0][0] < horizon:
            _, d, v = self.window.popleft()
            self.window_sum -= v
            self.window_ms -= d
        if self.window_ms < ODI3.min_baseline_ms or not self.window:
            return None
        return self.window_sum, len(self.window)

    # -- results ------------------------------------------------------------------------

    @property
    def empty(self) -> bool:
        """No sample yet."""
        return self.first_ms is None

    def summary(self) -> NightSummary | None:
        """The summary so far (``None`` before the first sample). Does not change the state."""
        if self.first_ms is None or self.end_ms is None:
            return None
        return NightSummary(
            start=self._time(self.first_ms),
            end=self._time(self.end_ms),
            recording_ms=self.end_ms - self.first_ms,
            valid_ms=self.valid_ms,
            artefact_ms=self.artefact_ms,
            sensor_off_ms=self.sensor_off_ms,
            mean_spo2=_mean(self.spo2_sum, self.spo2_weight),
            min_spo2=None if self.spo2_min is None else _from_tenths(self.spo2_min),
            t90_ms=self.t90_ms,
            t88_ms=self.t88_ms,
            desaturations3=self.events[0].pending(),
            desaturations4=self.events[1].pending(),
            pulse_valid_ms=self.pulse_ms,
            mean_pulse=_mean(self.pulse_sum, self.pulse_weight),
            min_pulse=None if self.pulse_min is None else _from_tenths(self.pulse_min),
            max_pulse=None if self.pulse_max is None else _from_tenths(self.pulse_max),
            overlap_samples=self.overlap_samples,
        )

    def _time(self, ms: int) -> datetime:
        t = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
        if self.naive:
            return t.replace(tzinfo=None)
        return t.astimezone(timezone(timedelta(seconds=self.offset_s or 0)))

    # -- persistence --------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The whole state as JSON-able values (patient data: store it encrypted)."""
        return {
            "v": 1,
            "first_ms": self.first_ms,
            "end_ms": self.end_ms,
            "offset_s": self.offset_s,
            "naive": self.naive,
            "sums": [
                self.valid_ms,
                self.artefact_ms,
                self.sensor_off_ms,
                self.spo2_sum,
                self.spo2_weight,
                self.spo2_min,
                self.t90_ms,
                self.t88_ms,
                self.pulse_ms,
                self.pulse_sum,
                self.pulse_weight,
                self.pulse_min,
                self.pulse_max,
                self.overlap_samples,
                self.samples,
            ],
            "window": [list(w) for w in self.window],
            "events": [[e.count, e.active, e.length_ms, e.base_sum, e.base_n] for e in self.events],
        }

    @classmethod
    def from_state(cls, data: Mapping[str, Any], limits: Limits | None = None) -> OximetryNight:
        """Rebuild from :meth:`state`.

        Raises:
            ValueError: not a state this version wrote.
        """
        try:
            if data["v"] != 1:
                raise ValueError("unknown oximetry state version")
            night = cls(limits=limits or Limits())
            night.first_ms = _opt_int(data["first_ms"])
            night.end_ms = _opt_int(data["end_ms"])
            night.offset_s = _opt_int(data["offset_s"])
            night.naive = bool(data["naive"])
            sums = list(data["sums"])
            (
                night.valid_ms,
                night.artefact_ms,
                night.sensor_off_ms,
                night.spo2_sum,
                night.spo2_weight,
            ) = (int(v) for v in sums[:5])
            night.spo2_min = _opt_int(sums[5])
            night.t90_ms, night.t88_ms, night.pulse_ms, night.pulse_sum, night.pulse_weight = (
                int(v) for v in sums[6:11]
            )
            night.pulse_min = _opt_int(sums[11])
            night.pulse_max = _opt_int(sums[12])
            night.overlap_samples, night.samples = int(sums[13]), int(sums[14])
            for t, d, v in data["window"]:
                night.window.append((int(t), int(d), int(v)))
                night.window_sum += int(v)
                night.window_ms += int(d)
            for ev, (count, active, length, bsum, bn) in zip(
                night.events, data["events"], strict=True
            ):
                ev.count, ev.active, ev.length_ms = int(count), bool(active), int(length)
                ev.base_sum, ev.base_n = int(bsum), int(bn)
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"oximetry state is damaged ({type(exc).__name__})") from exc
        return night


def _opt_int(v: object) -> int | None:
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError("not an integer")
    return v


def _mean(total: int, weight: int) -> Decimal | None:
    if weight <= 0:
        return None
    # total is tenths x ms: mean in percent = total / weight / 10
    return _round(Decimal(total) / Decimal(weight) / 10)


def _ms(at: datetime) -> int:
    """Milliseconds since 1970 (naive times are taken as they read, as if UTC)."""
    aware = at if at.utcoffset() is not None else at.replace(tzinfo=UTC)
    delta = aware - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def summarise(
    samples: Iterable[tuple[datetime, Decimal | int | None, Decimal | int | None]],
    duration_ms: int = 1000,
) -> NightSummary | None:
    """The summary of ``(time, spo2, pulse)`` samples of ``duration_ms`` each."""
    night = OximetryNight()
    for at, spo2, pulse in samples:
        night.add(at, spo2, pulse, duration_ms)
    return night.summary()


# -- the CSV night file ----------------------------------------------------------------------


def _cell(text: str, what: str, line: int) -> Decimal | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise OximetryInputError(f"{what} is not a number", line) from None
    if not value.is_finite():
        raise OximetryInputError(f"{what} is not a finite number", line)
    return value


def parse_csv(text: str) -> list[tuple[datetime, Decimal | None, Decimal | None]]:
    """Rows of a night file: a ``time,spo2,pulse`` header, then ISO-8601 time, SpO2 (%) and
    pulse (/min) per line at 1 Hz; empty cells are missing samples.

    Raises:
        OximetryInputError: no header, a bad row, times that go back or mix offsets, no rows.
    """
    reader = csv.reader(io.StringIO(text))
    rows: list[tuple[datetime, Decimal | None, Decimal | None]] = []
    header: list[str] | None = None
    aware: bool | None = None
    last: datetime | None = None
    for cells in reader:
        line = reader.line_num
        if not cells or all(not c.strip() for c in cells):
            continue
        if header is None:
            header = [c.strip().lower() for c in cells]
            if header[:3] != ["time", "spo2", "pulse"]:
                raise OximetryInputError("the header must be time,spo2,pulse", line)
            continue
        if len(cells) < 3:
            raise OximetryInputError(f"expected 3 cells, found {len(cells)}", line)
        try:
            at = datetime.fromisoformat(cells[0].strip())
        except ValueError:
            raise OximetryInputError("time is not an ISO-8601 date and time", line) from None
        has_offset = at.utcoffset() is not None
        if aware is None:
            aware = has_offset
        elif aware != has_offset:
            raise OximetryInputError("times mix values with and without a UTC offset", line)
        if last is not None and at <= last:
            raise OximetryInputError("time does not increase", line)
        last = at
        rows.append((at, _cell(cells[1], "spo2", line), _cell(cells[2], "pulse", line)))
    if header is None:
        raise OximetryInputError("empty file: no time,spo2,pulse header")
    if not rows:
        raise OximetryInputError("no samples after the header")
    return rows


def summarise_csv(text: str) -> NightSummary:
    """The summary of one night file (see :func:`parse_csv`)."""
    summary = summarise(parse_csv(text))
    assert summary is not None  # parse_csv returns at least one row
    return summary
