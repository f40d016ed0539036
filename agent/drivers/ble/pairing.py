"""Our own ``org.bluez.Agent1``: BlueZ asks it to approve pairing requests.

bleak registers no agent, and BlueZ >= 5.72 fails a Just Works pairing with
``AuthenticationFailed`` when no agent answers (``ble-gatt.md`` section 2.8). This agent:

* approves Just Works (``RequestAuthorization``, or ``RequestConfirmation`` with any passkey)
  and service authorisation, **only for devices assigned to this box**;
* answers passkey entry (``RequestPasskey``) with a number from a callback the technician CLI
  supplies (the passkey shown on the device); without a callback, or when the callback
  declines, the request is rejected;
* refuses legacy PIN codes (no medical device in scope uses them).

No ``from __future__ import annotations`` in this module: dbus-fast reads the D-Bus signatures
from the runtime annotations.
"""

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Final

from dbus_fast import DBusError
from dbus_fast.annotations import DBusSignature
from dbus_fast.service import ServiceInterface, dbus_method

_LOGGER = logging.getLogger(__name__)

AGENT_INTERFACE: Final = "org.bluez.Agent1"
AGENT_PATH: Final = "/org/dho/gateway/agent"
CAPABILITY: Final = "KeyboardDisplay"
"""Lets BlueZ choose Just Works, passkey entry or numeric comparison as the device needs."""

PasskeyCallback = Callable[[str], Awaitable[int | None]]
"""Called with the device address; returns the 6-digit passkey, or ``None`` to decline."""

DPath = Annotated[str, DBusSignature("o")]
DStr = Annotated[str, DBusSignature("s")]
DUInt32 = Annotated[int, DBusSignature("u")]
DUInt16 = Annotated[int, DBusSignature("q")]

_REJECTED: Final = "org.bluez.Error.Rejected"


def address_from_device_path(path: str) -> str:
    """``/org/bluez/hci0/dev_AA_BB_..`` -> ``AA:BB:..`` (empty for anything else)."""
    leaf = path.rsplit("/", 1)[-1]
    if not leaf.startswith("dev_"):
        return ""
    return leaf[4:].replace("_", ":").upper()


class PairingAgent(ServiceInterface):
    """The ``org.bluez.Agent1`` object (see the module docstring).

    Args:
        is_assigned: whether an address belongs to a device assigned to this box.
        passkey: the technician's passkey source, or ``None`` (passkey pairing refused).
    """

    def __init__(
        self, is_assigned: Callable[[str], bool], passkey: PasskeyCallback | None = None
    ) -> None:
        super().__init__(AGENT_INTERFACE)
        self.is_assigned = is_assigned
        self.passkey = passkey
        self.requests = 0
        self.refused = 0

    def _approve(self, device: str, what: str) -> None:
        self.requests += 1
        if not self.is_assigned(address_from_device_path(device)):
            self.refused += 1
            _LOGGER.warning("pairing agent: refused %s for a device not assigned here", what)
            raise DBusError(_REJECTED, "device is not assigned to this gateway")

    @dbus_method()
    def Release(self) -> None:
        """BlueZ no longer uses this agent."""
        _LOGGER.info("pairing agent released by BlueZ")

    @dbus_method()
    def RequestPinCode(self, device: DPath) -> DStr:
        """Legacy PIN pairing: not supported."""
        self._approve(device, "PIN code")
        raise DBusError(_REJECTED, "PIN code pairing is not supported")

    @dbus_method()
    def DisplayPinCode(self, device: DPath, pincode: DStr) -> None:
        """Nothing to display on a headless box."""

    @dbus_method()
    async def RequestPasskey(self, device: DPath) -> DUInt32:
        """Passkey entry: ask the technician's callback for the passkey the device shows."""
        self._approve(device, "passkey")
        if self.passkey is None:
            self.refused += 1
            raise DBusError(_REJECTED, "no passkey source (pair from the technician CLI)")
        value = await self.passkey(address_from_device_path(device))
        if value is None or not 0 <= value <= 999_999:
            self.refused += 1
            raise DBusError(_REJECTED, "passkey declined")
        return value

    @dbus_method()
    def DisplayPasskey(self, device: DPath, passkey: DUInt32, entered: DUInt16) -> None:
        """Nothing to display on a headless box."""

    @dbus_method()
    def RequestConfirmation(self, device: DPath, passkey: DUInt32) -> None:
        """Just Works (some BlueZ versions ask this way) or numeric comparison: approve."""
        self._approve(device, "confirmation")

    @dbus_method()
    def RequestAuthorization(self, device: DPath) -> None:
        """Just Works: approve an assigned device."""
        self._approve(device, "authorization")

    @dbus_method()
    def AuthorizeService(self, device: DPath, uuid: DStr) -> None:
        """A connection to a service of an assigned device: approve."""
        self._approve(device, "service")

    @dbus_method()
    def Cancel(self) -> None:
        """BlueZ cancelled a request (timeout or the device gave up)."""
        _LOGGER.info("pairing agent: request cancelled by BlueZ")
