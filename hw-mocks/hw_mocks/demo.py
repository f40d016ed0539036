"""``make demo``: simulated devices -> encrypted buffer -> (uplink -> receiver when present).

Prints what was produced, buffered and delivered, and proves at-rest secrecy by searching the
store's files for the patient reference and device serial.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from agent.buffer import Buffer, BufferConfig, FileKeySource
from agent.model import Lane, Reading
from hw_mocks.synthetic import CUFF, OXIMETER, PATIENT, ReadingFactory

console = Console()


def _produce(f: ReadingFactory) -> list[Reading]:
    readings: list[Reading] = [f.bp() for _ in range(5)]
    readings += [f.spo2_spot() for _ in range(3)]
    readings += [f.oximetry_chunk(60) for _ in range(30)]  # half an hour of 1 Hz oximetry
    readings.append(f.bp(182, lane=Lane.ALARM))
    return readings


def _stats_table(title: str, buf: Buffer) -> Table:
    s = buf.stats()
    t = Table(title=title)
    for col in ("alarm", "spot", "continuous", "bulk", "claimed", "acked", "db+wal bytes"):
        t.add_column(col, justify="right")
    p = s.pending_by_lane
    t.add_row(
        *(str(p[k]) for k in ("alarm", "spot", "continuous", "bulk")),
        str(s.claimed),
        str(s.acknowledged),
        str(s.file_bytes),
    )
    return t


def main() -> int:
    """Run the demo in a temporary state directory."""
    with tempfile.TemporaryDirectory(prefix="dho-demo-") as tmp:
        state = Path(tmp)
        buf = Buffer.open(
            state / "buffer.db", FileKeySource(state / "buffer.kek"), config=BufferConfig()
        )
        f = ReadingFactory(seed=2026)
        produced = _produce(f)
        console.rule("[bold]1. simulated devices produced")
        console.print(
            f"{sum(r.samples is None for r in produced)} spot readings, "
            f"{sum(r.samples is not None for r in produced)} one-minute oximetry chunks "
            f"({sum(r.samples.sample_count for r in produced if r.samples)} samples), "
            f"1 alarm; devices {CUFF.log_id}, {OXIMETER.log_id}"
        )
        result = buf.append(produced)
        again = buf.append(produced[:5])  # the cuff sends its memory again
        console.rule("[bold]2. buffered (encrypted, durable)")
        console.print(
            f"stored {result.stored}; when the cuff re-sent 5 records: "
            f"{again.stored} stored, {again.duplicates} recognised as duplicates"
        )
        console.print(_stats_table("buffer", buf))
        files = b"".join(
            (state / name).read_bytes() for name in ("buffer.db", "buffer.db-wal", "buffer.db-shm")
        )
        leaks = [m for m in (PATIENT, CUFF.serial, OXIMETER.serial) if m.encode() in files]
        console.print(
            f"searched {len(files)} bytes of buffer.db/-wal/-shm for the patient reference and "
            f"device serials: {'FOUND ' + str(leaks) if leaks else 'none in clear'}"
        )
        console.rule("[bold]3. delivered")
        order: list[str] = []
        while (claim := buf.claim(10)) is not None:
            order.append(f"batch {claim.batch_id}: {len(claim.readings)}")
            buf.ack(claim.batch_id)  # the uplink does this on the service's signed ack
        buf.purge()
        console.print("claimed in priority order (alarm first): " + ", ".join(order))
        console.print(_stats_table("buffer after delivery", buf))
        buf.close()
        return 1 if leaks else 0


if __name__ == "__main__":
    sys.exit(main())
