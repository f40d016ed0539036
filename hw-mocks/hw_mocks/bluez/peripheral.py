"""Simulated BLE peripherals: a GATT database, advertisement data, behaviour hooks and faults.

This module knows nothing about D-Bus. A :class:`SimPeripheral` is attached to a
:class:`~hw_mocks.bluez.service.MockBlueZ` adapter, which turns it into BlueZ objects
(``org.bluez.Device1``, ``GattService1``, ...). The mock calls the ``_link_*`` methods when the
central connects, reads, writes or subscribes; device scripts (subclasses in
:mod:`hw_mocks.bluez.devices`) override the ``on_*`` hooks and use :meth:`SimPeripheral.notify`,
:meth:`SimPeripheral.send_frames` and :meth:`SimPeripheral.disconnect`.

Tests drive and observe a peripheral through its public API: :attr:`SimPeripheral.events`,
:meth:`SimPeripheral.wait_for`, :attr:`SimPeripheral.faults`, :meth:`SimPeripheral.set_advertising`.
"""

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypedDict

__all__ = [
    "CCCD_UUID",
    "AttError",
    "Characteristic",
    "Descriptor",
    "Event",
    "Faults",
    "GattService",
    "PairingMethod",
    "PeripheralOptions",
    "SimPeripheral",
    "uuid16",
]

_LOG = logging.getLogger(__name__)

PairingMethod = Literal["just-works", "passkey", "confirm"]
"""How a peripheral pairs: Just Works, passkey entry (central types the device's passkey),
or numeric comparison (both show a number, the user confirms)."""


def uuid16(short: int) -> str:
    """Expand a 16-bit SIG UUID to the 128-bit lower-case form BlueZ uses."""
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


CCCD_UUID = uuid16(0x2902)
"""Client Characteristic Configuration descriptor (added automatically to notify/indicate chars)."""


class AttError(Exception):
    """Raise from a hook to answer a read/write with an ATT error code (e.g. 0x80).

    The mock reports it the way BlueZ does: ``org.bluez.Error.Failed`` with the message
    ``"Operation failed with ATT error: 0xNN"``, which bleak turns into
    ``BleakGATTProtocolError``.
    """

    def __init__(self, code: int) -> None:
        """Create an ATT error with the given one-byte code."""
        super().__init__(f"ATT error 0x{code:02x}")
        self.code = code


@dataclass(eq=False)
class Descriptor:
    """A GATT descriptor (other than the CCCD, which the mock adds itself)."""

    uuid: str
    value: bytes = b""
    flags: tuple[str, ...] = ("read",)


@dataclass(eq=False)
class Characteristic:
    """A GATT characteristic and its current state on the peripheral.

    ``flags`` uses BlueZ's names: ``read``, ``write``, ``write-without-response``, ``notify``,
    ``indicate`` (plus ``encrypt-*`` variants if wanted).
    """

    uuid: str
    flags: tuple[str, ...]
    value: bytes = b""
    descriptors: list[Descriptor] = field(default_factory=list)
    notifying: bool = False
    service_uuid: str = ""

    @property
    def can_notify(self) -> bool:
        """Whether the characteristic supports notifications or indications."""
        return "notify" in self.flags or "indicate" in self.flags


@dataclass(eq=False)
class GattService:
    """A primary (or secondary) GATT service with its characteristics."""

    uuid: str
    characteristics: list[Characteristic]
    primary: bool = True

    def __post_init__(self) -> None:
        for char in self.characteristics:
            char.service_uuid = self.uuid


@dataclass
class Faults:
    """Fault injection for one peripheral. Tests set these fields before or during a run.

    Frame faults apply to :meth:`SimPeripheral.send_frames` (the record/measurement transfer),
    counted per connection from 0.
    """

    drop_link_after: int | None = None
    """Drop the link after this many frames of a transfer were sent (mid-transfer drop)."""
    repeat_frames: int = 0
    """Send every frame this many extra times (repeated indications)."""
    malformed_frames: frozenset[int] = frozenset()
    """Indexes of frames that are sent truncated by one byte (length no longer matches flags)."""
    corrupt: Callable[[int, bytes], bytes] | None = None
    """Optional custom corruption: called with (frame index, payload), returns what to send."""
    refuse_pairing: bool = False
    """Refuse pairing (``Device1.Pair`` fails with :attr:`pairing_error`)."""
    pairing_error: tuple[str, str] = (
        "org.bluez.Error.AuthenticationFailed",
        "Authentication Failed",
    )
    connect_errors: list[tuple[str, str]] = field(default_factory=list)
    """D-Bus errors returned by the next ``Connect`` calls, one per call (name, message).
    ``("org.bluez.Error.Failed", "le-connection-abort-by-local")`` makes the mock briefly report
    ``Connected`` true and then false, as BlueZ does."""
    silent: bool = False
    """Accept connections but never send anything (a wedged device)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened on a peripheral, for tests to assert on.

    ``kind`` is one of ``connect``, ``disconnect``, ``paired``, ``read``, ``write``,
    ``subscribe``, ``unsubscribe``, ``notify`` (a value the device sent), ``dropped`` (a value
    the device wanted to send while nobody was subscribed), ``script-error`` (a device script
    crashed: a bug in the simulation).
    """

    kind: str
    uuid: str = ""
    data: bytes = b""
    detail: str = ""


class PeripheralOptions(TypedDict, total=False):
    """Keyword options every simulated device accepts (see :class:`SimPeripheral`)."""

    rssi: int
    manufacturer_data: dict[int, bytes] | None
    service_data: dict[str, bytes] | None
    pairing: PairingMethod
    passkey: int | None
    require_bond: bool
    advertising: bool
    address_type: Literal["public", "random"]
    frame_interval: float


class PeripheralHost(Protocol):
    """What the mock provides to a connected peripheral (implemented by the D-Bus device)."""

    def send_value(self, char: Characteristic, data: bytes) -> None:
        """Deliver a notification/indication to the central."""

    def drop_link(self, reason: str) -> None:
        """Tear the link down from the peripheral side."""

    def advertisement_changed(self) -> None:
        """Advertising data or state changed; refresh what BlueZ shows."""


class SimPeripheral:
    """Base class of a simulated BLE peripheral.

    Subclasses pass their GATT database as ``services`` and override hooks. A peripheral starts
    advertising when created (``advertising=True``) and becomes visible to a scan on the adapter
    it is added to.
    """

    def __init__(
        self,
        address: str,
        name: str | None,
        services: Sequence[GattService],
        *,
        rssi: int = -60,
        manufacturer_data: dict[int, bytes] | None = None,
        service_data: dict[str, bytes] | None = None,
        service_uuids: Iterable[str] | None = None,
        pairing: PairingMethod = "just-works",
        passkey: int | None = None,
        require_bond: bool = False,
        advertising: bool = True,
        address_type: Literal["public", "random"] = "public",
        frame_interval: float = 0.005,
    ) -> None:
        """Create a peripheral.

        Args:
            address: Bluetooth address ``AA:BB:CC:DD:EE:FF``.
            name: advertised local name (``None`` = no name in the advertisement).
            services: the GATT database.
            rssi: RSSI reported while advertising.
            manufacturer_data: company id -> bytes.
            service_data: 128-bit UUID -> bytes.
            service_uuids: advertised service UUIDs (default: none).
            pairing: how pairing works with this peripheral.
            passkey: the 6-digit passkey for ``passkey``/``confirm`` pairing.
            require_bond: GATT reads/writes/subscriptions fail with ATT error 0x05
                (insufficient authentication) until paired.
            advertising: whether it advertises from the start.
            address_type: ``public`` or ``random``.
            frame_interval: seconds between frames in :meth:`send_frames` (indication
                round trips).
        """
        self.address = address.upper()
        self.name = name
        self.services = list(services)
        self.rssi = rssi
        self.manufacturer_data = dict(manufacturer_data or {})
        self.service_data = dict(service_data or {})
        self.service_uuids = [u.lower() for u in (service_uuids or [])]
        self.pairing: PairingMethod = pairing
        self.passkey = passkey
        self.require_bond = require_bond
        self.advertising = advertising
        self.address_type = address_type
        self.frame_interval = frame_interval
        self.faults = Faults()
        self.events: deque[Event] = deque(maxlen=100_000)  # bounded for long demo runs
        self.connected = False
        self.paired = False
        self.connections = 0
        self._host: PeripheralHost | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._frames_sent = 0
        self._event_waiters: list[tuple[Callable[[Event], bool], asyncio.Future[Event]]] = []

    # ----------------------------------------------------------------- lookup

    def char(self, uuid: str | int, service: str | int | None = None) -> Characteristic:
        """Find a characteristic by UUID (16-bit int or full string), optionally in one service.

        Raises:
            KeyError: if there is no such characteristic.
        """
        want = uuid16(uuid) if isinstance(uuid, int) else uuid.lower()
        svc = uuid16(service) if isinstance(service, int) else (service or "").lower()
        for s in self.services:
            if svc and s.uuid != svc:
                continue
            for c in s.characteristics:
                if c.uuid == want:
                    return c
        raise KeyError(f"{self.address}: no characteristic {want}")

    def events_of(self, kind: str, uuid: str | int | None = None) -> list[Event]:
        """The recorded events of one kind (optionally for one characteristic UUID)."""
        want = uuid16(uuid) if isinstance(uuid, int) else (uuid or "").lower()
        return [e for e in self.events if e.kind == kind and (not want or e.uuid == want)]

    async def wait_for(
        self,
        kind: str,
        uuid: str | int | None = None,
        *,
        seconds: float = 5.0,
        past: bool = True,
    ) -> Event:
        """Wait until an event of ``kind`` (for ``uuid``) happens and return it.

        With ``past=True`` (default) an event that already happened counts.

        Raises:
            TimeoutError: if it does not happen within ``seconds``.
        """
        want = uuid16(uuid) if isinstance(uuid, int) else (uuid or "").lower()

        def match(e: Event) -> bool:
            return e.kind == kind and (not want or e.uuid == want)

        if past:
            for e in self.events:
                if match(e):
                    return e
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        entry = (match, fut)
        self._event_waiters.append(entry)
        try:
            async with asyncio.timeout(seconds):
                return await fut
        finally:
            with contextlib.suppress(ValueError):
                self._event_waiters.remove(entry)

    def _record(self, event: Event) -> None:
        self.events.append(event)
        for match, fut in list(self._event_waiters):
            if not fut.done() and match(event):
                fut.set_result(event)

    # ------------------------------------------------------------ advertising

    def set_advertising(self, advertising: bool = True) -> None:
        """Start or stop advertising (a cuff only advertises after a measurement)."""
        self.advertising = advertising
        if self._host is not None:
            self._host.advertisement_changed()

    def update_advertisement(
        self,
        *,
        rssi: int | None = None,
        manufacturer_data: dict[int, bytes] | None = None,
        service_data: dict[str, bytes] | None = None,
        name: str | None = None,
    ) -> None:
        """Change advertised data; a scanning central sees the change."""
        if rssi is not None:
            self.rssi = rssi
        if manufacturer_data is not None:
            self.manufacturer_data = dict(manufacturer_data)
        if service_data is not None:
            self.service_data = dict(service_data)
        if name is not None:
            self.name = name
        if self._host is not None:
            self._host.advertisement_changed()

    # --------------------------------------------------------------- actions

    def notify(self, char: Characteristic | str | int, data: bytes) -> bool:
        """Send a notification/indication now if the central subscribed; return whether it went.

        A value sent while nobody is subscribed is recorded as a ``dropped`` event (a real device
        cannot send it either).
        """
        c = char if isinstance(char, Characteristic) else self.char(char)
        if not self.connected or self._host is None or not c.notifying:
            self._record(Event("dropped", c.uuid, bytes(data)))
            return False
        c.value = bytes(data)
        self._record(Event("notify", c.uuid, bytes(data)))
        self._host.send_value(c, bytes(data))
        return True

    async def send_frames(self, char: Characteristic | str | int, frames: Sequence[bytes]) -> int:
        """Send a transfer (stored records, a burst of measurements) with the frame faults applied.

        Frames are spaced by :attr:`frame_interval`. Returns how many of ``frames`` were sent
        completely before the transfer ended (the link may be dropped by a fault).
        """
        c = char if isinstance(char, Characteristic) else self.char(char)
        delivered = 0
        for frame in frames:
            if not self.connected:
                break
            limit = self.faults.drop_link_after
            if limit is not None and self._frames_sent >= limit:
                self.disconnect("fault: drop link mid-transfer")
                break
            index = self._frames_sent
            payload = bytes(frame)
            if index in self.faults.malformed_frames and payload:
                payload = payload[:-1]
            if self.faults.corrupt is not None:
                payload = self.faults.corrupt(index, payload)
            self._frames_sent += 1
            for _ in range(1 + max(0, self.faults.repeat_frames)):
                if not self.notify(c, payload):
                    return delivered  # unsubscribed or disconnected: the transfer ends
                await asyncio.sleep(self.frame_interval)
            delivered += 1
        return delivered

    def disconnect(self, reason: str = "remote user terminated") -> None:
        """Drop the link from the peripheral side (the central sees a peer disconnect)."""
        if self.connected and self._host is not None:
            self._host.drop_link(reason)

    def spawn(
        self, coro: Coroutine[Any, Any, Any], *, name: str | None = None
    ) -> asyncio.Task[Any]:
        """Run a device script for the current connection; it is cancelled when the link drops."""
        task = asyncio.get_running_loop().create_task(coro, name=name or f"{self.address}-script")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # a bug in the simulation, not a device behaviour: make it visible to the test
            self._record(Event("script-error", detail=repr(exc)))
            _LOG.error("%s: device script failed: %r", self.address, exc)

    def cancel_scripts(self) -> None:
        """Cancel every running device script."""
        for task in list(self._tasks):
            task.cancel()

    # ------------------------------------------------------------------ hooks

    def on_connect(self) -> None:
        """Called when a central connected (services are resolved). Override."""

    def on_disconnect(self, reason: str) -> None:
        """Called after the link went down (either side). Override."""

    def on_paired(self) -> None:
        """Called when pairing succeeded. Override."""

    def accepts_pairing(self) -> bool:
        """Whether the device accepts a new bond now (e.g. only in pairing mode). Override."""
        return True

    def on_read(self, char: Characteristic) -> bytes:
        """Answer a read. Default: the characteristic's current value. May raise AttError."""
        return char.value

    def on_write(self, char: Characteristic, data: bytes, with_response: bool) -> None:
        """Handle a write. Default: store the value. May raise :class:`AttError`."""
        char.value = data

    def on_subscribe(self, char: Characteristic) -> None:
        """Called when the central enabled notifications/indications (CCCD written). Override."""

    def on_unsubscribe(self, char: Characteristic) -> None:
        """Called when the central disabled notifications/indications. Override."""

    # ------------------------------------------------------ called by the mock

    def _attach(self, host: PeripheralHost | None) -> None:
        self._host = host

    def _link_up(self) -> None:
        self.connected = True
        self.connections += 1
        self._frames_sent = 0
        self._record(Event("connect"))

    def _ready(self) -> None:
        if self.connected and not self.faults.silent:
            self.on_connect()

    def _link_down(self, reason: str) -> None:
        if not self.connected:
            return
        self.connected = False
        for s in self.services:
            for c in s.characteristics:
                c.notifying = False
        self.cancel_scripts()
        self._record(Event("disconnect", detail=reason))
        self.on_disconnect(reason)

    def _paired(self) -> None:
        self.paired = True
        self._record(Event("paired"))
        self.on_paired()

    def _check_security(self) -> None:
        if self.require_bond and not self.paired:
            raise AttError(0x05)

    def _read(self, char: Characteristic) -> bytes:
        self._check_security()
        value = bytes(self.on_read(char))
        char.value = value
        self._record(Event("read", char.uuid, value))
        return value

    def _write(self, char: Characteristic, data: bytes, with_response: bool) -> None:
        self._check_security()
        self._record(Event("write", char.uuid, bytes(data)))
        if not self.faults.silent:
            self.on_write(char, bytes(data), with_response)

    def _subscribe(self, char: Characteristic) -> None:
        self._check_security()
        char.notifying = True
        self._record(Event("subscribe", char.uuid))
        if not self.faults.silent:
            self.on_subscribe(char)

    def _unsubscribe(self, char: Characteristic) -> None:
        char.notifying = False
        self._record(Event("unsubscribe", char.uuid))
        self.on_unsubscribe(char)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address} {self.name!r}>"
