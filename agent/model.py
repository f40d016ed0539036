"""The reading: what every driver produces and what the buffer stores and the uplink sends.

A :class:`Reading` is one measurement event from one device:

* a UUIDv7 ``id`` assigned at capture (the idempotency key end to end),
* the :class:`DeviceIdentity` and the opaque ``patient`` reference set at provisioning,
* one or more :class:`Observation` (MDC code with LOINC alongside, exact decimal value, the
  UCUM unit as the device reported it: no silent unit conversion),
* named device ``status`` flags, the device's own timestamp when it has one, and the gateway's
  :class:`~agent.clock.CaptureTime`,
* for continuous signals, a :class:`SampleChunk` of many samples instead of one row each,
* the ``raw`` device frames, kept for audit.

A payload that fails to decode is not dropped: it becomes a reading with no observations, its
``raw`` bytes, and ``decode_error`` naming the profile and what was wrong (see
:meth:`Reading.undecodable`). It is stored, encrypted and delivered like any other, so the
service and the technician can see it.

Values are :class:`decimal.Decimal` because IEEE 11073 numbers are ``mantissa * 10**exponent``:
a float would turn 36.6 into 36.600000000000001. A value the device marked as not a number,
not at this resolution, or infinite has ``value=None`` and ``absent`` saying which; it is never
turned into a plausible number.
"""

from __future__ import annotations

import hashlib
import operator
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from enum import IntEnum, StrEnum

from agent import codes
from agent.clock import CaptureTime, ClockAnchor


class Transport(StrEnum):
    """How the device reaches the box."""

    BLE = "ble"
    SERIAL = "serial"
    FILE = "file"


class DeviceKind(StrEnum):
    """What the device is, clinically."""

    BP_CUFF = "bp-cuff"
    PULSE_OXIMETER = "pulse-oximeter"
    CPAP = "cpap"
    OTHER = "other"


class Lane(IntEnum):
    """Upload priority. Lower goes first; within a lane, oldest first."""

    ALARM = 0
    SPOT = 1
    CONTINUOUS = 2
    BULK = 3


class Absent(StrEnum):
    """Why an observation has no value (IEEE 11073 special values, or missing)."""

    NAN = "nan"
    NRES = "nres"
    POS_INF = "+inf"
    NEG_INF = "-inf"
    RESERVED = "reserved"
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """Who measured: enough to tell two devices apart and to describe one in FHIR.

    ``serial`` is the serial number, or the Bluetooth address when the device has no readable
    serial. It is patient-linked data and never logged; use :attr:`log_id` in logs.
    """

    kind: DeviceKind
    manufacturer: str
    model: str
    serial: str
    transport: Transport

    @property
    def log_id(self) -> str:
        """A short stable id safe for logs: the kind and a hash of transport and serial."""
        digest = hashlib.blake2s(f"{self.transport}:{self.serial}".encode(), digest_size=4)
        return f"{self.kind}-{digest.hexdigest()}"


@dataclass(frozen=True, slots=True)
class Observation:
    """One measured quantity."""

    mdc: int
    loinc: str | None
    value: Decimal | None
    unit: str
    absent: Absent | None = None

    def __post_init__(self) -> None:
        if (self.value is None) == (self.absent is None):
            raise ValueError("an observation has exactly one of value and absent")
        if self.value is not None and not self.value.is_finite():
            raise ValueError("observation values are finite; use absent for special values")

    @classmethod
    def of(cls, code: codes.Code, value: Decimal | int | str, unit: str) -> Observation:
        """An observation with a value, coded from the table in :mod:`agent.codes`."""
        return cls(code.mdc, code.loinc, Decimal(value), unit)

    @classmethod
    def missing(cls, code: codes.Code, unit: str, why: Absent) -> Observation:
        """An observation the device reported as a special value."""
        return cls(code.mdc, code.loinc, None, unit, why)


SAMPLE_LIMIT = 2**62
_BY_MDC = operator.attrgetter("mdc")
_KEY_PARTS: dict[tuple[int, str, str, bool], str] = {}  # Reading.natural_key's observation parts
_KEY_PARTS_CACHED = 1024


@dataclass(frozen=True, slots=True)
class Channel:
    """One sampled signal in a chunk: values are integer mantissas times ``10**exponent``.

    ``None`` marks a sample the device flagged invalid or did not send. ``stat`` is set on
    channels produced by compaction (``"min"``, ``"mean"``, ``"max"`` over each period).
    """

    mdc: int
    loinc: str | None
    unit: str
    exponent: int
    values: tuple[int | None, ...]
    stat: str | None = None

    def __post_init__(self) -> None:
        for v in self.values:
            # Device samples are small integers; the bound keeps every codec (and the delta
            # of two samples) inside 64 bits.
            if v is not None and not -SAMPLE_LIMIT < v < SAMPLE_LIMIT:
                raise ValueError("a sample value is outside the supported range (|v| < 2**62)")

    def decimal(self, i: int) -> Decimal | None:
        """Sample ``i`` as an exact decimal."""
        v = self.values[i]
        return None if v is None else Decimal(v).scaleb(self.exponent)


@dataclass(frozen=True, slots=True)
class SampleChunk:
    """Many samples of one or more signals at a fixed interval.

    Sample ``i`` belongs to time ``start + i * interval_ms``, where ``start`` is the reading's
    device time when it has one, else its capture time.
    """

    interval_ms: int
    channels: tuple[Channel, ...]

    def __post_init__(self) -> None:
        if self.interval_ms <= 0:
            raise ValueError("interval_ms must be positive")
        lengths = {len(c.values) for c in self.channels}
        if len(lengths) > 1:
            raise ValueError("all channels of a chunk have the same number of samples")

    @property
    def sample_count(self) -> int:
        """Samples per channel."""
        return len(self.channels[0].values) if self.channels else 0

    @property
    def is_summary(self) -> bool:
        """True when this chunk was compacted into per-period statistics."""
        return any(c.stat is not None for c in self.channels)

    def summarize(self, period_ms: int = 60_000) -> SampleChunk:
        """Per-period min, mean and max of every channel: the compacted form of a chunk.

        The mean is rounded half-even to the channel's own resolution. Periods whose samples
        are all missing give ``None``.
        """
        if self.is_summary or period_ms <= self.interval_ms:
            return self
        per = max(1, period_ms // self.interval_ms)
        out: list[Channel] = []
        for ch in self.channels:
            mins: list[int | None] = []
            means: list[int | None] = []
            maxs: list[int | None] = []
            for start in range(0, len(ch.values), per):
                window = [v for v in ch.values[start : start + per] if v is not None]
                if not window:
                    mins.append(None)
                    means.append(None)
                    maxs.append(None)
                    continue
                mins.append(min(window))
                maxs.append(max(window))
                means.append(round(sum(window) / len(window)))
            for stat, values in (("min", mins), ("mean", means), ("max", maxs)):
                out.append(replace(ch, values=tuple(values), stat=stat))
        return SampleChunk(interval_ms=per * self.interval_ms, channels=tuple(out))


STATUS_COMPACTED = "gateway-compacted"
"""Status flag set by the buffer when disk pressure replaced samples by per-minute summaries."""

STATUS_TIME_CORRECTED = "gateway-time-corrected"
"""Status flag set when a capture time taken before NTP sync was re-based on the boot clock."""


@dataclass(frozen=True, slots=True)
class Reading:
    """One measurement event from one device. See the module docstring."""

    id: uuid.UUID
    device: DeviceIdentity
    patient: str
    observations: tuple[Observation, ...]
    captured: CaptureTime
    lane: Lane = Lane.SPOT
    device_time: datetime | None = None
    status: frozenset[str] = field(default_factory=frozenset)
    samples: SampleChunk | None = None
    raw: tuple[bytes, ...] = ()
    decode_error: str | None = None

    def __post_init__(self) -> None:
        if self.decode_error is not None:
            if self.observations or self.samples is not None or not self.raw:
                raise ValueError("an undecodable reading carries raw bytes and nothing decoded")
        elif not self.observations and self.samples is None:
            raise ValueError("a reading carries observations, samples, or both")

    @classmethod
    def undecodable(
        cls,
        *,
        id: uuid.UUID,
        device: DeviceIdentity,
        patient: str,
        captured: CaptureTime,
        raw: bytes,
        error: str,
    ) -> Reading:
        """A payload that did not parse, kept for audit (``error`` carries no values)."""
        return cls(
            id=id,
            device=device,
            patient=patient,
            observations=(),
            captured=captured,
            lane=Lane.SPOT,
            raw=(raw,),
            decode_error=error,
        )

    @property
    def natural_key(self) -> bytes | None:
        """What makes two records the same measurement, when the device timestamps them.

        Device + device time + values: a cuff that sends its stored records again produces the
        same key. Without a device timestamp there is no safe natural key (two equal readings a
        minute apart are two measurements), so ``None``: such readings are never de-duplicated.
        A sample chunk adds its sample count, interval and channel codes, so two different
        signals of one device that start at the same second (a CPAP's PLD and SAD files) never
        share a key.
        """
        if self.device_time is None or self.decode_error is not None:
            return None
        obs: Sequence[Observation] = self.observations
        if len(obs) > 1:
            obs = sorted(obs, key=_BY_MDC)  # stable: equal codes keep their order
        parts = [self.device.transport, self.device.serial, self.device_time.isoformat()]
        cache = _KEY_PARTS
        for o in obs:
            # A decimal's text names it exactly (digits and exponent), so it keys the part.
            v = o.value
            key = (o.mdc, o.unit, str(o.absent) if v is None else str(v), v is None)
            part = cache.get(key)
            if part is None:
                if len(cache) >= _KEY_PARTS_CACHED:
                    cache.clear()
                part = cache[key] = f"{o.mdc}={o.absent if v is None else v}{o.unit}"
            parts.append(part)
        if self.samples is not None:
            parts.append(f"n={self.samples.sample_count}")
            parts.append(f"dt={self.samples.interval_ms}")
            parts.extend(f"ch={c.mdc}" for c in self.samples.channels)
        return "\x1f".join(parts).encode()

    def with_time_corrected(self, anchor: ClockAnchor | None) -> Reading:
        """This reading with its capture time re-based on ``anchor`` (see
        :meth:`CaptureTime.corrected`), flagged; unchanged if that does not apply."""
        if anchor is None:
            return self
        captured = self.captured.corrected(anchor)
        if captured is self.captured:
            return self
        return replace(self, captured=captured, status=self.status | {STATUS_TIME_CORRECTED})

    def compacted(self, period_ms: int = 60_000) -> Reading:
        """This reading with its samples summarised per period and its raw frames dropped."""
        if self.samples is None or self.samples.is_summary:
            return self
        return replace(
            self,
            samples=self.samples.summarize(period_ms),
            raw=(),
            status=self.status | {STATUS_COMPACTED},
        )
