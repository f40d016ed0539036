"""Context references: device + patient, and boot ids, stored once in the encrypted ``refs``.

They repeat in every reading, so a reading's ciphertext holds only a small integer that points
at a ``refs`` row. A row is found without decrypting through a blind index ``h`` (an HMAC of
its plaintext under the index key).

One reference is shared by every reading of a device and patient, so one damaged byte in it
must not take them all. Each row therefore holds two sealed copies (``blob``, and ``copy`` =
its key id (4 bytes) + its own nonce and ciphertext); whichever opens repairs the other. A row
is verified (both copies, and that its plaintext is the one looked up) before an append reuses
it; a row neither copy of which opens is moved to ``quarantine`` and a new row replaces it for
new readings, so only the readings that really depend on the lost row are quarantined (when
they are claimed).
"""

from __future__ import annotations

import logging
import sqlite3
import struct
import uuid

from agent.buffer import codec
from agent.buffer.keyring import Keyring
from agent.buffer.schema import Db, Tx
from agent.errors import RowAuthenticationError
from agent.model import DeviceIdentity, Reading

_LOGGER = logging.getLogger(__name__)

RefValue = codec.Context | uuid.UUID
_KEY_ID = struct.Struct(">I")


class Refs:
    """The ``refs`` table and its in-memory caches."""

    def __init__(self, db: Db, keyring: Keyring, *, writable: bool = True) -> None:
        self._db = db
        self._keyring = keyring
        self._writable = writable
        self._ids: dict[bytes, int] = {}  # blind index -> ref id
        self._values: dict[int, RefValue] = {}  # ref id -> decrypted value
        # (device, patient) or boot id -> ref id, so appends skip encoding and hashing them
        self._cache: dict[tuple[DeviceIdentity, str] | uuid.UUID, int] = {}
        self.next_id = 1  # never reused (kept in the ledger); see Outbox.recover
        self.repaired = 0  # copies rewritten because they no longer opened
        self.replaced = 0  # rows lost (neither copy opened), moved to quarantine

    # -- appending ----------------------------------------------------------------------

    def context_ref(self, tx: Tx, r: Reading) -> int:
        """The ref id of a reading's device + patient, adding the row when new."""
        key = (r.device, r.patient)
        ref = self._cache.get(key)
        if ref is None:
            ctx = codec.Context(r.device, r.patient)
            ref = self._ref(tx, codec.encode_context(ctx), ctx)
            self._remember(tx, key, ref)
        return ref

    def boot_ref(self, tx: Tx, boot: uuid.UUID) -> int:
        """The ref id of a boot id, adding the row when new."""
        ref = self._cache.get(boot)
        if ref is None:
            ref = self._ref(tx, codec.encode_boot(boot), boot)
            self._remember(tx, boot, ref)
        return ref

    def _remember(self, tx: Tx, key: tuple[DeviceIdentity, str] | uuid.UUID, ref: int) -> None:
        self._cache[key] = ref
        tx.on_rollback(lambda: self._cache.pop(key, None))

    def _ref(self, tx: Tx, plaintext: bytes, value: RefValue) -> int:
        h = self._keyring.blind(b"ref|", plaintext)
        ref_id = self._ids.get(h)
        if ref_id is not None:
            return ref_id
        conn = self._db.conn
        found = None
        for cand, key_id, blob, copy in conn.execute(
            "SELECT ref_id, key_id, blob, copy FROM refs WHERE h = ? ORDER BY ref_id", (h,)
        ).fetchall():
            pt = self._open_any(cand, key_id, blob, copy)
            if pt is None:
                self._quarantine(cand, key_id, blob, "reference damaged beyond repair")
            elif pt != plaintext:  # an authentic row under a wrong blind index: fix the index
                conn.execute(
                    "UPDATE refs SET h = ? WHERE ref_id = ?",
                    (self._keyring.blind(b"ref|", pt), cand),
                )
                self.repaired += 1
            elif found is None:
                found = cand
        if found is None:
            top = conn.execute("SELECT coalesce(max(ref_id), 0) + 1 FROM refs").fetchone()
            ref_id = max(self.next_id, int(top[0]))
            before = self.next_id
            self.next_id = ref_id + 1
            tx.on_rollback(lambda: setattr(self, "next_id", before))
            blob, copy = self._seal(ref_id, plaintext)
            conn.execute(
                "INSERT INTO refs (ref_id, h, key_id, blob, copy) VALUES (?, ?, ?, ?, ?)",
                (ref_id, h, self._keyring.active, blob, copy),
            )
        else:
            ref_id = found

        def forget(h: bytes = h, ref_id: int = ref_id) -> None:
            self._ids.pop(h, None)
            self._values.pop(ref_id, None)

        tx.on_rollback(forget)
        self._ids[h] = ref_id
        self._values[ref_id] = value
        return ref_id

    # -- reading ------------------------------------------------------------------------

    def resolve(self, ref_id: int) -> RefValue:
        """The value of a ref row (repairing a damaged copy from the other).

        Raises:
            RowAuthenticationError: the row is missing, or neither copy opens.
        """
        value = self._values.get(ref_id)
        if value is not None:
            return value
        row = self._db.conn.execute(
            "SELECT key_id, blob, copy FROM refs WHERE ref_id = ?", (ref_id,)
        ).fetchone()
        if row is None:
            raise RowAuthenticationError(ref_id, "reference row is missing")
        pt = self._open_any(ref_id, row[0], row[1], row[2])
        if pt is None:
            raise RowAuthenticationError(ref_id, "reference row does not authenticate")
        try:
            value = codec.decode_ref(pt)
        except (codec.FormatError, ValueError, TypeError, IndexError) as exc:
            raise RowAuthenticationError(ref_id, f"reference undecodable: {exc}") from None
        self._values[ref_id] = value
        return value

    # -- copies -------------------------------------------------------------------------

    def _seal(self, ref_id: int, plaintext: bytes) -> tuple[bytes, bytes]:
        kr = self._keyring
        main = kr.seal("refs", ref_id, 0, plaintext)
        copy = _KEY_ID.pack(kr.active) + kr.seal("refs-copy", ref_id, 0, plaintext)
        return main, copy

    def _open_one(self, table: str, ref_id: int, key_id: object, blob: object) -> bytes | None:
        if type(key_id) is not int or type(blob) is not bytes:
            return None
        try:
            return self._keyring.open(table, ref_id, key_id, 0, blob)
        except RowAuthenticationError:
            return None

    def _open_any(self, ref_id: int, key_id: object, blob: object, copy: object) -> bytes | None:
        """The plaintext from whichever copy opens; the other is rewritten when it did not."""
        main = self._open_one("refs", ref_id, key_id, blob)
        second = None
        if type(copy) is bytes and len(copy) > _KEY_ID.size:
            (copy_key,) = _KEY_ID.unpack(copy[: _KEY_ID.size])
            second = self._open_one("refs-copy", ref_id, copy_key, copy[_KEY_ID.size :])
        pt = main if main is not None else second
        if pt is None:
            return None
        if main is None or second is None or main != second:
            if copy is not None or main is None:
                self.repaired += 1
            self._rewrite(ref_id, pt)
        return pt

    def _rewrite(self, ref_id: int, plaintext: bytes) -> None:
        if not self._writable:
            return
        blob, copy = self._seal(ref_id, plaintext)
        try:
            self._db.conn.execute(
                "UPDATE refs SET key_id = ?, blob = ?, copy = ? WHERE ref_id = ?",
                (self._keyring.active, blob, copy, ref_id),
            )
        except sqlite3.Error as exc:  # e.g. a full disk: the row is still usable as it is
            _LOGGER.warning("reference %d not repaired now: %s", ref_id, exc)

    def _quarantine(self, ref_id: int, key_id: object, blob: object, reason: str) -> None:
        _LOGGER.error("reference row %d lost (%s); new readings get a new one", ref_id, reason)
        self.replaced += 1
        self._values.pop(ref_id, None)
        if not self._writable:
            return
        conn = self._db.conn
        conn.execute(
            "INSERT INTO quarantine (source, seq, lane, key_id, reason, blob)"
            " VALUES ('refs', ?, NULL, ?, ?, ?)",
            (ref_id, key_id, reason, blob if blob is not None else b""),
        )
        conn.execute("DELETE FROM refs WHERE ref_id = ?", (ref_id,))

    def refresh(self, tx: Tx, *, reblind: bool = False) -> None:
        """Check every row at open (a few hundred small rows): repair a damaged copy from the
        other, add the second copy where a store from before it has none, quarantine a row
        neither copy of which opens, and, after the index key was replaced, recompute the
        blind indexes."""
        conn = self._db.conn
        for ref_id, key_id, blob, copy in conn.execute(
            "SELECT ref_id, key_id, blob, copy FROM refs"
        ).fetchall():
            pt = self._open_any(ref_id, key_id, blob, copy)
            if pt is None:
                self._quarantine(ref_id, key_id, blob, "reference damaged beyond repair")
            elif reblind:
                conn.execute(
                    "UPDATE refs SET h = ? WHERE ref_id = ?",
                    (self._keyring.blind(b"ref|", pt), ref_id),
                )

    def reseal_all(self, tx: Tx) -> None:
        """Re-encrypt every ref row under the active key (after a data key rotation), so the
        old key can be destroyed once the rows sealed with it are purged."""
        conn = self._db.conn
        for ref_id, key_id, blob, copy in conn.execute(
            "SELECT ref_id, key_id, blob, copy FROM refs"
        ).fetchall():
            pt = self._open_any(ref_id, key_id, blob, copy)
            if pt is None:
                self._quarantine(ref_id, key_id, blob, "reference damaged beyond repair")
            else:
                self._rewrite(ref_id, pt)

    def clear(self) -> None:
        """Forget every cached reference."""
        self._ids.clear()
        self._values.clear()
        self._cache.clear()
