"""Power cuts under the real buffer, and the checker of what every cut left.

:func:`run` mounts a :mod:`hw_mocks.powerfs` card, starts the zygote of
:mod:`tests.powerloss.worker` and boots the box ``cuts`` times; each boot ends in a power cut
aimed at a random mutating filesystem operation inside an append, claim, ack, purge or the
open itself. After every cut the next boot opens the store and dumps it, and the checker
compares the dump with every promise the earlier boots made:

* **lost**: a reading whose ``append`` returned, not acknowledged since, is not in the store;
* **altered**: a stored reading differs from what was appended (digest over every field);
* **unexpected**: the store holds a reading nobody appended;
* **acks undone**: a reading whose ``ack`` returned is pending again (it would be sent twice;
  the receiver would de-duplicate it, but the buffer broke a promise);
* **unhealthy opens**: ``integrity_check`` failed, the store was set aside, or a damage alarm
  (rows missing, rolled back, quarantined, ...) was raised although nothing but power failed.

Used by ``tests/powerloss/test_powerloss.py`` (200 cuts in ``make test``) and by
``make chaos FULL=1`` (``bench/chaos.py``, more cuts).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from hw_mocks.powerfs import PowerFsMount

from tests.powerloss.worker import TARGETS

ROOT = Path(__file__).resolve().parents[2]
BOOT_DEADLINE_S = 120.0
"""A boot that has not ended by then is a finding (a store that never opens stops capture)."""


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


@dataclass
class Result:
    """What a campaign saw (``findings`` empty means every promise held)."""

    seed: int
    cuts: int = 0
    by_label: Counter[str] = field(default_factory=Counter)
    appended: int = 0
    acked: int = 0
    append_promises_checked: int = 0
    """Sum over cuts of the readings the store had promised to keep at that cut."""
    lost: int = 0
    altered: int = 0
    unexpected: int = 0
    acks_undone: int = 0
    unhealthy_opens: int = 0
    max_rows: int = 0
    torn_writes: int = 0
    dropped_writes: int = 0
    names_lost: int = 0
    seconds: float = 0.0
    findings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "by_label"}
        out["by_label"] = dict(sorted(self.by_label.items()))
        out["findings"] = self.findings[:20]
        return out


class _Checker:
    def __init__(self, result: Result) -> None:
        self.r = result
        self.intent: dict[str, str] = {}  # an append was attempted with this reading
        self.promised: set[str] = set()  # ... and returned
        self.delivered: set[str] = set()  # its ack returned
        self.acking: set[str] = set()  # an ack was under way (it deletes what it delivers)

    def boot_lines(self, boot: int, lines: list[str]) -> None:
        stored: dict[str, tuple[str, int]] = {}
        health: dict[str, Any] | None = None
        for line in lines:
            kind, _, rest = line.partition(" ")
            if kind == "S":
                rid, dig, state = rest.split()
                stored[rid] = (dig, int(state))
            elif kind == "H":
                health = json.loads(rest)
                self._verify(boot, stored, health)
            elif kind == "a":
                rid, dig = rest.split()
                self.intent[rid] = dig
            elif kind == "A":
                ids = rest.split()
                self.promised.update(ids)
                self.r.appended += len(ids)
            elif kind == "k":
                self.acking.update(rest.split()[1:])
            elif kind == "K":
                ids = rest.split()[1:]
                self.delivered.update(ids)
                self.r.acked += len(ids)
            elif kind == "L":
                self.r.by_label[rest] += 1

    def _finding(self, text: str) -> None:
        self.r.findings.append(text)

    def _verify(
        self, boot: int, stored: dict[str, tuple[str, int]], health: dict[str, Any]
    ) -> None:
        r = self.r
        r.max_rows = max(r.max_rows, len(stored))
        # An ack cut after its commit took its rows (all of them: one transaction).
        self.delivered |= {i for i in self.acking if i not in stored}
        self.acking.clear()
        lost = [i for i in self.promised if i not in stored and i not in self.delivered]
        altered = [i for i, (d, _) in stored.items() if i in self.intent and self.intent[i] != d]
        unexpected = [i for i in stored if i not in self.intent]
        undone = [i for i, (_, state) in stored.items() if state != 2 and i in self.delivered]
        r.append_promises_checked += len(self.promised)
        r.lost += len(lost)
        r.altered += len(altered)
        r.unexpected += len(unexpected)
        r.acks_undone += len(undone)
        for name, ids in (
            ("lost", lost),
            ("altered", altered),
            ("unexpected", unexpected),
            ("acks undone", undone),
        ):
            if ids:
                self._finding(f"boot {boot}: {len(ids)} readings {name}")
        bad = (
            not health["integrity"]
            or health["set_aside"]
            or health["alarms"]
            or health["quarantined"]
        )
        if bad:
            r.unhealthy_opens += 1
            self._finding(f"boot {boot}: unhealthy open {health}")
        # What the store holds now is what later boots must keep (a reading whose append or
        # ack was cut but committed anyway is held to the same promise from now on).
        self.delivered |= {i for i, (_, state) in stored.items() if state == 2}
        self.promised = {i for i, (_, state) in stored.items() if state != 2}


def run(
    cuts: int, seed: int | None = None, *, deadline_s: float = 600.0, unsafe: bool = False
) -> Result:
    """Boot the box ``cuts`` times, each boot ending in a power cut; check after every one.

    ``unsafe`` runs the negative control: the store's commits are not synced
    (``synchronous=OFF``), so the checker must find lost readings.
    """
    seed = random.randrange(2**32) if seed is None else seed
    rng = random.Random(seed)
    result = Result(seed=seed)
    checker = _Checker(result)
    start = time.monotonic()
    with PowerFsMount() as card, tempfile.TemporaryFile("w+") as log:
        (card.path / "state").mkdir()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "hw-mocks")]),
        }
        zygote = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.powerloss.worker",
                str(card.path),
                str(card.control_path),
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        assert zygote.stdin is not None
        assert zygote.stdout is not None
        out: queue.Queue[str | None] = queue.Queue()

        def pump(stream: IO[str]) -> None:
            for text in stream:
                out.put(text)
            out.put(None)

        threading.Thread(target=pump, args=(zygote.stdout,), daemon=True).start()
        try:
            for boot in range(cuts + 1):
                if time.monotonic() - start > deadline_s:
                    result.findings.append(f"deadline: only {boot} boots in {deadline_s} s")
                    break
                last = boot == cuts  # the last boot only opens and checks
                spec: dict[str, Any] = {
                    "seed": rng.randrange(2**32),
                    "target": rng.choice(TARGETS),
                    "unsafe": unsafe,
                }
                if last:
                    spec["target"] = "none"
                zygote.stdin.write("boot " + json.dumps(spec) + "\n")
                zygote.stdin.flush()
                lines: list[str] = []
                hung = False
                boot_deadline = time.monotonic() + BOOT_DEADLINE_S
                while True:
                    try:
                        line = out.get(timeout=max(0.1, boot_deadline - time.monotonic()))
                    except queue.Empty:
                        hung = True
                        break
                    if line is None:
                        raise RuntimeError("the power-cut zygote died")
                    line = line.rstrip("\n")
                    if line.startswith("EXIT "):
                        break
                    lines.append(line)
                if hung:
                    label = card.request(op="status").get("last_cut")
                    result.findings.append(
                        f"boot {boot} hung for {BOOT_DEADLINE_S:.0f} s (the store did not open"
                        f" or an operation never returned); last lines {lines[-3:]}, {label}"
                    )
                    break
                checker.boot_lines(boot, lines)
                errors = [json.loads(x[4:]) for x in lines if x.startswith("ERR ")]
                if errors:
                    log.seek(0)
                    result.findings.append(
                        f"boot {boot} failed: {errors[0][-3000:]}\nstderr: {log.read()[-2000:]}"
                    )
                    break
                if not last:
                    if "CUT" not in lines:
                        result.findings.append(f"boot {boot} ended without a cut: {lines[-3:]}")
                        break
                    result.cuts += 1
                    status = card.request(op="status")
                    cut = status["last_cut"] or {}
                    result.torn_writes += int(cut.get("torn", 0))
                    result.dropped_writes += int(cut.get("dropped", 0))
                    result.names_lost += int(cut.get("names_lost", 0))
                card.request(op="power_on")
        finally:
            with contextlib.suppress(OSError):
                zygote.stdin.close()
            for pid in _children(zygote.pid):  # a hung boot: end it (our own child only)
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            try:
                zygote.wait(timeout=30)
            except subprocess.TimeoutExpired:
                zygote.kill()
                zygote.wait()
            zygote.stdout.close()
    result.seconds = round(time.monotonic() - start, 1)
    return result


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    s = int(sys.argv[2]) if len(sys.argv) > 2 else None
    print(json.dumps(run(n, s).as_dict(), indent=2))
