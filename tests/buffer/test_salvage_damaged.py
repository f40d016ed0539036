"""A set-aside store whose damaged readings table answers out of order does not hang the open.

The file in ``data/salvage-out-of-order/`` came from the power-cut campaign's negative control
(``tests/powerloss``, commits not synced): a store set aside as corrupt whose b-tree answers
``seq > 30 ORDER BY seq`` with sequence numbers below 30, zeros and out of order. The salvage
loop took the last row's number as its progress, went backwards and read the same rows for
ever, so ``Buffer.open`` never returned and capture never started. Synthetic readings under a
throw-away key; no patient data.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).with_name("data") / "salvage-out-of-order"
ROOT = Path(__file__).resolve().parents[2]

_OPEN = """
import sys
from pathlib import Path
from agent.buffer import Buffer, BufferConfig, FileKeySource
state = Path(sys.argv[1])
buf = Buffer.open(state / "buffer.db", FileKeySource(state / "kek"),
                  config=BufferConfig(reserve_bytes=0))
s = buf.stats()
print(s.salvaged, len(s.set_aside))
buf.close()
"""


def test_a_set_aside_store_answering_out_of_order_is_salvaged_and_the_open_returns(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    shutil.copy(DATA / "kek", state / "kek")
    (state / "kek").chmod(0o600)
    aside = state / "buffer.db.set-aside-corrupt-20261202T033954Z-2"
    aside.write_bytes(gzip.decompress((DATA / "set-aside.db.gz").read_bytes()))
    out = subprocess.run(
        [sys.executable, "-c", _OPEN, str(state)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,  # the bug: it never returned
    )
    assert out.returncode == 0, out.stderr[-2000:]
    salvaged, aside_count = map(int, out.stdout.split())
    assert aside_count == 1
    assert salvaged > 0  # the readable rows before and after the damage came back
