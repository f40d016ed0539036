"""What has been imported from a card: kept encrypted, because it is patient data.

The state names the nights a patient used the machine and the files of each night; dates of
therapy are health data (Normen), so nothing of it is written in clear. The file is
``DHOCPAP1 | nonce (12) | ChaCha20-Poly1305(JSON)``, the associated data binding it to its
purpose and name, under a key derived with HKDF-SHA256 from the box's key-encryption key (the
same :class:`~agent.buffer.KeySource` as the buffer, so a TPM-sealed or credential KEK
protects it too, and crypto-shredding at decommissioning makes it unreadable).

Losing the state is safe, never wrong: a state that is missing, damaged or written under a
rotated key is set aside and the card is imported again from scratch; the buffer's and the
service's natural keys drop every reading already stored (no twins), at the cost of reading the
card once more. Writes are atomic (temporary file, fsync, rename, directory fsync) with mode 0600.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_LOGGER = logging.getLogger(__name__)

MAGIC: Final = b"DHOCPAP1"
NONCE_BYTES: Final = 12
VERSION: Final = 1
MAX_STATE_BYTES: Final = 64 * 2**20


def derive_key(kek: bytes, purpose: str) -> bytes:
    """A 32-byte key for one import state, derived from the box's KEK (HKDF-SHA256)."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"dho-gateway/cpap-import-state/v1/" + purpose.encode(),
    ).derive(kek)


class FileStatus:
    """Where a card file stands (string constants, stored in the state)."""

    IMPORTED = "imported"
    """Read, verified and stored."""
    WAITING = "waiting"
    """Incomplete or failing its checksums: read again when it changes or its grace ends."""
    PARTIAL = "partial"
    """Never completed within its grace: its verified records were stored, flagged."""
    REJECTED = "rejected"
    """Unusable (header does not parse): kept for audit as an undecodable reading."""


@dataclass
class FileEntry:
    """One DATALOG file as last seen."""

    size: int
    mtime_ns: int
    night: str
    """The sleep day (ISO date) from its header."""
    kind: str
    status: str
    records: int = 0
    """Records stored from it (the chunks already sent)."""
    first_incomplete: float | None = None
    """Wall-clock time this version of the file was first seen incomplete."""
    attempts: int = 0


@dataclass
class ImportState:
    """Everything remembered about one assigned machine's card."""

    serial: str | None = None
    """The serial of the machine this assignment is bound to (the first card seen, or the
    configured one); cards of other machines are refused."""
    days: dict[str, str] = field(default_factory=dict)
    """Sleep day (ISO date) -> digest of the STR record whose summary was stored."""
    events: dict[str, str] = field(default_factory=dict)
    """Night (ISO date) -> digest of the event counts stored."""
    files: dict[str, FileEntry] = field(default_factory=dict)
    """Card path -> the file as last seen."""

    def to_json(self) -> bytes:
        """The plaintext form (compact JSON)."""
        doc: dict[str, Any] = {
            "v": VERSION,
            "serial": self.serial,
            "days": self.days,
            "events": self.events,
            "files": {p: asdict(e) for p, e in self.files.items()},
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ImportState:
        """Parse the plaintext form; ``ValueError`` for anything unexpected."""
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("v") != VERSION:
            raise ValueError("unknown import-state version")
        serial = doc.get("serial")
        days, events, files = doc.get("days", {}), doc.get("events", {}), doc.get("files", {})
        if not (serial is None or isinstance(serial, str)):
            raise ValueError("bad serial")
        if not all(isinstance(d, dict) for d in (days, events, files)):
            raise ValueError("bad tables")
        try:
            entries = {str(p): FileEntry(**e) for p, e in files.items()}
        except TypeError as exc:
            raise ValueError("bad file entry") from exc
        return cls(
            serial=serial,
            days={str(k): str(v) for k, v in days.items()},
            events={str(k): str(v) for k, v in events.items()},
            files=entries,
        )


class StateStore:
    """Loads and saves one :class:`ImportState`, encrypted (see the module docstring)."""

    def __init__(self, path: Path, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the state key is 32 bytes")
        self.path = Path(path)
        self._aead = ChaCha20Poly1305(key)
        self._aad = MAGIC + b"|" + self.path.name.encode()
        self.reset_reason: str | None = None
        """Why the last :meth:`load` started from an empty state (``None``: it did not)."""

    def load(self) -> ImportState:
        """The saved state; an empty one when there is none or it cannot be read (set aside)."""
        self.reset_reason = None
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return ImportState()
        except OSError as exc:
            self.reset_reason = f"unreadable ({type(exc).__name__})"
            return ImportState()
        try:
            if len(blob) > MAX_STATE_BYTES or not blob.startswith(MAGIC):
                raise ValueError("not an import-state file")
            nonce = blob[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
            plain = self._aead.decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES :], self._aad)
            return ImportState.from_json(plain)
        except (InvalidTag, ValueError) as exc:
            reason = "key changed or file altered" if isinstance(exc, InvalidTag) else "damaged"
            self.reset_reason = reason
            _LOGGER.warning("cpap import state %s; importing the card again", reason)
            with contextlib.suppress(OSError):
                self.path.replace(self.path.with_suffix(self.path.suffix + ".bad"))
            return ImportState()

    def save(self, state: ImportState) -> None:
        """Write atomically and durably (0600)."""
        nonce = os.urandom(NONCE_BYTES)
        blob = MAGIC + nonce + self._aead.encrypt(nonce, state.to_json(), self._aad)
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
