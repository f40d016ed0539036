"""BlueZ D-Bus error names and the messages BlueZ uses with them (``src/error.c``).

Only names and short messages are reproduced (facts), so bleak maps them the same way it maps
real BlueZ errors (``bleak/backends/bluezdbus/utils.py``).
"""

from dbus_fast import DBusError

__all__ = [
    "already_exists",
    "att_error",
    "authentication_failed",
    "authentication_rejected",
    "authentication_timeout",
    "bluez_error",
    "does_not_exist",
    "failed",
    "in_progress",
    "not_connected",
    "not_permitted",
    "not_ready",
    "not_supported",
]


def bluez_error(name: str, message: str) -> DBusError:
    """An ``org.bluez.Error.*`` (or any) D-Bus error with the given message."""
    return DBusError(name, message)


def failed(message: str) -> DBusError:
    """``org.bluez.Error.Failed`` with a message (e.g. ``le-connection-abort-by-local``)."""
    return DBusError("org.bluez.Error.Failed", message)


def att_error(code: int) -> DBusError:
    """A GATT operation that failed with an ATT error code, reported the BlueZ way."""
    return DBusError("org.bluez.Error.Failed", f"Operation failed with ATT error: 0x{code:02x}")


def not_ready() -> DBusError:
    """``org.bluez.Error.NotReady``: adapter powered off or not initialised."""
    return DBusError("org.bluez.Error.NotReady", "Resource Not Ready")


def in_progress(message: str = "Operation already in progress") -> DBusError:
    """``org.bluez.Error.InProgress``."""
    return DBusError("org.bluez.Error.InProgress", message)


def not_connected() -> DBusError:
    """``org.bluez.Error.NotConnected``."""
    return DBusError("org.bluez.Error.NotConnected", "Not Connected")


def not_permitted(message: str) -> DBusError:
    """``org.bluez.Error.NotPermitted`` ("Read not permitted" / "Write not permitted")."""
    return DBusError("org.bluez.Error.NotPermitted", message)


def not_supported() -> DBusError:
    """``org.bluez.Error.NotSupported``."""
    return DBusError("org.bluez.Error.NotSupported", "Operation is not supported")


def does_not_exist() -> DBusError:
    """``org.bluez.Error.DoesNotExist``."""
    return DBusError("org.bluez.Error.DoesNotExist", "Does Not Exist")


def already_exists() -> DBusError:
    """``org.bluez.Error.AlreadyExists``."""
    return DBusError("org.bluez.Error.AlreadyExists", "Already Exists")


def authentication_failed() -> DBusError:
    """``org.bluez.Error.AuthenticationFailed``."""
    return DBusError("org.bluez.Error.AuthenticationFailed", "Authentication Failed")


def authentication_rejected() -> DBusError:
    """``org.bluez.Error.AuthenticationRejected``."""
    return DBusError("org.bluez.Error.AuthenticationRejected", "Authentication Rejected")


def authentication_timeout() -> DBusError:
    """``org.bluez.Error.AuthenticationTimeout``."""
    return DBusError("org.bluez.Error.AuthenticationTimeout", "Authentication Timeout")
