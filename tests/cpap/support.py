"""Helpers for the importer and driver tests: a real encrypted buffer and its contents."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from agent.buffer import AsyncBuffer, BufferConfig, FileKeySource
from agent.drivers import registry
from agent.drivers.cpap.driver import CpapCardOptions, CpapDriver
from agent.drivers.cpap.importer import CardImporter, ImportOptions
from agent.drivers.cpap.state import StateStore, derive_key
from agent.model import Lane, Reading

PATIENT = "urn:dho:patient:test-cpap-0001"


async def open_buffer(root: Path) -> AsyncBuffer:
    root.mkdir(parents=True, exist_ok=True)
    return await AsyncBuffer.open(
        root / "buffer.db",
        FileKeySource(root / "buffer.kek"),
        config=BufferConfig(reserve_bytes=64 * 1024),
    )


def importer(
    card: Path,
    buf: AsyncBuffer,
    state: Path,
    *,
    key: bytes = b"\x11" * 32,
    wall: Callable[[], float] = time.time,
    **options: object,
) -> CardImporter:
    return CardImporter(
        card,
        buf,
        StateStore(state, derive_key(key, "test")),
        PATIENT,
        options=ImportOptions(**options),  # type: ignore[arg-type]
        wall=wall,
    )


async def stop(task: asyncio.Task[None], buf: AsyncBuffer) -> None:
    """The end of a driver test: the driver's task cancelled and awaited, the buffer closed."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await buf.close()


async def stored(buf: AsyncBuffer) -> list[Reading]:
    """Every pending reading (claimed and released again, so the buffer is unchanged)."""
    out: list[Reading] = []
    batches = []
    while (claim := await buf.claim(10_000)) is not None:
        out.extend(claim.readings)
        batches.append(claim.batch_id)
    for b in batches:
        await buf.release(b)
    return out


def by_lane(readings: list[Reading], lane: Lane) -> list[Reading]:
    return [r for r in readings if r.lane is lane]


def flagged(readings: list[Reading], flag: str) -> list[Reading]:
    return [r for r in readings if flag in r.status]


async def wait_for(pred: Callable[[], object], limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


def card_driver(
    buf: AsyncBuffer, state_dir: Path, mount: Path, options: CpapCardOptions
) -> CpapDriver:
    """The cpap-card driver for one mount point, made from a device table as the daemon
    makes it (its KEK in ``state_dir``), with ``options``."""
    (driver,) = registry.create_drivers(
        [{"transport": "cpap-card", "patient": PATIENT, "path": str(mount)}],
        buf,
        state_dir=state_dir,
        key_source=FileKeySource(state_dir / "buffer.kek"),
    )
    assert isinstance(driver, CpapDriver)
    driver.options = options
    return driver
