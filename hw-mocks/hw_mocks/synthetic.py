"""Synthetic readings with realistic shapes, for tests, benchmarks and the demo.

Values are plausible (a BP cuff gives 100-160/60-100 mmHg, an oximeter 90-99 % and 50-110/min)
and deterministic for a given seed, so failures can be replayed. Raw frames are built like
the Bluetooth payloads they stand for (same lengths), but they are labelled synthetic.
"""

from __future__ import annotations

import random
import struct
from datetime import datetime, timedelta
from decimal import Decimal

from agent import codes
from agent.clock import CaptureTime, SystemClock
from agent.ids import uuid7
from agent.model import (
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
        raw = struct.pack("<BHHH7sH", 0x1E, sys_, dia, mean, b"\xea\x07\x0b\x01\x08\x00\x00", pulse)
        return Reading(
            id=uuid7(),
            device=device,
            patient=self.patient,
            observations=(
                Observation.of(codes.BP_SYSTOLIC, sys_, "mm[Hg]"),
                Observation.of(codes.BP_DIASTOLIC, dia, "mm[Hg]"),
                Observation.of(codes.BP_MEAN, mean, "mm[Hg]"),
                Observation.of(codes.PULSE_RATE_BP, pulse, "/min"),
            ),
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
            observations=(
                Observation.of(codes.SPO2, value, "%"),
                Observation.of(codes.PULSE_RATE_OXIM, pulse, "/min"),
            ),
            captured=self._now(),
            raw=(struct.pack("<BHH", 0, int(value), pulse),),
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
            # PLX continuous measurement, flags 0: SpO2 and PR as SFLOAT (exponent 0).
            raw.append(struct.pack("<BHH", 0, 0x07FF if dropout else s, 0x07FF if dropout else p))
        chunk = SampleChunk(
            interval_ms=1000,
            channels=(
                Channel(codes.SPO2.mdc, codes.SPO2.loinc, "%", 0, tuple(spo2)),
                Channel(
                    codes.PULSE_RATE_OXIM.mdc, codes.PULSE_RATE_OXIM.loinc, "/min", 0, tuple(pulse)
                ),
            ),
        )
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
