"""The SMS path: a USB mobile modem driven with AT commands over pyserial (text mode).

One :meth:`SmsModem.send` opens the port, checks the modem, sends one text to each number
and closes the port again (an alarm SMS is rare; the modem is not held open). The commands
are the standard ones of 3GPP TS 27.005 (SMS) and TS 27.007 (general):

``AT`` (answers?) -> ``ATE0`` (no echo) -> ``AT+CMEE=1`` (numeric errors) -> ``AT+CPIN?``
(``READY``, or a SIM PIN is needed: the box never holds a PIN, the SIM must have none) ->
``AT+CREG?`` (registered at home ``,1`` or roaming ``,5``) -> ``AT+CMGF=1`` (text mode) ->
``AT+CSCS="GSM"`` -> per number ``AT+CMGS="<number>"``, the ``> `` prompt, the text
(:mod:`agent.care.gsm`) and Ctrl-Z, answered ``+CMGS: <mr>`` and ``OK``, or
``+CMS ERROR: <n>``.

Blocking: call it from a worker thread (``asyncio.to_thread``). Failures are typed
(:class:`ModemError` and subclasses, each with a short ``code`` for the status report); the
messages never contain a phone number or the text.

At most once per number: a number whose submit was answered with an error is reported
``failed`` (nothing was sent; the caller may try again later). A number whose submit got no
answer (the modem vanished after the text was handed over) is reported ``unknown``: it may
have gone out, so the caller must not send it again.
"""

from __future__ import annotations

import enum
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from agent.care.gsm import to_gsm

_LOG = logging.getLogger(__name__)

NUMBER: Final = re.compile(r"^\+[1-9][0-9]{6,14}$")
"""Numbers are E.164 with the leading ``+`` (the service sets them)."""
CTRL_Z: Final = b"\x1a"
ESC: Final = b"\x1b"


class ModemError(Exception):
    """The modem could not be used; ``code`` names the case for the status report."""

    code = "modem-error"


class ModemUnavailableError(ModemError):
    """No modem on the port, it does not answer, or it went away (unplugged)."""

    code = "modem-unavailable"


class SimPinRequiredError(ModemError):
    """The SIM asks for a PIN: the box holds none; use a SIM without a PIN."""

    code = "sim-pin-required"


class SimMissingError(ModemError):
    """No SIM card, or it failed."""

    code = "sim-missing"


class NoNetworkError(ModemError):
    """The modem is not registered with a mobile network."""

    code = "no-network"


class CommandRefusedError(ModemError):
    """The modem answered ERROR to a set-up command."""

    code = "modem-refused"


class Outcome(enum.StrEnum):
    """What happened to one number."""

    SENT = "sent"
    FAILED = "failed"  # refused before or by the network: nothing went out
    UNKNOWN = "unknown"  # no answer after the text was handed over: may have gone out


@dataclass(frozen=True, slots=True)
class Delivery:
    """The result for one number (``reference`` is the modem's message reference)."""

    number: str
    outcome: Outcome
    reference: int | None = None
    error: str | None = None


def _open_serial(port: str, baud: int, timeout: float) -> Any:
    import serial  # pyserial; imported here so importing this module needs no pyserial

    try:
        # a short read timeout: the session loop checks its own deadlines
        return serial.Serial(port, baud, timeout=0.2, write_timeout=timeout, exclusive=True)
    except (OSError, serial.SerialException) as exc:
        raise ModemUnavailableError(f"cannot open the modem port ({type(exc).__name__})") from exc


class _Session:
    """Line-oriented AT exchange on an open port."""

    def __init__(self, port: Any, timeout: float, clock: Callable[[], float]) -> None:
        self.port = port
        self.timeout = timeout
        self.clock = clock
        self.buf = b""

    def _read_some(self) -> bytes:
        import serial

        try:
            data = bytes(self.port.read(1))
            waiting = getattr(self.port, "in_waiting", 0)
            if data and waiting:
                data += bytes(self.port.read(waiting))
            return data
        except (OSError, serial.SerialException) as exc:
            raise ModemUnavailableError(f"the modem went away ({type(exc).__name__})") from exc

    def write(self, data: bytes) -> None:
        import serial

        try:
            self.port.write(data)
        except (OSError, serial.SerialException) as exc:
            raise ModemUnavailableError(f"the modem went away ({type(exc).__name__})") from exc

    def lines_until(self, done: Callable[[list[str]], bool], timeout: float) -> list[str]:
        """Read lines until ``done(lines)`` says so; ModemUnavailableError after ``timeout``."""
        deadline = self.clock() + timeout
        lines: list[str] = []
        while True:
            while b"\n" in self.buf or b"\r" in self.buf:
                cut = min(i for i in (self.buf.find(b"\r"), self.buf.find(b"\n")) if i >= 0)
                raw, self.buf = self.buf[:cut], self.buf[cut + 1 :]
                line = raw.decode("ascii", "replace").strip()
                if line:
                    lines.append(line)
                    if done(lines):
                        return lines
            if self.buf.startswith(b"> ") or self.buf == b">":
                lines.append(">")
                self.buf = self.buf[2:] if self.buf.startswith(b"> ") else b""
                if done(lines):
                    return lines
            if self.clock() > deadline:
                raise ModemUnavailableError("the modem did not answer in time")
            self.buf += self._read_some()

    def command(self, cmd: str, timeout: float | None = None) -> list[str]:
        """Send ``cmd``; the answer lines up to and including ``OK``/``ERROR``.

        Raises:
            ModemUnavailableError: no final answer in time.
        """
        self.write(cmd.encode("ascii") + b"\r")
        return self.lines_until(_final, self.timeout if timeout is None else timeout)


def _final(lines: list[str]) -> bool:
    last = lines[-1]
    return last in ("OK", "ERROR") or last.startswith(("+CME ERROR", "+CMS ERROR"))


def _ok(lines: Sequence[str]) -> bool:
    return bool(lines) and lines[-1] == "OK"


class SmsModem:
    """Sends SMS through the modem on ``port`` (e.g. ``/dev/serial/by-id/usb-...-if00``).

    Args:
        port: the modem's AT command port.
        baud: line speed (USB modems ignore it; 115200 is conventional).
        timeout: seconds for each ordinary command.
        submit_timeout: seconds to wait for the network's answer to one message.
        open_port: how to open the port (tests may pass another; default pyserial).
    """

    def __init__(
        self,
        port: str,
        *,
        baud: int = 115_200,
        timeout: float = 5.0,
        submit_timeout: float = 60.0,
        open_port: Callable[[str, int, float], Any] = _open_serial,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.port = port
        self.baud = baud
        self.timeout = timeout
        self.submit_timeout = submit_timeout
        self._open = open_port
        self._clock = clock

    def send(self, numbers: Sequence[str], text: str) -> list[Delivery]:
        """Send ``text`` to every number; one :class:`Delivery` per number, in order.

        Raises:
            ModemError: the modem cannot send at all (nothing was sent to anyone).
            ValueError: a number that is not E.164 (checked before anything is sent).
        """
        for n in numbers:
            if not NUMBER.match(n):
                raise ValueError("phone numbers must be E.164, like +4791234567")
        body = to_gsm(text)
        port = self._open(self.port, self.baud, self.timeout)
        try:
            s = _Session(port, self.timeout, self._clock)
            self._prepare(s)
            out: list[Delivery] = []
            for i, number in enumerate(numbers):
                try:
                    out.append(self._submit(s, number, body))
                except ModemUnavailableError as exc:
                    # The text may have been handed over for this number; the rest not.
                    out.append(Delivery(number, Outcome.UNKNOWN, error=exc.code))
                    out += [Delivery(n, Outcome.FAILED, error=exc.code) for n in numbers[i + 1 :]]
                    break
            return out
        finally:
            try:
                port.close()
            except Exception:  # noqa: BLE001 - closing a vanished port may fail; nothing lost
                _LOG.debug("closing the modem port failed")

    def check(self) -> None:
        """Open the modem and check SIM and network, sending nothing (``selftest``).

        Raises:
            ModemError: what is wrong.
        """
        port = self._open(self.port, self.baud, self.timeout)
        try:
            self._prepare(_Session(port, self.timeout, self._clock))
        finally:
            try:
                port.close()
            except Exception:  # noqa: BLE001
                _LOG.debug("closing the modem port failed")

    def _prepare(self, s: _Session) -> None:
        for attempt in range(3):  # the first AT after opening may be lost or echoed
            try:
                if _ok(s.command("AT", timeout=min(self.timeout, 2.0))):
                    break
            except ModemUnavailableError:
                if attempt == 2:
                    raise
        else:
            raise ModemUnavailableError("the modem does not answer AT")
        for cmd in ("ATE0", "AT+CMEE=1"):
            if not _ok(s.command(cmd)):
                raise CommandRefusedError(f"the modem refused {cmd}")
        pin = s.command("AT+CPIN?")
        if not _ok(pin):
            raise SimMissingError("the modem reports no usable SIM card")
        state = next((ln.split(":", 1)[1].strip() for ln in pin if ln.startswith("+CPIN:")), "")
        if state != "READY":
            if "PIN" in state or "PUK" in state:
                raise SimPinRequiredError(
                    "the SIM card asks for a PIN or PUK; the box holds none (use a SIM "
                    "without a PIN)"
                )
            raise SimMissingError("the modem reports no usable SIM card")
        reg = s.command("AT+CREG?")
        stat = next((ln.split(",")[-1].strip() for ln in reg if ln.startswith("+CREG:")), "")
        if not _ok(reg) or stat not in ("1", "5"):
            raise NoNetworkError("the modem is not registered with a mobile network")
        for cmd in ("AT+CMGF=1", 'AT+CSCS="GSM"'):
            if not _ok(s.command(cmd)):
                raise CommandRefusedError(f"the modem refused {cmd}")

    def _submit(self, s: _Session, number: str, body: bytes) -> Delivery:
        s.write(f'AT+CMGS="{number}"\r'.encode("ascii"))
        first = s.lines_until(lambda ls: ls[-1] == ">" or _final(ls), self.timeout)
        if first[-1] != ">":
            return Delivery(number, Outcome.FAILED, error=_error(first))
        s.write(body + CTRL_Z)
        answer = s.lines_until(_final, self.submit_timeout)
        if not _ok(answer):
            return Delivery(number, Outcome.FAILED, error=_error(answer))
        mr = next((ln.split(":", 1)[1].strip() for ln in answer if ln.startswith("+CMGS:")), "")
        return Delivery(number, Outcome.SENT, reference=int(mr) if mr.isdigit() else None)


def _error(lines: Sequence[str]) -> str:
    last = lines[-1] if lines else ""
    if last.startswith("+CMS ERROR:"):
        return "cms-" + last.split(":", 1)[1].strip()
    if last.startswith("+CME ERROR:"):
        return "cme-" + last.split(":", 1)[1].strip()
    return "error"
