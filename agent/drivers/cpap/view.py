"""The JSON view of a card's nights, printed by ``dho-agent decode cpap.resmed PATH``.

One JSON object per night (oldest first; ``dho-agent decode`` prints one per line)::

    {"date": "2024-11-28",            # the night's start date (noon boundary, device clock)
     "usage_min": 475, "ahi": 0.6,    # the machine's own STR.edf summary of that day
     "ai": ..., "hi": ..., "oai": ..., "cai": ..., "uai": ...,
     "leak50_l_min": 0, "leak95_l_min": 4.8,
     "mask_press50": 6.12, "mask_press95": 7.44,       # cmH2O
     "mode": "apap", "mode_number": 1,
     "settings": {"apap_min_pressure": 8.00, ...},
     "mask_on": [{"on": "2024-11-28T21:45:00", "off": "2024-11-29T03:31:00", "minutes": 346}],
     "obstructive_apneas": 12, "central_apneas": 59, "hypopneas": 9,
     "apneas": 0, "arousals": 0,      # counted from the night's EVE/CSL files
     "files": ["BRP", "CSL", ...],
     "problems": []}

A value the card marks as missing is ``null``; so are the event counts of a night without a
complete EVE file (the STR summary has indices per hour, not counts). Numbers are written from
exact decimals. Serial numbers are not printed.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from agent.drivers.contract import JsonValue
from agent.drivers.cpap import card, resmed

EVENT_KEYS: tuple[tuple[str, resmed.EventKind], ...] = (
    ("obstructive_apneas", resmed.EventKind.OBSTRUCTIVE_APNEA),
    ("central_apneas", resmed.EventKind.CENTRAL_APNEA),
    ("hypopneas", resmed.EventKind.HYPOPNEA),
    ("apneas", resmed.EventKind.APNEA),
    ("arousals", resmed.EventKind.AROUSAL),
)


def _settings(s: resmed.Settings) -> dict[str, JsonValue]:
    return {
        "cpap_pressure": s.cpap_pressure,
        "apap_min_pressure": s.apap_min_pressure,
        "apap_max_pressure": s.apap_max_pressure,
        "start_pressure": s.start_pressure,
        "epr_level": s.epr_level,
        "ramp_time_min": s.ramp_time_min,
    }


def night_document(
    night: resmed.Night, file_problems: dict[str, tuple[str, ...]]
) -> dict[str, JsonValue]:
    """One night as the JSON object described in the module docstring."""
    s = night.summary
    doc: dict[str, JsonValue] = {"date": night.day.isoformat()}
    fields: dict[str, Decimal | None] = {
        "usage_min": None if s is None else s.usage_min,
        "ahi": None if s is None else s.ahi,
        "ai": None if s is None else s.ai,
        "hi": None if s is None else s.hi,
        "oai": None if s is None else s.oai,
        "cai": None if s is None else s.cai,
        "uai": None if s is None else s.uai,
        "leak50_l_min": None if s is None else s.leak50_l_min,
        "leak95_l_min": None if s is None else s.leak95_l_min,
        "mask_press50": None if s is None else s.mask_press50,
        "mask_press95": None if s is None else s.mask_press95,
    }
    doc.update(fields)
    doc["mode"] = None if s is None or s.mode is None else str(s.mode)
    doc["mode_number"] = None if s is None else s.mode_number
    doc["settings"] = None if s is None else _settings(s.settings)
    doc["mask_on"] = [
        {"on": m.on.isoformat(), "off": m.off.isoformat(), "minutes": m.minutes}
        for m in (() if s is None else s.mask_intervals)
    ]
    for key, kind in EVENT_KEYS:
        doc[key] = None if night.events is None else night.events.count(kind)
    doc["files"] = list[JsonValue](sorted({str(f.kind) for f in night.files}))
    problems: list[JsonValue] = [] if s is None else [str(p) for p in s.problems]
    for f in night.files:
        problems.extend(f"{f.kind}: {p}" for p in file_problems.get(f.path, ()))
    doc["problems"] = problems
    return doc


def read_card(path: Path) -> list[dict[str, JsonValue]]:
    """The ``cpap.resmed`` path profile: one document per night of the card at ``path``.

    Raises :class:`~agent.errors.CodecError` (profile ``cpap.resmed``, one line) when ``path``
    holds no ResMed card or the card cannot be read.
    """
    try:
        loaded = card.load_card(path)
    except card.CardIOError as exc:
        raise resmed.ResmedError(str(exc)) from exc
    return [night_document(n, loaded.file_problems) for n in loaded.nights]
