"""Alarm names the buffer raises (``BufferStats.alarms``; ``docs/operations.md`` says what a
technician does about each)."""

from __future__ import annotations

from typing import Final

PRESSURE: Final = "buffer.pressure"  # above compact_at of the cap: purging and compacting
FULL: Final = "buffer.full"  # over the cap after compaction: continuous/bulk refused
STORAGE_FULL: Final = "storage.full"  # the filesystem itself is full
STORE_SET_ASIDE: Final = "store.set-aside"  # a damaged store was set aside (kept, see stats)
ROWS_QUARANTINED: Final = "rows.quarantined"  # rows that failed authentication were kept aside
KEY_PERMISSIONS: Final = "key.permissions"  # the key file was readable by others (mode reset)
