"""The DHO uplink protocol v1: the contract between a home box and the DHO service.

One package for both sides: the box's uplink (``agent/uplink/``) and the reference receiver
(``receiver/``) depend on it, and it depends on neither. Pure code: no MQTT client, no asyncio,
no sockets; it only reads files in :func:`client_context`. Its only project dependency is the
data model of readings (:mod:`agent.model`, :mod:`agent.codes`, :mod:`agent.clock`, all pure).
The normative text is ``docs/uplink-protocol.md``.

Modules (everything public is re-exported here, so ``import dho_protocol as p`` is enough):

* :mod:`dho_protocol.topics`: the topics and the receivers' shared subscription,
* :mod:`dho_protocol.envelope`: signed batch envelopes, acknowledgements, commands, keys,
* :mod:`dho_protocol.payload`: the compact lossless encoding of readings in a batch,
* :mod:`dho_protocol.errors`: the protocol's exception tree (:class:`ProtocolError`),
* :mod:`dho_protocol.tls`: the TLS settings both ends use towards the broker.
"""

from dho_protocol.envelope import (
    DOMAIN,
    FLAG_RAW,
    MAX_BATCH_BYTES,
    MAX_CONTROL_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_READINGS,
    SIGNATURE_LEN,
    VERSION,
    ZSTD_LEVEL,
    Ack,
    AckResult,
    ArgValue,
    BatchEnvelope,
    Command,
    KeyLookup,
    SignedBatch,
    batch_readings,
    check_command_fresh,
    digest,
    load_public_key,
    open_ack,
    open_command,
    parse_batch,
    public_key_bytes,
    seal_ack,
    seal_batch,
    seal_command,
)
from dho_protocol.errors import (
    MalformedMessageError,
    MessageTooLargeError,
    ProtocolError,
    ReplayError,
    SignatureError,
    UnknownBoxError,
    UnsupportedVersionError,
)
from dho_protocol.payload import decode_readings, encode_readings, utc_datetime
from dho_protocol.tls import MINIMUM_VERSION as TLS_MINIMUM_VERSION
from dho_protocol.tls import TlsFiles, client_context
from dho_protocol.topics import (
    SHARE_GROUP,
    SHARED_BATCH_SUBSCRIPTION,
    TOPIC_ROOT,
    ack_topic,
    batch_topic,
    box_of_batch_topic,
    check_box_id,
    command_topic,
    report_topic,
    status_topic,
)

__all__ = [
    "DOMAIN",
    "FLAG_RAW",
    "MAX_BATCH_BYTES",
    "MAX_CONTROL_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MAX_READINGS",
    "SHARED_BATCH_SUBSCRIPTION",
    "SHARE_GROUP",
    "SIGNATURE_LEN",
    "TLS_MINIMUM_VERSION",
    "TOPIC_ROOT",
    "VERSION",
    "ZSTD_LEVEL",
    "Ack",
    "AckResult",
    "ArgValue",
    "BatchEnvelope",
    "Command",
    "KeyLookup",
    "MalformedMessageError",
    "MessageTooLargeError",
    "ProtocolError",
    "ReplayError",
    "SignatureError",
    "SignedBatch",
    "TlsFiles",
    "UnknownBoxError",
    "UnsupportedVersionError",
    "ack_topic",
    "batch_readings",
    "batch_topic",
    "box_of_batch_topic",
    "check_box_id",
    "check_command_fresh",
    "client_context",
    "command_topic",
    "decode_readings",
    "digest",
    "encode_readings",
    "load_public_key",
    "open_ack",
    "open_command",
    "parse_batch",
    "public_key_bytes",
    "report_topic",
    "seal_ack",
    "seal_batch",
    "seal_command",
    "status_topic",
    "utc_datetime",
]
