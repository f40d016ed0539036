"""The MQTT v5 link to the broker: paho-mqtt 2.x driven from asyncio.

paho runs its network loop on its own thread (``loop_start``); every callback only hands its
event to the event loop with ``call_soon_threadsafe``. The blocking parts of a connection
attempt (TCP connect, TLS handshake) run in a worker thread. One task, :meth:`MqttLink.run`,
owns the connection: it connects, waits until the link drops, backs off with full jitter and
connects again; paho's own reconnect (no jitter) is switched off.

Connection failures become typed errors with a message a technician can act on:
:class:`~agent.errors.BrokerUnreachableError`, :class:`~agent.errors.CertificateRejectedError`,
:class:`~agent.errors.BrokerCertificateError`, :class:`~agent.errors.ClockImplausibleError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.errors import (
    BrokerCertificateError,
    BrokerUnreachableError,
    CertificateRejectedError,
    ClockImplausibleError,
    UplinkError,
)
from agent.uplink.policy import Backoff
from dho_protocol.tls import TlsFiles, client_context

_LOG = logging.getLogger(__name__)

EARLIEST_PLAUSIBLE: Final = datetime(2025, 1, 1, tzinfo=UTC)
"""No clock reading before this is believed (the software did not exist yet)."""

_TLS_REJECT_MARKERS: Final = (
    "ALERT_CERTIFICATE_REQUIRED",
    "ALERT_UNKNOWN_CA",
    "ALERT_BAD_CERTIFICATE",
    "ALERT_CERTIFICATE_EXPIRED",
    "ALERT_CERTIFICATE_REVOKED",
    "ALERT_CERTIFICATE_UNKNOWN",
    "ALERT_ACCESS_DENIED",
    "ALERT_HANDSHAKE_FAILURE",
)


class LinkState(enum.StrEnum):
    """Where the connection stands (shown by the status command)."""

    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKING_OFF = "backing-off"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """How to reach the broker as this box.

    Attributes:
        box_id: the box's identity: the CN of its certificate, its MQTT client id and the
            id in its topics.
        ca_file: the CA that issued the broker's certificate (pinned; not the system store).
        cert_file, key_file: the box's client certificate (chain) and private key.
        session_expiry_s: how long the broker keeps the session (subscriptions, queued
            acknowledgements and commands) while the box is away.
        will_topic, will_payload: the last will, published retained by the broker when the
            box vanishes without a clean disconnect.
        subscriptions: topic filters to (re)subscribe with QoS 1 after every connect.
    """

    host: str
    port: int
    box_id: str
    ca_file: Path
    cert_file: Path
    key_file: Path
    keepalive_s: int = 60
    session_expiry_s: int = 7 * 24 * 3600
    connect_timeout_s: float = 15.0
    will_topic: str | None = None
    will_payload: bytes = b"offline"
    subscriptions: tuple[str, ...] = ()
    stable_after_s: float = 60.0


def check_clock(cert_file: Path, *, now: datetime | None = None) -> None:
    """Refuse to start TLS with a clock that cannot be right.

    The box has no real-time clock: after a long power cut it may boot in the past. TLS then
    fails with obscure "certificate is not yet valid" errors on both sides, so check first.

    Raises:
        ClockImplausibleError: the clock is before 2025 or before the certificate's validity.
        CertificateRejectedError: the certificate has expired by this clock.
    """
    now = now or datetime.now(UTC)
    wall_ns = int(now.timestamp() * 1e9)
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError) as err:
        raise CertificateRejectedError(
            f"cannot read the box certificate {cert_file}: {err} (re-enrol the box)"
        ) from err
    if now < EARLIEST_PLAUSIBLE or now < cert.not_valid_before_utc:
        raise ClockImplausibleError(
            f"the system clock says {now:%Y-%m-%d %H:%M} UTC, before the box certificate "
            f"became valid ({cert.not_valid_before_utc:%Y-%m-%d}); TLS cannot check "
            "certificates until the time is set. Check the network time service "
            "(timedatectl / systemd-timesyncd); uploads resume when the clock is synchronised",
            wall_ns,
        )
    if now > cert.not_valid_after_utc:
        raise CertificateRejectedError(
            f"the box certificate expired on {cert.not_valid_after_utc:%Y-%m-%d} (clock says "
            f"{now:%Y-%m-%d}); re-enrol the box, or fix the clock if it is wrong"
        )


def _tls_context(cfg: LinkConfig) -> ssl.SSLContext:
    try:
        return client_context(TlsFiles(cfg.ca_file, cfg.cert_file, cfg.key_file))
    except (OSError, ssl.SSLError) as err:
        raise CertificateRejectedError(
            f"cannot load the TLS files ({cfg.ca_file}, {cfg.cert_file}): {err}"
        ) from err


def _classify_connect_error(err: BaseException, cfg: LinkConfig) -> UplinkError:
    where = f"{cfg.host}:{cfg.port}"
    if isinstance(err, ssl.SSLCertVerificationError):
        msg = err.verify_message or str(err)
        if "not yet valid" in msg or "expired" in msg:
            try:
                check_clock(cfg.cert_file)
            except ClockImplausibleError as clock:
                return clock
            return BrokerCertificateError(
                f"the broker at {where} presented a certificate outside its validity ({msg}); "
                "if the box clock is right, the broker certificate must be renewed"
            )
        return BrokerCertificateError(
            f"the broker at {where} is not the DHO broker: its certificate failed "
            f"verification against the pinned CA ({msg})"
        )
    if isinstance(err, ssl.SSLError):
        text = str(err).upper()
        if any(m in text for m in _TLS_REJECT_MARKERS):
            return CertificateRejectedError(
                f"the broker at {where} rejected this box's certificate during the TLS "
                f"handshake ({err.reason or err}); the box may be revoked or need re-enrolment"
            )
        return BrokerUnreachableError(f"TLS with {where} failed: {err}")
    if isinstance(err, socket.gaierror):
        return BrokerUnreachableError(f"cannot resolve the broker name {cfg.host!r}: {err}")
    if isinstance(err, TimeoutError):
        return BrokerUnreachableError(f"the broker at {where} did not answer in time")
    if isinstance(err, OSError):
        return BrokerUnreachableError(f"cannot reach the broker at {where}: {err.strerror or err}")
    return UplinkError(f"connecting to {where} failed: {err}")


MessageHandler = Callable[[str, bytes], None]


class TlsClient(mqtt.Client):
    """paho's client, closing the TLS socket when the handshake fails.

    paho 2.x leaves the half-open TLS socket of a failed handshake to the garbage collector
    (a descriptor held for as long as the exception lives, and a ResourceWarning). This
    replacement does the same steps with the context we configured, and closes on failure.
    """

    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> ssl.SSLSocket:
        ctx = self._ssl_context
        if ctx is None:
            raise ValueError("TLS is not configured")
        tls = ctx.wrap_socket(tcp_sock, server_hostname=self.host, do_handshake_on_connect=False)
        try:
            tls.settimeout(self.connect_timeout)
            tls.do_handshake()
        except BaseException:
            tls.close()
            raise
        return tls


class MqttLink:
    """One MQTT v5 connection over TLS with a client certificate, owned by :meth:`run`.

    ``on_message`` and ``on_connected`` are called on the event loop thread.
    """

    def __init__(
        self,
        cfg: LinkConfig,
        *,
        on_message: MessageHandler,
        on_connected: Callable[[], None] | None = None,
        backoff: Backoff | None = None,
        clock_check: Callable[[Path], None] = check_clock,
    ) -> None:
        self.cfg = cfg
        self.state = LinkState.IDLE
        self.last_error: UplinkError | None = None
        self.connected_since: float | None = None
        self.bytes_sent = 0
        self.connects = 0
        self.backoff = backoff or Backoff()
        self._on_message = on_message
        self._on_connected = on_connected
        self._clock_check = clock_check
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()
        self._down = asyncio.Event()
        self._down.set()
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._dropped: asyncio.Future[str] | None = None
        self._pubacks: dict[int, asyncio.Future[ReasonCode | None]] = {}
        self._last_log_error = ""
        self._tls_ready = False
        self._client = self._make_client()

    # -- paho set-up -------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        client = TlsClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.cfg.box_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        client.connect_timeout = self.cfg.connect_timeout_s
        client.max_inflight_messages_set(10)
        client.max_queued_messages_set(100)
        client.on_connect = self._cb_connect
        client.on_disconnect = self._cb_disconnect
        client.on_message = self._cb_message
        client.on_publish = self._cb_publish
        client.on_log = self._cb_log
        if self.cfg.will_topic is not None:
            client.will_set(self.cfg.will_topic, self.cfg.will_payload, qos=1, retain=True)
        return client

    # -- callbacks (paho's thread) -------------------------------------------------------

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closing during shutdown
                loop.call_soon_threadsafe(fn, *args)

    def _cb_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not reason.is_failure:
            for topic in self.cfg.subscriptions:
                client.subscribe(topic, qos=1)
        self._post(self._on_connack, reason)

    def _cb_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._post(self._on_drop, f"{reason}; {self._last_log_error}".strip("; "))

    def _cb_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self._post(self._on_message, msg.topic, bytes(msg.payload))

    def _cb_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._post(self._on_puback, mid, reason)

    def _cb_log(self, client: mqtt.Client, userdata: object, level: int, buf: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:
            self._last_log_error = buf

    # -- the same events, on the event loop ---------------------------------------------

    def _on_connack(self, reason: ReasonCode) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(reason)

    def _on_drop(self, why: str) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectionError(why))
        if self._dropped is not None and not self._dropped.done():
            self._dropped.set_result(why)

    def _on_puback(self, mid: int, reason: ReasonCode) -> None:
        if reason.is_failure:
            _LOG.warning(
                "uplink %s: the broker refused a publish: %s (check the broker ACL)",
                self.cfg.box_id,
                reason.getName(),
            )
        fut = self._pubacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(reason)

    # -- public API ---------------------------------------------------------------------

    @property
    def connected(self) -> asyncio.Event:
        """Set while the broker has accepted the connection."""
        return self._connected

    @property
    def down(self) -> asyncio.Event:
        """Set while there is no accepted connection."""
        return self._down

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[ReasonCode | None]:
        """Queue a message; the future resolves with the PUBACK reason code.

        paho keeps it in memory only: callers that need delivery keep their own copy (the
        buffer) and wait for their own acknowledgement.

        Raises:
            BrokerUnreachableError: not connected (nothing is queued).
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[ReasonCode | None] = loop.create_future()
        if not self._connected.is_set():
            raise BrokerUnreachableError("not connected to the broker")
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerUnreachableError(
                f"publish refused by the client: {mqtt.error_string(info.rc)}"
            )
        self.bytes_sent += len(payload) + len(topic) + 8
        if qos == 0:
            fut.set_result(None)
        else:
            self._pubacks[info.mid] = fut
        return fut

    async def run(self) -> None:
        """Connect, stay connected, reconnect with full-jitter back-off, until cancelled."""
        self._loop = asyncio.get_running_loop()
        try:
            while True:
                self.state = LinkState.CONNECTING
                try:
                    await self._connect_once()
                except UplinkError as err:
                    self._failed(err)
                except Exception as err:  # noqa: BLE001 - a bug must not end the uplink
                    _LOG.exception("uplink %s: unexpected error while connecting", self.cfg.box_id)
                    self._failed(UplinkError(f"unexpected error while connecting: {err!r}"))
                else:
                    why = await self._stay_connected()
                    self.last_error = BrokerUnreachableError(f"connection lost: {why}")
                    _LOG.warning("uplink %s: connection lost (%s)", self.cfg.box_id, why)
                delay = self.backoff.next_delay()
                self.state = LinkState.BACKING_OFF
                _LOG.info("uplink %s: next connection attempt in %.1f s", self.cfg.box_id, delay)
                await asyncio.sleep(delay)
        finally:
            self.state = LinkState.STOPPED
            await self._shutdown()

    def _failed(self, err: UplinkError) -> None:
        self.last_error = err
        _LOG.error("uplink %s: %s: %s", self.cfg.box_id, type(err).__name__, err)

    async def _connect_once(self) -> None:
        self._clock_check(self.cfg.cert_file)
        client = self._client
        if not self._tls_ready:  # paho accepts one TLS context per client
            client.tls_set_context(_tls_context(self.cfg))
            self._tls_ready = True
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self._dropped = loop.create_future()
        self._last_log_error = ""
        try:
            await asyncio.to_thread(
                client.connect,
                self.cfg.host,
                self.cfg.port,
                keepalive=self.cfg.keepalive_s,
                clean_start=mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                properties=props,
            )
        except (OSError, ValueError) as err:
            raise _classify_connect_error(err, self.cfg) from err
        client.loop_start()
        try:
            reason = await asyncio.wait_for(self._connack, self.cfg.connect_timeout_s)
        except ConnectionError as err:
            await self._stop_thread()
            text = str(err).upper()
            if any(m in text for m in _TLS_REJECT_MARKERS) or "CERTIFICATE" in text:
                raise CertificateRejectedError(
                    f"the broker at {self.cfg.host}:{self.cfg.port} rejected this box's "
                    f"certificate ({err}); the box may be revoked or need re-enrolment"
                ) from err
            if "EOF OCCURRED" in text or "SSL" in text:
                # TLS 1.3 checks the client certificate after the client's handshake is
                # done: a refusal shows up as the TLS session dying before the CONNACK.
                raise CertificateRejectedError(
                    f"the broker at {self.cfg.host}:{self.cfg.port} closed the TLS session "
                    "right after the handshake, before accepting the MQTT connection: it "
                    "rejected this box's certificate (unknown issuer, revoked or expired); "
                    f"re-enrol the box ({err})"
                ) from err
            raise BrokerUnreachableError(
                f"the broker closed the connection before accepting it ({err}); if this "
                "repeats, the box certificate may be rejected"
            ) from err
        except TimeoutError as err:
            await self._stop_thread()
            raise BrokerUnreachableError(
                f"no CONNACK from {self.cfg.host}:{self.cfg.port} within "
                f"{self.cfg.connect_timeout_s:.0f} s"
            ) from err
        if reason.is_failure:
            await self._stop_thread()
            name = reason.getName()
            if reason.value in (0x86, 0x87, 0x8A, 0x8C):  # bad credentials, not authorised, banned
                raise CertificateRejectedError(
                    f"the broker refused box {self.cfg.box_id}: {name}; check its enrolment"
                )
            raise UplinkError(f"the broker refused the connection: {name}")

    async def _stay_connected(self) -> str:
        assert self._dropped is not None
        self.state = LinkState.CONNECTED
        self.connects += 1
        self.connected_since = time.monotonic()
        self.last_error = None
        self._down.clear()
        self._connected.set()
        _LOG.info("uplink %s: connected to %s:%s", self.cfg.box_id, self.cfg.host, self.cfg.port)
        if self._on_connected is not None:
            self._on_connected()
        try:
            try:
                why = await asyncio.wait_for(asyncio.shield(self._dropped), self.cfg.stable_after_s)
            except TimeoutError:
                self.backoff.reset()
                why = await self._dropped
            return why
        finally:
            self._connected.clear()
            self._down.set()
            self.connected_since = None
            if not self._dropped.done():  # cancelled: leave cleanly, say so first
                with contextlib.suppress(Exception):
                    if self.cfg.will_topic is not None:
                        self._client.publish(
                            self.cfg.will_topic, self.cfg.will_payload, qos=0, retain=True
                        )
                    self._client.disconnect()
            for fut in self._pubacks.values():
                if not fut.done():
                    fut.set_result(None)
            self._pubacks.clear()
            await self._stop_thread()

    async def _stop_thread(self) -> None:
        await asyncio.to_thread(self._stop_thread_blocking)

    def _stop_thread_blocking(self) -> None:
        self._client.loop_stop()
        # paho 2.x: loop_start() makes a new wake-up socket pair each time without closing
        # the previous one, and a connection refused before CONNACK may leave the TLS
        # socket open; close both here (the network thread has ended) so nothing leaks.
        self._client._reset_sockets()

    async def _shutdown(self) -> None:
        self._connected.clear()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._stop_thread_blocking)
