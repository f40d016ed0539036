"""The box's identity, generated on the box: keys never leave it.

``dho-provision init`` makes

* a TLS client key (ECDSA P-256, what the broker's CA signs) and its certificate signing
  request with ``CN = box id``,
* an Ed25519 key that signs every batch (its public half is what the service records),

and ``identity.json`` with the box id and the public fingerprints. Enrolment adds the signed
certificate, the service's CA and the service's public key (pinned), and records where the
box uploads. Private keys are written 0640 root:dho-gateway (the agent reads them, nobody
else), never printed, never sent: only the CSR and the public key go to the service.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from provisioning.fsutil import atomic_write, owner_ids, wipe
from provisioning.layout import AGENT_USER, IDENTITY_FILES, BoxLayout
from provisioning.ui import ExitCode, ProvisionError

BOX_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""Box ids: letters, digits, ``.``, ``_`` and ``-`` (no MQTT wildcards or separators)."""


def check_box_id(box_id: str) -> str:
    """Return ``box_id`` if it is a valid box id, else raise a usage error."""
    if not BOX_ID.match(box_id):
        raise ProvisionError(
            f"{box_id!r} is not a box id: use 1 to 64 letters, digits, '.', '_' or '-'",
            code=ExitCode.USAGE,
        )
    return box_id


@dataclass(frozen=True, slots=True)
class Identity:
    """``identity.json``: who this box is (no secrets)."""

    box_id: str
    created: str
    signing_public_key: str
    """The Ed25519 public key, 64 hex digits (what the service records)."""
    tls_key_sha256: str
    """SHA-256 of the TLS public key (SubjectPublicKeyInfo DER), hex."""
    enrolled_at: str | None = None
    broker_host: str | None = None
    broker_port: int | None = None
    service_key_sha256: str | None = None
    patients: tuple[str, ...] = field(default=(), repr=False)
    """Patient references the service bound to this box at enrolment (may be empty)."""

    @property
    def enrolled(self) -> bool:
        """True once the service signed the certificate."""
        return self.enrolled_at is not None

    def public(self) -> dict[str, Any]:
        """The identity for ``--json`` output and the status (no patient references)."""
        out = asdict(self)
        out.pop("patients")
        out["patients_bound"] = len(self.patients)
        return out


def fingerprint(public_der: bytes) -> str:
    """SHA-256 of a DER public key, hex."""
    return hashlib.sha256(public_der).hexdigest()


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_identity(layout: BoxLayout) -> Identity | None:
    """The box's identity, or None when ``init`` has not run here."""
    try:
        raw = json.loads(layout.identity_file.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ProvisionError(
            f"{layout.identity_file} is unreadable: {exc}",
            next_step="dho-provision init --replace makes a new identity (then enrol again)",
            code=ExitCode.NOT_READY,
        ) from exc
    try:
        raw["patients"] = tuple(raw.get("patients", ()))
        return Identity(**raw)
    except TypeError as exc:
        raise ProvisionError(
            f"{layout.identity_file} is not a box identity: {exc}", code=ExitCode.NOT_READY
        ) from exc


def require_identity(layout: BoxLayout, *, enrolled: bool = False) -> Identity:
    """The identity, or an error saying which step comes first."""
    ident = load_identity(layout)
    if ident is None:
        raise ProvisionError(
            f"no box identity under {layout.root} (nothing in {layout.config_dir})",
            next_step="dho-provision init",
            code=ExitCode.NOT_READY,
        )
    if enrolled and not ident.enrolled:
        raise ProvisionError(
            f"box {ident.box_id} is not enrolled yet",
            next_step="dho-provision enroll TOKEN",
            code=ExitCode.NOT_READY,
        )
    return ident


def save_identity(layout: BoxLayout, ident: Identity) -> None:
    """Write ``identity.json`` (0640 root:dho-gateway)."""
    data = asdict(ident)
    data["patients"] = list(ident.patients)
    uid, gid = owner_ids(layout, "root", AGENT_USER)
    atomic_write(
        layout.identity_file,
        (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(),
        mode=0o640,
        uid=uid,
        gid=gid,
    )


def write_identity_file(layout: BoxLayout, name: str, data: bytes) -> None:
    """Write one of :data:`IDENTITY_FILES`; private keys 0640, the rest 0644."""
    secret = name in ("tls_key", "signing_key")
    uid, gid = owner_ids(layout, "root", AGENT_USER)
    atomic_write(
        layout.host(IDENTITY_FILES[name]),
        data,
        mode=0o640 if secret else 0o644,
        uid=uid,
        gid=gid if secret else (0 if uid == 0 else -1),
    )


def read_identity_file(layout: BoxLayout, name: str) -> bytes:
    """The bytes of one identity file, or an error naming the step that makes it."""
    path = layout.host(IDENTITY_FILES[name])
    try:
        return path.read_bytes()
    except FileNotFoundError:
        enrolment = name in ("cert", "ca", "service_key")
        raise ProvisionError(
            f"{IDENTITY_FILES[name]} is missing",
            next_step="dho-provision enroll TOKEN" if enrolment else "dho-provision init",
            code=ExitCode.NOT_READY,
        ) from None


def default_box_id(layout: BoxLayout) -> str | None:
    """A stable id derived from ``/etc/machine-id`` (which must not be shown as such)."""
    try:
        machine = layout.host("/etc/machine-id").read_text().strip()
    except OSError:
        return None
    if len(machine) < 16:
        return None
    tag = hmac.new(machine.encode(), b"dho-gateway box id", hashlib.sha256).hexdigest()
    return f"box-{tag[:12]}"


def _csr(box_id: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, box_id)]))
        .sign(key, hashes.SHA256())
    )


def create_identity(layout: BoxLayout, box_id: str) -> Identity:
    """Generate the keys and the CSR and write them with ``identity.json``.

    Any earlier enrolment (certificate, CA, service key) is removed: it belonged to other
    keys.
    """
    check_box_id(box_id)
    tls = ec.generate_private_key(ec.SECP256R1())
    signing = Ed25519PrivateKey.generate()
    pkcs8 = serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    pem = serialization.Encoding.PEM
    for name in ("cert", "ca", "service_key"):
        wipe(layout.host(IDENTITY_FILES[name]))
    write_identity_file(layout, "tls_key", tls.private_bytes(pem, pkcs8, none))
    write_identity_file(layout, "signing_key", signing.private_bytes(pem, pkcs8, none))
    write_identity_file(layout, "csr", _csr(box_id, tls).public_bytes(pem))
    raw_pub = signing.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    ident = Identity(
        box_id=box_id,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        signing_public_key=raw_pub.hex(),
        tls_key_sha256=fingerprint(_spki(tls.public_key())),
    )
    save_identity(layout, ident)
    return ident


def load_signing_key(layout: BoxLayout) -> Ed25519PrivateKey:
    """The box's Ed25519 signing key."""
    key = serialization.load_pem_private_key(
        read_identity_file(layout, "signing_key"), password=None
    )
    if not isinstance(key, Ed25519PrivateKey):
        raise ProvisionError(
            "the box signing key is not an Ed25519 key",
            next_step="dho-provision init --replace",
            code=ExitCode.NOT_READY,
        )
    return key


def load_tls_key(layout: BoxLayout) -> ec.EllipticCurvePrivateKey:
    """The box's TLS client key."""
    key = serialization.load_pem_private_key(read_identity_file(layout, "tls_key"), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ProvisionError(
            "the box TLS key is not an EC key",
            next_step="dho-provision init --replace",
            code=ExitCode.NOT_READY,
        )
    return key


def load_csr(layout: BoxLayout) -> x509.CertificateSigningRequest:
    """The box's certificate signing request."""
    return x509.load_pem_x509_csr(read_identity_file(layout, "csr"))


def with_enrolment(
    ident: Identity,
    *,
    broker_host: str,
    broker_port: int,
    service_key_raw: bytes,
    patients: tuple[str, ...],
) -> Identity:
    """The identity after a successful enrolment."""
    return replace(
        ident,
        enrolled_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        broker_host=broker_host,
        broker_port=broker_port,
        service_key_sha256=hashlib.sha256(service_key_raw).hexdigest(),
        patients=patients,
    )


def tls_key_matches(cert: x509.Certificate, ident: Identity) -> bool:
    """Whether a certificate is for this box's TLS key."""
    pub = cert.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        return False
    return fingerprint(_spki(pub)) == ident.tls_key_sha256


def certificate_cn(cert: x509.Certificate) -> str | None:
    """The certificate's common name."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None
