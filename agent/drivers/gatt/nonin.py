"""Nonin 3230 / WristOx2 3150 Oximetry Service: continuous oximetry frame and control point.

Facts from ``shared/reference/ble-gatt.md`` section 2.5 (``andreasdri/nonin-3230-ble``
``index.js``; two further public files: a Cordova parser and a WristOx2 3150 Python tool;
verified as code there, not against Nonin's own document).

Continuous Oximetry characteristic ``0aad7ea0-...`` (notify, about once a second), 10 bytes,
Nonin "data format 19"::

    [0]    length, always 10
    [1]    status: bit0 display sync, bit1 weak signal, bit2 SmartPoint, bit3 searching,
           bit4 correct check (sensor attached), bit5 low battery, bit6 encryption
    [2]    battery voltage in 0.1 V
    [3..4] pulse amplitude index, uint16 big-endian, in 0.01 %
    [5..6] counter, uint16 big-endian
    [7]    SpO2 in % (127 = missing)
    [8..9] pulse rate, uint16 big-endian, in /min (511 = missing)

Control Point ``1447af80-...`` (write; the device answers by indication, in a format the
reference does not give, so responses are not decoded here)::

    60 4E 4D 49 <len> <ASCII command> 0D 0A   NMI command; len counts the ASCII and CR LF,
                                              e.g. "DTM=yyMMddHHmmss" sets the clock,
                                              "DTM?" asks for it
    61 <byte>                                 display sync (``61 05`` in the Cordova app)
    62 4E 4D 49                               measurement complete
    63 4E 4D 49 <op>                          delete bonds (0 all, 1 current, 2 all but current)
    64 4E 4D 49 <mode>                        set security mode (1 bond on every connection,
                                              2 bond only within 2 min of battery insertion)
    65 4E 4D 49                               get security mode
    71 4E 4D 49 / 72 4E 4D 49                 memory playback start / cancel
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from enum import IntEnum, StrEnum
from typing import Final

from agent.drivers.gatt._wire import Cursor, bit_names, bits_of, fail, require_length, uint
from agent.drivers.ieee11073 import Value
from agent.model import Absent

PROFILE_NONIN_OXIMETRY: Final = "ble.nonin-oximetry"
PROFILE_NONIN_CONTROL: Final = "ble.nonin-control"

FRAME_LEN: Final = 10
SPO2_MISSING: Final = 127
PULSE_RATE_MISSING: Final = 511


class NoninStatusFlag(StrEnum):
    """Status byte bits of the continuous oximetry frame."""

    DISPLAY_SYNC = "display-sync"
    WEAK_SIGNAL = "weak-signal"
    SMARTPOINT = "smartpoint"
    SEARCHING = "searching"
    SENSOR_ATTACHED = "correct-check"
    LOW_BATTERY = "low-battery"
    ENCRYPTED = "encryption"


_STATUS_BITS: Final = tuple(enumerate(NoninStatusFlag))


@dataclass(frozen=True, slots=True)
class NoninOximetry:
    """One continuous oximetry frame, raw fields kept so that encoding reproduces it."""

    status: int
    battery_decivolts: int
    pai_centipercent: int
    counter: int
    spo2: Value
    """SpO2 in %, or ``Absent.MISSING`` when the device sent 127."""
    pulse_rate: Value
    """Pulse rate in /min, or ``Absent.MISSING`` when the device sent 511."""

    @property
    def flags(self) -> tuple[NoninStatusFlag, ...]:
        """The named status bits that are set."""
        return tuple(NoninStatusFlag(n) for n in bit_names(self.status, _STATUS_BITS))

    @property
    def battery_volts(self) -> Decimal:
        """Battery voltage in volts, exact (``Decimal("3.1")``)."""
        return Decimal(self.battery_decivolts).scaleb(-1)

    @property
    def pulse_amplitude_index(self) -> Decimal:
        """Pulse amplitude index in %, exact (``Decimal("1.25")``)."""
        return Decimal(self.pai_centipercent).scaleb(-2)

    @classmethod
    def of(
        cls,
        spo2: Value | int,
        pulse_rate: Value | int,
        *flags: NoninStatusFlag,
        battery_decivolts: int = 30,
        pai_centipercent: int = 0,
        counter: int = 0,
    ) -> NoninOximetry:
        """Build a frame from values and named flags (for simulated devices)."""
        return cls(
            status=bits_of(flags, _STATUS_BITS),
            battery_decivolts=battery_decivolts,
            pai_centipercent=pai_centipercent,
            counter=counter,
            spo2=spo2 if isinstance(spo2, Absent) else Decimal(spo2),
            pulse_rate=pulse_rate if isinstance(pulse_rate, Absent) else Decimal(pulse_rate),
        )


def decode_nonin_oximetry(data: bytes, model: str | None = None) -> NoninOximetry:
    """Decode a Nonin continuous oximetry frame (exactly 10 bytes, length byte 10).

    SpO2 above 100 (other than 127) or a pulse-rate word above 511 is a
    :class:`~agent.errors.CodecError`: they cannot be true readings.
    """
    profile = PROFILE_NONIN_OXIMETRY
    require_length(
        profile,
        data,
        [
            ("length", 1),
            ("status", 1),
            ("battery", 1),
            ("pulse amplitude index", 2),
            ("counter", 2),
            ("SpO2", 1),
            ("pulse rate", 2),
        ],
    )
    cur = Cursor(profile, data)
    length = cur.u8("length")
    if length != FRAME_LEN:
        raise fail(profile, data, f"length byte says {length}, a data-format-19 frame is 10")
    status = cur.u8("status")
    battery = cur.u8("battery")
    pai = cur.u16("pulse amplitude index", big_endian=True)
    counter = cur.u16("counter", big_endian=True)
    spo2_raw = cur.u8("SpO2")
    pr_raw = cur.u16("pulse rate", big_endian=True)
    if spo2_raw > 100 and spo2_raw != SPO2_MISSING:
        raise fail(profile, data, "SpO2 is above 100 and not the missing marker 127")
    if pr_raw > PULSE_RATE_MISSING:
        raise fail(profile, data, "pulse rate exceeds the 9-bit field (511 = missing)")
    return NoninOximetry(
        status=status,
        battery_decivolts=battery,
        pai_centipercent=pai,
        counter=counter,
        spo2=Absent.MISSING if spo2_raw == SPO2_MISSING else Decimal(spo2_raw),
        pulse_rate=Absent.MISSING if pr_raw == PULSE_RATE_MISSING else Decimal(pr_raw),
    )


def _whole(value: Value, what: str, missing: int, high: int) -> int:
    if value is Absent.MISSING:
        return missing
    if isinstance(value, Absent):
        raise ValueError(f"{what} can only be missing, not {value.value}")
    if value != value.to_integral_value() or not 0 <= value <= high:
        raise ValueError(f"{what} {value} is not a whole number in 0..{high}")
    return int(value)


def encode_nonin_oximetry(value: NoninOximetry) -> bytes:
    """Encode a Nonin continuous oximetry frame (what a simulated oximeter notifies)."""
    return (
        bytes((FRAME_LEN,))
        + uint(value.status, 1, "status")
        + uint(value.battery_decivolts, 1, "battery")
        + uint(value.pai_centipercent, 2, "pulse amplitude index", big_endian=True)
        + uint(value.counter, 2, "counter", big_endian=True)
        + bytes((_whole(value.spo2, "SpO2", SPO2_MISSING, 100),))
        + uint(
            _whole(value.pulse_rate, "pulse rate", PULSE_RATE_MISSING, PULSE_RATE_MISSING - 1),
            2,
            "pulse rate",
            big_endian=True,
        )
    )


class NoninCommandCode(IntEnum):
    """Control-point command codes."""

    NMI_COMMAND = 0x60
    DISPLAY_SYNC = 0x61
    MEASUREMENT_COMPLETE = 0x62
    DELETE_BONDS = 0x63
    SET_SECURITY_MODE = 0x64
    GET_SECURITY_MODE = 0x65
    MEMORY_PLAYBACK_START = 0x71
    MEMORY_PLAYBACK_CANCEL = 0x72


class DeleteBonds(IntEnum):
    """Operand of the delete-bonds command."""

    ALL = 0x00
    CURRENT = 0x01
    ALL_EXCEPT_CURRENT = 0x02


class SecurityMode(IntEnum):
    """Operand of the set-security-mode command."""

    BOND_ON_EVERY_CONNECTION = 0x01
    BOND_AFTER_BATTERY_INSERTION = 0x02


NMI_TAG: Final = b"NMI"
_CRLF: Final = b"\r\n"
_WITH_ARGUMENT: Final = frozenset(
    {
        NoninCommandCode.DISPLAY_SYNC,
        NoninCommandCode.DELETE_BONDS,
        NoninCommandCode.SET_SECURITY_MODE,
    }
)


@dataclass(frozen=True, slots=True)
class NoninCommand:
    """One control-point write.

    ``argument`` is the one-byte operand of display sync, delete bonds and set security mode;
    ``text`` is the ASCII of an NMI command without its CR LF (e.g. ``"DTM?"``).
    """

    code: NoninCommandCode
    argument: int | None = None
    text: str | None = None

    @classmethod
    def set_date_time(cls, when: dt.datetime) -> NoninCommand:
        """``DTM=yyMMddHHmmss``: set the oximeter's clock (local wall time)."""
        return cls(NoninCommandCode.NMI_COMMAND, text="DTM=" + when.strftime("%y%m%d%H%M%S"))

    @classmethod
    def get_date_time(cls) -> NoninCommand:
        """``DTM?``: ask for the oximeter's clock."""
        return cls(NoninCommandCode.NMI_COMMAND, text="DTM?")

    @classmethod
    def display_sync(cls, argument: int = 0x05) -> NoninCommand:
        """``61 05``: display sync, as the Cordova app sends before subscribing."""
        return cls(NoninCommandCode.DISPLAY_SYNC, argument=argument)

    @classmethod
    def measurement_complete(cls) -> NoninCommand:
        """``62 4E 4D 49``: tell the oximeter the measurement is complete."""
        return cls(NoninCommandCode.MEASUREMENT_COMPLETE)


def _check_command(value: NoninCommand) -> str | None:
    needs_argument = value.code in _WITH_ARGUMENT
    if needs_argument != (value.argument is not None):
        return f"command 0x{value.code:02X} {'needs' if needs_argument else 'takes no'} argument"
    if value.code is NoninCommandCode.DELETE_BONDS and value.argument not in set(DeleteBonds):
        return f"delete-bonds operation {value.argument} is not 0, 1 or 2"
    if value.code is NoninCommandCode.SET_SECURITY_MODE and value.argument not in set(SecurityMode):
        return f"security mode {value.argument} is not 1 or 2"
    is_nmi = value.code is NoninCommandCode.NMI_COMMAND
    if is_nmi != (value.text is not None):
        return f"command 0x{value.code:02X} {'needs' if is_nmi else 'takes no'} text"
    if value.text is not None:
        if not value.text or not all(" " <= c <= "~" for c in value.text):
            return "NMI command text must be non-empty printable ASCII"
        if len(value.text) + 2 > 0xFF:
            return "NMI command text is too long for its length byte"
    return None


def decode_nonin_control(data: bytes, model: str | None = None) -> NoninCommand:
    """Decode a control-point write (what a simulated Nonin receives)."""
    profile = PROFILE_NONIN_CONTROL
    cur = Cursor(profile, data)
    code_raw = cur.u8("command code")
    try:
        code = NoninCommandCode(code_raw)
    except ValueError:
        raise fail(profile, data, f"command code 0x{code_raw:02X} is not known") from None
    if code is NoninCommandCode.DISPLAY_SYNC:
        require_length(profile, data, [("command code", 1), ("argument", 1)])
        return NoninCommand(code, argument=cur.u8("argument"))
    tag = cur.take(3, '"NMI" tag')
    if tag != NMI_TAG:
        raise fail(profile, data, f'command 0x{code_raw:02X} must be followed by "NMI"')
    if code is NoninCommandCode.NMI_COMMAND:
        length = cur.u8("length")
        require_length(profile, data, [("code and tag", 4), ("length", 1), ("command", length)])
        body = cur.take(length, "command")
        if not body.endswith(_CRLF):
            raise fail(profile, data, "NMI command does not end in CR LF")
        try:
            text = body[:-2].decode("ascii")
        except UnicodeDecodeError:
            raise fail(profile, data, "NMI command is not ASCII") from None
        value = NoninCommand(code, text=text)
    elif code in _WITH_ARGUMENT:
        require_length(profile, data, [("code and tag", 4), ("argument", 1)])
        value = NoninCommand(code, argument=cur.u8("argument"))
    else:
        require_length(profile, data, [("code and tag", 4)])
        value = NoninCommand(code)
    problem = _check_command(value)
    if problem is not None:
        raise fail(profile, data, problem)
    cur.end()
    return value


def encode_nonin_control(value: NoninCommand) -> bytes:
    """Encode a control-point write (what the driver sends)."""
    problem = _check_command(value)
    if problem is not None:
        raise ValueError(problem)
    if value.code is NoninCommandCode.DISPLAY_SYNC:
        assert value.argument is not None
        return bytes((value.code, value.argument))
    out = bytes((value.code,)) + NMI_TAG
    if value.text is not None:
        body = value.text.encode("ascii") + _CRLF
        return out + bytes((len(body),)) + body
    if value.argument is not None:
        return out + bytes((value.argument,))
    return out
