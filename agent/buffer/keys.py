"""Key-encryption keys (KEK) and the data keys (DEK) they wrap.

Envelope encryption (``shared/reference/security-and-reliability.md`` sections 2.4 to 2.9):

* A **KEK** (32 bytes) comes from a pluggable :class:`KeySource`: a 0600 file in the state
  directory by default (:class:`FileKeySource`), or a systemd credential
  (:class:`CredentialKeySource`, ``LoadCredentialEncrypted=``). A TPM or the Raspberry Pi OTP key
  can be added later as another source. The KEK never enters SQLite.
* **DEKs** encrypt rows. They live in the store's ``keys`` table wrapped by the KEK with
  ChaCha20-Poly1305, the associated data binding each wrapped key to its id and purpose.
* Key rotation makes a new active data key; old rows keep theirs and stay readable.
* Crypto-shredding destroys the wrapped DEKs and the KEK, after which nothing in the store, its
  WAL or any copy of it can be decrypted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path
from typing import Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from agent.errors import KeyLostError, KeyUnavailableError

_LOGGER = logging.getLogger(__name__)

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12


class KeySource(Protocol):
    """Where the key-encryption key comes from."""

    @property
    def description(self) -> str:
        """A human description for status output (no key material)."""
        ...

    def load(self, *, create: bool) -> bytes:
        """Return the 32-byte KEK; create it first when ``create`` and it does not exist.

        Raises:
            KeyUnavailableError: the key is missing (and may not be created) or unreadable.
        """
        ...

    def replace(self, new_key: bytes) -> None:
        """Store ``new_key`` as the KEK (used by KEK rotation after re-wrapping)."""
        ...

    def destroy(self) -> None:
        """Destroy the KEK so that nothing it wrapped can be recovered."""
        ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileKeySource:
    """A KEK in a 0600 file, created on first use. Protects against other local users only.

    A stolen SD card carries this file too; use a credential sealed to hardware where that
    matters (section 2.9 of the security reference).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.permissions_fixed = False

    @property
    def description(self) -> str:
        """Where the key file is."""
        return f"file {self.path}"

    def load(self, *, create: bool) -> bytes:
        """Read the key file, creating it (0600, fsynced) when allowed and missing."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if not create:
                raise KeyLostError(
                    f"key file {self.path} is missing; the store cannot be decrypted "
                    "(restore the key file, or decommission and re-provision the box)"
                ) from None
            self._write_new(os.urandom(KEY_BYTES))
            st = self.path.stat()
        if stat.S_IMODE(st.st_mode) & 0o077:
            # Someone loosened the mode. Tighten it rather than stop capturing; the status
            # shows it so a technician can find out why.
            os.chmod(self.path, 0o600)
            self.permissions_fixed = True
            _LOGGER.warning("key file %s was readable by others; mode reset to 0600", self.path)
        data = self.path.read_bytes()
        if len(data) != KEY_BYTES:
            raise KeyUnavailableError(f"key file {self.path} has {len(data)} bytes, not 32")
        return data

    def _write_new(self, key: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(self.path.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)

    def replace(self, new_key: bytes) -> None:
        """Atomically replace the key file."""
        self._write_new(new_key)

    def destroy(self) -> None:
        """Overwrite the key file with zeros, sync, and unlink it.

        Flash wear levelling may keep old blocks; the overwrite is best effort, the unlink
        and the destruction of the wrapped DEKs in the store are what the shred relies on.
        """
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.write(fd, b"\0" * size)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.path.unlink()
        _fsync_dir(self.path.parent)


class CredentialKeySource:
    """A KEK delivered by systemd as a credential (``LoadCredentialEncrypted=NAME:...``).

    systemd decrypts it (with the host key, or a TPM2 where present) into
    ``$CREDENTIALS_DIRECTORY/NAME`` for the service only. It is read-only from here: creating
    and destroying it are provisioning steps on the host (``systemd-creds encrypt``).
    """

    def __init__(self, name: str, directory: Path | None = None) -> None:
        self.name = name
        self.directory = directory

    @property
    def description(self) -> str:
        """The credential name."""
        return f"systemd credential {self.name}"

    def _path(self) -> Path:
        base = self.directory or os.environ.get("CREDENTIALS_DIRECTORY")
        if not base:
            raise KeyUnavailableError(
                f"systemd credential {self.name}: $CREDENTIALS_DIRECTORY is not set "
                "(is the agent running under its systemd unit with LoadCredentialEncrypted=?)"
            )
        return Path(base) / self.name

    def load(self, *, create: bool) -> bytes:
        """Read the credential; ``create`` is ignored (the host provisions it)."""
        path = self._path()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KeyUnavailableError(f"systemd credential {self.name}: {exc.strerror}") from exc
        if len(data) != KEY_BYTES:
            raise KeyUnavailableError(
                f"systemd credential {self.name} has {len(data)} bytes, not 32 "
                "(create it with: head -c32 /dev/urandom | systemd-creds encrypt - ...)"
            )
        return data

    def replace(self, new_key: bytes) -> None:
        """Credentials are provisioned on the host, not by the agent."""
        raise KeyUnavailableError(
            f"systemd credential {self.name} is read-only to the agent; rotate it on the host"
        )

    def destroy(self) -> None:
        """Credentials are destroyed on the host (delete the encrypted credential file)."""
        raise KeyUnavailableError(
            f"systemd credential {self.name} must be destroyed on the host "
            "(remove it from /etc/credstore.encrypted); the store's data keys are destroyed"
        )


def _wrap_aad(key_id: int, purpose: str) -> bytes:
    return f"dho-buffer/dek/v1|{purpose}|{key_id}".encode()


def wrap_key(kek: bytes, dek: bytes, key_id: int, purpose: str) -> bytes:
    """Encrypt a data key under the KEK, bound to its id and purpose: nonce || ct || tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + ChaCha20Poly1305(kek).encrypt(nonce, dek, _wrap_aad(key_id, purpose))


def unwrap_key(kek: bytes, wrapped: bytes, key_id: int, purpose: str) -> bytes:
    """Decrypt a wrapped data key.

    Raises:
        KeyLostError: the KEK is not the one that wrapped it, or the row was altered.
    """
    try:
        return ChaCha20Poly1305(kek).decrypt(
            wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _wrap_aad(key_id, purpose)
        )
    except InvalidTag:
        raise KeyLostError(
            f"data key {key_id} ({purpose}) does not open with this key-encryption key: "
            "the key file belongs to another store, or the key row was altered"
        ) from None
