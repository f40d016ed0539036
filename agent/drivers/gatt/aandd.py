"""A&D vendor command characteristic ``233bf001-5a34-1b6d-975c-000d5690abe4`` (UA-651BLE family).

Facts from ``shared/reference/ble-gatt.md`` section 2.2 and vector #18 (a public file quoting
"A&D sdk_ble_ua-651ble V1.2" section 5.1: **[unverified vendor document]**)::

    [0] size: the number of bytes that follow (type + command + value)
    [1] type: 0 read, 1 write, 2 response
    [2] command: 0x01 set time (value YY MM DD hh mm ss, year as two digits),
                 0x03 disconnect -> standby, 0x10 unpair, 0x12 delete all memory,
                 0xA6 set buffer size, 0xD6 read buffer size, 0xE1 request all memory
    [3..] value, then zero padding to 20 bytes

Vector #18: ``08 01 01 0E 03 0B 13 0C 22`` (+ zero padding) sets 2014-03-11 19:12:34.
The standard path (Date Time 0x2A08 written on connect) is in :mod:`.times`; this codec is for
the vendor commands only.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from agent.drivers.gatt._wire import fail, require_min_length

PROFILE_AND_COMMAND: Final = "ble.and-command"
FRAME_LEN: Final = 20


class AndCommandType(IntEnum):
    """Frame type byte."""

    READ = 0
    WRITE = 1
    RESPONSE = 2


class AndCommandCode(IntEnum):
    """Command byte (ble-gatt.md section 2.2)."""

    SET_TIME = 0x01
    DISCONNECT = 0x03
    UNPAIR = 0x10
    DELETE_ALL_MEMORY = 0x12
    SET_BUFFER_SIZE = 0xA6
    READ_BUFFER_SIZE = 0xD6
    REQUEST_ALL_MEMORY = 0xE1


@dataclass(frozen=True, slots=True)
class AndCommand:
    """One A&D vendor command frame.

    ``command`` is kept as a raw int (unknown commands still decode); ``padded`` says whether
    the frame carried the zero padding to 20 bytes.
    """

    type: AndCommandType
    command: int
    value: bytes = b""
    padded: bool = True

    @property
    def command_name(self) -> str:
        """e.g. ``"set-time"``, or ``"unknown-0x42"``."""
        try:
            return AndCommandCode(self.command).name.lower().replace("_", "-")
        except ValueError:
            return f"unknown-0x{self.command:02x}"

    @property
    def set_time(self) -> dt.datetime | None:
        """The time a set-time write carries (years 2000-2099), else ``None``."""
        if self.command != AndCommandCode.SET_TIME or len(self.value) != 6:
            return None
        yy, mo, dd, hh, mi, ss = self.value
        try:
            return dt.datetime(2000 + yy, mo, dd, hh, mi, ss)
        except ValueError:
            return None

    @classmethod
    def set_time_command(cls, when: dt.datetime) -> AndCommand:
        """The write that sets the cuff's clock (local wall time, 2000-2099)."""
        if not 2000 <= when.year <= 2099:
            raise ValueError("the A&D set-time command carries a two-digit year (2000-2099)")
        value = bytes((when.year - 2000, when.month, when.day, when.hour, when.minute, when.second))
        return cls(AndCommandType.WRITE, AndCommandCode.SET_TIME, value)


def decode_and_command(data: bytes, model: str | None = None) -> AndCommand:
    """Decode an A&D vendor command frame (with or without its zero padding to 20 bytes)."""
    profile = PROFILE_AND_COMMAND
    require_min_length(profile, data, 3, "size, type and command")
    size = data[0]
    if size < 2 or 1 + size > FRAME_LEN:
        raise fail(profile, data, f"size byte {size} is outside 2..19")
    if len(data) not in (1 + size, FRAME_LEN):
        raise fail(
            profile,
            data,
            f"payload is {len(data)} bytes, but the size byte requires {1 + size} "
            f"(or {FRAME_LEN} with padding)",
        )
    if any(data[1 + size :]):
        raise fail(profile, data, f"padding after byte {size} is not all zero")
    try:
        kind = AndCommandType(data[1])
    except ValueError:
        raise fail(profile, data, f"type 0x{data[1]:02X} is not 0, 1 or 2") from None
    return AndCommand(
        type=kind,
        command=data[2],
        value=bytes(data[3 : 1 + size]),
        padded=len(data) == FRAME_LEN,
    )


def encode_and_command(value: AndCommand) -> bytes:
    """Encode an A&D vendor command frame (padded to 20 bytes unless ``padded`` is false)."""
    if not 0 <= value.command <= 0xFF:
        raise ValueError("command does not fit in a byte")
    size = 2 + len(value.value)
    if 1 + size > FRAME_LEN:
        raise ValueError(f"value of {len(value.value)} bytes does not fit in a 20-byte frame")
    frame = bytes((size, value.type, value.command)) + value.value
    if value.padded:
        frame += bytes(FRAME_LEN - len(frame))
    return frame
