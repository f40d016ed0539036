"""Fixtures for uplink tests: a test PKI made with `cryptography`, a real Mosquitto with TLS
on a free loopback port (using the project's ACL file), receiver processes, and agents."""

from __future__ import annotations

import asyncio
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from agent.uplink import protocol
from agent.uplink.link import LinkConfig
from tests.uplink.pg_fixtures import pg_dsn, postgres_server  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[2]
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
ACL_FILE = REPO / "receiver" / "mosquitto" / "dho.acl"


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


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    root = tmp_path_factory.mktemp("pki")
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A real Mosquitto with the project's ACL, TLS and client certificates required."""

    def __init__(self, pki: PKI, root: Path) -> None:
        self.pki = pki
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o777)
        (root / "data").mkdir(exist_ok=True)
        (root / "data").chmod(0o777)
        shutil.copy(ACL_FILE, root / "dho.acl")
        (root / "dho.acl").chmod(0o644)
        cert, key = pki.broker_cert
        lines = [
            "per_listener_settings false",
            "allow_anonymous false",
            f"acl_file {root / 'dho.acl'}",
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
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        path = self.root / "mosquitto.log"
        return path.read_text() if path.exists() else ""

    def link_config(
        self, cn: str, *, cert: tuple[Path, Path] | None = None, ca_file: Path | None = None
    ) -> LinkConfig:
        cert_file, key_file = cert or self.pki.client(cn)
        return LinkConfig(
            host="127.0.0.1",
            port=self.port,
            box_id=cn,
            ca_file=ca_file or self.pki.ca.ca_file,
            cert_file=cert_file,
            key_file=key_file,
            keepalive_s=5,
            connect_timeout_s=5,
            session_expiry_s=600,
            stable_after_s=2,
        )


@pytest.fixture
def broker(pki: PKI, tmp_path: Path) -> Iterator[Broker]:
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (make test installs it when run as root)")
    b = Broker(pki, tmp_path / "broker")
    b.start()
    yield b
    b.stop()


class ReceiverProcess:
    """``python -m receiver.cli run`` as a child process (so it can be killed)."""

    def __init__(
        self, broker: Broker, db: Path, root: Path, n: int = 1, postgres_dsn: str | None = None
    ) -> None:
        self.broker = broker
        self.db = db
        self.n = n
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
                ]
            )
            + "\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

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
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def receivers(broker: Broker, tmp_path: Path) -> Iterator[Callable[..., ReceiverProcess]]:
    started: list[ReceiverProcess] = []

    def make(
        n: int = 1, *, db: Path | None = None, start: bool = True, postgres_dsn: str | None = None
    ) -> ReceiverProcess:
        r = ReceiverProcess(
            broker, db or tmp_path / "receiver.db", tmp_path / "receivers", n, postgres_dsn
        )
        started.append(r)
        if start:
            r.start()
        return r

    yield make
    for r in started:
        r.stop(signal.SIGKILL)


def enrol(db: Path, box_id: str, key: Ed25519PrivateKey) -> None:
    from receiver.store import SqliteStore

    s = SqliteStore(db)
    try:
        s.enrol(box_id, protocol.public_key_bytes(key))
    finally:
        s.close()


async def wait_until(pred: Callable[[], object], limit_s: float, what: str = "condition") -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


async def open_agent(
    broker: Broker,
    root: Path,
    box_id: str,
    signing_key: Ed25519PrivateKey,
    **overrides: object,
):
    from agent.buffer import AsyncBuffer, FileKeySource
    from agent.uplink.sender import Uplink, UplinkConfig

    await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
    buf = await AsyncBuffer.open(root / "buffer.db", FileKeySource(root / "buffer.kek"))
    link = overrides.pop("link", None) or broker.link_config(box_id)
    settings: dict[str, object] = {
        "ack_timeout_s": 3.0,
        "ack_timeout_cap_s": 6.0,
        "idle_poll_s": 0.2,
        "backoff_base_s": 0.2,
        "backoff_cap_s": 1.0,
        "batch_start": 10,
        "batch_max": 50,
    }
    settings.update(overrides)
    cfg = UplinkConfig(
        link=link,  # type: ignore[arg-type]
        signing_key=signing_key,
        service_key=broker.pki.service_key.public_key(),
        state_dir=root,
        **settings,  # type: ignore[arg-type]
    )
    return Uplink(cfg, buf), buf


class RawClient:
    """A plain paho client with a test certificate, for poking at the broker directly."""

    def __init__(
        self,
        broker: Broker,
        cn: str,
        *,
        cert: tuple[Path, Path] | None = None,
        subscribe: tuple[str, ...] = (),
        timeout: float = 5.0,
    ) -> None:
        import queue
        import ssl
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connected = threading.Event()
        self.refused: object = None
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=cn, protocol=mqtt.MQTTv5
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(broker.pki.ca.ca_file))
        if cert is not None or cn:
            cert_file, key_file = cert or broker.pki.client(cn)
            ctx.load_cert_chain(str(cert_file), str(key_file))
        self.client.tls_set_context(ctx)

        def on_connect(client, userdata, flags, reason, props):
            if reason.is_failure:
                self.refused = reason
                return
            for t in subscribe:
                client.subscribe(t, qos=1)
            self.connected.set()

        def on_subscribe(client, userdata, mid, reasons, props):
            self.suback[mid] = [r.value for r in reasons]
            self.subscribed.set()

        def on_publish(client, userdata, mid, reason, props):
            self.puback[mid] = reason.value

        self.subscribed = threading.Event()
        self.suback: dict[int, list[int]] = {}
        self.puback: dict[int, int] = {}
        self.client.on_publish = on_publish
        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.client.connect("127.0.0.1", broker.port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            self.close()
            raise ConnectionError(f"raw client {cn!r} could not connect ({self.refused})")
        if subscribe and not self.subscribed.wait(5):
            raise ConnectionError("subscription not acknowledged")

    def publish(self, topic: str, payload: bytes) -> int | None:
        """Publish with QoS 1; returns the PUBACK reason code (0 = accepted)."""
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(5)
        deadline = time.monotonic() + 2
        while info.mid not in self.puback and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.puback.get(info.mid) if info.mid is not None else None

    def subscribe(self, topic: str) -> list[int]:
        """Subscribe with QoS 1; returns the SUBACK reason codes (>= 0x80 = refused)."""
        _, mid = self.client.subscribe(topic, qos=1)
        deadline = time.monotonic() + 5
        while mid not in self.suback and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.suback.get(mid, []) if mid is not None else []

    def get(self, timeout: float = 5.0) -> tuple[str, bytes]:
        return self.messages.get(timeout=timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets()  # a refused connection leaves its socket open


class FlakyProxy:
    """A TCP proxy on loopback that can cut every connection through it (a flapping link)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.cuts = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()

    def cut(self) -> None:
        """Drop every connection now (no FIN from the far end: like a radio link lost)."""
        self.cuts += 1
        for w in list(self._writers):
            transport = w.transport
            transport.abort()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
