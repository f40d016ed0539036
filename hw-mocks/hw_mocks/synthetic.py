"""Synthetic readings with realistic shapes, for tests, benchmarks and the demo.

Values are plausible (a BP cuff gives 100-160/60-100 mmHg, an oximeter 90-99 % and 50-110/min)
and deterministic for a given seed, so failures can be replayed. Raw frames are built like
the Bluetooth payloads they stand for (same lengths), but they are labelled synthetic.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal

from agent import codes
from agent.clock import CaptureTime, SystemClock
from agent.drivers.ieee11073 import sfloat_bytes
from agent.ids import uuid7
from agent.model import (
    Absent,
    Channel,
    DeviceIdentity,
    DeviceKind,
    Lane,
    Observation,
    Reading,
    SampleChunk,
    Transport,
)

CUFF = DeviceIdentity(
    DeviceKind.BP_CUFF, "A&D Medical", "UA-651BLE", "5C:31:3E:00:11:22", Transport.BLE
)
OXIMETER = DeviceIdentity(
    DeviceKind.PULSE_OXIMETER, "Nonin Medical", "3230", "501234567", Transport.BLE
)
PATIENT = "urn:dho:patient:7f3a9c21-56b0-4d2e-9a51-0c8e2f4b7d13"


# What a measurement of each kind carries, said once for every synthetic source (this factory,
# tests/uplink/factories.py, bench/sidebyside_workload.py): which codes, in which units.


def bp_observations(
    systolic: int, diastolic: int, mean: int, pulse: int
) -> tuple[Observation, ...]:
    """A cuff's blood-pressure measurement: systolic, diastolic, mean arterial (mmHg), pulse."""
    return (
        Observation.of(codes.BP_SYSTOLIC, systolic, "mm[Hg]"),
        Observation.of(codes.BP_DIASTOLIC, diastolic, "mm[Hg]"),
        Observation.of(codes.BP_MEAN, mean, "mm[Hg]"),
        Observation.of(codes.PULSE_RATE_BP, pulse, "/min"),
    )


def spo2_observations(spo2: Decimal | int, pulse: int) -> tuple[Observation, ...]:
    """An oximeter's spot check: SpO2 (%) and pulse rate (/min)."""
    return (
        Observation.of(codes.SPO2, spo2, "%"),
        Observation.of(codes.PULSE_RATE_OXIM, pulse, "/min"),
    )


def oximetry_samples(spo2: Sequence[int | None], pulse: Sequence[int | None]) -> SampleChunk:
    """1 Hz continuous oximetry: an SpO2 (%) and a pulse-rate (/min) channel, None = missing."""
    return SampleChunk(
        interval_ms=1000,
        channels=(
            Channel(codes.SPO2.mdc, codes.SPO2.loinc, "%", 0, tuple(spo2)),
            Channel(
                codes.PULSE_RATE_OXIM.mdc, codes.PULSE_RATE_OXIM.loinc, "/min", 0, tuple(pulse)
            ),
        ),
    )


def plx_frame(spo2: int | None, pulse: int | None) -> bytes:
    """A PLX measurement as the oximeter sends it (spot check 0x2A5E, continuous 0x2A5F):
    flags 0, SpO2 and pulse rate as SFLOAT (exponent 0), NaN for a missing sample."""
    return (
        b"\x00"
        + sfloat_bytes(Absent.NAN if spo2 is None else spo2)
        + sfloat_bytes(Absent.NAN if pulse is None else pulse)
    )


def bp_frame(systolic: int, diastolic: int, mean: int, pulse: int, stamp: bytes) -> bytes:
    """A synthetic cuff frame: flags 0x1E, the three pressures, a 7-byte time, the pulse."""
    return struct.pack("<BHHH7sH", 0x1E, systolic, diastolic, mean, stamp, pulse)


class ReadingFactory:
    """Makes readings for one patient's devices."""

    def __init__(self, seed: int = 1, patient: str = PATIENT) -> None:
        self.rng = random.Random(seed)
        self.patient = patient
        self.clock = SystemClock()
        self._device_time = datetime(2026, 11, 1, 8, 0, 0)

    def _now(self) -> CaptureTime:
        return self.clock.now()

    def bp(
        self,
        systolic: int | None = None,
        *,
        device_time: datetime | None = None,
        lane: Lane = Lane.SPOT,
        device: DeviceIdentity = CUFF,
    ) -> Reading:
        """A blood-pressure reading with systolic, diastolic, mean arterial and pulse."""
        sys_ = systolic if systolic is not None else self.rng.randint(100, 160)
        dia = self.rng.randint(60, 100)
        mean = (sys_ + 2 * dia) // 3
        pulse = self.rng.randint(50, 110)
        if device_time is None:
            self._device_time += timedelta(minutes=self.rng.randint(30, 600))
            device_time = self._device_time
        raw = bp_frame(sys_, dia, mean, pulse, b"\xea\x07\x0b\x01\x08\x00\x00")
        return Reading(
            id=uuid7(),
            device=device,
            patient=self.patient,
            observations=bp_observations(sys_, dia, mean, pulse),
            captured=self._now(),
            lane=lane,
            device_time=device_time,
            raw=(raw,),
        )

    def spo2_spot(self, spo2: Decimal | int | None = None) -> Reading:
        """A spot-check oximetry reading without a device timestamp."""
        value = spo2 if spo2 is not None else self.rng.randint(90, 99)
        pulse = self.rng.randint(50, 110)
        return Reading(
            id=uuid7(),
            device=OXIMETER,
            patient=self.patient,
            observations=spo2_observations(value, pulse),
            captured=self._now(),
            raw=(plx_frame(int(value), pulse),),
        )

    def oximetry_chunk(self, seconds: int = 60, *, lane: Lane = Lane.CONTINUOUS) -> Reading:
        """A 1 Hz continuous oximetry chunk (SpO2 and pulse), with the raw notifications."""
        spo2: list[int | None] = []
        pulse: list[int | None] = []
        s, p = self.rng.randint(92, 98), self.rng.randint(55, 80)
        raw: list[bytes] = []
        for _ in range(seconds):
            s = min(100, max(80, s + self.rng.choice((-1, 0, 0, 0, 1))))
            p = min(140, max(40, p + self.rng.choice((-2, -1, 0, 0, 1, 2))))
            dropout = self.rng.random() < 0.01
            spo2.append(None if dropout else s)
            pulse.append(None if dropout else p)
            raw.append(plx_frame(spo2[-1], pulse[-1]))
        chunk = oximetry_samples(spo2, pulse)
        return Reading(
            id=uuid7(),
            device=OXIMETER,
            patient=self.patient,
            observations=(),
            captured=self._now(),
            lane=lane,
            samples=chunk,
            raw=tuple(raw),
        )
