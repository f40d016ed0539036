"""What the buffer can tell about changes made behind its back (``docs/buffer.md``, "Damage").

Row contents are sealed (AEAD); what is in the clear is the outbox's bookkeeping. Three
mechanisms cover it, all keyed with HMACs under the store's index key, so nobody without the
KEK can make a change look legitimate:

* **State tags.** A row's ``tag = HMAC(seq, state, batch)`` is what makes a state in the
  file count. Since 7 December 2026 the store writes no state into rows (a claim is kept in
  memory, an acknowledgement deletes the rows of the batch it holds), so new rows are pending
  with no tag; a row given a batch or marked delivered in the file (by an older release, or an
  edit) is acknowledged only if its tag matches the batch, and purged only if its tag says
  "delivered": one whose ``state`` or ``batch`` column was changed (a flipped bit, an edit) goes
  back to pending instead of being deleted undelivered.
* **The ledger.** One MAC'd row holds how many rows the outbox holds, how many are delivered,
  how many are quarantined, the next batch number and reference id (never reused: a reused
  reference id would give old readings a new device or patient) and a transaction counter;
  every transaction that changes them rewrites it. At open, the file is counted against it:
  rows deleted behind the buffer's back, or marked delivered, are found (not which rows were
  deleted: they are gone).
* **The anchor.** A small MAC'd file next to the store (``<store>.anchor``) records the
  ledger's transaction counter, at most every ``anchor_interval_s`` after a change (300 s by
  default) and at close, in one of two slots overwritten in turn (:func:`write_anchor`). A
  store found *older* than its anchor lost committed transactions: a truncated WAL, or an old
  copy put back.
"""

from __future__ import annotations

import errno
import hmac
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from agent.atomicfile import write_atomic
from agent.buffer.keyring import Keyring

# version, store id, tx, live, acked, quarantined, next batch, next ref id, sticky flags
_LEDGER: Final = struct.Struct(">B16sQQQQQQI")
_ANCHOR: Final = struct.Struct(">B16sQQ")  # version, store id, tx, next batch
_VERSION: Final = 1
MAC_BYTES: Final = 16

# Sticky alarms: kept in the ledger, so they survive restarts (cleared only by a new store).
STICKY: Final = (
    "rows.missing",
    "rows.state-altered",
    "store.rolled-back",
    "store.ledger-invalid",
    "store.repaired",
)


def state_tag(keyring: Keyring, seq: int, state: int, batch: int | None) -> bytes:
    """The tag binding a row's cleartext ``state`` and ``batch`` to its ``seq``."""
    return keyring.blind(b"st|", struct.pack(">QBq", seq, state, -1 if batch is None else batch))


def tag_ok(keyring: Keyring, seq: int, state: object, batch: object, tag: object) -> bool:
    """Whether a row's tag matches its cleartext ``state`` and ``batch`` columns."""
    if type(state) is not int or not 0 <= state <= 255 or type(tag) is not bytes:
        return False
    if batch is not None and type(batch) is not int:
        return False
    try:
        want = state_tag(keyring, seq, state, batch)
    except (struct.error, OverflowError):
        return False
    return hmac.compare_digest(want, tag)


@dataclass
class Ledger:
    """The MAC'd bookkeeping row (see the module docstring)."""

    store_id: bytes
    tx: int = 0
    live: int = 0
    acked: int = 0
    quarantined: int = 0
    next_batch: int = 1
    next_ref: int = 1
    sticky: set[str] = field(default_factory=set)

    def pack(self, keyring: Keyring) -> tuple[bytes, bytes]:
        """The row's ``body`` and ``mac``."""
        flags = sum(1 << i for i, name in enumerate(STICKY) if name in self.sticky)
        body = _LEDGER.pack(
            _VERSION,
            self.store_id,
            self.tx,
            max(0, self.live),
            max(0, self.acked),
            max(0, self.quarantined),
            self.next_batch,
            self.next_ref,
            flags,
        )
        return body, keyring.blind(b"ledger|", body)

    @classmethod
    def unpack(cls, keyring: Keyring, body: object, mac: object) -> Ledger | None:
        """The ledger in a row, or ``None`` when the row is not one this store wrote."""
        if type(body) is not bytes or type(mac) is not bytes or len(body) != _LEDGER.size:
            return None
        if not hmac.compare_digest(keyring.blind(b"ledger|", body), mac):
            return None
        version, store_id, tx, live, acked, quarantined, batch, ref, flags = _LEDGER.unpack(body)
        if version != _VERSION:
            return None
        sticky = {name for i, name in enumerate(STICKY) if flags & (1 << i)}
        return cls(store_id, tx, live, acked, quarantined, batch, ref, sticky)


@dataclass(frozen=True, slots=True)
class Anchor:
    """The ledger's transaction counter as last seen, kept outside the database."""

    store_id: bytes
    tx: int
    next_batch: int


def anchor_path(store_path: Path) -> Path:
    """``<store>.anchor``."""
    return store_path.with_name(store_path.name + ".anchor")


_RECORD: Final = _ANCHOR.size + MAC_BYTES
ANCHOR_SLOT_BYTES: Final = 512
"""The anchor file holds two records, one at offset 0 and one at 512 (two sectors): a write
replaces the older one in place, so the newer one survives a write torn by a power cut."""


def _record(keyring: Keyring, data: bytes) -> Anchor | None:
    if len(data) != _RECORD:
        return None
    body, mac = data[: _ANCHOR.size], data[_ANCHOR.size :]
    if not hmac.compare_digest(keyring.blind(b"anchor|", body), mac):
        return None
    version, store_id, tx, next_batch = _ANCHOR.unpack(body)
    if version != _VERSION:
        return None
    return Anchor(store_id, tx, next_batch)


def _slots(keyring: Keyring, data: bytes) -> list[Anchor | None]:
    """The two slots of an anchor file's contents (``None``: empty, damaged, or not this
    store key's); a file of one record (as written before 4 December 2026) has slot 0 only."""
    return [_record(keyring, data[i : i + _RECORD]) for i in (0, ANCHOR_SLOT_BYTES)]


def _read(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return os.read(fd, 2 * ANCHOR_SLOT_BYTES)
    finally:
        os.close(fd)


def read_anchor(store_path: Path, keyring: Keyring, store_id: bytes | None = None) -> Anchor | None:
    """The newest valid anchor (of the store ``store_id``, when given), or ``None`` when there
    is none: missing, damaged or not written with this store's key."""
    data = _read(anchor_path(store_path))
    if data is None:
        return None
    found = [a for a in _slots(keyring, data) if a is not None]
    if store_id is not None:
        found = [a for a in found if a.store_id == store_id]
    return max(found, key=lambda a: a.tx, default=None)


def _free_slot(slots: list[Anchor | None], anchor: Anchor) -> int:
    """The slot ``anchor`` may overwrite: an empty or damaged one, else one of another store,
    else the older of this store's two."""
    if None in slots:
        return slots.index(None)
    ours = [
        (a.tx, i) for i, a in enumerate(slots) if a is not None and a.store_id == anchor.store_id
    ]
    if len(ours) == 1:
        return 1 - ours[0][1]
    return min(ours)[1] if ours else 0


def write_anchor(store_path: Path, keyring: Keyring, anchor: Anchor) -> None:
    """Record ``anchor`` durably, keeping the newest record already there.

    The first anchor creates the file atomically (temporary file, fsync, rename, fsync of the
    directory). Every later one overwrites, in place, a slot that does not hold this store's
    newest record (:func:`_free_slot`), then ``fdatasync``: a power cut during the write can
    tear only that slot, and the other one still holds the previous anchor. In place, an
    anchor dirties one page of the card's page cache and no metadata; the atomic replacement
    also allocated an inode and a block and rewrote the directory each time
    (``docs/buffer.md``, "Flash", 4 December 2026, night).
    """
    body = _ANCHOR.pack(_VERSION, anchor.store_id, anchor.tx, anchor.next_batch)
    record = body + keyring.blind(b"anchor|", body)
    path = anchor_path(store_path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        write_atomic(path, record)
        return
    try:
        slot = _free_slot(_slots(keyring, os.pread(fd, 2 * ANCHOR_SLOT_BYTES, 0)), anchor)
        offset = slot * ANCHOR_SLOT_BYTES
        if os.pwrite(fd, record, offset) != len(record):
            raise OSError(errno.ENOSPC, "short write of the store anchor")
        os.fdatasync(fd)
    finally:
        os.close(fd)
