"""Our own connection to BlueZ on the system bus: adapter state and power, the pairing agent.

bleak covers scanning and GATT; what it does not do is done here with dbus-fast directly:

* read ``org.bluez.Adapter1`` (``Powered``, ``Discovering``; absent = the adapter vanished),
* power the adapter off and on through ``Properties.Set(Adapter1, "Powered")``: the recovery
  step that needs no root, unlike the kernel MGMT socket or a USB reset,
* export :class:`~agent.drivers.ble.pairing.PairingAgent` and register it as the default agent
  with ``AgentManager1``.

The bus address comes from ``DBUS_SYSTEM_BUS_ADDRESS`` (dbus-fast's rule), so tests point it
at the mock BlueZ's private bus. This module never calls ``Adapter1.RemoveDevice``: that deletes
the bond, which a single-bond cuff (A&D, Omron) cannot recover from without a technician.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Final

from dbus_fast import BusType, DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from agent.drivers.ble.pairing import AGENT_PATH, CAPABILITY, PairingAgent

_LOGGER = logging.getLogger(__name__)

BLUEZ: Final = "org.bluez"
ADAPTER_INTERFACE: Final = "org.bluez.Adapter1"
AGENT_MANAGER_INTERFACE: Final = "org.bluez.AgentManager1"
PROPERTIES_INTERFACE: Final = "org.freedesktop.DBus.Properties"
_GONE: Final = (
    "org.freedesktop.DBus.Error.UnknownObject",
    "org.freedesktop.DBus.Error.UnknownMethod",
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
)


@dataclass(frozen=True, slots=True)
class AdapterState:
    """What BlueZ says about one adapter right now."""

    present: bool
    powered: bool = False
    discovering: bool = False


class BluezBus:
    """A system-bus connection for adapter control and the pairing agent.

    Args:
        adapter: the adapter name, e.g. ``"hci0"``.
        call_timeout: seconds any single D-Bus call may take.
    """

    def __init__(self, adapter: str = "hci0", *, call_timeout: float = 5.0) -> None:
        self.adapter = adapter
        self.adapter_path = f"/org/bluez/{adapter}"
        self.call_timeout = call_timeout
        self._bus: MessageBus | None = None
        self._agent: PairingAgent | None = None
        self._lock = asyncio.Lock()

    async def _connected(self) -> MessageBus:
        async with self._lock:
            if self._bus is not None and self._bus.connected:
                return self._bus
            if self._bus is not None:  # the bus went away (dbus-daemon restart): start over
                self._bus = None
            async with asyncio.timeout(self.call_timeout):
                bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
            self._bus = bus
            if self._agent is not None:
                bus.export(AGENT_PATH, self._agent)
            return bus

    async def close(self) -> None:
        """Unregister the agent (best effort) and leave the bus."""
        if self._agent is not None:
            with contextlib.suppress(DBusError, OSError, TimeoutError, EOFError):
                await self.unregister_agent()
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.call_timeout):
                    await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    async def call(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
    ) -> list[Any]:
        """Call a BlueZ method; raises :class:`dbus_fast.DBusError` with BlueZ's error."""
        bus = await self._connected()
        async with asyncio.timeout(self.call_timeout):
            reply = await bus.call(
                Message(
                    destination=BLUEZ,
                    path=path,
                    interface=interface,
                    member=member,
                    signature=signature,
                    body=body or [],
                )
            )
        if reply is None:
            raise DBusError("org.freedesktop.DBus.Error.NoReply", "no reply")
        if reply.message_type == MessageType.ERROR:
            text = str(reply.body[0]) if reply.body else ""
            raise DBusError(reply.error_name or "org.freedesktop.DBus.Error.Failed", text)
        return list(reply.body)

    async def adapter_state(self) -> AdapterState:
        """``Powered`` and ``Discovering`` of the adapter; ``present=False`` when it is gone."""
        try:
            (props,) = await self.call(
                self.adapter_path, PROPERTIES_INTERFACE, "GetAll", "s", [ADAPTER_INTERFACE]
            )
        except DBusError as exc:
            if exc.type in _GONE:
                return AdapterState(present=False)
            raise
        values = {k: v.value for k, v in props.items()}
        return AdapterState(
            present=True,
            powered=bool(values.get("Powered", False)),
            discovering=bool(values.get("Discovering", False)),
        )

    async def set_powered(self, powered: bool) -> None:
        """Switch the adapter on or off (``Properties.Set(Adapter1, "Powered")``)."""
        await self.call(
            self.adapter_path,
            PROPERTIES_INTERFACE,
            "Set",
            "ssv",
            [ADAPTER_INTERFACE, "Powered", Variant("b", powered)],
        )

    async def power_cycle(self, off_seconds: float = 1.0) -> None:
        """Power the adapter off, wait, and on again (the no-root recovery step)."""
        _LOGGER.warning("bluetooth adapter %s: power-cycling", self.adapter)
        with contextlib.suppress(DBusError):
            await self.set_powered(False)
        await asyncio.sleep(off_seconds)
        await self.set_powered(True)

    async def register_agent(self, agent: PairingAgent) -> None:
        """Export ``agent`` and make it BlueZ's default agent (idempotent)."""
        self._agent = agent
        bus = await self._connected()
        with contextlib.suppress(ValueError):  # already exported on this connection
            bus.export(AGENT_PATH, agent)
        try:
            await self.call(
                "/org/bluez",
                AGENT_MANAGER_INTERFACE,
                "RegisterAgent",
                "os",
                [AGENT_PATH, CAPABILITY],
            )
        except DBusError as exc:
            if exc.type != "org.bluez.Error.AlreadyExists":
                raise
        await self.call(
            "/org/bluez", AGENT_MANAGER_INTERFACE, "RequestDefaultAgent", "o", [AGENT_PATH]
        )
        _LOGGER.info("pairing agent registered (%s)", CAPABILITY)

    async def unregister_agent(self) -> None:
        """Unregister the agent from BlueZ."""
        if self._agent is None:
            return
        try:
            await self.call(
                "/org/bluez", AGENT_MANAGER_INTERFACE, "UnregisterAgent", "o", [AGENT_PATH]
            )
        finally:
            self._agent = None
