"""The side-by-side workload: one patient's week offline, as our box and as the peer sees it.

Seven days that end when the network comes back (the *release*, 07:10 on day 8):

* every night 23:00-07:00, 1 Hz oximetry (SpO2 and pulse rate) from a BLE pulse oximeter: our
  driver stores 60-sample chunks with their raw notifications (what
  :class:`agent.drivers.ble.collector` keeps, ``chunk_samples=60``); the peer publishes each
  sample as one JSON message;
* every day two blood-pressure readings (08:00, 20:00) and two spot SpO2 readings (08:02,
  20:02);
* every morning at 07:05 the CPAP night: the summary, the mask-on periods and the event counts
  made by our CPAP reader's own functions (:mod:`agent.drivers.cpap.readings`) from the real
  AirSense 10 card (the fixture's copy in ``hw-mocks/hw_mocks/cpap/data/``: seven used days
  of its STR.edf, the EVE/CSL files of its one night for the events of every night). The peer
  publishes each of these as one JSON message of its values.

:func:`build` returns both views of the same readings, with each item's arrival time (seconds
before the release), so a run can take the tail that arrived since the peer's last autosave.
Pure: no I/O but reading the card once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import tarfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path

from hw_mocks import synthetic

from agent.clock import CaptureTime
from agent.drivers.cpap import edf, readings, resmed
from agent.ids import uuid7
from agent.model import (
    DeviceIdentity,
    DeviceKind,
    Lane,
    Reading,
    Transport,
)

CARD = Path(__file__).resolve().parents[1] / "hw-mocks/hw_mocks/cpap/data/resmed-airsense10.tar.xz"
"""The real AirSense 10 card, as the repository carries it (``hw_mocks.cpap.generator``)."""
PATIENT = "pt-0001"
DAYS = 7
NIGHT_S = 8 * 3600
CHUNK_S = int(os.environ.get("BENCH_CHUNK_S", "60"))
"""Seconds (1 Hz samples) per oximetry chunk: the collector's ``chunk_samples``. A bench-only
knob (``BENCH_CHUNK_S=300``) to measure longer chunks; the workload's samples are the same."""
RELEASE = datetime(2026, 11, 30, 7, 10, tzinfo=UTC)
"""When the network comes back: 07:10 after the seventh night."""
BOOT = uuid.UUID("0f8e6a52-3b1c-4c7e-9d2a-51b7e0c4a913")

OXIMETER = DeviceIdentity(
    DeviceKind.PULSE_OXIMETER, "Nonin Medical", "3230", "502841234", Transport.BLE
)
CUFF = DeviceIdentity(
    DeviceKind.BP_CUFF, "A&D Medical", "UA-651BLE", "5C:31:3E:12:34:56", Transport.BLE
)


@dataclass(frozen=True, slots=True)
class PeerMessage:
    """One MQTT message of the peer gateway (QoS 1)."""

    topic: str
    payload: bytes
    sample: bool
    """A continuous sample (else a reading)."""
    before_s: float
    """When it was published: seconds before the release."""


@dataclass(frozen=True)
class Workload:
    """The same week as our readings and as the peer's messages."""

    readings: tuple[Reading, ...]
    before_s: tuple[float, ...]
    """Arrival of each reading (its last sample for a chunk), seconds before the release."""
    messages: tuple[PeerMessage, ...]
    name: str = "week"

    @property
    def spot_count(self) -> int:
        """Readings that are not continuous chunks."""
        return sum(1 for r in self.readings if r.samples is None)

    @property
    def sample_count(self) -> int:
        """1 Hz time points of continuous oximetry (SpO2 and pulse each)."""
        return sum(r.samples.sample_count for r in self.readings if r.samples is not None)

    def tail(self, seconds: float, name: str = "tail") -> Workload:
        """Only what arrived in the last ``seconds`` before the release."""
        keep = [i for i, b in enumerate(self.before_s) if b <= seconds]
        return Workload(
            tuple(self.readings[i] for i in keep),
            tuple(self.before_s[i] for i in keep),
            tuple(m for m in self.messages if m.before_s <= seconds),
            name,
        )

    def spot_only(self) -> Workload:
        """The readings without the oximetry nights (for the per-reading figure)."""
        keep = [i for i, r in enumerate(self.readings) if r.samples is None]
        return Workload(
            tuple(self.readings[i] for i in keep),
            tuple(self.before_s[i] for i in keep),
            tuple(m for m in self.messages if not m.sample),
            "spot",
        )


def _capture(at: datetime) -> CaptureTime:
    wall = int(at.timestamp()) * 10**9
    return CaptureTime(
        wall_ns=wall, boot_id=BOOT, mono_ns=wall - 1_700_000_000 * 10**9, synced=True
    )


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _peer_values(r: Reading) -> list[dict[str, object]]:
    return [
        {"code": o.loinc or str(o.mdc), "value": None if o.value is None else str(o.value),
         "unit": o.unit}
        for o in r.observations
    ]  # fmt: skip


def _peer_reading(r: Reading, at: datetime, box: str, before: float) -> PeerMessage:
    body = {
        "id": str(r.id),
        "patient": r.patient,
        "device": r.device.serial,
        "time": _iso(at),
        "device_time": None if r.device_time is None else r.device_time.isoformat(),
        "values": _peer_values(r),
    }
    kind = r.device.kind.value
    topic = f"home/{box}/{kind}/{r.device.serial}/reading"
    return PeerMessage(topic, json.dumps(body, separators=(",", ":")).encode(), False, before)


def _oximetry_chunk(rng: random.Random, start: datetime, state: list[int]) -> Reading:
    spo2: list[int | None] = []
    pulse: list[int | None] = []
    raw: list[bytes] = []
    s, p = state
    for _ in range(CHUNK_S):
        s = min(100, max(85, s + rng.choice((-1, 0, 0, 0, 0, 1))))
        p = min(120, max(45, p + rng.choice((-2, -1, 0, 0, 0, 1, 2))))
        dropout = rng.random() < 0.005
        spo2.append(None if dropout else s)
        pulse.append(None if dropout else p)
        raw.append(synthetic.plx_frame(spo2[-1], pulse[-1]))
    state[:] = [s, p]
    chunk = synthetic.oximetry_samples(spo2, pulse)
    return Reading(
        id=uuid7(),
        device=OXIMETER,
        patient=PATIENT,
        observations=(),
        captured=_capture(start + timedelta(seconds=CHUNK_S)),
        lane=Lane.CONTINUOUS,
        device_time=start.replace(tzinfo=None),
        samples=chunk,
        raw=tuple(raw),
    )


def _peer_samples(r: Reading, start: datetime, box: str, release: datetime) -> list[PeerMessage]:
    assert r.samples is not None
    spo2, pulse = (c.values for c in r.samples.channels)
    topic = f"home/{box}/{r.device.kind.value}/{r.device.serial}/sample"
    out = []
    for i, (s, p) in enumerate(zip(spo2, pulse, strict=True)):
        at = start + timedelta(seconds=i)
        body = {"id": f"{r.id}:{i}", "patient": r.patient, "device": r.device.serial,
                "time": _iso(at), "spo2": s, "pulse": p}  # fmt: skip
        payload = json.dumps(body, separators=(",", ":")).encode()
        out.append(PeerMessage(topic, payload, True, (release - at).total_seconds()))
    return out


def _bp(rng: random.Random, at: datetime) -> Reading:
    sys_ = 125 + rng.randrange(-15, 25)
    dia = 78 + rng.randrange(-10, 12)
    mean = (sys_ + 2 * dia) // 3
    pulse = 66 + rng.randrange(-8, 20)
    raw = synthetic.bp_frame(sys_, dia, mean, pulse, b"\xea\x07\x0b\x1e\x08\x00\x00")
    return Reading(
        id=uuid7(),
        device=CUFF,
        patient=PATIENT,
        observations=synthetic.bp_observations(sys_, dia, mean, pulse),
        captured=_capture(at),
        device_time=at.replace(tzinfo=None),
        raw=(raw,),
    )


def _spot_spo2(rng: random.Random, at: datetime) -> Reading:
    value, pulse = rng.randint(91, 98), rng.randint(55, 95)
    return Reading(
        id=uuid7(),
        device=OXIMETER,
        patient=PATIENT,
        observations=synthetic.spo2_observations(value, pulse),
        captured=_capture(at),
        raw=(synthetic.plx_frame(value, pulse),),
    )


@cache
def _card() -> tuple[DeviceIdentity, tuple[resmed.StrDay, ...], resmed.EventCounts, bytes]:
    with tarfile.open(CARD, "r:xz") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}

        def read(name: str) -> bytes:
            f = tar.extractfile(members[name])
            assert f is not None
            return f.read()

        ident = resmed.parse_identification_tgt(read("resmed-airsense10/Identification.tgt"))
        str_file = edf.read_edf(read("resmed-airsense10/STR.edf"))
        files = [edf.read_edf(read(n)) for n in sorted(members)
                 if n.endswith(("_EVE.edf", "_CSL.edf"))]  # fmt: skip
    days = tuple(d for d in resmed.decode_str(str_file, ident.family) if d.used)
    raw = b"".join(readings.annotation_bytes(f) for f in files)
    device = DeviceIdentity(
        DeviceKind.CPAP, resmed.MANUFACTURER, ident.model, ident.serial, Transport.FILE
    )
    return device, days, resmed.count_events(files), raw


def _cpap_night(day_index: int, at: datetime) -> list[Reading]:
    device, days, counts, raw = _card()
    day = days[day_index % len(days)]
    src = readings.Source(device, PATIENT, _capture(at))
    out = [readings.summary_reading(day, src), *readings.mask_readings(day, src)]
    night: date = day.day
    out.append(readings.events_reading(night, counts, [raw], src))
    return out


def build(days: int = DAYS, box: str = "box-peer-0001", seed: int = 12) -> Workload:
    """The week (or ``days``) ending at :data:`RELEASE`, both views, in arrival order."""
    rng = random.Random(seed)
    items: list[tuple[datetime, Reading, list[PeerMessage]]] = []
    first = (RELEASE - timedelta(days=days)).replace(hour=0, minute=0)
    state = [95, 64]
    for d in range(days):
        day0 = first + timedelta(days=d)
        for at, make in (
            (day0.replace(hour=8), _bp),
            (day0.replace(hour=8, minute=2), _spot_spo2),
            (day0.replace(hour=20), _bp),
            (day0.replace(hour=20, minute=2), _spot_spo2),
        ):
            r = make(rng, at)
            items.append((at, r, [_peer_reading(r, at, box, (RELEASE - at).total_seconds())]))
        start = day0.replace(hour=23)
        for c in range(NIGHT_S // CHUNK_S):
            t = start + timedelta(seconds=c * CHUNK_S)
            r = _oximetry_chunk(rng, t, state)
            items.append((t + timedelta(seconds=CHUNK_S), r, _peer_samples(r, t, box, RELEASE)))
        morning = (day0 + timedelta(days=1)).replace(hour=7, minute=5)
        for r in _cpap_night(d, morning):
            before = (RELEASE - morning).total_seconds()
            items.append((morning, r, [_peer_reading(r, morning, box, before)]))
    items.sort(key=lambda item: item[0])
    return Workload(
        tuple(r for _, r, _ in items),
        tuple((RELEASE - at).total_seconds() for at, _, _ in items),
        tuple(m for _, _, ms in items for m in ms),
    )


def describe(w: Workload) -> dict[str, int]:
    """Counts for the report."""
    return {
        "readings": len(w.readings),
        "spot_readings": w.spot_count,
        "oximetry_chunks": len(w.readings) - w.spot_count,
        "samples": w.sample_count,
        "peer_messages": len(w.messages),
        "peer_payload_bytes": sum(len(m.payload) for m in w.messages),
    }


def reading_ids(readings_: Sequence[Reading]) -> set[uuid.UUID]:
    """The ids a receiver must end up holding."""
    return {r.id for r in readings_}


def replace_patient(w: Workload, patient: str) -> Workload:
    """The same workload for another patient reference (tests)."""
    return dataclasses.replace(
        w, readings=tuple(dataclasses.replace(r, patient=patient) for r in w.readings)
    )


def patient_day(seed: int = 5) -> list[Reading]:
    """One patient-day in steady state, in arrival order: a night of oximetry (480 chunks of
    60 s), two blood-pressure readings and one CPAP night (summary, mask-on periods, events)."""
    week = build(days=1, seed=seed)
    return [r for r in week.readings if r.samples is not None or r.device is not OXIMETER]
