"""Plaintext encoding of the encrypted store's rows (format version 1).

This is what goes *inside* each row's ciphertext. A reading row is the protocol's row format,
:mod:`dho_protocol.rows`: the uplink sends these very bytes (batch payload v2), so a claim
decrypts rows and hands them to the envelope without decoding them into readings and encoding
them again. The row is small because the box keeps days of backlog on an SD card: a
blood-pressure reading is about 100 bytes before encryption.

Device identity + patient reference (the *context*), and boot ids, change rarely, so a row
holds a small integer reference to an encrypted ``refs`` row, encoded here (see
:mod:`agent.buffer.refs`). Both use the same framing: a first byte saying plain msgpack or
zstd-compressed msgpack.
"""

from __future__ import annotations

import uuid
from typing import Final

from agent.model import DeviceIdentity, DeviceKind, Transport
from dho_protocol import rows
from dho_protocol.rows import (
    FORMAT_VERSION,
    PLAIN,
    ZSTD,
    Context,
    FormatError,
    PackedReading,
    RowHead,
    encode_reading,
    frame,
    peek,
    unframe,
)

__all__ = [
    "FORMAT_VERSION",
    "PLAIN",
    "REF_BOOT",
    "REF_CONTEXT",
    "ZSTD",
    "Context",
    "FormatError",
    "PackedReading",
    "RowHead",
    "decode_reading",
    "decode_ref",
    "encode_boot",
    "encode_context",
    "encode_reading",
    "peek",
]


def decode_reading(data: bytes) -> PackedReading:
    """Decode one of the store's own rows (every reading the model allows reads back)."""
    return rows.decode_reading(data, lim=rows.STORE_LIMITS, items=rows.STORE_LIMITS.samples)


# -- refs ---------------------------------------------------------------------------------

REF_CONTEXT: Final = 0
REF_BOOT: Final = 1


def encode_context(ctx: Context) -> bytes:
    """Pack a device + patient reference row."""
    d = ctx.device
    return frame(
        [REF_CONTEXT, str(d.kind), d.manufacturer, d.model, d.serial, str(d.transport), ctx.patient]
    )


def encode_boot(boot_id: uuid.UUID) -> bytes:
    """Pack a boot id reference row."""
    return frame([REF_BOOT, boot_id.bytes])


def decode_ref(data: bytes) -> Context | uuid.UUID:
    """Unpack a reference row: a :class:`Context` or a boot id."""
    v = unframe(data)
    if v[0] == REF_CONTEXT:
        _, kind, manufacturer, model, serial, transport, patient = v
        device = DeviceIdentity(DeviceKind(kind), manufacturer, model, serial, Transport(transport))
        return Context(device, patient)
    if v[0] == REF_BOOT:
        return uuid.UUID(bytes=v[1])
    raise FormatError(f"unknown reference kind {v[0]!r}")
