"""systemd notification (``sd_notify``) without a C dependency.

The unit is ``Type=notify`` with ``WatchdogSec=`` (:mod:`agent.daemon` decides when):

* ``STATUS=...`` while starting ("opening the encrypted store", ...) and then every status
  report: one line a technician reads in ``systemctl status dho-agent``.
* ``READY=1`` once the store is open, every service has started and the first status report
  is written.
* ``WATCHDOG=1`` from the event loop, only after the loop, the store and the services passed
  their checks; a wedged loop, store or service gets the agent restarted.
* ``STOPPING=1`` on the way out.

Outside systemd (``$NOTIFY_SOCKET`` unset) every call is a no-op. A notification never raises
and never blocks the loop: the datagram is sent with ``MSG_DONTWAIT`` and a failure is logged
once at DEBUG.
"""

from __future__ import annotations

import logging
import os
import socket

_LOGGER = logging.getLogger(__name__)
_warned = False


def _address() -> str | None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return None
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    return address


def notify(*messages: str) -> bool:
    """Send ``messages`` (e.g. ``"READY=1"``, ``"STATUS=..."``) in one datagram.

    Returns False when not under systemd or when the datagram could not be sent.
    """
    global _warned
    address = _address()
    if address is None:
        return False
    payload = "\n".join(m.replace("\n", " ") for m in messages).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(payload, socket.MSG_DONTWAIT, address)
    except OSError as exc:
        if not _warned:
            _warned = True
            _LOGGER.debug("systemd notification failed: %s", exc.strerror)
        return False
    return True


def status(text: str) -> bool:
    """``STATUS=text`` (one line, at most 200 characters)."""
    line = " ".join(text.split())
    return notify("STATUS=" + (line if len(line) <= 200 else line[:199] + "…"))


def watchdog_interval() -> float | None:
    """Half the watchdog timeout systemd gave us, in seconds, or None when there is none."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000
