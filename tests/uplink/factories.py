"""Realistic readings for uplink tests and the uplink benchmark (synthetic, no real patients)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hw_mocks.synthetic import (
    bp_observations,
    oximetry_samples,
    plx_frame,
    spo2_observations,
)

from agent.clock import CaptureTime
from agent.ids import uuid7
from agent.model import (
    DeviceIdentity,
    DeviceKind,
    Lane,
    Reading,
    Transport,
)

BOOT = uuid.UUID("5b0c3f0e-6f55-4a8e-9a51-2d1f7f1f0c11")
T0_NS = 1_790_000_000_000_000_000  # 2026-09-21

CUFF = DeviceIdentity(
    DeviceKind.BP_CUFF, "A&D Medical", "UA-651BLE", "5C:31:3E:12:34:56", Transport.BLE
)
OXIMETER = DeviceIdentity(
    DeviceKind.PULSE_OXIMETER, "Nonin Medical", "3230", "502841234", Transport.BLE
)


def _capture(wall_ns: int, synced: bool = True) -> CaptureTime:
    return CaptureTime(
        wall_ns=wall_ns, boot_id=BOOT, mono_ns=wall_ns - T0_NS + 12_345_678_901, synced=synced
    )


def bp_reading(
    i: int, *, patient: str = "pt-0001", rng: random.Random | None = None, lane: Lane = Lane.SPOT
) -> Reading:
    """A blood-pressure reading as a BLE cuff sends it (with its raw frame)."""
    rng = rng or random.Random(i)
    wall = T0_NS + i * 43_200_000_000_000 + rng.randrange(10**9)  # twice a day
    sys_ = 120 + rng.randrange(-15, 25)
    dia = 78 + rng.randrange(-10, 12)
    mean = (sys_ + 2 * dia) // 3
    pulse = 64 + rng.randrange(-8, 20)
    device_time = datetime(2026, 9, 21, 8, 0, tzinfo=UTC) + timedelta(
        seconds=(wall - T0_NS) // 10**9
    )
    raw = (
        bytes([0x1E, sys_, 0, dia, 0, mean, 0])
        + device_time.strftime("%Y%m%d%H%M%S").encode()[:7]
        + bytes([pulse, 0, 1, 0])
    )
    return Reading(
        id=uuid7(wall),
        device=CUFF,
        patient=patient,
        observations=bp_observations(sys_, dia, mean, pulse),
        captured=_capture(wall),
        lane=lane,
        device_time=device_time.replace(tzinfo=None),
        raw=(raw,),
    )


def spo2_reading(i: int, *, patient: str = "pt-0001", rng: random.Random | None = None) -> Reading:
    """A spot SpO2 + pulse reading from an oximeter."""
    rng = rng or random.Random(10_000 + i)
    wall = T0_NS + i * 21_600_000_000_000 + rng.randrange(10**9)
    spo2 = Decimal(94 + rng.randrange(0, 5))
    pulse = 70 + rng.randrange(-10, 15)
    return Reading(
        id=uuid7(wall),
        device=OXIMETER,
        patient=patient,
        observations=spo2_observations(spo2, pulse),
        captured=_capture(wall),
        raw=(bytes([0x00, int(spo2), 0, pulse, 0]),),
    )


def continuous_reading(
    i: int, *, samples: int = 300, patient: str = "pt-0001", rng: random.Random | None = None
) -> Reading:
    """A chunk of ``samples`` seconds of 1 Hz SpO2 and pulse rate (overnight oximetry)."""
    rng = rng or random.Random(20_000 + i)
    wall = T0_NS + i * samples * 1_000_000_000
    spo2: list[int | None] = []
    pulse: list[int | None] = []
    s, p = 95, 62
    for _ in range(samples):
        r = rng.random()
        if r < 0.08:
            s = min(100, max(85, s + rng.choice((-1, 1))))
        if rng.random() < 0.2:
            p = min(110, max(45, p + rng.choice((-1, 1))))
        spo2.append(None if r > 0.998 else s)
        pulse.append(None if r > 0.998 else p)
    # The raw notifications as the oximeter sent them: they travel for audit.
    raw = tuple(plx_frame(sv, pv) for sv, pv in zip(spo2, pulse, strict=True))
    return Reading(
        id=uuid7(wall),
        device=OXIMETER,
        patient=patient,
        observations=(),
        captured=_capture(wall),
        lane=Lane.CONTINUOUS,
        samples=oximetry_samples(spo2, pulse),
        raw=raw,
    )


def mixed_readings(n: int, *, patient: str = "pt-0001", seed: int = 1) -> list[Reading]:
    """``n`` spot readings, alternating cuff and oximeter, in capture order."""
    rng = random.Random(seed)
    out = [
        bp_reading(i, patient=patient, rng=rng)
        if i % 2 == 0
        else spo2_reading(i, patient=patient, rng=rng)
        for i in range(n)
    ]
    return sorted(out, key=lambda r: r.captured.wall_ns)
