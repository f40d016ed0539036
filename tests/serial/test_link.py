"""The serial link on a real pty: exclusive open and no flow control (issue 7, "Serial
transport": 0x11/0x13 are data in the Contec protocols, reference section 5.6)."""

from __future__ import annotations

import asyncio
import os
import select
import termios
import tty
from collections.abc import Iterator

import pytest

from agent.drivers.serial.link import LineSettings, PortOpenError, SerialLink

XON, XOFF = 0x11, 0x13
SETTINGS = LineSettings(115200)


@pytest.fixture
def pty() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    tty.setraw(master)
    path = os.ttyname(slave)
    os.close(slave)  # the link opens the device itself
    try:
        yield master, path
    finally:
        os.close(master)


def _read_master(fd: int, n: int, limit: float = 10.0) -> bytes:
    out = b""
    while len(out) < n:
        ready, _, _ = select.select([fd], [], [], limit)
        assert ready, f"only {out!r} arrived"
        out += os.read(fd, n - len(out))
    return out


async def test_a_second_open_of_the_port_is_refused(pty: tuple[int, str]) -> None:
    _, path = pty
    first = SerialLink(path, SETTINGS)
    await first.open()
    try:
        second = SerialLink(path, SETTINGS)
        with pytest.raises(PortOpenError, match="cannot open the port"):
            await second.open()
    finally:
        await first.close()
    again = SerialLink(path, SETTINGS)  # free again once closed
    await again.open()
    await again.close()


async def test_xon_and_xoff_are_data_both_ways(pty: tuple[int, str]) -> None:
    master, path = pty
    link = SerialLink(path, SETTINGS)
    await link.open()
    try:
        port = link._port
        assert port is not None
        iflag = termios.tcgetattr(port.fileno())[0]
        assert not iflag & (termios.IXON | termios.IXOFF | termios.IXANY)
        sent = bytes([0x01, XOFF, XON, 0xFF, XOFF, 0x80])
        os.write(master, sent)
        got = b""
        for _ in range(100):
            got += await link.read(0.1)
            if len(got) >= len(sent):
                break
        assert got == sent  # an XOFF did not stop the stream, and nothing was eaten
        await link.write(bytes([XOFF, 0x7D, XON]))
        assert await asyncio.to_thread(_read_master, master, 3) == bytes([XOFF, 0x7D, XON])
    finally:
        await link.close()
