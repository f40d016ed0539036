"""dbus-fast ``ServiceInterface`` classes for the ``org.bluez`` interfaces bleak uses.

Each class is a thin D-Bus face over a model object in :mod:`hw_mocks.bluez.service`
(``MockAdapter``, ``MockDevice``, ``GattObjects``, ...), which holds the state and the behaviour.
Property names, types and method signatures follow BlueZ's ``doc/org.bluez.*.rst``; only what
bleak (3.x) and a pairing agent need is implemented.

No ``from __future__ import annotations`` here: dbus-fast reads the D-Bus signatures from the
runtime annotations.
"""

from typing import TYPE_CHECKING, Annotated, Any

from dbus_fast import PropertyAccess, Variant
from dbus_fast.annotations import DBusSignature
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

if TYPE_CHECKING:
    from hw_mocks.bluez.service import (
        AgentRegistry,
        CharacteristicObject,
        DescriptorObject,
        MockAdapter,
        MockDevice,
        ServiceObject,
    )

DStr = Annotated[str, DBusSignature("s")]
DBool = Annotated[bool, DBusSignature("b")]
DInt16 = Annotated[int, DBusSignature("n")]
DUInt16 = Annotated[int, DBusSignature("q")]
DUInt32 = Annotated[int, DBusSignature("u")]
DPath = Annotated[str, DBusSignature("o")]
DPaths = Annotated[list[str], DBusSignature("ao")]
DStrs = Annotated[list[str], DBusSignature("as")]
DBytes = Annotated[bytes, DBusSignature("ay")]
DDict = Annotated[dict[str, Variant], DBusSignature("a{sv}")]
DManufacturerData = Annotated[dict[int, Variant], DBusSignature("a{qv}")]
DFdMtu = Annotated[tuple[int, int], DBusSignature("hq")]

ADAPTER_IFACE = "org.bluez.Adapter1"
DEVICE_IFACE = "org.bluez.Device1"
GATT_SERVICE_IFACE = "org.bluez.GattService1"
GATT_CHARACTERISTIC_IFACE = "org.bluez.GattCharacteristic1"
GATT_DESCRIPTOR_IFACE = "org.bluez.GattDescriptor1"
AGENT_MANAGER_IFACE = "org.bluez.AgentManager1"
AGENT_IFACE = "org.bluez.Agent1"

_R = PropertyAccess.READ
_RW = PropertyAccess.READWRITE


def _opts(options: dict[str, Variant]) -> dict[str, Any]:
    return {k: v.value for k, v in options.items()}


class Adapter1(ServiceInterface):
    """``org.bluez.Adapter1`` on ``/org/bluez/hciN``."""

    def __init__(self, adapter: "MockAdapter") -> None:
        """Wrap a mock adapter."""
        super().__init__(ADAPTER_IFACE)
        self._a = adapter

    @dbus_property(access=_R)
    def Address(self) -> DStr:
        return self._a.address

    @dbus_property(access=_R)
    def AddressType(self) -> DStr:
        return "public"

    @dbus_property(access=_R)
    def Name(self) -> DStr:
        return self._a.alias

    @dbus_property(access=_R)
    def Alias(self) -> DStr:
        return self._a.alias

    @dbus_property(access=_R)
    def Class(self) -> DUInt32:
        return 0

    @dbus_property(access=_RW)
    def Powered(self) -> DBool:
        return self._a.powered

    @Powered.setter  # type: ignore[no-redef]
    def Powered(self, value: DBool) -> None:
        self._a.set_powered(bool(value))

    @dbus_property(access=_R)
    def Discoverable(self) -> DBool:
        return False

    @dbus_property(access=_R)
    def Pairable(self) -> DBool:
        return True

    @dbus_property(access=_R)
    def Discovering(self) -> DBool:
        return self._a.discovering

    @dbus_property(access=_R)
    def UUIDs(self) -> DStrs:
        return []

    @dbus_property(access=_R)
    def Roles(self) -> DStrs:
        return ["central", "peripheral"]

    @dbus_property(access=_R)
    def Modalias(self) -> DStr:
        return "usb:v1D6Bp0246d0542"

    @dbus_method()
    def StartDiscovery(self) -> None:
        self._a.start_discovery(self._a.mock.current_sender)

    @dbus_method()
    def StopDiscovery(self) -> None:
        self._a.stop_discovery(self._a.mock.current_sender)

    @dbus_method()
    def SetDiscoveryFilter(self, properties: DDict) -> None:
        self._a.set_discovery_filter(self._a.mock.current_sender, _opts(properties))

    @dbus_method()
    def GetDiscoveryFilters(self) -> DStrs:
        return [
            "UUIDs",
            "RSSI",
            "Pathloss",
            "Transport",
            "DuplicateData",
            "Discoverable",
            "Pattern",
        ]

    @dbus_method()
    async def RemoveDevice(self, device: DPath) -> None:
        await self._a.remove_device(device)


class Device1(ServiceInterface):
    """``org.bluez.Device1`` on ``/org/bluez/hciN/dev_XX_XX_XX_XX_XX_XX``."""

    def __init__(self, device: "MockDevice") -> None:
        """Wrap a mock device."""
        super().__init__(DEVICE_IFACE)
        self._d = device

    @dbus_property(access=_R)
    def Address(self) -> DStr:
        return self._d.peripheral.address

    @dbus_property(access=_R)
    def AddressType(self) -> DStr:
        return self._d.peripheral.address_type

    @dbus_property(access=_R)
    def Name(self) -> DStr:
        return self._d.peripheral.name or ""

    @dbus_property(access=_R)
    def Alias(self) -> DStr:
        return self._d.alias

    @dbus_property(access=_R)
    def Adapter(self) -> DPath:
        return self._d.adapter.path

    @dbus_property(access=_R)
    def Paired(self) -> DBool:
        return self._d.paired

    @dbus_property(access=_R)
    def Bonded(self) -> DBool:
        return self._d.paired

    @dbus_property(access=_RW)
    def Trusted(self) -> DBool:
        return self._d.trusted

    @Trusted.setter  # type: ignore[no-redef]
    def Trusted(self, value: DBool) -> None:
        self._d.set_trusted(bool(value))

    @dbus_property(access=_RW)
    def Blocked(self) -> DBool:
        return self._d.blocked

    @Blocked.setter  # type: ignore[no-redef]
    def Blocked(self, value: DBool) -> None:
        self._d.set_blocked(bool(value))

    @dbus_property(access=_R)
    def LegacyPairing(self) -> DBool:
        return False

    @dbus_property(access=_R)
    def Connected(self) -> DBool:
        return self._d.connected

    @dbus_property(access=_R)
    def ServicesResolved(self) -> DBool:
        return self._d.services_resolved

    @dbus_property(access=_R)
    def RSSI(self) -> DInt16:
        return self._d.peripheral.rssi

    @dbus_property(access=_R)
    def UUIDs(self) -> DStrs:
        return self._d.uuids

    @dbus_property(access=_R)
    def ManufacturerData(self) -> DManufacturerData:
        return self._d.manufacturer_data_variants()

    @dbus_property(access=_R)
    def ServiceData(self) -> DDict:
        return self._d.service_data_variants()

    @dbus_method()
    async def Connect(self) -> None:
        await self._d.connect()

    @dbus_method()
    async def Disconnect(self) -> None:
        await self._d.disconnect()

    @dbus_method()
    async def Pair(self) -> None:
        await self._d.pair()

    @dbus_method()
    def CancelPairing(self) -> None:
        self._d.cancel_pairing()


class AnonymousDevice1(Device1):
    """``org.bluez.Device1`` for a peripheral that advertises no name (no ``Name`` property)."""

    Name = None


class GattService1(ServiceInterface):
    """``org.bluez.GattService1`` on ``.../serviceXXXX``."""

    def __init__(self, obj: "ServiceObject") -> None:
        """Wrap a service object."""
        super().__init__(GATT_SERVICE_IFACE)
        self._o = obj

    @dbus_property(access=_R)
    def UUID(self) -> DStr:
        return self._o.service.uuid

    @dbus_property(access=_R)
    def Primary(self) -> DBool:
        return self._o.service.primary

    @dbus_property(access=_R)
    def Device(self) -> DPath:
        return self._o.device.path

    @dbus_property(access=_R)
    def Includes(self) -> DPaths:
        return []


class GattCharacteristic1(ServiceInterface):
    """``org.bluez.GattCharacteristic1`` on ``.../serviceXXXX/charYYYY`` (no AcquireNotify)."""

    def __init__(self, obj: "CharacteristicObject") -> None:
        """Wrap a characteristic object."""
        super().__init__(GATT_CHARACTERISTIC_IFACE)
        self._o = obj

    @dbus_property(access=_R)
    def UUID(self) -> DStr:
        return self._o.char.uuid

    @dbus_property(access=_R)
    def Service(self) -> DPath:
        return self._o.service_path

    @dbus_property(access=_R)
    def Value(self) -> DBytes:
        return self._o.value

    @dbus_property(access=_R)
    def Notifying(self) -> DBool:
        return self._o.notifying

    @dbus_property(access=_R)
    def Flags(self) -> DStrs:
        return list(self._o.char.flags)

    @dbus_property(access=_R)
    def MTU(self) -> DUInt16:
        return self._o.device.mock.mtu

    @dbus_method()
    async def ReadValue(self, options: DDict) -> DBytes:
        return await self._o.read_value(_opts(options))

    @dbus_method()
    async def WriteValue(self, value: DBytes, options: DDict) -> None:
        await self._o.write_value(bytes(value), _opts(options))

    @dbus_method()
    def StartNotify(self) -> None:
        self._o.start_notify(self._o.device.mock.current_sender)

    @dbus_method()
    def StopNotify(self) -> None:
        self._o.stop_notify(self._o.device.mock.current_sender)


class NotifyCharacteristic1(GattCharacteristic1):
    """A characteristic with the *notify* property: adds ``NotifyAcquired`` and AcquireNotify.

    BlueZ exposes ``NotifyAcquired`` only for characteristics that can notify (not for
    indicate-only ones), and bleak uses AcquireNotify only when that property exists and
    ``use_start_notify`` is false.
    """

    @dbus_property(access=_R)
    def NotifyAcquired(self) -> DBool:
        return self._o.notify_acquired

    @dbus_method()
    def AcquireNotify(self, options: DDict) -> DFdMtu:
        return self._o.acquire_notify(self._o.device.mock.current_sender)


class GattDescriptor1(ServiceInterface):
    """``org.bluez.GattDescriptor1`` on ``.../charYYYY/descZZZZ``."""

    def __init__(self, obj: "DescriptorObject") -> None:
        """Wrap a descriptor object."""
        super().__init__(GATT_DESCRIPTOR_IFACE)
        self._o = obj

    @dbus_property(access=_R)
    def UUID(self) -> DStr:
        return self._o.uuid

    @dbus_property(access=_R)
    def Characteristic(self) -> DPath:
        return self._o.char_path

    @dbus_property(access=_R)
    def Value(self) -> DBytes:
        return self._o.value

    @dbus_property(access=_R)
    def Flags(self) -> DStrs:
        return list(self._o.flags)

    @dbus_method()
    async def ReadValue(self, options: DDict) -> DBytes:
        return await self._o.read_value(_opts(options))

    @dbus_method()
    async def WriteValue(self, value: DBytes, options: DDict) -> None:
        await self._o.write_value(bytes(value), _opts(options))


class AgentManager1(ServiceInterface):
    """``org.bluez.AgentManager1`` on ``/org/bluez``."""

    def __init__(self, registry: "AgentRegistry") -> None:
        """Wrap the agent registry."""
        super().__init__(AGENT_MANAGER_IFACE)
        self._r = registry

    @dbus_method()
    def RegisterAgent(self, agent: DPath, capability: DStr) -> None:
        self._r.register(self._r.mock.current_sender, agent, capability)

    @dbus_method()
    def UnregisterAgent(self, agent: DPath) -> None:
        self._r.unregister(self._r.mock.current_sender, agent)

    @dbus_method()
    def RequestDefaultAgent(self, agent: DPath) -> None:
        self._r.request_default(self._r.mock.current_sender, agent)
