"""Where serial ports come and go: a pyudev monitor in production, injected events in tests.

The driver only needs to know "something changed on the tty subsystem, look again": each
port worker then checks whether its configured path (a ``/dev/serial/by-path/...`` link)
exists and opens it. So a :class:`PortMonitor` yields :class:`PortChange` values and the
driver wakes the workers. Losing an event is harmless: workers also look again every
``rescan_interval`` seconds, and an unplug is seen by the read that fails.

* :class:`UdevMonitor`: ``pyudev.Monitor.from_netlink`` filtered to ``tty``, its socket
  watched with ``loop.add_reader`` (no thread, no blocking). ``source="udev"`` (default)
  receives events after udevd has created the ``by-path`` links; ``source="kernel"``
  receives the raw kernel uevents (what the tests use, as this machine runs no udevd).
* :class:`InjectedMonitor`: tests call :meth:`~InjectedMonitor.add` / ``remove``, because
  pseudo-terminals produce no udev events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PortChange:
    """One add/remove/change of a tty device."""

    action: str
    """``add``, ``remove``, ``change``, ``bind``, ..."""
    device: str | None
    """The device node (``/dev/ttyUSB0``) when known."""
    links: tuple[str, ...] = ()
    """Its symlinks (``/dev/serial/by-path/...``) as udev reports them (``DEVLINKS``)."""


class PortMonitor(Protocol):
    """A source of port changes."""

    @property
    def kind(self) -> str:
        """``udev``, ``kernel``, ``injected``, ... (shown in the status)."""
        ...

    def changes(self) -> AsyncIterator[PortChange]:
        """Changes as they happen, until cancelled."""
        ...


class InjectedMonitor:
    """Port changes told by a test (pseudo-terminals have no udev)."""

    kind = "injected"

    def __init__(self) -> None:
        self._queue: asyncio.Queue[PortChange] = asyncio.Queue()

    def add(self, path: str) -> None:
        """A port appeared at ``path``."""
        self._queue.put_nowait(PortChange("add", path, (path,)))

    def remove(self, path: str) -> None:
        """The port at ``path`` went away."""
        self._queue.put_nowait(PortChange("remove", path, (path,)))

    async def changes(self) -> AsyncIterator[PortChange]:
        """Changes in the order the test told them."""
        while True:
            yield await self._queue.get()


class UdevMonitor:
    """tty add/remove events from udev (or the kernel) through pyudev, on the loop."""

    def __init__(self, source: str = "udev") -> None:
        import pyudev  # imported here: the codecs and tests without udev never need it

        self.source = source
        self._context = pyudev.Context()
        self._monitor = pyudev.Monitor.from_netlink(self._context, source=source)
        self._monitor.filter_by("tty")

    @property
    def kind(self) -> str:
        """``udev`` or ``kernel``."""
        return self.source

    @staticmethod
    def change_of(device: Any) -> PortChange:
        """A :class:`PortChange` from a pyudev ``Device``."""
        props = device.properties
        links = tuple(str(props.get("DEVLINKS", "")).split())
        return PortChange(str(device.action or "change"), device.device_node, links)

    async def changes(self) -> AsyncIterator[PortChange]:
        """Changes as udev reports them; the netlink socket is read only when readable."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[PortChange] = asyncio.Queue()
        self._monitor.start()
        fd = self._monitor.fileno()

        def readable() -> None:
            while True:
                try:
                    device = self._monitor.poll(timeout=0)
                except OSError as exc:  # ENOBUFS after a burst: say so, let rescans cover it
                    _LOGGER.warning("udev monitor: %s; relying on rescans", type(exc).__name__)
                    return
                if device is None:
                    return
                queue.put_nowait(self.change_of(device))

        loop.add_reader(fd, readable)
        try:
            while True:
                yield await queue.get()
        finally:
            with contextlib.suppress(Exception):
                loop.remove_reader(fd)


def default_monitor() -> tuple[PortMonitor | None, str | None]:
    """The production monitor, or ``None`` and why (no libudev, no netlink socket)."""
    try:
        return UdevMonitor("udev"), None
    except Exception as exc:  # noqa: BLE001 - any failure means "poll instead"
        return None, f"{type(exc).__name__}"
