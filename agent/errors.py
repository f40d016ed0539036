"""The agent's exception tree. Third-party errors are converted once, where they enter.

::

    AgentError
    ├── CodecError                 bytes that do not parse (drivers; raw bytes are kept)
    ├── StoreError                 anything the encrypted store refuses or cannot do
    │   ├── BufferFullError        the cap is reached for this lane after compaction
    │   ├── StorageFullError       the filesystem itself is full (ENOSPC / SQLITE_FULL)
    │   ├── RowAuthenticationError a stored row failed AEAD authentication (quarantined)
    │   ├── KeyUnavailableError    the key source cannot deliver the key-encryption key now
    │   │   └── KeyLostError       the key is gone or is not this store's: data unrecoverable
    │   └── StoreCorruptError      integrity_check failed; the file was set aside
    ├── ConfigError                configuration that cannot be used
    └── UplinkError                the link to the service
        ├── BrokerUnreachableError     TCP/DNS failure reaching the broker
        ├── CertificateRejectedError   the broker refused this box's certificate or identity
        ├── BrokerCertificateError     the broker's certificate failed verification
        └── ClockImplausibleError      the wall clock is outside any certificate's validity

A message of the uplink protocol that cannot be used raises the protocol's own tree,
:class:`dho_protocol.errors.ProtocolError` and its leaves, shared with the receiver.

Every message says what happened and, where a technician can act, what to do. No message
contains a measured value or a patient reference.
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error the agent raises on purpose.

    Attributes:
        hint: the next step for a technician; a class default, or one the raiser knows
            better (the CLIs print it: :mod:`dho_cli`).
        exit_code: the exit code a CLI ends with when this error stops a command
            (``sysexits.h`` values, :class:`dho_cli.ExitCode`).
    """

    hint: str | None = None
    exit_code: int = 1

    def __init__(self, *args: object, hint: str | None = None) -> None:
        super().__init__(*args)
        if hint is not None:
            self.hint = hint


class CodecError(AgentError):
    """A payload that does not parse.

    Attributes:
        profile: the format being decoded (e.g. ``"ble.bpm"``).
        raw: the bytes that failed, kept so the caller can store them for audit.
    """

    def __init__(self, profile: str, message: str, raw: bytes = b"") -> None:
        super().__init__(f"{profile}: {message}")
        self.profile = profile
        self.raw = raw


class ConfigError(AgentError):
    """Configuration that cannot be used."""

    exit_code = 78  # EX_CONFIG
    hint = "fix the configuration file, then run the command again"


class UplinkError(AgentError):
    """A problem on the link to the central service."""

    exit_code = 69  # EX_UNAVAILABLE


class BrokerUnreachableError(UplinkError):
    """The broker could not be reached (DNS, TCP refused or timed out, link down)."""

    hint = "check the mobile link and the broker address in the configuration"


class CertificateRejectedError(UplinkError):
    """The broker refused this box: its client certificate or identity was not accepted."""

    exit_code = 77  # EX_NOPERM
    hint = "the service refused this box: check its enrolment (dho-provision status)"


class BrokerCertificateError(UplinkError):
    """The broker's certificate did not verify against the pinned CA (wrong broker or CA)."""

    hint = "the broker is not the one this box was enrolled with: check host and CA file"


class ClockImplausibleError(UplinkError):
    """The wall clock is implausible, so TLS certificates cannot be checked.

    Attributes:
        wall_ns: the clock reading that was judged implausible.
    """

    exit_code = 1
    hint = "set the clock or wait for NTP (timedatectl status)"

    def __init__(self, message: str, wall_ns: int) -> None:
        super().__init__(message)
        self.wall_ns = wall_ns


class StoreError(AgentError):
    """The encrypted store refused or could not complete an operation."""

    hint = "see docs/operations.md, section on the buffer"


class BufferFullError(StoreError):
    """The configured cap is reached and nothing more in this lane can be compacted.

    Raised for continuous and bulk data only; spot readings and alarms are still accepted.
    """

    def __init__(self, lane: str, used_bytes: int, cap_bytes: int) -> None:
        super().__init__(
            f"buffer full for lane {lane}: {used_bytes} of {cap_bytes} bytes used after "
            "compaction; new data of this lane is refused until the backlog is delivered "
            "(check the uplink, or raise buffer.cap_bytes if the disk allows)"
        )
        self.lane = lane
        self.used_bytes = used_bytes
        self.cap_bytes = cap_bytes


class StorageFullError(StoreError):
    """The filesystem under the store has no room left (SQLITE_FULL / ENOSPC)."""


class RowAuthenticationError(StoreError):
    """A stored row failed authentication: edited, swapped, or written under another key."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"row {seq} failed authentication ({reason}); moved to quarantine")
        self.seq = seq
        self.reason = reason


class KeyUnavailableError(StoreError):
    """The key-encryption key or a wrapped data key cannot be loaded."""

    exit_code = 77  # EX_NOPERM
    hint = "check the buffer key source (owner dho-gateway, mode 0600) or the systemd credential"


class KeyLostError(KeyUnavailableError):
    """The key is gone for good (file deleted, shredded) or does not belong to this store."""


class StoreCorruptError(StoreError):
    """SQLite reported the store as damaged at start-up."""
