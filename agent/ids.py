"""Reading identifiers: UUIDv7 (RFC 9562 section 5.7), assigned at capture.

Python 3.11 has no ``uuid.uuid7``. This generator puts the Unix time in milliseconds in the top
48 bits and keeps ids strictly increasing within one process by using the 12-bit ``rand_a``
field as a counter inside the same millisecond (RFC 9562 section 6.2, method 1). The id is
an idempotency key end to end, so uniqueness matters more than the embedded time (which may
come from an unsynchronised clock and is never used as the reading's time).
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def uuid7(now_ns: int | None = None) -> uuid.UUID:
    """Return a new UUIDv7, strictly greater than the previous one from this process."""
    global _last_ms, _counter
    ms = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
    with _lock:
        if ms <= _last_ms:
            # Same millisecond, or the wall clock stepped back: keep order by counting.
            _counter += 1
            if _counter > 0xFFF:
                _last_ms += 1
                _counter = 0
            ms = _last_ms
        else:
            _last_ms = ms
            _counter = int.from_bytes(os.urandom(2), "big") & 0x3FF  # leave headroom
        counter = _counter
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b
    return uuid.UUID(int=value)
