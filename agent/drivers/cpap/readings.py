"""From decoded ResMed nights to :class:`~agent.model.Reading` objects (pure).

Per night, in the spot lane (uploaded before any detail):

* **summary**: the STR.edf record of the day (usage, AHI and its parts, leak 50/95 in L/min,
  mask pressure 50/95, mode, settings), ``device_time`` = noon of the sleep day (device clock,
  no zone), ``raw`` = the record's bytes;
* **mask-on periods**: one reading per period, ``device_time`` = mask on, value = minutes;
* **events**: counts per event kind over the night's EVE/CSL files, ``device_time`` = noon.

Detail, in the bulk lane: every BRP/PLD/SAD file as :class:`~agent.model.SampleChunk` readings
of whole records, aligned to fixed record groups (so a file read again yields the same chunks),
``device_time`` = the first sample. Only records whose Crc16 verified are used; a failed
record splits the chunk rather than being filled in.

The natural key (device + device time + values; for chunks also the sample count, interval and
channels) makes a re-imported night produce no twins in the buffer or at the service. A night
whose content *changed* (the machine rewrote the day, a new session appeared) gives readings
with new values; those carry the status flag :data:`STATUS_AMENDED` and the same
``device_time`` and codes as the readings they supersede.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Final
from uuid import UUID

from agent import codes
from agent.clock import CaptureTime
from agent.drivers.cpap import edf, resmed
from agent.ids import uuid7
from agent.model import Absent, Channel, DeviceIdentity, Lane, Observation, Reading, SampleChunk

STATUS_AMENDED: Final = "amended"
"""This reading supersedes an earlier one with the same device, device time and codes."""
STATUS_INCOMPLETE_FILE: Final = "cpap-file-incomplete"
"""Detail from a file that never verified completely: only its verified records were used."""

SAMPLE_BUDGET: Final = 16_384
"""Samples (all channels) per chunk; BRP gives 5-minute chunks, PLD and SAD one hour."""
MAX_RECORDS_PER_CHUNK: Final = 60
MAX_RAW_BYTES: Final = 64 * 1024

_MODE_VALUE: Final[dict[resmed.TherapyMode, str]] = {
    resmed.TherapyMode.CPAP: "cpap",
    resmed.TherapyMode.APAP: "cpap-auto",
    resmed.TherapyMode.APAP_FOR_HER: "cpap-auto",
    resmed.TherapyMode.BILEVEL_T: "bpap-t",
    resmed.TherapyMode.BILEVEL_S: "bpap-s",
    resmed.TherapyMode.BILEVEL_ST: "bpap-st",
    resmed.TherapyMode.VAUTO: "bpap-s-auto",
    resmed.TherapyMode.ASV: "acsv",
    resmed.TherapyMode.ASV_AUTO: "acsv",
}

DETAIL_CODES: Final[dict[str, codes.Code]] = {
    "flow": codes.AIRWAY_FLOW,
    "mask_pressure": codes.CPAP_PRESS,
    "therapy_pressure": codes.CPAP_THERAPY_PRESSURE,
    "epr_pressure": codes.CPAP_EPR_PRESSURE,
    "leak": codes.CPAP_LEAK,
    "resp_rate": codes.CPAP_RESP_RATE,
    "tidal_volume": codes.CPAP_TIDAL_VOLUME,
    "minute_vent": codes.CPAP_MINUTE_VENTILATION,
    "snore": codes.CPAP_SNORE,
    "flow_limitation": codes.CPAP_FLOW_LIMITATION,
    "pulse": codes.PULSE_RATE_OXIM,
    "spo2": codes.SPO2,
}

EVENT_CODES: Final[tuple[tuple[resmed.EventKind, codes.Code], ...]] = (
    (resmed.EventKind.OBSTRUCTIVE_APNEA, codes.CPAP_OBSTRUCTIVE_APNEAS),
    (resmed.EventKind.CENTRAL_APNEA, codes.CPAP_CENTRAL_APNEAS),
    (resmed.EventKind.HYPOPNEA, codes.CPAP_HYPOPNEAS),
    (resmed.EventKind.APNEA, codes.CPAP_UNCLASSIFIED_APNEAS),
    (resmed.EventKind.AROUSAL, codes.CPAP_AROUSALS),
)


@dataclass(frozen=True, slots=True)
class Source:
    """Who the readings are from and when the box captured them."""

    device: DeviceIdentity
    patient: str
    captured: CaptureTime


def mode_value(mode: resmed.TherapyMode) -> int:
    """The MDC enumeration code carried as the value of a :data:`codes.CPAP_MODE` reading."""
    return codes.CPAP_MODE_VALUES[_MODE_VALUE.get(mode, "undetermined")]


def _obs(code: codes.Code, value: Decimal | int | None, unit: str) -> Observation:
    if value is None:
        return Observation.missing(code, unit, Absent.MISSING)
    return Observation.of(code, value, unit)


def summary_observations(day: resmed.StrDay) -> tuple[Observation, ...]:
    """The summary's observations: core values always (missing ones marked so), settings and
    rarer indices only when the card has them."""
    out = [
        _obs(codes.CPAP_USAGE, day.usage_min, "min"),
        _obs(codes.CPAP_AHI, day.ahi, "/h"),
        _obs(codes.CPAP_AI, day.ai, "/h"),
        _obs(codes.CPAP_HI, day.hi, "/h"),
        _obs(codes.CPAP_OAI, day.oai, "/h"),
        _obs(codes.CPAP_CAI, day.cai, "/h"),
        _obs(codes.CPAP_UAI, day.uai, "/h"),
        _obs(codes.CPAP_LEAK_P50, day.leak50_l_min, "L/min"),
        _obs(codes.CPAP_LEAK_P95, day.leak95_l_min, "L/min"),
        _obs(codes.CPAP_PRESS_P50, day.mask_press50, "cm[H2O]"),
        _obs(codes.CPAP_PRESS_P95, day.mask_press95, "cm[H2O]"),
        _obs(codes.CPAP_MODE, None if day.mode is None else mode_value(day.mode), "1"),
        _obs(codes.CPAP_MASK_EVENTS, day.mask_events, "1"),
    ]
    optional: Sequence[tuple[codes.Code, Decimal | None, str]] = (
        (codes.CPAP_RERA_INDEX, day.rin, "/h"),
        (codes.CPAP_CSR_TIME, day.csr_min, "min"),
        (codes.CPAP_SET_PRESSURE, day.settings.cpap_pressure, "cm[H2O]"),
        (codes.CPAP_SET_MIN_PRESSURE, day.settings.apap_min_pressure, "cm[H2O]"),
        (codes.CPAP_SET_MAX_PRESSURE, day.settings.apap_max_pressure, "cm[H2O]"),
        (codes.CPAP_SET_START_PRESSURE, day.settings.start_pressure, "cm[H2O]"),
        (codes.CPAP_SET_EPR_LEVEL, day.settings.epr_level, "cm[H2O]"),
        (codes.CPAP_RAMP_TIME_SET, day.settings.ramp_time_min, "min"),
    )
    out.extend(Observation.of(c, v, u) for c, v, u in optional if v is not None)
    return tuple(out)


def summary_reading(day: resmed.StrDay, src: Source, *, amended: bool = False) -> Reading:
    """The night's STR summary as one spot reading."""
    status = {"cpap-summary"}
    if day.mode is not None:
        status.add(f"cpap-mode={day.mode}")
    if amended:
        status.add(STATUS_AMENDED)
    return Reading(
        id=uuid7(),
        device=src.device,
        patient=src.patient,
        observations=summary_observations(day),
        captured=src.captured,
        lane=Lane.SPOT,
        device_time=day.start,
        status=frozenset(status),
        raw=(day.raw,),
    )


def mask_readings(day: resmed.StrDay, src: Source) -> tuple[Reading, ...]:
    """One spot reading per mask-on period (``device_time`` = mask on, value = minutes)."""
    return tuple(
        Reading(
            id=uuid7(),
            device=src.device,
            patient=src.patient,
            observations=(Observation.of(codes.CPAP_MASK_ON_PERIOD, m.minutes, "min"),),
            captured=src.captured,
            lane=Lane.SPOT,
            device_time=m.on,
            status=frozenset({"cpap-mask-on"}),
        )
        for m in day.mask_intervals
    )


def events_reading(
    night: date,
    counts: resmed.EventCounts,
    raw: Sequence[bytes],
    src: Source,
    *,
    amended: bool = False,
) -> Reading:
    """The night's event counts as one spot reading (``raw``: the annotation bytes, capped)."""
    status = {"cpap-events"}
    if counts.unknown_labels:
        status.add("cpap-unknown-event-labels")
    if amended:
        status.add(STATUS_AMENDED)
    kept: list[bytes] = []
    budget = MAX_RAW_BYTES
    for part in raw:
        if budget <= 0:
            break
        kept.append(part[:budget])
        budget -= len(kept[-1])
    return Reading(
        id=uuid7(),
        device=src.device,
        patient=src.patient,
        observations=tuple(
            Observation.of(code, counts.count(kind), "1") for kind, code in EVENT_CODES
        ),
        captured=src.captured,
        lane=Lane.SPOT,
        device_time=resmed.noon_of(night),
        status=frozenset(status),
        raw=tuple(kept),
    )


def annotation_bytes(file: edf.EdfFile) -> bytes:
    """The annotation signal of every verified record, for a reading's ``raw``."""
    index = file.header.annotation_signal
    if index is None:
        return b""
    offset = file.header.signal_offsets()[index]
    width = 2 * file.header.signals[index].samples_per_record
    return b"".join(
        file.record(r)[offset : offset + width].rstrip(b"\x00") for r in file.good_records
    )


def records_per_chunk(signals: Sequence[resmed.DetailSignal]) -> int:
    """Whole records per chunk for these signals (:data:`SAMPLE_BUDGET` samples at most)."""
    per_record = sum(s.header.samples_per_record for s in signals) or 1
    return max(1, min(MAX_RECORDS_PER_CHUNK, SAMPLE_BUDGET // per_record))


def _runs(records: Sequence[int]) -> Iterator[list[int]]:
    run: list[int] = []
    for r in records:
        if run and r != run[-1] + 1:
            yield run
            run = []
        run.append(r)
    if run:
        yield run


def chunk_groups(file: edf.EdfFile, per_chunk: int) -> Iterator[list[int]]:
    """Runs of verified records, cut at fixed multiples of ``per_chunk`` (stable boundaries)."""
    good = set(file.good_records)
    for start in range(0, file.record_count, per_chunk):
        group = [r for r in range(start, min(start + per_chunk, file.record_count)) if r in good]
        yield from _runs(group)


def chunk_readings(
    session: resmed.SessionFile,
    file: edf.EdfFile,
    src: Source,
    *,
    incomplete: bool = False,
    amended_from_record: int | None = None,
) -> Iterator[Reading]:
    """The detail of one BRP/PLD/SAD file as bulk-lane sample chunks (see the module docstring).

    ``amended_from_record``: chunks reaching past this record supersede shorter chunks sent
    earlier from the same file (it had been imported incomplete), so they carry
    :data:`STATUS_AMENDED`.
    """
    header = file.header
    if header.discontinuous or header.record_duration <= 0:
        return
    signals = resmed.detail_signals(session.kind, header)
    by_interval: dict[int, list[resmed.DetailSignal]] = {}
    for s in signals:
        by_interval.setdefault(s.interval_ms, []).append(s)
    base = {f"cpap-{session.kind.lower()}"}
    if incomplete:
        base.add(STATUS_INCOMPLETE_FILE)
    for interval, group in sorted(by_interval.items()):
        per_chunk = records_per_chunk(group)
        for records in chunk_groups(file, per_chunk):
            channels = []
            for s in group:
                lo, hi = s.header.digital_min, s.header.digital_max
                m, a = s.scale.multiplier, s.scale.addend
                values = tuple(
                    v * m + a if lo <= v <= hi else None for v in file.samples(s.index, records)
                )
                if all(v is None for v in values):
                    continue  # e.g. SAD without an oximeter: all -1
                unit = resmed.DETAIL_UNITS[s.name][0]
                code = DETAIL_CODES[s.name]
                channels.append(Channel(code.mdc, code.loinc, unit, s.scale.exponent, values))
            if not channels:
                continue
            status = set(base)
            if amended_from_record is not None and records[-1] >= amended_from_record:
                status.add(STATUS_AMENDED)
            offset = header.record_duration * records[0]
            yield Reading(
                id=uuid7(),
                device=src.device,
                patient=src.patient,
                observations=(),
                captured=src.captured,
                lane=Lane.BULK,
                device_time=header.start + timedelta(microseconds=int(offset * 1_000_000)),
                status=frozenset(status),
                samples=SampleChunk(interval_ms=interval, channels=tuple(channels)),
            )


def file_reading_id(device: DeviceIdentity, path: str, size: int, mtime_ns: int, what: str) -> UUID:
    """A UUIDv7 that names one version of one card file (and ``what`` of it), the same on
    every scan: its time is the file's mtime, its other bits a SHA-256 of the device, the
    path, size, mtime and ``what``.

    An undecodable reading has no natural key, so the buffer knows it by its id alone; with a
    fresh id, a scan stopped (killed, cancelled, the progress file not written) between the
    append's commit and the file's progress being saved stored the same file's record again
    on the next scan. With this id the buffer drops the repeat (``agent/buffer/dedup.py``)."""
    digest = hashlib.sha256(
        "\x00".join(
            (device.transport, device.serial, path, str(size), str(mtime_ns), what)
        ).encode()
    ).digest()
    ms = (max(0, mtime_ns) // 1_000_000) & ((1 << 48) - 1)
    rand_a = int.from_bytes(digest[:2], "big") & 0xFFF
    rand_b = int.from_bytes(digest[2:10], "big") & ((1 << 62) - 1)
    return UUID(int=ms << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b)


def undecodable_reading(
    error: edf.EdfError, src: Source, file: tuple[str, int, int] | None = None
) -> Reading:
    """A file that could not be used at all, kept for audit (its header bytes and the error).

    ``file`` (path, size, mtime_ns): the card file it is about, which makes the reading's id
    the same on every scan of that file version (:func:`file_reading_id`), so storing it is
    idempotent."""
    raw = error.raw or b"\x00"
    return Reading.undecodable(
        id=uuid7() if file is None else file_reading_id(src.device, *file, "undecodable"),
        device=src.device,
        patient=src.patient,
        captured=src.captured,
        raw=raw,
        error=str(error),
    )
