"""How the box is doing, judged from its status report: pure, no I/O.

One judgement for every reader: ``dho-provision status`` and ``selftest`` show the
technician the problems with a next step each; the status light (:mod:`agent.light`) shows
the patient the worst of them as one of a few states. The input is the agent's status report
(``status.json``, :mod:`agent.status`) as a plain mapping; sections a report lacks are
simply not judged.

Problems carry a :class:`Concern`: what the patient's light shows for it. Adding a concern
(issue 11 adds alarms and reminders) means adding it here with its rank, and a pattern for
it in :mod:`agent.light`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

STALE_AFTER_S: Final = 45.0
"""A report older than this (the agent writes one every 10 s) means the agent is not running."""
REFUSALS_RECENT_S: Final = 3600.0


class Concern(Enum):
    """What the patient's light shows, worst last (the light shows the worst present)."""

    WELL = (0, "all well")
    OFFLINE = (1, "offline, readings kept safely on the box")
    REMINDER = (2, "time to measure")
    """A measurement is due and has not come yet (``docs/care.md``, reminders). Above offline
    (a measurement taken offline is kept and sent later), below a device or the box needing
    attention (the patient may not be able to measure then, and must be told why)."""
    DEVICE = (3, "a device needs attention")
    FAULT = (4, "the box needs attention")
    ALARM = (5, "alarm: press the button to acknowledge")
    """An alarm the patient has not acknowledged at the box (``docs/care.md``): the worst."""

    def __init__(self, rank: int, meaning: str) -> None:
        self.rank = rank
        self.meaning = meaning

    def said(self, language: str = "nb") -> str:
        """The meaning in the patient's language (the message catalogue, agent/care/i18n.py)."""
        from agent.care.i18n import _

        return _(self.meaning, language)


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing that is not right, said for a technician."""

    code: str
    what: str
    next_step: str
    concern: Concern


@dataclass(frozen=True, slots=True)
class Health:
    """The judgement of one report."""

    problems: tuple[Problem, ...] = ()
    age_s: float | None = None
    running: bool = False

    @property
    def concern(self) -> Concern:
        """The worst concern (what the light shows)."""
        return max((p.concern for p in self.problems), key=lambda c: c.rank, default=Concern.WELL)

    @property
    def ok(self) -> bool:
        """Nothing to do."""
        return not self.problems


_FAULT_ALARMS: Final = {
    "buffer.full": (
        "the buffer is full: new continuous data is refused",
        "get the box online so the backlog drains; raise [buffer] cap_mb only if the disk allows",
    ),
    "storage.full": (
        "the data partition is full",
        "free space on the data partition (the reserve was used)",
    ),
}
_ATTENTION_ALARMS: Final = {
    "buffer.pressure": (
        "the buffer is above 90 % of its cap (detail is being compacted)",
        "check the uplink: is the box offline?",
    ),
    "rows.quarantined": (
        "stored rows failed authentication and were quarantined",
        "report to second line with the box id",
    ),
    "store.set-aside": (
        "a damaged store was set aside at start-up",
        "keep the set-aside file for forensics and report it",
    ),
    "key.permissions": (
        "the buffer key file had wrong permissions (reset)",
        "find out what changed it",
    ),
}


def _uplink(up: Mapping[str, Any], now: float) -> Iterable[Problem]:
    link = str(up.get("link", "unknown"))
    error = str(up.get("last_error") or "")
    if "CertificateRejectedError" in error:
        yield Problem(
            "uplink.rejected",
            f"the service refuses this box's certificate ({error})",
            "the box may be revoked: dho-provision enroll with a new token",
            Concern.FAULT,
        )
    elif "ClockImplausibleError" in error:
        yield Problem(
            "clock.wrong",
            "the clock is wrong, so the box cannot connect (readings are kept)",
            "get the box online so NTP can set the clock (timedatectl)",
            Concern.OFFLINE,
        )
    elif link != "connected":
        yield Problem(
            "uplink.offline",
            f"not connected to the service ({link}{': ' + error if error else ''}); "
            "readings are kept on the box",
            "check the mobile signal; uploads resume by themselves",
            Concern.OFFLINE,
        )
    refused = int(up.get("batches_refused", 0) or 0)
    last_refused = up.get("last_refused_unix")
    recent = last_refused is None or now - float(last_refused) < REFUSALS_RECENT_S
    if refused and recent:
        yield Problem(
            "uplink.refused",
            f"the service refused {refused} batch(es) (last: {up.get('last_refusal') or '?'})",
            "dho-receiver boxes at the service shows why; re-enrol if the box is unknown there",
            Concern.FAULT,
        )
    unacked = int(up.get("batches_unacknowledged", up.get("acks_timed_out", 0)) or 0)
    if unacked and link == "connected" and not up.get("last_upload_unix"):
        yield Problem(
            "uplink.unacknowledged",
            f"{unacked} batch(es) sent but never acknowledged",
            "the service's receiver may be down; ask the service",
            Concern.OFFLINE,
        )


def _devices(report: Mapping[str, Any], now: float) -> Iterable[Problem]:
    for name, section in report.items():
        if not isinstance(section, Mapping):
            continue
        adapter = section.get("adapter")
        if (
            isinstance(adapter, Mapping)
            and adapter.get("state") not in (None, "powered", "on")
            and adapter.get("last_error_class")
        ):
            yield Problem(
                f"{name}.adapter",
                f"the {name} adapter is {adapter.get('state')} ({adapter.get('last_error_class')})",
                "dho-provision selftest checks the adapter",
                Concern.FAULT,
            )
        entries = [
            dev
            for key in ("devices", "ports", "cards")
            for dev in (section.get(key) or ())
            if isinstance(dev, Mapping)
        ]
        for dev in entries:
            state = str(dev.get("state", ""))
            ident = dev.get("device", "?")
            if dev.get("alarm") == "ble.held-for-store":
                since = dev.get("store_wait_since")
                waited = (
                    f" for {max(0.0, now - float(since)) / 60:.0f} min"
                    if isinstance(since, int | float)
                    else ""
                )
                yield Problem(
                    "ble.held-for-store",
                    f"device {ident} ({dev.get('family', name)}) deletes what it sends, and its "
                    f"records have waited on it{waited} because the buffer cannot take them "
                    f"({dev.get('store_wait_reason') or '?'}); it keeps them, but its memory "
                    "is finite",
                    "fix the store (dho-agent buffer status: storage.full? a failing SD card?); "
                    "the device sends what it kept at its next measurement",
                    Concern.FAULT,
                )
            if state in ("re-pair-needed", "unplugged", "missing", "port-missing"):
                yield Problem(
                    "device.attention",
                    f"device {ident} ({dev.get('family', name)}): {state}",
                    "pair it again (dho-provision pair)"
                    if state == "re-pair-needed"
                    else "check the cable and the port (dho-provision serial)",
                    Concern.DEVICE,
                )


def _care(care: Mapping[str, Any]) -> Iterable[Problem]:
    unacked = int(care.get("alarms_unacknowledged", 0) or 0)
    if unacked:
        yield Problem(
            "care.alarm",
            f"{unacked} alarm(s) not yet acknowledged with the button at the box",
            "the patient (or you) presses the button once; the service has the alarm",
            Concern.ALARM,
        )
    error = care.get("last_sms_error")
    if error and int(care.get("alarms_open", 0) or 0):
        yield Problem(
            "care.sms",
            f"an alarm SMS could not be sent ({error})",
            "check the modem, its SIM (no PIN) and the signal; it is retried every 2 minutes",
            Concern.DEVICE,
        )


def assess(
    report: Mapping[str, Any] | None, *, now: float | None = None, process_gone: bool = False
) -> Health:
    """Judge a status report (see the module docstring).

    The agent counts as stopped when the report says so (``stopped_at``, written at its
    clean exit), when it is older than :data:`STALE_AFTER_S`, or when the caller found its
    process gone (``process_gone``: a crash or a kill leaves no ``stopped_at``).
    """
    now = time.time() if now is None else now
    if not report:
        return Health(
            (
                Problem(
                    "agent.no-report",
                    "the agent has not written a status report",
                    "start it: systemctl start dho-agent (journalctl -u dho-agent says why not)",
                    Concern.FAULT,
                ),
            )
        )
    age = now - float(report.get("written_at", 0) or 0)
    problems: list[Problem] = []
    stopped_at = report.get("stopped_at")
    running = age <= STALE_AFTER_S and not stopped_at and not process_gone
    if not running:
        why = (
            f"it stopped {max(0.0, now - float(stopped_at)):.0f} s ago"
            if stopped_at
            else "its process is gone"
            if process_gone and age <= STALE_AFTER_S
            else f"its last report is {age:.0f} s old"
        )
        problems.append(
            Problem(
                "agent.stopped",
                f"the agent is not running: {why}",
                "systemctl status dho-agent; journalctl -u dho-agent -b says why",
                Concern.FAULT,
            )
        )
    services = report.get("services")
    if isinstance(services, Mapping):
        for name, st in services.items():
            if isinstance(st, Mapping) and st.get("state") == "backoff":
                problems.append(
                    Problem(
                        "service.failing",
                        f"service {name} keeps failing ({st.get('last_error') or '?'})",
                        "journalctl -u dho-agent shows the error",
                        Concern.FAULT,
                    )
                )
    buf = report.get("buffer")
    if isinstance(buf, Mapping):
        for alarm in buf.get("alarms", []) or []:
            if alarm in _FAULT_ALARMS:
                what, step = _FAULT_ALARMS[alarm]
                problems.append(Problem(alarm, what, step, Concern.FAULT))
            elif alarm in _ATTENTION_ALARMS:
                what, step = _ATTENTION_ALARMS[alarm]
                problems.append(Problem(alarm, what, step, Concern.OFFLINE))
    up = report.get("uplink")
    if isinstance(up, Mapping):
        problems.extend(_uplink(up, now))
    problems.extend(_devices(report, now))
    care = report.get("care")
    if isinstance(care, Mapping):
        problems.extend(_care(care))
    return Health(tuple(problems), age_s=age, running=running)
