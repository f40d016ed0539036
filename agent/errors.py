"""The agent's exception tree. Third-party errors are converted once, where they enter.

::

    AgentError
    ├── CodecError                 bytes that do not parse (drivers; raw bytes are kept)
    ├── StoreError                 anything the encrypted store refuses or cannot do
    │   ├── BufferFullError        the cap is reached for this lane after compaction
    │   ├── StorageFullError       the filesystem itself is full (ENOSPC / SQLITE_FULL)
    │   ├── RowAuthenticationError a stored row failed AEAD authentication (quarantined)
    │   ├── KeyUnavailableError    the key-encryption key or a data key is missing/destroyed
    │   └── StoreCorruptError      integrity_check failed; the file was set aside
    ├── ConfigError                configuration that cannot be used
    └── UplinkError                the link to the service (issue 4 adds leaves)

Every message says what happened and, where a technician can act, what to do. No message
contains a measured value or a patient reference.
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""


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


class UplinkError(AgentError):
    """A problem on the link to the central service."""


class StoreError(AgentError):
    """The encrypted store refused or could not complete an operation."""


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


class StoreCorruptError(StoreError):
    """SQLite reported the store as damaged at start-up."""
