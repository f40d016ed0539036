"""A simulated serial device on a pseudo-terminal, with unplug and replug.

:class:`SimulatedPort` opens a pty pair (``os.openpty``), puts the slave in raw mode and
publishes it under a stable name: a symlink (``<dir>/<name>`` -> ``/dev/pts/N``), the way
``/dev/serial/by-path/...`` points at ``/dev/ttyUSB0``. The software under test opens the
link with the real pyserial; the device behaviour (a subclass, see :mod:`.devices`) runs on
the master side in its own thread, so it never depends on the event loop of the code under
test.

What a pty can and cannot show (``shared/reference/serial-and-cpap.md`` section 6): the baud
rate the host set is visible on the master (``termios.tcgetattr``), so a device can answer
only at its own speed and send line noise otherwise, as a real UART would; parity is not
emulated (Linux ptys drop ``PARENB``), so 8O1 cannot be checked. Closing the master is the
unplug: the host's next read fails with pyserial's "device reports readiness to read but
returned no data", as with a pulled USB cable. :meth:`replug` makes a new pty (a new
``/dev/pts/N``, like a new ``ttyUSB`` number) and re-points the link.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import termios
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Self

_TICK: Final = 0.005

BAUD_CONSTANTS: Final = {
    getattr(termios, f"B{rate}"): rate
    for rate in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)
}


@dataclass
class PortEvent:
    """Something that happened on the simulated port (for tests to wait on)."""

    kind: str
    """``plugged``, ``unplugged``, ``received`` (host bytes), ``sent``, ``wrong-baud``, ..."""
    data: bytes = b""
    at: float = field(default_factory=time.monotonic)


class SimulatedPort:
    """A device on a pty. Subclasses implement :meth:`on_receive` and :meth:`on_tick`.

    Args:
        link: the stable name to publish (a symlink is created there); ``None`` publishes the
            slave's own ``/dev/pts/N`` only (no replug under the same name then).
        baud: the device's line speed; bytes are sent only while the host has set it (with
            ``wrong_baud_noise``, noise is sent instead, as a UART at the wrong speed sees).
    """

    baud: int = 9600
    wrong_baud_noise: bool = True

    def __init__(self, link: Path | None = None, *, seed: int = 0) -> None:
        self.link = link
        self.events: list[PortEvent] = []
        self.received = bytearray()
        self.rng = random.Random(seed)
        self._cond = threading.Condition()
        self._master: int | None = None
        self._slave: int | None = None
        self._tty: str | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._out = bytearray()
        self._lock = threading.RLock()
        self.silent = False
        """While set, the device sends nothing (a wedged or switched-off device)."""

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        """Plug in and start the device thread."""
        self._plug()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"sim-{type(self).__name__}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the device thread and unplug (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.unplug()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def path(self) -> str:
        """What the host opens: the stable link, or the current ``/dev/pts/N``."""
        if self.link is not None:
            return str(self.link)
        if self._tty is None:
            raise RuntimeError("the port is unplugged")
        return self._tty

    @property
    def tty_name(self) -> str | None:
        """The current ``/dev/pts/N`` (``None`` while unplugged)."""
        return self._tty

    @property
    def plugged(self) -> bool:
        """Whether the device is plugged in."""
        return self._master is not None

    def _plug(self) -> None:
        with self._lock:
            if self._master is not None:
                return
            master, slave = os.openpty()
            tty.setraw(slave)  # no echo, no line discipline until the host configures it
            os.set_blocking(master, False)
            self._master, self._slave = master, slave
            self._tty = os.ttyname(slave)
            if self.link is not None:
                tmp = self.link.with_name(self.link.name + ".new")
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                tmp.symlink_to(self._tty)
                tmp.replace(self.link)
            self._out.clear()
            self.on_plug()
        self._event("plugged")

    def unplug(self) -> None:
        """Pull the cable: close the master (the host sees EIO / no data) and the link."""
        with self._lock:
            if self._master is None:
                return
            if self.link is not None:
                with contextlib.suppress(FileNotFoundError):
                    self.link.unlink()
            for fd in (self._master, self._slave):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._master = self._slave = None
            self._tty = None
        self._event("unplugged")

    def replug(self) -> None:
        """Plug in again: a new pty under the same stable name."""
        self._plug()

    # -- what tests use -------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue bytes for the host (device output), sent as the line allows."""
        with self._lock:
            self._out += data

    def inject_noise(self, n: int = 32, data: bytes | None = None) -> None:
        """Put garbage on the line (random bytes, or ``data``)."""
        self.send(data if data is not None else self.rng.randbytes(n))
        self._event("noise", data or b"")

    def host_baud(self) -> int | None:
        """The baud rate the host has set on the port (``None`` while unplugged)."""
        with self._lock:
            if self._master is None:
                return None
            try:
                attrs = termios.tcgetattr(self._master)
            except termios.error:
                return None
        return BAUD_CONSTANTS.get(attrs[5])

    def wait_for(
        self, kind: str, count: int = 1, timeout: float = 30.0, data: bytes | None = None
    ) -> PortEvent:
        """Block until ``count`` events of ``kind`` (with ``data`` if given) happened."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                matching = [
                    e for e in self.events if e.kind == kind and (data is None or e.data == data)
                ]
                if len(matching) >= count:
                    return matching[count - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {count}x {kind!r} event within {timeout} s")
                self._cond.wait(left)

    def count(self, kind: str, data: bytes | None = None) -> int:
        """How many events of ``kind`` (with ``data`` if given) happened."""
        with self._cond:
            return sum(
                1 for e in self.events if e.kind == kind and (data is None or e.data == data)
            )

    # -- for subclasses -------------------------------------------------------------------

    def on_plug(self) -> None:
        """Called (under the lock) when plugged in."""

    def on_receive(self, data: bytes) -> None:
        """Bytes from the host."""

    def on_tick(self, now: float) -> None:
        """Called every few milliseconds while plugged in; :meth:`send` what is due."""

    def _event(self, kind: str, data: bytes = b"") -> None:
        with self._cond:
            self.events.append(PortEvent(kind, data))
            self._cond.notify_all()

    # -- the device thread ----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                master = self._master
            if master is None:
                time.sleep(_TICK)
                continue
            try:
                readable, _, _ = select.select([master], [], [], _TICK)
            except (OSError, ValueError):
                continue
            with self._lock:
                if self._master != master:
                    continue
                if readable:
                    try:
                        data = os.read(master, 4096)
                    except BlockingIOError:
                        data = b""
                    except OSError:
                        data = b""
                    if data:
                        self.received += data
                        self._event("received", data)
                        self.on_receive(data)
                self.on_tick(time.monotonic())
                self._flush(master)

    def _flush(self, master: int) -> None:
        if not self._out or self.silent:
            if self.silent:
                self._out.clear()
            return
        baud = self.host_baud()
        data = bytes(self._out)
        self._out.clear()
        if baud != self.baud:
            if not self.wrong_baud_noise:
                return
            # a UART at the wrong speed sees framing noise, roughly one byte per few sent
            data = self.rng.randbytes(max(1, len(data) // 3))
            self._event("wrong-baud", data)
        try:
            n = os.write(master, data)
        except BlockingIOError:
            n = 0
        except OSError:
            return
        self._out[:0] = data[n:]


Script = Callable[[SimulatedPort], None]
