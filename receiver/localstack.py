"""A local broker and receiver on loopback, for tests and the demo.

A throw-away PKI made with ``cryptography`` (a test CA, a rogue CA for negative tests, the
broker's certificate, client certificates on demand, the service's Ed25519 key), a real
Mosquitto using the project's ACL file (``receiver/mosquitto/dho.acl``) and subscription check
(the ``dho_subscribe_acl`` plugin, built on first use into ``build/``, see
:mod:`receiver.brokerplugin`) with TLS and client certificates required, and reference
receivers run as child processes (so tests can kill them). Everything listens on 127.0.0.1
only. Nothing here is for production: keys are written world-readable because Mosquitto may
drop to its own user.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

import dho_protocol as protocol
from receiver import brokerplugin

if TYPE_CHECKING:
    from receiver.mqtt import ReceiverConfig

REPO = Path(__file__).resolve().parents[1]
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
ACL_FILE = REPO / "receiver" / "mosquitto" / "dho.acl"
PLUGIN_CACHE = REPO / "build" / "mosquitto"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o644)  # mosquitto may drop to user "mosquitto"; these are throw-away keys


@dataclass
class CA:
    """A certificate authority that issues certificates into ``root``."""

    name: str
    root: Path
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    cert: x509.Certificate | None = None

    def __post_init__(self) -> None:
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(self.name))
            .issuer_name(_name(self.name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    @property
    def ca_file(self) -> Path:
        return self.root / f"{self.name}.pem"

    @property
    def key_file(self) -> Path:
        """The CA's private key as a PEM file (written on first use; for the enrolment desk)."""
        path = self.root / f"{self.name}.key"
        if not path.exists():
            _write_key(path, self.key)
        return path

    def issue(
        self, cn: str, *, server: bool = False, days: int = 30, not_before_days: int = -1
    ) -> tuple[Path, Path]:
        assert self.cert is not None
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + dt.timedelta(days=not_before_days))
            .not_valid_after(now + dt.timedelta(days=days))
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        tag = f"{self.name}-{cn}-{os.urandom(3).hex()}"
        cert_path, key_path = self.root / f"{tag}.crt", self.root / f"{tag}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        return cert_path, key_path


@dataclass
class PKI:
    root: Path
    ca: CA
    rogue: CA
    broker_cert: tuple[Path, Path]
    service_key: Ed25519PrivateKey
    service_key_file: Path
    _clients: dict[str, tuple[Path, Path]] = field(default_factory=dict)

    def client(self, cn: str) -> tuple[Path, Path]:
        if cn not in self._clients:
            self._clients[cn] = self.ca.issue(cn)
        return self._clients[cn]


def make_pki(root: Path) -> PKI:
    """A test CA, a rogue CA, the broker's certificate and a service signing key in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    ca = CA("dho-test-ca", root)
    rogue = CA("rogue-ca", root)
    service = Ed25519PrivateKey.generate()
    service_file = root / "service.key"
    service_file.write_bytes(
        service.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return PKI(root, ca, rogue, ca.issue("localhost", server=True), service, service_file)


def _stop_process(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send ``sig``; after 10 s, SIGKILL. Always reaps the child."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _write_password_file(path: Path) -> bool:
    """The enrolment account's password file (False when mosquitto_passwd is missing)."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        return False
    path.unlink(missing_ok=True)
    subprocess.run(
        [tool, "-c", "-b", str(path), ENROL_USER, ENROL_PASSWORD],
        check=True,
        capture_output=True,
    )
    path.chmod(0o644)
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ENROL_USER = "dho-enrol"
ENROL_PASSWORD = "dho-enrol-test-password"  # noqa: S105 - a throw-away test broker's


class Broker:
    """A real Mosquitto with the project's ACL, TLS and client certificates required.

    A second listener, :attr:`enrol_port`, is the enrolment desk's: TLS without a client
    certificate, the restricted account ``dho-enrol`` (:data:`ENROL_PASSWORD`) only.
    """

    def __init__(self, pki: PKI, root: Path, *, websockets: bool = False) -> None:
        self.pki = pki
        self.root = root
        self.port = free_port()
        self.enrol_port = free_port()
        self.ws_port: int | None = free_port() if websockets else None
        """MQTT over WebSockets with TLS (the box's fallback to port 443, ``docs/care.md``):
        the same CA, certificate and identity rules as :attr:`port`. Mosquitto 2.0.11 binds
        a websockets listener on every address whatever the configuration says."""
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o777)
        (root / "data").mkdir(exist_ok=True)
        (root / "data").chmod(0o777)
        shutil.copy(ACL_FILE, root / "dho.acl")
        (root / "dho.acl").chmod(0o644)
        cert, key = pki.broker_cert
        plugin = brokerplugin.build(PLUGIN_CACHE)
        lines = [
            "per_listener_settings false",
            "allow_anonymous false",
            f"acl_file {root / 'dho.acl'}",
            *brokerplugin.config_lines(plugin, brokerplugin.service_users_of(ACL_FILE)),
            "persistence true",
            f"persistence_location {root / 'data'}/",
            "autosave_interval 1",
            f"log_dest file {root / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            f"listener {self.port} 127.0.0.1",
            f"cafile {pki.ca.ca_file}",
            f"certfile {cert}",
            f"keyfile {key}",
            "tls_version tlsv1.2",
            "require_certificate true",
            "use_identity_as_username true",
            "use_username_as_clientid true",
        ]
        if self.ws_port is not None:
            lines += [
                f"listener {self.ws_port} 127.0.0.1",
                "protocol websockets",
                f"cafile {pki.ca.ca_file}",
                f"certfile {cert}",
                f"keyfile {key}",
                "tls_version tlsv1.2",
                "require_certificate true",
                "use_identity_as_username true",
                "use_username_as_clientid true",
            ]
        passwd = root / "passwd"
        if _write_password_file(passwd):
            lines.insert(lines.index("allow_anonymous false") + 1, f"password_file {passwd}")
            lines += [
                f"listener {self.enrol_port} 127.0.0.1",
                f"cafile {pki.ca.ca_file}",
                f"certfile {cert}",
                f"keyfile {key}",
                "tls_version tlsv1.2",
                "require_certificate false",
            ]
        if os.geteuid() == 0:
            lines.insert(0, "user root")
        (root / "mosquitto.conf").write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.root / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited: {err} {self.log()}")
            with contextlib.suppress(OSError):
                for port in (self.port, self.ws_port):
                    if port is not None:
                        socket.create_connection(("127.0.0.1", port), 0.2).close()
                return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            _stop_process(self.proc, sig)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        path = self.root / "mosquitto.log"
        return path.read_text() if path.exists() else ""

    def client_files(
        self, cn: str, *, cert: tuple[Path, Path] | None = None, ca_file: Path | None = None
    ) -> protocol.TlsFiles:
        """TLS files for a client ``cn`` of this broker (a certificate is issued if needed)."""
        cert_file, key_file = cert or self.pki.client(cn)
        return protocol.TlsFiles(ca_file or self.pki.ca.ca_file, cert_file, key_file)


class ReceiverProcess:
    """``python -m receiver.cli run`` as a child process (so it can be killed)."""

    def __init__(
        self,
        broker: Broker,
        db: Path,
        root: Path,
        n: int = 1,
        postgres_dsn: str | None = None,
        *,
        enrolment: bool = False,
        box_port: int | None = None,
    ) -> None:
        self.broker = broker
        self.db = db
        self.n = n
        self.box_port = box_port
        self.cn = f"dho-receiver-{n}"
        cert, key = broker.pki.client(self.cn)
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / f"receiver-{n}.toml"
        self.log_path = root / f"receiver-{n}.log"
        self.config.write_text(
            "\n".join(
                [
                    "[broker]",
                    'host = "127.0.0.1"',
                    f"port = {broker.port}",
                    f'ca_file = "{broker.pki.ca.ca_file}"',
                    f'cert_file = "{cert}"',
                    f'key_file = "{key}"',
                    f'client_id = "{self.cn}"',
                    "session_expiry_s = 600",
                    "[keys]",
                    f'service_key = "{broker.pki.service_key_file}"',
                    "[store]",
                    f'sqlite = "{db}"',
                    *([f"postgres = {json.dumps(postgres_dsn)}"] if postgres_dsn else []),
                    *(self._enrolment_table(db) if enrolment else []),
                ]
            )
            + "\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def _enrolment_table(self, db: Path) -> list[str]:
        """``[enrolment]``: this receiver answers enrolment requests (docs/enrolment.md); and
        ``[commands]``, so that ``dho-receiver command`` can reach its boxes."""
        ca = self.broker.pki.ca
        return [
            "[enrolment]",
            f'ca_cert = "{ca.ca_file}"',
            f'ca_key = "{ca.key_file}"',
            'broker_host = "127.0.0.1"',
            f"broker_port = {self.box_port or self.broker.port}",
            f'db = "{db.with_name("desk.db")}"',
            f'crl_file = "{self.root / "boxes.crl"}"',
            # dho-receiver command: the service's command issuer (CN dho-service in the ACL)
            "[commands]",
            *(
                f'{k} = "{v}"'
                for k, v in zip(
                    ("cert_file", "key_file"), self.broker.pki.client("dho-service"), strict=True
                )
            ),
        ]

    @property
    def desk_db(self) -> Path:
        """The enrolment desk's database (when started with ``enrolment=True``)."""
        return self.db.with_name("desk.db")

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "receiver.cli", "run", "--config", str(self.config)],
            cwd=REPO,
            stdout=log,
            stderr=log,
        )
        log.close()
        self.wait_for("subscribed", 15)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_for(self, text: str, timeout: float, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(text) >= count:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"receiver exited: {self.log()}")
            time.sleep(0.05)
        raise TimeoutError(f"receiver log never said {text!r}: {self.log()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            _stop_process(self.proc, sig)
        self.proc = None


def receiver_config(broker: Broker, db: Path, n: int = 1, **overrides: Any) -> ReceiverConfig:
    """Settings for an in-process receiver ``dho-receiver-<n>`` on this broker (tests)."""
    from receiver.mqtt import ReceiverConfig

    cert, key = broker.pki.client(f"dho-receiver-{n}")
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": broker.port,
        "ca_file": broker.pki.ca.ca_file,
        "cert_file": cert,
        "key_file": key,
        "service_key_file": broker.pki.service_key_file,
        "sqlite_path": db,
        "client_id": f"dho-receiver-{n}",
        "session_expiry_s": 600,
    }
    settings.update(overrides)
    return ReceiverConfig(**settings)


def enrol(db: Path, box_id: str, key: Ed25519PrivateKey, patients: Iterable[str]) -> None:
    """Enrol a box in the SQLite store ``db`` with its signing key and assigned patients."""
    from receiver.store import SqliteStore

    s = SqliteStore(db)
    try:
        s.enrol(box_id, protocol.public_key_bytes(key), patients)
    finally:
        s.close()
