"""Measurement reminders: the service's schedule per patient, judged against what arrived (pure).

The service sets each patient's schedule with the signed ``set-schedule`` command
(``docs/care.md``): windows of local time per kind of measurement, for example blood pressure
07:00-10:00 and 19:00-22:00, and night oximetry 21:00-23:30, on some or all weekdays, plus
quiet hours. Each window on each day is an :class:`Occurrence`:

* while it is open and nothing of its kind has arrived since it opened, it is **due**: the
  box reminds the patient (the light shows it the whole time; a short sound when the window
  opens and again every ``remind_every_min``);
* in the patient's **quiet hours** a due occurrence is kept but not shown: no light, no
  sound, no reminder counted (:meth:`Planner.shown`). When quiet hours end with its window
  still open, it is reminded (light and sound) at once; a window that closes in quiet hours
  is missed as any other;
* a measurement of its kind inside the window makes it **done** and the reminding stops;
* a window that closes with nothing is **missed**, reported once to the service.

Kinds: ``bp`` (a reading with a systolic pressure), ``spo2`` (an SpO2 value or samples),
``oximetry`` (continuous SpO2 samples: the night sensor is on). Times are the box's local
wall time (aware datetimes in its zone); a window whose end is not after its start runs past
midnight and belongs to the day it starts.

:class:`Planner` holds the state and is driven by :meth:`Planner.measured` and
:meth:`Planner.tick`, which returns the :class:`Action` list; it does no I/O and reads no
clock. Its state round-trips through :meth:`Planner.state` for persistence.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, Final

from agent import codes
from agent.model import Reading

MAX_CATCH_UP: Final = timedelta(days=7)
"""After a long stop, windows older than this are not judged any more."""
_HISTORY: Final = 64
_WINDOW: Final = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
_DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Kind(enum.StrEnum):
    """A kind of measurement a schedule asks for."""

    BP = "bp"
    SPO2 = "spo2"
    OXIMETRY = "oximetry"


def kinds_of(reading: Reading) -> set[Kind]:
    """Which scheduled kinds a reading satisfies."""
    out: set[Kind] = set()
    if reading.decode_error is not None:
        return out
    mdcs = {o.mdc for o in reading.observations if o.value is not None}
    if codes.BP_SYSTOLIC.mdc in mdcs:
        out.add(Kind.BP)
    if codes.SPO2.mdc in mdcs:
        out.add(Kind.SPO2)
    if reading.samples is not None:
        for ch in reading.samples.channels:
            if (
                ch.mdc == codes.SPO2.mdc
                and ch.stat is None
                and any(v is not None for v in ch.values)
            ):
                out |= {Kind.SPO2, Kind.OXIMETRY}
    return out


class ScheduleError(ValueError):
    """A ``set-schedule`` command whose arguments are not usable (says which key)."""


@dataclass(frozen=True, slots=True)
class Window:
    """A span of local wall time; crosses midnight when ``end <= start``."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str, key: str) -> Window:
        """``HH:MM-HH:MM``."""
        m = _WINDOW.match(text.strip())
        if m is None:
            raise ScheduleError(f"{key}: windows are HH:MM-HH:MM, separated by commas")
        a, b, c, d = (int(g) for g in m.groups())
        if (a, b) == (c, d):
            raise ScheduleError(f"{key}: a window must not be empty")
        return cls(time(a, b), time(c, d))

    def span(self, day: date, tz: Any) -> tuple[datetime, datetime]:
        """The window on ``day`` as aware local times."""
        start = datetime.combine(day, self.start, tzinfo=tz)
        end_day = day if self.end > self.start else day + timedelta(days=1)
        return start, datetime.combine(end_day, self.end, tzinfo=tz)

    def contains(self, t: time) -> bool:
        """Whether the wall time ``t`` is inside."""
        if self.end > self.start:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True, slots=True)
class Slot:
    """One window of one kind on some weekdays (0 = Monday)."""

    kind: Kind
    window: Window
    days: frozenset[int] = frozenset(range(7))


@dataclass(frozen=True, slots=True)
class Schedule:
    """One patient's schedule (no slots: no reminders)."""

    patient: str
    slots: tuple[Slot, ...] = ()
    quiet: Window | None = None
    remind_every_min: int = 15

    @classmethod
    def from_args(cls, args: Mapping[str, object]) -> Schedule:
        """From the flat arguments of a ``set-schedule`` command.

        Keys: ``patient`` (required), ``bp``/``spo2``/``oximetry`` (windows ``HH:MM-HH:MM``
        separated by commas), ``<kind>_days`` (``mon,wed,fri`` or ``daily``, default daily),
        ``quiet`` (one window, no sound then), ``remind_every_min`` (5 .. 240, default 15).
        ``idle_poll_s`` belongs to the uplink and is ignored here.

        Raises:
            ScheduleError: naming the key.
        """
        patient = args.get("patient")
        if not isinstance(patient, str) or not patient:
            raise ScheduleError("patient: required (the patient's opaque reference)")
        known = {"patient", "quiet", "remind_every_min", "idle_poll_s"}
        slots: list[Slot] = []
        for kind in Kind:
            known |= {str(kind), f"{kind}_days"}
            raw = args.get(str(kind))
            if raw is None:
                continue
            if not isinstance(raw, str):
                raise ScheduleError(f"{kind}: windows are HH:MM-HH:MM, separated by commas")
            days = _days(args.get(f"{kind}_days", "daily"), f"{kind}_days")
            for part in raw.split(","):
                slots.append(Slot(kind, Window.parse(part, str(kind)), days))
        quiet_raw = args.get("quiet")
        if quiet_raw is not None and not isinstance(quiet_raw, str):
            raise ScheduleError("quiet: one window HH:MM-HH:MM")
        quiet = None if quiet_raw is None else Window.parse(quiet_raw, "quiet")
        every = args.get("remind_every_min", 15)
        if not isinstance(every, int) or isinstance(every, bool) or not 5 <= every <= 240:
            raise ScheduleError("remind_every_min: must be a whole number from 5 to 240")
        unknown = sorted(set(args) - known)
        if unknown:
            raise ScheduleError(f"{unknown[0]}: unknown schedule key")
        return cls(patient, tuple(slots), quiet, every)

    def to_args(self) -> dict[str, str | int]:
        """Arguments that set this schedule (inverse of :meth:`from_args`)."""
        out: dict[str, str | int] = {"patient": self.patient}
        for kind in Kind:
            mine = [s for s in self.slots if s.kind is kind]
            if mine:
                out[str(kind)] = ",".join(str(s.window) for s in mine)
                if mine[0].days != frozenset(range(7)):
                    out[f"{kind}_days"] = ",".join(_DAYS[d] for d in sorted(mine[0].days))
        if self.quiet is not None:
            out["quiet"] = str(self.quiet)
        out["remind_every_min"] = self.remind_every_min
        return out

    def is_quiet(self, now: datetime) -> bool:
        """Whether ``now`` (local) is in quiet hours."""
        return self.quiet is not None and self.quiet.contains(now.timetz().replace(tzinfo=None))


def _days(raw: object, key: str) -> frozenset[int]:
    if not isinstance(raw, str):
        raise ScheduleError(f"{key}: weekdays like mon,wed,fri or daily")
    if raw.strip().lower() == "daily":
        return frozenset(range(7))
    out: set[int] = set()
    for part in raw.lower().split(","):
        part = part.strip()
        if part not in _DAYS:
            raise ScheduleError(f"{key}: weekdays like mon,wed,fri or daily")
        out.add(_DAYS.index(part))
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One window of one slot on one day."""

    patient: str
    kind: Kind
    start: datetime
    end: datetime

    @property
    def key(self) -> str:
        """Stable identity within a patient's schedule."""
        return f"{self.kind}@{self.start.isoformat()}"


class ActionKind(enum.StrEnum):
    """What the planner asks for."""

    REMIND = "remind"
    STOP = "stop"
    MISSED = "missed"


@dataclass(frozen=True, slots=True)
class Action:
    """One thing to do now.

    ``REMIND``: show the reminder (with a short sound if ``sound``: always, since quiet
    hours give no ``REMIND`` at all); ``STOP``: the occurrence
    is done (``why`` ``measured``) or its window ended (``why`` ``window-ended``), stop
    showing it; ``MISSED``: report it to the service (``reminders`` given).
    """

    kind: ActionKind
    occurrence: Occurrence
    sound: bool = False
    why: str = ""
    reminders: int = 0


@dataclass
class _Open:
    occurrence: Occurrence
    reminders: int = 0
    last_reminded: datetime | None = None


@dataclass
class Planner:
    """Reminder state of every patient (see the module docstring)."""

    schedules: dict[str, Schedule] = field(default_factory=dict)
    last_tick: datetime | None = None
    _open: dict[tuple[str, str], _Open] = field(default_factory=dict)
    _measured: dict[tuple[str, Kind], list[datetime]] = field(default_factory=dict)
    _judged: dict[tuple[str, str], datetime] = field(default_factory=dict)
    _set_at: dict[str, datetime] = field(default_factory=dict)

    def set(self, schedule: Schedule, now: datetime | None = None) -> list[Action]:
        """Replace a patient's schedule from ``now`` on (windows that ended before are not
        judged); reminders of the old one stop (not reported missed)."""
        self.schedules[schedule.patient] = schedule
        if now is not None:
            self._set_at[schedule.patient] = now
        stops = [
            Action(ActionKind.STOP, o.occurrence, why="schedule-changed")
            for k, o in list(self._open.items())
            if k[0] == schedule.patient
        ]
        for a in stops:
            del self._open[(a.occurrence.patient, a.occurrence.key)]
        return stops

    def measured(self, patient: str, kinds: Iterable[Kind], at: datetime) -> None:
        """A measurement of these kinds arrived for ``patient``, measured at ``at`` (aware)."""
        for kind in kinds:
            times = self._measured.setdefault((patient, kind), [])
            times.append(at)
            times.sort()
            del times[:-_HISTORY]

    def due(self) -> list[Occurrence]:
        """Occurrences due now (open, nothing measured yet), shown or held by quiet hours."""
        return [o.occurrence for o in self._open.values()]

    def shown(self, now: datetime) -> list[Occurrence]:
        """The due occurrences the light shows at ``now``: none in their patient's quiet hours."""
        return [
            o.occurrence for o in self._open.values() if not self._quiet(o.occurrence.patient, now)
        ]

    def _quiet(self, patient: str, now: datetime) -> bool:
        schedule = self.schedules.get(patient)
        return schedule is not None and schedule.is_quiet(now)

    def _satisfied(self, occ: Occurrence) -> bool:
        return any(
            occ.start <= t < occ.end for t in self._measured.get((occ.patient, occ.kind), ())
        )

    def _occurrences(self, schedule: Schedule, since: datetime, now: datetime) -> list[Occurrence]:
        """Occurrences starting in ``(since - 1 day, now]`` (one day back: windows crossing
        midnight), each a window that has opened by ``now``."""
        tz = now.tzinfo
        out: list[Occurrence] = []
        day = (since - timedelta(days=1)).astimezone(tz).date()
        last = now.date()
        while day <= last:
            for slot in schedule.slots:
                if day.weekday() not in slot.days:
                    continue
                start, end = slot.window.span(day, tz)
                if start <= now and end > since:
                    out.append(Occurrence(schedule.patient, slot.kind, start, end))
            day += timedelta(days=1)
        out.sort(key=lambda o: (o.start, o.kind))
        return out

    def tick(self, now: datetime) -> list[Action]:
        """What to do at ``now`` (aware, the box's zone). Call it every half minute or so."""
        since = now if self.last_tick is None else max(self.last_tick, now - MAX_CATCH_UP)
        actions: list[Action] = []
        for schedule in self.schedules.values():
            set_at = self._set_at.get(schedule.patient)
            start = since if set_at is None else max(since, set_at)
            for occ in self._occurrences(schedule, start, now):
                key = (occ.patient, occ.key)
                if key in self._judged:
                    continue
                open_ = self._open.get(key)
                if self._satisfied(occ):
                    self._judged[key] = occ.end
                    if open_ is not None:
                        del self._open[key]
                        actions.append(Action(ActionKind.STOP, occ, why="measured"))
                    continue
                if now >= occ.end:
                    self._judged[key] = occ.end
                    reminders = 0
                    if open_ is not None:
                        del self._open[key]
                        reminders = open_.reminders
                        actions.append(Action(ActionKind.STOP, occ, why="window-ended"))
                    actions.append(Action(ActionKind.MISSED, occ, reminders=reminders))
                    continue
                if open_ is None:
                    open_ = self._open[key] = _Open(occ)
                if schedule.is_quiet(now):
                    continue  # kept, not shown: no light, no sound
                every = timedelta(minutes=schedule.remind_every_min)
                if (
                    open_.last_reminded is None
                    or now - open_.last_reminded >= every
                    or (self.last_tick is not None and schedule.is_quiet(self.last_tick))
                ):  # first time, time again, or quiet hours just ended
                    open_.reminders += 1
                    open_.last_reminded = now
                    actions.append(Action(ActionKind.REMIND, occ, sound=True))
        horizon = now - MAX_CATCH_UP - timedelta(days=1)
        self._judged = {k: end for k, end in self._judged.items() if end >= horizon}
        self.last_tick = now
        return actions

    # -- persistence ----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """JSON-able state (patient references inside: store it encrypted)."""
        return {
            "v": 1,
            "schedules": [s.to_args() for s in self.schedules.values()],
            "last_tick": None if self.last_tick is None else self.last_tick.isoformat(),
            "open": [
                [
                    o.occurrence.patient,
                    str(o.occurrence.kind),
                    o.occurrence.start.isoformat(),
                    o.occurrence.end.isoformat(),
                    o.reminders,
                    None if o.last_reminded is None else o.last_reminded.isoformat(),
                ]
                for o in self._open.values()
            ],
            "measured": [
                [p, str(k), [t.isoformat() for t in times]]
                for (p, k), times in self._measured.items()
            ],
            "judged": [[p, k, end.isoformat()] for (p, k), end in self._judged.items()],
            "set_at": [[p, t.isoformat()] for p, t in self._set_at.items()],
        }

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> Planner:
        """Rebuild from :meth:`state`.

        Raises:
            ValueError: not a state this version wrote.
        """
        try:
            if data["v"] != 1:
                raise ValueError("unknown reminder state version")
            p = cls()
            for args in data["schedules"]:
                s = Schedule.from_args(args)
                p.schedules[s.patient] = s
            p.last_tick = _time_or_none(data["last_tick"])
            for patient, kind, start, end, reminders, last in data["open"]:
                occ = Occurrence(
                    patient, Kind(kind), datetime.fromisoformat(start), datetime.fromisoformat(end)
                )
                p._open[(patient, occ.key)] = _Open(occ, int(reminders), _time_or_none(last))
            for patient, kind, times in data["measured"]:
                p._measured[(patient, Kind(kind))] = [datetime.fromisoformat(t) for t in times]
            for patient, key, end in data["judged"]:
                p._judged[(patient, key)] = datetime.fromisoformat(end)
            for patient, t in data["set_at"]:
                p._set_at[patient] = datetime.fromisoformat(t)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"reminder state is damaged ({type(exc).__name__})") from exc
        return p


def _time_or_none(raw: object) -> datetime | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise TypeError("not a time")
    return datetime.fromisoformat(raw)


def describe(actions: Sequence[Action]) -> list[str]:
    """Short log-safe descriptions (kinds and states only, never a patient reference)."""
    return [f"{a.kind}:{a.occurrence.kind}" for a in actions]
