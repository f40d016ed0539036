"""Context references: device + patient, and boot ids, stored once in the encrypted ``refs``.

They repeat in every reading, so a reading's ciphertext holds only a small integer that points
at a ``refs`` row. A row is found without decrypting through a blind index ``h`` (an HMAC of
its plaintext under the index key).
"""

from __future__ import annotations

import uuid

from agent.buffer import codec
from agent.buffer.keyring import Keyring
from agent.buffer.schema import Db, Tx
from agent.errors import RowAuthenticationError
from agent.model import DeviceIdentity, Reading

RefValue = codec.Context | uuid.UUID


class Refs:
    """The ``refs`` table and its in-memory caches."""

    def __init__(self, db: Db, keyring: Keyring) -> None:
        self._db = db
        self._keyring = keyring
        self._ids: dict[bytes, int] = {}  # blind index -> ref id
        self._values: dict[int, RefValue] = {}  # ref id -> decrypted value
        # (device, patient) or boot id -> ref id, so appends skip encoding and hashing them
        self._cache: dict[tuple[DeviceIdentity, str] | uuid.UUID, int] = {}

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
        row = conn.execute("SELECT ref_id FROM refs WHERE h = ?", (h,)).fetchone()
        if row is None:
            top = conn.execute("SELECT coalesce(max(ref_id), 0) + 1 FROM refs").fetchone()
            ref_id = int(top[0])
            conn.execute(
                "INSERT INTO refs (ref_id, h, key_id, blob) VALUES (?, ?, ?, ?)",
                (ref_id, h, self._keyring.active, self._keyring.seal("refs", ref_id, 0, plaintext)),
            )

            def forget(h: bytes = h, ref_id: int = ref_id) -> None:
                self._ids.pop(h, None)
                self._values.pop(ref_id, None)

            tx.on_rollback(forget)
        else:
            ref_id = int(row[0])
        self._ids[h] = ref_id
        self._values[ref_id] = value
        return ref_id

    def resolve(self, ref_id: int) -> RefValue:
        """The value of a ref row.

        Raises:
            RowAuthenticationError: the row is missing or does not open.
        """
        value = self._values.get(ref_id)
        if value is not None:
            return value
        row = self._db.conn.execute(
            "SELECT key_id, blob FROM refs WHERE ref_id = ?", (ref_id,)
        ).fetchone()
        if row is None:
            raise RowAuthenticationError(ref_id, "reference row is missing")
        value = codec.decode_ref(self._keyring.open("refs", ref_id, row[0], 0, row[1]))
        self._values[ref_id] = value
        return value

    def reseal_all(self, tx: Tx) -> None:
        """Re-encrypt every ref row under the active key (after a data key rotation), so the
        old key can be destroyed once the rows sealed with it are purged."""
        conn = self._db.conn
        rows = conn.execute("SELECT ref_id, key_id, blob FROM refs").fetchall()
        for ref_id, key_id, blob in rows:
            pt = self._keyring.open("refs", ref_id, key_id, 0, blob)
            conn.execute(
                "UPDATE refs SET key_id = ?, blob = ? WHERE ref_id = ?",
                (self._keyring.active, self._keyring.seal("refs", ref_id, 0, pt), ref_id),
            )

    def clear(self) -> None:
        """Forget every cached reference."""
        self._ids.clear()
        self._values.clear()
        self._cache.clear()
