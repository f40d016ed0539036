"""The protocol's exception tree: what a message of the uplink protocol can be refused for.

::

    ProtocolError                  a message (batch, acknowledgement, command) that cannot be used
    ├── MalformedMessageError      does not parse (or decompresses past the limits)
    ├── UnsupportedVersionError    a message type or protocol version this code does not speak
    ├── MessageTooLargeError       the message, or what it decompresses to, is over the limit
    ├── SignatureError             signature missing, wrong key, forged, or misdirected
    ├── ReplayError                outside the replay window, already used, or expired
    └── UnknownBoxError            no enrolled key for the box id

Both sides use it: the box when it opens acknowledgements and commands, the receiver when it
opens batches. Each class has a short stable ``reason`` token for logs and counters. Messages
name what was wrong, never a measured value or a patient reference.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """A message of the uplink protocol (batch, acknowledgement, command) that cannot be used.

    Attributes:
        reason: a short stable token for logs and metrics (e.g. ``"forged"``).
    """

    reason = "protocol"

    def __init__(self, message: str) -> None:
        super().__init__(message)


class MalformedMessageError(ProtocolError):
    """The bytes do not parse as the message they claim to be."""

    reason = "malformed"


class UnsupportedVersionError(ProtocolError):
    """The message type or protocol version is not one this code speaks."""

    reason = "version"


class MessageTooLargeError(ProtocolError):
    """The message, or what it decompresses to, exceeds the configured limit."""

    reason = "oversized"


class SignatureError(ProtocolError):
    """The signature does not verify under the expected key: forged, altered or misdirected."""

    reason = "forged"


class ReplayError(ProtocolError):
    """The message was already used, or falls outside the replay window or its expiry."""

    reason = "replayed"


class UnknownBoxError(ProtocolError):
    """No enrolled key exists for the box id the message names."""

    reason = "unknown-box"
