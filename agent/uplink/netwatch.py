"""Notice when the network comes back: a route, an address or a link appears.

A box on an island loses its mobile data for hours; when the mast is back, the modem brings
its interface up and the kernel adds an address and a default route. The uplink should
connect within seconds of that, not when its back-off happens to expire. This module turns
those kernel events into an :class:`asyncio.Event`.

Linux: a ``NETLINK_ROUTE`` socket subscribed to link, IPv4/IPv6 address and route changes
(stdlib :mod:`socket`, no extra dependency: only the 16-byte message header is read, to tell
a "new" from a "delete"). Where netlink is not available, a cheap poll of
``/proc/net/route`` and ``/proc/net/ipv6_route`` every few seconds does the same job.

Nothing here blocks the event loop: the socket is non-blocking and read from ``add_reader``;
the poll reads two small procfs files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from pathlib import Path
from typing import Final, Protocol

_LOG = logging.getLogger(__name__)

# linux/rtnetlink.h
_RTMGRP_LINK: Final = 0x1
_RTMGRP_IPV4_IFADDR: Final = 0x10
_RTMGRP_IPV4_ROUTE: Final = 0x40
_RTMGRP_IPV6_IFADDR: Final = 0x100
_RTMGRP_IPV6_ROUTE: Final = 0x400
_RTM_NEWLINK: Final = 16
_RTM_NEWADDR: Final = 20
_RTM_NEWROUTE: Final = 24
_NEW: Final = frozenset({_RTM_NEWLINK, _RTM_NEWADDR, _RTM_NEWROUTE})
_NLMSG_HDR: Final = struct.Struct("=IHHII")

_ROUTE_FILES: Final = (Path("/proc/net/route"), Path("/proc/net/ipv6_route"))


class NetworkWatch(Protocol):
    """What the link needs to know about the network."""

    def changed(self) -> asyncio.Event:
        """Set when a link, address or route appeared since the caller last cleared it."""
        ...

    def has_default_route(self) -> bool:
        """Whether any default route exists now (for the status; never blocks an attempt)."""
        ...

    async def run(self) -> None:
        """Watch until cancelled."""
        ...


def default_route_present(files: tuple[Path, ...] = _ROUTE_FILES) -> bool:
    """True when ``/proc/net/route`` or ``/proc/net/ipv6_route`` lists a default route.

    Unknown (the files cannot be read) counts as present: the answer only shapes a status
    message, and a box must never stop trying because of it.
    """
    readable = False
    for path in files:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        readable = True
        for line in lines[1:] if path.name == "route" else lines:
            f = line.split()
            if path.name == "route" and len(f) >= 8 and f[1] == "00000000" and f[7] == "00000000":
                return True
            ipv6_default = len(f) >= 10 and f[0] == "0" * 32 and f[1] == "00" and f[9] != "lo"
            if path.name == "ipv6_route" and ipv6_default:
                return True
    return not readable


def new_events(data: bytes) -> bool:
    """True when the netlink datagram ``data`` holds a new link, address or route message."""
    pos = 0
    while pos + _NLMSG_HDR.size <= len(data):
        length, kind, _, _, _ = _NLMSG_HDR.unpack_from(data, pos)
        if kind in _NEW:
            return True
        if length < _NLMSG_HDR.size:
            break
        pos += (length + 3) & ~3
    return False


class KernelNetworkWatch:
    """Netlink route events, or a poll of the routing table where netlink is unavailable."""

    def __init__(self, *, poll_s: float = 3.0) -> None:
        self.poll_s = poll_s
        self._changed = asyncio.Event()
        self.mode = "idle"

    def changed(self) -> asyncio.Event:
        """See :meth:`NetworkWatch.changed`."""
        return self._changed

    def has_default_route(self) -> bool:
        """See :func:`default_route_present`."""
        return default_route_present()

    async def run(self) -> None:
        """Watch until cancelled."""
        sock = self._open()
        if sock is None:
            self.mode = "poll"
            await self._poll()
            return
        self.mode = "netlink"
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), self._readable, sock)
        try:
            await asyncio.Future()  # until cancelled
        finally:
            loop.remove_reader(sock.fileno())
            sock.close()

    @staticmethod
    def _open() -> socket.socket | None:
        groups = (
            _RTMGRP_LINK
            | _RTMGRP_IPV4_IFADDR
            | _RTMGRP_IPV4_ROUTE
            | _RTMGRP_IPV6_IFADDR
            | _RTMGRP_IPV6_ROUTE
        )
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        except (OSError, AttributeError) as err:
            _LOG.info("no netlink (%s): polling the routing table instead", err)
            return None
        try:
            sock.setblocking(False)
            sock.bind((0, groups))
        except OSError as err:
            sock.close()
            _LOG.info("netlink bind failed (%s): polling the routing table instead", err)
            return None
        return sock

    def _readable(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # ENOBUFS: we missed events, so something changed
                _LOG.debug("netlink: %s", err)
                self._changed.set()
                return
            if not data:
                return
            if new_events(data):
                self._changed.set()

    async def _poll(self) -> None:
        last = await asyncio.to_thread(_snapshot)
        while True:
            await asyncio.sleep(self.poll_s)
            now = await asyncio.to_thread(_snapshot)
            if now != last and now:
                self._changed.set()
            last = now


def _snapshot() -> str:
    parts = []
    for path in _ROUTE_FILES:
        with contextlib.suppress(OSError):
            parts.append(path.read_text())
    return "".join(parts)
