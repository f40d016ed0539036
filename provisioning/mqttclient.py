"""A small blocking MQTT v5 client for the technician CLI (enrol, selftest, retire, commands).

The CLI does one exchange at a time and waits for it with a deadline, so a blocking client
is the simple thing: paho's network thread delivers into a queue, the caller waits on it.
Every failure becomes a :class:`~provisioning.ui.ProvisionError` that says what is wrong
(no network, not the DHO broker, refused) with the exit code for it.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.uplink.link import TlsClient
from provisioning.ui import ExitCode, ProvisionError


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A broker to talk to, and how to prove who we are."""

    host: str
    port: int
    ca_file: str
    client_id: str
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None
    what: str = "the DHO broker"


def _tls(ep: Endpoint) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cafile=ep.ca_file)
        if ep.cert_file and ep.key_file:
            ctx.load_cert_chain(certfile=ep.cert_file, keyfile=ep.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ProvisionError(
            f"cannot load the TLS files for {ep.what} ({ep.ca_file}): {exc}",
            next_step="dho-provision selftest names the file that is wrong",
            code=ExitCode.NOT_READY,
        ) from exc
    return ctx


def classify(exc: BaseException, ep: Endpoint) -> ProvisionError:
    """The technician's view of a failed connection."""
    where = f"{ep.host}:{ep.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        msg = exc.verify_message or str(exc)
        if "not yet valid" in msg or "expired" in msg:
            return ProvisionError(
                f"TLS with {where} failed: the broker's certificate is {msg} by this box's clock",
                next_step="check the clock (timedatectl); if it is right, tell the service",
                code=ExitCode.CLOCK,
            )
        return ProvisionError(
            f"{where} is not {ep.what}: its certificate does not verify against the pinned CA "
            f"({msg})",
            next_step="check the service address; a captive portal or proxy may be in the way",
            code=ExitCode.UNREACHABLE,
        )
    if isinstance(exc, ssl.SSLError):
        text = str(exc).upper()
        if "CERTIFICATE" in text or "HANDSHAKE" in text or "ACCESS_DENIED" in text:
            return ProvisionError(
                f"{ep.what} at {where} refused this box's certificate during TLS ({exc})",
                next_step="the box may be revoked: enrol it again (dho-provision enroll)",
                code=ExitCode.REFUSED,
            )
        return ProvisionError(
            f"TLS with {where} failed: {exc}",
            next_step="try again; if it persists, check the service address",
            code=ExitCode.UNREACHABLE,
        )
    if isinstance(exc, socket.gaierror):
        return ProvisionError(
            f"cannot resolve {ep.host!r}: {exc}",
            next_step="check the mobile/network connection and the service address",
            code=ExitCode.UNREACHABLE,
        )
    if isinstance(exc, TimeoutError | socket.timeout):
        return ProvisionError(
            f"{ep.what} at {where} did not answer in time",
            next_step="check the mobile/network connection, then try again",
            code=ExitCode.UNREACHABLE,
        )
    if isinstance(exc, OSError):
        return ProvisionError(
            f"cannot reach {ep.what} at {where}: {exc.strerror or exc}",
            next_step="check the mobile/network connection and the service address",
            code=ExitCode.UNREACHABLE,
        )
    return ProvisionError(f"connecting to {where} failed: {exc}", code=ExitCode.UNREACHABLE)


class Client:
    """Connect, subscribe, publish and wait, each with a deadline (a context manager)."""

    def __init__(self, ep: Endpoint, *, timeout: float = 15.0) -> None:
        self.ep = ep
        self.timeout = timeout
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._connack: queue.Queue[ReasonCode | str] = queue.Queue()
        self._acks: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self._client = TlsClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=ep.client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        self._client.connect_timeout = timeout
        self._client.tls_set_context(_tls(ep))
        if ep.username is not None:
            self._client.username_pw_set(ep.username, ep.password)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.on_publish = self._on_publish
        self._started = False

    # paho's thread ---------------------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connack.put(reason)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connack.put(f"disconnected: {reason}")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self.messages.put((msg.topic, bytes(msg.payload)))

    def _done(self, mid: int) -> None:
        with self._lock:
            ev = self._acks.setdefault(mid, threading.Event())
        ev.set()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if any(r.is_failure for r in reasons):
            self.messages.put(("$subscribe-refused", str(mid).encode()))
        self._done(mid)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._done(mid)

    # the caller's thread -----------------------------------------------------------------

    def connect(self) -> None:
        """Connect (clean session) and wait for the broker's answer."""
        try:
            self._client.connect(self.ep.host, self.ep.port, keepalive=30, clean_start=True)
        except (OSError, ssl.SSLError) as exc:
            raise classify(exc, self.ep) from exc
        self._client.loop_start()
        self._started = True
        try:
            answer = self._connack.get(timeout=self.timeout)
        except queue.Empty:
            raise classify(TimeoutError(), self.ep) from None
        if isinstance(answer, str):
            # TLS 1.3: a refused client certificate shows as the session dying at once.
            raise ProvisionError(
                f"{self.ep.what} at {self.ep.host}:{self.ep.port} closed the connection before "
                f"accepting it ({answer})",
                next_step="this box's certificate was refused: enrol again "
                "(dho-provision enroll); it may have been revoked",
                code=ExitCode.REFUSED,
            )
        if answer.is_failure:
            raise ProvisionError(
                f"{self.ep.what} refused the connection: {answer.getName()}",
                next_step="the account or certificate is not accepted; check enrolment.toml, "
                "or enrol again",
                code=ExitCode.REFUSED,
            )

    def _wait(self, mid: int, what: str) -> None:
        with self._lock:
            ev = self._acks.setdefault(mid, threading.Event())
        if not ev.wait(self.timeout):
            raise ProvisionError(
                f"{self.ep.what} did not confirm the {what} in {self.timeout:.0f} s",
                next_step="check the network connection, then try again",
                code=ExitCode.UNREACHABLE,
            )

    def subscribe(self, topic: str) -> None:
        """Subscribe with QoS 1 and wait for the SUBACK."""
        _, mid = self._client.subscribe(topic, qos=1)
        if mid is None:
            raise ProvisionError("not connected", code=ExitCode.UNREACHABLE)
        self._wait(mid, "subscription")

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish with QoS 1 and wait for the PUBACK."""
        info = self._client.publish(topic, payload, qos=1)
        self._wait(info.mid, "message")

    def wait_for(self, topic: str, timeout: float) -> bytes | None:
        """The next message on ``topic``, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                got, payload = self.messages.get(timeout=left)
            except queue.Empty:
                return None
            if got == "$subscribe-refused":
                raise ProvisionError(
                    f"{self.ep.what} refused the subscription (ACL)",
                    next_step="the broker's ACL does not match this software; tell the service",
                    code=ExitCode.REFUSED,
                )
            if got == topic:
                return payload
        return None

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        with contextlib.suppress(Exception):
            self._client.disconnect()
        if self._started:
            self._client.loop_stop()
            self._started = False

    def __enter__(self) -> Self:
        try:
            self.connect()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
