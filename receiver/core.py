"""The receiver's decision for one inbound batch: verify, validate, store, acknowledge.

No MQTT here (see :mod:`receiver.mqtt`): :meth:`Receiver.handle` takes a topic and the bytes
and returns an :class:`Outcome` saying what to publish. That keeps the rules testable and
lets the benchmark measure ingest without a broker.

Order of checks (``docs/uplink-protocol.md`` section 4.4): wire size; envelope parse and
version; box id in topic equals box id in envelope; the box is enrolled; the Ed25519
signature; payload decompression (bounded) and decoding; the replay window and
de-duplication inside the storage transaction. Anything refused before the signature is
verified is dropped silently (no answer to forgers); a signed batch that is refused gets a
signed negative acknowledgement so the box can react.

Log lines name the box, the batch id, counts and the reason: never values or patients.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import dho_protocol as protocol
from dho_protocol import (
    Ack,
    AckResult,
    MalformedMessageError,
    MessageTooLargeError,
    ProtocolError,
    UnknownBoxError,
)
from receiver.store import Store

_LOG = logging.getLogger("receiver")

REPLAY_WINDOW: Final = 4096
"""How far below a box's highest sequence number a new envelope may still be (section 4.5)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the receiver did with one message.

    Attributes:
        accepted: the readings are durably committed (``STORED`` or ``DUPLICATE``).
        reason: ``"stored"``, ``"duplicate"`` or the refusal token (``"forged"``, ...).
        ack_topic, ack: the signed answer to publish, or None (no answer to forgers).
    """

    accepted: bool
    reason: str
    box_id: str | None = None
    batch_id: str | None = None
    stored: int = 0
    duplicates: int = 0
    ack_topic: str | None = None
    ack: bytes | None = None


class Receiver:
    """Verifies and stores batches; signs acknowledgements with the service key."""

    def __init__(
        self,
        store: Store,
        service_key: Ed25519PrivateKey,
        *,
        max_batch_bytes: int = protocol.MAX_BATCH_BYTES,
        max_payload_bytes: int = protocol.MAX_PAYLOAD_BYTES,
        replay_window: int = REPLAY_WINDOW,
    ) -> None:
        self.store = store
        self.service_key = service_key
        self.max_batch_bytes = max_batch_bytes
        self.max_payload_bytes = max_payload_bytes
        self.replay_window = replay_window
        self.counters: dict[str, int] = {}

    def _count(self, reason: str) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + 1

    def _refuse(self, err: ProtocolError, box: str | None, batch: str | None) -> Outcome:
        self._count(err.reason)
        _LOG.warning("batch refused (%s) box=%s batch=%s: %s", err.reason, box, batch, err)
        return Outcome(False, err.reason, box, batch)

    def handle(self, topic: str, payload: bytes) -> Outcome:
        """Process one message from the batch subscription."""
        try:
            topic_box = protocol.box_of_batch_topic(topic)
        except MalformedMessageError as err:
            return self._refuse(err, None, None)
        try:
            signed = protocol.parse_batch(payload, max_bytes=self.max_batch_bytes)
        except ProtocolError as err:
            return self._refuse(err, topic_box, None)
        env = signed.envelope
        batch = str(env.batch_id)
        if env.box_id != topic_box:
            return self._refuse(
                MalformedMessageError(f"envelope names box {env.box_id!r}, topic another"),
                topic_box,
                batch,
            )
        raw_key = self.store.box_key(env.box_id)
        if raw_key is None:
            return self._refuse(UnknownBoxError("no enrolled key for this box"), env.box_id, batch)
        try:
            box_key = protocol.load_public_key(raw_key)
        except ValueError:
            return self._refuse(UnknownBoxError("the enrolled key is unusable"), env.box_id, batch)
        try:
            signed.verify(box_key)
        except ProtocolError as err:
            return self._refuse(err, env.box_id, batch)
        # From here the box really sent this: refusals are answered (signed).
        try:
            readings = protocol.batch_readings(env, max_payload_bytes=self.max_payload_bytes)
        except MessageTooLargeError as err:
            return self._answer_refusal(env, signed.digest, AckResult.REJECTED_TOO_LARGE, err)
        except ProtocolError as err:
            return self._answer_refusal(env, signed.digest, AckResult.REJECTED_MALFORMED, err)
        res = self.store.commit_batch(
            env.box_id, env.seq, env.batch_id, signed.digest, readings, self.replay_window
        )
        if not res.result.delivered:
            self._count("replayed")
            _LOG.warning(
                "batch refused (replayed) box=%s batch=%s seq=%d: %s",
                env.box_id,
                batch,
                env.seq,
                res.reason,
            )
            return Outcome(
                False,
                "replayed",
                env.box_id,
                batch,
                ack_topic=protocol.ack_topic(env.box_id),
                ack=self._ack(env, signed.digest, res.result, 0, 0, res.high_water),
            )
        reason = "stored" if res.result is AckResult.STORED else "duplicate"
        self._count(reason)
        _LOG.info(
            "batch %s box=%s batch=%s seq=%d readings=%d new=%d duplicates=%d",
            reason,
            env.box_id,
            batch,
            env.seq,
            len(readings),
            res.stored,
            res.duplicates,
        )
        return Outcome(
            True,
            reason,
            env.box_id,
            batch,
            res.stored,
            res.duplicates,
            ack_topic=protocol.ack_topic(env.box_id),
            ack=self._ack(
                env, signed.digest, res.result, res.stored, res.duplicates, res.high_water
            ),
        )

    def _answer_refusal(
        self, env: protocol.BatchEnvelope, digest: bytes, result: AckResult, err: ProtocolError
    ) -> Outcome:
        out = self._refuse(err, env.box_id, str(env.batch_id))
        return Outcome(
            False,
            out.reason,
            env.box_id,
            out.batch_id,
            ack_topic=protocol.ack_topic(env.box_id),
            ack=self._ack(env, digest, result, 0, 0, 0),
        )

    def _ack(
        self,
        env: protocol.BatchEnvelope,
        digest: bytes,
        result: AckResult,
        stored: int,
        duplicates: int,
        high_water: int,
    ) -> bytes:
        return protocol.seal_ack(
            Ack(
                box_id=env.box_id,
                batch_id=env.batch_id,
                seq=env.seq,
                batch_digest=digest,
                result=result,
                stored=stored,
                duplicates=duplicates,
                high_water=high_water,
                server_ms=time.time_ns() // 1_000_000,
            ),
            self.service_key,
        )
