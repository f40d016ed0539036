"""Readings for the care tests: oximetry chunks and BP readings at chosen times; and the
end of a test's running services."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime

from hw_mocks.synthetic import CUFF, OXIMETER, PATIENT

from agent import codes
from agent.clock import CaptureTime
from agent.ids import uuid7
from agent.model import Channel, DeviceIdentity, Lane, Observation, Reading, SampleChunk

BOOT = uuid.UUID(int=7)


def captured(at: datetime) -> CaptureTime:
    ns = int(at.timestamp() * 1e9)
    return CaptureTime(ns, BOOT, ns, True)


def chunk(
    at: datetime,
    spo2: Sequence[int | None],
    pulse: Sequence[int | None] | None = None,
    *,
    patient: str = PATIENT,
    device: DeviceIdentity = OXIMETER,
    lane: Lane = Lane.CONTINUOUS,
    device_time: datetime | None = None,
) -> Reading:
    """A 1 Hz oximetry chunk whose first sample is at ``at`` (the capture time)."""
    pulse = pulse if pulse is not None else [60 if s is not None else None for s in spo2]
    return Reading(
        id=uuid7(int(at.timestamp() * 1e9)),
        device=device,
        patient=patient,
        observations=(),
        captured=captured(at),
        lane=lane,
        device_time=device_time,
        samples=SampleChunk(
            1000,
            (
                Channel(codes.SPO2.mdc, codes.SPO2.loinc, "%", 0, tuple(spo2)),
                Channel(
                    codes.PULSE_RATE_OXIM.mdc, codes.PULSE_RATE_OXIM.loinc, "/min", 0, tuple(pulse)
                ),
            ),
        ),
        raw=(b"\x00",),
    )


def bp(at: datetime, systolic: int, diastolic: int = 80, *, patient: str = PATIENT) -> Reading:
    """A BP reading timestamped by the cuff at ``at``."""
    return Reading(
        id=uuid7(int(at.timestamp() * 1e9)),
        device=CUFF,
        patient=patient,
        observations=(
            Observation.of(codes.BP_SYSTOLIC, systolic, "mm[Hg]"),
            Observation.of(codes.BP_DIASTOLIC, diastolic, "mm[Hg]"),
            Observation.of(codes.PULSE_RATE_BP, 70, "/min"),
        ),
        captured=captured(at),
        device_time=at,
        raw=(b"\x1e",),
    )


def spot(at: datetime, spo2: int, *, patient: str = PATIENT) -> Reading:
    """A spot-check SpO2 reading (no device time)."""
    return Reading(
        id=uuid7(int(at.timestamp() * 1e9)),
        device=OXIMETER,
        patient=patient,
        observations=(
            Observation.of(codes.SPO2, spo2, "%"),
            Observation.of(codes.PULSE_RATE_OXIM, 70, "/min"),
        ),
        captured=captured(at),
        raw=(b"\x00",),
    )


async def cancel_all(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel every task, then wait for each to end (its cancellation is the expected end)."""
    tasks = list(tasks)
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t
