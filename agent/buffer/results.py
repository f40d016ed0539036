"""The buffer's tunables and the values its operations return (``docs/buffer-api.md``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agent.errors import RowAuthenticationError
from agent.model import Reading
from dho_protocol.rowpayload import WireRows


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What an append did: readings stored, and readings skipped as duplicates."""

    stored: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class Claim:
    """A batch of readings handed to the uplink."""

    batch_id: int
    readings: tuple[Reading, ...]
    quarantined: tuple[RowAuthenticationError, ...] = ()
    encrypted_bytes: int = 0


@dataclass(frozen=True, slots=True)
class RowClaim:
    """A batch of stored rows handed to the uplink as they are (see ``Buffer.claim_rows``).

    Attributes:
        rows: the decrypted rows with their ids, lanes and references, as the uplink seals
            them (:func:`dho_protocol.seal_rows`: batch version 4, payload v4).
        raw_frames: whether some rows carry raw device frames.
    """

    batch_id: int
    rows: WireRows
    raw_frames: bool
    quarantined: tuple[RowAuthenticationError, ...] = ()
    encrypted_bytes: int = 0

    @property
    def readings(self) -> int:
        """How many readings the claim holds."""
        return len(self.rows.rows)


@dataclass(frozen=True, slots=True)
class BufferStats:
    """Counts and health for the status command and the uplink. No patient data."""

    pending_by_lane: dict[str, int]
    claimed: int
    acknowledged: int
    quarantined: int
    used_bytes: int
    file_bytes: int
    cap_bytes: int | None
    alarms: tuple[str, ...]
    set_aside: tuple[str, ...] = ()  # every store set aside next to this one (kept)
    salvaged: int = 0  # readings imported from set-aside stores by this process

    @property
    def pending(self) -> int:
        """All readings waiting to be sent."""
        return sum(self.pending_by_lane.values())


@dataclass
class BufferConfig:
    """Tunables. Defaults suit a Raspberry Pi with a 16 GB card."""

    cap_bytes: int | None = None
    compact_at: float = 0.9  # fraction of the cap where compaction starts
    compact_to: float = 0.8  # ... and where it stops
    compact_period_ms: int = 60_000
    reserve_bytes: int = 4 * 2**20  # given back to the filesystem on SQLITE_FULL
    # Pages the WAL may hold before SQLite checkpoints them into the database. Must stay well
    # under half the reserve: on a full disk, the checkpoint needs that much room to run
    # (Reserve.checkpoint_pages caps it at a quarter: 1,024 pages of 1 KiB, 256 of 4 KiB with
    # the default reserve). 1,024 1 KiB pages (1 MiB, what 256 pages of 4 KiB were) hold
    # about 3 hours of a night's commits (916 frames with 14 batches a night, 1,021 with 54),
    # so the purge's checkpoint (agent.daemon.PURGE_AFTER_S, 3 h) is nearly always the only
    # one: a page the commits rewrote (the ledger, the last leaf of each b-tree) is copied to
    # the database once instead of at every 256 frames (docs/buffer.md, "Flash").
    wal_autocheckpoint_pages: int = 1024
    # SQLite page size of a new store (an existing store keeps its own: changing it needs a
    # VACUUM, which no migration does). 1 KiB pages write about 2x less to the card per
    # patient-day than 4 KiB (a commit writes each page it touched whole); docs/buffer.md.
    page_size: int = 1024
    # auto_vacuum of a new store: "none" (since 7 December 2026) or "incremental" (before).
    # With "incremental" every commit that takes a page (a new leaf every 2-3 chunks) also
    # wrote a pointer-map page, about 0.25 MB of the card per patient-day, so that a purge
    # could give the freed pages back to the filesystem; with "none" they stay in the file
    # (its size is its peak) and the next rows reuse them. An existing store keeps its mode.
    auto_vacuum: Literal["none", "incremental"] = "none"
    # locking_mode=EXCLUSIVE: the WAL index in heap memory, no ``-shm`` file on the card. In
    # real time (a commit a minute) the kernel wrote the -shm pages each commit dirtied back
    # to the card after every commit, as much again as the WAL itself (docs/buffer.md,
    # "Flash"). The store's connection is then the only one: an open that defers the
    # integrity check starts without it and takes it once the check passed
    # (Buffer.verify_integrity).
    exclusive_lock: bool = True
    seen_generations: int = 32  # de-duplication memory: 32 * 65,536 readings
    # De-duplication keys of the latest appends kept in the ledger row (which every commit
    # writes anyway) before they move to seen_log: an append writes one page less. 32 keys of
    # 20 bytes keep the ledger row (about 100 bytes) inside one 1 KiB page (agent.buffer.dedup).
    seen_tail_keys: int = 32
    check_integrity: bool = True
    # With check_integrity: run SQLite's integrity_check after the open instead of during it
    # (Buffer.verify_integrity, which the daemon calls in the background), unless the check
    # owed by the last such open never passed (``<store>.unverified`` exists); see
    # docs/buffer.md, "Damaged files at open".
    defer_integrity_check: bool = False
    # At most this often (after a change), record the ledger's transaction counter outside the
    # database, so that committed transactions lost with the WAL are noticed at the next open.
    # Each write is a new 4 KiB file block (temporary file, fsync, rename): at 10 s that was
    # one per append in real time (a chunk a minute), about 2 MB of the card a patient-day;
    # at 300 s about 0.2 MB. The window in which lost commits go unnoticed is that long
    # (the anchor is also written at every close); see docs/buffer.md, "Flash".
    anchor_interval_s: float = 300.0
    salvage_batch: int = 5_000  # readings imported from set-aside stores per open or purge
