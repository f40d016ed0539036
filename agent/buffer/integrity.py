"""What the buffer can tell about changes made behind its back (``docs/buffer.md``, "Damage").

Row contents are sealed (AEAD); what is in the clear is the outbox's bookkeeping. Three
mechanisms cover it, all keyed with HMACs under the store's index key, so nobody without the
KEK can make a change look legitimate:

* **State tags.** Every row carries ``tag = HMAC(seq, state, batch)``. A row is marked
  delivered only if its tag matches the state and batch it was given, and purged only if its
  tag says "delivered": a pending row whose ``state`` or ``batch`` column was changed (a flipped
  bit, an edit) goes back to pending instead of being deleted undelivered.
* **The ledger.** One MAC'd row holds how many rows the outbox holds, how many are delivered,
  how many are quarantined, the next batch number and reference id (never reused: a reused
  reference id would give old readings a new device or patient) and a transaction counter;
  every transaction that changes them rewrites it. At open, the file is counted against it:
  rows deleted behind the buffer's back, or marked delivered, are found (not which rows were
  deleted: they are gone).
* **The anchor.** A small MAC'd file next to the store (``<store>.anchor``) records the
  ledger's transaction counter, at most every ``anchor_interval_s`` after a change (300 s by
  default) and at close. A
  store found *older* than its anchor lost committed transactions: a truncated WAL, or an old
  copy put back.
"""

from __future__ import annotations

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


def read_anchor(store_path: Path, keyring: Keyring) -> Anchor | None:
    """The anchor, or ``None`` when missing, damaged or not written with this store's key."""
    path = anchor_path(store_path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        data = os.read(fd, _ANCHOR.size + MAC_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != _ANCHOR.size + MAC_BYTES:
        return None
    body, mac = data[: _ANCHOR.size], data[_ANCHOR.size :]
    if not hmac.compare_digest(keyring.blind(b"anchor|", body), mac):
        return None
    version, store_id, tx, next_batch = _ANCHOR.unpack(body)
    if version != _VERSION:
        return None
    return Anchor(store_id, tx, next_batch)


def write_anchor(store_path: Path, keyring: Keyring, anchor: Anchor) -> None:
    """Atomically replace the anchor (write, fsync, rename, fsync the directory)."""
    body = _ANCHOR.pack(_VERSION, anchor.store_id, anchor.tx, anchor.next_batch)
    data = body + keyring.blind(b"anchor|", body)
    write_atomic(anchor_path(store_path), data)
