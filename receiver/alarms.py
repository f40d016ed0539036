"""The service's view of the box's alarms: one alarm, with the paths that carried it.

A box raises an alarm as an alarm-lane reading (status ``alarm``, ``alarm:<rule>``) and
delivers it through the uplink, exactly once. When the uplink stayed down too long it also
sent it by SMS, and says so afterwards with a note (status ``alarm-path:sms`` and
``alarm-ref:<alarm reading id>``); a press of the box's button is a note too
(``alarm-acknowledged``). :func:`alarm_records` folds the notes into their alarm, so the
service sees each alarm once, with ``paths`` ``("uplink",)`` or ``("sms", "uplink")``
(``docs/care.md``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from agent import codes
from agent.model import Reading
from dho_protocol import utc_datetime
from receiver.store import StoredReading


def is_alarm(r: Reading) -> bool:
    """An alarm the box raised (not a note about one)."""
    return codes.STATUS_ALARM in r.status


def alarm_ref(r: Reading) -> uuid.UUID | None:
    """The alarm a note refers to (``None`` for other readings)."""
    for flag in r.status:
        if flag.startswith(codes.STATUS_REF_PREFIX):
            try:
                return uuid.UUID(flag[len(codes.STATUS_REF_PREFIX) :])
            except ValueError:
                return None
    return None


@dataclass(frozen=True, slots=True)
class AlarmRecord:
    """One alarm as the service sees it."""

    reading_id: uuid.UUID
    box_id: str
    patient: str
    rule: str
    started: datetime
    paths: tuple[str, ...]
    sms_numbers: int = 0
    acknowledged_at_box: bool = False


def _rule(r: Reading) -> str:
    return next(
        (f.split(":", 1)[1] for f in sorted(r.status) if f.startswith(f"{codes.STATUS_ALARM}:")), ""
    )


def alarm_records(stored: Iterable[StoredReading]) -> list[AlarmRecord]:
    """Every alarm in ``stored``, each once, with its paths (in the order raised)."""
    alarms: dict[tuple[str, uuid.UUID], StoredReading] = {}
    sms: dict[tuple[str, uuid.UUID], int] = {}
    acked: set[tuple[str, uuid.UUID]] = set()
    for s in stored:
        r = s.reading
        if is_alarm(r):
            alarms[(s.box_id, r.id)] = s
            continue
        ref = alarm_ref(r)
        if ref is None:
            continue
        if codes.STATUS_PATH_SMS in r.status:
            n = next((int(o.value) for o in r.observations if o.value is not None), 0)
            sms[(s.box_id, ref)] = max(n, sms.get((s.box_id, ref), 0))
        if codes.STATUS_ACKNOWLEDGED in r.status:
            acked.add((s.box_id, ref))
    out = []
    for key, s in alarms.items():
        r = s.reading
        paths = ("sms", "uplink") if key in sms else ("uplink",)
        started = r.device_time or utc_datetime(r.captured.wall_ns)
        out.append(
            AlarmRecord(
                r.id, s.box_id, r.patient, _rule(r), started, paths, sms.get(key, 0), key in acked
            )
        )
    out.sort(key=lambda a: a.reading_id.bytes)  # UUIDv7: the order raised
    return out
