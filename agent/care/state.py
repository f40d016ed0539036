"""The care service's state on disk, encrypted: it holds patient data (thresholds, schedules,
the nights in progress, alarm numbers).

``DHOCARE1 | nonce (12) | ChaCha20-Poly1305(JSON)`` under a key derived with HKDF-SHA256 from
the box's key-encryption key (the buffer's :class:`~agent.buffer.KeySource`), so
crypto-shredding the box at decommissioning makes it unreadable too. Writes are atomic and
durable (temporary file, fsync, rename, directory fsync), mode 0600. A file that cannot be
read (damaged, another key) is set aside as ``.bad`` and the service starts empty: the
service sends its thresholds and schedules again (``docs/care.md``); alarms already raised are
safe in the buffer. Blocking: call from a worker thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_LOG = logging.getLogger(__name__)

MAGIC: Final = b"DHOCARE1"
NONCE: Final = 12
MAX_BYTES: Final = 16 * 2**20


def derive_key(kek: bytes) -> bytes:
    """The state key, from the box's KEK."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"dho-gateway/care-state/v1"
    ).derive(kek)


class CareStateFile:
    """Loads and saves one JSON object, encrypted (see the module docstring)."""

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = Path(path)
        self._aead = ChaCha20Poly1305(key)
        self._aad = MAGIC + b"|" + self.path.name.encode()
        self.reset_reason: str | None = None

    def load(self) -> dict[str, Any]:
        """The saved object; ``{}`` when there is none or it cannot be read (set aside)."""
        self.reset_reason = None
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            self.reset_reason = f"unreadable ({type(exc).__name__})"
            return {}
        try:
            if len(blob) > MAX_BYTES or not blob.startswith(MAGIC):
                raise ValueError("not a care state file")
            nonce = blob[len(MAGIC) : len(MAGIC) + NONCE]
            data = json.loads(self._aead.decrypt(nonce, blob[len(MAGIC) + NONCE :], self._aad))
            if not isinstance(data, dict):
                raise ValueError("not an object")
            return data
        except (InvalidTag, ValueError) as exc:
            self.reset_reason = (
                "key changed or file altered" if isinstance(exc, InvalidTag) else "damaged"
            )
            _LOG.warning("care state %s: set aside, starting empty", self.reset_reason)
            with contextlib.suppress(OSError):
                self.path.replace(self.path.with_suffix(self.path.suffix + ".bad"))
            return {}

    def save(self, data: dict[str, Any]) -> None:
        """Write atomically and durably."""
        nonce = os.urandom(NONCE)
        plain = json.dumps(data, separators=(",", ":")).encode()
        blob = MAGIC + nonce + self._aead.encrypt(nonce, plain, self._aad)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
