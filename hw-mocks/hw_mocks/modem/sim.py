"""A USB mobile modem on a pty: the AT commands an SMS sender uses, nothing is transmitted.

:class:`ModemSimulator` answers like a 3GPP TS 27.005/27.007 modem in text mode: ``AT``,
``ATE0``/``ATE1`` (echo, on at start as on real modems), ``AT+CMEE=1``, ``AT+CPIN?``,
``AT+CREG?``, ``AT+CMGF=1``, ``AT+CSCS="GSM"``, ``AT+CMGS="<number>"`` with the ``> `` prompt,
the text up to Ctrl-Z (or ESC to cancel), then ``+CMGS: <mr>`` and ``OK``. The messages it
"sent" are in :attr:`ModemSimulator.sent`. Cases for tests:

* ``pin_required``: ``+CPIN: SIM PIN``;
* ``no_sim``: ``+CME ERROR: 10`` (SIM not inserted) to ``AT+CPIN?``;
* ``registered = False``: ``+CREG: 0,2`` (searching), and a submit fails with
  ``+CMS ERROR: 331`` (no network service);
* ``fail_next_sends``: the next submits are answered ``+CMS ERROR: 500``;
* ``refuse``: commands (by prefix) answered ``ERROR``;
* ``swallow_submits``: the text is taken but never answered (then ``unplug()`` mid-send);
* ``unplug()`` / ``replug()``: from :class:`~hw_mocks.serial.port.SimulatedPort`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.care.gsm import from_gsm
from hw_mocks.serial.port import SimulatedPort


@dataclass(frozen=True)
class SentSms:
    """One message the simulated modem sent."""

    number: str
    text: str
    reference: int


class ModemSimulator(SimulatedPort):
    """See the module docstring."""

    baud = 115_200
    wrong_baud_noise = False

    def __init__(self, link: Path | None = None, *, seed: int = 0) -> None:
        super().__init__(link, seed=seed)
        self.pin_required = False
        self.no_sim = False
        self.registered = True
        self.fail_next_sends = 0
        self.swallow_submits = False
        self.refuse: set[str] = set()
        self.sent: list[SentSms] = []
        self.commands: list[str] = []
        self._line = bytearray()
        self._echo = True
        self._text_for: str | None = None
        self._text = bytearray()
        self._mr = 0

    def on_plug(self) -> None:
        """A freshly plugged modem echoes and has no SMS in progress."""
        self._line.clear()
        self._echo = True
        self._text_for = None
        self._text.clear()

    def _reply(self, *lines: str) -> None:
        self.send(b"".join(b"\r\n" + ln.encode() + b"\r\n" for ln in lines))

    def on_receive(self, data: bytes) -> None:
        """Commands line by line; in text entry, the message up to Ctrl-Z."""
        for b in data:
            if self._text_for is not None:
                self._text_byte(b)
                continue
            if self._echo:
                self.send(bytes([b]))
            if b == 0x0D:
                line = self._line.decode("ascii", "replace").strip()
                self._line.clear()
                if line:
                    self._command(line)
            elif b != 0x0A:
                self._line.append(b)

    def _text_byte(self, b: int) -> None:
        number = self._text_for
        assert number is not None
        if b == 0x1B:  # ESC: cancelled
            self._text_for = None
            self._text.clear()
            self._reply("OK")
            return
        if b != 0x1A:
            self._text.append(b)
            return
        text = from_gsm(bytes(self._text))
        self._text_for = None
        self._text.clear()
        self._event("submitted", number.encode())
        if self.swallow_submits:
            return
        if not self.registered:
            self._reply("+CMS ERROR: 331")
            return
        if self.fail_next_sends > 0:
            self.fail_next_sends -= 1
            self._reply("+CMS ERROR: 500")
            return
        self._mr = (self._mr + 1) % 256
        self.sent.append(SentSms(number, text, self._mr))
        self._event("sms", number.encode())
        self._reply(f"+CMGS: {self._mr}", "OK")

    def _command(self, line: str) -> None:
        self.commands.append(line)
        self._event("command", line.encode())
        upper = line.upper()
        if any(upper.startswith(p) for p in self.refuse):
            self._reply("ERROR")
        elif upper == "AT":
            self._reply("OK")
        elif upper in ("ATE0", "ATE1"):
            self._echo = upper == "ATE1"
            self._reply("OK")
        elif upper.startswith("AT+CMEE="):
            self._reply("OK")
        elif upper == "AT+CPIN?":
            if self.no_sim:
                self._reply("+CME ERROR: 10")
            elif self.pin_required:
                self._reply("+CPIN: SIM PIN", "OK")
            else:
                self._reply("+CPIN: READY", "OK")
        elif upper == "AT+CREG?":
            self._reply(f"+CREG: 0,{1 if self.registered else 2}", "OK")
        elif upper in ("AT+CMGF=1", 'AT+CSCS="GSM"'):
            self._reply("OK")
        elif upper.startswith("AT+CMGS="):
            if self.pin_required or self.no_sim:
                self._reply("+CMS ERROR: 310")
                return
            self._text_for = line.split("=", 1)[1].strip().strip('"')
            self.send(b"\r\n> ")
        else:
            self._reply("ERROR")
