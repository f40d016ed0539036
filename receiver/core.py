"""The receiver's decision for one inbound batch: verify, validate, store, acknowledge.

No MQTT here (see :mod:`receiver.mqtt`): :meth:`Receiver.handle` takes a topic and the bytes
and returns an :class:`Outcome` saying what to publish. That keeps the rules testable and
lets the benchmark measure ingest without a broker.

Order of checks (``docs/uplink-protocol.md`` section 4.4): wire size; envelope parse and
version; box id in topic equals box id in envelope; the box is enrolled; the Ed25519
signature; payload decompression (bounded) and decoding; every reading's patient is assigned
to the box; the replay window and de-duplication inside the storage transaction. Anything
refused before the signature is verified is dropped without an answer (no oracle for
forgers); a signed batch that is refused gets a signed negative acknowledgement so the box
can react. Every refused message is kept for audit (bounded, :class:`AuditLimits`). A batch
with a reading for a patient the box is not assigned to is an **alarm** (log line
``ALARM batch refused (forbidden)``, counter ``alarms``).

:meth:`Receiver.handle` raises only for trouble that is not the message's fault: the store
being unavailable (:class:`~receiver.errors.StoreUnavailableError`, transient) or a bug.
The caller (:mod:`receiver.mqtt`) retries those with a bound and finally calls
:meth:`Receiver.refuse_failed`, which always ends in a refusal.

Log lines name the box, the batch id, counts and the reason: never values or patients.
"""

from __future__ import annotations

import logging
import time
import traceback
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
from receiver.errors import StoreError
from receiver.store import AuditLimits, RefusedBatch, Store

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
        audit: AuditLimits | None = None,
    ) -> None:
        self.store = store
        self.service_key = service_key
        self.max_batch_bytes = max_batch_bytes
        self.max_payload_bytes = max_payload_bytes
        self.replay_window = replay_window
        self.audit = audit or AuditLimits()
        self.counters: dict[str, int] = {}
        self.alarms = 0

    def _count(self, reason: str) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + 1

    def _keep(
        self,
        wire: bytes,
        box: str | None,
        reason: str,
        detail: str,
        env: protocol.BatchEnvelope | None = None,
    ) -> None:
        """Keep a refused message for audit; a store that cannot is logged, never fatal."""
        entry = RefusedBatch(
            received_at_ms=time.time_ns() // 1_000_000,
            box_id=box or "",
            batch_id=None if env is None else env.batch_id,
            seq=None if env is None else env.seq,
            reason=reason,
            detail=detail,
            wire=wire,
        )
        try:
            self.store.keep_refused(entry, self.audit)
        except (StoreError, OSError) as err:
            _LOG.warning("refused batch box=%s not kept for audit: %s", box, type(err).__name__)

    def _refuse(
        self,
        err: ProtocolError,
        box: str | None,
        batch: str | None,
        wire: bytes,
        env: protocol.BatchEnvelope | None = None,
    ) -> Outcome:
        self._count(err.reason)
        _LOG.warning("batch refused (%s) box=%s batch=%s: %s", err.reason, box, batch, err)
        self._keep(wire, box, err.reason, str(err), env)
        return Outcome(False, err.reason, box, batch)

    def _alarm(
        self, env: protocol.BatchEnvelope, digest: bytes, wire: bytes, detail: str
    ) -> Outcome:
        """A box tried to deliver what its enrolment does not allow: refuse, answer, alarm."""
        self.alarms += 1
        self._count("forbidden")
        _LOG.error(
            "ALARM batch refused (forbidden) box=%s batch=%s seq=%d: %s",
            env.box_id,
            env.batch_id,
            env.seq,
            detail,
        )
        self._keep(wire, env.box_id, "forbidden", detail, env)
        return Outcome(
            False,
            "forbidden",
            env.box_id,
            str(env.batch_id),
            ack_topic=protocol.ack_topic(env.box_id),
            ack=self._ack(env, digest, AckResult.REJECTED_FORBIDDEN, 0, 0, 0),
        )

    def handle(self, topic: str, payload: bytes) -> Outcome:
        """Process one message from the batch subscription.

        Raises:
            StoreUnavailableError: the store cannot be used now; nothing was decided (retry).
            Exception: a bug or an unexpected store failure; retry a bounded number of times,
                then :meth:`refuse_failed`.
        """
        try:
            topic_box = protocol.box_of_batch_topic(topic)
        except MalformedMessageError as err:
            return self._refuse(err, None, None, payload)
        try:
            signed = protocol.parse_batch(payload, max_bytes=self.max_batch_bytes)
        except ProtocolError as err:
            return self._refuse(err, topic_box, None, payload)
        env = signed.envelope
        batch = str(env.batch_id)
        if env.box_id != topic_box:
            return self._refuse(
                MalformedMessageError("the envelope names another box than the topic"),
                topic_box,
                batch,
                payload,
            )
        enrolled = self.store.box(env.box_id)
        if enrolled is None:
            return self._refuse(
                UnknownBoxError("no enrolled key for this box"), env.box_id, batch, payload
            )
        try:
            box_key = protocol.load_public_key(enrolled.public_key)
        except ValueError:
            return self._refuse(
                UnknownBoxError("the enrolled key is unusable"), env.box_id, batch, payload
            )
        try:
            signed.verify(box_key)
        except ProtocolError as err:
            return self._refuse(err, env.box_id, batch, payload)
        # From here the box really sent this: refusals are answered (signed).
        try:
            # decoded once: the readings to check, and each row as it came, to store
            contents = protocol.batch_contents(env, max_payload_bytes=self.max_payload_bytes)
        except MessageTooLargeError as err:
            return self._answer_refusal(
                env, signed.digest, AckResult.REJECTED_TOO_LARGE, err, payload
            )
        except ProtocolError as err:
            return self._answer_refusal(
                env, signed.digest, AckResult.REJECTED_MALFORMED, err, payload
            )
        readings = contents.readings
        foreign = [r for r in readings if r.patient not in enrolled.patients]
        if foreign:
            return self._alarm(
                env,
                signed.digest,
                payload,
                f"{len(foreign)} of {len(readings)} readings are for"
                f" {len({r.patient for r in foreign})} patient(s) not assigned to this box",
            )
        res = self.store.commit_batch(
            env.box_id,
            env.seq,
            env.batch_id,
            signed.digest,
            readings,
            self.replay_window,
            bodies=contents.bodies,
        )
        if res.result is AckResult.REJECTED_FORBIDDEN:
            return self._alarm(env, signed.digest, payload, res.reason)
        if not res.result.delivered:
            self._count("replayed")
            _LOG.warning(
                "batch refused (replayed) box=%s batch=%s seq=%d: %s",
                env.box_id,
                batch,
                env.seq,
                res.reason,
            )
            self._keep(payload, env.box_id, "replayed", res.reason, env)
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

    def refuse_failed(self, topic: str, payload: bytes, err: BaseException) -> Outcome:
        """The last resort for a message whose handling kept failing (bounded retries spent).

        Refuses it, keeps it for audit and, when it is a batch that verifies under its box's
        key, answers ``REJECTED_FAILED`` so the box knows. Never raises. The log names the
        error's type and where it happened, never its text (it may quote the data).
        """
        self._count("failed")
        where = ""
        frames = traceback.extract_tb(err.__traceback__)
        if frames:
            where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}"
        detail = f"{type(err).__name__}{where} while processing; retries exhausted"
        box: str | None = None
        env: protocol.BatchEnvelope | None = None
        ack: bytes | None = None
        digest = b""
        try:
            box = protocol.box_of_batch_topic(topic)
            signed = protocol.parse_batch(payload, max_bytes=self.max_batch_bytes)
            enrolled = self.store.box(box)
            if signed.envelope.box_id == box and enrolled is not None:
                signed.verify(protocol.load_public_key(enrolled.public_key))
                env, digest = signed.envelope, signed.digest
                ack = self._ack(env, digest, AckResult.REJECTED_FAILED, 0, 0, 0)
        except Exception as why:  # noqa: BLE001 - no answer then, the refusal stands
            _LOG.debug("failed batch not answered: %s", type(why).__name__)
        _LOG.error(
            "batch refused (failed) box=%s batch=%s: %s",
            box,
            None if env is None else env.batch_id,
            detail,
        )
        self._keep(payload, box, "failed", detail, env)
        if env is None or ack is None:
            return Outcome(False, "failed", box)
        return Outcome(
            False,
            "failed",
            box,
            str(env.batch_id),
            ack_topic=protocol.ack_topic(env.box_id),
            ack=ack,
        )

    def _answer_refusal(
        self,
        env: protocol.BatchEnvelope,
        digest: bytes,
        result: AckResult,
        err: ProtocolError,
        wire: bytes,
    ) -> Outcome:
        out = self._refuse(err, env.box_id, str(env.batch_id), wire, env)
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
