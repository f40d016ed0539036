"""The fault campaign's simulated home: cuffs that take measurements, a CPAP card, a BLE cuff.

``python -m bench.chaos_home DIR CUFFS RATE_PER_S TARGET SEED NIGHT_EVERY_S BLE_PER_S``:

* ``CUFFS`` Beurer BM65 cuffs (:class:`hw_mocks.serial.devices.BeurerBM65`, each on its own
  pseudo-terminal, linked at ``DIR/cuff-<i>``) take ``TARGET`` measurements in all, at
  ``RATE_PER_S`` (spread over the cuffs). A BM65 keeps its records (at most 250; a full cuff
  stops measuring, it never overwrites) and the agent downloads them, so every record is ground
  truth: each is printed as ``P <json>`` (cuff, systolic, diastolic, pulse, device time) the
  moment it is in the cuff's memory. The cuff's clock has minutes (the protocol has no seconds)
  and no two records share a minute.
* With ``NIGHT_EVERY_S`` > 0, a ResMed card (:class:`hw_mocks.cpap.generator.MockCard`) in
  ``DIR/cpap``, used as patients use it: every ``NIGHT_EVERY_S`` (+-30 %) it is taken out of the
  box's reader (the mount point empties, whatever the agent is reading), spends 6-9 s in the
  machine, which writes the next night on it (two minutes of detail), and is put back; ``N
  <day>`` is printed once it is back. Its readings' ground truth is computed from the final
  card (:func:`bench.chaos.cpap_truth`).
* With ``BLE_PER_S`` > 0, an A&D UA-651BLE cuff (:class:`hw_mocks.bluez.devices.AndCuff`) on a
  mock BlueZ on a private system bus (its address is in the first line): it takes
  ``BLE_PER_S`` measurements a second, advertises while it holds one, and deletes its records
  after a complete transfer, as the real cuff does. Each is printed as ``B <json>``.

The first line is ``HOME <json>`` (the cuffs' ports, the bus address, the BLE cuff's address).
Commands on stdin: ``unplug <i>`` / ``replug <i>`` (a BM65's USB cable), ``stop`` (no more
measurements or nights; the cuffs stay plugged, the card is put back), ``quit``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hw_mocks.bluez.bus import PrivateBus
from hw_mocks.bluez.devices import AndCuff
from hw_mocks.bluez.payloads import BloodPressureRecord
from hw_mocks.bluez.threaded import ThreadedMockBlueZ
from hw_mocks.cpap.generator import MockCard
from hw_mocks.serial.devices import BeurerBM65, CuffRecord

CAPACITY = 250
"""Records one BM65 holds (the protocol's count is one byte)."""
BLE_ADDRESS = "00:09:1F:4B:6B:C1"


class Home:
    """Everything in the patient's home (see the module docstring)."""

    def __init__(self, root: Path, cuffs: int, target: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.target = target
        self.devices = [BeurerBM65(root / f"cuff-{i}", seed=seed + i).start() for i in range(cuffs)]
        self.ports = [str(root / f"cuff-{i}") for i in range(cuffs)]
        self.lock = threading.Lock()
        """Held while the simulator's state changes or a line is printed."""
        self.producing = threading.Event()
        self.producing.set()
        self.card: MockCard | None = None
        self.card_root = root / "cpap"
        self.card_lock = threading.Lock()
        self.card_idle = threading.Event()
        self.card_idle.set()
        self.bluez: ThreadedMockBlueZ | None = None
        self.ble_cuff: AndCuff | None = None
        self.start = dt.datetime.now().replace(second=0, microsecond=0) - dt.timedelta(days=1)

    def say(self, line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    # -- BM65 cuffs ----------------------------------------------------------------------

    def measure_bm65(self, rate: float) -> None:
        n = 0
        while True:
            time.sleep(self.rng.expovariate(rate))
            if not self.producing.is_set() or n >= self.target:
                continue
            i = self.rng.randrange(len(self.devices))
            cuff = self.devices[i]
            with self.lock:
                if len(cuff.records) >= CAPACITY:
                    continue
                n += 1
                # Device time: a minute apart per record, so every record has its own key.
                rec = CuffRecord(
                    self.rng.randint(100, 170),
                    self.rng.randint(60, 100),
                    self.rng.randint(50, 110),
                    self.start + dt.timedelta(minutes=n),
                )
                cuff.records.append(rec)
                p = {
                    "cuff": i,
                    "sys": rec.systolic,
                    "dia": rec.diastolic,
                    "pulse": rec.pulse,
                    "when": rec.when.isoformat(),
                }
                self.say("P " + json.dumps(p))

    # -- the CPAP card -------------------------------------------------------------------

    def card_in(self) -> None:
        first = dt.date.today() - dt.timedelta(days=400)
        self.card = MockCard(self.card_root, first_day=first)
        self.card.add_night(first, detail_minutes=2)
        self.card.write()

    def nights(self, every: float) -> None:
        card = self.card
        assert card is not None
        day = max(card.nights)
        while True:
            time.sleep(every * self.rng.uniform(0.7, 1.3))
            with self.card_lock:
                if not self.producing.is_set():
                    return
                self.card_idle.clear()
            try:
                card.pull()  # the mount point is empty: the card is in the machine
                time.sleep(self.rng.uniform(6.0, 9.0))
                day += dt.timedelta(days=1)
                # The machine writes where the card is now (MockCard parks it while pulled).
                parked = card._parked
                mount, card.root = card.root, parked or card.root
                try:
                    card.add_night(day, detail_minutes=2)
                    card.write()
                finally:
                    card.root = mount
                card.insert()
                with self.lock:
                    self.say(f"N {day.isoformat()}")
            finally:
                self.card_idle.set()

    # -- the BLE cuff --------------------------------------------------------------------

    def ble_up(self, stack: contextlib.ExitStack) -> str:
        bus = stack.enter_context(PrivateBus())
        self.bluez = stack.enter_context(ThreadedMockBlueZ(bus.address))
        cuff = AndCuff(BLE_ADDRESS)
        self.ble_cuff = cuff
        self.bluez.call(lambda m: m.adapter().add_peripheral(cuff))
        return bus.address

    def measure_ble(self, rate: float) -> None:
        bluez, cuff = self.bluez, self.ble_cuff
        assert bluez is not None
        assert cuff is not None
        start = self.start - dt.timedelta(days=1)
        n = 0
        while True:
            time.sleep(self.rng.expovariate(rate))
            if not self.producing.is_set():
                continue
            n += 1
            rec = BloodPressureRecord(
                self.rng.randint(100, 170),
                self.rng.randint(60, 100),
                pulse=self.rng.randint(50, 110),
                timestamp=start + dt.timedelta(minutes=n),
            )

            def add(_mock: Any, r: BloodPressureRecord = rec) -> None:
                assert cuff is not None
                cuff.add_record(r)

            with self.lock:
                bluez.call(add)
                assert rec.timestamp is not None
                p: dict[str, Any] = {
                    "sys": rec.systolic,
                    "dia": rec.diastolic,
                    "pulse": rec.pulse,
                    "when": rec.timestamp.isoformat(),
                }
                self.say("B " + json.dumps(p))

    # -- commands ------------------------------------------------------------------------

    def command(self, cmd: str, arg: str) -> None:
        if cmd == "unplug":
            with self.lock:
                self.devices[int(arg)].unplug()
        elif cmd == "replug":
            with self.lock:
                self.devices[int(arg)].replug()
        elif cmd == "stop":
            with self.card_lock:
                self.producing.clear()
            self.card_idle.wait(30)
        with self.lock:
            self.say(f"OK {cmd}")

    def close(self) -> None:
        for d in self.devices:
            d.stop()


def main() -> None:
    root, cuffs, rate = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    target, seed, night_every = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
    ble_rate = float(sys.argv[7])
    home = Home(root, cuffs, target, seed)
    with contextlib.ExitStack() as stack:
        stack.callback(home.close)
        bus = home.ble_up(stack) if ble_rate > 0 else None
        if night_every > 0:
            home.card_in()
        first = {
            "ports": home.ports,
            "dbus": bus,
            "ble_address": BLE_ADDRESS if bus else None,
            "card": str(home.card_root) if home.card else None,
        }
        home.say("HOME " + json.dumps(first))
        threading.Thread(target=home.measure_bm65, args=(rate,), daemon=True).start()
        if home.card is not None:
            threading.Thread(target=home.nights, args=(night_every,), daemon=True).start()
        if ble_rate > 0:
            threading.Thread(target=home.measure_ble, args=(ble_rate,), daemon=True).start()
        for line in sys.stdin:
            cmd, _, arg = line.strip().partition(" ")
            if cmd == "quit":
                break
            home.command(cmd, arg)


if __name__ == "__main__":
    main()
