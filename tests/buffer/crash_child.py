"""Child process for the kill -9 test: writes, claims and acknowledges in a loop.

It prints a line only *after* the operation returned, so every line is a promise the store
must keep after any kill:

    A <reading id hex> <digest>   append returned: the reading is durable
    U <reading id hex> <digest>   append returned, but skipped some readings as duplicates
    k <batch id> <id hex>...      an ack is under way: these readings may be gone (delivered)
    K <batch id> <id hex>...      ack returned: these readings are delivered

An acknowledgement deletes the rows it delivers, so after a kill inside an ack its readings are
either all there or all gone; the ``k`` line printed before it says which may be gone.

Every child's cuff starts its clock at the same device time, so a record of an earlier child
can come again with the same time and values: the buffer rightly keeps one (its natural key),
and such an append's lines promise nothing (``U``); seen once in 50 kills with seed 2120082254.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from hw_mocks.synthetic import ReadingFactory

from agent.buffer import Buffer, BufferConfig, FileKeySource
from tests.buffer.digest import digest


def main() -> None:
    """Run until killed."""
    state, seed = Path(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(seed)
    factory = ReadingFactory(seed=seed)
    buf = Buffer.open(
        state / "buffer.db", FileKeySource(state / "kek"), config=BufferConfig(reserve_bytes=0)
    )
    out = sys.stdout
    out.write("READY\n")
    out.flush()
    while True:
        batch = [
            factory.oximetry_chunk(30) if rng.random() < 0.2 else factory.bp()
            for _ in range(rng.randint(1, 20))
        ]
        kind = "U" if buf.append(batch).duplicates else "A"
        out.write("".join(f"{kind} {r.id.hex} {digest(r)}\n" for r in batch))
        out.flush()
        if rng.random() < 0.3 and (claim := buf.claim(rng.randint(1, 60))) is not None:
            if rng.random() < 0.8:
                ids = " ".join(r.id.hex for r in claim.readings)
                out.write(f"k {claim.batch_id} {ids}\n")
                out.flush()
                buf.ack(claim.batch_id)
                out.write(f"K {claim.batch_id} {ids}\n")
                out.flush()
            else:
                buf.release(claim.batch_id)
        if rng.random() < 0.05:
            buf.purge()


if __name__ == "__main__":
    main()
