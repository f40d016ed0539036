"""One open serial port, on the event loop without blocking it (pyserial underneath).

* **Exclusive**: ``exclusive=True`` (``flock(LOCK_EX | LOCK_NB)``: a second agent, or a
  technician's terminal program, cannot take the port at the same time).
* **No flow control**: ``xonxoff``, ``rtscts`` and ``dsrdtr`` are off; 0x11 and 0x13 are data
  in the Contec protocols (``serial-and-cpap.md`` section 5.6).
* **Reads** come from the loop's reader callback on the port's file descriptor
  (``loop.add_reader``) with a zero-timeout pyserial read, so they never block; opening,
  re-configuring, writing and closing run on a worker thread (``asyncio.to_thread``).
* **Unplug** is normal: pyserial's "device reports readiness to read but returned no data"
  (or EIO/ENODEV) becomes :class:`PortGoneError`, once, and the link is closed. The same
  words come from a read that races a flush of the input, so nothing reads while
  :meth:`SerialLink.configure` re-configures and flushes (the reader is off meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import termios
from dataclasses import dataclass
from typing import Any, Final, Protocol

import serial

from agent.errors import AgentError

_READ_SIZE: Final = 4096


@dataclass(frozen=True, slots=True)
class LineSettings:
    """Baud rate and character format."""

    baud: int
    parity: str = "N"
    """``"N"``, ``"O"`` or ``"E"``."""
    bytesize: int = 8
    stopbits: float = 1

    def __str__(self) -> str:
        return f"{self.baud} {self.bytesize}{self.parity}{self.stopbits:g}"


class PortGoneError(AgentError):
    """The port went away (cable pulled, adapter reset): expected, not a fault."""


class PortOpenError(AgentError):
    """The port exists but cannot be opened (busy, permission, not a tty)."""


class Link(Protocol):
    """What a device procedure talks to (a :class:`SerialLink`, or a test's fake)."""

    async def read(self, within: float) -> bytes:
        """Bytes received within ``within`` seconds (``b""`` if none)."""
        ...

    async def write(self, data: bytes) -> None:
        """Send ``data``."""
        ...

    async def configure(self, settings: LineSettings) -> None:
        """Change the line settings (auto-detection tries several)."""
        ...


class SerialLink:
    """A pyserial port driven from asyncio. Use :meth:`open`, then as a :class:`Link`."""

    def __init__(self, path: str, settings: LineSettings) -> None:
        self.path = path
        self.settings = settings
        self._port: serial.Serial | None = None
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._gone = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self.bytes_in = 0
        self.bytes_out = 0

    def _make(self) -> serial.Serial:
        s = self.settings
        try:
            return serial.Serial(
                port=self.path,
                baudrate=s.baud,
                bytesize=s.bytesize,
                parity=s.parity,
                stopbits=s.stopbits,
                timeout=0,
                write_timeout=2,
                xonxoff=False,
                rtscts=False,
                dsrdtr=False,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise PortOpenError(f"cannot open the port ({type(exc).__name__}: {exc})") from exc

    async def open(self) -> None:
        """Open and start receiving."""
        port = await asyncio.to_thread(self._make)
        self._port = port
        self._loop = asyncio.get_running_loop()
        self._fd = port.fileno()
        self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        port = self._port
        if port is None:
            return
        try:
            data = port.read(_READ_SIZE)
        except (serial.SerialException, OSError):
            self._lost()
            return
        if data:
            self.bytes_in += len(data)
            self._queue.put_nowait(bytes(data))

    def _lost(self) -> None:
        self._gone = True
        self._stop_reader()
        self._queue.put_nowait(None)

    def _stop_reader(self) -> None:
        if self._loop is not None and self._fd is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
            self._fd = None

    @property
    def gone(self) -> bool:
        """Whether the port went away."""
        return self._gone

    async def read(self, within: float) -> bytes:
        """Everything received so far, waiting up to ``within`` seconds for the first bytes."""
        if self._gone and self._queue.empty():
            raise PortGoneError("the port went away")
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives just as the queue delivers, and the task would never stop
            async with asyncio.timeout(within):
                first = await self._queue.get()
        except TimeoutError:
            return b""
        chunks = [first]
        while not self._queue.empty():
            chunks.append(self._queue.get_nowait())
        if None in chunks:
            data = b"".join(c for c in chunks[: chunks.index(None)] if c)
            if data:
                self._queue.put_nowait(None)  # report the loss on the next read
                return data
            raise PortGoneError("the port went away")
        return b"".join(c for c in chunks if c)

    async def write(self, data: bytes) -> None:
        """Send ``data`` (on a worker thread; the write times out after 2 s)."""
        port = self._port
        if port is None or self._gone:
            raise PortGoneError("the port went away")
        try:
            await asyncio.to_thread(port.write, data)
        except (serial.SerialException, OSError) as exc:
            self._lost()
            raise PortGoneError("the port went away while writing") from exc
        self.bytes_out += len(data)

    async def configure(self, settings: LineSettings) -> None:
        """Apply new line settings and drop what was received under the old ones."""
        port = self._port
        if port is None or self._gone:
            raise PortGoneError("the port went away")

        def apply(p: Any) -> None:
            # all at once: one attribute at a time makes pyserial apply intermediate
            # combinations, which a pty refuses with EINVAL
            p.apply_settings(
                {
                    "baudrate": settings.baud,
                    "parity": settings.parity,
                    "bytesize": settings.bytesize,
                    "stopbits": settings.stopbits,
                }
            )
            p.reset_input_buffer()

        # No read may race the flush: pyserial's read selects, then reads; a flush on the
        # worker thread between the two leaves nothing to read, which pyserial reports as
        # "readiness to read but returned no data", the same words as a pulled cable.
        self._stop_reader()
        try:
            await asyncio.to_thread(apply, port)
        except (serial.SerialException, OSError, termios.error) as exc:
            self._lost()
            raise PortGoneError("the port went away while configuring") from exc
        if self._port is port and port is not None and not self._gone and self._loop is not None:
            self._fd = port.fileno()
            self._loop.add_reader(self._fd, self._readable)
        self.settings = settings
        while not self._queue.empty():
            if self._queue.get_nowait() is None:
                self._gone = True
                raise PortGoneError("the port went away")

    async def close(self) -> None:
        """Stop receiving and close the port (idempotent)."""
        self._stop_reader()
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(port.close)
