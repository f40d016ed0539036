"""A simulated USB mobile modem (AT commands, SMS in text mode) on a pseudo-terminal."""

from hw_mocks.modem.sim import ModemSimulator, SentSms

__all__ = ["ModemSimulator", "SentSms"]
