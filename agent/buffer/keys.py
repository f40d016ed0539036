"""Key-encryption keys (KEK) and the data keys (DEK) they wrap.

Envelope encryption (``shared/reference/security-and-reliability.md`` sections 2.4 to 2.9):

* A **KEK** (32 bytes) comes from a pluggable :class:`KeySource` (``buffer.key`` in the agent's
  configuration, parsed by :func:`source_from_spec`):

  - ``file``: :class:`FileKeySource`, a 0600 file in the state directory. Protects against
    other local users only: a stolen SD card carries the key with the data.
  - ``credential:NAME``: :class:`CredentialKeySource`, a systemd credential
    (``LoadCredentialEncrypted=``), sealed on the host with ``systemd-creds``.
  - ``tpm2:NAME`` (``tpm2`` for ``tpm2:dho-buffer-kek``): the same, sealed to the box's TPM 2.0
    (``systemd-creds encrypt --with-key=tpm2``); the card alone does not give the key away.

  Each source says which lines the systemd unit needs for it (:func:`unit_lines`,
  :func:`unit_dropin`), so the unit never asks for a credential the box does not use.
  The KEK never enters SQLite.
* **DEKs** encrypt rows. They live in the store's ``keys`` table wrapped by the KEK with
  ChaCha20-Poly1305, the associated data binding each wrapped key to its id and purpose.
* Key rotation makes a new active data key; old rows keep theirs and stay readable.
* Crypto-shredding destroys the wrapped DEKs and the KEK, after which nothing in the store, its
  WAL or any copy of it can be decrypted.

Every key file is opened without following links (``O_NOFOLLOW``), checked on the open
descriptor (a regular file, one link, the right owner and size) and read with a bound; anything
else is refused with a :class:`~agent.errors.KeyUnavailableError` that says what was found.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from agent.atomicfile import fsync_dir, write_atomic
from agent.errors import KeyLostError, KeyUnavailableError

_LOGGER = logging.getLogger(__name__)

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
DEFAULT_CREDENTIAL: Final = "dho-buffer-kek"
CREDSTORE: Final = Path("/etc/credstore.encrypted")
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREDS_TIMEOUT_S: Final = 60


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

    def unit_lines(self) -> tuple[str, ...]:
        """The ``[Service]`` lines the agent's systemd unit needs for this source."""
        ...


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_key_file(
    path: Path, what: str, *, owners: tuple[int, ...], fix_mode: bool = False
) -> tuple[bytes, bool]:
    """Read a 32-byte key file safely; returns the key and whether its mode was tightened.

    Opened with ``O_NOFOLLOW | O_NONBLOCK`` (a symbolic link, FIFO or device is never followed
    or waited on), then checked on the descriptor: a regular file, one hard link, owned by one
    of ``owners``, exactly 32 bytes; read with a bound. A mode that lets others read or write
    is tightened to 0600 on that same descriptor when ``fix_mode`` (never through a path).

    Raises:
        FileNotFoundError: there is no such file.
        KeyUnavailableError: anything else is refused, saying what was found.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise KeyUnavailableError(
                f"{what} {path} is a symbolic link; refused (it must be the key file itself)"
            ) from None
        raise KeyUnavailableError(f"{what} {path} cannot be opened: {exc.strerror}") from None
    fixed = False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyUnavailableError(f"{what} {path} is {_kind(st.st_mode)}; refused")
        if st.st_nlink != 1:
            raise KeyUnavailableError(
                f"{what} {path} has {st.st_nlink} hard links; refused (another name could "
                "expose or replace it)"
            )
        if st.st_uid not in owners:
            raise KeyUnavailableError(
                f"{what} {path} is owned by uid {st.st_uid}, not by uid "
                f"{' or '.join(map(str, owners))}; refused"
            )
        if st.st_size != KEY_BYTES:
            raise KeyUnavailableError(
                f"{what} {path} has {st.st_size} bytes, not {KEY_BYTES}; refused"
            )
        if stat.S_IMODE(st.st_mode) & 0o7077:
            if not fix_mode:
                raise KeyUnavailableError(
                    f"{what} {path} has mode {stat.S_IMODE(st.st_mode):04o}; refused (0600 or "
                    "0400 expected)"
                )
            os.fchmod(fd, 0o600)
            fixed = True
        data = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != KEY_BYTES:
        raise KeyUnavailableError(f"{what} {path} changed while it was read; refused")
    return data, fixed


class FileKeySource:
    """A KEK in a 0600 file, created on first use. Protects against other local users only.

    A stolen SD card carries this file too; use a key sealed to hardware where that matters
    (:class:`CredentialKeySource` with ``tpm2``; section 2.9 of the security reference).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.permissions_fixed = False

    @property
    def description(self) -> str:
        """Where the key file is."""
        return f"file {self.path}"

    def load(self, *, create: bool) -> bytes:
        """Read the key file (see :func:`read_key_file`), creating it when allowed and missing.

        A key file others can read is still used (capture must go on) but its mode is reset
        to 0600 on the open descriptor and ``permissions_fixed`` is set (the
        ``key.permissions`` alarm): the key may have been read, and someone should find out
        why. Everything else that is not a private 32-byte regular file of this user is
        refused.
        """
        try:
            data, fixed = read_key_file(
                self.path, "key file", owners=(os.geteuid(),), fix_mode=True
            )
        except FileNotFoundError:
            if not create:
                raise KeyLostError(
                    f"key file {self.path} is missing; the store cannot be decrypted "
                    "(restore the key file, or decommission and re-provision the box)"
                ) from None
            self._write_new(os.urandom(KEY_BYTES))
            data, fixed = read_key_file(self.path, "key file", owners=(os.geteuid(),))
        if fixed:
            self.permissions_fixed = True
            _LOGGER.warning("key file %s was open to others; mode reset to 0600", self.path)
        return data

    def _write_new(self, key: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.path, key)

    def replace(self, new_key: bytes) -> None:
        """Atomically replace the key file."""
        self._write_new(new_key)

    def destroy(self) -> None:
        """Overwrite the key file with zeros, sync, and unlink it.

        Flash wear levelling may keep old blocks; the overwrite is best effort, the unlink
        and the destruction of the wrapped DEKs in the store are what the shred relies on. A
        key "file" that is a link or a device is not written to (only its name is removed).
        """
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            _LOGGER.warning("key file %s is a symbolic link: removing the link only", self.path)
        else:
            try:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                    os.write(fd, b"\0" * min(st.st_size, 1 << 20))
                    os.fsync(fd)
            finally:
                os.close(fd)
        self.path.unlink()
        fsync_dir(self.path.parent)

    def unit_lines(self) -> tuple[str, ...]:
        """No credential: the unit must not ask for one."""
        return ()


class CredentialKeySource:
    """A KEK delivered by systemd as an encrypted credential.

    At provisioning the KEK is sealed on the box with ``systemd-creds encrypt`` into
    ``/etc/credstore.encrypted/NAME`` (:func:`seal_credential`): with the host key
    (``with_key="host"``), or to the box's TPM 2.0 (``"tpm2"``, or ``"host+tpm2"`` for both).
    The agent's unit names it with ``LoadCredentialEncrypted=NAME:PATH`` (:meth:`unit_lines`)
    and systemd decrypts it at start into ``$CREDENTIALS_DIRECTORY/NAME``, readable by the
    service only. Run outside the unit (a technician's ``dho-agent buffer status`` as root),
    the sealed file is decrypted with ``systemd-creds decrypt`` instead.

    ``with_key=None`` (``credential:NAME``) means "sealed on the host, however": the agent can
    read it but not replace or destroy it.
    """

    def __init__(
        self,
        name: str,
        directory: Path | None = None,
        *,
        with_key: str | None = None,
        sealed_path: Path | None = None,
        tpm2_device: str | None = None,
    ) -> None:
        self.name = name
        self.directory = directory
        self.with_key = with_key
        self.sealed_path = sealed_path or CREDSTORE / name
        self.tpm2_device = tpm2_device
        self.permissions_fixed = False

    @property
    def description(self) -> str:
        """The credential name and what seals it."""
        how = f", sealed with {self.with_key}" if self.with_key else ""
        return f"systemd credential {self.name}{how}"

    def _path(self) -> Path | None:
        base = self.directory or os.environ.get("CREDENTIALS_DIRECTORY")
        return Path(base) / self.name if base else None

    def load(self, *, create: bool) -> bytes:
        """Read the credential systemd decrypted, or decrypt the sealed file (outside the
        unit); ``create`` is ignored (provisioning seals it)."""
        path = self._path()
        if path is not None:
            try:
                data, _ = read_key_file(
                    path, f"systemd credential {self.name}", owners=(os.geteuid(), 0)
                )
            except FileNotFoundError:
                raise KeyUnavailableError(
                    f"systemd credential {self.name} is not in {path.parent} (does the unit "
                    f"have LoadCredentialEncrypted={self.name}:...?)"
                ) from None
            return data
        if self.sealed_path.exists():
            return unseal_credential(self.name, self.sealed_path, tpm2_device=self.tpm2_device)
        raise KeyUnavailableError(
            f"systemd credential {self.name}: $CREDENTIALS_DIRECTORY is not set and "
            f"{self.sealed_path} does not exist (is the agent running under its unit, and was "
            "the key sealed at provisioning?)"
        )

    def replace(self, new_key: bytes) -> None:
        """Re-seal the credential (root, with a known sealing); else refuse."""
        if self.with_key is None or not os.access(self.sealed_path.parent, os.W_OK):
            raise KeyUnavailableError(
                f"systemd credential {self.name} is read-only to the agent; rotate it on the "
                "host as root"
            )
        seal_credential(
            self.name,
            self.sealed_path,
            new_key,
            with_key=self.with_key,
            tpm2_device=self.tpm2_device,
        )

    def destroy(self) -> None:
        """Delete the sealed credential (root); else say where to do it."""
        if not os.access(self.sealed_path.parent, os.W_OK):
            raise KeyUnavailableError(
                f"systemd credential {self.name} must be destroyed on the host "
                f"(remove {self.sealed_path}); the store's data keys are destroyed"
            )
        try:
            self.sealed_path.unlink()
        except FileNotFoundError:
            return
        fsync_dir(self.sealed_path.parent)

    def unit_lines(self) -> tuple[str, ...]:
        """``LoadCredentialEncrypted=NAME:PATH``: systemd unseals it before the agent starts
        (from the TPM where it is sealed to one; the agent needs no access to the TPM)."""
        return (f"LoadCredentialEncrypted={self.name}:{self.sealed_path}",)


def source_from_spec(spec: str, state_dir: Path) -> KeySource:
    """The :class:`KeySource` a ``buffer.key`` value names.

    ``file``, ``credential:NAME`` or ``tpm2[:NAME]``.

    Raises:
        ValueError: another form (the message lists the known ones).
    """
    if spec == "file":
        return FileKeySource(state_dir / "buffer.kek")
    kind, _, name = spec.partition(":")
    if kind == "credential" and name:
        return CredentialKeySource(name)
    if kind == "tpm2" and (name or spec == "tpm2"):
        return CredentialKeySource(name or DEFAULT_CREDENTIAL, with_key="tpm2")
    raise ValueError('must be "file", "credential:NAME" or "tpm2[:NAME]"')


def unit_lines(source: KeySource) -> tuple[str, ...]:
    """The ``[Service]`` lines the agent's unit needs for ``source`` (none for a file)."""
    return source.unit_lines()


def unit_dropin(source: KeySource) -> str:
    """A drop-in for ``dho-agent.service`` that gives the unit exactly the credential lines
    ``source`` needs, to install as ``/etc/systemd/system/dho-agent.service.d/
    50-buffer-key.conf`` (the base unit names no credential, so it starts with the file
    source and fails with a clear error only when a configured credential is missing)."""
    lines = [
        "# Written by dho-provision from buffer.key in agent.toml; do not edit by hand.",
        f"# Key source: {source.description}",
        "[Service]",
        *source.unit_lines(),
    ]
    return "\n".join(lines) + "\n"


def _systemd_creds() -> str:
    path = shutil.which("systemd-creds")
    if path is None:
        raise KeyUnavailableError("systemd-creds is not installed (Debian package systemd)")
    return path


def _creds_env(tpm2_device: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")}
    if tpm2_device:
        env["SYSTEMD_TPM2_DEVICE"] = tpm2_device
    return env


def seal_credential(
    name: str,
    out: Path,
    key: bytes,
    *,
    with_key: str = "tpm2",
    tpm2_device: str | None = None,
    tpm2_pcrs: str | None = None,
) -> None:
    """Seal ``key`` as the encrypted credential ``name`` at ``out`` (a provisioning step).

    ``with_key`` is ``systemd-creds --with-key``: ``tpm2`` (the box's TPM only), ``host+tpm2``
    or ``host``. ``tpm2_pcrs`` binds it to PCR values; ``None`` keeps systemd's default, PCR 7
    (the secure-boot state: a box whose firmware measures it locks the key when that changes;
    a Raspberry Pi, without measured boot, leaves PCR 7 at its reset value). An empty PCR list
    does not decrypt again with systemd 252 ("TPM2 PCR bank invalid"), so it is not offered.
    ``tpm2_device`` is systemd's TPM device string (``SYSTEMD_TPM2_DEVICE``: a device path, or
    a TCTI such as ``swtpm:port=2321``; unset: ``/dev/tpmrm0``, the kernel's resource manager).
    """
    if len(key) != KEY_BYTES:
        raise ValueError("a key-encryption key is 32 bytes")
    args = [_systemd_creds(), "encrypt", f"--name={name}", f"--with-key={with_key}"]
    if "tpm2" in with_key and tpm2_pcrs:
        args.append(f"--tpm2-pcrs={tpm2_pcrs}")
    out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = out.with_name(out.name + ".new")
    tmp.unlink(missing_ok=True)
    proc = subprocess.run(
        [*args, "-", str(tmp)],
        input=key,
        capture_output=True,
        env=_creds_env(tpm2_device),
        timeout=_CREDS_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise KeyUnavailableError(
            f"sealing credential {name} failed: {proc.stderr.decode(errors='replace')[-300:]}"
        )
    os.chmod(tmp, 0o600)
    os.replace(tmp, out)
    fsync_dir(out.parent)


def unseal_credential(name: str, sealed: Path, *, tpm2_device: str | None = None) -> bytes:
    """Decrypt a sealed credential as systemd would at service start (needs root for the
    host key, and the TPM it was sealed to).

    Raises:
        KeyUnavailableError: it does not decrypt here (another box's TPM, a missing host key,
            no access to the TPM), or is not a 32-byte key.
    """
    proc = subprocess.run(
        [_systemd_creds(), "decrypt", f"--name={name}", str(sealed), "-"],
        capture_output=True,
        env=_creds_env(tpm2_device),
        timeout=_CREDS_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise KeyUnavailableError(
            f"systemd credential {name} in {sealed} does not decrypt on this box: "
            f"{proc.stderr.decode(errors='replace').strip()[-300:]}"
        )
    if len(proc.stdout) != KEY_BYTES:
        raise KeyUnavailableError(
            f"systemd credential {name} holds {len(proc.stdout)} bytes, not {KEY_BYTES}"
        )
    return proc.stdout


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
