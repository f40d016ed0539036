"""The service's enrolment desk: one-time tokens, certificates, revocation, command counters.

``dho-receiver token BOX`` issues a token (single use, short-lived, bound to the box id and
to the patients it will serve). A receiver run with ``[enrolment]`` in its configuration
answers enrolment requests (:class:`Registrar`): it checks the token, signs the box's CSR
with the device CA, records the box's signing key and patients in the box registry, and
returns its certificate, the CA and the service's public key, authenticated by the token.
The protocol is ``docs/enrolment.md`` (:mod:`dho_protocol.enrolment`).

The desk keeps its own tables (:class:`ServiceDB`) in a SQLite file next to the receiver's
store: tokens (only the MAC key derived from a token is kept, never the token), issued
certificates, revoked boxes, the per-box command counter and the last status report a box
sent. Revoking a box refuses its batches at once (:class:`RevocationFilter`), cancels its
open tokens and, with ``crl_file`` set, writes a CRL for the broker.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import sqlite3
import threading
import time
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dho_protocol import enrolment as wire
from dho_protocol import topics
from dho_protocol.errors import ProtocolError, SignatureError

_LOG = logging.getLogger("receiver.enrolment")

DEFAULT_TOKEN_TTL_S: Final = 4 * 3600
MAX_TOKEN_TTL_S: Final = 7 * 24 * 3600
DEFAULT_CERT_DAYS: Final = 3 * 365
RETIRE_SKEW_MS: Final = 24 * 3600 * 1000
"""A retirement request older than this (by the service's clock) is refused as stale."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS enrol_tokens (
    token_id     TEXT PRIMARY KEY,
    box_id       TEXT NOT NULL,
    mac_key      BLOB NOT NULL,
    patients     TEXT NOT NULL,
    issued_at    INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    used_at      INTEGER,
    cancelled_at INTEGER,
    request      BLOB,
    reply        BLOB
);
CREATE INDEX IF NOT EXISTS enrol_tokens_box ON enrol_tokens (box_id);
CREATE TABLE IF NOT EXISTS box_certificates (
    serial     TEXT PRIMARY KEY,
    box_id     TEXT NOT NULL,
    issued_at  INTEGER NOT NULL,
    not_after  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS box_certificates_box ON box_certificates (box_id);
CREATE TABLE IF NOT EXISTS box_revocations (
    box_id     TEXT PRIMARY KEY,
    revoked_at INTEGER NOT NULL,
    reason     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS box_commands (
    box_id  TEXT PRIMARY KEY,
    counter INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS box_reports (
    box_id      TEXT PRIMARY KEY,
    received_at INTEGER NOT NULL,
    report      TEXT NOT NULL
);
"""


class DeskError(Exception):
    """Something the desk refuses (an unknown box, a bad token lifetime, a missing file)."""


@dataclass(frozen=True, slots=True)
class Token:
    """One enrolment token as the desk keeps it (the token text itself is never stored)."""

    token_id: str
    box_id: str
    mac_key: bytes = field(repr=False)
    patients: tuple[str, ...] = field(repr=False)
    issued_at: int
    expires_at: int
    used_at: int | None = None
    cancelled_at: int | None = None
    request: bytes | None = field(default=None, repr=False)
    reply: bytes | None = field(default=None, repr=False)

    def state(self, now: float) -> str:
        """``open``, ``used``, ``cancelled`` or ``expired``."""
        if self.used_at is not None:
            return "used"
        if self.cancelled_at is not None:
            return "cancelled"
        return "expired" if now > self.expires_at else "open"


class ServiceDB:
    """The desk's tables in a SQLite file (WAL; safe for several receiver processes)."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise DeskError(
                f"no enrolment desk database at {self.path}; give --desk-db its path, or "
                "issue a token first (dho-receiver token BOX)"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    # -- tokens ----------------------------------------------------------------------------

    def add_token(self, tok: Token) -> None:
        """Record a newly issued token."""
        with self._tx() as c:
            c.execute(
                "INSERT INTO enrol_tokens (token_id, box_id, mac_key, patients, issued_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    tok.token_id,
                    tok.box_id,
                    tok.mac_key,
                    json.dumps(list(tok.patients)),
                    tok.issued_at,
                    tok.expires_at,
                ),
            )

    _TOKEN_COLS: Final = (
        "token_id, box_id, mac_key, patients, issued_at, expires_at, used_at, cancelled_at,"  # noqa: S105
        " request, reply"
    )

    @staticmethod
    def _token(row: tuple[Any, ...]) -> Token:
        return Token(
            token_id=row[0],
            box_id=row[1],
            mac_key=bytes(row[2]),
            patients=tuple(json.loads(row[3])),
            issued_at=row[4],
            expires_at=row[5],
            used_at=row[6],
            cancelled_at=row[7],
            request=None if row[8] is None else bytes(row[8]),
            reply=None if row[9] is None else bytes(row[9]),
        )

    def token(self, token_id: str) -> Token | None:
        """A token by its id."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {self._TOKEN_COLS} FROM enrol_tokens WHERE token_id = ?",  # noqa: S608
                (token_id,),
            ).fetchone()
        return None if row is None else self._token(row)

    def tokens(self, box_id: str | None = None) -> list[Token]:
        """Tokens, newest first (of one box)."""
        sql = f"SELECT {self._TOKEN_COLS} FROM enrol_tokens"  # noqa: S608 - constant columns
        args: tuple[str, ...] = ()
        if box_id is not None:
            sql += " WHERE box_id = ?"
            args = (box_id,)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY issued_at DESC", args).fetchall()
        return [self._token(r) for r in rows]

    def use_token(self, token_id: str, *, request: bytes, reply: bytes, now: int) -> bool:
        """Mark a token used by ``request``; False if it was used or cancelled meanwhile."""
        with self._tx() as c:
            done = c.execute(
                "UPDATE enrol_tokens SET used_at = ?, request = ?, reply = ?"
                " WHERE token_id = ? AND used_at IS NULL AND cancelled_at IS NULL",
                (now, request, reply, token_id),
            )
            return done.rowcount == 1

    def cancel_tokens(self, box_id: str, now: int) -> int:
        """Cancel every open token of a box."""
        with self._tx() as c:
            done = c.execute(
                "UPDATE enrol_tokens SET cancelled_at = ?"
                " WHERE box_id = ? AND used_at IS NULL AND cancelled_at IS NULL",
                (now, box_id),
            )
            return int(done.rowcount)

    # -- certificates and revocation -----------------------------------------------------------

    def add_certificate(self, box_id: str, cert: x509.Certificate) -> None:
        """Record an issued certificate (for the CRL)."""
        with self._tx() as c:
            c.execute(
                "INSERT INTO box_certificates (serial, box_id, issued_at, not_after)"
                " VALUES (?, ?, ?, ?)",
                (
                    format(cert.serial_number, "x"),
                    box_id,
                    int(cert.not_valid_before_utc.timestamp()),
                    int(cert.not_valid_after_utc.timestamp()),
                ),
            )

    def certificates(self, box_id: str | None = None) -> list[tuple[str, str, int, int]]:
        """(serial hex, box id, issued_at, not_after) of issued certificates."""
        sql = "SELECT serial, box_id, issued_at, not_after FROM box_certificates"
        args: tuple[str, ...] = ()
        if box_id is not None:
            sql += " WHERE box_id = ?"
            args = (box_id,)
        with self._lock:
            return [tuple(r) for r in self._conn.execute(sql + " ORDER BY issued_at", args)]

    def revoke(self, box_id: str, now: int, reason: str) -> bool:
        """Mark a box revoked (and cancel its open tokens); False if it already was."""
        with self._tx() as c:
            done = c.execute(
                "INSERT OR IGNORE INTO box_revocations (box_id, revoked_at, reason)"
                " VALUES (?, ?, ?)",
                (box_id, now, reason),
            )
            c.execute(
                "UPDATE enrol_tokens SET cancelled_at = ?"
                " WHERE box_id = ? AND used_at IS NULL AND cancelled_at IS NULL",
                (now, box_id),
            )
            return done.rowcount == 1

    def readmit(self, box_id: str) -> None:
        """A new enrolment lifts a revocation (the token was issued after it)."""
        with self._tx() as c:
            c.execute("DELETE FROM box_revocations WHERE box_id = ?", (box_id,))

    def revoked(self, box_id: str) -> tuple[int, str] | None:
        """(revoked_at, reason) of a revoked box."""
        with self._lock:
            row = self._conn.execute(
                "SELECT revoked_at, reason FROM box_revocations WHERE box_id = ?", (box_id,)
            ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def revocations(self) -> dict[str, tuple[int, str]]:
        """Every revoked box."""
        with self._lock:
            rows = self._conn.execute("SELECT box_id, revoked_at, reason FROM box_revocations")
            return {str(r[0]): (int(r[1]), str(r[2])) for r in rows}

    # -- commands and reports ------------------------------------------------------------------

    def next_counter(self, box_id: str) -> int:
        """The next command counter of a box (never reused)."""
        with self._tx() as c:
            row = c.execute(
                "SELECT counter FROM box_commands WHERE box_id = ?", (box_id,)
            ).fetchone()
            counter = (int(row[0]) if row else 0) + 1
            c.execute(
                "INSERT INTO box_commands (box_id, counter) VALUES (?, ?)"
                " ON CONFLICT (box_id) DO UPDATE SET counter = excluded.counter",
                (box_id, counter),
            )
            return counter

    def record_report(self, box_id: str, report: dict[str, Any], received_at: int) -> None:
        """Keep the latest status report of a box (counts and states only)."""
        with self._tx() as c:
            c.execute(
                "INSERT INTO box_reports (box_id, received_at, report) VALUES (?, ?, ?)"
                " ON CONFLICT (box_id) DO UPDATE SET received_at = excluded.received_at,"
                " report = excluded.report",
                (box_id, received_at, json.dumps(report, sort_keys=True)),
            )

    def report(self, box_id: str) -> tuple[int, dict[str, Any]] | None:
        """(received_at, report) of the latest status report."""
        with self._lock:
            row = self._conn.execute(
                "SELECT received_at, report FROM box_reports WHERE box_id = ?", (box_id,)
            ).fetchone()
        return None if row is None else (int(row[0]), json.loads(row[1]))


# --- settings and the device CA -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeskSettings:
    """``[enrolment]`` in ``receiver.toml``.

    Attributes:
        ca_cert, ca_key: the device CA that signs box certificates (the broker trusts it).
        broker_host, broker_port: where enrolled boxes upload (sent to the box).
        db: the desk's SQLite file.
        crl_file: where to write the CRL of revoked boxes for the broker (optional).
    """

    ca_cert: Path
    ca_key: Path
    broker_host: str
    broker_port: int
    db: Path
    cert_days: int = DEFAULT_CERT_DAYS
    token_ttl_s: int = DEFAULT_TOKEN_TTL_S
    crl_file: Path | None = None


def load_settings(config: Path) -> DeskSettings | None:
    """The ``[enrolment]`` table of a receiver configuration, or None when absent.

    Relative paths are taken relative to the file's directory.

    Raises:
        DeskError: the table is incomplete or has a bad value (the message names the key).
    """
    data = tomllib.loads(Path(config).read_text())
    table = data.get("enrolment")
    if table is None:
        return None
    base = Path(config).parent
    broker = data.get("broker", {})

    def path(key: str, default: str | None = None) -> Path:
        raw = table.get(key, default)
        if not isinstance(raw, str) or not raw:
            raise DeskError(f"{config}: [enrolment] {key} must be a file path")
        p = Path(raw)
        return p if p.is_absolute() else base / p

    def integer(key: str, default: int, lo: int, hi: int) -> int:
        raw = table.get(key, default)
        if not isinstance(raw, int) or isinstance(raw, bool) or not lo <= raw <= hi:
            raise DeskError(f"{config}: [enrolment] {key} must be an integer in [{lo}, {hi}]")
        return raw

    host = table.get("broker_host", broker.get("host"))
    if not isinstance(host, str) or not host:
        raise DeskError(f"{config}: [enrolment] broker_host must be the boxes' broker name")
    store = data.get("store", {})
    default_db = str(Path(str(store.get("sqlite", "receiver.db"))).with_name("desk.db"))
    return DeskSettings(
        ca_cert=path("ca_cert"),
        ca_key=path("ca_key"),
        broker_host=host,
        broker_port=integer("broker_port", int(broker.get("port", 8883)), 1, 65535),
        db=path("db", default_db),
        cert_days=integer("cert_days", DEFAULT_CERT_DAYS, 1, 20 * 365),
        token_ttl_s=integer("token_ttl_s", DEFAULT_TOKEN_TTL_S, 60, MAX_TOKEN_TTL_S),
        crl_file=path("crl_file") if "crl_file" in table else None,
    )


CaKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True, slots=True)
class DeviceCA:
    """The CA that signs box certificates."""

    cert: x509.Certificate
    key: CaKey = field(repr=False)

    @classmethod
    def load(cls, cert_file: Path, key_file: Path) -> DeviceCA:
        """Read the CA certificate and key.

        Raises:
            DeskError: unreadable, or not an EC/Ed25519 CA.
        """
        try:
            cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
            key = serialization.load_pem_private_key(Path(key_file).read_bytes(), None)
        except (OSError, ValueError) as exc:
            raise DeskError(f"the device CA ({cert_file}, {key_file}) is unusable: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            raise DeskError("the device CA key must be an EC or Ed25519 key")
        return cls(cert, key)

    @property
    def pem(self) -> bytes:
        """The CA certificate (what boxes pin)."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def _algorithm(self) -> hashes.SHA256 | None:
        return None if isinstance(self.key, ed25519.Ed25519PrivateKey) else hashes.SHA256()

    def issue(
        self, csr: x509.CertificateSigningRequest, box_id: str, days: int
    ) -> x509.Certificate:
        """A client certificate for a box: ``CN = box id``, clientAuth, the CSR's key."""
        now = dt.datetime.now(dt.UTC)
        pub = csr.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey):
            raise DeskError("a box key must be an EC key")
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, box_id)]))
            .issuer_name(self.cert.subject)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, self._algorithm())
        )

    def crl(self, revoked: Iterable[tuple[str, int]]) -> bytes:
        """A CRL (PEM) listing certificate serials (hex) with their revocation times."""
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=30))
        )
        for serial, when in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(serial, 16))
                .revocation_date(dt.datetime.fromtimestamp(when, dt.UTC))
                .build()
            )
        return builder.sign(self.key, self._algorithm()).public_bytes(serialization.Encoding.PEM)


# --- the desk -------------------------------------------------------------------------------------


class Registry(Protocol):
    """What the desk needs of the receiver's box registry."""

    def enrol(self, box_id: str, public_key: bytes, patients: Iterable[str] = ()) -> None: ...
    def box_key(self, box_id: str) -> bytes | None: ...


def _enrol(registry: Any, box_id: str, key: bytes, patients: tuple[str, ...]) -> None:
    """Record the key and bind the patients in the receiver's box registry."""
    registry.enrol(box_id, key, patients)


def issue_token(
    db: ServiceDB, box_id: str, *, patients: Iterable[str] = (), ttl_s: int = DEFAULT_TOKEN_TTL_S
) -> tuple[str, Token]:
    """A new token for ``box_id`` (the text to give the technician, and the record).

    Raises:
        DeskError: the lifetime is out of range.
        ValueError: the box id cannot be used in topics.
    """
    topics.check_box_id(box_id)
    if not 60 <= ttl_s <= MAX_TOKEN_TTL_S:
        raise DeskError(f"a token lives between 1 minute and {MAX_TOKEN_TTL_S // 86400} days")
    text = wire.new_token()
    now = int(time.time())
    tok = Token(
        token_id=wire.token_id(text),
        box_id=box_id,
        mac_key=wire.mac_key(text),
        patients=wire.patients_tuple(list(patients)),
        issued_at=now,
        expires_at=now + ttl_s,
    )
    db.add_token(tok)
    return text, tok


@dataclass
class Registrar:
    """Answers enrolment and retirement requests (runs inside the receiver)."""

    db: ServiceDB
    registry: Any
    ca: DeviceCA
    service_key: Ed25519PrivateKey
    settings: DeskSettings
    counters: dict[str, int] = field(default_factory=dict)

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """What the receiver subscribes to for the desk."""
        return (wire.SHARED_REQUEST_SUBSCRIPTION, wire.SHARED_RETIRE_SUBSCRIPTION)

    def handle(self, topic: str, payload: bytes) -> tuple[str, bytes] | None:
        """Answer one message of the desk's subscriptions: (topic, reply) or None (dropped)."""
        if topic.endswith("/retire"):
            return self.handle_retire(topic, payload)
        return self.handle_request(topic, payload)

    def _reply(
        self,
        req: wire.RequestFrame,
        nonce: bytes,
        result: str,
        key: bytes | None,
        message: str = "",
    ) -> tuple[str, bytes]:
        self._count(result)
        _LOG.warning("enrolment refused (%s) box=%s", result, req.box_id)
        reply = wire.EnrolReply(
            box_id=req.box_id, token_id=req.token_id, nonce=nonce, result=result, message=message
        )
        return wire.reply_topic(req.token_id), wire.seal_reply(reply, key)

    def handle_request(self, topic: str, payload: bytes) -> tuple[str, bytes] | None:
        """An online enrolment request (see the module docstring)."""
        try:
            tid = wire.token_of_request_topic(topic)
            frame = wire.split_request(payload)
        except ProtocolError as exc:
            self._count("malformed")
            _LOG.warning("enrolment request dropped: %s", exc)
            return None
        if frame.token_id != tid or wire.is_offline(frame):
            self._count("malformed")
            _LOG.warning("enrolment request dropped: token id does not match its topic")
            return None
        nonce = frame.fields[6] if isinstance(frame.fields[6], bytes) else b"\0" * 16
        tok = self.db.token(tid)
        if tok is None:
            return self._reply(frame, nonce, "unknown-token", None)
        try:
            req = wire.open_request(frame, tok.mac_key)
        except SignatureError as exc:
            self._count("forged")
            _LOG.warning("enrolment request dropped (forged) box=%s: %s", frame.box_id, exc)
            return None
        except ProtocolError as exc:
            return self._reply(frame, nonce, "bad-request", tok.mac_key, str(exc))
        topic_out = wire.reply_topic(tid)
        if tok.used_at is not None:
            if tok.request == payload and tok.reply is not None:
                # The same request again (the box lost our answer): the same answer.
                return topic_out, tok.reply
            return self._reply(frame, req.nonce, "token-used", tok.mac_key)
        if tok.cancelled_at is not None:
            return self._reply(frame, req.nonce, "box-revoked", tok.mac_key)
        if time.time() > tok.expires_at:
            return self._reply(frame, req.nonce, "token-expired", tok.mac_key)
        if req.box_id != tok.box_id:
            return self._reply(frame, req.nonce, "wrong-box", tok.mac_key)
        try:
            reply = self.enrol(req, tok.patients, tok.mac_key)
        except Exception:  # noqa: BLE001 - the box must hear something; the log has the cause
            _LOG.exception("enrolment failed box=%s", req.box_id)
            return self._reply(frame, req.nonce, "service-error", tok.mac_key)
        if not self.db.use_token(tid, request=payload, reply=reply, now=int(time.time())):
            return self._reply(frame, req.nonce, "token-used", tok.mac_key)
        self._count("enrolled")
        _LOG.info("box enrolled box=%s patients=%d", req.box_id, len(tok.patients))
        return topic_out, reply

    def enrol(self, req: wire.EnrolRequest, patients: tuple[str, ...], key: bytes) -> bytes:
        """Sign the certificate, record the box, and seal the answer with ``key``."""
        cert = self.ca.issue(req.csr, req.box_id, self.settings.cert_days)
        _enrol(self.registry, req.box_id, req.signing_key, patients)
        self.db.add_certificate(req.box_id, cert)
        self.db.readmit(req.box_id)
        answer = wire.EnrolReply(
            box_id=req.box_id,
            token_id=req.token_id,
            nonce=req.nonce,
            result=wire.ENROLLED,
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            ca_pem=self.ca.pem,
            service_key=self.service_key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            ),
            broker_host=self.settings.broker_host,
            broker_port=self.settings.broker_port,
            patients=patients,
        )
        return wire.seal_reply(answer, key)

    def sign_offline(self, request: bytes, token_text: str) -> bytes:
        """Answer an offline request file with the bundle (MACed with the given token).

        Raises:
            DeskError: the token is not open for this box, or the request is unusable.
        """
        try:
            frame = wire.split_request(request)
            if not wire.is_offline(frame):
                raise DeskError("this is an online request, not an exported one")
            req = wire.open_request(frame, wire.offline_key(frame.box_id))
        except ProtocolError as exc:
            raise DeskError(f"the request file cannot be used: {exc}") from exc
        tid = wire.token_id(token_text)
        tok = self.db.token(tid)
        if tok is None or tok.box_id != req.box_id:
            raise DeskError(f"that token was not issued for box {req.box_id}")
        state = tok.state(time.time())
        if state != "open":
            raise DeskError(f"that token is {state}; issue a new one (dho-receiver token)")
        reply = self.enrol(req, tok.patients, tok.mac_key)
        if not self.db.use_token(tid, request=request, reply=reply, now=int(time.time())):
            raise DeskError("that token was used meanwhile")
        self._count("enrolled")
        _LOG.info("box enrolled offline box=%s patients=%d", req.box_id, len(tok.patients))
        return reply

    def handle_retire(self, topic: str, payload: bytes) -> tuple[str, bytes] | None:
        """A box being decommissioned asks to be revoked (signed with its enrolled key)."""
        try:
            box_id = wire.box_of_retire_topic(topic)
            nonce, created_ms = wire.open_retire(payload, box_id, self.registry.box_key)
        except ProtocolError as exc:
            self._count("retire-refused")
            _LOG.warning("retire request dropped: %s", exc)
            return None
        now_ms = time.time_ns() // 1_000_000
        result = "revoked"
        if abs(now_ms - created_ms) > RETIRE_SKEW_MS:
            result = "stale"
        else:
            revoke_box(
                self.db,
                box_id,
                reason="decommissioned by the technician",
                ca=self.ca,
                crl_file=self.settings.crl_file,
            )
            _LOG.info("box retired box=%s", box_id)
        self._count(f"retire-{result}")
        answer = wire.seal_retired(wire.Retired(box_id, nonce, result, now_ms), self.service_key)
        return topics.ack_topic(box_id), answer


def revoke_box(
    db: ServiceDB,
    box_id: str,
    *,
    reason: str,
    ca: DeviceCA | None = None,
    crl_file: Path | None = None,
) -> bool:
    """Revoke a box: its batches are refused from now on, its tokens cancelled, CRL written."""
    fresh = db.revoke(box_id, int(time.time()), reason)
    if ca is not None and crl_file is not None:
        write_crl(db, ca, crl_file)
    return fresh


def write_crl(db: ServiceDB, ca: DeviceCA, crl_file: Path) -> int:
    """Write the CRL of every certificate of a revoked box; returns how many it lists."""
    revoked = db.revocations()
    serials = [
        (serial, revoked[box][0])
        for serial, box, _issued, _after in db.certificates()
        if box in revoked
    ]
    tmp = crl_file.with_name(crl_file.name + ".tmp")
    tmp.write_bytes(ca.crl(serials))
    tmp.replace(crl_file)
    return len(serials)


class RevocationFilter:
    """The receiver's store, but a revoked box has no key (its batches are refused as
    ``unknown-box``). Everything else is passed through."""

    def __init__(self, store: Any, db: ServiceDB) -> None:
        self._store = store
        self._db = db

    def box_key(self, box_id: str) -> bytes | None:
        """The enrolled key, unless the box is revoked."""
        if self._db.revoked(box_id) is not None:
            return None
        key: bytes | None = self._store.box_key(box_id)
        return key

    def box(self, box_id: str) -> Any:
        """The enrolled box (key and patients, what the receiver checks), unless revoked."""
        if self._db.revoked(box_id) is not None:
            return None
        return self._store.box(box_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def fingerprint(raw: bytes) -> str:
    """SHA-256 of a raw public key, hex (what the box shows after enrolment)."""
    return hashlib.sha256(raw).hexdigest()
