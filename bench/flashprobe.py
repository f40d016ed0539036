"""Where a patient-day's flash writes go, per transaction: ``python -m bench.flashprobe``.

Not a benchmark section (nothing is timed): the patient-day of ``bench.run patientday``
(:func:`bench.sidebyside_workload.patient_day`, 486 readings in arrival order) runs through a
:class:`~agent.buffer.Buffer` in this process as the daemon drives it: one append per
reading, a batch claimed (``claim_rows``) and acknowledged after every ``--linger-chunks``
oximetry chunks (default 60, the bench's 14 batches a day; 10 is ``linger_s`` 600 s at a
chunk a minute) and at once after a spot reading, a purge after every ``--purge-chunks``
(default 180: :data:`agent.daemon.PURGE_AFTER_S`, 3 h), the anchor when due. Around every
call it reads this process's ``/proc/self/io`` ``write_bytes`` and the WAL frames the call
appended (page numbers named by b-tree with ``dbstat``).

Two accountings (``--writeback``):

* ``compressed`` (default): nothing between calls, as in the time-compressed bench, where
  pages that are dirtied and never fsynced (the ``-shm`` mapping) stay dirty from one commit
  to the next and are written back about once every 30 s of the compressed run;
* ``realtime``: every file of the store is fsynced between calls (from a descriptor of its
  own). In real time a chunk arrives a minute apart and the kernel writes back every page
  dirty for 30 s (``vm.dirty_expire_centisecs`` 3000), so each commit's un-synced pages
  are written once per commit; the fsync does exactly that, and the next store into a
  written-back mapping is counted again by ``write_bytes`` (which counts pages *dirtied*).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

from agent.buffer import Buffer, BufferConfig, FileKeySource
from agent.daemon import PURGE_AFTER_S
from agent.model import Lane
from bench import sidebyside_workload as wl


def _write_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


class WalReader:
    """The frames appended to ``<db>-wal`` since the last look (restarts followed by salt)."""

    def __init__(self, db: Path, page_size: int) -> None:
        self.path = db.with_name(db.name + "-wal")
        self.page = page_size
        self.salt: bytes | None = None
        self.next = 0

    def new_frames(self) -> list[int]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self.salt, self.next = None, 0
            return []
        if len(data) < 32:
            self.salt, self.next = None, 0
            return []
        salt = data[16:24]
        if salt != self.salt:
            self.salt, self.next = salt, 0
        out: list[int] = []
        size = 24 + self.page
        i = self.next
        while 32 + (i + 1) * size <= len(data):
            hdr = data[32 + i * size : 32 + i * size + 24]
            if hdr[8:16] != salt:
                break
            out.append(struct.unpack(">I", hdr[:4])[0])
            i += 1
        self.next = i
        return out


def _sync_all(d: Path) -> None:
    for p in d.iterdir():
        if p.is_file() and not p.name.endswith(".reserve"):
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def run(
    writeback: str,
    config: BufferConfig,
    root: Path,
    linger_chunks: int = 60,
    purge_chunks: int = round(PURGE_AFTER_S / 60),
) -> dict[str, Any]:
    """One patient-day through a Buffer; per kind of call: calls, write_bytes, WAL frames."""
    day = wl.patient_day()
    d = Path(tempfile.mkdtemp(prefix="store-flashprobe-", dir=root))
    db = d / "buffer.db"
    buf = Buffer.open(db, FileKeySource(d / "kek"), config=config)
    if os.environ.get("PROBE_WHATIF_NO_SEEN_LOG") == "1":  # what-if only: an upper bound
        buf._seen.add = lambda tx, keys, gen: None  # type: ignore[method-assign]
    if os.environ.get("PROBE_WHATIF_NO_PENDING_INDEX") == "1":  # what-if only
        buf._conn.execute("DROP INDEX readings_pending")
    page = buf._conn.execute("PRAGMA page_size").fetchone()[0]
    wal = WalReader(db, page)
    names: dict[int, str] = {}

    def name_of(pgno: int) -> str:
        if pgno not in names:
            names.clear()
            names.update(
                {int(n): str(t) for t, n in buf._conn.execute("SELECT name, pageno FROM dbstat")}
            )
        return names.get(pgno, "ptrmap-or-free")

    kinds: dict[str, dict[str, Any]] = collections.defaultdict(
        lambda: {"calls": 0, "write_bytes": 0, "frames": 0, "by_table": collections.Counter()}
    )

    def measured(kind: str, fn: Any) -> Any:
        if writeback == "realtime":
            _sync_all(d)
        wal.new_frames()
        w0 = _write_bytes()
        out = fn()
        w1 = _write_bytes()
        frames = wal.new_frames()
        if writeback == "realtime":
            _sync_all(d)  # what the kernel's writeback writes of this call
            w1 = _write_bytes()
        k = kinds[kind]
        k["calls"] += 1
        k["write_bytes"] += w1 - w0
        k["frames"] += len(frames)
        for p in frames:
            k["by_table"][name_of(p)] += 1
        return out

    chunks = 0
    waiting = 0

    def send() -> None:
        claim = measured("claim", lambda: buf.claim_rows(500))
        if claim is not None:
            measured("ack", lambda: buf.ack(claim.batch_id))

    try:
        w_start = _write_bytes()
        for r in day:
            measured("append", lambda r=r: buf.append([r]))
            waiting += 1
            if r.lane in (Lane.SPOT, Lane.ALARM) or (r.samples is None):
                send()
                waiting = 0
            else:
                chunks += 1
                if chunks % linger_chunks == 0:
                    send()
                    waiting = 0
                if chunks % purge_chunks == 0:
                    measured("purge", buf.purge)
        if waiting:
            send()
        measured("purge", buf.purge)
        if writeback == "realtime":
            _sync_all(d)
        total = _write_bytes() - w_start
    finally:
        buf.close()
        shutil.rmtree(d, ignore_errors=True)
    out: dict[str, Any] = {"writeback": writeback, "page_size": page, "total": total}
    for kind, k in kinds.items():
        out[kind] = {
            "calls": k["calls"],
            "write_bytes": k["write_bytes"],
            "frames": k["frames"],
            "frames_per_call": round(k["frames"] / max(1, k["calls"]), 2),
            "by_table": dict(k["by_table"].most_common()),
        }
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--writeback", choices=("compressed", "realtime"), default="compressed")
    ap.add_argument("--exclusive", choices=("0", "1"), default=None)
    ap.add_argument("--autocheckpoint", type=int, default=None)
    ap.add_argument("--linger-chunks", type=int, default=60)
    ap.add_argument("--purge-chunks", type=int, default=round(PURGE_AFTER_S / 60))
    ap.add_argument("--root", default=os.environ.get("TMPDIR", "/tmp"))
    a = ap.parse_args(argv)
    cfg = BufferConfig()
    if a.exclusive is not None and hasattr(cfg, "exclusive_lock"):
        cfg.exclusive_lock = a.exclusive == "1"
    if a.autocheckpoint is not None:
        cfg.wal_autocheckpoint_pages = a.autocheckpoint
    out = run(a.writeback, cfg, Path(a.root), a.linger_chunks, a.purge_chunks)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
