"""The chaos campaign's simulated home: serial blood-pressure cuffs that take measurements.

``python -m bench.chaos_home DIR CUFFS RATE_PER_S TARGET SEED`` starts ``CUFFS`` Beurer BM65
cuffs (:class:`hw_mocks.serial.devices.BeurerBM65`, each on its own pseudo-terminal, linked at
``DIR/cuff-<i>``) and lets them take ``TARGET`` measurements in all, at ``RATE_PER_S`` (spread
over the cuffs). A BM65 keeps its records (at most 250; a full cuff stops measuring, it never
overwrites) and the agent downloads them, so every record is the ground truth the checker
holds the service to: each is printed as ``P <json>`` (cuff, systolic, diastolic, pulse,
device time) the moment it is in the cuff's memory. The cuff's clock has minutes (the
protocol has no seconds) and no two records share a minute.

Commands on stdin: ``unplug <i>`` / ``replug <i>`` (the USB cable), ``stop`` (no more
measurements; the cuffs stay plugged), ``quit``.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import sys
import threading
import time
from pathlib import Path

from hw_mocks.serial.devices import BeurerBM65, CuffRecord

CAPACITY = 250
"""Records one cuff holds (the protocol's count is one byte)."""


def main() -> None:
    root, cuffs, rate = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    target, seed = int(sys.argv[4]), int(sys.argv[5])
    rng = random.Random(seed)
    devices = [BeurerBM65(root / f"cuff-{i}", seed=seed + i).start() for i in range(cuffs)]
    lock = threading.Lock()
    producing = threading.Event()
    producing.set()
    out = sys.stdout
    out.write("HOME " + json.dumps([str(root / f"cuff-{i}") for i in range(cuffs)]) + "\n")
    out.flush()
    start = dt.datetime.now().replace(second=0, microsecond=0) - dt.timedelta(days=1)

    def produce() -> None:
        n = 0
        while True:
            time.sleep(rng.expovariate(rate))
            if not producing.is_set() or n >= target:
                continue
            i = rng.randrange(cuffs)
            cuff = devices[i]
            with lock:
                if len(cuff.records) >= CAPACITY:
                    if all(len(d.records) >= CAPACITY for d in devices):
                        producing.clear()
                    continue
                n += 1
                # Device time: a minute apart per record, so every record has its own key.
                rec = CuffRecord(
                    rng.randint(100, 170),
                    rng.randint(60, 100),
                    rng.randint(50, 110),
                    start + dt.timedelta(minutes=n),
                )
                cuff.records.append(rec)
                out.write(
                    "P "
                    + json.dumps(
                        {
                            "cuff": i,
                            "sys": rec.systolic,
                            "dia": rec.diastolic,
                            "pulse": rec.pulse,
                            "when": rec.when.isoformat(),
                        }
                    )
                    + "\n"
                )
                out.flush()

    threading.Thread(target=produce, daemon=True).start()
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        with lock:
            if cmd == "unplug":
                devices[int(arg)].unplug()
            elif cmd == "replug":
                devices[int(arg)].replug()
            elif cmd == "stop":
                producing.clear()
            elif cmd == "quit":
                break
            out.write(f"OK {cmd}\n")
            out.flush()
    for d in devices:
        d.stop()


if __name__ == "__main__":
    main()
