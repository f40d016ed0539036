"""The receiver's MQTT side: a shared subscription, manual PUBACK after the durable commit.

The receiver is a plain threaded program (no asyncio). paho's network thread only queues
each inbound batch (:meth:`ReceiverService._on_message`); one worker thread runs
:meth:`receiver.core.Receiver.handle` (verify, commit), publishes the signed acknowledgement
and only then sends the PUBACK for the inbound batch (``manual_ack=True``). The network thread
never waits on the database, so keep-alives go out while the store is slow or down.

**No message can stall the subscription.** Every message ends in a PUBACK after one of:

* a decision of :meth:`~receiver.core.Receiver.handle` (stored, duplicate, or a logged
  refusal, answered when the batch is signed);
* a failure that is not the store being unavailable (a bug, a value the database rejects):
  retried ``failure_attempts`` times, then refused with ``REJECTED_FAILED`` and kept for
  audit (:meth:`~receiver.core.Receiver.refuse_failed`);
* the store being unavailable (:class:`~receiver.errors.StoreUnavailableError`: PostgreSQL
  down, SQLite locked or its disk full): the worker holds the message and tries again with
  growing waits (``store_backoff_s`` doubling up to ``store_backoff_cap_s``) for as long as it
  takes, logging each wait, and resumes by itself when the store is back. Nothing is PUBACKed
  meanwhile, so nothing is lost; the broker holds the rest (at most ``in_flight`` messages
  are delivered to this receiver without a PUBACK: MQTT v5 ``ReceiveMaximum``).

A PUBACK goes only on the connection that delivered the message: after a reconnect the
broker delivers it again (same session) and the receiver answers ``DUPLICATE``; copies still
queued from a connection that is gone are dropped unhandled, so the queue stays within
``in_flight`` per connection. A receiver
that dies before its commit leaves the batch un-PUBACKed, so the broker delivers it again (to
this or another receiver of the group).

The session is persistent (fixed client id, ``clean_start=False``, session expiry), so
batches that arrive while a receiver restarts wait at the broker.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import ssl
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

import dho_protocol as protocol
from receiver.core import REPLAY_WINDOW, Outcome, Receiver
from receiver.errors import ReceiverConfigError, StoreUnavailableError
from receiver.store import AuditLimits, SqliteStore, Store

_LOG = logging.getLogger("receiver")


class Desk(Protocol):
    """The enrolment desk's side of the subscription (:class:`receiver.enrolment.Registrar`)."""

    @property
    def subscriptions(self) -> tuple[str, ...]: ...
    def handle(self, topic: str, payload: bytes) -> tuple[str, bytes] | None: ...


_OTHER_SECTIONS: Final = frozenset({"enrolment", "commands"})
"""Tables of the same file that :mod:`receiver.enrolment` reads and checks."""

_SECTIONS: Final = {
    "broker": {
        "host",
        "port",
        "ca_file",
        "cert_file",
        "key_file",
        "client_id",
        "session_expiry_s",
        "in_flight",
    },
    "keys": {"service_key"},
    "store": {"sqlite", "postgres"},
    "limits": {
        "max_batch_bytes",
        "replay_window",
        "failure_attempts",
        "store_backoff_cap_s",
        "audit_per_box",
        "audit_max_rows",
        "audit_max_bytes",
    },
}


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
    in_flight: int = 16
    max_batch_bytes: int = protocol.MAX_BATCH_BYTES
    replay_window: int = REPLAY_WINDOW
    failure_attempts: int = 3
    store_backoff_s: float = 0.5
    store_backoff_cap_s: float = 30.0
    audit: AuditLimits = field(default_factory=AuditLimits)
    subscription: str = protocol.SHARED_BATCH_SUBSCRIPTION
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> ReceiverConfig:
        """Read ``[broker]``, ``[keys]``, ``[store]`` and ``[limits]`` from a TOML file.

        Relative paths are taken relative to the file's directory. Every key is checked for
        its type and range, and every file it names for being there and readable.

        Raises:
            ReceiverConfigError: one line per problem, each naming the key and what to do.
        """
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ReceiverConfigError(
                f"no receiver configuration at {path}",
                hint="give --config the receiver's TOML file (docs/receiver.md shows one)",
            ) from None
        except (OSError, UnicodeDecodeError) as err:
            raise ReceiverConfigError(f"cannot read {path}: {err}") from None
        except tomllib.TOMLDecodeError as err:
            raise ReceiverConfigError(f"{path} is not valid TOML: {err}") from None
        return _Loader(path, data).config()


class _Loader:
    """Checks one configuration file; collects every problem before raising."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.base = path.parent
        self.data = data
        self.problems: list[str] = []

    def _bad(self, key: str, what: str) -> None:
        self.problems.append(f"{self.path}: {key}: {what}")

    def _section(self, name: str) -> dict[str, Any]:
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            self._bad(f"[{name}]", "must be a table")
            return {}
        return value

    def _int(self, section: str, key: str, default: int, lo: int, hi: int) -> int:
        value = self._section(section).get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            self._bad(f"[{section}] {key}", f"must be an integer from {lo} to {hi}")
            return default
        return value

    def _str(self, section: str, key: str, default: str | None) -> str | None:
        value = self._section(section).get(key, default)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            self._bad(f"[{section}] {key}", "must be a non-empty string")
            return default
        return value

    def _file(self, section: str, key: str, *, must_exist: bool = True) -> Path:
        raw = self._section(section).get(key)
        if raw is None:
            self._bad(f"[{section}] {key}", "is missing (a file path)")
            return self.base / "missing"
        if not isinstance(raw, str) or not raw:
            self._bad(f"[{section}] {key}", "must be a file path (a string)")
            return self.base / "missing"
        value = Path(raw)
        p = value if value.is_absolute() else self.base / value
        if must_exist:
            if not p.exists():
                self._bad(f"[{section}] {key}", f"{p} does not exist")
            elif not p.is_file():
                self._bad(f"[{section}] {key}", f"{p} is not a file")
            elif not os.access(p, os.R_OK):
                self._bad(f"[{section}] {key}", f"{p} is not readable by this user")
        return p

    def config(self) -> ReceiverConfig:
        for name, value in self.data.items():
            if name in _OTHER_SECTIONS:
                continue
            if name not in _SECTIONS:
                known = ", ".join(sorted({*_SECTIONS, *_OTHER_SECTIONS}))
                self._bad(f"[{name}]", f"unknown section (known: {known})")
            elif isinstance(value, dict):
                for key in value:
                    if key not in _SECTIONS[name]:
                        self._bad(f"[{name}] {key}", "unknown key")
        if "broker" not in self.data:
            self._bad("[broker]", "is missing (host, port, ca_file, cert_file, key_file)")
        if "keys" not in self.data:
            self._bad("[keys]", "is missing (service_key)")
        defaults = AuditLimits()
        store = self._section("store")
        sqlite = store.get("sqlite", "receiver.db")
        if not isinstance(sqlite, str) or not sqlite:
            self._bad("[store] sqlite", "must be a file path (a string)")
            sqlite = "receiver.db"
        sqlite_path = Path(sqlite) if Path(sqlite).is_absolute() else self.base / sqlite
        cfg = ReceiverConfig(
            host=self._str("broker", "host", "127.0.0.1") or "127.0.0.1",
            port=self._int("broker", "port", 8883, 1, 65535),
            ca_file=self._file("broker", "ca_file"),
            cert_file=self._file("broker", "cert_file"),
            key_file=self._file("broker", "key_file"),
            client_id=self._str("broker", "client_id", "dho-receiver-1") or "dho-receiver-1",
            session_expiry_s=self._int("broker", "session_expiry_s", 24 * 3600, 0, 2**32 - 1),
            in_flight=self._int("broker", "in_flight", 16, 1, 1000),
            service_key_file=self._file("keys", "service_key"),
            sqlite_path=sqlite_path,
            postgres_dsn=self._str("store", "postgres", None),
            max_batch_bytes=self._int(
                "limits", "max_batch_bytes", protocol.MAX_BATCH_BYTES, 1024, 16 * 2**20
            ),
            replay_window=self._int("limits", "replay_window", REPLAY_WINDOW, 1, 2**31),
            failure_attempts=self._int("limits", "failure_attempts", 3, 1, 100),
            store_backoff_cap_s=float(self._int("limits", "store_backoff_cap_s", 30, 1, 3600)),
            audit=AuditLimits(
                per_box=self._int("limits", "audit_per_box", defaults.per_box, 1, 10**6),
                max_rows=self._int("limits", "audit_max_rows", defaults.max_rows, 1, 10**8),
                max_bytes=self._int("limits", "audit_max_bytes", defaults.max_bytes, 2**20, 2**40),
            ),
        )
        if self.problems:
            raise ReceiverConfigError("\n".join(self.problems))
        return cfg


def load_service_key(path: Path) -> Ed25519PrivateKey:
    """The service's Ed25519 signing key from a PEM (PKCS#8) file.

    Raises:
        ReceiverConfigError: missing, unreadable, not PEM, or not an Ed25519 private key.
    """
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as err:
        raise ReceiverConfigError(f"cannot read the service key {path}: {err.strerror}") from None
    except (ValueError, TypeError) as err:
        raise ReceiverConfigError(
            f"{path} is not an unencrypted PEM private key ({err}); make one with"
            " `dho-receiver new-service-key`"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ReceiverConfigError(
            f"{path} is not an Ed25519 private key; make one with `dho-receiver new-service-key`"
        )
    return key


def tls_context(cfg: ReceiverConfig) -> ssl.SSLContext:
    """The client TLS context of the protocol: the broker CA pinned, this receiver's
    certificate and key (:func:`dho_protocol.client_context`).

    Raises:
        ReceiverConfigError: a file that is not a certificate or key, or a key that does not
            match the certificate.
    """
    try:
        ssl.create_default_context(cafile=str(cfg.ca_file))
    except (ssl.SSLError, OSError, ValueError) as err:
        raise ReceiverConfigError(
            f"[broker] ca_file: {cfg.ca_file} is not a PEM CA certificate ({err})"
        ) from None
    try:
        return protocol.client_context(protocol.TlsFiles(cfg.ca_file, cfg.cert_file, cfg.key_file))
    except (ssl.SSLError, OSError) as err:
        raise ReceiverConfigError(
            f"[broker] cert_file/key_file: {cfg.cert_file} and {cfg.key_file} are not a PEM"
            f" certificate and its matching unencrypted key ({err})"
        ) from None


def open_store(cfg: ReceiverConfig) -> Store:
    """The configured store: PostgreSQL when a DSN is set, else SQLite.

    Raises:
        ReceiverConfigError: no driver for PostgreSQL, or a bad connection string.
        StoreUnavailableError: the database cannot be reached or opened now (transient).
        NotAStoreError: the SQLite file is another program's database.
    """
    if cfg.postgres_dsn:
        from receiver.pg import PostgresStore

        store: Store = PostgresStore(cfg.postgres_dsn)
        return store
    return SqliteStore(cfg.sqlite_path)


def describe_connect_error(err: BaseException, cfg: ReceiverConfig) -> str:
    """A one-line reason for a failed connection to the broker, with what to check."""
    where = f"{cfg.host}:{cfg.port}"
    if isinstance(err, ssl.SSLCertVerificationError):
        return (
            f"the broker at {where} presented a certificate that does not verify against"
            f" ca_file {cfg.ca_file} ({err.verify_message}): wrong broker, host or CA file"
        )
    if isinstance(err, ssl.SSLError):
        return (
            f"TLS with the broker at {where} failed ({err.reason or err}): the broker may"
            f" refuse this receiver's certificate {cfg.cert_file}"
        )
    if isinstance(err, ConnectionRefusedError):
        return f"the broker at {where} refused the connection: is it running on that port?"
    if isinstance(err, socket.gaierror):
        return f"the broker host {cfg.host!r} cannot be resolved: check [broker] host"
    if isinstance(err, TimeoutError | socket.timeout):
        return f"no answer from the broker at {where} (timed out): check the network"
    return f"cannot connect to the broker at {where}: {err}"


class _ReceiverClient(mqtt.Client):
    """paho's client, remembering why the last connection attempt failed (for the log)."""

    last_connect_error: BaseException | None = None

    def reconnect(self) -> MQTTErrorCode:
        try:
            rc = super().reconnect()
        except OSError as err:
            self.last_connect_error = err
            raise
        self.last_connect_error = None
        return rc


@dataclass(frozen=True, slots=True)
class _Inbound:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int


class ReceiverService:
    """One receiver process: MQTT session, a worker thread, :class:`Receiver` and, when
    configured, the enrolment desk (its requests go through the same worker)."""

    def __init__(
        self,
        cfg: ReceiverConfig,
        receiver: Receiver,
        desk: Desk | None = None,
        *,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.cfg = cfg
        self.receiver = receiver
        self.desk = desk
        self.connected = threading.Event()
        self.store_waits = 0
        self.failures = 0
        self.stale_dropped = 0
        self._stopping = threading.Event()
        self._queue: queue.Queue[_Inbound | None] = queue.Queue()
        self._generation = 0
        self._gen_lock = threading.Lock()
        self._worker = threading.Thread(target=self._work, name="receiver-worker", daemon=True)
        self._connect_failures = 0
        self.client = _ReceiverClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        self.client.tls_set_context(tls or tls_context(cfg))
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_log = self._on_log
        self._accepted = False  # CONNACK received on the current connection
        self._last_socket_error: str | None = None

    # -- network thread --------------------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            _LOG.error(
                "broker at %s:%d refused receiver %s: %s (check its certificate CN and the ACL)",
                self.cfg.host,
                self.cfg.port,
                self.cfg.client_id,
                reason.getName(),
            )
            return
        with self._gen_lock:
            self._generation += 1
        self._connect_failures = 0
        self._accepted = True
        client.subscribe(self.cfg.subscription, qos=1)
        for topic in self.desk.subscriptions if self.desk is not None else ():
            client.subscribe(topic, qos=1)
        _LOG.info(
            "receiver %s connected, subscribed to %s", self.cfg.client_id, self.cfg.subscription
        )
        self.connected.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        self._connect_failures += 1
        err = self.client.last_connect_error
        reason = describe_connect_error(err, self.cfg) if err else "connection failed"
        _LOG.error("%s; trying again (attempt %d)", reason, self._connect_failures)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._gen_lock:
            self._generation += 1
        self.connected.clear()
        if self._accepted:
            self._accepted = False
            _LOG.warning("receiver %s disconnected: %s", self.cfg.client_id, reason.getName())
            return
        # Closed before the broker accepted us: under TLS 1.3 a refused client certificate
        # shows up here, after the handshake, not as a failed connection.
        self._connect_failures += 1
        _LOG.error(
            "the broker at %s:%d closed the connection before accepting receiver %s (%s): it"
            " may refuse the certificate %s (issued by the broker's CA? CN a user of the"
            " ACL?); trying again (attempt %d)",
            self.cfg.host,
            self.cfg.port,
            self.cfg.client_id,
            self._last_socket_error or reason.getName(),
            self.cfg.cert_file,
            self._connect_failures,
        )
        self._last_socket_error = None

    def _on_log(self, client: mqtt.Client, userdata: object, level: int, buf: str) -> None:
        if level == mqtt.MQTT_LOG_ERR and "socket" in buf:
            self._last_socket_error = buf

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._gen_lock:
            generation = self._generation
        self._queue.put(_Inbound(msg.topic, bytes(msg.payload), msg.mid, msg.qos, generation))

    # -- worker thread ---------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._stopping.is_set():
                return
            if self._stale(item):
                # Delivered on a connection that is gone and never PUBACKed: the broker
                # delivers it again on the new one, so this copy is dropped unhandled (the
                # queue cannot grow across reconnects while the store is down).
                self.stale_dropped += 1
                continue
            try:
                self._process(item)
            except Exception:  # noqa: BLE001 - the worker must survive anything
                # Only publishing could get here (handle's errors are caught below); the
                # message stays un-PUBACKed and comes again after the next reconnect.
                _LOG.exception("publishing the answer failed; the broker will deliver it again")

    def _process(self, item: _Inbound) -> None:
        if self.desk is not None and not item.topic.endswith("/batch"):
            self._desk(item)
            return
        outcome = self._decide(item)
        if outcome is None:  # stopping, or a stale copy: the broker delivers it again
            return
        if outcome.ack is not None and outcome.ack_topic is not None:
            self.client.publish(outcome.ack_topic, outcome.ack, qos=1)
        self._puback(item)

    def _desk(self, item: _Inbound) -> None:
        """Enrolment and retirement requests (receiver/enrolment.py); answered, then PUBACKed."""
        assert self.desk is not None
        try:
            answer = self.desk.handle(item.topic, item.payload)
        except Exception as err:  # noqa: BLE001 - a bad request must not stop the receiver
            _LOG.error("enrolment desk failed on a message (%s); dropped", type(err).__name__)
            answer = None
        if answer is not None:
            self.client.publish(answer[0], answer[1], qos=1)
        self._puback(item)

    def _stale(self, item: _Inbound) -> bool:
        with self._gen_lock:
            return item.generation != self._generation

    def _puback(self, item: _Inbound) -> None:
        with self._gen_lock:
            same_connection = item.generation == self._generation
        if same_connection:
            self.client.ack(item.mid, item.qos)
        else:
            _LOG.info("connection changed while handling a batch; the broker delivers it again")

    def _decide(self, item: _Inbound) -> Outcome | None:
        """``handle`` with the retry rules of the module docstring; None when stopping."""
        failures = 0
        wait = self.cfg.store_backoff_s
        waited_since: float | None = None
        while not self._stopping.is_set():
            try:
                outcome = self.receiver.handle(item.topic, item.payload)
            except StoreUnavailableError as err:
                self.store_waits += 1
                if waited_since is None:
                    waited_since = time.monotonic()
                _LOG.warning(
                    "store unavailable (%s); batch held, trying again in %.1f s", err, wait
                )
                self._stopping.wait(wait)
                wait = min(self.cfg.store_backoff_cap_s, wait * 2)
                if self._stale(item):
                    return None  # the broker delivers it again on the new connection
                continue
            except Exception as err:  # noqa: BLE001 - bounded retries, then a refusal
                failures += 1
                self.failures += 1
                if failures >= self.cfg.failure_attempts:
                    return self.receiver.refuse_failed(item.topic, item.payload, err)
                _LOG.warning(
                    "batch processing failed (%s), attempt %d of %d",
                    type(err).__name__,
                    failures,
                    self.cfg.failure_attempts,
                )
                self._stopping.wait(0.1 * failures)
                continue
            if waited_since is not None:
                _LOG.warning(
                    "store available again after %.1f s; resuming", time.monotonic() - waited_since
                )
            return outcome
        return None

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker, connect (persistent session) and start the network thread."""
        self._worker.start()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        props.ReceiveMaximum = self.cfg.in_flight
        self.client.connect_async(
            self.cfg.host, self.cfg.port, keepalive=30, clean_start=False, properties=props
        )
        self.client.loop_start()

    def stop(self) -> None:
        """Stop the worker (a batch being handled finishes or is left for redelivery), then
        disconnect cleanly and stop the network thread."""
        self._stopping.set()
        self._queue.put(None)
        if self._worker.is_alive():
            self._worker.join(60)
        self.client.disconnect()
        self.client.loop_stop()

    def run_until(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set."""
        self.start()
        try:
            stop.wait()
        finally:
            self.stop()
