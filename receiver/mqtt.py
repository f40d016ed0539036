"""The receiver's MQTT side: a shared subscription, manual PUBACK after the durable commit.

The receiver is a plain threaded program (no asyncio): paho's network thread calls
:meth:`ReceiverService._on_message`, which runs :meth:`receiver.core.Receiver.handle`
(verify, commit), publishes the signed acknowledgement, and only then sends the PUBACK for
the inbound batch (``manual_ack=True``). A receiver that dies before its commit leaves the
batch un-PUBACKed, so the broker delivers it again (to this or another receiver of the
group); one that dies after its commit but before the acknowledgement went out sees the batch
again and answers ``DUPLICATE``.

The session is persistent (fixed client id, ``clean_start=False``, session expiry), so
batches that arrive while a receiver restarts wait at the broker.
"""

from __future__ import annotations

import logging
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

import dho_protocol as protocol
from receiver.core import REPLAY_WINDOW, Receiver
from receiver.pg import PostgresStore
from receiver.store import SqliteStore, Store

_LOG = logging.getLogger("receiver")


class Desk(Protocol):
    """The enrolment desk's side of the subscription (:class:`receiver.enrolment.Registrar`)."""

    @property
    def subscriptions(self) -> tuple[str, ...]: ...
    def handle(self, topic: str, payload: bytes) -> tuple[str, bytes] | None: ...


@dataclass(frozen=True, slots=True)
class ReceiverConfig:
    """Receiver settings, usually read from a TOML file (see ``docs/receiver.md``)."""

    host: str
    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    service_key_file: Path
    sqlite_path: Path
    client_id: str = "dho-receiver-1"  # must equal the certificate CN
    postgres_dsn: str | None = None
    session_expiry_s: int = 24 * 3600
    max_batch_bytes: int = protocol.MAX_BATCH_BYTES
    replay_window: int = REPLAY_WINDOW
    subscription: str = protocol.SHARED_BATCH_SUBSCRIPTION
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> ReceiverConfig:
        """Read ``[broker]``, ``[keys]``, ``[store]`` and ``[limits]`` from a TOML file.

        Relative paths are taken relative to the file's directory.
        """
        data = tomllib.loads(Path(path).read_text())
        base = Path(path).parent

        def p(section: str, key: str) -> Path:
            value = Path(str(data[section][key]))
            return value if value.is_absolute() else base / value

        broker = data["broker"]
        limits = data.get("limits", {})
        store = data.get("store", {})
        return cls(
            host=str(broker.get("host", "127.0.0.1")),
            port=int(broker.get("port", 8883)),
            ca_file=p("broker", "ca_file"),
            cert_file=p("broker", "cert_file"),
            key_file=p("broker", "key_file"),
            client_id=str(broker.get("client_id", "dho-receiver-1")),
            session_expiry_s=int(broker.get("session_expiry_s", 24 * 3600)),
            service_key_file=p("keys", "service_key"),
            sqlite_path=p("store", "sqlite") if "sqlite" in store else base / "receiver.db",
            postgres_dsn=store.get("postgres"),
            max_batch_bytes=int(limits.get("max_batch_bytes", protocol.MAX_BATCH_BYTES)),
            replay_window=int(limits.get("replay_window", REPLAY_WINDOW)),
        )


def load_service_key(path: Path) -> Ed25519PrivateKey:
    """The service's Ed25519 signing key from a PEM (PKCS#8) file."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def open_store(cfg: ReceiverConfig) -> Store:
    """The configured store: PostgreSQL when a DSN is set, else SQLite."""
    if cfg.postgres_dsn:
        store: Store = PostgresStore(cfg.postgres_dsn)
        return store
    return SqliteStore(cfg.sqlite_path)


class ReceiverService:
    """One receiver process: MQTT session plus :class:`~receiver.core.Receiver`."""

    def __init__(self, cfg: ReceiverConfig, receiver: Receiver, desk: Desk | None = None) -> None:
        self.cfg = cfg
        self.receiver = receiver
        self.desk = desk
        self.connected = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        self.client.tls_set_context(
            protocol.client_context(protocol.TlsFiles(cfg.ca_file, cfg.cert_file, cfg.key_file))
        )
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            _LOG.error("broker refused the receiver: %s", reason.getName())
            return
        client.subscribe(self.cfg.subscription, qos=1)
        for topic in self.desk.subscriptions if self.desk is not None else ():
            client.subscribe(topic, qos=1)
        _LOG.info(
            "receiver %s connected, subscribed to %s", self.cfg.client_id, self.cfg.subscription
        )
        self.connected.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
        _LOG.warning("receiver %s disconnected: %s", self.cfg.client_id, reason.getName())

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if self.desk is not None and not msg.topic.endswith("/batch"):
            self._on_desk_message(client, msg)
            return
        try:
            outcome = self.receiver.handle(msg.topic, bytes(msg.payload))
        except Exception:  # noqa: BLE001 - any failure: no PUBACK, the broker resends
            _LOG.exception("batch processing failed; left for redelivery")
            return
        if outcome.ack is not None and outcome.ack_topic is not None:
            client.publish(outcome.ack_topic, outcome.ack, qos=1)
        client.ack(msg.mid, msg.qos)

    def _on_desk_message(self, client: mqtt.Client, msg: mqtt.MQTTMessage) -> None:
        """Enrolment and retirement requests (receiver/enrolment.py); answered, then PUBACKed."""
        assert self.desk is not None
        try:
            answer = self.desk.handle(msg.topic, bytes(msg.payload))
        except Exception:  # noqa: BLE001 - a bad request must not stop the receiver
            _LOG.exception("enrolment desk failed on a message; dropped")
            answer = None
        if answer is not None:
            client.publish(answer[0], answer[1], qos=1)
        client.ack(msg.mid, msg.qos)

    def start(self) -> None:
        """Connect (persistent session) and start the network thread."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        self.client.connect_async(
            self.cfg.host, self.cfg.port, keepalive=30, clean_start=False, properties=props
        )
        self.client.loop_start()

    def stop(self) -> None:
        """Disconnect cleanly and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()

    def run_until(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set."""
        self.start()
        try:
            stop.wait()
        finally:
            self.stop()
