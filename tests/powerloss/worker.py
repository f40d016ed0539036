"""The box side of the power-cut test: the real buffer on a :mod:`hw_mocks.powerfs` card.

``python -m tests.powerloss.worker ZYGOTE_CARD_DIR CONTROL_SOCKET`` imports everything once and
then forks one *boot* per line ``boot <json>`` read from stdin (fork is ~100x cheaper than a
fresh interpreter; nothing SQLite is opened before the fork). The zygote answers
``EXIT <status>`` when the boot ended.

A boot opens the store (the recovery under test), reports what it holds, and then appends,
claims, acknowledges, releases and purges at random until the card loses power at a random
mutating filesystem operation inside one of them (``arm``). Every line is printed only *after*
the operation it reports returned, so each is a promise the card must keep:

    S <id> <digest> <state>    the store holds this reading (the dump after opening)
    H <json>                   the store's health after opening (alarms, set aside, integrity)
    a <id> <digest>            about to append this reading (it may or may not survive)
    A <id>...                  append returned: these readings are durable
    k <batch> <id>...          about to acknowledge: these readings may be gone (delivered)
    K <batch> <id>...          ack returned: these readings are delivered
    L <label>                  the operation in progress when the power was cut
    CUT                        the card is dead; the boot ends (os._exit, no cleanup)
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import traceback
from pathlib import Path
from typing import Any, TextIO

from hw_mocks.powerfs import PowerFsControl
from hw_mocks.synthetic import ReadingFactory

from agent.buffer import Buffer, BufferConfig, FileKeySource
from agent.errors import StoreCorruptError
from agent.model import Reading
from tests.buffer.digest import digest

TARGETS = ("append", "claim", "ack", "purge", "open")
"""Where a boot aims its power cut (the label that was running when it fell is reported)."""


class PowerCut(Exception):
    """The card is dead: the boot must end now, as a box without power does."""


class Boot:
    def __init__(self, card: Path, control: PowerFsControl, spec: dict[str, Any]) -> None:
        self.card = card
        self.ctl = control
        self.rng = random.Random(spec["seed"])
        self.factory = ReadingFactory(seed=spec["seed"])
        self.target = spec["target"]
        self.unsafe = bool(spec.get("unsafe", False))
        self.out: TextIO = sys.stdout
        self.claimed: list[int] = []
        self.claimed_ids: dict[int, list[str]] = {}  # the reading ids of each claim
        self.span: dict[str, int] = {}  # the most mutations one operation of a kind made
        self.armed = False
        self.drain = False  # the store grew: claim and acknowledge more than append
        self.steps = 0
        self.config = BufferConfig(
            anchor_interval_s=self.rng.choice((0.0, 0.05, 10.0)),
            reserve_bytes=self.rng.choice((0, 64 * 1024)),
            wal_autocheckpoint_pages=self.rng.choice((8, 32, 256, 1024)),
            # As the daemon opens: the integrity check after the open, on a connection of its
            # own, then the store's exclusive lock (a reopen of its connection).
            defer_integrity_check=self.rng.random() < 0.5,
        )

    def emit(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def mutations(self) -> int:
        return int(self.ctl.request(op="status")["mutations"])

    def dead(self) -> bool:
        return bool(self.ctl.request(op="status")["dead"])

    def run_op(self, label: str, fn: Any) -> Any:
        """Run one buffer operation; arm the cut into it when it is the target kind."""
        self.ctl.request(op="label", label=label)
        arm = label == self.target and not self.armed
        if arm:
            after = self.rng.randrange(max(1, self.span.get(label, 24)))
            self.ctl.request(op="arm", after=after, seed=self.rng.randrange(2**32))
            self.armed = True
        before = self.mutations()
        try:
            result = fn()
        except Exception as exc:
            if self.dead():
                raise PowerCut(label) from exc
            raise
        made = self.mutations() - before
        self.span[label] = max(self.span.get(label, 0), made)
        if arm:
            self.ctl.request(op="disarm")
            self.armed = False
        return result

    def open(self) -> Buffer:
        path = self.card / "state" / "buffer.db"
        buf: Buffer = self.run_op(
            "open",
            lambda: Buffer.open(
                path, FileKeySource(self.card / "state" / "kek"), config=self.config
            ),
        )
        if buf.integrity_owed:
            buf = self.run_op("open", lambda: self._deferred_check(buf, path))
        if self.unsafe:
            # The negative control: a store that does not sync its commits must lose some.
            buf._conn.execute("PRAGMA synchronous = OFF")
        return buf

    def _deferred_check(self, buf: Buffer, path: Path) -> Buffer:
        """The daemon's deferred check, then the exclusive lock; a failed check ends the
        agent and its restart checks at the open (and sets a damaged store aside)."""
        try:
            buf.verify_integrity()
        except StoreCorruptError:
            buf.close()
            return Buffer.open(path, FileKeySource(self.card / "state" / "kek"), config=self.config)
        buf.take_exclusive_lock()
        return buf

    def dump(self, buf: Buffer) -> None:
        rows = buf._conn.execute("SELECT seq, lane, key_id, blob, state FROM readings").fetchall()
        lines = []
        for seq, lane, key_id, blob, state in rows:
            r = buf._decode_row(seq, lane, key_id, blob)
            lines.append(f"S {r.id.hex} {digest(r)} {state}")
        stats = buf.stats()
        health = {
            "integrity": buf.integrity_ok(),
            "alarms": list(stats.alarms),
            "set_aside": list(stats.set_aside),
            "quarantined": stats.quarantined,
            "rows": len(rows),
        }
        self.out.write("".join(line + "\n" for line in lines))
        self.emit("H " + json.dumps(health))
        self.drain = len(rows) > 300

    def readings(self) -> list[Reading]:
        f = self.factory
        out = []
        for _ in range(self.rng.randint(1, 12)):
            roll = self.rng.random()
            if roll < 0.25:
                out.append(f.oximetry_chunk(self.rng.choice((30, 60, 300))))
            elif roll < 0.6:
                out.append(f.bp())
            else:
                out.append(f.spo2_spot())
        return out

    def step(self, buf: Buffer) -> None:
        roll = self.rng.random()
        self.steps += 1
        if self.drain and self.steps < 40:
            roll = 0.45 + roll * 0.55  # no appends until the store is smaller again
        if roll < 0.45 or (self.target == "append" and roll < 0.6):
            batch = self.readings()
            self.out.write("".join(f"a {r.id.hex} {digest(r)}\n" for r in batch))
            self.out.flush()
            self.run_op("append", lambda: buf.append(batch))
            self.emit("A " + " ".join(r.id.hex for r in batch))
        elif roll < 0.7:
            most = 200 if self.drain else 40
            claim = self.run_op("claim", lambda: buf.claim(self.rng.randint(1, most)))
            if claim is not None:
                self.claimed.append(claim.batch_id)
                self.claimed_ids[claim.batch_id] = [r.id.hex for r in claim.readings]
        elif roll < 0.88 and self.claimed:
            batch_id = self.claimed.pop(self.rng.randrange(len(self.claimed)))
            ids = self.claimed_ids.pop(batch_id)
            if self.rng.random() < 0.85:
                # An ack deletes what it delivers: cut inside it, its readings may be gone.
                self.emit(f"k {batch_id} " + " ".join(ids))
                self.run_op("ack", lambda: buf.ack(batch_id))
                self.emit(f"K {batch_id} " + " ".join(ids))
            else:
                self.run_op("release", lambda: buf.release(batch_id))
        elif roll < 0.95 or self.target == "purge":
            self.run_op("purge", buf.purge)

    def run(self) -> None:
        buf = self.open()
        self.dump(buf)
        if self.target == "none":  # a checking boot: open, report, close
            buf.close()
            self.emit("DONE")
            return
        for _ in range(400):
            self.step(buf)
        # The target kind never came up or never cut: cut now, between operations.
        self.ctl.request(op="label", label="idle")
        self.ctl.request(op="cut", seed=self.rng.randrange(2**32))
        raise PowerCut("idle")


def _boot(card: Path, control_path: Path, spec: dict[str, Any]) -> int:
    ctl = PowerFsControl(control_path)
    boot = Boot(card, ctl, spec)
    try:
        boot.run()
        return 0
    except PowerCut as cut:
        boot.emit(f"L {cut.args[0]}")
        boot.emit("CUT")
        return 0
    except BaseException:
        text = traceback.format_exc()
        dead = False
        with contextlib.suppress(OSError):
            dead = boot.dead()
        if dead:
            boot.emit("L unknown")
            boot.emit("CUT")
            return 0
        sys.stdout.write("ERR " + json.dumps(text) + "\n")
        sys.stdout.flush()
        return 1


def main() -> None:
    """The zygote: fork one boot per ``boot <json>`` line."""
    card, control = Path(sys.argv[1]), Path(sys.argv[2])
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd != "boot":
            continue
        spec = json.loads(arg)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _boot(card, control, spec)
            finally:
                sys.stdout.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(f"EXIT {os.waitstatus_to_exitcode(status)}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
