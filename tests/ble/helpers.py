"""Small helpers the BLE tests share: scan, connect through bleak-retry-connector, collect."""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak_retry_connector import establish_connection

STEP = 5.0  # seconds any single step may take before the test fails instead of hanging


async def find(address: str, seconds: float = STEP) -> BLEDevice:
    """Scan for one address with the real BleakScanner."""
    device = await BleakScanner.find_device_by_address(address, timeout=seconds)
    assert device is not None, f"{address} not found by BleakScanner"
    return device


@dataclass
class Link:
    """A connected bleak client plus what the test observes on it."""

    client: BleakClient
    disconnected: asyncio.Event
    received: dict[str, list[bytes]] = field(default_factory=dict)
    queues: dict[str, asyncio.Queue[bytes]] = field(default_factory=dict)

    async def subscribe(self, uuid: str, **kwargs: Any) -> None:
        """start_notify with the project's rule ``use_start_notify=True`` (unless overridden)."""
        self.received.setdefault(uuid, [])
        queue = self.queues.setdefault(uuid, asyncio.Queue())

        def on_value(_: BleakGATTCharacteristic, data: bytearray) -> None:
            self.received[uuid].append(bytes(data))
            queue.put_nowait(bytes(data))

        bluez = kwargs.pop("bluez", {"use_start_notify": True})
        await asyncio.wait_for(
            self.client.start_notify(uuid, on_value, bluez=bluez, **kwargs), STEP
        )

    async def next(self, uuid: str, seconds: float = STEP) -> bytes:
        """The next value received on ``uuid``."""
        return await asyncio.wait_for(self.queues[uuid].get(), seconds)

    async def wait_disconnected(self, seconds: float = STEP) -> None:
        """Wait for bleak's disconnected callback."""
        await asyncio.wait_for(self.disconnected.wait(), seconds)

    async def close(self) -> None:
        """Disconnect (no-op if already gone) and release the client's bus."""
        await asyncio.wait_for(self.client.disconnect(), STEP)


async def connect(
    address: str,
    *,
    pair: bool = False,
    on_disconnect: Callable[[], None] | None = None,
    **kwargs: Any,
) -> Link:
    """Scan, then connect with bleak-retry-connector's ``establish_connection``."""
    device = await find(address)
    disconnected = asyncio.Event()

    def _gone(_: BleakClient) -> None:
        disconnected.set()
        if on_disconnect is not None:
            on_disconnect()

    client = await asyncio.wait_for(
        establish_connection(
            BleakClient, device, device.name or address, _gone, pair=pair, **kwargs
        ),
        3 * STEP,
    )
    return Link(client, disconnected)


async def eventually(predicate: Callable[[], bool], seconds: float = STEP) -> None:
    """Wait until ``predicate()`` holds; for state that changes on D-Bus signals."""
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110 - no event to wait on, the mock state is polled
            await asyncio.sleep(0.01)
