"""De-duplication memory: blind keys of what was stored, kept after delivery (``seen``).

A reading with a device timestamp is known by its natural key (device + device time +
values): a cuff that re-sends its stored records creates no twins. A reading without one (a
chunk of continuous samples, a spot value with no device clock) is known by its reading id, so
the *same* reading appended twice (a cancelled append that committed anyway, then retried) is
stored once, while two equal values a minute apart stay two measurements.

Both are blinded with the index key (HMAC), so the table reveals neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from agent.buffer.keyring import Keyring
from agent.buffer.schema import Db
from agent.model import Reading

GENERATION_SHIFT: Final = 16  # one ``seen`` generation per 65,536 readings
_PARAMS: Final = 500  # stay under SQLite's bound-parameter limit


class Seen:
    """The ``seen`` table."""

    def __init__(self, db: Db, keyring: Keyring) -> None:
        self._db = db
        self._keyring = keyring

    def key(self, r: Reading) -> bytes:
        """The blind de-duplication key of a reading."""
        nk = r.natural_key
        if nk is None:
            return self._keyring.blind(b"id|", r.id.bytes)
        return self._keyring.blind(b"nk|", nk)

    def known(self, keys: Sequence[bytes]) -> set[bytes]:
        """Which of ``keys`` are already in the table."""
        found: set[bytes] = set()
        conn = self._db.conn
        for i in range(0, len(keys), _PARAMS):
            part = keys[i : i + _PARAMS]
            marks = ",".join("?" * len(part))
            found.update(
                row[0]
                for row in conn.execute(
                    f"SELECT nk FROM seen WHERE nk IN ({marks})",  # noqa: S608 - placeholders only
                    part,
                )
            )
        return found

    def add(self, keys: Sequence[tuple[bytes, int]]) -> None:
        """Insert ``(key, generation)`` pairs (inside the caller's transaction)."""
        self._db.conn.executemany("INSERT INTO seen (nk, gen) VALUES (?, ?)", keys)

    def forget_before(self, next_seq: int, generations: int) -> None:
        """Drop generations older than the last ``generations`` (inside a transaction)."""
        keep_from = (next_seq >> GENERATION_SHIFT) - generations
        if keep_from > 0:
            self._db.conn.execute("DELETE FROM seen WHERE gen < ?", (keep_from,))
