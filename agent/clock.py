"""Capture time on a box without a real-time clock.

A Raspberry Pi boots with whatever time ``fake-hwclock``/``systemd-timesyncd`` restored, which
can be hours or days off until NTP syncs. So every reading records, at capture:

* the wall clock (``CLOCK_REALTIME``) in nanoseconds,
* the boot id (``/proc/sys/kernel/random/boot_id``) and ``CLOCK_BOOTTIME`` in nanoseconds,
  which keeps counting across suspend and is never stepped,
* whether the kernel said the clock was synchronised at that moment.

A reading captured before sync can be corrected later: once the clock is synchronised in the
same boot, ``wall = mono + (wall_sync - mono_sync)`` (see :meth:`CaptureTime.corrected`).
Readings from a boot that never synchronised keep ``synced=False`` and are flagged uncertain
downstream. See ``shared/reference/security-and-reliability.md`` section 4.6.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
import uuid
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Protocol

_BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
_TIME_ERROR = 5  # adjtimex(2): clock not synchronised


@dataclass(frozen=True, slots=True)
class CaptureTime:
    """When the gateway captured a reading, in a form that can be corrected after NTP sync."""

    wall_ns: int
    boot_id: uuid.UUID
    mono_ns: int
    synced: bool

    def corrected(self, anchor: ClockAnchor) -> CaptureTime:
        """Return this time re-based on a synchronised anchor taken in the same boot.

        Times from another boot, or already synchronised, are returned unchanged.
        """
        if self.synced or anchor.boot_id != self.boot_id:
            return self
        return replace(self, wall_ns=self.mono_ns + anchor.offset_ns, synced=True)


@dataclass(frozen=True, slots=True)
class ClockAnchor:
    """The offset between wall clock and boot clock, measured while synchronised."""

    boot_id: uuid.UUID
    offset_ns: int


class Clock(Protocol):
    """Where capture times come from (the system, or a test's fake)."""

    def now(self) -> CaptureTime: ...


@cache
def boot_id() -> uuid.UUID:
    """The kernel's id for this boot (fixed until the next reboot)."""
    try:
        return uuid.UUID(_BOOT_ID_PATH.read_text().strip())
    except (OSError, ValueError):  # not Linux, or /proc not mounted: a per-process id
        return uuid.uuid4()


class _Timex(ctypes.Structure):
    # struct timex is about 208 bytes on 64-bit Linux; only `modes` (0 = read only) is read
    # by the kernel, the rest is written. A generous opaque buffer is enough.
    _fields_ = [("modes", ctypes.c_uint), ("_rest", ctypes.c_byte * 508)]


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True) if name else None


def kernel_clock_synced() -> bool:
    """True when the kernel reports the clock as synchronised (any NTP daemon sets this)."""
    libc = _libc()
    if libc is None:
        return False
    tx = _Timex()
    state = int(libc.adjtimex(ctypes.byref(tx)))
    return state not in (-1, _TIME_ERROR)


class SystemClock:
    """The real clocks of this machine."""

    def now(self) -> CaptureTime:
        """Capture the current time (one syscall for sync state, two clock reads)."""
        return CaptureTime(
            wall_ns=time.time_ns(),
            boot_id=boot_id(),
            mono_ns=time.clock_gettime_ns(time.CLOCK_BOOTTIME),
            synced=kernel_clock_synced(),
        )

    def anchor(self) -> ClockAnchor | None:
        """An anchor for correcting earlier captures, or None while not synchronised."""
        t = self.now()
        if not t.synced:
            return None
        return ClockAnchor(boot_id=t.boot_id, offset_ns=t.wall_ns - t.mono_ns)
