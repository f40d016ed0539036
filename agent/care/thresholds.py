"""Alarm thresholds per patient: readings in, alarm decisions out (pure, no I/O, no clock).

The service sets the thresholds of each patient with a signed command (``set-thresholds``,
``docs/care.md``); until it does, a patient has none and nothing is ever raised (defaults are
off). A threshold is one :class:`Rule`: a quantity, a direction, a limit and how long the
condition must hold, for example SpO2 below 88 % for 120 s, or systolic above 180 mmHg.

How a rule is judged
    * **Continuous data** (sample chunks, 1 Hz): a run starts at the first sample on the wrong
      side of the limit and the alarm is raised when the run has lasted ``for_s`` (the end of
      the sample that completes it). Samples without a value (sensor off) neither extend nor
      end a run, but a stretch of more than :data:`MAX_HOLE_MS` without a valid sample ends
      it, as does one valid sample on the right side.
    * **Spot readings** (a BP measurement, a spot-check) are single moments: they raise at
      once for a rule with ``for_s == 0``. A rule with ``for_s > 0`` needs continuous data: a
      spot reading cannot show that a condition lasted.
    * One alarm per episode: after raising, a rule stays quiet until the quantity has been on
      the right side for :data:`REARM_MS` (continuous) or, for spot rules, raises again for
      each new measurement that breaches (each is a separate measurement a clinician reads).
    * Only fresh data raises alarms: a reading measured more than :data:`FRESH_MS` before the
      evaluation (a cuff's stored memory sent days later) is not an emergency any more; the
      reading itself still reaches the service.

The evaluator keeps its state in memory; the alarms it raised are made durable by the caller
(the alarm reading in the buffer), which is what "never lost" rests on.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Final

from agent import codes
from agent.model import DeviceIdentity, Reading

MAX_HOLE_MS: Final = 10_000
"""A run of breaching samples survives holes (sensor off, a lost frame) up to this long."""
REARM_MS: Final = 60_000
"""After an alarm, the quantity must be back on the right side this long to raise again."""
FRESH_MS: Final = 3_600_000
"""Readings measured longer ago than this do not raise alarms."""
MAX_FOR_S: Final = 3600


class Quantity(enum.StrEnum):
    """What a rule watches, with the MDC codes that carry it."""

    SPO2 = "spo2"
    PULSE = "pulse"
    SYSTOLIC = "sys"
    DIASTOLIC = "dia"

    @property
    def mdcs(self) -> frozenset[int]:
        """The observation/channel codes of this quantity."""
        return _MDCS[self]

    @property
    def unit(self) -> str:
        """The UCUM unit limits are given in."""
        return "%" if self is Quantity.SPO2 else "mm[Hg]" if self.is_pressure else "/min"

    @property
    def is_pressure(self) -> bool:
        """Blood pressure (spot readings only)."""
        return self in (Quantity.SYSTOLIC, Quantity.DIASTOLIC)

    @property
    def code(self) -> codes.Code:
        """The code the alarm reading reports the measured value under."""
        return _CODE[self]


_MDCS: Final = {
    Quantity.SPO2: frozenset({codes.SPO2.mdc}),
    Quantity.PULSE: frozenset({codes.PULSE_RATE_OXIM.mdc, codes.PULSE_RATE_BP.mdc}),
    Quantity.SYSTOLIC: frozenset({codes.BP_SYSTOLIC.mdc}),
    Quantity.DIASTOLIC: frozenset({codes.BP_DIASTOLIC.mdc}),
}
_CODE: Final = {
    Quantity.SPO2: codes.SPO2,
    Quantity.PULSE: codes.PULSE_RATE_OXIM,
    Quantity.SYSTOLIC: codes.BP_SYSTOLIC,
    Quantity.DIASTOLIC: codes.BP_DIASTOLIC,
}
_LIMITS: Final = {
    Quantity.SPO2: (Decimal(50), Decimal(100)),
    Quantity.PULSE: (Decimal(20), Decimal(250)),
    Quantity.SYSTOLIC: (Decimal(50), Decimal(300)),
    Quantity.DIASTOLIC: (Decimal(20), Decimal(200)),
}


class Direction(enum.StrEnum):
    """Which side of the limit is the alarm."""

    BELOW = "below"
    ABOVE = "above"


@dataclass(frozen=True, slots=True)
class Rule:
    """One threshold: ``quantity`` ``direction`` ``limit`` for ``for_s`` seconds."""

    quantity: Quantity
    direction: Direction
    limit: Decimal
    for_s: int = 0

    @property
    def id(self) -> str:
        """A stable name, e.g. ``spo2-below`` (one rule per quantity and direction)."""
        return f"{self.quantity}-{self.direction}"

    def breached(self, value: Decimal) -> bool:
        """Whether ``value`` is on the alarm side (strictly)."""
        return value < self.limit if self.direction is Direction.BELOW else value > self.limit

    def worse(self, a: Decimal, b: Decimal) -> Decimal:
        """The more extreme of two breaching values."""
        return min(a, b) if self.direction is Direction.BELOW else max(a, b)


class ThresholdError(ValueError):
    """A ``set-thresholds`` command whose arguments are not usable (says which key)."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The rules of one patient (empty: alarms off)."""

    patient: str
    rules: tuple[Rule, ...] = ()

    @classmethod
    def from_args(cls, args: Mapping[str, object]) -> Thresholds:
        """From the flat arguments of a ``set-thresholds`` command.

        Keys: ``patient`` (the opaque reference, required), and for each quantity
        ``spo2``/``pulse``/``sys``/``dia``: ``<q>_below`` and/or ``<q>_above`` (a number, as
        an integer or a decimal string) and ``<q>_for_s`` (seconds the condition must hold,
        0 .. 3600, default 0). A command without limits turns the patient's alarms off.

        Raises:
            ThresholdError: a missing patient, an unknown key, a value out of range.
        """
        patient = args.get("patient")
        if not isinstance(patient, str) or not patient:
            raise ThresholdError("patient: required (the patient's opaque reference)")
        known = {"patient"}
        rules: list[Rule] = []
        for q in Quantity:
            for_key = f"{q}_for_s"
            known.add(for_key)
            for_s = args.get(for_key, 0)
            if not isinstance(for_s, int) or isinstance(for_s, bool) or not 0 <= for_s <= MAX_FOR_S:
                raise ThresholdError(f"{for_key}: must be a whole number of seconds, 0 to 3600")
            if q.is_pressure and for_s:
                raise ThresholdError(f"{for_key}: blood pressure is a spot reading; use 0")
            lo, hi = _LIMITS[q]
            for d in Direction:
                key = f"{q}_{d}"
                known.add(key)
                raw = args.get(key)
                if raw is None:
                    continue
                limit = _number(raw, key)
                if not lo <= limit <= hi:
                    raise ThresholdError(f"{key}: must be from {lo} to {hi} {q.unit}")
                rules.append(Rule(q, d, limit, for_s))
        unknown = sorted(set(args) - known)
        if unknown:
            raise ThresholdError(f"{unknown[0]}: unknown threshold key")
        return cls(patient, tuple(rules))

    def to_args(self) -> dict[str, str | int]:
        """The command arguments that set these rules (inverse of :meth:`from_args`)."""
        out: dict[str, str | int] = {"patient": self.patient}
        for r in self.rules:
            out[r.id.replace("-", "_")] = str(r.limit)
            if r.for_s:
                out[f"{r.quantity}_for_s"] = r.for_s
        return out


def _number(raw: object, key: str) -> Decimal:
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise ThresholdError(f"{key}: must be a number")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ThresholdError(f"{key}: must be a number") from None
    if not value.is_finite():
        raise ThresholdError(f"{key}: must be a finite number")
    return value


@dataclass(frozen=True, slots=True)
class Alarm:
    """An alarm decision: raise this, now.

    ``started`` is when the condition began (the first breaching sample, or the spot
    reading's time), ``raised_at`` when it had lasted long enough, ``value`` the most extreme
    value seen until then, ``source`` the reading that completed it.
    """

    patient: str
    rule: Rule
    device: DeviceIdentity
    started: datetime
    raised_at: datetime
    value: Decimal
    source: Reading

    @property
    def duration_s(self) -> int:
        """How long the condition had lasted when raised."""
        return int((self.raised_at - self.started).total_seconds())


@dataclass
class _Run:
    since_ms: int | None = None
    last_ms: int = 0  # end of the last breaching sample
    good_since_ms: int | None = None
    value: Decimal | None = None
    raised: bool = False


@dataclass
class Evaluator:
    """Judges readings against every patient's thresholds (see the module docstring)."""

    thresholds: dict[str, Thresholds] = field(default_factory=dict)
    _runs: dict[tuple[str, str, str, str], _Run] = field(default_factory=dict)

    def set(self, thresholds: Thresholds) -> None:
        """Replace one patient's rules (their open runs start again)."""
        self.thresholds[thresholds.patient] = thresholds
        for key in [k for k in self._runs if k[0] == thresholds.patient]:
            del self._runs[key]

    def rules_for(self, patient: str) -> tuple[Rule, ...]:
        """The patient's rules (none until the service sets them)."""
        t = self.thresholds.get(patient)
        return () if t is None else t.rules

    def evaluate(self, readings: Iterable[Reading], now: datetime) -> list[Alarm]:
        """The alarms these readings raise, in time order. ``now`` (aware) judges freshness."""
        out: list[Alarm] = []
        fresh_after = now - timedelta(milliseconds=FRESH_MS)
        for r in readings:
            rules = self.rules_for(r.patient)
            if not rules or r.decode_error is not None:
                continue
            start = reading_time(r)
            for rule in rules:
                if r.samples is not None:
                    out += self._continuous(r, rule, start, fresh_after)
                if r.observations and rule.for_s == 0:
                    out += self._spot(r, rule, start, fresh_after)
        out.sort(key=lambda a: a.raised_at)
        return out

    def _spot(self, r: Reading, rule: Rule, at: datetime, fresh_after: datetime) -> Sequence[Alarm]:
        if at < fresh_after:
            return ()
        values = [
            o.value for o in r.observations if o.mdc in rule.quantity.mdcs and o.value is not None
        ]
        bad = [v for v in values if rule.breached(v)]
        if not bad:
            return ()
        worst = bad[0]
        for v in bad[1:]:
            worst = rule.worse(worst, v)
        return (Alarm(r.patient, rule, r.device, at, at, worst, r),)

    def _continuous(
        self, r: Reading, rule: Rule, start: datetime, fresh_after: datetime
    ) -> Sequence[Alarm]:
        assert r.samples is not None
        channel = next(
            (c for c in r.samples.channels if c.mdc in rule.quantity.mdcs and c.stat is None),
            None,
        )
        if channel is None:
            return ()
        key = (r.patient, rule.id, r.device.transport, r.device.serial)
        run = self._runs.setdefault(key, _Run())
        step = r.samples.interval_ms
        base = _ms(start)
        fresh_ms = _ms(fresh_after)
        out: list[Alarm] = []
        for i in range(len(channel.values)):
            value = channel.decimal(i)
            t = base + i * step
            if run.since_ms is not None and t - run.last_ms > MAX_HOLE_MS:
                run.since_ms = None  # a long hole ends the run
                run.value = None
            if value is None:
                continue
            if not rule.breached(value):
                run.since_ms = None
                run.value = None
                if run.raised:
                    run.good_since_ms = run.good_since_ms if run.good_since_ms is not None else t
                    if t + step - run.good_since_ms >= REARM_MS:
                        run.raised = False
                        run.good_since_ms = None
                continue
            run.good_since_ms = None
            if run.since_ms is None:
                run.since_ms = t
            run.last_ms = t + step
            run.value = value if run.value is None else rule.worse(run.value, value)
            if not run.raised and run.last_ms - run.since_ms >= rule.for_s * 1000:
                run.raised = True
                if run.last_ms >= fresh_ms:
                    out.append(
                        Alarm(
                            r.patient,
                            rule,
                            r.device,
                            _dt(run.since_ms),
                            _dt(run.last_ms),
                            run.value,
                            r,
                        )
                    )
        return out


def reading_time(r: Reading) -> datetime:
    """When a reading (or its first sample) was measured, as an aware time.

    The device's time when it has a zone; a naive device time is taken as the box's local
    time; otherwise the gateway's capture time.
    """
    if r.device_time is not None:
        return (
            r.device_time if r.device_time.utcoffset() is not None else r.device_time.astimezone()
        )
    return datetime.fromtimestamp(r.captured.wall_ns / 1e9, UTC)


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
