"""The agent's network allow-list: the broker's addresses as a drop-in of ``dho-agent.service``.

The unit allows nothing but loopback (``IPAddressDeny=any``, ``IPAddressAllow=localhost``,
``docs/security.md``, "Network allow-list"). ``dho-provision enroll`` learns where the box
uploads and writes the broker's addresses here::

    /etc/systemd/system/dho-agent.service.d/50-uplink-address.conf
    [Service]
    IPAddressAllow=198.51.100.17/32 2001:db8:17::1/128

Both endpoints of the uplink (MQTT over TLS, and the WebSocket fallback) go to the same host,
so its addresses are all that is needed. A host name is resolved when the drop-in is written;
``selftest`` resolves it again and says when the broker has moved (the agent would then be
refused by the kernel with EPERM and keep everything buffered). ``decommission`` removes the
drop-in with the rest of the box's identity.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Final

from provisioning.fsutil import atomic_write, wipe
from provisioning.layout import BoxLayout
from provisioning.ui import ExitCode, ProvisionError

DROPIN: Final = PurePosixPath("/etc/systemd/system/dho-agent.service.d/50-uplink-address.conf")
_HEADER: Final = (
    "# Written by dho-provision enroll: the agent may reach its broker {host} "
    "(docs/security.md, Network allow-list).\n"
)


def _prefix(address: str) -> str:
    ip = ipaddress.ip_address(address)
    return f"{ip.compressed}/{ip.max_prefixlen}"


def resolve(host: str) -> list[str]:
    """The broker's addresses as prefixes (``a.b.c.d/32``, ``.../128``), sorted, unique.

    Raises :class:`ProvisionError` (exit 69) when the name cannot be resolved.
    """
    try:
        return [_prefix(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ProvisionError(
            f"cannot resolve the broker's name {host} ({exc})",
            next_step="check the network and DNS, then run the command again",
            code=ExitCode.UNREACHABLE,
        ) from None
    found = {_prefix(str(info[4][0]).split("%", 1)[0]) for info in infos}
    return sorted(found, key=lambda p: (":" in p, p))


def render(host: str, prefixes: Sequence[str]) -> str:
    """The drop-in's text."""
    return _HEADER.format(host=host) + "[Service]\nIPAddressAllow=" + " ".join(prefixes) + "\n"


def read(layout: BoxLayout) -> list[str] | None:
    """The prefixes the installed drop-in allows (``None`` when there is none)."""
    try:
        text = layout.host(DROPIN).read_text()
    except FileNotFoundError:
        return None
    found: list[str] = []
    for line in text.splitlines():
        if line.startswith("IPAddressAllow="):
            found += line.split("=", 1)[1].split()
    return found


def write(layout: BoxLayout, host: str) -> tuple[list[str], bool]:
    """Resolve ``host`` and write the drop-in; returns the prefixes and whether it changed.

    On the running box (no ``--root``, systemd running) systemd is told (``daemon-reload``).
    """
    prefixes = resolve(host)
    uid = 0 if _root() else -1
    changed = atomic_write(
        layout.host(DROPIN), render(host, prefixes).encode(), mode=0o644, uid=uid, gid=uid
    )
    if changed:
        _daemon_reload(layout)
    return prefixes, changed


def remove(layout: BoxLayout) -> bool:
    """Remove the drop-in (decommission); True if there was one."""
    gone = wipe(layout.host(DROPIN))
    if gone:
        _daemon_reload(layout)
    return gone


def _root() -> bool:
    import os

    return os.geteuid() == 0


def _daemon_reload(layout: BoxLayout) -> None:
    if layout.rooted or not Path("/run/systemd/system").is_dir():
        return
    tool = shutil.which("systemctl")
    if tool is not None:
        subprocess.run([tool, "daemon-reload"], capture_output=True, check=False, timeout=60)
