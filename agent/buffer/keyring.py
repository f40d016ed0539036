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
import hashlib
import logging
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from agent.buffer.keys import KEY_BYTES, NONCE_BYTES, KeySource, unwrap_key, wrap_key
from agent.buffer.schema import Db, Tx
from agent.errors import KeyLostError, RowAuthenticationError

_LOGGER = logging.getLogger(__name__)

PURPOSE_DATA: Final = "data"
PURPOSE_INDEX: Final = "index"
TAG_BYTES: Final = 16


_AAD_TAIL: Final = struct.Struct(">QIB")


def aad(table: str, seq: int, key_id: int, lane: int) -> bytes:
    """Associated data of a sealed row. Fixed-width binary: no field can run into another."""
    return b"dho-buffer/v1/" + table.encode() + _AAD_TAIL.pack(seq, key_id, lane)


@dataclass
class LoadReport:
    """What loading the keys found: rows repaired, key ids lost, a replaced index key."""

    repaired: int = 0
    lost: list[int] = field(default_factory=list)
    index_replaced: bool = False


def _unwrap(kek: bytes, wrapped: object, key_id: int, purpose: object) -> bytes | None:
    if type(wrapped) is not bytes or type(purpose) is not str or len(wrapped) < NONCE_BYTES + 16:
        return None
    try:
        return unwrap_key(kek, wrapped, key_id, purpose)
    except KeyLostError:
        return None


def _unwrap_any(
    kek: bytes, key_id: int, purpose: object, blobs: tuple[object, ...]
) -> tuple[str, bytes, int] | None:
    """(purpose, key, index of the blob that opened), trying the stated purpose first."""
    purposes = [PURPOSE_DATA, PURPOSE_INDEX]
    if purpose in purposes:
        purposes.sort(key=lambda p: p != purpose)
    for p in purposes:
        for i, blob in enumerate(blobs):
            dek = _unwrap(kek, blob, key_id, p)
            if dek is not None and len(dek) == KEY_BYTES:
                return p, dek, i
    return None


class _HmacSha256:
    """HMAC-SHA256 (RFC 2104) under one key, the key's two padded blocks hashed once.

    :func:`hmac.digest` hashes them again on every call; here each MAC costs two copies of
    the prepared SHA-256 states and three updates, about half the time for the short
    messages a blind index takes. The result equals ``hmac.digest(key, msg, "sha256")``
    (``tests/buffer/test_keys.py``).
    """

    __slots__ = ("inner", "key", "outer")

    def __init__(self, key: bytes) -> None:
        self.key = key
        block = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
        self.inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self.outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def digest(self, msg: bytes) -> bytes:
        """The MAC of ``msg``."""
        inner = self.inner.copy()
        inner.update(msg)
        outer = self.outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def prefixed(self, prefix: bytes) -> _HmacSha256:
        """This MAC with ``prefix`` already absorbed: its :meth:`digest` of ``msg`` is this
        one's of ``prefix + msg`` (a blind index's label is hashed once, not per key)."""
        out = object.__new__(_HmacSha256)
        out.key = self.key
        out.inner = self.inner.copy()
        out.inner.update(prefix)
        out.outer = self.outer
        return out


class Keyring:
    """Unwrapped data keys of one open store. Never written anywhere in clear."""

    def __init__(self) -> None:
        self._data: dict[int, ChaCha20Poly1305] = {}
        self._raw: dict[int, bytes] = {}
        self._index = b""
        self._index_id = 0
        self._mac = _HmacSha256(b"")
        self.active = 0
        self.permissions_fixed = False

    # -- loading ------------------------------------------------------------------------

    def load(self, db: Db, source: KeySource, *, writable: bool = True) -> LoadReport:
        """Load the KEK and unwrap the data keys, creating both for a new store.

        Each key row holds two wrappings (``wrapped``, ``wrapped_copy``) and, while a KEK
        rotation is under way, a third under the new KEK (``wrapped_next``). Whichever opens
        with the current KEK is used; with ``writable`` the row is then rewritten whole
        (a damaged wrapping, purpose or state repaired; a rotation a crash interrupted finished
        or undone). A key row that opens under neither wrapping is lost: its rows will be
        quarantined when claimed. A lost index key is replaced (``LoadReport.index_replaced``:
        the caller re-blinds what depends on it).

        Raises:
            KeyLostError: no key row opens: the KEK is gone or is not this store's (the caller
                sets the store aside).
            KeyUnavailableError: the key source cannot deliver the KEK now (configuration).
        """
        conn = db.conn
        query = "SELECT key_id, purpose, state, wrapped, wrapped_next, wrapped_copy FROM keys"
        rows = conn.execute(query).fetchall()
        has_data = conn.execute("SELECT EXISTS (SELECT 1 FROM readings)").fetchone()[0]
        kek = source.load(create=writable and not rows and not has_data)
        self.permissions_fixed = bool(getattr(source, "permissions_fixed", False))
        report = LoadReport()
        if not rows:
            if has_data:
                raise KeyLostError("store has readings but no data keys (shredded)")
            if not writable:
                raise KeyLostError("store has no keys")
            with db.tx():
                self.add_key(db, kek, PURPOSE_INDEX, "active")
                self.add_key(db, kek, PURPOSE_DATA, "active")
            rows = conn.execute(query).fetchall()
        ids = {r[0] for r in rows}
        opened: dict[int, tuple[str, bytes]] = {}
        rewrite: set[int] = set()
        renumber: dict[int, int] = {}
        for key_id, purpose, _state, wrapped, nxt, copy in rows:
            found = _unwrap_any(kek, key_id, purpose, (wrapped, copy, nxt))
            if found is None:
                # A damaged key id: the wrapping is bound to the id, so try the few ids a
                # store of this size can have.
                for other in range(1, max(ids) + 16):
                    if other in ids:
                        continue
                    found = _unwrap_any(kek, other, purpose, (wrapped, copy, nxt))
                    if found is not None:
                        renumber[key_id] = other
                        ids.add(other)
                        break
            if found is None:
                report.lost.append(key_id)
                continue
            true_purpose, dek, which = found
            opened[renumber.get(key_id, key_id)] = (true_purpose, dek)
            rotating = nxt is not None
            damaged = (
                true_purpose != purpose
                or key_id in renumber
                or (not rotating and (which != 0 or _unwrap(kek, copy, key_id, purpose) is None))
            )
            if copy is None and not rotating and which == 0:
                damaged = False  # a store from before the second copy: fill it in
            if damaged:
                report.repaired += 1
            if damaged or rotating or copy is None or which != 0:
                rewrite.add(renumber.get(key_id, key_id))
        if not opened:
            raise KeyLostError(
                "no data key of this store opens with this key-encryption key: the key "
                "belongs to another store, or was replaced"
            )
        data_ids = sorted(k for k, (p, _) in opened.items() if p == PURPOSE_DATA)
        index_ids = [k for k, (p, _) in opened.items() if p == PURPOSE_INDEX]
        states = {r[0]: r[2] for r in rows}
        for k in data_ids:
            want = "active" if k == data_ids[-1] else "retired"
            if states.get(k) != want and k not in renumber.values():
                report.repaired += 1
                rewrite.add(k)
        for k in index_ids:
            if states.get(k) != "active":
                rewrite.add(k)
        if writable and (rewrite or renumber or not data_ids or not index_ids):
            with db.tx():
                for old, new in renumber.items():
                    conn.execute("UPDATE keys SET key_id = ? WHERE key_id = ?", (new, old))
                for k in sorted(rewrite):
                    purpose, dek = opened[k]
                    state = "active" if k in index_ids or k == data_ids[-1] else "retired"
                    conn.execute(
                        "UPDATE keys SET purpose = ?, state = ?, wrapped = ?, wrapped_copy = ?,"
                        " wrapped_next = NULL WHERE key_id = ?",
                        (
                            purpose,
                            state,
                            wrap_key(kek, dek, k, purpose),
                            wrap_key(kek, dek, k, purpose),
                            k,
                        ),
                    )
                if not index_ids:
                    conn.execute("DELETE FROM keys WHERE purpose = ?", (PURPOSE_INDEX,))
                    k, dek = self.add_key(db, kek, PURPOSE_INDEX, "active")
                    opened[k] = (PURPOSE_INDEX, dek)
                    index_ids = [k]
                    report.index_replaced = True
                if not data_ids:
                    conn.execute(
                        "UPDATE keys SET state = 'retired' WHERE purpose = ?", (PURPOSE_DATA,)
                    )
                    k, dek = self.add_key(db, kek, PURPOSE_DATA, "active")
                    opened[k] = (PURPOSE_DATA, dek)
                    data_ids = [k]
        if not index_ids or not data_ids:
            raise KeyLostError("store has no usable data key or no index key")
        for k, (purpose, dek) in opened.items():
            if purpose == PURPOSE_DATA:
                self._raw[k] = dek
                self._data[k] = ChaCha20Poly1305(dek)
        self._index_id = index_ids[0]
        self._index = opened[self._index_id][1]
        self.active = data_ids[-1]
        if report.lost:
            _LOGGER.error("store keys %s do not open: rows sealed with them are lost", report.lost)
        if report.repaired:
            _LOGGER.warning("repaired %d damaged key rows", report.repaired)
        return report

    def add_key(self, db: Db, kek: bytes, purpose: str, state: str) -> tuple[int, bytes]:
        """Insert a new wrapped key (inside the caller's transaction); returns id and key."""
        conn = db.conn
        key_id = int(conn.execute("SELECT coalesce(max(key_id), 0) + 1 FROM keys").fetchone()[0])
        dek = os.urandom(KEY_BYTES)
        conn.execute(
            "INSERT INTO keys (key_id, purpose, state, wrapped, wrapped_copy)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                key_id,
                purpose,
                state,
                wrap_key(kek, dek, key_id, purpose),
                wrap_key(kek, dek, key_id, purpose),
            ),
        )
        return key_id, dek

    # -- using --------------------------------------------------------------------------

    def data_key_ids(self) -> list[int]:
        """Ids of the data keys this store can open."""
        return sorted(self._data)

    def has(self, key_id: object) -> bool:
        """Whether ``key_id`` names a data key of this store."""
        return type(key_id) is int and key_id in self._data

    def seal(
        self, table: str, seq: int, lane: int, plaintext: bytes, nonce: bytes | None = None
    ) -> bytes:
        """Encrypt a row under the active key: nonce || ciphertext || tag.

        ``nonce``: 12 fresh random bytes (an append draws them for all its rows at once).
        """
        if nonce is None:
            nonce = os.urandom(NONCE_BYTES)
        aead = self._data[self.active]
        return nonce + aead.encrypt(nonce, plaintext, aad(table, seq, self.active, lane))

    def seal_keyed(self, table: str, seq: int, lane: int, plaintext: bytes) -> tuple[int, bytes]:
        """:meth:`seal`, also returning the id of the key used (safe from another thread than
        the store's: a rotation between reading the active id and sealing cannot mismatch)."""
        key_id = self.active
        nonce = os.urandom(NONCE_BYTES)
        blob = nonce + self._data[key_id].encrypt(nonce, plaintext, aad(table, seq, key_id, lane))
        return key_id, blob

    def seal_rows(
        self, table: str, rows: Sequence[tuple[int, int, bytes]]
    ) -> list[tuple[int, int, int, bytearray]]:
        """:meth:`seal` each ``(seq, lane, plaintext)`` with fresh nonces drawn at once; each
        result is the row to insert, ``(seq, lane, key_id, blob)`` (``lane`` a plain int).

        The blob is a ``bytearray`` holding the same bytes as :meth:`seal`'s: ``sqlite3``
        binds it as the same BLOB directly, where a ``bytes`` parameter first goes through
        its adaptation protocol (an ``__adapt__`` lookup on a type, which raises and clears
        an ``AttributeError`` per value: about 3,600 instructions of an append's ~89,000
        per reading under callgrind).
        """
        key_id = self.active
        encrypt = self._data[key_id].encrypt
        head = b"dho-buffer/v1/" + table.encode()
        pack = struct.Struct(f">{len(head)}sQIB").pack  # aad(): head, then _AAD_TAIL
        nonces = os.urandom(NONCE_BYTES * len(rows))
        out = []
        i = 0
        for seq, lane, plaintext in rows:
            nonce = nonces[i : i + NONCE_BYTES]
            i += NONCE_BYTES
            blob = bytearray(nonce)
            blob += encrypt(nonce, plaintext, pack(head, seq, key_id, lane))
            out.append((seq, int(lane), key_id, blob))
        return out

    def open(self, table: str, seq: int, key_id: object, lane: int, blob: object) -> bytes:
        """Decrypt a row.

        Raises:
            RowAuthenticationError: the row does not open (edited, moved, or its key is gone).
        """
        aead = self._data.get(key_id) if isinstance(key_id, int) else None
        if aead is None or not isinstance(key_id, int) or type(key_id) is bool:
            raise RowAuthenticationError(
                seq, f"{table} row names data key {key_id!r}, not in store"
            )
        if type(blob) is not bytes or len(blob) < NONCE_BYTES + TAG_BYTES:
            raise RowAuthenticationError(seq, f"{table} row has no ciphertext")
        try:
            nonce, body = blob[:NONCE_BYTES], blob[NONCE_BYTES:]
            return aead.decrypt(nonce, body, aad(table, seq, key_id, lane))
        except InvalidTag:
            raise RowAuthenticationError(seq, f"{table} row does not authenticate") from None

    def blind(self, label: bytes, data: bytes) -> bytes:
        """A blind index: HMAC-SHA256 under the index key, truncated to 16 bytes."""
        return self._index_mac().digest(label + data)[:TAG_BYTES]

    def _index_mac(self) -> _HmacSha256:
        mac = self._mac
        if mac.key is not self._index:  # the index key was loaded, replaced or cleared
            mac = self._mac = _HmacSha256(self._index)
        return mac

    def blinder(self, label: bytes) -> _HmacSha256:
        """:meth:`blind` of ``label`` prepared for many values (an append's keys): ``digest(
        data)[:16]`` of the result is ``blind(label, data)``. Valid until the index key
        changes (only :meth:`load` and :meth:`clear` change it): take one per call."""
        return self._index_mac().prefixed(label)

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
        self._raw[new_id] = dek
        self.active = new_id

        def undo() -> None:
            self._data.pop(new_id, None)
            self._raw.pop(new_id, None)
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
        source.load(create=False)  # the current KEK must still be there
        new = new_kek or os.urandom(KEY_BYTES)
        keys = [(k, PURPOSE_DATA, dek) for k, dek in self._raw.items()]
        keys.append((self._index_id, PURPOSE_INDEX, self._index))
        with db.tx():
            for key_id, purpose, dek in keys:
                conn.execute(
                    "UPDATE keys SET wrapped_next = ? WHERE key_id = ?",
                    (wrap_key(new, dek, key_id, purpose), key_id),
                )
        source.replace(new)
        with db.tx():
            for key_id, purpose, dek in keys:
                conn.execute(
                    "UPDATE keys SET wrapped = wrapped_next, wrapped_copy = ?, wrapped_next = NULL"
                    " WHERE key_id = ?",
                    (wrap_key(new, dek, key_id, purpose), key_id),
                )
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
                tx.after_commit(functools.partial(self._raw.pop, key_id, None))

    def clear(self) -> None:
        """Forget every key (after a shred)."""
        self._data.clear()
        self._raw.clear()
        self._index = b""
        self._index_id = 0
        self.active = 0
