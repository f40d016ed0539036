"""The store's data keys: unwrapped from the ``keys`` table with the KEK, used to seal rows.

* One *index* key, for the blind indexes (HMACs that find a row without decrypting it).
* One or more *data* keys, one active: rows are sealed with ChaCha20-Poly1305 under the active
  key; older rows keep the key they were written with until they are purged.

The associated data of every row is ``"dho-buffer/v1/" + table + seq (8) + key_id (4) +
lane (1)``: an edited row, a row moved to another position or lane, or two swapped rows do not
open.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import struct
from collections.abc import Callable
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from agent.buffer.keys import KEY_BYTES, NONCE_BYTES, KeySource, unwrap_key, wrap_key
from agent.buffer.schema import Db, Tx
from agent.errors import KeyLostError, KeyUnavailableError, RowAuthenticationError

_LOGGER = logging.getLogger(__name__)

PURPOSE_DATA: Final = "data"
PURPOSE_INDEX: Final = "index"
TAG_BYTES: Final = 16


def aad(table: str, seq: int, key_id: int, lane: int) -> bytes:
    """Associated data of a sealed row. Fixed-width binary: no field can run into another."""
    return b"dho-buffer/v1/" + table.encode() + struct.pack(">QIB", seq, key_id, lane)


class Keyring:
    """Unwrapped data keys of one open store. Never written anywhere in clear."""

    def __init__(self) -> None:
        self._data: dict[int, ChaCha20Poly1305] = {}
        self._index = b""
        self.active = 0
        self.permissions_fixed = False

    # -- loading ------------------------------------------------------------------------

    def load(self, db: Db, source: KeySource) -> None:
        """Load the KEK and unwrap the data keys, creating both for a new store; finish or
        undo a KEK rotation that a crash interrupted.

        Raises:
            KeyLostError: the KEK is gone or is not this store's (the caller sets it aside).
            KeyUnavailableError: the key source cannot deliver the KEK now (configuration).
        """
        conn = db.conn
        query = "SELECT key_id, purpose, state, wrapped, wrapped_next FROM keys"
        rows = conn.execute(query).fetchall()
        has_data = conn.execute("SELECT EXISTS (SELECT 1 FROM readings)").fetchone()[0]
        kek = source.load(create=not rows and not has_data)
        self.permissions_fixed = bool(getattr(source, "permissions_fixed", False))
        if not rows:
            if has_data:
                raise KeyLostError("store has readings but no data keys (shredded)")
            with db.tx():
                self.add_key(db, kek, PURPOSE_INDEX, "active")
                self.add_key(db, kek, PURPOSE_DATA, "active")
            rows = conn.execute(query).fetchall()
        pending_rotation = any(r[4] is not None for r in rows)
        try:
            plain = {r[0]: unwrap_key(kek, r[3], r[0], r[1]) for r in rows}
        except KeyLostError:
            if not pending_rotation:
                raise
            # A KEK rotation stopped after the new KEK was stored but before the rows were
            # switched over: the current KEK opens the "next" wrapping. Finish it.
            plain = {r[0]: unwrap_key(kek, r[4], r[0], r[1]) for r in rows}
            with db.tx():
                conn.execute("UPDATE keys SET wrapped = wrapped_next, wrapped_next = NULL")
        else:
            if pending_rotation:  # rotation stopped before the new KEK was stored: undo it
                with db.tx():
                    conn.execute("UPDATE keys SET wrapped_next = NULL")
        for key_id, purpose, state, *_ in rows:
            if purpose == PURPOSE_INDEX:
                self._index = plain[key_id]
            else:
                self._data[key_id] = ChaCha20Poly1305(plain[key_id])
                if state == "active":
                    self.active = key_id
        if not self._index or not self.active:
            raise KeyUnavailableError("store has no active data key or no index key")

    def add_key(self, db: Db, kek: bytes, purpose: str, state: str) -> tuple[int, bytes]:
        """Insert a new wrapped key (inside the caller's transaction); returns id and key."""
        conn = db.conn
        key_id = int(conn.execute("SELECT coalesce(max(key_id), 0) + 1 FROM keys").fetchone()[0])
        dek = os.urandom(KEY_BYTES)
        conn.execute(
            "INSERT INTO keys (key_id, purpose, state, wrapped) VALUES (?, ?, ?, ?)",
            (key_id, purpose, state, wrap_key(kek, dek, key_id, purpose)),
        )
        return key_id, dek

    # -- using --------------------------------------------------------------------------

    def has(self, key_id: object) -> bool:
        """Whether ``key_id`` names a data key of this store."""
        return type(key_id) is int and key_id in self._data

    def seal(self, table: str, seq: int, lane: int, plaintext: bytes) -> bytes:
        """Encrypt a row under the active key: nonce || ciphertext || tag."""
        nonce = os.urandom(NONCE_BYTES)
        aead = self._data[self.active]
        return nonce + aead.encrypt(nonce, plaintext, aad(table, seq, self.active, lane))

    def open(self, table: str, seq: int, key_id: int, lane: int, blob: bytes) -> bytes:
        """Decrypt a row.

        Raises:
            RowAuthenticationError: the row does not open (edited, moved, or its key is gone).
        """
        aead = self._data.get(key_id)
        if aead is None:
            raise RowAuthenticationError(seq, f"{table} row names data key {key_id}, not in store")
        try:
            nonce, body = blob[:NONCE_BYTES], blob[NONCE_BYTES:]
            return aead.decrypt(nonce, body, aad(table, seq, key_id, lane))
        except InvalidTag:
            raise RowAuthenticationError(seq, f"{table} row does not authenticate") from None

    def blind(self, label: bytes, data: bytes) -> bytes:
        """A blind index: HMAC-SHA256 under the index key, truncated to 16 bytes."""
        return hmac.digest(self._index, label + data, "sha256")[:TAG_BYTES]

    # -- changing -----------------------------------------------------------------------

    def rotate_data_key(self, db: Db, tx: Tx, source: KeySource) -> int:
        """Retire the data keys and add a new active one, inside ``tx``; returns its id.

        The keyring switches at once (the caller re-seals rows under the new key in the same
        transaction) and switches back if the transaction does not commit.
        """
        kek = source.load(create=False)
        db.conn.execute("UPDATE keys SET state = 'retired' WHERE purpose = 'data'")
        new_id, dek = self.add_key(db, kek, PURPOSE_DATA, "active")
        old_active = self.active
        self._data[new_id] = ChaCha20Poly1305(dek)
        self.active = new_id

        def undo() -> None:
            self._data.pop(new_id, None)
            self.active = old_active

        tx.on_rollback(undo)
        return new_id

    def rotate_kek(self, db: Db, source: KeySource, new_kek: bytes | None = None) -> None:
        """Re-wrap every data key under a new KEK, crash-safely, then store the new KEK.

        Step 1 writes the new wrapping beside the old (``wrapped_next``); step 2 replaces the
        KEK in its source; step 3 switches the rows over. Opening the store after a crash at
        any point finishes or undoes the rotation (see :meth:`load`).
        """
        conn = db.conn
        old = source.load(create=False)
        new = new_kek or os.urandom(KEY_BYTES)
        rows = conn.execute("SELECT key_id, purpose, wrapped FROM keys").fetchall()
        with db.tx():
            for key_id, purpose, wrapped in rows:
                dek = unwrap_key(old, wrapped, key_id, purpose)
                conn.execute(
                    "UPDATE keys SET wrapped_next = ? WHERE key_id = ?",
                    (wrap_key(new, dek, key_id, purpose), key_id),
                )
        source.replace(new)
        with db.tx():
            conn.execute("UPDATE keys SET wrapped = wrapped_next, wrapped_next = NULL")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def retire_unused(self, db: Db, tx: Tx, in_use: Callable[[int], bool]) -> None:
        """Delete retired data keys no row uses any more (routine crypto-shredding)."""
        conn = db.conn
        retired = [
            r[0]
            for r in conn.execute(
                "SELECT key_id FROM keys WHERE state = 'retired' AND purpose = ?", (PURPOSE_DATA,)
            )
        ]
        for key_id in retired:
            if not in_use(key_id):
                conn.execute("DELETE FROM keys WHERE key_id = ?", (key_id,))
                tx.after_commit(functools.partial(self._data.pop, key_id, None))

    def clear(self) -> None:
        """Forget every key (after a shred)."""
        self._data.clear()
        self._index = b""
        self.active = 0
