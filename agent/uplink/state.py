"""The uplink's small persistent state: envelope sequence numbers, the command counter and the
last good batch size.

Kept in one JSON file written with :func:`agent.atomicfile.write_atomic` (temporary file,
fsync, rename, fsync of the directory). Blocking: call it from a worker thread (the sender
does).

Sequence numbers are reserved in blocks: the file records the first number *not* yet
reserved, so after a crash or ``kill -9`` the box continues above anything it may have used,
at the cost of a gap (the receiver's replay window tolerates gaps). The command counter is
written before a command is carried out, so a replayed command is refused even after a crash.
The batch size is remembered so that a restart does not ramp up from the default again.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Final

from agent.atomicfile import write_atomic

SEQ_BLOCK: Final = 1000


class UplinkState:
    """Sequence numbers and the last accepted command counter, persisted in ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        data = self._read()
        self._reserved_to = int(data.get("seq_reserved_to", 1))
        self._next_seq = self._reserved_to  # everything below may have been used
        self._command_counter = int(data.get("command_counter", 0))
        self._batch_size = int(data.get("batch_size", 0))

    def _read(self) -> dict[str, int]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            raise OSError(f"uplink state {self.path} is unreadable: {err}") from err
        if not isinstance(raw, dict):
            raise OSError(f"uplink state {self.path} is not a JSON object")
        return {k: int(v) for k, v in raw.items() if isinstance(v, int)}

    def _write(self) -> None:
        body = {"seq_reserved_to": self._reserved_to, "command_counter": self._command_counter}
        if self._batch_size:
            body["batch_size"] = self._batch_size
        write_atomic(self.path, json.dumps(body).encode())

    def next_seq(self) -> int:
        """A sequence number never returned before by any process using this file."""
        with self._lock:
            if self._next_seq >= self._reserved_to:
                self._reserved_to = self._next_seq + SEQ_BLOCK
                self._write()
            seq = self._next_seq
            self._next_seq += 1
            return seq

    def skip_to(self, seq: int) -> None:
        """Continue at ``seq`` or above (the receiver's window moved past us)."""
        with self._lock:
            if seq > self._next_seq:
                self._next_seq = seq
                if self._next_seq >= self._reserved_to:
                    self._reserved_to = self._next_seq + SEQ_BLOCK
                    self._write()

    @property
    def command_counter(self) -> int:
        """The highest command counter accepted so far."""
        return self._command_counter

    def accept_command(self, counter: int) -> None:
        """Record ``counter`` as used, durably, before the command is carried out."""
        with self._lock:
            if counter <= self._command_counter:
                raise ValueError("command counters only go up")
            self._command_counter = counter
            self._write()

    @property
    def batch_size(self) -> int:
        """The last batch size remembered (0: none yet)."""
        return self._batch_size

    def remember_batch_size(self, size: int) -> None:
        """Record the current batch size (so a restart starts there)."""
        with self._lock:
            if size != self._batch_size:
                self._batch_size = size
                self._write()
