"""The serial link on a real pty: exclusive open and no flow control (issue 7, "Serial
transport": 0x11/0x13 are data in the Contec protocols, reference section 5.6)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import termios
import threading
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


async def test_reconfiguring_while_the_device_streams_is_not_an_unplug(
    pty: tuple[int, str],
) -> None:
    """Auto-detection re-configures a port that is already streaming (a Nonin sends 75
    frames a second). The flush that drops bytes received under the old settings ran on a
    worker thread while the loop could be between pyserial's ``select`` and its ``read``:
    the read then found nothing and pyserial reported "readiness to read but returned no
    data", which the link took for a pulled cable (a spurious unplug, seen once in three
    end-to-end runs). No read may race the flush."""
    master, path = pty
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            with contextlib.suppress(BlockingIOError):
                os.write(master, b"\x01\x80\x55")
            stop.wait(0.0002)

    link = SerialLink(path, SETTINGS)
    await link.open()
    writer = threading.Thread(target=stream, daemon=True)
    writer.start()
    try:
        for i in range(400):
            await link.configure(LineSettings(9600 if i % 2 else 115200))
            await link.read(0.001)
            assert not link.gone, f"taken for an unplug after {i + 1} re-configurations"
    finally:
        stop.set()
        writer.join(5)
        await link.close()
