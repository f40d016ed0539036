"""Fixtures: a private ``dbus-daemon`` (per session) and the mock BlueZ (per test).

``bluez`` points ``DBUS_SYSTEM_BUS_ADDRESS`` at the private bus for the test, starts
:class:`~hw_mocks.bluez.MockBlueZ` with adapter ``hci0`` and, at the end, closes bleak's
per-loop manager connection and stops the mock. Tests skip with a reason when ``dbus-daemon``
is not installed. A watchdog stops the mock after ``DEADLINE`` seconds so that a test can fail
but never hang on D-Bus.
"""

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from hw_mocks.bluez import MockBlueZ, PrivateBus, dbus_daemon_path
from hw_mocks.bluez.testing import release_bleak_manager

from tests.ble.pairing_agent import RegisteredAgent, TestAgent

DEADLINE = 30.0


@pytest.fixture(scope="session")
def private_bus() -> Iterator[PrivateBus]:
    """A private system-like dbus-daemon for the whole session."""
    if dbus_daemon_path() is None:
        pytest.skip("dbus-daemon is not installed (Debian package dbus-daemon); no private D-Bus")
    with PrivateBus() as bus:
        yield bus


@pytest.fixture
async def bluez(
    private_bus: PrivateBus, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[MockBlueZ]:
    """The mock org.bluez with a powered ``hci0``; bleak in this test talks to it."""
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", private_bus.address)
    monkeypatch.delenv("BLEAK_DBUS_AUTH_UID", raising=False)
    mock = MockBlueZ(private_bus.address)
    mock.connect_latency = 0.005
    mock.absent_connect_delay = 0.2
    adapter = mock.add_adapter("hci0")
    adapter.advert_interval = 0.05
    await mock.start()
    watchdog = asyncio.get_running_loop().call_later(
        DEADLINE, lambda: asyncio.ensure_future(mock.stop())
    )
    try:
        yield mock
    finally:
        watchdog.cancel()
        # Bounded: a teardown that hangs must fail this test, not stall the whole run.
        async with asyncio.timeout(15):
            await release_bleak_manager()
            await mock.stop()
    crashed = [
        (device.peripheral, event.detail)
        for adapter in mock.adapters.values()
        for device in adapter.devices.values()
        for event in device.peripheral.events_of("script-error")
    ]
    assert not crashed, f"simulated device scripts crashed: {crashed}"


@pytest.fixture
async def agent(bluez: MockBlueZ) -> AsyncIterator[TestAgent]:
    """A registered default pairing agent (KeyboardDisplay, accepts, passkey 123456)."""
    async with RegisteredAgent(TestAgent(passkey=123456)) as registered:
        yield registered
