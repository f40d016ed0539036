"""The mock ``org.bluez`` service: adapters, devices, GATT objects, pairing agents.

:class:`MockBlueZ` connects to a (private!) bus, owns the name ``org.bluez`` and exports objects
in BlueZ's layout, so that the unmodified bleak BlueZ backend works against it::

    async with MockBlueZ(bus.address) as bluez:
        hci0 = bluez.add_adapter("hci0")
        cuff = AndCuff(records=[...])
        hci0.add_peripheral(cuff)
        ...  # bleak code, with DBUS_SYSTEM_BUS_ADDRESS=bus.address

What BlueZ does and the mock copies (see ``ble-gatt.md`` §3):

* ``ObjectManager.GetManagedObjects`` on ``/`` and ``InterfacesAdded``/``InterfacesRemoved``
  (dbus-fast provides these for exported objects).
* A device object appears (``InterfacesAdded``) when a discovery session sees it advertising;
  while discovery runs, each advertising device's ``RSSI`` is refreshed every
  :attr:`MockAdapter.advert_interval` seconds (``PropertiesChanged``), which is what bleak's
  scanner reports.
* ``Connect`` reports ``Connected`` true, exports the GATT objects, then ``ServicesResolved``
  true; a disconnect (either side) reports ``ServicesResolved`` false, then ``Connected``
  false; GATT objects stay exported after a disconnect, as in BlueZ.
* ``Pair`` connects if needed and asks the default registered ``org.bluez.Agent1``
  (``RequestAuthorization`` for Just Works, ``RequestPasskey`` for passkey entry,
  ``RequestConfirmation`` for numeric comparison). Without an agent, pairing fails with
  ``AuthenticationFailed`` as on BlueZ >= 5.72 (configurable).
* ``StartNotify`` -> ``Notifying`` true and values as ``PropertiesChanged(Value)`` on the
  characteristic path; ``AcquireNotify`` (notify characteristics only) hands out one end of a
  ``SOCK_SEQPACKET`` socket pair.
* Notify sessions, discovery sessions and agents belong to the D-Bus client that created them
  and end when that client leaves the bus.

Never point this at the real system bus: :class:`MockBlueZ` refuses the well-known system-bus
socket paths.
"""

import asyncio
import contextlib
import logging
import os
import socket
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Self

from dbus_fast import (
    BusType,
    DBusError,
    Message,
    MessageType,
    NameFlag,
    RequestNameReply,
    Variant,
)
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface

from hw_mocks.bluez import errors
from hw_mocks.bluez.interfaces import (
    AGENT_IFACE,
    Adapter1,
    AgentManager1,
    AnonymousDevice1,
    Device1,
    GattCharacteristic1,
    GattDescriptor1,
    GattService1,
    NotifyCharacteristic1,
)
from hw_mocks.bluez.peripheral import (
    CCCD_UUID,
    AttError,
    Characteristic,
    Descriptor,
    GattService,
    SimPeripheral,
)

__all__ = [
    "AgentRegistry",
    "CallRecord",
    "CharacteristicObject",
    "DescriptorObject",
    "MockAdapter",
    "MockBlueZ",
    "MockDevice",
    "RegisteredAgent",
    "ServiceObject",
]

_LOG = logging.getLogger(__name__)

_REAL_SYSTEM_SOCKETS = ("/var/run/dbus/system_bus_socket", "/run/dbus/system_bus_socket")
_BUS_NAME = "org.bluez"


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One method call the mock received (for tests: "was RemoveDevice ever called?")."""

    sender: str
    path: str
    interface: str
    member: str
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class RegisteredAgent:
    """A pairing agent registered through ``AgentManager1.RegisterAgent``."""

    owner: str
    path: str
    capability: str


class _ErrorQueue:
    """Errors to return from the next calls of named methods (fault injection)."""

    def __init__(self) -> None:
        self._queued: dict[str, list[DBusError]] = {}

    def push(self, method: str, name: str, message: str, times: int = 1) -> None:
        self._queued.setdefault(method, []).extend(
            errors.bluez_error(name, message) for _ in range(times)
        )

    def pop(self, method: str) -> DBusError | None:
        queue = self._queued.get(method)
        if not queue:
            return None
        return queue.pop(0)


# --------------------------------------------------------------------------- GATT objects


class DescriptorObject:
    """The D-Bus object of one GATT descriptor (the CCCD or a peripheral-defined one)."""

    def __init__(
        self, char_obj: "CharacteristicObject", handle: int, descriptor: Descriptor | None
    ) -> None:
        """Create the object; ``descriptor=None`` means the CCCD of ``char_obj``."""
        self.char_obj = char_obj
        self.descriptor = descriptor
        self.path: str = f"{char_obj.path}/desc{handle:04x}"
        self.iface = GattDescriptor1(self)

    @property
    def char_path(self) -> str:
        """Path of the owning characteristic."""
        return self.char_obj.path

    @property
    def uuid(self) -> str:
        """The descriptor UUID."""
        return CCCD_UUID if self.descriptor is None else self.descriptor.uuid

    @property
    def flags(self) -> tuple[str, ...]:
        """BlueZ descriptor flags."""
        return ("read", "write") if self.descriptor is None else self.descriptor.flags

    @property
    def value(self) -> bytes:
        """Current value (the CCCD reflects the notify state)."""
        if self.descriptor is not None:
            return self.descriptor.value
        if not self.char_obj.notifying:
            return b"\x00\x00"
        return b"\x01\x00" if "notify" in self.char_obj.char.flags else b"\x02\x00"

    async def read_value(self, options: dict[str, Any]) -> bytes:
        """``ReadValue``."""
        device = self.char_obj.device
        device.mock.check_gatt(device)
        if "read" not in self.flags:
            raise errors.not_permitted("Read not permitted")
        return self.value

    async def write_value(self, value: bytes, options: dict[str, Any]) -> None:
        """``WriteValue`` (the CCCD cannot be written directly, use StartNotify)."""
        device = self.char_obj.device
        device.mock.check_gatt(device)
        if self.descriptor is None or "write" not in self.descriptor.flags:
            raise errors.not_permitted("Write not permitted")
        self.descriptor.value = value


class CharacteristicObject:
    """The D-Bus object of one GATT characteristic, bound to the peripheral's model."""

    def __init__(
        self, service_obj: "ServiceObject", handle: int, char: Characteristic, next_handle: int
    ) -> None:
        """Create the object and its descriptors, allocating handles from ``next_handle``."""
        self.service_obj = service_obj
        self.device = service_obj.device
        self.char = char
        self.path: str = f"{service_obj.path}/char{handle:04x}"
        self.value = char.value
        self._sessions: set[str] = set()
        self._acquired: tuple[str, socket.socket] | None = None
        if "notify" in char.flags:
            self.iface: GattCharacteristic1 = NotifyCharacteristic1(self)
        else:
            self.iface = GattCharacteristic1(self)
        self.descriptors: list[DescriptorObject] = []
        h = next_handle
        if char.can_notify:
            self.descriptors.append(DescriptorObject(self, h, None))
            h += 1
        for d in char.descriptors:
            self.descriptors.append(DescriptorObject(self, h, d))
            h += 1
        self.next_handle = h

    @property
    def service_path(self) -> str:
        """Path of the owning service."""
        return self.service_obj.path

    @property
    def notifying(self) -> bool:
        """Whether notifications are on (StartNotify sessions or an acquired socket)."""
        return bool(self._sessions) or self._acquired is not None

    @property
    def notify_acquired(self) -> bool:
        """Whether a client holds the AcquireNotify socket."""
        return self._acquired is not None

    def _emit(self, changed: dict[str, Any]) -> None:
        if self.device.mock.bus_connected:
            self.iface.emit_properties_changed(changed)

    async def read_value(self, options: dict[str, Any]) -> bytes:
        """``ReadValue``: asks the peripheral; updates ``Value`` as BlueZ does."""
        mock = self.device.mock
        mock.check_gatt(self.device)
        if not {"read", "encrypt-read", "encrypt-authenticated-read"} & set(self.char.flags):
            raise errors.not_permitted("Read not permitted")
        if (err := self.device.errors.pop("ReadValue")) is not None:
            raise err
        try:
            value = self.device.peripheral._read(self.char)
        except AttError as exc:
            raise errors.att_error(exc.code) from None
        offset = int(options.get("offset", 0))
        if offset > len(value):
            raise errors.bluez_error("org.bluez.Error.InvalidArguments", "Invalid offset")
        if value != self.value:
            self.value = value
            self._emit({"Value": value})
        return value[offset:]

    async def write_value(self, value: bytes, options: dict[str, Any]) -> None:
        """``WriteValue`` with ``type`` ``request`` (default if allowed) or ``command``."""
        mock = self.device.mock
        mock.check_gatt(self.device)
        flags = set(self.char.flags)
        kind = str(options.get("type", "request" if "write" in flags else "command"))
        allowed = "write-without-response" if kind == "command" else "write"
        if allowed not in flags and not (kind == "command" and "write" in flags):
            raise errors.not_permitted("Write not permitted")
        if (err := self.device.errors.pop("WriteValue")) is not None:
            raise err
        try:
            self.device.peripheral._write(self.char, value, kind != "command")
        except AttError as exc:
            raise errors.att_error(exc.code) from None

    def start_notify(self, sender: str) -> None:
        """``StartNotify`` for one D-Bus client."""
        self.device.mock.check_gatt(self.device)
        if not self.char.can_notify:
            raise errors.not_supported()
        if self._acquired is not None:
            raise errors.not_permitted("Notify acquired")
        if (err := self.device.errors.pop("StartNotify")) is not None:
            raise err
        if sender in self._sessions:
            return
        first = not self.notifying
        if first:
            try:
                self.device.peripheral._check_security()
            except AttError as exc:
                raise errors.att_error(exc.code) from None
        self._sessions.add(sender)
        if first:
            self._emit({"Notifying": True})
            self.device.peripheral._subscribe(self.char)

    def stop_notify(self, sender: str) -> None:
        """``StopNotify`` for one D-Bus client."""
        if sender not in self._sessions:
            raise errors.failed("No notify session started")
        self._end_session(sender)

    def _end_session(self, sender: str) -> None:
        self._sessions.discard(sender)
        if not self.notifying:
            self._emit({"Notifying": False})
            if self.device.peripheral.connected:
                self.device.peripheral._unsubscribe(self.char)

    def acquire_notify(self, sender: str) -> tuple[int, int]:
        """``AcquireNotify``: returns (fd, mtu); values are written to the socket."""
        self.device.mock.check_gatt(self.device)
        if self._acquired is not None:
            raise errors.in_progress("Notify acquired")
        if self._sessions:
            raise errors.in_progress("Notify already started")
        try:
            self.device.peripheral._check_security()
        except AttError as exc:
            raise errors.att_error(exc.code) from None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        # hand out a duplicate and close it once the reply carrying it has been written, so
        # the client's end is then the only reference (its close must reach ``ours`` as EOF)
        handed_out = os.dup(theirs.fileno())
        theirs.close()
        self._acquired = (sender, ours)
        self._emit({"NotifyAcquired": True, "Notifying": True})
        self.device.peripheral._subscribe(self.char)
        self._watch_acquired(ours)
        asyncio.get_running_loop().call_soon(self._close_when_sent, handed_out)
        return handed_out, self.device.mock.mtu

    def _close_when_sent(self, fd: int) -> None:
        writer = getattr(self.device.mock.bus, "_writer", None)
        pending = writer is not None and (
            bool(getattr(writer, "messages", None)) or getattr(writer, "buf", None) is not None
        )
        if pending and self.device.mock.bus_connected:
            asyncio.get_running_loop().call_later(0.01, self._close_when_sent, fd)
            return
        with contextlib.suppress(OSError):
            os.close(fd)

    def _watch_acquired(self, ours: socket.socket) -> None:
        # the client closing its end (bleak's stop_notify) ends the session
        loop = asyncio.get_running_loop()

        def readable() -> None:
            try:
                data = ours.recv(1)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._release_acquired()

        loop.add_reader(ours.fileno(), readable)

    def _release_acquired(self) -> None:
        acquired, self._acquired = self._acquired, None
        if acquired is None:
            return
        _, ours = acquired
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(ours.fileno())
        ours.close()
        self._emit({"NotifyAcquired": False, "Notifying": self.notifying})
        if not self.notifying and self.device.peripheral.connected:
            self.device.peripheral._unsubscribe(self.char)

    def push_value(self, data: bytes) -> None:
        """Deliver a notification/indication from the peripheral to the subscribed client(s)."""
        self.value = data
        if self._acquired is not None:
            with contextlib.suppress(OSError):
                self._acquired[1].send(data)
        if self._sessions:
            self._emit({"Value": data})

    def end_all_sessions(self) -> None:
        """The link went down: every notify session ends."""
        self._release_acquired()
        if self._sessions:
            self._sessions.clear()
            self._emit({"Notifying": False})

    def client_gone(self, sender: str) -> None:
        """A D-Bus client left the bus: drop its sessions."""
        if sender in self._sessions:
            self._end_session(sender)
        if self._acquired is not None and self._acquired[0] == sender:
            self._release_acquired()


class ServiceObject:
    """The D-Bus object of one GATT service and its characteristics."""

    def __init__(self, device: "MockDevice", handle: int, service: GattService) -> None:
        """Create the service object, allocating handles for its attributes."""
        self.device = device
        self.service = service
        self.path: str = f"{device.path}/service{handle:04x}"
        self.iface = GattService1(self)
        self.characteristics: list[CharacteristicObject] = []
        h = handle + 1
        for char in service.characteristics:
            # declaration handle names the object, the value handle follows it
            obj = CharacteristicObject(self, h, char, h + 2)
            self.characteristics.append(obj)
            h = obj.next_handle
        self.next_handle = h

    def objects(self) -> Iterator[tuple[str, ServiceInterface]]:
        """All (path, interface) pairs of this service, parents first."""
        yield self.path, self.iface
        for c in self.characteristics:
            yield c.path, c.iface
            for d in c.descriptors:
                yield d.path, d.iface


# --------------------------------------------------------------------------- devices


class MockDevice:
    """One remote device as BlueZ shows it on one adapter (``org.bluez.Device1``).

    Created by :meth:`MockAdapter.add_peripheral`. Test-facing API: :attr:`peripheral`,
    :meth:`fail_next`, :meth:`remove`, :attr:`paired`, :attr:`trusted`.
    """

    def __init__(self, adapter: "MockAdapter", peripheral: SimPeripheral) -> None:
        """Bind a peripheral to an adapter (not yet visible on the bus)."""
        self.adapter = adapter
        self.mock = adapter.mock
        self.peripheral = peripheral
        self.path: str = f"{adapter.path}/dev_{peripheral.address.replace(':', '_')}"
        self.iface: Device1 = Device1(self) if peripheral.name else AnonymousDevice1(self)
        self.exported = False
        self.gatt: list[ServiceObject] = []
        self.gatt_exported = False
        self.paired = False
        self.trusted = False
        self.blocked = False
        self.services_resolved = False
        self.errors = _ErrorQueue()
        self._pairing: asyncio.Task[None] | None = None
        self._shown: dict[str, Any] = {}
        self._char_objects: dict[int, CharacteristicObject] = {}
        self._build_gatt()
        peripheral._attach(self)

    def _build_gatt(self) -> None:
        handle = 0x0010
        for service in self.peripheral.services:
            obj = ServiceObject(self, handle, service)
            self.gatt.append(obj)
            for c in obj.characteristics:
                self._char_objects[id(c.char)] = c
            handle = obj.next_handle

    # ------------------------------------------------------------ properties

    @property
    def connected(self) -> bool:
        """Whether the link is up."""
        return self.peripheral.connected

    @property
    def alias(self) -> str:
        """``Alias``: the name, or the address with dashes when there is none (BlueZ rule)."""
        return self.peripheral.name or self.peripheral.address.replace(":", "-")

    @property
    def uuids(self) -> list[str]:
        """``UUIDs``: advertised service UUIDs, plus the GATT services once resolved."""
        uuids = list(self.peripheral.service_uuids)
        if self.gatt_exported:
            for s in self.gatt:
                if s.service.uuid not in uuids:
                    uuids.append(s.service.uuid)
        return uuids

    def manufacturer_data_variants(self) -> dict[int, Variant]:
        """``ManufacturerData`` as D-Bus ``a{qv}``."""
        return {k: Variant("ay", bytes(v)) for k, v in self.peripheral.manufacturer_data.items()}

    def service_data_variants(self) -> dict[str, Variant]:
        """``ServiceData`` as D-Bus ``a{sv}``."""
        return {k: Variant("ay", bytes(v)) for k, v in self.peripheral.service_data.items()}

    def characteristic_object(self, char: Characteristic) -> CharacteristicObject:
        """The D-Bus object of a characteristic of this device's peripheral."""
        return self._char_objects[id(char)]

    def fail_next(self, method: str, name: str, message: str, times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` (``Connect``, ``Pair``, ``Disconnect``,
        ``ReadValue``, ``WriteValue``, ``StartNotify``) on this device fail with a D-Bus error."""
        self.errors.push(method, name, message, times)

    def _emit(self, changed: dict[str, Any]) -> None:
        if self.exported and self.mock.bus_connected:
            self.iface.emit_properties_changed(changed)

    # ----------------------------------------------------------- visibility

    def export(self) -> None:
        """Make the device object appear (``InterfacesAdded``)."""
        if self.exported or not self.adapter.present:
            return
        self.mock.export(self.path, self.iface)
        self.exported = True
        self._shown = self._advert_snapshot()

    def export_gatt(self) -> None:
        """Export the GATT objects (after connecting, or from the cache of a bonded device)."""
        if self.gatt_exported or not self.exported:
            return
        for s in self.gatt:
            for path, iface in s.objects():
                self.mock.export(path, iface)
        self.gatt_exported = True
        self._emit({"UUIDs": self.uuids})
        self._shown["UUIDs"] = self.uuids

    def unexport(self) -> None:
        """Remove the device and its GATT objects from the bus (``InterfacesRemoved``)."""
        if self.gatt_exported:
            for s in reversed(self.gatt):
                for path, _ in reversed(list(s.objects())):
                    self.mock.unexport(path)
            self.gatt_exported = False
        if self.exported:
            self.mock.unexport(self.path)
            self.exported = False

    def _advert_snapshot(self) -> dict[str, Any]:
        p = self.peripheral
        snap: dict[str, Any] = {
            "ManufacturerData": dict(p.manufacturer_data),
            "ServiceData": dict(p.service_data),
            "UUIDs": self.uuids,
            "Alias": self.alias,
        }
        if p.name:
            snap["Name"] = p.name
        return snap

    def advertise(self) -> None:
        """One advertisement was received while scanning: appear, or report what changed
        (always ``RSSI``, plus any advertising data that differs from what BlueZ showed)."""
        snap = self._advert_snapshot()
        if not self.exported:
            self.export()
            return
        changed: dict[str, Any] = {"RSSI": self.peripheral.rssi}
        for key, value in snap.items():
            if self._shown.get(key) != value:
                changed[key] = value
        self._shown = snap
        if "ManufacturerData" in changed:
            changed["ManufacturerData"] = self.manufacturer_data_variants()
        if "ServiceData" in changed:
            changed["ServiceData"] = self.service_data_variants()
        self._emit(changed)

    # ---------------------------------------------------- PeripheralHost API

    def send_value(self, char: Characteristic, data: bytes) -> None:
        """Called by the peripheral to notify/indicate."""
        self.characteristic_object(char).push_value(data)

    def drop_link(self, reason: str) -> None:
        """Called by the peripheral (or a fault) to drop the link."""
        self._link_lost(reason)

    def advertisement_changed(self) -> None:
        """Called by the peripheral when its advertising data or state changed."""
        if not self.adapter.discovering or self.adapter.wedged or self.connected:
            return
        p = self.peripheral
        if p.advertising and self.adapter.passes_filter(p):
            self.advertise()

    # ------------------------------------------------------------- link

    def _link_up(self) -> None:
        _LOG.debug("%s: link up", self.path)
        self.peripheral._link_up()
        self._emit({"Connected": True})

    def _link_lost(self, reason: str) -> None:
        if not self.peripheral.connected:
            return
        _LOG.debug("%s: link down (%s)", self.path, reason)
        if self.services_resolved:
            self.services_resolved = False
            self._emit({"ServicesResolved": False})
        for s in self.gatt:
            for c in s.characteristics:
                c.end_all_sessions()
        self.peripheral._link_down(reason)
        self._emit({"Connected": False})
        if self._pairing is not None:
            self._pairing.cancel()

    async def connect(self) -> None:
        """``Device1.Connect``."""
        self.mock.check_adapter(self.adapter)
        if self.blocked:
            raise errors.failed("Blocked through rfkill")
        if (err := self.errors.pop("Connect") or self._pop_fault_connect_error()) is not None:
            if err.text == "le-connection-abort-by-local":
                # BlueZ briefly reports the link before the abort
                self._emit({"Connected": True})
                await asyncio.sleep(0)
                self._emit({"Connected": False})
            raise err
        if self.connected:
            return
        if not self.peripheral.advertising:
            # nobody answers: BlueZ gives up after the LE connection attempt times out
            await asyncio.sleep(self.mock.absent_connect_delay)
            raise errors.failed("le-connection-abort-by-local")
        await asyncio.sleep(self.mock.connect_latency)
        self.mock.check_adapter(self.adapter)
        self._link_up()
        self.export_gatt()
        await asyncio.sleep(0)
        if self.peripheral.connected:  # a fault may have dropped it already
            self.services_resolved = True
            self._emit({"ServicesResolved": True})
            self.peripheral._ready()

    def _pop_fault_connect_error(self) -> DBusError | None:
        queue = self.peripheral.faults.connect_errors
        if not queue:
            return None
        name, message = queue.pop(0)
        return errors.bluez_error(name, message)

    async def disconnect(self) -> None:
        """``Device1.Disconnect``: local disconnect."""
        if (err := self.errors.pop("Disconnect")) is not None:
            raise err
        if self._pairing is not None:
            self._pairing.cancel()
        self._link_lost("local host terminated")

    def cancel_pairing(self) -> None:
        """``Device1.CancelPairing``."""
        if self._pairing is None:
            raise errors.does_not_exist()
        self._pairing.cancel()

    async def pair(self) -> None:
        """``Device1.Pair``: connect if needed, then authenticate through the agent."""
        self.mock.check_adapter(self.adapter)
        if self.paired:
            raise errors.already_exists()
        if self._pairing is not None:
            raise errors.in_progress()
        if (err := self.errors.pop("Pair")) is not None:
            raise err
        if not self.connected:
            await self.connect()
        task = asyncio.get_running_loop().create_task(self._authenticate())
        self._pairing = task
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the Pair call itself is being cancelled (mock stopping)
            # CancelPairing, Disconnect or a dropped link cancelled the authentication
            raise errors.bluez_error(
                "org.bluez.Error.AuthenticationCanceled", "Authentication Canceled"
            ) from None
        finally:
            self._pairing = None
        if not self.peripheral.connected:  # the link went away while the agent answered
            raise errors.bluez_error(
                "org.bluez.Error.AuthenticationCanceled", "Authentication Canceled"
            )
        _LOG.debug("%s: paired", self.path)
        self.paired = True
        self._emit({"Paired": True, "Bonded": True})
        self.peripheral._paired()

    async def _authenticate(self) -> None:
        p = self.peripheral
        agent = self.mock.agents.pairing_agent()
        if p.faults.refuse_pairing or not p.accepts_pairing():
            name, message = p.faults.pairing_error
            raise errors.bluez_error(name, message)
        if p.pairing == "just-works":
            if agent is None:
                if self.mock.just_works_needs_agent:
                    raise errors.authentication_failed()
                return
            if agent.capability != "NoInputNoOutput":
                if self.mock.just_works_confirmation:
                    await self.mock.agents.call(agent, "RequestConfirmation", "ou", [self.path, 0])
                else:
                    await self.mock.agents.call(agent, "RequestAuthorization", "o", [self.path])
            return
        if agent is None or agent.capability in ("NoInputNoOutput", "DisplayOnly", ""):
            raise errors.authentication_failed()
        if p.pairing == "passkey":
            reply = await self.mock.agents.call(agent, "RequestPasskey", "o", [self.path])
            entered = int(reply.body[0]) if reply.body else -1
            if p.passkey is None or entered != p.passkey:
                raise errors.authentication_failed()
            return
        # numeric comparison
        await self.mock.agents.call(
            agent, "RequestConfirmation", "ou", [self.path, int(p.passkey or 0)]
        )

    def set_trusted(self, value: bool) -> None:
        """``Trusted`` was set through ``Properties.Set``."""
        if value != self.trusted:
            self.trusted = value
            self._emit({"Trusted": value})

    def set_blocked(self, value: bool) -> None:
        """``Blocked`` was set through ``Properties.Set``; blocking drops the link."""
        if value != self.blocked:
            self.blocked = value
            self._emit({"Blocked": value})
            if value:
                self._link_lost("blocked")

    def forget(self) -> None:
        """Remove the device from BlueZ (``RemoveDevice``): drop link, bond and objects."""
        self._link_lost("local host terminated")
        self.unexport()
        self.paired = False
        self.trusted = False

    def remove(self) -> None:
        """Test API: BlueZ forgets a temporary device (e.g. it stopped advertising long ago)."""
        self.forget()

    def client_gone(self, sender: str) -> None:
        """A D-Bus client left the bus: drop its notify sessions."""
        for s in self.gatt:
            for c in s.characteristics:
                c.client_gone(sender)


# --------------------------------------------------------------------------- adapters


class MockAdapter:
    """A Bluetooth adapter ``/org/bluez/hciN`` (``org.bluez.Adapter1``).

    Test-facing API: :meth:`add_peripheral`, :meth:`power_off`/:meth:`power_on`,
    :meth:`vanish`/:meth:`reappear`, :meth:`wedge`, :meth:`fail_next`, :attr:`devices`,
    :attr:`discovering`.
    """

    def __init__(self, mock: "MockBlueZ", name: str, address: str, *, powered: bool = True) -> None:
        """Create an adapter model (exported by :class:`MockBlueZ`)."""
        self.mock = mock
        self.name = name
        self.path = f"/org/bluez/{name}"
        self.address = address.upper()
        self.alias = f"dho-mock-{name}"
        self.powered = powered
        self.present = True
        self.exported = False
        self.advert_interval = 0.1
        self.wedged = False
        self.devices: dict[str, MockDevice] = {}
        self.errors = _ErrorQueue()
        self.iface = Adapter1(self)
        self._sessions: dict[str, dict[str, Any]] = {}
        self._scan_task: asyncio.Task[None] | None = None

    @property
    def discovering(self) -> bool:
        """Whether any discovery session is active."""
        return bool(self._sessions) and self.powered and self.present

    def _emit(self, changed: dict[str, Any]) -> None:
        if self.exported and self.mock.bus_connected:
            self.iface.emit_properties_changed(changed)

    def fail_next(self, method: str, name: str, message: str, times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` (``StartDiscovery``, ``StopDiscovery``,
        ``SetDiscoveryFilter``, ``RemoveDevice``) fail with the given D-Bus error."""
        self.errors.push(method, name, message, times)

    def add_peripheral(self, peripheral: SimPeripheral) -> MockDevice:
        """Put a simulated peripheral in range of this adapter and return its BlueZ device."""
        if peripheral.address in self.devices:
            raise ValueError(f"{peripheral.address} is already on {self.name}")
        device = MockDevice(self, peripheral)
        self.devices[peripheral.address] = device
        device.advertisement_changed()
        return device

    def device(self, address: str) -> MockDevice:
        """The device with this address (KeyError if unknown)."""
        return self.devices[address.upper()]

    # ------------------------------------------------------------ discovery

    def set_discovery_filter(self, sender: str, options: dict[str, Any]) -> None:
        """``SetDiscoveryFilter`` (per client; an empty dict clears it)."""
        self.mock.check_adapter(self)
        if (err := self.errors.pop("SetDiscoveryFilter")) is not None:
            raise err
        self.mock.discovery_filters[(self.path, sender)] = dict(options)
        if sender in self._sessions:
            self._sessions[sender] = dict(options)

    def passes_filter(self, peripheral: SimPeripheral) -> bool:
        """Whether any active discovery session's filter lets this advertisement through."""
        if not self._sessions:
            return False
        for f in self._sessions.values():
            uuids = {str(u).lower() for u in f.get("UUIDs", [])}
            if uuids and not uuids & set(peripheral.service_uuids):
                continue
            rssi = f.get("RSSI")
            if rssi is not None and peripheral.rssi < int(rssi):
                continue
            pattern = str(f.get("Pattern", ""))
            if pattern and not (
                peripheral.address.startswith(pattern)
                or (peripheral.name or "").startswith(pattern)
            ):
                continue
            return True
        return False

    def start_discovery(self, sender: str) -> None:
        """``StartDiscovery`` for one client."""
        self.mock.check_adapter(self)
        if (err := self.errors.pop("StartDiscovery")) is not None:
            raise err
        if sender in self._sessions:
            raise errors.in_progress()
        was = self.discovering
        self._sessions[sender] = self.mock.discovery_filters.get((self.path, sender), {})
        if not was:
            self._emit({"Discovering": True})
        if self._scan_task is None or self._scan_task.done():
            self._scan_task = asyncio.get_running_loop().create_task(self._scan())
        else:
            asyncio.get_running_loop().call_soon(self._advertise_all)

    def stop_discovery(self, sender: str) -> None:
        """``StopDiscovery`` for one client."""
        self.mock.check_adapter(self)
        if (err := self.errors.pop("StopDiscovery")) is not None:
            raise err
        if sender not in self._sessions:
            raise errors.failed("No discovery started")
        self._end_session(sender)

    def _end_session(self, sender: str) -> None:
        self._sessions.pop(sender, None)
        self.mock.discovery_filters.pop((self.path, sender), None)
        if not self._sessions:
            self._stop_scanning()

    def _stop_scanning(self) -> None:
        had = bool(self._sessions) or (self._scan_task is not None and not self._scan_task.done())
        self._sessions.clear()
        if self._scan_task is not None:
            self._scan_task.cancel()
            self._scan_task = None
        if had:
            self._emit({"Discovering": False})

    def wedge(self) -> None:
        """Fault: the controller stops reporting advertisements while BlueZ still says
        ``Discovering`` (the "scanner has gone quiet" failure); a power-cycle cures it."""
        self.wedged = True

    def _advertise_all(self) -> None:
        if not self.discovering or self.wedged:
            return
        for device in list(self.devices.values()):
            p = device.peripheral
            if p.advertising and not p.connected and self.passes_filter(p):
                device.advertise()

    async def _scan(self) -> None:
        while self.discovering:
            self._advertise_all()
            await asyncio.sleep(self.advert_interval)

    def client_gone(self, sender: str) -> None:
        """A D-Bus client left the bus: end its discovery session."""
        self.mock.discovery_filters.pop((self.path, sender), None)
        if sender in self._sessions:
            self._end_session(sender)
        for device in self.devices.values():
            device.client_gone(sender)

    # ---------------------------------------------------------------- devices

    async def remove_device(self, path: str) -> None:
        """``RemoveDevice``: forget the device and its bond."""
        self.mock.check_adapter(self)
        if (err := self.errors.pop("RemoveDevice")) is not None:
            raise err
        for device in self.devices.values():
            if device.path == path and device.exported:
                device.forget()
                return
        raise errors.does_not_exist()

    # ------------------------------------------------------------------ power

    def set_powered(self, value: bool) -> None:
        """Set ``Powered`` (also what ``Properties.Set`` does). Powering off drops every link
        and stops discovery."""
        if value == self.powered:
            return
        if not value:
            for device in self.devices.values():
                device._link_lost("adapter powered off")
            self._stop_scanning()
            self.wedged = False
        self.powered = value
        self._emit({"Powered": value})

    def power_off(self) -> None:
        """Fault: the adapter is switched off (``Powered`` false)."""
        self.set_powered(False)

    def power_on(self) -> None:
        """Switch the adapter back on."""
        self.set_powered(True)

    def vanish(self) -> None:
        """Fault: the adapter disappears (USB unplug, controller crash).

        Links drop, then every device object and the adapter object are removed
        (``InterfacesRemoved``); calls to the old paths fail with ``UnknownObject``.
        """
        if not self.present:
            return
        for device in self.devices.values():
            device._link_lost("adapter removed")
        self._stop_scanning()
        for device in self.devices.values():
            paired = device.paired
            device.unexport()
            device.paired = paired  # the bond stays in BlueZ's storage
        if self.exported:
            self.mock.unexport(self.path)
            self.exported = False
        self.present = False

    def reappear(self) -> None:
        """The adapter comes back: re-exported, powered, with its bonded devices (and their
        cached GATT objects) reloaded from storage as BlueZ does."""
        if self.present:
            return
        self.present = True
        self.powered = True
        self.mock.export_adapter(self)
        for device in self.devices.values():
            if device.paired:
                device.export()
                device.export_gatt()


# --------------------------------------------------------------------------- agents


class AgentRegistry:
    """``AgentManager1`` state: registered ``org.bluez.Agent1`` objects and the default one."""

    def __init__(self, mock: "MockBlueZ") -> None:
        """Create an empty registry."""
        self.mock = mock
        self.agents: dict[str, RegisteredAgent] = {}
        self.default: str | None = None
        self.iface = AgentManager1(self)

    def register(self, owner: str, path: str, capability: str) -> None:
        """``RegisterAgent``."""
        valid = {"", "DisplayOnly", "DisplayYesNo", "KeyboardOnly", "NoInputNoOutput"}
        if capability not in valid | {"KeyboardDisplay"}:
            raise errors.bluez_error("org.bluez.Error.InvalidArguments", "Invalid arguments")
        if owner in self.agents:
            raise errors.already_exists()
        self.agents[owner] = RegisteredAgent(owner, path, capability or "KeyboardDisplay")

    def unregister(self, owner: str, path: str) -> None:
        """``UnregisterAgent``."""
        agent = self.agents.get(owner)
        if agent is None or agent.path != path:
            raise errors.does_not_exist()
        del self.agents[owner]
        if self.default == owner:
            self.default = None

    def request_default(self, owner: str, path: str) -> None:
        """``RequestDefaultAgent``."""
        agent = self.agents.get(owner)
        if agent is None or agent.path != path:
            raise errors.does_not_exist()
        self.default = owner

    def pairing_agent(self) -> RegisteredAgent | None:
        """The agent BlueZ would ask: the default one, else the first registered."""
        if self.default is not None and self.default in self.agents:
            return self.agents[self.default]
        return next(iter(self.agents.values()), None)

    def client_gone(self, sender: str) -> None:
        """The agent's owner left the bus."""
        self.agents.pop(sender, None)
        if self.default == sender:
            self.default = None

    async def call(
        self, agent: RegisteredAgent, member: str, signature: str, body: list[Any]
    ) -> Message:
        """Call a method on a registered agent; agent errors become pairing failures."""
        bus = self.mock.bus
        try:
            async with asyncio.timeout(self.mock.agent_timeout):
                reply = await bus.call(
                    Message(
                        destination=agent.owner,
                        path=agent.path,
                        interface=AGENT_IFACE,
                        member=member,
                        signature=signature,
                        body=body,
                    )
                )
        except TimeoutError:
            raise errors.authentication_timeout() from None
        if reply.message_type == MessageType.ERROR:
            if reply.error_name in ("org.bluez.Error.Rejected", "org.bluez.Error.Canceled"):
                raise errors.authentication_rejected()
            raise errors.authentication_failed()
        return reply


# --------------------------------------------------------------------------- the service


class MockBlueZ:
    """The mock ``org.bluez`` service on a private bus.

    Args:
        bus_address: the private bus (default: ``$DBUS_SYSTEM_BUS_ADDRESS``, which must then be
            set and must not be the machine's system bus).
        just_works_needs_agent: Just Works pairing fails without a registered agent (BlueZ >=
            5.72 behaviour); set false to emulate older BlueZ that auto-accepted.
        just_works_confirmation: ask the agent ``RequestConfirmation(device, 0)`` for Just Works
            instead of ``RequestAuthorization(device)`` (both occur with real BlueZ versions
            and controllers; a product agent must answer both).
        agent_timeout: seconds to wait for an agent's answer.
        mtu: ATT MTU reported in ``MTU`` and by AcquireNotify.
    """

    def __init__(
        self,
        bus_address: str | None = None,
        *,
        just_works_needs_agent: bool = True,
        just_works_confirmation: bool = False,
        agent_timeout: float = 10.0,
        mtu: int = 185,
    ) -> None:
        """Configure the mock (call :meth:`start` or use ``async with``)."""
        address = bus_address or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
        if not address:
            raise ValueError("MockBlueZ needs a private bus address (see hw_mocks.bluez.bus)")
        if any(sock in address for sock in _REAL_SYSTEM_SOCKETS):
            raise ValueError("refusing to run the mock BlueZ on the machine's system bus")
        self.bus_address = address
        self.just_works_needs_agent = just_works_needs_agent
        self.just_works_confirmation = just_works_confirmation
        self.agent_timeout = agent_timeout
        self.mtu = mtu
        self.connect_latency = 0.0
        self.absent_connect_delay = 1.0
        self.adapters: dict[str, MockAdapter] = {}
        self.agents = AgentRegistry(self)
        self.calls: deque[CallRecord] = deque(maxlen=100_000)
        self.current_sender = ""
        self.discovery_filters: dict[tuple[str, str], dict[str, Any]] = {}
        self._bus: MessageBus | None = None
        self._exported: set[str] = set()

    # -------------------------------------------------------------- lifecycle

    @property
    def bus(self) -> MessageBus:
        """The mock's own bus connection."""
        if self._bus is None:
            raise RuntimeError("MockBlueZ is not started")
        return self._bus

    @property
    def bus_connected(self) -> bool:
        """Whether the mock is connected to its bus."""
        return self._bus is not None and self._bus.connected

    async def start(self) -> None:
        """Connect, own ``org.bluez`` and export ``/org/bluez`` and the adapters."""
        if self._bus is not None:
            return
        bus = MessageBus(
            bus_address=self.bus_address, bus_type=BusType.SYSTEM, negotiate_unix_fd=True
        )
        try:
            await bus.connect()
            bus.add_message_handler(self._on_message)
            reply = await bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member="AddMatch",
                    signature="s",
                    body=[
                        "type='signal',sender='org.freedesktop.DBus',"
                        "interface='org.freedesktop.DBus',member='NameOwnerChanged'"
                    ],
                )
            )
            if reply.message_type == MessageType.ERROR:
                raise RuntimeError(f"AddMatch failed: {reply.error_name}")
            owned = await bus.request_name(_BUS_NAME, NameFlag.DO_NOT_QUEUE)
            if owned not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
                raise RuntimeError(f"{_BUS_NAME} is already owned on this bus ({owned.name})")
        except BaseException:
            bus.disconnect()
            with contextlib.suppress(Exception):
                await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
            raise
        self._bus = bus
        self.export("/org/bluez", self.agents.iface)
        for adapter in self.adapters.values():
            if adapter.present:
                self.export_adapter(adapter)

    async def stop(self) -> None:
        """Drop every link, stop scanning and leave the bus."""
        for adapter in self.adapters.values():
            for device in adapter.devices.values():
                device.peripheral.cancel_scripts()
                device._link_lost("mock stopped")
                device.exported = device.gatt_exported = False
            adapter._stop_scanning()
            adapter.exported = False
        self._exported.clear()
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()
            # Bounded: under load dbus-fast's disconnect future was seen never to resolve, and
            # the whole suite hung here (the socket is being closed either way).
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> Self:
        """Start the mock."""
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop the mock."""
        await self.stop()

    # ---------------------------------------------------------------- objects

    def add_adapter(
        self, name: str = "hci0", address: str | None = None, *, powered: bool = True
    ) -> MockAdapter:
        """Add an adapter ``/org/bluez/<name>`` (exported at once if the mock is running)."""
        if name in self.adapters:
            raise ValueError(f"adapter {name} exists")
        index = len(self.adapters)
        adapter = MockAdapter(self, name, address or f"00:1A:7D:DA:71:{index:02X}", powered=powered)
        self.adapters[name] = adapter
        if self._bus is not None:
            self.export_adapter(adapter)
        return adapter

    def adapter(self, name: str = "hci0") -> MockAdapter:
        """The adapter called ``name``."""
        return self.adapters[name]

    def export_adapter(self, adapter: MockAdapter) -> None:
        """Export an adapter object (used at start and when it reappears)."""
        if adapter.exported or self._bus is None:
            return
        self.export(adapter.path, adapter.iface)
        adapter.exported = True

    def export(self, path: str, iface: ServiceInterface) -> None:
        """Export one interface (no-op when stopped)."""
        if self._bus is not None:
            self._bus.export(path, iface)
            self._exported.add(path)

    def unexport(self, path: str) -> None:
        """Unexport every interface on a path (no-op when stopped)."""
        self._exported.discard(path)
        if self._bus is not None:
            self._bus.unexport(path)

    def check_adapter(self, adapter: MockAdapter) -> None:
        """Raise the BlueZ error for an adapter that is gone or off."""
        if not adapter.present:
            raise DBusError("org.freedesktop.DBus.Error.UnknownObject", "adapter removed")
        if not adapter.powered:
            raise errors.not_ready()

    def check_gatt(self, device: MockDevice) -> None:
        """Raise the BlueZ error for a GATT call on a device that is not connected."""
        self.check_adapter(device.adapter)
        if not device.connected:
            raise errors.not_connected()

    def was_called(self, member: str, path: str | None = None) -> bool:
        """Whether a method with this name was called (optionally on this path)."""
        return any(c.member == member and (path is None or c.path == path) for c in self.calls)

    # ---------------------------------------------------------------- bus I/O

    def _on_message(self, msg: Message) -> Message | None:
        if msg.message_type == MessageType.METHOD_CALL:
            self.current_sender = msg.sender or ""
            iface = msg.interface or ""
            path = msg.path or ""
            if iface.startswith("org.bluez.") and path not in self._exported:
                # what BlueZ answers for a removed device/adapter (bleak maps it on Connect)
                return Message.new_error(
                    msg, "org.freedesktop.DBus.Error.UnknownObject", f"{path} does not exist"
                )
            if iface.startswith("org.bluez.") or (
                iface == "org.freedesktop.DBus.Properties" and msg.member == "Set"
            ):
                self.calls.append(
                    CallRecord(
                        self.current_sender,
                        msg.path or "",
                        iface,
                        msg.member or "",
                        tuple(msg.body),
                    )
                )
        elif (
            msg.message_type == MessageType.SIGNAL
            and msg.member == "NameOwnerChanged"
            and msg.sender == "org.freedesktop.DBus"
        ):
            name, _old, new = msg.body
            if not new and str(name).startswith(":"):
                self._client_gone(str(name))
        return None

    def _client_gone(self, sender: str) -> None:
        self.agents.client_gone(sender)
        for adapter in self.adapters.values():
            adapter.client_gone(sender)
