"""The care service: one supervised task that turns readings into care (``docs/care.md``).

It sees every reading after the buffer made it durable (:class:`CareSink` wraps the drivers'
sink), and

* feeds continuous SpO2/pulse into one :class:`~agent.care.oximetry.OximetryNight` per device
  and night; a night is summarised once no sample came for ``night_close_after_s`` and the
  summary is appended as a spot-lane reading (again, flagged revised, if the same night goes
  on later);
* judges readings against the thresholds the service set (:mod:`agent.care.thresholds`) and
  appends each alarm to the alarm lane at once (durable: never lost), shows it on the light
  with the buzzer until the button is pressed, and, when the alarm is still not acknowledged
  by the service ``sms_after_s`` after it was raised, sends it by SMS to the numbers the
  service set (once: :mod:`agent.care.modem`), then appends a note saying so;
* runs the reminder planner (:mod:`agent.care.schedule`) and appends missed measurements.

The uplink reports which alarm readings the service acknowledged through
:class:`DeliveryWatch` (a thin wrapper of the buffer it is given). State (thresholds,
schedules, SMS settings, the nights in progress, the alarm outbox) is kept encrypted
(:mod:`agent.care.state`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol

from agent.buffer import AppendResult
from agent.care import i18n
from agent.care import readings as care_readings
from agent.care.indicator import Indicator, NullIndicator
from agent.care.modem import NUMBER, ModemError, Outcome
from agent.care.oximetry import OximetryNight
from agent.care.schedule import ActionKind, Planner, Schedule, ScheduleError, kinds_of
from agent.care.state import CareStateFile, derive_key
from agent.care.thresholds import Alarm, Evaluator, ThresholdError, Thresholds, reading_time
from agent.clock import Clock, SystemClock
from agent.codes import PULSE_RATE_BP, PULSE_RATE_OXIM, SPO2
from agent.drivers.contract import FirstSink, Journal, JournalSink
from agent.health import Concern
from agent.model import DeviceIdentity, DeviceKind, Lane, Reading, Transport

_LOG = logging.getLogger(__name__)

SAVE_EVERY_S: Final = 60.0
SMS_RETRY_S: Final = 120.0


class Sink(Protocol):
    """Where the care service appends (the buffer, waking the uplink)."""

    async def append(self, readings: Sequence[Reading]) -> AppendResult: ...


class SmsSender(Protocol):
    """What sends an SMS (``agent.care.modem.SmsModem``)."""

    def send(self, numbers: Sequence[str], text: str) -> Sequence[Any]: ...


@dataclass(frozen=True, slots=True)
class CareSettings:
    """The ``[care]`` table (``agent/config.py``)."""

    tick_s: float = 15.0
    night_close_after_s: float = 3600.0
    min_night_valid_min: float = 30.0
    sms_port: str | None = None
    sms_after_s: float = 900.0
    """Default delay before an undelivered alarm goes by SMS (the service may set another)."""
    language: str = i18n.DEFAULT_LANGUAGE


@dataclass
class _SmsConfig:
    numbers: tuple[str, ...] = ()
    after_s: float | None = None
    label: str = ""
    language: str | None = None


@dataclass
class _Outgoing:
    """One alarm on its way: raised, maybe sent by SMS, acknowledged by the service or not."""

    id: str
    patient: str
    rule_id: str
    limit: str
    for_s: int
    started: str  # ISO, aware
    raised_at: float  # wall clock, s
    device: list[str]
    delivered: bool = False
    sms: dict[str, str] = field(default_factory=dict)  # number -> sending|sent|failed|unknown
    sms_noted: bool = False
    next_sms_try: float = 0.0
    acknowledged: bool = False


@dataclass
class _Night:
    device: list[str]
    patient: str
    night: str
    acc: OximetryNight
    last_seen: float  # wall clock, s
    summaries: int = 0
    dirty: bool = False  # samples since the last summary


def _device_fields(d: DeviceIdentity) -> list[str]:
    return [str(d.kind), d.manufacturer, d.model, d.serial, str(d.transport)]


def _device(fields: Sequence[str]) -> DeviceIdentity:
    return DeviceIdentity(
        DeviceKind(fields[0]), fields[1], fields[2], fields[3], Transport(fields[4])
    )


class CareService:
    """See the module docstring. ``name`` is ``care`` (its status section)."""

    name = "care"

    def __init__(
        self,
        settings: CareSettings,
        sink: Sink,
        *,
        state_dir: Path,
        kek: Callable[[], bytes] | None = None,
        box_id: str = "box",
        clock: Clock | None = None,
        wall: Callable[[], float] = time.time,
        indicator: Indicator | None = None,
        sms: SmsSender | None = None,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.state_dir = state_dir
        self._kek = kek
        self.box_id = box_id
        self.clock = clock or SystemClock()
        self.wall = wall
        self.indicator = indicator or NullIndicator()
        self.sms = sms
        self.evaluator = Evaluator()
        self.planner = Planner()
        self.sms_config: dict[str, _SmsConfig] = {}
        self.outgoing: list[_Outgoing] = []
        self.nights: dict[str, _Night] = {}
        self._seen_devices: dict[tuple[str, str], list[str]] = {}
        self._queue: asyncio.Queue[tuple[Reading, ...]] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._file: CareStateFile | None = None
        self._saved_at = 0.0
        self._dirty = False
        self.ready = asyncio.Event()
        self.counters: dict[str, int] = {
            "alarms": 0,
            "alarms_sms": 0,
            "summaries": 0,
            "reminders": 0,
            "missed": 0,
            "sms_errors": 0,
        }
        self.last_sms_error: str | None = None
        self._pending_ack = False
        self._pending_summaries: list[_Night] = []
        self._taken: list[tuple[Reading, ...]] = []
        self._light: Concern | None = None
        self.indicator.on_button(self._button)

    # -- inputs -----------------------------------------------------------------------------

    def observe(self, readings: Sequence[Reading]) -> None:
        """Readings that are durable in the buffer (called by :class:`CareSink`; never blocks)."""
        mine = tuple(r for r in readings if not self._own(r))
        if mine:
            self._queue.put_nowait(mine)

    @staticmethod
    def _own(r: Reading) -> bool:
        return bool(
            r.status
            & {
                care_readings.SUMMARY,
                care_readings.ALARM,
                care_readings.PATH_SMS,
                care_readings.ACKNOWLEDGED,
            }
        ) or any(f.startswith("missed:") for f in r.status)

    def delivered(self, ids: Iterable[uuid.UUID]) -> None:
        """The service acknowledged these readings (called by :class:`DeliveryWatch`).

        Alarms leave oldest first, so an acknowledged alarm also settles every older one.
        """
        wanted = {str(i) for i in ids}
        last = -1
        for i, out in enumerate(self.outgoing):
            if out.id in wanted:
                last = i
        if last < 0:
            return
        for out in self.outgoing[: last + 1]:
            if not out.delivered:
                out.delivered = True
                self._dirty = True
        self._wake.set()

    def _button(self) -> None:
        """The patient pressed the button (called on the loop)."""
        self._pending_ack = True
        self._wake.set()

    # -- commands from the service ----------------------------------------------------------

    async def command(self, name: str, args: Mapping[str, object]) -> dict[str, Any] | None:
        """Carry out a care command; ``None`` when ``name`` is not one of them.

        ``set-thresholds`` (:meth:`Thresholds.from_args`), ``set-schedule``
        (:meth:`Schedule.from_args`; only when it has a ``patient``), ``set-alarm-sms``
        (``patient``, ``numbers`` comma-separated E.164, ``after_min`` 1..1440, ``label`` up
        to 40 characters, ``language`` nb|nn|en|sma). Answers carry no patient data.
        """
        try:
            if name == "set-thresholds":
                t = Thresholds.from_args(args)
                self.evaluator.set(t)
                result: dict[str, Any] = {"ok": True, "rules": len(t.rules)}
            elif name == "set-schedule" and "patient" in args:
                s = Schedule.from_args(args)
                for action in self.planner.set(s, self._local_now()):
                    self._stop_reminder(action)
                result = {"ok": True, "windows": len(s.slots)}
            elif name == "set-alarm-sms":
                patient, cfg = _sms_args(args)
                self.sms_config[patient] = cfg
                result = {"ok": True, "numbers": len(cfg.numbers)}
            else:
                return None
        except (ThresholdError, ScheduleError, ValueError) as exc:
            return {"error": str(exc)}
        await self._save(force=True)
        self._wake.set()
        return result

    # -- the service ------------------------------------------------------------------------

    async def run(self) -> None:
        """Load the state, then process readings and ticks until cancelled."""
        await self._load()
        self.ready.set()
        try:
            while True:
                batch: tuple[Reading, ...] = ()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.tick_s):
                        batch = await self._next()
                if batch:  # outside the timeout: processing is never cut short
                    await self._process(batch)
                await self._tick()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._save(force=True))

    async def _next(self) -> tuple[Reading, ...]:
        if self._taken:
            return self._taken.pop(0)
        if self._queue.empty():
            waiter = asyncio.ensure_future(self._queue.get())
            woken = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({waiter, woken}, return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._taken.append(waiter.result())  # cut short: keep what it took
                raise
            finally:
                woken.cancel()
                if not waiter.done():
                    waiter.cancel()
            self._wake.clear()
            # the get may have completed after the wait returned: never drop what it took
            if waiter.done() and not waiter.cancelled():
                return waiter.result()
            return ()
        return self._queue.get_nowait()

    async def _process(self, batch: tuple[Reading, ...]) -> None:
        now = datetime.fromtimestamp(self.wall(), UTC)
        for r in batch:
            self._seen_devices[(r.patient, str(r.device.kind))] = _device_fields(r.device)
            kinds = kinds_of(r)
            if kinds:
                self.planner.measured(r.patient, kinds, reading_time(r))
            self._feed_night(r)
        alarms = self.evaluator.evaluate(batch, now)
        if alarms:
            await self._raise(alarms)
        self._dirty = True

    async def _raise(self, alarms: Sequence[Alarm]) -> None:
        out = [care_readings.alarm_reading(a, self.clock.now()) for a in alarms]
        await self.sink.append(out)  # durable first: never lost
        for a, r in zip(alarms, out, strict=True):
            self.outgoing.append(
                _Outgoing(
                    id=str(r.id),
                    patient=a.patient,
                    rule_id=a.rule.id,
                    limit=str(a.rule.limit),
                    for_s=a.rule.for_s,
                    started=a.started.isoformat(),
                    raised_at=self.wall(),
                    device=_device_fields(a.device),
                )
            )
            self.counters["alarms"] += 1
            _LOG.warning("care: alarm %s raised (device %s)", a.rule.id, a.device.log_id)
        await self._save(force=True)
        self._show()

    def _feed_night(self, r: Reading) -> None:
        if r.samples is None or r.decode_error is not None:
            return
        spo2 = next((c for c in r.samples.channels if c.mdc == SPO2.mdc and c.stat is None), None)
        if spo2 is None:
            return
        pulse = next(
            (
                c
                for c in r.samples.channels
                if c.mdc in (PULSE_RATE_OXIM.mdc, PULSE_RATE_BP.mdc) and c.stat is None
            ),
            None,
        )
        start = reading_time(r)
        night = (start.astimezone() - timedelta(hours=12)).date().isoformat()
        key = f"{r.patient}\x1f{r.device.transport}\x1f{r.device.serial}"
        tracker = self.nights.get(key)
        if tracker is not None and tracker.night != night:
            self._close_night(key, tracker)
            tracker = None
        if tracker is None:
            tracker = self.nights[key] = _Night(
                _device_fields(r.device), r.patient, night, OximetryNight(), self.wall()
            )
        n = len(spo2.values)
        tracker.acc.add_series(
            start,
            r.samples.interval_ms,
            [spo2.decimal(i) for i in range(n)],
            None if pulse is None else [pulse.decimal(i) for i in range(n)],
        )
        tracker.last_seen = self.wall()
        tracker.dirty = True

    def _close_night(self, key: str, tracker: _Night) -> None:
        """Summarise now if it has news (appended by the next tick's flush)."""
        self._pending_summaries.append(tracker)
        self.nights.pop(key, None)

    async def _summaries(self) -> None:
        now = self.wall()
        due = list(self._pending_summaries)
        self._pending_summaries.clear()
        for tracker in self.nights.values():
            if tracker.dirty and now - tracker.last_seen >= self.settings.night_close_after_s:
                due.append(tracker)
        out: list[Reading] = []
        for tracker in due:
            s = tracker.acc.summary()
            tracker.dirty = False
            if s is None or s.valid_ms < self.settings.min_night_valid_min * 60_000:
                continue
            out.append(
                care_readings.summary_reading(
                    s,
                    device=_device(tracker.device),
                    patient=tracker.patient,
                    captured=self.clock.now(),
                    revised=tracker.summaries > 0,
                )
            )
            tracker.summaries += 1
        if out:
            await self.sink.append(out)
            self.counters["summaries"] += len(out)
            _LOG.info("care: %d night summaries stored", len(out))
            self._dirty = True
        # forget nights that ended more than two days ago
        horizon = (datetime.now().astimezone() - timedelta(days=2)).date().isoformat()
        for key in [k for k, t in self.nights.items() if t.night < horizon and not t.dirty]:
            del self.nights[key]

    async def _tick(self) -> None:
        if self._pending_ack:
            self._pending_ack = False
            await self._acknowledge()
        await self._summaries()
        await self._reminders()
        await self._send_sms()
        self._show()
        await self._save()

    # -- reminders --------------------------------------------------------------------------

    def _local_now(self) -> datetime:
        return datetime.fromtimestamp(self.wall(), UTC).astimezone()

    async def _reminders(self) -> None:
        actions = self.planner.tick(self._local_now())
        missed: list[Reading] = []
        for a in actions:
            if a.kind is ActionKind.REMIND:
                self.counters["reminders"] += 1
                if a.sound:
                    self.indicator.chime()
            elif a.kind is ActionKind.STOP:
                self._stop_reminder(a)
            else:
                occ = a.occurrence
                seen = self._seen_devices.get((occ.patient, _KIND_DEVICE.get(str(occ.kind), "")))
                device = _device(seen) if seen is not None else self._gateway()
                missed.append(
                    care_readings.missed_reading(
                        occ, reminders=a.reminders, device=device, captured=self.clock.now()
                    )
                )
        if missed:
            await self.sink.append(missed)
            self.counters["missed"] += len(missed)
            _LOG.info("care: %d missed measurements reported", len(missed))
        if actions:
            self._dirty = True

    def _stop_reminder(self, action: Any) -> None:
        """Nothing to undo: the light follows :meth:`Planner.due` at every :meth:`_show`."""

    def _gateway(self) -> DeviceIdentity:
        return DeviceIdentity(DeviceKind.OTHER, "dho-gateway", "care", self.box_id, Transport.FILE)

    # -- alarms: light, button, SMS ---------------------------------------------------------

    def _show(self) -> None:
        alarm = any(not o.acknowledged for o in self.outgoing)
        reminder = bool(self.planner.shown(self._local_now()))  # none in quiet hours
        self._light = Concern.ALARM if alarm else Concern.REMINDER if reminder else None
        self.indicator.show(alarm=alarm, reminder=reminder)

    def light_concern(self) -> Concern | None:
        """What the status light (:mod:`agent.light`) should show for care: an alarm not yet
        acknowledged with the button, else a due measurement, else nothing.

        A condition of :class:`agent.light.StatusLight`, which calls it from a worker thread:
        it only reads the value the service set on the loop at its last change.
        """
        return self._light

    async def _acknowledge(self) -> None:
        notes: list[Reading] = []
        for o in self.outgoing:
            if not o.acknowledged:
                o.acknowledged = True
                notes.append(
                    care_readings.path_reading(
                        uuid.UUID(o.id),
                        device=_device(o.device),
                        patient=o.patient,
                        captured=self.clock.now(),
                        acknowledged_after_s=max(0, int(self.wall() - o.raised_at)),
                    )
                )
        if notes:
            await self.sink.append(notes)
            _LOG.info("care: %d alarms acknowledged at the box", len(notes))
            await self._save(force=True)

    async def _send_sms(self) -> None:
        now = self.wall()
        for o in self.outgoing:
            cfg = self.sms_config.get(o.patient)
            if o.delivered or cfg is None or not cfg.numbers or self.sms is None:
                continue
            after = cfg.after_s if cfg.after_s is not None else self.settings.sms_after_s
            if now - o.raised_at < after or now < o.next_sms_try:
                continue
            todo = [n for n in cfg.numbers if o.sms.get(n) in (None, "failed")]
            if not todo:
                continue
            await self._sms_one(o, cfg, todo)

    async def _sms_one(self, o: _Outgoing, cfg: _SmsConfig, numbers: list[str]) -> None:
        assert self.sms is not None
        for n in numbers:
            o.sms[n] = "sending"
        await self._save(force=True)  # a crash from here on never sends these again
        text = i18n.alarm_text(
            cfg.language or self.settings.language,
            rule_id=o.rule_id,
            limit=o.limit,
            for_s=o.for_s,
            time=care_readings.local_hhmm(datetime.fromisoformat(o.started)),
            ref=care_readings.short_ref(uuid.UUID(o.id)),
            label=cfg.label,
        )
        try:
            results = await asyncio.to_thread(self.sms.send, numbers, text)
        except ModemError as exc:
            for n in numbers:
                o.sms[n] = "failed"  # the modem refused before sending anything
            o.next_sms_try = self.wall() + SMS_RETRY_S
            self.counters["sms_errors"] += 1
            self.last_sms_error = exc.code
            _LOG.warning("care: alarm SMS not sent (%s); retrying later", exc.code)
            await self._save(force=True)
            return
        for d in results:
            o.sms[d.number] = str(d.outcome)
        if any(d.outcome is Outcome.FAILED for d in results):
            o.next_sms_try = self.wall() + SMS_RETRY_S
        sent = sum(1 for v in o.sms.values() if v in ("sent", "unknown"))
        _LOG.warning("care: alarm %s sent by SMS to %d numbers", o.rule_id, sent)
        if sent and not o.sms_noted:
            o.sms_noted = True
            self.counters["alarms_sms"] += 1
            await self.sink.append(
                [
                    care_readings.path_reading(
                        uuid.UUID(o.id),
                        device=_device(o.device),
                        patient=o.patient,
                        captured=self.clock.now(),
                        sms_numbers=sent,
                    )
                ]
            )
        await self._save(force=True)

    # -- state ------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "v": 1,
            "thresholds": [t.to_args() for t in self.evaluator.thresholds.values()],
            "planner": self.planner.state(),
            "sms": {
                p: [list(c.numbers), c.after_s, c.label, c.language]
                for p, c in self.sms_config.items()
            },
            "outgoing": [vars(o) for o in self.outgoing[-200:]],
            "nights": {
                k: [n.device, n.patient, n.night, n.acc.state(), n.last_seen, n.summaries, n.dirty]
                for k, n in self.nights.items()
            },
            "devices": [[p, k, d] for (p, k), d in self._seen_devices.items()],
        }

    def _restore(self, data: Mapping[str, Any]) -> None:
        if not data:
            return
        for args in data.get("thresholds", []):
            self.evaluator.set(Thresholds.from_args(args))
        if data.get("planner"):
            self.planner = Planner.from_state(data["planner"])
        for p, (numbers, after, label, lang) in data.get("sms", {}).items():
            self.sms_config[p] = _SmsConfig(tuple(numbers), after, label, lang)
        for o in data.get("outgoing", []):
            out = _Outgoing(**o)
            # a send interrupted by a crash may have gone out: never again
            out.sms = {n: ("unknown" if v == "sending" else v) for n, v in out.sms.items()}
            self.outgoing.append(out)
        for k, (device, patient, night, acc, seen, summaries, dirty) in data.get(
            "nights", {}
        ).items():
            self.nights[k] = _Night(
                device, patient, night, OximetryNight.from_state(acc), seen, summaries, dirty
            )
        for p, k, d in data.get("devices", []):
            self._seen_devices[(p, k)] = d

    async def _load(self) -> None:
        if self._kek is None:
            return
        kek = await asyncio.to_thread(self._kek)
        self._file = CareStateFile(self.state_dir / "care" / "state.bin", derive_key(kek))
        data = await asyncio.to_thread(self._file.load)
        try:
            self._restore(data)
        except (KeyError, TypeError, ValueError) as exc:
            _LOG.error("care state could not be restored (%s); starting empty", type(exc).__name__)
            self._reset_state()

    def _reset_state(self) -> None:
        self.evaluator = Evaluator()
        self.planner = Planner()
        self.sms_config = {}
        self.outgoing = []
        self.nights = {}

    async def _save(self, *, force: bool = False) -> None:
        if self._file is None:
            return
        if not force and (not self._dirty or self.wall() - self._saved_at < SAVE_EVERY_S):
            return
        # settled alarms need no more keeping
        self.outgoing = [o for o in self.outgoing if not (o.delivered and o.acknowledged)] + [
            o for o in self.outgoing if o.delivered and o.acknowledged
        ][-20:]
        state = self._state()
        await asyncio.to_thread(self._file.save, state)
        self._saved_at = self.wall()
        self._dirty = False

    async def status_section(self) -> Mapping[str, Any]:
        """Counts and states only (no patient references, numbers or values)."""
        return {
            **self.counters,
            "patients_with_thresholds": sum(
                1 for t in self.evaluator.thresholds.values() if t.rules
            ),
            "patients_with_schedule": sum(1 for s in self.planner.schedules.values() if s.slots),
            "alarms_open": sum(1 for o in self.outgoing if not o.delivered),
            "alarms_unacknowledged": sum(1 for o in self.outgoing if not o.acknowledged),
            "reminders_due": len(self.planner.due()),
            "nights_open": len(self.nights),
            "sms": "configured" if self.sms is not None else "no modem",
            "last_sms_error": self.last_sms_error,
        }


_KIND_DEVICE: Final = {
    "bp": str(DeviceKind.BP_CUFF),
    "spo2": str(DeviceKind.PULSE_OXIMETER),
    "oximetry": str(DeviceKind.PULSE_OXIMETER),
}


def _sms_args(args: Mapping[str, object]) -> tuple[str, _SmsConfig]:
    patient = args.get("patient")
    if not isinstance(patient, str) or not patient:
        raise ValueError("patient: required (the patient's opaque reference)")
    known = {"patient", "numbers", "after_min", "label", "language"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown key")
    raw = args.get("numbers", "")
    if not isinstance(raw, str):
        raise ValueError("numbers: comma-separated E.164 numbers")
    numbers = tuple(n.strip() for n in raw.split(",") if n.strip())
    if len(numbers) > 5 or not all(NUMBER.match(n) for n in numbers):
        raise ValueError("numbers: up to 5 comma-separated E.164 numbers, like +4791234567")
    after = args.get("after_min")
    if after is not None and (
        not isinstance(after, int) or isinstance(after, bool) or not 1 <= after <= 1440
    ):
        raise ValueError("after_min: must be a whole number from 1 to 1440")
    label = args.get("label", "")
    if not isinstance(label, str) or len(label) > 40:
        raise ValueError("label: at most 40 characters")
    lang = args.get("language")
    if lang is not None and lang not in i18n.LANGUAGES:
        raise ValueError(f"language: one of {', '.join(i18n.LANGUAGES)}")
    return patient, _SmsConfig(
        numbers,
        None if after is None else float(after) * 60,
        label,
        lang,
    )


class CareSink:
    """A driver sink that tells the care service what was made durable."""

    def __init__(self, inner: Sink, care: CareService) -> None:
        self.inner = inner
        self.care = care

    async def append(self, readings: Sequence[Reading]) -> AppendResult:
        """Append durably, then show the readings to the care service."""
        result = await self.inner.append(readings)
        self.care.observe(readings)
        return result

    async def append_first(self, readings: Sequence[Reading]) -> AppendResult:
        """:meth:`append` ahead of queued buffer work, when the inner sink can (``FirstSink``)."""
        if isinstance(self.inner, FirstSink):
            result = await self.inner.append_first(readings)
        else:
            result = await self.inner.append(readings)
        self.care.observe(readings)
        return result

    def transfer_hold(self, max_wait: float = 0.5) -> str | None:
        """The inner sink's :meth:`~agent.drivers.contract.FirstSink.transfer_hold`."""
        if isinstance(self.inner, FirstSink):
            return self.inner.transfer_hold(max_wait)
        return None

    async def probe_first(self) -> None:
        """The inner sink's :meth:`~agent.drivers.contract.FirstSink.probe_first`."""
        if isinstance(self.inner, FirstSink):
            await self.inner.probe_first()

    def intake_journal(self) -> Journal | None:
        """The inner sink's :meth:`~agent.drivers.contract.JournalSink.intake_journal`."""
        if isinstance(self.inner, JournalSink):
            return self.inner.intake_journal()
        return None


class DeliveryWatch:
    """The buffer as the uplink sees it, telling the care service which alarm readings the
    service acknowledged (by batch or by id)."""

    def __init__(self, buffer: Any, on_delivered: Callable[[Iterable[uuid.UUID]], None]) -> None:
        self._buffer = buffer
        self._on_delivered = on_delivered
        self._alarms: dict[int, tuple[uuid.UUID, ...]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._buffer, name)

    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        """Claim, remembering the alarm-lane readings of the batch."""
        claim = await self._buffer.claim(*args, **kwargs)
        if claim is not None:
            ids = tuple(r.id for r in claim.readings if r.lane is Lane.ALARM)
            if ids:
                self._alarms[claim.batch_id] = ids
        return claim

    async def claim_rows(self, *args: Any, **kwargs: Any) -> Any:
        """Claim stored rows (the uplink's zero-copy path), remembering the alarm-lane ones."""
        claim = await self._buffer.claim_rows(*args, **kwargs)
        rows = getattr(claim, "rows", None)
        if claim is not None and rows is not None:
            ids = tuple(
                rid
                for rid, lane in zip(rows.reading_ids, rows.lanes, strict=True)
                if lane == Lane.ALARM
            )
            if ids:
                self._alarms[claim.batch_id] = ids
        return claim

    async def ack(self, batch_id: int) -> int:
        """Acknowledge; its alarms are delivered."""
        n = int(await self._buffer.ack(batch_id))
        ids = self._alarms.pop(batch_id, ())
        if ids:
            self._on_delivered(ids)
        return n

    async def ack_ids(self, ids: Iterable[uuid.UUID]) -> int:
        """Acknowledge by id; those are delivered."""
        ids = tuple(ids)
        n = int(await self._buffer.ack_ids(ids))
        self._on_delivered(ids)
        return n

    async def release(self, batch_id: int) -> int:
        """Release (no acknowledgement; a late one still counts, so the batch is kept)."""
        while len(self._alarms) > 256:
            self._alarms.pop(next(iter(self._alarms)))
        return int(await self._buffer.release(batch_id))


CommandHandler = Callable[[str, Mapping[str, object]], Awaitable[dict[str, Any] | None]]
