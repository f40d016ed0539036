"""Enrolment and retirement of a box (``docs/enrolment.md``): pure code, no I/O.

**Tokens.** The service issues a one-time enrolment token for one box id: 80 random bits
written as 16 Crockford base32 characters in groups of four (``7K3M-Q9TX-...``), short-lived
and single use. The token never travels: the box derives from it

* ``token_id`` = SHA-256("dho-enrol-id" || secret), 32 hex digits: the topic and MQTT client
  id of the enrolment (nobody can guess it without the token), and
* ``mac_key`` = SHA-256("dho-enrol-mac" || secret): the key of the HMAC-SHA256 that binds
  the request to the token and proves the reply comes from whoever issued it.

**Request** (box -> service, ``dho/v1/enrol/<token_id>/request``, over the broker's
restricted enrolment account)::

    body = msgpack ["dho.enrol-req", 1, box_id, token_id, csr_pem, signing_key, nonce, created_ms]
    wire = body || Ed25519-sign(signing_key, DOMAIN || body) || HMAC(mac_key, body || sig)

The CSR (``CN = box_id``) is signed by the TLS key and the body by the Ed25519 key being
enrolled: the box proves it holds both private keys, which stay on the box.

**Reply** (service -> box, ``dho/v1/enrol/<token_id>/reply``)::

    body = msgpack ["dho.enrol-rep", 1, box_id, token_id, nonce, result, message, cert_pem,
                    ca_pem, service_key, broker_host, broker_port, patients]
    wire = body || HMAC(mac_key, body)       (32 zero bytes when the service has no such token)

``result`` is ``"enrolled"`` or a refusal (:data:`REFUSALS`). A reply without a valid MAC is
believed only as a refusal ("the service does not know this token"), never as an enrolment.

**Retirement** (decommissioning): the box asks the service to revoke it, signed with the key
being retired, on ``dho/v1/up/<box>/retire``; the service answers on the box's
acknowledgement topic with a message signed by the service key the box pinned::

    ["dho.retire", 1, box_id, nonce, created_ms] || Ed25519-sign(box key)
    ["dho.retired", 1, box_id, nonce, result, server_ms] || Ed25519-sign(service key)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from dho_protocol.envelope import DOMAIN, SIGNATURE_LEN, VERSION
from dho_protocol.errors import (
    MalformedMessageError,
    MessageTooLargeError,
    SignatureError,
    UnsupportedVersionError,
)
from dho_protocol.topics import TOPIC_ROOT, check_box_id

ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
"""Crockford base32: no I, L, O or U, so nothing reads as another character."""
TOKEN_CHARS: Final = 16
"""80 bits. A token is single use, expires, is bound to one box id and never travels."""
MAC_LEN: Final = 32
MAX_REQUEST_BYTES: Final = 16 * 1024
MAX_REPLY_BYTES: Final = 64 * 1024
MAX_RETIRE_BYTES: Final = 1024

ENROLLED: Final = "enrolled"
REFUSALS: Final = {
    "unknown-token": "the service does not know this token (mistyped, or from another service)",
    "token-used": "this token was used already; ask the service for a new one",
    "token-expired": "this token has expired; ask the service for a new one",
    "wrong-box": "this token was issued for another box id",
    "box-revoked": "this box id was revoked at the service; ask the service to issue it again",
    "bad-request": "the service could not use the request",
    "service-error": "the service failed to enrol the box; try again later",
}
"""Refusal codes and what they mean to a technician."""

_REQ: Final = "dho.enrol-req"
_REP: Final = "dho.enrol-rep"
_RETIRE: Final = "dho.retire"
_RETIRED: Final = "dho.retired"
ENROL_ROOT: Final = f"{TOPIC_ROOT}/enrol"
SHARED_REQUEST_SUBSCRIPTION: Final = f"$share/dho-receivers/{ENROL_ROOT}/+/request"
SHARED_RETIRE_SUBSCRIPTION: Final = f"$share/dho-receivers/{TOPIC_ROOT}/up/+/retire"


class TokenFormatError(ValueError):
    """The text is not an enrolment token (wrong length or characters)."""


# --- tokens ---------------------------------------------------------------------------------


def new_token() -> str:
    """A fresh token, ``XXXX-XXXX-XXXX-XXXX``."""
    chars = "".join(secrets.choice(ALPHABET) for _ in range(TOKEN_CHARS))
    return "-".join(chars[i : i + 4] for i in range(0, TOKEN_CHARS, 4))


def normalise_token(text: str) -> str:
    """The token's 16 characters: case, spaces and dashes ignored, O read as 0, I and L as 1.

    Raises:
        TokenFormatError: not 16 token characters.
    """
    cleaned = "".join(text.split()).replace("-", "").upper()
    cleaned = cleaned.translate(str.maketrans("OIL", "011"))
    if len(cleaned) != TOKEN_CHARS or any(c not in ALPHABET for c in cleaned):
        raise TokenFormatError(
            f"an enrolment token is {TOKEN_CHARS} letters and digits "
            "(like 7K3M-Q9TX-2B8D-HF4R); check it against what the service gave you"
        )
    return cleaned


def token_id(token: str) -> str:
    """The public handle of a token (topic segment and MQTT client id)."""
    return hashlib.sha256(b"dho-enrol-id\x00" + normalise_token(token).encode()).hexdigest()[:32]


def mac_key(token: str) -> bytes:
    """The HMAC key both ends derive from the token."""
    return hashlib.sha256(b"dho-enrol-mac\x00" + normalise_token(token).encode()).digest()


def request_topic(tid: str) -> str:
    """Where a box publishes its enrolment request."""
    return f"{ENROL_ROOT}/{_check_tid(tid)}/request"


def reply_topic(tid: str) -> str:
    """Where the service answers it."""
    return f"{ENROL_ROOT}/{_check_tid(tid)}/reply"


def retire_topic(box_id: str) -> str:
    """Where a box being decommissioned asks to be revoked."""
    return f"{TOPIC_ROOT}/up/{check_box_id(box_id)}/retire"


def token_of_request_topic(topic: str) -> str:
    """The token id in a request topic.

    Raises:
        MalformedMessageError: not a request topic.
    """
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != ENROL_ROOT or parts[4] != "request":
        raise MalformedMessageError(f"not an enrolment request topic: {topic!r}")
    return _check_tid(parts[3])


def box_of_retire_topic(topic: str) -> str:
    """The box id in a retire topic."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != f"{TOPIC_ROOT}/up" or parts[4] != "retire":
        raise MalformedMessageError(f"not a retire topic: {topic!r}")
    return parts[3]


def _check_tid(tid: str) -> str:
    if len(tid) != 32 or any(c not in "0123456789abcdef" for c in tid):
        raise MalformedMessageError("not a token id")
    return tid


# --- framing ----------------------------------------------------------------------------------


def _pack(body: list[Any]) -> bytes:
    return bytes(msgpack.packb(body, use_bin_type=True))


def _unpack(body: bytes, kind: str, limit: int) -> list[Any]:
    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_array_len=64,
            max_map_len=16,
            max_str_len=limit,
            max_bin_len=limit,
            max_ext_len=0,
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as err:
        raise MalformedMessageError(f"{kind} body is not msgpack: {err}") from err
    if not isinstance(obj, list) or len(obj) < 2:
        raise MalformedMessageError(f"{kind} body is not a message array")
    if obj[0] != kind:
        raise UnsupportedVersionError(f"expected a {kind} message, got type {obj[0]!r}")
    if obj[1] != VERSION:
        raise UnsupportedVersionError(f"{kind} version {obj[1]!r} is not supported")
    return obj


def _bin(raw: object, what: str, size: int | None = None) -> bytes:
    if not isinstance(raw, bytes) or (size is not None and len(raw) != size):
        raise MalformedMessageError(f"{what} is not {size or 'some'} bytes")
    return raw


def _str(raw: object, what: str, limit: int = 4096) -> str:
    if not isinstance(raw, str) or len(raw) > limit:
        raise MalformedMessageError(f"{what} is not a string")
    return raw


def _uint(raw: object, what: str, hi: int = 2**63 - 1) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or not 0 <= raw <= hi:
        raise MalformedMessageError(f"{what} is not an integer in [0, {hi}]")
    return raw


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


# --- offline enrolment: the same messages, carried as files ---------------------------------

OFFLINE_TOKEN_ID: Final = "0" * 32
"""Token id of an offline request file (the bundle that answers it is MACed with a token)."""


def offline_key(box_id: str) -> bytes:
    """The MAC key of an offline request: integrity against damage in transit, not secrecy."""
    return hashlib.sha256(b"dho-enrol-offline\x00" + box_id.encode()).digest()


# --- request --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnrolRequest:
    """A verified enrolment request.

    Attributes:
        csr: the certificate signing request, ``CN = box_id``, signature checked.
        signing_key: the box's Ed25519 public key (32 bytes), possession proven.
        nonce: echoed in the reply so the box matches it to this request.
    """

    box_id: str
    token_id: str
    csr: x509.CertificateSigningRequest = field(repr=False)
    signing_key: bytes
    nonce: bytes
    created_ms: int


def seal_request(
    box_id: str,
    token: str | None,
    csr: x509.CertificateSigningRequest,
    signing_key: Ed25519PrivateKey,
    *,
    created_ms: int,
    nonce: bytes | None = None,
) -> tuple[bytes, bytes]:
    """The wire request and its nonce; ``token`` None for an offline request (a file)."""
    check_box_id(box_id)
    tid = OFFLINE_TOKEN_ID if token is None else token_id(token)
    key = offline_key(box_id) if token is None else mac_key(token)
    nonce = nonce or os.urandom(16)
    pub = signing_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    body = _pack(
        [
            _REQ,
            VERSION,
            box_id,
            tid,
            csr.public_bytes(serialization.Encoding.PEM),
            pub,
            nonce,
            created_ms,
        ]
    )
    sig = signing_key.sign(DOMAIN + body)
    return body + sig + _mac(key, body + sig), nonce


@dataclass(frozen=True, slots=True)
class RequestFrame:
    """A request split but not yet authenticated (the service looks the token id up first).

    An offline request (a file carried to the service) has :data:`OFFLINE_TOKEN_ID` and is
    authenticated by :func:`offline_key`: integrity only; the operator signing it decides.
    """

    token_id: str
    box_id: str
    body: bytes
    sig: bytes
    mac: bytes
    fields: list[Any] = field(repr=False)


def split_request(data: bytes) -> RequestFrame:
    """Parse a request's frame (bounded) without authenticating it.

    Raises:
        MessageTooLargeError, MalformedMessageError, UnsupportedVersionError.
    """
    if len(data) > MAX_REQUEST_BYTES:
        raise MessageTooLargeError(f"enrolment request of {len(data)} bytes is over the limit")
    if len(data) <= SIGNATURE_LEN + MAC_LEN:
        raise MalformedMessageError("enrolment request too short")
    body = data[: -(SIGNATURE_LEN + MAC_LEN)]
    sig = data[-(SIGNATURE_LEN + MAC_LEN) : -MAC_LEN]
    tag = data[-MAC_LEN:]
    obj = _unpack(body, _REQ, MAX_REQUEST_BYTES)
    if len(obj) != 8:
        raise MalformedMessageError("enrolment request does not have 8 fields")
    box = _str(obj[2], "box id", 64)
    try:
        check_box_id(box)
    except ValueError as err:
        raise MalformedMessageError(str(err)) from None
    return RequestFrame(_check_tid(_str(obj[3], "token id", 64)), box, body, sig, tag, obj)


def is_offline(frame: RequestFrame) -> bool:
    """Whether a request came as a file (no token)."""
    return frame.token_id == OFFLINE_TOKEN_ID


def open_request(frame: RequestFrame, key: bytes) -> EnrolRequest:
    """Authenticate a request with the token's MAC key and check both proofs of possession.

    Raises:
        SignatureError: the MAC (wrong token), the Ed25519 signature or the CSR's signature
            does not verify.
        MalformedMessageError: a field is unusable, or the CSR is not for this box.
    """
    if not hmac.compare_digest(_mac(key, frame.body + frame.sig), frame.mac):
        raise SignatureError("enrolment request is not authenticated by this token")
    obj = frame.fields
    pub_raw = _bin(obj[5], "signing key", 32)
    try:
        Ed25519PublicKey.from_public_bytes(pub_raw).verify(frame.sig, DOMAIN + frame.body)
    except InvalidSignature as err:
        raise SignatureError("enrolment request is not signed by the key it enrols") from err
    try:
        csr = x509.load_pem_x509_csr(_bin(obj[4], "CSR"))
    except ValueError as err:
        raise MalformedMessageError(f"the CSR does not parse: {err}") from None
    if not csr.is_signature_valid:
        raise SignatureError("the CSR is not signed by its own key")
    if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey):
        raise MalformedMessageError("the CSR's key is not an EC key")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or cns[0].value != frame.box_id:
        raise MalformedMessageError("the CSR's common name is not the box id")
    return EnrolRequest(
        box_id=frame.box_id,
        token_id=frame.token_id,
        csr=csr,
        signing_key=pub_raw,
        nonce=_bin(obj[6], "nonce", 16),
        created_ms=_uint(obj[7], "created time"),
    )


# --- reply ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnrolReply:
    """The service's answer.

    Attributes:
        result: :data:`ENROLLED` or a key of :data:`REFUSALS`.
        authenticated: the MAC verified (always True for an enrolment).
        cert_pem: the box's certificate (chain), signed by the service's device CA.
        ca_pem: the CA the broker's certificate is checked against (pinned by the box).
        service_key: the service's Ed25519 public key (32 bytes; pinned by the box).
        patients: the patient references the service bound to this box.
    """

    box_id: str
    token_id: str
    nonce: bytes
    result: str
    message: str = ""
    cert_pem: bytes = b""
    ca_pem: bytes = b""
    service_key: bytes = b""
    broker_host: str = ""
    broker_port: int = 0
    patients: tuple[str, ...] = field(default=(), repr=False)
    authenticated: bool = True

    @property
    def enrolled(self) -> bool:
        """The box is enrolled (and the reply authenticated)."""
        return self.result == ENROLLED and self.authenticated


def seal_reply(reply: EnrolReply, key: bytes | None) -> bytes:
    """The wire reply; ``key`` None only for refusals of a token the service does not know."""
    if key is None and reply.result == ENROLLED:
        raise ValueError("an enrolment must be authenticated")
    body = _pack(
        [
            _REP,
            VERSION,
            reply.box_id,
            reply.token_id,
            reply.nonce,
            reply.result,
            reply.message,
            reply.cert_pem,
            reply.ca_pem,
            reply.service_key,
            reply.broker_host,
            reply.broker_port,
            list(reply.patients),
        ]
    )
    return body + (_mac(key, body) if key is not None else bytes(MAC_LEN))


def open_reply(data: bytes, key: bytes, *, box_id: str, nonce: bytes) -> EnrolReply:
    """Check and parse a reply to our request.

    A reply whose MAC does not verify is returned as an unauthenticated refusal (the
    technician is told, nothing is installed); one for another request raises.

    Raises:
        MalformedMessageError, UnsupportedVersionError, MessageTooLargeError.
        SignatureError: it claims an enrolment without a valid MAC, or names another request.
    """
    if len(data) > MAX_REPLY_BYTES:
        raise MessageTooLargeError("enrolment reply is over the limit")
    if len(data) <= MAC_LEN:
        raise MalformedMessageError("enrolment reply too short")
    body, tag = data[:-MAC_LEN], data[-MAC_LEN:]
    obj = _unpack(body, _REP, MAX_REPLY_BYTES)
    if len(obj) != 13:
        raise MalformedMessageError("enrolment reply does not have 13 fields")
    authenticated = hmac.compare_digest(_mac(key, body), tag)
    result = _str(obj[5], "result", 64)
    if _str(obj[2], "box id", 64) != box_id or _bin(obj[4], "nonce", 16) != nonce:
        raise SignatureError("enrolment reply answers another request")
    if not authenticated and result == ENROLLED:
        raise SignatureError("enrolment reply is not authenticated by this token")
    patients = obj[12]
    if not isinstance(patients, list) or not all(isinstance(p, str) for p in patients):
        raise MalformedMessageError("patients is not a list of strings")
    return EnrolReply(
        box_id=box_id,
        token_id=_str(obj[3], "token id", 64),
        nonce=nonce,
        result=result if result == ENROLLED or result in REFUSALS else "service-error",
        message=_str(obj[6], "message"),
        cert_pem=_bin(obj[7], "certificate"),
        ca_pem=_bin(obj[8], "CA"),
        service_key=_bin(obj[9], "service key"),
        broker_host=_str(obj[10], "broker host", 255),
        broker_port=_uint(obj[11], "broker port", 65535),
        patients=tuple(patients),
        authenticated=authenticated,
    )


# --- retirement (decommissioning) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Retired:
    """The service's answer to a retirement request."""

    box_id: str
    nonce: bytes
    result: str
    server_ms: int


def seal_retire(box_id: str, key: Ed25519PrivateKey, *, created_ms: int) -> tuple[bytes, bytes]:
    """The box's signed request to be revoked, and its nonce."""
    nonce = os.urandom(16)
    body = _pack([_RETIRE, VERSION, check_box_id(box_id), nonce, created_ms])
    return body + key.sign(DOMAIN + body), nonce


def open_retire(
    data: bytes, box_id: str, key_of: Callable[[str], bytes | None]
) -> tuple[bytes, int]:
    """Verify a retirement request from ``box_id`` under its enrolled key: (nonce, created_ms).

    Raises:
        SignatureError: no enrolled key, or the signature does not verify.
        MalformedMessageError, MessageTooLargeError, UnsupportedVersionError.
    """
    if len(data) > MAX_RETIRE_BYTES:
        raise MessageTooLargeError("retire request is over the limit")
    if len(data) <= SIGNATURE_LEN:
        raise MalformedMessageError("retire request too short")
    body, sig = data[:-SIGNATURE_LEN], data[-SIGNATURE_LEN:]
    obj = _unpack(body, _RETIRE, MAX_RETIRE_BYTES)
    if len(obj) != 5 or obj[2] != box_id:
        raise MalformedMessageError("retire request is not for this box")
    raw = key_of(box_id)
    if raw is None:
        raise SignatureError("no enrolled key for this box")
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(sig, DOMAIN + body)
    except (InvalidSignature, ValueError) as err:
        raise SignatureError("retire request does not verify") from err
    return _bin(obj[3], "nonce", 16), _uint(obj[4], "created time")


def seal_retired(retired: Retired, key: Ed25519PrivateKey) -> bytes:
    """The service's signed answer."""
    body = _pack(
        [_RETIRED, VERSION, retired.box_id, retired.nonce, retired.result, retired.server_ms]
    )
    return body + key.sign(DOMAIN + body)


def open_retired(
    data: bytes, service_key: Ed25519PublicKey, *, box_id: str, nonce: bytes
) -> Retired:
    """Verify the answer under the pinned service key.

    Raises:
        SignatureError, MalformedMessageError, UnsupportedVersionError.
    """
    if len(data) <= SIGNATURE_LEN or len(data) > MAX_RETIRE_BYTES:
        raise MalformedMessageError("not a retire answer")
    body, sig = data[:-SIGNATURE_LEN], data[-SIGNATURE_LEN:]
    obj = _unpack(body, _RETIRED, MAX_RETIRE_BYTES)
    try:
        service_key.verify(sig, DOMAIN + body)
    except InvalidSignature as err:
        raise SignatureError("retire answer is not signed by the service") from err
    if len(obj) != 6 or obj[2] != box_id or obj[3] != nonce:
        raise SignatureError("retire answer is for another request")
    return Retired(box_id, nonce, _str(obj[4], "result", 64), _uint(obj[5], "server time"))


def is_retired_message(data: bytes) -> bool:
    """Whether a message on the acknowledgement topic is a retire answer (cheap sniff)."""
    return _RETIRED.encode() in data[:32]


def patients_tuple(values: Sequence[str]) -> tuple[str, ...]:
    """Patient references as sent in a reply: unique, in order."""
    return tuple(dict.fromkeys(values))
