"""``dho-provision enroll``: the box side of enrolment (``docs/enrolment.md``).

Online: the box connects to the service's enrolment listener with the broker's restricted
account (it can publish an enrolment request and read the answer to its own token, nothing
else), sends its CSR and signing key, authenticated by the one-time token, and installs what
comes back: its certificate, the CA and the service key it pins, and the ``[uplink]`` table.

Offline: ``--export-request FILE`` writes the same request to a file for the service's
operator (``dho-receiver enrol-offline``), and ``enroll TOKEN --import FILE`` installs the
bundle they return; the token authenticates the bundle.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dho_protocol import enrolment as wire
from dho_protocol.errors import ProtocolError
from provisioning import boxconfig
from provisioning.fsutil import atomic_write, owner_ids, wipe
from provisioning.identity import (
    Identity,
    certificate_cn,
    load_csr,
    load_signing_key,
    require_identity,
    save_identity,
    tls_key_matches,
    with_enrolment,
    write_identity_file,
)
from provisioning.layout import AGENT_USER, CONFIG_DIR, BoxLayout
from provisioning.mqttclient import Client, Endpoint
from provisioning.ui import ExitCode, ProvisionError

EARLIEST_PLAUSIBLE: Final = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
REQUEST_ARMOUR: Final = "DHO ENROLMENT REQUEST"
BUNDLE_ARMOUR: Final = "DHO ENROLMENT BUNDLE"
PENDING_FILE: Final = CONFIG_DIR / "enrol-request.json"


@dataclass(frozen=True, slots=True)
class Desk:
    """Where the service's enrolment desk is (``enrolment.toml``, or options)."""

    host: str
    port: int
    ca_file: Path
    username: str
    password: str


def load_desk(
    layout: BoxLayout,
    *,
    host: str | None = None,
    port: int | None = None,
    ca_file: Path | None = None,
    username: str | None = None,
    password: str | None = None,
) -> Desk:
    """The enrolment desk: ``enrolment.toml`` (written by install), overridden by options."""
    data: dict[str, Any] = {}
    try:
        data = tomllib.loads(layout.enrolment_file.read_text())
    except FileNotFoundError:
        pass
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProvisionError(
            f"{layout.enrolment_file}: {exc}",
            next_step="dho-provision install --enrol-host ... writes it again",
            code=ExitCode.NOT_READY,
        ) from exc
    chosen_host = host or data.get("host")
    chosen_ca = ca_file or (layout.host(data["ca_file"]) if "ca_file" in data else None)
    if not chosen_host or chosen_ca is None:
        raise ProvisionError(
            "the service's enrolment address is not set on this box",
            next_step="dho-provision enroll TOKEN --host HOST --ca FILE, or set them once with "
            "dho-provision install --enrol-host HOST --enrol-ca FILE",
            code=ExitCode.USAGE,
        )
    return Desk(
        host=str(chosen_host),
        port=int(port or data.get("port", 8884)),
        ca_file=Path(chosen_ca),
        username=str(username or data.get("username", "dho-enrol")),
        password=str(password if password is not None else data.get("password", "")),
    )


def write_desk(layout: BoxLayout, desk: Desk, ca_pem: bytes) -> None:
    """Record the desk for later ``enroll`` runs (``install --enrol-host``)."""
    uid, gid = owner_ids(layout, "root", AGENT_USER)
    ca_runtime = CONFIG_DIR / "enrol-ca.pem"
    atomic_write(layout.host(ca_runtime), ca_pem, mode=0o644, uid=uid, gid=0 if uid == 0 else -1)
    text = (
        "# The service's enrolment desk (written by dho-provision install).\n"
        f"host = {json.dumps(desk.host)}\n"
        f"port = {desk.port}\n"
        f'ca_file = "{ca_runtime}"\n'
        f"username = {json.dumps(desk.username)}\n"
        f"password = {json.dumps(desk.password)}\n"
    )
    atomic_write(layout.enrolment_file, text.encode(), mode=0o640, uid=uid, gid=gid)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def check_clock(now: dt.datetime | None = None) -> None:
    """TLS cannot work with a clock in the past: say so before trying."""
    now = now or _now()
    if now < EARLIEST_PLAUSIBLE:
        raise ProvisionError(
            f"the clock says {now:%Y-%m-%d %H:%M} UTC, so no certificate can be checked",
            next_step="set the clock (connect to the network and wait for "
            "timedatectl to show 'System clock synchronized: yes', or timedatectl set-time)",
            code=ExitCode.CLOCK,
        )


def _refused(reply: wire.EnrolReply) -> ProvisionError:
    meaning = wire.REFUSALS.get(reply.result, reply.result)
    extra = f" ({reply.message})" if reply.message and reply.message not in meaning else ""
    if not reply.authenticated and reply.result != "unknown-token":
        meaning = f"the service refused: {meaning} (unauthenticated answer)"
    return ProvisionError(
        f"enrolment refused: {meaning}{extra}",
        next_step="check the token; ask the service for a new one for this box id"
        if reply.result != "service-error"
        else "try again in a few minutes",
        code=ExitCode.REFUSED if reply.result != "service-error" else ExitCode.FAILED,
    )


def _install(layout: BoxLayout, ident: Identity, reply: wire.EnrolReply) -> Identity:
    """Check the answer against our keys, then write certificate, CA, service key, config."""
    try:
        certs = x509.load_pem_x509_certificates(reply.cert_pem)
        cas = x509.load_pem_x509_certificates(reply.ca_pem)
        service_key = Ed25519PublicKey.from_public_bytes(reply.service_key)
    except ValueError as exc:
        raise ProvisionError(
            f"the service's answer holds an unusable certificate or key: {exc}",
            next_step="tell the service; nothing was installed",
        ) from exc
    cert = certs[0]
    if certificate_cn(cert) != ident.box_id or not tls_key_matches(cert, ident):
        raise ProvisionError(
            "the certificate from the service is not for this box's key; nothing was installed",
            next_step="tell the service (it may have answered another request)",
        )
    if not any(_issued_by(cert, ca) for ca in cas):
        raise ProvisionError(
            "the certificate from the service is not signed by the CA it sent",
            next_step="tell the service; nothing was installed",
        )
    if not reply.broker_host or not reply.broker_port:
        raise ProvisionError("the service did not say where to upload; nothing was installed")
    pem = serialization.Encoding.PEM
    write_identity_file(layout, "cert", b"".join(c.public_bytes(pem) for c in certs))
    write_identity_file(layout, "ca", b"".join(c.public_bytes(pem) for c in cas))
    write_identity_file(
        layout,
        "service_key",
        service_key.public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo),
    )
    doc = boxconfig.read(layout)
    boxconfig.set_uplink(doc, host=reply.broker_host, port=reply.broker_port, box_id=ident.box_id)
    boxconfig.write(layout, doc)
    done = with_enrolment(
        ident,
        broker_host=reply.broker_host,
        broker_port=reply.broker_port,
        service_key_raw=reply.service_key,
        patients=wire.patients_tuple(reply.patients),
    )
    save_identity(layout, done)
    wipe(layout.host(PENDING_FILE))
    return done


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception):  # noqa: BLE001 - InvalidSignature and friends
        return False
    return True


def _token(text: str) -> str:
    try:
        return wire.normalise_token(text)
    except wire.TokenFormatError as exc:
        raise ProvisionError(str(exc), code=ExitCode.USAGE) from None


def enroll_online(
    layout: BoxLayout, token_text: str, desk: Desk, *, timeout: float = 30.0
) -> Identity:
    """Enrol with the service now (see the module docstring)."""
    ident = require_identity(layout)
    token = _token(token_text)
    check_clock()
    request, nonce = wire.seal_request(
        ident.box_id,
        token,
        load_csr(layout),
        load_signing_key(layout),
        created_ms=time.time_ns() // 1_000_000,
    )
    tid = wire.token_id(token)
    ep = Endpoint(
        host=desk.host,
        port=desk.port,
        ca_file=str(desk.ca_file),
        client_id=tid,
        username=desk.username,
        password=desk.password,
        what="the DHO enrolment service",
    )
    with Client(ep, timeout=min(timeout, 15.0)) as client:
        client.subscribe(wire.reply_topic(tid))
        client.publish(wire.request_topic(tid), request)
        answer = client.wait_for(wire.reply_topic(tid), timeout)
    if answer is None:
        raise ProvisionError(
            f"the enrolment service did not answer in {timeout:.0f} s",
            next_step="try again; if it persists, the service's receiver is not running "
            "with enrolment enabled",
            code=ExitCode.UNREACHABLE,
        )
    try:
        reply = wire.open_reply(answer, wire.mac_key(token), box_id=ident.box_id, nonce=nonce)
    except ProtocolError as exc:
        raise ProvisionError(
            f"the enrolment answer cannot be used: {exc}",
            next_step="try again; nothing was installed",
        ) from exc
    if not reply.enrolled:
        raise _refused(reply)
    return _install(layout, ident, reply)


def _armour(kind: str, data: bytes) -> str:
    body = base64.encodebytes(data).decode()
    return f"-----BEGIN {kind}-----\n{body}-----END {kind}-----\n"


def _unarmour(kind: str, text: str) -> bytes:
    begin, end = f"-----BEGIN {kind}-----", f"-----END {kind}-----"
    if begin not in text or end not in text:
        raise ProvisionError(
            f"this file is not a {kind.lower()}",
            next_step="use the file the service's operator made with dho-receiver enrol-offline",
            code=ExitCode.USAGE,
        )
    inner = text.split(begin, 1)[1].split(end, 1)[0]
    try:
        return base64.b64decode("".join(inner.split()), validate=True)
    except ValueError as exc:
        raise ProvisionError(f"the {kind.lower()} is damaged: {exc}", code=ExitCode.USAGE) from exc


def export_request(layout: BoxLayout, out: Path) -> Identity:
    """Write an offline enrolment request to ``out`` (public data only)."""
    ident = require_identity(layout)
    request, nonce = wire.seal_request(
        ident.box_id,
        None,
        load_csr(layout),
        load_signing_key(layout),
        created_ms=time.time_ns() // 1_000_000,
    )
    out.write_text(_armour(REQUEST_ARMOUR, request))
    uid, gid = owner_ids(layout, "root", AGENT_USER)
    atomic_write(
        layout.host(PENDING_FILE),
        json.dumps({"box_id": ident.box_id, "nonce": nonce.hex()}).encode(),
        mode=0o640,
        uid=uid,
        gid=gid,
    )
    return ident


def import_bundle(layout: BoxLayout, bundle: Path, token_text: str) -> Identity:
    """Install the service's answer to an exported request."""
    ident = require_identity(layout)
    token = _token(token_text)
    try:
        pending = json.loads(layout.host(PENDING_FILE).read_text())
        nonce = bytes.fromhex(pending["nonce"])
    except (OSError, ValueError, KeyError):
        raise ProvisionError(
            "this box has no exported enrolment request waiting for an answer",
            next_step="dho-provision enroll --export-request FILE first",
            code=ExitCode.NOT_READY,
        ) from None
    try:
        data = _unarmour(BUNDLE_ARMOUR, bundle.read_text())
    except UnicodeDecodeError:
        raise ProvisionError("this file is not an enrolment bundle", code=ExitCode.USAGE) from None
    try:
        reply = wire.open_reply(data, wire.mac_key(token), box_id=ident.box_id, nonce=nonce)
    except ProtocolError as exc:
        raise ProvisionError(
            f"the bundle cannot be used: {exc}",
            next_step="check the token and that the bundle answers this box's latest request",
            code=ExitCode.REFUSED,
        ) from exc
    if not reply.authenticated:
        raise ProvisionError(
            "the bundle is not authenticated by this token",
            next_step="use the token the operator gave with this bundle",
            code=ExitCode.REFUSED,
        )
    if not reply.enrolled:
        raise _refused(reply)
    return _install(layout, ident, reply)


def bundle_text(data: bytes) -> str:
    """An answer as a bundle file's text (for the service side)."""
    return _armour(BUNDLE_ARMOUR, data)


def request_bytes(text: str) -> bytes:
    """An exported request file's bytes (for the service side)."""
    return _unarmour(REQUEST_ARMOUR, text)
