"""A minimal ``org.bluez.Agent1`` for the pairing tests (the product agent comes later).

No ``from __future__ import annotations``: dbus-fast reads signatures from annotations.
"""

import asyncio
from typing import Annotated

from dbus_fast import BusType, DBusError, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature
from dbus_fast.service import ServiceInterface, dbus_method

DPath = Annotated[str, DBusSignature("o")]
DStr = Annotated[str, DBusSignature("s")]
DUInt32 = Annotated[int, DBusSignature("u")]
DUInt16 = Annotated[int, DBusSignature("q")]

AGENT_PATH = "/dho/test/agent"


class TestAgent(ServiceInterface):
    """Auto-accepts Just Works / numeric comparison and answers passkeys with ``passkey``."""

    __test__ = False  # not a pytest test class

    def __init__(self, *, passkey: int = 0, accept: bool = True, delay: float = 0.0) -> None:
        super().__init__("org.bluez.Agent1")
        self.passkey = passkey
        self.accept = accept
        self.delay = delay  # how long the "user" takes to answer RequestAuthorization
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def _decide(self) -> None:
        if not self.accept:
            raise DBusError("org.bluez.Error.Rejected", "Rejected by the test agent")

    @dbus_method()
    def Release(self) -> None:
        self.calls.append(("Release", ()))

    @dbus_method()
    def RequestPinCode(self, device: DPath) -> DStr:
        self.calls.append(("RequestPinCode", (device,)))
        self._decide()
        return "0000"

    @dbus_method()
    def DisplayPinCode(self, device: DPath, pincode: DStr) -> None:
        self.calls.append(("DisplayPinCode", (device, pincode)))

    @dbus_method()
    def RequestPasskey(self, device: DPath) -> DUInt32:
        self.calls.append(("RequestPasskey", (device,)))
        self._decide()
        return self.passkey

    @dbus_method()
    def DisplayPasskey(self, device: DPath, passkey: DUInt32, entered: DUInt16) -> None:
        self.calls.append(("DisplayPasskey", (device, passkey, entered)))

    @dbus_method()
    def RequestConfirmation(self, device: DPath, passkey: DUInt32) -> None:
        self.calls.append(("RequestConfirmation", (device, passkey)))
        self._decide()

    @dbus_method()
    async def RequestAuthorization(self, device: DPath) -> None:
        self.calls.append(("RequestAuthorization", (device,)))
        await asyncio.sleep(self.delay)
        self._decide()

    @dbus_method()
    def AuthorizeService(self, device: DPath, uuid: DStr) -> None:
        self.calls.append(("AuthorizeService", (device, uuid)))
        self._decide()

    @dbus_method()
    def Cancel(self) -> None:
        self.calls.append(("Cancel", ()))

    def names(self) -> list[str]:
        """The agent methods BlueZ called, in order."""
        return [name for name, _ in self.calls]


async def _call(bus: MessageBus, member: str, signature: str, body: list[object]) -> None:
    reply = await bus.call(
        Message(
            destination="org.bluez",
            path="/org/bluez",
            interface="org.bluez.AgentManager1",
            member=member,
            signature=signature,
            body=body,
        )
    )
    assert reply is not None
    if reply.message_type == MessageType.ERROR:
        raise DBusError(reply.error_name or "?", str(reply.body[0] if reply.body else ""))


class RegisteredAgent:
    """Exports a :class:`TestAgent` on its own system-bus connection and registers it."""

    def __init__(self, agent: TestAgent, capability: str = "KeyboardDisplay") -> None:
        self.agent = agent
        self.capability = capability
        self.bus: MessageBus | None = None

    async def __aenter__(self) -> TestAgent:
        self.bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        self.bus.export(AGENT_PATH, self.agent)
        await _call(self.bus, "RegisterAgent", "os", [AGENT_PATH, self.capability])
        await _call(self.bus, "RequestDefaultAgent", "o", [AGENT_PATH])
        return self.agent

    async def __aexit__(self, *exc: object) -> None:
        if self.bus is None:
            return
        try:
            await _call(self.bus, "UnregisterAgent", "o", [AGENT_PATH])
        except DBusError:
            pass  # the mock may already be gone
        finally:
            self.bus.disconnect()
            await self.bus.wait_for_disconnect()
