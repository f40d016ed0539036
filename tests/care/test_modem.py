"""The AT-command SMS sender with real pyserial against the modem simulator on a pty."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hw_mocks.modem import ModemSimulator

from agent.care.gsm import MAX_SEPTETS, from_gsm, to_gsm
from agent.care.modem import (
    CommandRefusedError,
    Delivery,
    ModemUnavailableError,
    NoNetworkError,
    Outcome,
    SimMissingError,
    SimPinRequiredError,
    SmsModem,
)

NUMBERS = ["+4791234567", "+4799887766"]
TEXT = "DHO-alarm: oksygenmetning under 88 % i 2 min. Frå kl. 03:12. Ref. A7K2."


@pytest.fixture
def modem(tmp_path: Path) -> Iterator[ModemSimulator]:
    with ModemSimulator(tmp_path / "ttyUSB-modem") as sim:
        yield sim


def sender(sim: ModemSimulator, **kw: float) -> SmsModem:
    return SmsModem(sim.path, timeout=kw.get("timeout", 5.0), submit_timeout=kw.get("submit", 10.0))


def test_sends_to_every_number(modem: ModemSimulator) -> None:
    result = sender(modem).send(NUMBERS, TEXT)
    assert [(d.number, d.outcome) for d in result] == [(n, Outcome.SENT) for n in NUMBERS]
    assert [s.number for s in modem.sent] == NUMBERS
    assert all(s.text == TEXT for s in modem.sent)  # æøå survive the GSM alphabet
    assert [d.reference for d in result] == [1, 2]
    assert modem.commands[:7] == [
        "AT",
        "ATE0",
        "AT+CMEE=1",
        "AT+CPIN?",
        "AT+CREG?",
        "AT+CMGF=1",
        'AT+CSCS="GSM"',
    ]


def test_pin_needed(modem: ModemSimulator) -> None:
    modem.pin_required = True
    with pytest.raises(SimPinRequiredError, match="PIN"):
        sender(modem).send(NUMBERS, TEXT)
    assert modem.sent == []
    assert modem.count("submitted") == 0


def test_no_sim(modem: ModemSimulator) -> None:
    modem.no_sim = True
    with pytest.raises(SimMissingError):
        sender(modem).send(NUMBERS, TEXT)


def test_no_network(modem: ModemSimulator) -> None:
    modem.registered = False
    with pytest.raises(NoNetworkError):
        sender(modem).send(NUMBERS, TEXT)
    assert modem.count("submitted") == 0


def test_error_answers(modem: ModemSimulator) -> None:
    modem.refuse = {"AT+CMGF"}
    with pytest.raises(CommandRefusedError, match=r"AT\+CMGF=1"):
        sender(modem).send(NUMBERS, TEXT)
    modem.refuse = set()
    modem.fail_next_sends = 1
    result = sender(modem).send(NUMBERS, TEXT)
    assert [(d.outcome, d.error) for d in result] == [
        (Outcome.FAILED, "cms-500"),
        (Outcome.SENT, None),
    ]
    assert [s.number for s in modem.sent] == NUMBERS[1:]


def test_modem_unplugged(tmp_path: Path) -> None:
    sim = ModemSimulator(tmp_path / "gone").start()
    path = sim.path
    sim.stop()
    with pytest.raises(ModemUnavailableError):
        SmsModem(path, timeout=1.0).send(NUMBERS, TEXT)


def test_unplugged_mid_send_is_unknown_not_retried(modem: ModemSimulator) -> None:
    modem.swallow_submits = True
    result: list[Delivery] = []
    t = threading.Thread(target=lambda: result.extend(sender(modem, submit=30).send(NUMBERS, TEXT)))
    t.start()
    modem.wait_for("submitted", timeout=30)
    modem.unplug()
    t.join(timeout=60)
    assert not t.is_alive()
    assert [d.outcome for d in result] == [Outcome.UNKNOWN, Outcome.FAILED]


def test_bad_numbers_are_refused_before_anything_is_sent(modem: ModemSimulator) -> None:
    with pytest.raises(ValueError, match=r"E\.164"):
        sender(modem).send(["+4791234567", "91234567"], TEXT)
    assert modem.commands == []


def test_check_sends_nothing(modem: ModemSimulator) -> None:
    sender(modem).check()
    assert modem.sent == []


def test_gsm_alphabet() -> None:
    assert to_gsm("Æøå @ €[x]") == bytes([0x1C, 0x0C, 0x0F, 0x20, 0x3F, 0x20]) + b"EUR?x?"
    assert from_gsm(to_gsm("Blodtrykk over 180 mmHg.")) == "Blodtrykk over 180 mmHg."
    long = to_gsm("x" * 400)
    assert len(long) == MAX_SEPTETS
    assert long.endswith(b"...")
    assert 0x1A not in to_gsm("Ξ")
    assert 0x1B not in to_gsm("\x1b")
