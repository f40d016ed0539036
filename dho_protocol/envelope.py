"""The uplink protocol v1: signed batch envelopes, acknowledgements and commands.

Pure code (no I/O), shared by the agent and the reference receiver. The normative text is
``docs/uplink-protocol.md``; section numbers below refer to it.

Every signed message is ``body || signature`` where ``body`` is a msgpack array whose first
two items are the message type (``"dho.batch"``, ``"dho.ack"``, ``"dho.cmd"``) and the protocol
version, and ``signature`` is the 64-byte Ed25519 signature over ``DOMAIN || body``. The type
inside the signed body keeps a signature for one kind of message from being accepted as
another.

Parsing is bounded: the wire size is checked before anything is decoded, msgpack is unpacked
with per-container limits, and the zstd payload is decompressed with a hard output cap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final

import msgpack
import zstandard
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.clock import ClockAnchor
from agent.model import Reading
from dho_protocol.bounded import BoundedReader
from dho_protocol.errors import (
    MalformedMessageError,
    MessageTooLargeError,
    ReplayError,
    SignatureError,
    UnsupportedVersionError,
)
from dho_protocol.payload import decode_readings, encode_readings
from dho_protocol.rowpayload import (
    DecodedRows,
    WireRows,
    decode_rows,
    elide_rows,
    encode_rows,
    is_rows_payload,
)
from dho_protocol.rows import MAX_ROW_BYTES
from dho_protocol.rows import PLAIN as ROW_PLAIN
from dho_protocol.rows import ZSTD as ROW_ZSTD
from dho_protocol.topics import check_box_id

VERSION: Final = 1
"""The version of acknowledgements and commands, and of the batches of older boxes."""
BATCH_VERSION: Final = 4
"""The batch version boxes send: payload v4, the stored rows as they are, with canonical raw
0x2A5F frames left out for the receiver to rebuild (section 5.5) and each row's reading id
left out for the receiver to take from the envelope (section 5.6)."""
REBUILT_BATCH_VERSION: Final = 3
"""Payload v3: v4 with the rows' ids in them (boxes in the field)."""
ROWS_BATCH_VERSION: Final = 2
"""Payload v2, the stored rows as they are with every raw frame (boxes in the field)."""
_ROW_BATCHES: Final = (ROWS_BATCH_VERSION, REBUILT_BATCH_VERSION, BATCH_VERSION)
_VERSIONS: Final = {"dho.batch": (1, 2, 3, 4), "dho.ack": (1,), "dho.cmd": (1,)}
DOMAIN: Final = b"dho-uplink\x00"
SIGNATURE_LEN: Final = 64

MAX_BATCH_BYTES: Final = 512 * 1024
"""Largest batch envelope on the wire a receiver accepts by default (section 4.4)."""
MAX_PAYLOAD_BYTES: Final = 16 * 2**20
"""Largest decompressed payload (zip-bomb guard)."""
MAX_READINGS: Final = 10_000
MAX_CONTROL_BYTES: Final = 16 * 1024
"""Largest acknowledgement or command."""

ZSTD_LEVEL: Final = 9

_BATCH: Final = "dho.batch"
_ACK: Final = "dho.ack"
_CMD: Final = "dho.cmd"

FLAG_RAW: Final = 1
"""Envelope flag: raw device frames are included for some readings of the payload."""


# --- signing and bounded parsing ----------------------------------------------------------


def _seal(body: list[Any], key: Ed25519PrivateKey) -> bytes:
    packed = msgpack.packb(body, use_bin_type=True)
    return packed + key.sign(DOMAIN + packed)


def _split(data: bytes, kind: str, limit: int) -> tuple[bytes, bytes, list[Any]]:
    if len(data) > limit:
        raise MessageTooLargeError(f"{kind} of {len(data)} bytes exceeds the limit of {limit}")
    if len(data) <= SIGNATURE_LEN:
        raise MalformedMessageError(f"{kind} too short to carry a signature")
    body, sig = data[:-SIGNATURE_LEN], data[-SIGNATURE_LEN:]
    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_array_len=64,
            max_map_len=64,
            max_str_len=4096,
            max_bin_len=limit,
            max_ext_len=0,
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as err:
        raise MalformedMessageError(f"{kind} body is not msgpack: {err}") from err
    if not isinstance(obj, list) or len(obj) < 2:
        raise MalformedMessageError(f"{kind} body is not a message array")
    if obj[0] != kind:
        raise UnsupportedVersionError(f"expected a {kind} message, got type {obj[0]!r}")
    known = _VERSIONS[kind]
    if type(obj[1]) is not int or obj[1] not in known:
        raise UnsupportedVersionError(
            f"{kind} version {obj[1]!r} is not supported (only {', '.join(map(str, known))})"
        )
    return body, sig, obj


def _verify(body: bytes, sig: bytes, key: Ed25519PublicKey, kind: str) -> None:
    try:
        key.verify(sig, DOMAIN + body)
    except InvalidSignature as err:
        raise SignatureError(f"{kind} signature does not verify") from err


def _uuid(raw: object, what: str) -> uuid.UUID:
    if not isinstance(raw, bytes) or len(raw) != 16:
        raise MalformedMessageError(f"{what} is not a 16-byte UUID")
    return uuid.UUID(bytes=raw)


def _int(raw: object, what: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or not lo <= raw <= hi:
        raise MalformedMessageError(f"{what} is not an integer in [{lo}, {hi}]")
    return raw


def _text(raw: object, what: str) -> str:
    if not isinstance(raw, str):
        raise MalformedMessageError(f"{what} is not a string")
    return raw


def digest(wire: bytes) -> bytes:
    """The SHA-256 of a message as sent: what an acknowledgement binds to."""
    return hashlib.sha256(wire).digest()


# --- batches (section 4) --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchEnvelope:
    """A parsed batch envelope. ``payload`` is still zstd-compressed.

    Attributes:
        box_id: the sending box (must equal the box id in the topic and the certificate).
        batch_id: unique per envelope, fresh on every send attempt.
        seq: the box's strictly increasing envelope counter (the replay window, section 4.5).
        created_ms: the box's wall clock when it sealed the envelope (informational).
        reading_ids: the ids of the readings in the payload, in row order.
        flags: :data:`FLAG_RAW` when raw frames are included.
        payload: zstd-compressed payload: for ``version`` 4, 3 and 2 the output of
            :func:`dho_protocol.rowpayload.encode_rows` (v4, v3, v2), for version 1 that of
            :func:`dho_protocol.payload.encode_readings`.
        version: the batch version (4 from current boxes, 3, 2 and 1 from older ones).
    """

    box_id: str
    batch_id: uuid.UUID
    seq: int
    created_ms: int
    reading_ids: tuple[uuid.UUID, ...]
    flags: int
    payload: bytes
    version: int = VERSION


@dataclass(frozen=True, slots=True)
class SignedBatch:
    """A batch parsed but not yet verified: call :meth:`verify` with the box's key."""

    envelope: BatchEnvelope
    body: bytes
    signature: bytes
    digest: bytes

    def verify(self, key: Ed25519PublicKey) -> BatchEnvelope:
        """Check the box's signature and return the envelope.

        Raises:
            SignatureError: the signature does not verify under ``key``.
        """
        _verify(self.body, self.signature, key, _BATCH)
        return self.envelope


def seal_batch(
    box_id: str,
    seq: int,
    readings: Sequence[Reading],
    key: Ed25519PrivateKey,
    *,
    created_ms: int,
    batch_id: uuid.UUID | None = None,
    level: int = ZSTD_LEVEL,
) -> tuple[BatchEnvelope, bytes]:
    """Encode, compress and sign a batch. Returns the envelope and its wire bytes.

    Raises:
        ValueError: a reading that the wire format cannot carry.
    """
    if not readings:
        raise ValueError("a batch carries at least one reading")
    raw_payload = encode_readings(readings)
    payload = zstandard.ZstdCompressor(level=level).compress(raw_payload)
    env = BatchEnvelope(
        box_id=check_box_id(box_id),
        batch_id=batch_id if batch_id is not None else uuid.uuid4(),
        seq=seq,
        created_ms=created_ms,
        reading_ids=tuple(r.id for r in readings),
        flags=FLAG_RAW if any(r.raw for r in readings) else 0,
        payload=payload,
    )
    return env, _seal(_batch_body(env), key)


ROWS_ZSTD_LEVEL: Final = 12
"""The zstd level of a v2, v3 or v4 payload. Its rows go in plain (their own zstd undone,
:func:`_plain_rows`), so that the payload's frame compresses across rows: a minute of
oximetry repeats the one before it. Level 3 until 4 December 2026, chosen on v2 payloads
that still carried every raw frame (500 rows: plain at level 3, 100 kB in 5-9 ms; at level 9,
90 kB but 48 ms). With the frames and ids left out (v4) a payload is a fifth of that, and
level 12 (zstd's binary-tree match finder) pays: the bench's patient-day, 486 readings in 14
batches, 52,084 B sealed at level 3, 47,964 B at level 12, 9.8 and 14.0 ms of CPU for all 14
(docs/uplink-protocol.md, section 5; claim + seal of 500 spot readings in docs/proof.md)."""


def _plain_rows(rows: WireRows) -> WireRows:
    """``rows`` with every zstd-framed row as its plain framing (the same row: the receiver
    reads both framings, section 5.1)."""
    d = zstandard.ZstdDecompressor()
    out = []
    for row in rows.rows:
        if row[:1] == bytes([ROW_ZSTD]):
            row = bytes([ROW_PLAIN]) + d.decompress(row[1:], max_output_size=MAX_ROW_BYTES)
        out.append(row)
    return dataclasses.replace(rows, rows=tuple(out))


def seal_rows(
    box_id: str,
    seq: int,
    rows: WireRows,
    key: Ed25519PrivateKey,
    *,
    created_ms: int,
    anchor: ClockAnchor | None = None,
    batch_id: uuid.UUID | None = None,
    raw_frames: bool = True,
    level: int = ROWS_ZSTD_LEVEL,
    plain_rows: bool = True,
    version: int = BATCH_VERSION,
) -> tuple[BatchEnvelope, bytes]:
    """Seal a claim's stored rows into a version-4 batch (no reading is decoded into objects).

    Args:
        anchor: the box's clock anchor now, for readings captured before the clock was
            synchronised in this boot (see :mod:`dho_protocol.rowpayload`).
        raw_frames: whether some rows carry raw device frames (the envelope's flag; rebuilt
            frames count: the receiver stores them).
        plain_rows: put zstd-framed rows in plain (:data:`ROWS_ZSTD_LEVEL`); ``False``
            sends them as stored (as boxes did before; tests of the receiver's bounds).
        version: :data:`BATCH_VERSION` (4: canonical raw frames of oximetry chunks left out
            for the receiver to rebuild, :mod:`dho_protocol.rawframes`, and the rows' ids,
            which the envelope carries), 3 (the frames left out, the ids in the rows) or 2
            (every frame sent); 3 and 2 as boxes in the field send them (tests of the
            receiver).

    Raises:
        ValueError: no rows, rows inconsistent with their ids, or an unknown version.
    """
    if not rows.rows:
        raise ValueError("a batch carries at least one reading")
    if version not in _ROW_BATCHES:
        raise ValueError(f"rows are sealed as batch version 2, 3 or 4, not {version!r}")
    plain = _plain_rows(rows) if plain_rows else rows
    rebuilt: bytes | None = None
    if version != ROWS_BATCH_VERSION:
        plain, rebuilt = elide_rows(plain)
    raw = encode_rows(plain, anchor, rebuilt, idless=version == BATCH_VERSION)
    payload = zstandard.ZstdCompressor(level=level).compress(raw)
    env = BatchEnvelope(
        box_id=check_box_id(box_id),
        batch_id=batch_id if batch_id is not None else uuid.uuid4(),
        seq=seq,
        created_ms=created_ms,
        reading_ids=rows.reading_ids,
        flags=FLAG_RAW if raw_frames else 0,
        payload=payload,
        version=version,
    )
    return env, _seal(_batch_body(env), key)


def _batch_body(env: BatchEnvelope) -> list[Any]:
    """The nine fields a batch envelope signs (section 4.2), in order, for either version."""
    return [
        _BATCH,
        env.version,
        env.box_id,
        env.batch_id.bytes,
        env.seq,
        env.created_ms,
        b"".join(i.bytes for i in env.reading_ids),
        env.flags,
        env.payload,
    ]


def parse_batch(data: bytes, *, max_bytes: int = MAX_BATCH_BYTES) -> SignedBatch:
    """Parse a batch envelope without verifying it (the key depends on the box id inside).

    Bounded: the body is read item by item against its schema
    (:class:`~dho_protocol.bounded.BoundedReader`), so a body that is not the nine fields of
    section 4.2 costs nothing to refuse, whatever it holds.

    Raises:
        MessageTooLargeError, MalformedMessageError, UnsupportedVersionError.
    """
    if len(data) > max_bytes:
        raise MessageTooLargeError(
            f"{_BATCH} of {len(data)} bytes exceeds the limit of {max_bytes}"
        )
    if len(data) <= SIGNATURE_LEN:
        raise MalformedMessageError(f"{_BATCH} too short to carry a signature")
    body, sig = data[:-SIGNATURE_LEN], data[-SIGNATURE_LEN:]
    r = BoundedReader(body, max_items=64, max_str=4096, max_bin=max_bytes, max_array=64)
    fields = r.array("batch body", 2, 64)
    kind = r.scalar("message type")
    if not isinstance(kind, str):
        raise MalformedMessageError("the message type is not a string")
    if kind != _BATCH:
        raise UnsupportedVersionError(f"expected a {_BATCH} message, got type {kind!r:.40}")
    version = r.scalar("version")
    if type(version) is not int or version not in _VERSIONS[_BATCH]:
        raise UnsupportedVersionError(
            f"{_BATCH} version {version!r:.20} is not supported (only 1, 2, 3, 4)"
        )
    if fields != 9:
        raise MalformedMessageError("batch envelope does not have 9 fields")
    box_id = r.text("box id", 1, 64)
    batch_id = r.binary("batch id", 16, 16)
    seq = r.integer("seq", 0, 2**63 - 1)
    created_ms = r.integer("created time", 0, 2**63 - 1)
    ids = r.binary("reading ids", 16, 16 * MAX_READINGS)
    flags = r.integer("flags", 0, 0xFFFF)
    payload = r.binary("payload", 0, max_bytes)
    r.finish("batch body")
    if len(ids) % 16:
        raise MalformedMessageError("reading ids are not a multiple of 16 bytes")
    n = len(ids) // 16
    try:
        box = check_box_id(box_id)
    except ValueError as err:
        raise MalformedMessageError(str(err)) from err
    reading_ids = tuple(uuid.UUID(bytes=ids[i : i + 16]) for i in range(0, len(ids), 16))
    if len(set(reading_ids)) != n:
        raise MalformedMessageError("reading ids repeat inside the batch")
    env = BatchEnvelope(
        box_id=box,
        batch_id=uuid.UUID(bytes=batch_id),
        seq=seq,
        created_ms=created_ms,
        reading_ids=reading_ids,
        flags=flags,
        payload=payload,
        version=version,
    )
    return SignedBatch(env, body, sig, digest(data))


def batch_readings(
    env: BatchEnvelope, *, max_payload_bytes: int = MAX_PAYLOAD_BYTES
) -> tuple[Reading, ...]:
    """Decompress and decode the readings of a verified envelope (any batch version).

    Raises:
        MessageTooLargeError: the payload decompresses past ``max_payload_bytes``.
        MalformedMessageError: it is not a valid zstd frame or payload.
    """
    raw = _decompress(env, max_payload_bytes)
    if env.version in _ROW_BATCHES:
        budget = max_payload_bytes - len(raw)
        return decode_rows(
            raw, env.reading_ids, budget=budget, bodies=False, version=env.version
        ).readings
    return decode_readings(raw, env.reading_ids)


def batch_contents(
    env: BatchEnvelope, *, max_payload_bytes: int = MAX_PAYLOAD_BYTES
) -> DecodedRows:
    """The readings of a verified envelope and the form to store each in, decoded once.

    For a version-4, 3 or 2 batch the stored form is the row as the box stored it (with
    its context; raw frames a v3 or v4 box left out rebuilt, a v4 row's id put back); a
    version-1 batch (older boxes) is encoded again, one reading at a time.

    Raises:
        MessageTooLargeError, MalformedMessageError: as :func:`batch_readings`.
    """
    raw = _decompress(env, max_payload_bytes)
    if env.version in _ROW_BATCHES:
        return decode_rows(
            raw, env.reading_ids, budget=max_payload_bytes - len(raw), version=env.version
        )
    readings = decode_readings(raw, env.reading_ids)
    return DecodedRows(readings, tuple(encode_readings([r]) for r in readings))


def decode_stored(body: bytes, reading_id: uuid.UUID) -> Reading:
    """A reading from the form :func:`batch_contents` gave for storing it.

    Raises:
        MalformedMessageError: it does not decode.
    """
    if is_rows_payload(body):
        (r,) = decode_rows(body, [reading_id], bodies=False).readings
    else:
        (r,) = decode_readings(body, [reading_id])
    return r


def _decompress(env: BatchEnvelope, max_payload_bytes: int) -> bytes:
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(env.payload)
        parts: list[bytes] = []
        size = 0
        while size <= max_payload_bytes:
            chunk = reader.read(max_payload_bytes + 1 - size)
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
        raw = b"".join(parts)
    except zstandard.ZstdError as err:
        raise MalformedMessageError(f"payload is not valid zstd: {err}") from err
    if len(raw) > max_payload_bytes:
        raise MessageTooLargeError(
            f"payload decompresses past the limit of {max_payload_bytes} bytes"
        )
    return raw


# --- acknowledgements (section 6) ---------------------------------------------------------


class AckResult(IntEnum):
    """What the receiver did with a batch. Values >= 10 are refusals."""

    STORED = 0
    """Committed durably (readings that were already stored count as duplicates)."""
    DUPLICATE = 1
    """This exact envelope was committed before; nothing new was stored."""
    REJECTED_MALFORMED = 10
    """The signature was valid but the payload did not decode; nothing was stored."""
    REJECTED_REPLAY = 11
    """``seq`` falls outside the replay window; ``high_water`` tells the box where to go on."""
    REJECTED_TOO_LARGE = 12
    """The decompressed payload exceeded the receiver's limit; send smaller batches."""
    REJECTED_FORBIDDEN = 13
    """Signed and well formed, but it holds something this box may not deliver: a reading for
    a patient the box is not assigned to, or a reading id another box delivered. Nothing was
    stored; the service raised an alarm."""
    REJECTED_FAILED = 14
    """Signed, but the receiver failed to process it (bounded retries exhausted). Nothing was
    stored; the batch is kept for audit. Send again later, in smaller batches."""

    @property
    def delivered(self) -> bool:
        """True when the box may mark the readings delivered."""
        return self < 10


@dataclass(frozen=True, slots=True)
class Ack:
    """The receiver's answer to one batch, signed by the service key the box pinned."""

    box_id: str
    batch_id: uuid.UUID
    seq: int
    batch_digest: bytes
    result: AckResult
    stored: int
    duplicates: int
    high_water: int
    server_ms: int


def seal_ack(ack: Ack, key: Ed25519PrivateKey) -> bytes:
    """Sign an acknowledgement with the service key."""
    return _seal(
        [
            _ACK,
            VERSION,
            ack.box_id,
            ack.batch_id.bytes,
            ack.seq,
            ack.batch_digest,
            int(ack.result),
            ack.stored,
            ack.duplicates,
            ack.high_water,
            ack.server_ms,
        ],
        key,
    )


def open_ack(data: bytes, service_key: Ed25519PublicKey, box_id: str) -> Ack:
    """Verify and parse an acknowledgement addressed to ``box_id``.

    Raises:
        SignatureError: not signed by the pinned service key, or addressed to another box.
        MalformedMessageError, MessageTooLargeError, UnsupportedVersionError.
    """
    body, sig, obj = _split(data, _ACK, MAX_CONTROL_BYTES)
    _verify(body, sig, service_key, _ACK)
    if len(obj) != 11:
        raise MalformedMessageError("acknowledgement does not have 11 fields")
    _, _, box, batch_id, seq, dig, result, stored, dups, hw, server_ms = obj
    if box != box_id:
        raise SignatureError("acknowledgement is addressed to another box")
    if not isinstance(dig, bytes) or len(dig) != 32:
        raise MalformedMessageError("batch digest is not 32 bytes")
    try:
        res = AckResult(_int(result, "result"))
    except ValueError as err:
        raise MalformedMessageError(f"unknown acknowledgement result {result!r}") from err
    return Ack(
        box_id=box_id,
        batch_id=_uuid(batch_id, "batch id"),
        seq=_int(seq, "seq"),
        batch_digest=dig,
        result=res,
        stored=_int(stored, "stored"),
        duplicates=_int(dups, "duplicates"),
        high_water=_int(hw, "high water"),
        server_ms=_int(server_ms, "server time"),
    )


# --- commands (section 7) -----------------------------------------------------------------

ArgValue = str | int | bool | None


@dataclass(frozen=True, slots=True)
class Command:
    """A signed instruction from the service to one box.

    Attributes:
        counter: per box, strictly increasing; the box refuses any value it has seen.
        issued_ms, expires_ms: the service's clock; a box with a synchronised clock refuses
            expired commands.
        name: e.g. ``"status-report"``, ``"set-schedule"``, ``"rotate-keys"``.
    """

    box_id: str
    command_id: uuid.UUID
    counter: int
    issued_ms: int
    expires_ms: int
    name: str
    args: Mapping[str, ArgValue] = field(default_factory=dict)


def seal_command(cmd: Command, key: Ed25519PrivateKey) -> bytes:
    """Sign a command with the service key."""
    return _seal(
        [
            _CMD,
            VERSION,
            cmd.box_id,
            cmd.command_id.bytes,
            cmd.counter,
            cmd.issued_ms,
            cmd.expires_ms,
            cmd.name,
            dict(cmd.args),
        ],
        key,
    )


def open_command(data: bytes, service_key: Ed25519PublicKey, box_id: str) -> Command:
    """Verify and parse a command addressed to ``box_id`` (replay is checked separately).

    Raises:
        SignatureError: unsigned, wrongly signed, or addressed to another box.
        MalformedMessageError, MessageTooLargeError, UnsupportedVersionError.
    """
    body, sig, obj = _split(data, _CMD, MAX_CONTROL_BYTES)
    _verify(body, sig, service_key, _CMD)
    if len(obj) != 9:
        raise MalformedMessageError("command does not have 9 fields")
    _, _, box, cid, counter, issued, expires, name, args = obj
    if box != box_id:
        raise SignatureError("command is addressed to another box")
    if not isinstance(args, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, str | int | bool))
        for k, v in args.items()
    ):
        raise MalformedMessageError("command arguments are not a flat map of scalars")
    return Command(
        box_id=box_id,
        command_id=_uuid(cid, "command id"),
        counter=_int(counter, "counter", 1),
        issued_ms=_int(issued, "issued time"),
        expires_ms=_int(expires, "expiry"),
        name=_text(name, "command name"),
        args=args,
    )


def check_command_fresh(
    cmd: Command, *, last_counter: int, now_ms: int, clock_synced: bool, max_skew_ms: int = 300_000
) -> None:
    """Replay protection for a verified command (section 7.2).

    The counter must exceed the last one accepted. With a synchronised clock the command must
    not be expired, nor issued further in the future than ``max_skew_ms``. Without one only
    the counter is checked (the box cannot judge the service's times).

    Raises:
        ReplayError: the command was seen before, is expired, or claims a future issue time.
    """
    if cmd.counter <= last_counter:
        raise ReplayError(f"command counter {cmd.counter} is not above {last_counter}")
    if cmd.expires_ms < cmd.issued_ms:
        raise ReplayError("command expires before it was issued")
    if clock_synced:
        if now_ms > cmd.expires_ms:
            raise ReplayError("command expired")
        if cmd.issued_ms > now_ms + max_skew_ms:
            raise ReplayError("command issued in the future")


# --- keys ---------------------------------------------------------------------------------


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key (what enrolment records)."""
    from cryptography.hazmat.primitives import serialization

    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_public_key(raw: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from its 32 raw bytes.

    Raises:
        ValueError: not 32 bytes.
    """
    return Ed25519PublicKey.from_public_bytes(raw)


KeyLookup = Callable[[str], Ed25519PublicKey | None]
"""Maps a box id to its enrolled public key, or None for an unknown box."""
