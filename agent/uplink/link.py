"""The MQTT v5 link to the broker: paho-mqtt 2.x driven by the asyncio event loop.

paho runs in its "external event loop" mode (``loop_read``/``loop_write``, the pattern of
paho's ``examples/loop_asyncio.py``): the event loop watches paho's socket and calls paho
when it is readable or writable, so every paho callback runs on the event loop thread, and
there is no paho thread and no wake-up socket pair. The keep-alive is the link's own
(:meth:`MqttLink.keepalive_now`: an empty QoS 0 publish, a PINGREQ when the broker has been
silent), not paho's ``loop_misc``. Only the blocking part of a
connection attempt (DNS, TCP connect, TLS handshake) runs in a worker thread.

One task, :meth:`MqttLink.run`, owns the connection: it connects, stays connected, and when an
attempt fails or the link drops, waits as :class:`~agent.uplink.policy.ReconnectPolicy` says:
a short full-jitter back-off that ends early when the network comes back (netlink, see
:mod:`agent.uplink.netwatch`) or a bare TCP probe reaches the broker; a long one when the
broker refused this box's identity. paho's own reconnect (no jitter) is not used.

When attempts on the MQTT port keep failing while 443 answers (a network that passes only
web traffic), the link tries MQTT over WebSockets with TLS on 443 instead, and goes back
after as many failures there, or at a reconnect an hour later (:mod:`agent.uplink.endpoints`;
a failed TCP probe counts as a failed attempt). The identity and TLS are the same on both;
:attr:`MqttLink.path` says which is in use.

TLS sessions are resumed where the broker allows it (Python's ``ssl`` session tickets): a
reconnect then skips sending the certificate chain again. A probe that reaches the broker is
not a connection of its own: the attempt after it runs TLS and MQTT on the probe's TCP
connection (one TCP handshake per reconnect, not two).

Connection failures become typed errors with a message a technician can act on:
:class:`~agent.errors.BrokerUnreachableError`, :class:`~agent.errors.CertificateRejectedError`,
:class:`~agent.errors.BrokerCertificateError`, :class:`~agent.errors.ClockImplausibleError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
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
from agent.uplink.endpoints import Endpoint, EndpointChooser
from agent.uplink.netwatch import KernelNetworkWatch, NetworkWatch
from agent.uplink.policy import FailureKind, ReconnectPolicy, Wait
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
    "ALERT_UNSUPPORTED_CERTIFICATE",
)
"""TLS alerts a broker sends when it refuses the client's certificate (OpenSSL's names)."""

_IDENTITY_REFUSED: Final = frozenset({0x85, 0x86, 0x87, 0x8A, 0x8C})
"""CONNACK reasons that refuse this box: client id not valid, bad user name or password, not
authorised, banned, bad authentication method."""

_PROBE_TIMEOUT_S: Final = 2.0

_ABORT_ON_CLOSE: Final = struct.pack("ii", 1, 0)
"""``SO_LINGER`` on, 0 s: ``close()`` resets the connection."""

PING_AFTER: Final = 3
"""Keep-alives without a word from the broker before one is a PINGREQ (``LinkConfig``)."""

SAVE_MARGIN_S: Final = 5.0
"""Seconds added to two autosave intervals before an acknowledged ``online`` counts as on the
broker's disk (:meth:`MqttLink.status_kept`): bytes long in transit, the broker's loop."""

_CORK: Final[int | None] = getattr(socket, "TCP_CORK", None)
"""Linux's ``TCP_CORK`` (None elsewhere: then only ``TCP_NODELAY`` is set)."""

_QUICKACK: Final[int | None] = getattr(socket, "TCP_QUICKACK", None)
"""Linux's ``TCP_QUICKACK`` (None elsewhere: the handshake's ACK then goes alone)."""


def _hold_finished(sock: socket.socket) -> bool:
    """Delayed ACKs asked for, and ``sock`` corked (:meth:`TlsClient._handshake`): whether it
    is corked."""
    if _QUICKACK is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 0)
    if _CORK is None:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _CORK, 1)
    except OSError:
        return False
    return True


def _uncork(sock: socket.socket) -> None:
    """Lift ``TCP_CORK``: what is held leaves now (``TCP_NODELAY`` is on)."""
    if _CORK is not None and sock.fileno() >= 0:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _CORK, 0)


_FASTOPEN_CONNECT: Final = 30
"""Linux's ``TCP_FASTOPEN_CONNECT`` (``include/uapi/linux/tcp.h``, kernel 4.11; Python's
``socket`` does not name it)."""

_TCPI_OPT_SYN_DATA: Final = 0x20
"""``tcp_info.tcpi_options``: the SYN carried data and the peer acknowledged it."""


def fastopen_socket(family: int, kind: int, proto: int) -> tuple[socket.socket, bool]:
    """A TCP socket with ``TCP_FASTOPEN_CONNECT`` on, and whether the kernel took it.

    With it, ``connect()`` to a server whose Fast Open cookie the kernel holds (from an
    earlier connection to that address) returns at once and the first write goes in the
    SYN; without a cookie it is an ordinary handshake whose SYN asks for one. A kernel
    without it (before 4.11, or ``net.ipv4.tcp_fastopen`` without bit 0x1, which refuses
    nothing but sends no data) answers ``ENOPROTOOPT``: then the socket is an ordinary one.
    """
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _FASTOPEN_CONNECT, 1)
    except OSError:
        return sock, False
    return sock, True


def syn_carried_data(sock: socket.socket) -> bool:
    """Whether ``sock``'s SYN carried data the peer acknowledged (``TCP_INFO``)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    except OSError:
        return False
    return len(info) > 5 and bool(info[5] & _TCPI_OPT_SYN_DATA)


_connect_properties: Callable[[int], Properties] = Properties
"""paho's ``Properties`` constructor, typed (paho leaves its ``__init__`` unannotated)."""


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
        will_delay_s: the will's MQTT 5 Will Delay Interval: the broker publishes the will
            only when this process has not reconnected into its session within this many
            seconds of the broker closing the old connection (0: at once).
        keepalive_topic: the light keep-alive's topic: when nothing was sent for
            ``keepalive_s``, an empty QoS 0 PUBLISH there (with a topic alias: 8 bytes of
            MQTT), which the broker does not answer, instead of a PINGREQ and its PINGRESP;
            a PINGREQ still when the broker has not been heard for ``ping_after``
            keep-alives (:meth:`MqttLink._keepalive`). None: PINGREQ every time.
        ping_after: see ``keepalive_topic``.
        online_payload: published retained (QoS 1) on ``will_topic`` after a connect, to
            replace a will the broker may have published; not sent again on a reconnect
            into the kept session for which the will cannot have been published and whose
            broker has saved it (:meth:`MqttLink.status_kept`). None: the user publishes
            its own status.
        broker_autosave_s: how often the broker writes its state to disk (Mosquitto's
            ``autosave_interval``, 60 s in ``receiver/mosquitto/mosquitto.conf``; 1 s on
            the tests' broker): a broker killed (``kill -9``, a crash, a power cut) restores
            what it last saved, so an ``online`` it acknowledged less than about this long
            before may be lost, and with it the correction of a will. A reconnect sends
            ``online`` again unless the box heard the broker at least two of these and
            :data:`SAVE_MARGIN_S` after the broker acknowledged it.
        subscriptions: topic filters to subscribe with QoS 1 (in one SUBSCRIBE) after a
            connect, unless the broker still holds this process's session with them
            (``session present`` after a SUBACK that granted every one of them).
        keepalive_s: the MQTT keep-alive. A ping costs 312 bytes on the bench's wire with
            its TCP/IP framing, a light keep-alive (``keepalive_topic``) 162-191; the daemon
            sets 1200 s (``[uplink] keepalive_s``, see ``docs/uplink-protocol.md`` section
            2.2 for the choice).
        user_timeout_s: ``TCP_USER_TIMEOUT``: the kernel drops the connection when data sent
            stays unacknowledged this long, so a publish into a dead path (a NAT that forgot
            the connection while it was idle) reconnects within this, not after 1.5
            keep-alives.
        stable_after_s: a connection that stayed up this long resets the back-off.
        fallback: the other way to the broker (MQTT over WebSockets with TLS on 443), tried
            after ``fallback_after`` failed attempts or probes in a row on ``port``, and
            left again after as many on it (:class:`~agent.uplink.endpoints.EndpointChooser`).
        tcp_fastopen: TCP Fast Open (RFC 7413) on the connection: a reconnect to a broker
            the box has reached before (the kernel holds its cookie) sends the TLS
            ClientHello in the SYN, one round trip less; the first attempt of a reconnect
            then needs no bare TCP probe (:meth:`MqttLink._wait`). Needs the central host's
            ``net.ipv4.tcp_fastopen`` server bits (``docs/operations.md``); without them, or
            on a kernel without it, connections are ordinary ones.
    """

    host: str
    port: int
    box_id: str
    ca_file: Path
    cert_file: Path
    key_file: Path
    keepalive_s: int = 60
    user_timeout_s: float = 30.0
    session_expiry_s: int = 7 * 24 * 3600
    connect_timeout_s: float = 15.0
    will_topic: str | None = None
    will_payload: bytes = b"offline"
    will_delay_s: int = 0
    online_payload: bytes | None = None
    broker_autosave_s: int = 60
    keepalive_topic: str | None = None
    ping_after: int = PING_AFTER
    subscriptions: tuple[str, ...] = ()
    stable_after_s: float = 60.0
    fallback: Endpoint | None = None
    fallback_after: int = 3
    tcp_fastopen: bool = True

    @property
    def tls_files(self) -> TlsFiles:
        """The box's TLS identity in the protocol's shared form."""
        return TlsFiles(self.ca_file, self.cert_file, self.key_file)


def _ignore_message(topic: str, payload: bytes) -> None:
    """Default handler until :meth:`MqttLink.bind` is called."""


def _nothing() -> None:
    """Default handler until :meth:`MqttLink.bind` is called."""


@dataclass(frozen=True, slots=True)
class LinkHandlers:
    """What the link tells its user, always on the event loop thread.

    Attributes:
        on_message: a message arrived on a subscribed topic.
        on_up: the broker accepted the connection (subscriptions are requested).
        on_down: the accepted connection is gone, or the connection :attr:`on_open`
            announced was refused or failed before the broker accepted it.
        on_open: CONNECT is queued and :meth:`MqttLink.publish` may already queue
            messages right behind it, before the broker's CONNACK (MQTT 5 section 3.1.4);
            :attr:`on_up` or :attr:`on_down` follows. Called only on a connection that
            subscribes in the same breath (see :meth:`MqttLink._open_early`).
    """

    on_message: Callable[[str, bytes], None]
    on_up: Callable[[], None]
    on_down: Callable[[], None]
    on_open: Callable[[], None] = _nothing


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
    """The protocol's client context (:func:`dho_protocol.tls.client_context`), TLS 1.3 only.

    The box talks to the DHO broker only, which speaks TLS 1.3; offering TLS 1.2 as well
    puts 14 more cipher suites and signature algorithms into every ClientHello (42 of its
    bytes, on each of a day's reconnects) and leaves a downgrade to be refused. Receivers
    keep the protocol's TLS 1.2 floor.
    """
    try:
        ctx = client_context(cfg.tls_files)
    except (OSError, ssl.SSLError) as err:
        raise CertificateRejectedError(
            f"cannot load the TLS files ({cfg.ca_file}, {cfg.cert_file}): {err}"
        ) from err
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    # A connection that ends without TLS close_notify (a broker or a path gone) is just
    # closed: OpenSSL would otherwise answer the EOF with a fatal alert (a 24-byte record
    # into a dead connection, and its reset back). MQTT frames its own packets, so a cut
    # TLS stream is a lost connection either way.
    ctx.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
    return ctx


def _rejects_certificate(text: str) -> bool:
    upper = text.upper()
    return any(m in upper for m in _TLS_REJECT_MARKERS)


def classify_connect_error(err: BaseException, cfg: LinkConfig) -> UplinkError:
    """The typed error for an exception raised while connecting (TCP, TLS handshake)."""
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
        if _rejects_certificate(str(err)):
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


def failure_kind(err: UplinkError) -> FailureKind:
    """How long a failure should make the link wait (see :class:`ReconnectPolicy`)."""
    if isinstance(err, CertificateRejectedError | BrokerCertificateError):
        return FailureKind.IDENTITY
    if isinstance(err, ClockImplausibleError):
        return FailureKind.CLOCK
    if isinstance(err, BrokerUnreachableError):
        return FailureKind.UNREACHABLE
    return FailureKind.REFUSED


class TlsClient(mqtt.Client):
    """paho's client with its TLS handshake done here: session resumption, no leaked socket.

    paho 2.x calls ``_ssl_wrap_socket(tcp_sock)`` from ``_create_socket`` to wrap and
    handshake the TCP socket. This override (with ``_transport``, set by
    :meth:`use_transport` to switch between MQTT over TLS and MQTT over WebSockets with TLS,
    the only paho internals the agent relies on; ``tests/uplink/test_link.py`` and
    ``tests/care/test_websockets.py`` fail loudly if a paho upgrade changes them) does the
    same with :attr:`tls_context`, and:

    * offers the TLS session of the previous connection (:attr:`tls_session`), so a
      reconnect on a metered link resumes instead of sending the certificate chain again;
    * closes the TLS socket when the handshake fails (paho leaves it to the garbage
      collector, holding a descriptor for as long as the exception lives).

    It also overrides ``_create_socket_connection`` (paho's TCP connect, called from
    ``_create_socket``; ``tests/uplink/test_link.py`` checks that too): when a probe has just
    reached the broker (:attr:`probed`), the connection runs on the probe's TCP connection
    instead of opening a second one; otherwise, with :attr:`fastopen`, it opens the TCP
    socket itself, unconnected, with ``TCP_FASTOPEN_CONNECT``, and :meth:`_ssl_wrap_socket`
    connects the TLS socket so that the ClientHello goes in the SYN (paho's ``_get_proxy``
    says whether a proxy is set: then paho's own connect).
    """

    tls_context: ssl.SSLContext | None = None
    tls_session: ssl.SSLSession | None = None
    probed: tuple[str, int, socket.socket] | None = None
    """A TCP connection a probe just opened to ``(host, port)``: the next connection to that
    address uses it instead of opening another (:meth:`_create_socket_connection`)."""
    probes_used = 0
    tcp_socket: socket.socket | None = None
    """The socket whose TCP options the link sets (:meth:`MqttLink._writable`): the TCP
    socket, then the TLS socket that took over its descriptor (WebSockets wrap that)."""
    user_timeout_ms = 0
    """``TCP_USER_TIMEOUT`` of the connection's socket (0: the kernel's default)."""
    handshakes = 0
    resumed = 0
    last_resumed = False
    """Whether the last handshake resumed a session."""
    fastopen = False
    """Open connections with TCP Fast Open (:attr:`LinkConfig.tcp_fastopen`)."""
    fastopen_refused = False
    """The kernel refused ``TCP_FASTOPEN_CONNECT`` (then connections are ordinary ones)."""
    fastopen_sent = 0
    """Handshakes whose ClientHello went in the SYN and was acknowledged there."""
    last_fastopen = False
    """Whether the last handshake's ClientHello went in the SYN."""
    _fastopen_to: tuple[socket.socket, Any] | None = None
    """The socket :meth:`_create_socket_connection` left unconnected for
    :meth:`_ssl_wrap_socket` to connect (with the ClientHello in its SYN), and where to."""

    def tls_set_context(self, context: ssl.SSLContext | None = None) -> None:
        """As paho's, and keep the context for :meth:`_ssl_wrap_socket`."""
        ctx = context or ssl.create_default_context()  # what paho does without one
        super().tls_set_context(ctx)
        self.tls_context = ctx

    def use_transport(self, endpoint: Endpoint) -> None:
        """Make the next connection go over ``endpoint``'s transport (and WebSocket path).

        paho's ``transport`` setter refuses after a failed or lost connection (it wants a
        clean disconnect first), so this sets what the setter sets, ``_transport``, when the
        link has closed the socket; ``tests/care/test_websockets.py`` checks it still works.
        """
        self.ws_set_options(path=endpoint.path)
        if self.transport != endpoint.transport:
            self._transport = endpoint.transport

    def take_probed(self) -> socket.socket | None:
        """The probe's connection, if one is held (the caller owns it from now on)."""
        held, self.probed = self.probed, None
        return None if held is None else held[2]

    def _create_socket_connection(self) -> socket.socket:
        # paho 2.x opens the TCP connection here (``socket.create_connection``). A probe
        # that has just reached the broker already did that handshake: use its socket, so a
        # reconnect costs one TCP handshake and one round trip less (about 470 bytes).
        held = self.probed
        if held is not None and (held[0], held[1]) == (self.host, self.port):
            self.probed = None
            sock = held[2]
            sock.settimeout(self.connect_timeout)
            self.probes_used += 1
            return self._tuned(sock)
        leftover = self.take_probed()
        if leftover is not None:
            leftover.close()
        self._fastopen_to = None
        if self.fastopen and not self.fastopen_refused and not self._get_proxy():
            deferred = self._fastopen_socket()
            if deferred is not None:
                return self._tuned(deferred)
        fresh: socket.socket = super()._create_socket_connection()
        return self._tuned(fresh)

    def _fastopen_socket(self) -> socket.socket | None:
        """An unconnected socket with ``TCP_FASTOPEN_CONNECT`` for :meth:`_ssl_wrap_socket`
        to connect, or None (the kernel refused the option: paho's connect instead).

        Not connected here: Python's ``ssl`` refuses to wrap a socket whose connect the
        kernel deferred (``getpeername`` says ENOTCONN, and its check for data that came
        before the handshake, CPython's fix of CVE-2023-40217, then fails with EAGAIN). So
        the TLS socket is made first and connected itself (``SSLSocket.connect``), and its
        first write, the ClientHello, goes in the SYN.
        """
        family, kind, proto, _, addr = socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM
        )[0]
        sock, on = fastopen_socket(family, kind, proto)
        if not on:
            sock.close()
            self.fastopen_refused = True
            _LOG.info("TCP Fast Open refused by the kernel: ordinary TCP connections")
            return None
        sock.settimeout(self.connect_timeout)
        self._fastopen_to = (sock, addr)
        return sock

    def _tuned(self, sock: socket.socket) -> socket.socket:
        """``TCP_NODELAY`` on the connection's TCP socket, which is kept in :attr:`tcp_socket`
        (the link corks it around each write, :meth:`MqttLink._writable`).

        paho leaves Nagle's algorithm on. With it, a write smaller than a segment waits
        while earlier bytes are unacknowledged: the PUBLISH written right behind CONNECT,
        and the last segment of every batch, would wait a round trip for the ACK of what
        went before (200 ms on a mobile link). The link corks the socket while paho writes
        what it has queued, so the segments are as full as with Nagle, and uncorking sends
        the tail at once.
        """
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.tcp_socket = sock
        return sock

    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> ssl.SSLSocket:
        ctx = self.tls_context
        if ctx is None:
            raise ValueError("TLS is not configured")
        # Before wrapping: ``wrap_socket`` detaches ``tcp_sock`` (its descriptor moves to the
        # TLS socket, and ``tcp_sock.setsockopt`` would fail on a closed descriptor).
        if self.user_timeout_ms and hasattr(socket, "TCP_USER_TIMEOUT"):
            with contextlib.suppress(OSError):
                tcp_sock.setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, self.user_timeout_ms
                )
        deferred, self._fastopen_to = self._fastopen_to, None
        if deferred is not None and deferred[0] is not tcp_sock:
            deferred = None
        try:
            tls = ctx.wrap_socket(
                tcp_sock,
                server_hostname=self.host,
                do_handshake_on_connect=False,
                session=self.tls_session,
            )
        except BaseException:
            tcp_sock.close()
            raise
        # The TLS socket owns the descriptor now: the link corks it (TCP options of the TLS
        # socket are those of its TCP connection).
        self.tcp_socket = tls
        try:
            if deferred is not None:
                # With the kernel's cookie: returns at once, the ClientHello goes in the SYN.
                # Without: an ordinary TCP handshake whose SYN asks for a cookie.
                tls.connect(deferred[1])
            self._handshake(tls)
        except BaseException as err:
            tls.close()
            # Never offer a session twice to a failing broker. With Fast Open the TCP
            # connect happens in here too: a path that is down (refused, unreachable, no
            # answer to the SYN) is not the broker failing TLS, and the session is kept for
            # the reconnect after the outage (a full handshake costs the certificate chain).
            network = isinstance(err, OSError) and not isinstance(err, ssl.SSLError)
            if deferred is None or not network:
                self.tls_session = None
            raise
        self.handshakes += 1
        self.last_resumed = bool(tls.session_reused)
        if tls.session_reused:
            self.resumed += 1
        self.last_fastopen = deferred is not None and syn_carried_data(tls)
        if self.last_fastopen:
            self.fastopen_sent += 1
        return tls

    def _handshake(self, tls: ssl.SSLSocket) -> None:
        """The TLS handshake, with the client's last flight held for CONNECT to join it.

        The first step runs without blocking: it writes ClientHello and stops where it must
        read the broker's answer. Then, before that answer arrives (:meth:`_hold_finished`),
        delayed ACKs are asked for (``TCP_QUICKACK`` 0), so the box does not acknowledge the
        broker's ServerHello flight with a pure ACK of its own (66 B, the kernel's quick-ack
        mode at a connection's start) but with the Finished that follows it, and the socket
        is corked, so the Finished waits for the CONNECT paho queues next: the link's
        uncork after writing it (:meth:`MqttLink._writable`) sends both in one segment, with
        the ACK (a reconnect about 200 B less: one segment, and one broker ACK, fewer). A
        cork the link does not lift is lifted by the kernel after 200 ms, so nothing can
        wait longer than that. Over WebSockets paho writes its HTTP upgrade itself and waits
        for the answer: the cork is lifted when the handshake is done.
        """
        tls.setblocking(False)
        try:
            tls.do_handshake()
            return  # cannot happen with a TLS client (it always waits for ServerHello)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass  # ClientHello written (or waiting for room): the rest with the timeout
        held = _hold_finished(tls)
        tls.settimeout(self.connect_timeout)
        try:
            tls.do_handshake()
        except BaseException:
            if held:
                _uncork(tls)  # an alert, if any, need not wait for the close
            raise
        if held and self._transport != "tcp":
            _uncork(tls)


class MqttLink:
    """One MQTT v5 connection over TLS with a client certificate, owned by :meth:`run`.

    Args:
        cfg: where and who.
        policy: when to try again after a failure.
        network: what tells the link that the network came back (netlink by default).
        clock_check: refuses to start TLS with an implausible clock.
    """

    def __init__(
        self,
        cfg: LinkConfig,
        *,
        policy: ReconnectPolicy | None = None,
        network: NetworkWatch | None = None,
        clock_check: Callable[[Path], None] = check_clock,
    ) -> None:
        self.cfg = cfg
        self.state = LinkState.IDLE
        self.reason: str | None = "not started"
        self.last_error: UplinkError | None = None
        self.connected_since: float | None = None
        self.bytes_sent = 0
        self.connects = 0
        self.policy = policy or ReconnectPolicy()
        self.network: NetworkWatch = network or KernelNetworkWatch()
        self.endpoints = EndpointChooser(Endpoint(cfg.port), cfg.fallback, cfg.fallback_after)
        """Where attempts go: ``cfg.port`` or, after failures there, ``cfg.fallback``."""
        self._handlers = LinkHandlers(_ignore_message, _nothing, _nothing)
        self._clock_check = clock_check
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._connected = asyncio.Event()
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._dropped: asyncio.Future[str] | None = None
        self._pubacks: dict[int, asyncio.Future[bool | None]] = {}
        self._watched: set[int] = set()
        self._last_log_error = ""
        self._tls_ready = False
        self._open = False
        """Publishes may be queued before CONNACK (:meth:`_open_early`)."""
        self._subscribe_sent = False
        """This connection's SUBSCRIBE went with CONNECT."""
        self._subscribed = False
        """The broker granted every subscription in the session it holds for this process."""
        self._heard_at: float | None = None
        """When bytes last came from the broker (monotonic), on this connection or the last."""
        self._online_held = False
        """The broker acknowledged :attr:`LinkConfig.online_payload` in the session it holds
        for this process, and no will can have replaced it since (:meth:`status_kept`)."""
        self._online_acked_at: float | None = None
        """When the box read the broker's acknowledgement of that ``online`` (monotonic)."""
        self._server_disconnected = False
        """The last connection ended with the broker's DISCONNECT (e.g. shutting down: a
        broker that stops publishes the wills at once, whatever their delay)."""
        self._session_present = False
        self._send_online = True
        self._online_unsaved = False
        """This connection's ``online`` goes only because the broker may not have saved the
        last one (:meth:`status_kept`, the disk rule)."""
        self._ping_sent_at: float | None = None
        """When the PINGREQ still waiting for an answer went (monotonic)."""
        self._alias_max = 0
        """The broker's Topic Alias Maximum (CONNACK) on this connection."""
        self._alias_set = False
        """Topic alias 1 names :attr:`LinkConfig.keepalive_topic` on this connection."""
        self.keepalives_light = 0
        """Keep-alives sent as an empty QoS 0 publish (no answer)."""
        self.keepalives_ping = 0
        """Keep-alives sent as PINGREQ (answered by PINGRESP)."""
        self.online_sent = 0
        """``online`` status publishes sent (:attr:`LinkConfig.online_payload`)."""
        self.online_skipped = 0
        """Reconnects that needed no ``online``: the will cannot have been published."""
        self.online_unsaved = 0
        """``online`` sent again only because the broker may not have saved the one it
        acknowledged (a reconnect the will rules alone would have let skip it)."""
        self._attempts = 0
        """Connection attempts begun (:meth:`_close_late` closes only the last one's)."""
        self._fast_attempt = False
        """The next probe may be the attempt itself (:meth:`_instead_of_probe`): after a
        lost connection or a network change, not after a first attempt that failed."""
        self._client = self._make_client()

    # -- paho set-up -------------------------------------------------------------------

    def _make_client(self) -> TlsClient:
        client = TlsClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.cfg.box_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        client.connect_timeout = self.cfg.connect_timeout_s
        client.user_timeout_ms = int(self.cfg.user_timeout_s * 1000)
        client.fastopen = self.cfg.tcp_fastopen
        client.max_inflight_messages_set(10)
        client.max_queued_messages_set(100)
        client.on_connect = self._cb_connect
        client.on_disconnect = self._cb_disconnect
        client.on_message = self._cb_message
        client.on_publish = self._cb_publish
        client.on_subscribe = self._cb_subscribe
        client.on_log = self._cb_log
        client.on_socket_open = self._cb_socket_open
        client.on_socket_close = self._cb_socket_close
        client.on_socket_register_write = self._cb_register_write
        client.on_socket_unregister_write = self._cb_unregister_write
        if self.cfg.will_topic is not None:
            will = None
            if self.cfg.will_delay_s > 0:
                will = _connect_properties(PacketTypes.WILLMESSAGE)
                will.WillDelayInterval = self.cfg.will_delay_s
            client.will_set(
                self.cfg.will_topic, self.cfg.will_payload, qos=1, retain=True, properties=will
            )
        return client

    @property
    def path(self) -> str:
        """The way to the broker in use or tried next: ``mqtts:8883`` or ``wss:443/mqtt``."""
        return str(self.endpoints.current)

    @property
    def _where(self) -> str:
        ep = self.endpoints.current
        ws = " (MQTT over WebSockets)" if ep.transport == "websockets" else ""
        return f"{self.cfg.host}:{ep.port}{ws}"

    async def _endpoint_failed(self) -> None:
        """An attempt or probe on the current endpoint failed: maybe switch to the other
        (only if it answers a probe: when nothing answers, the network is just down)."""
        ch = self.endpoints
        before, other = ch.current, ch.other
        reachable = other is not None and ch.switch_due and await self._probe(other.port)
        after = ch.failed(other_reachable=reachable, now=time.monotonic())
        if after != before:
            _LOG.warning(
                "uplink %s: %s failed %d times in a row; trying %s",
                self.cfg.box_id,
                before,
                self.endpoints.after_failures,
                after,
            )

    @property
    def tls(self) -> TlsClient:
        """The paho client (its TLS counters: ``handshakes``, ``resumed``)."""
        return self._client

    # -- running paho from the event loop --------------------------------------------------

    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn`` on the event loop thread: now if we are on it, else soon."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            with contextlib.suppress(RuntimeError):  # loop closing during shutdown
                loop.call_soon_threadsafe(fn, *args)

    def _cb_socket_open(self, client: mqtt.Client, userdata: object, sock: Any) -> None:
        self._on_loop(self._watch, sock)

    def _cb_socket_close(self, client: mqtt.Client, userdata: object, sock: Any) -> None:
        if self._connected.is_set():
            # paho closes a connection it lost (EOF, reset, error) while it was up: the far
            # end is gone or going, so a reset, not a FIN that the far end (its socket
            # closed) would answer with a reset of its own.
            with contextlib.suppress(OSError, AttributeError, ValueError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT_ON_CLOSE)
        self._on_loop(self._unwatch, sock)

    def _cb_register_write(self, client: mqtt.Client, userdata: object, sock: Any) -> None:
        self._on_loop(self._want_write, sock, True)

    def _cb_unregister_write(self, client: mqtt.Client, userdata: object, sock: Any) -> None:
        self._on_loop(self._want_write, sock, False)

    def _watch(self, sock: socket.socket) -> None:
        assert self._loop is not None
        fd = sock.fileno()
        if fd < 0 or fd in self._watched:
            return
        self._watched.add(fd)
        self._loop.add_reader(fd, self._readable)
        if self._client.want_write():
            self._loop.add_writer(fd, self._writable)

    def _want_write(self, sock: socket.socket, on: bool) -> None:
        assert self._loop is not None
        fd = sock.fileno()
        if fd not in self._watched:
            return
        if on:
            self._loop.add_writer(fd, self._writable)
        else:
            self._loop.remove_writer(fd)

    def _unwatch(self, sock: socket.socket | None = None) -> None:
        assert self._loop is not None
        fds = {sock.fileno()} if sock is not None and sock.fileno() >= 0 else set(self._watched)
        for fd in fds & self._watched:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
            self._watched.discard(fd)

    def _readable(self) -> None:
        client = self._client
        rc = client.loop_read()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._connected.is_set():
            self._heard_at = time.monotonic()  # the broker held the connection open until now
        sock = client.socket()
        # Decrypted bytes may wait inside the TLS object with nothing left on the socket;
        # the loop would not call us again for them.
        # (paho's WebSocket wrapper passes ``pending`` on from its TLS socket.)
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and sock is not None:
            pending = getattr(sock, "pending", None)
            if pending is None or sock.fileno() < 0 or not pending():
                break
            rc = client.loop_read()
            sock = client.socket()

    def _writable(self) -> None:
        # Corked while paho writes what it has queued (each packet is a TLS record of its
        # own), uncorked after: full segments, and the last one leaves at once (TCP_NODELAY,
        # TlsClient._tuned) instead of waiting for an ACK (Nagle).
        sock, cork = self._client.tcp_socket, _CORK
        corked = False
        if cork is not None and sock is not None and sock.fileno() >= 0:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, cork, 1)
                corked = True
        try:
            self._client.loop_write()
        finally:
            if corked and cork is not None and sock is not None and sock.fileno() >= 0:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, cork, 0)

    # -- callbacks (event loop thread) ---------------------------------------------------

    def _cb_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._session_present = bool(flags.session_present) and not reason.is_failure
        if not reason.is_failure:
            now = time.monotonic()
            self._send_online = not self.status_kept(now)
            self._online_unsaved = self._will_cancelled(now) and not self._online_saved()
            self._heard_at = time.monotonic()
            alias_max = getattr(properties, "TopicAliasMaximum", 0) if properties else 0
            self._alias_max, self._alias_set, self._ping_sent_at = int(alias_max), False, None
            sock = client.socket()
            if isinstance(sock, ssl.SSLSocket):
                with contextlib.suppress(ssl.SSLError, ValueError):
                    self._client.tls_session = sock.session  # resumed on the next connect
            if self._subscribe_sent:  # with CONNECT (_open_early); answered by SUBACK
                pass
            elif not (flags.session_present and self._subscribed) and self.cfg.subscriptions:
                # One SUBSCRIBE for all; a session the broker kept has them already (a
                # reconnect on a metered link then sends no SUBSCRIBE and gets no SUBACK).
                self._subscribed = False
                client.subscribe([(topic, 1) for topic in self.cfg.subscriptions])
        self._on_loop(self._on_connack, reason)

    def _cb_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._subscribed = bool(reasons) and not any(r.is_failure for r in reasons)

    def _cb_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if flags.is_disconnect_packet_from_server:
            self._server_disconnected = True
        self._on_loop(self._on_drop, f"{reason}; {self._last_log_error}".strip("; "))

    def _cb_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self._on_loop(self._handlers.on_message, msg.topic, bytes(msg.payload))

    def _cb_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._on_loop(self._on_puback, mid, reason)

    def _cb_log(self, client: mqtt.Client, userdata: object, level: int, buf: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:
            self._last_log_error = buf

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
            fut.set_result(not reason.is_failure)

    # -- public API ---------------------------------------------------------------------

    def bind(self, handlers: LinkHandlers) -> None:
        """Say whom to tell about messages and the connection coming and going."""
        self._handlers = handlers

    @property
    def connected(self) -> asyncio.Event:
        """Set while the broker has accepted the connection."""
        return self._connected

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[bool | None]:
        """Queue a message; the future says whether the broker took it (its PUBACK).

        For QoS 1 the future resolves with True when the broker acknowledged the message,
        False when it refused it, and None when the link stopped first. paho keeps the
        message in memory across reconnects and sends it again after one (MQTT session
        resumption); callers that need delivery keep their own copy (the buffer) and wait
        for their own acknowledgement.

        Raises:
            BrokerUnreachableError: not connected (nothing is queued).
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool | None] = loop.create_future()
        if not (self._connected.is_set() or self._open):
            raise BrokerUnreachableError("not connected to the broker")
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerUnreachableError(
                f"publish refused by the client: {mqtt.error_string(info.rc)}"
            )
        self.bytes_sent += len(payload) + len(topic) + 8
        if qos == 0:
            fut.set_result(True)
        else:
            self._pubacks[info.mid] = fut
        return fut

    async def run(self) -> None:
        """Connect, stay connected, reconnect as the policy says, until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.network.run(), name=f"uplink-netwatch-{self.cfg.box_id}")
                tg.create_task(self._connect_loop(), name=f"uplink-connect-{self.cfg.box_id}")
        finally:
            self.state = LinkState.STOPPED
            self.reason = "stopped"
            self._shutdown()

    async def _connect_loop(self) -> None:
        while True:
            if self.endpoints.prefer_primary(time.monotonic()):
                _LOG.info("uplink %s: trying %s again", self.cfg.box_id, self.path)
            self.state = LinkState.CONNECTING
            self.reason = f"connecting to {self._where}"
            self.network.changed().clear()  # a change from now on may end the next wait
            try:
                await self._connect_once()
            except UplinkError as err:
                self._drop_probe()  # e.g. the clock check refused before TCP was used
                self._failed(err)
                if failure_kind(err) is FailureKind.UNREACHABLE:
                    await self._endpoint_failed()
                wait = self.policy.failed(failure_kind(err), time.monotonic())
            except Exception as err:  # noqa: BLE001 - a bug must not end the uplink
                self._drop_probe()
                _LOG.exception("uplink %s: unexpected error while connecting", self.cfg.box_id)
                self._failed(UplinkError(f"unexpected error while connecting: {err!r}"))
                wait = self.policy.failed(FailureKind.REFUSED, time.monotonic())
            else:
                self.policy.connected()
                self.endpoints.connected()
                why = await self._stay_connected()
                self.last_error = BrokerUnreachableError(f"connection lost: {why}")
                _LOG.warning("uplink %s: connection lost (%s)", self.cfg.box_id, why)
                wait = self.policy.failed(FailureKind.UNREACHABLE, time.monotonic())
            await self._wait(wait)

    def _failed(self, err: UplinkError) -> None:
        self.last_error = err
        _LOG.error("uplink %s: %s: %s", self.cfg.box_id, type(err).__name__, err)

    def _describe_wait(self, wait: Wait) -> str:
        err = self.last_error
        why = "connection lost" if err is None else f"{type(err).__name__}: {err}"
        kind = failure_kind(err) if err is not None else FailureKind.UNREACHABLE
        if kind is FailureKind.IDENTITY:
            return (
                f"the broker refused this box's identity ({why}); the box needs re-enrolment "
                f"(dho-provision enroll); trying again in {wait.delay_s / 60:.0f} min"
            )
        if kind is FailureKind.CLOCK:
            return f"waiting for the clock to be synchronised ({why})"
        if kind is FailureKind.UNREACHABLE and not self.network.has_default_route():
            return f"no network (no default route); waiting for it to come back ({why})"
        return f"retrying within {wait.delay_s:.0f} s ({why})"

    async def _wait(self, wait: Wait) -> None:
        """Wait as ``wait`` says before the next full connection attempt.

        After a network failure (``wait.probe_every_s`` set) the link tries again only once
        the broker answers a bare TCP probe: the first probe after ``wait.delay_s`` (the
        back-off) or as soon as the network changes, then every few seconds. So a box in an
        outage sends a small SYN now and then instead of hanging in TLS attempts, and is
        connected within a probe interval of the network coming back.

        With TCP Fast Open (:attr:`LinkConfig.tcp_fastopen`), the first probe after a lost
        connection or a network change is the connection attempt itself
        (:meth:`_instead_of_probe`).
        """
        self.state = LinkState.BACKING_OFF
        self.reason = self._describe_wait(wait)
        if wait.probe_every_s is None:
            _LOG.info("uplink %s: next connection attempt in %.1f s", self.cfg.box_id, wait.delay_s)
            await asyncio.sleep(wait.delay_s)
            return
        _LOG.info(
            "uplink %s: probing the broker, first in %.1f s",
            self.cfg.box_id,
            min(wait.delay_s, wait.probe_every_s),
        )
        changed = self.network.changed()
        next_probe = time.monotonic() + min(wait.delay_s, wait.probe_every_s)
        while True:
            now = time.monotonic()
            settle = wait.settle_s / 2
            if next_probe > now:
                try:
                    async with asyncio.timeout(next_probe - now):  # cancel-safe, unlike wait_for
                        await changed.wait()
                except TimeoutError:
                    pass
                else:
                    changed.clear()
                    self._fast_attempt = True
                    _LOG.info(
                        "uplink %s: the network changed; settling %.2f s, then probing",
                        self.cfg.box_id,
                        wait.settle_s,
                    )
                    await asyncio.sleep(wait.settle_s)  # a fleet sees the same change
                    settle = 0.0
            if self._instead_of_probe():
                _LOG.info(
                    "uplink %s: connecting now (TCP Fast Open: the SYN carries the "
                    "ClientHello, no bare probe first)",
                    self.cfg.box_id,
                )
                await asyncio.sleep(settle)
                return
            started = time.monotonic()
            if await self._probe():
                _LOG.info("uplink %s: the broker is reachable again", self.cfg.box_id)
                await asyncio.sleep(settle)
                return
            await self._endpoint_failed()  # the next probe may go the other way
            next_probe = started + self.policy.probe_interval(time.monotonic())

    def _instead_of_probe(self) -> bool:
        """Whether the attempt itself is the probe: once after a lost connection or a
        network change, with TCP Fast Open on and not refused by the kernel.

        A bare probe costs the TCP handshake's round trip before the ClientHello can go; with
        Fast Open the ClientHello rides in the SYN (when the kernel holds the broker's
        cookie; without one the attempt's SYN is the probe's, and the round trips are the
        same). What it costs: where the network change was not yet a working path, the one
        attempt waits for the broker up to ``connect_timeout_s`` (the kernel resends the
        SYN, without data, after 1, 3 and 7 s) where probes would have gone every few
        seconds; its failure goes back to probing.
        """
        client = self._client
        if not self._fast_attempt or not client.fastopen or client.fastopen_refused:
            return False
        self._fast_attempt = False
        return True

    async def _probe(self, port: int | None = None) -> bool:
        """A bare TCP connection to the broker (no TLS): is it reachable at all? (On the
        current endpoint's port unless ``port`` is given.)

        A probe of the current endpoint that succeeds keeps its connection open for the
        attempt that follows (:meth:`TlsClient._create_socket_connection`): the probe is the
        connection's TCP handshake, not one more. A probe of the other endpoint (a switch
        check) closes it.
        """
        keep = port is None
        port = self.endpoints.current.port if port is None else port
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for returns the socket of a connect
            # that completes just as the task is cancelled, and drops the cancellation (the
            # link then kept probing and connecting after a stop: a hung test run).
            async with asyncio.timeout(_PROBE_TIMEOUT_S):
                sock = await self._tcp_connect(port)
        except (OSError, TimeoutError):
            return False
        if keep:
            old = self._client.take_probed()
            if old is not None:
                old.close()
            self._client.probed = (self.cfg.host, port, sock)
        else:
            sock.close()
        return True

    async def _tcp_connect(self, port: int) -> socket.socket:
        loop = asyncio.get_running_loop()
        try:  # an address needs no resolver thread (as asyncio.open_connection does it)
            infos = socket.getaddrinfo(
                self.cfg.host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
            )
        except socket.gaierror:
            infos = await loop.getaddrinfo(self.cfg.host, port, type=socket.SOCK_STREAM)
        last: OSError = OSError(f"cannot resolve {self.cfg.host!r}")
        for family, kind, proto, _, addr in infos:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, addr)
            except OSError as err:
                sock.close()
                last = err
                continue
            except BaseException:
                sock.close()
                raise
            return sock
        raise last

    async def _connect_once(self) -> None:
        self._clock_check(self.cfg.cert_file)
        client = self._client
        if not self._tls_ready:  # paho accepts one TLS context per client
            ctx = _tls_context(self.cfg)
            client.tls_set_context(ctx)
            self._tls_ready = True
        ep = self.endpoints.current
        client.use_transport(ep)
        props = _connect_properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self._dropped = loop.create_future()
        # Before CONNECT: a CONNACK read before _open_early runs must not see the last
        # connection's SUBSCRIBE as this one's (it would then not subscribe at all).
        self._subscribe_sent = False
        self._last_log_error = ""
        self._attempts += 1
        job = asyncio.ensure_future(
            asyncio.to_thread(
                client.connect,
                self.cfg.host,
                ep.port,
                keepalive=self.cfg.keepalive_s,
                # A clean session on the process's first connection only. Not paho's
                # MQTT_CLEAN_START_FIRST_ONLY: ``connect()`` forgets the connections before,
                # so every reconnect would start clean, and the broker would drop the session
                # (queued acknowledgements and commands) and publish the will at once.
                clean_start=self.connects == 0,
                properties=props,
            )
        )
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            # The thread cannot be stopped: it goes on, and a connection it completes
            # after this would stay open (and watched) with nobody to close it.
            job.add_done_callback(functools.partial(self._close_late, self._attempts))
            raise
        except (OSError, ValueError) as err:
            raise classify_connect_error(err, replace(self.cfg, port=ep.port)) from err
        finally:
            self._drop_probe()  # a probe's connection paho did not take: do not leak it
        opened = self._open_early()
        try:
            # Not wait_for (cancel-safe on 3.11 only this way): a CONNACK or a drop read just
            # as the task is cancelled would be returned or raised instead, and the link go on.
            async with asyncio.timeout(self.cfg.connect_timeout_s):
                reason = await self._connack
        except ConnectionError as err:
            self._close_socket()
            self._not_accepted(opened)
            raise self._refused_before_connack(str(err)) from err
        except TimeoutError as err:
            self._close_socket()
            self._not_accepted(opened)
            raise BrokerUnreachableError(
                f"no CONNACK from {self._where} within {self.cfg.connect_timeout_s:.0f} s"
            ) from err
        except BaseException:  # cancelled while waiting
            self._not_accepted(opened)
            raise
        if reason.is_failure:
            self._close_socket()
            self._not_accepted(opened)
            name = reason.getName()
            if reason.value in _IDENTITY_REFUSED:
                raise CertificateRejectedError(
                    f"the broker refused box {self.cfg.box_id}: {name}; check its enrolment"
                )
            raise UplinkError(f"the broker refused the connection: {name}")

    def _close_late(self, attempt: int, job: asyncio.Future[Any]) -> None:
        """A connect whose awaiting task was cancelled has finished in its thread: close
        what it opened, unless a newer attempt has begun since (its socket is not ours)."""
        if not job.cancelled():
            job.exception()  # retrieved: a connect that failed after the cancel is no news
        if attempt == self._attempts:
            self._close_socket()

    def _open_early(self) -> bool:
        """Right after CONNECT: subscribe, and let the user publish, without waiting for
        CONNACK (MQTT 5 section 3.1.4 allows a client to send packets after CONNECT; the
        broker processes them in order once it has accepted the connection, and drops them
        if it refuses it). The first batch then leaves with CONNECT instead of a round trip
        later (200 ms on a mobile link).

        Only when this connection subscribes anyway (the process's first connection, or
        one after a failed subscription): a reconnect into a session the broker kept sends
        no SUBSCRIBE, and whether the broker kept it is known only from CONNACK; a batch
        published before a SUBSCRIBE the broker has not seen could have its acknowledgement
        published to nobody. Nothing is lost either way: a batch is marked delivered only
        on the receiver's signed acknowledgement, and a batch a refused connection dropped
        stays in paho's session and in the uplink's window, sent again on the next
        connection (``docs/uplink-protocol.md`` section 9).

        Returns whether :attr:`LinkHandlers.on_open` was called (then :meth:`_not_accepted`
        or :meth:`_stay_connected` must end it).
        """
        if self._connack is None or self._connack.done():
            return False  # CONNACK (or the drop) came already: the usual way
        if not self.cfg.subscriptions or self._subscribed:
            return False
        rc, _ = self._client.subscribe([(topic, 1) for topic in self.cfg.subscriptions])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False  # subscribed after CONNACK instead
        self._subscribe_sent = True
        self._open = True
        _LOG.info(
            "uplink %s: CONNECT queued to %s; subscribing and sending before CONNACK",
            self.cfg.box_id,
            self._where,
        )
        self._handlers.on_open()
        return True

    def _not_accepted(self, opened: bool) -> None:
        """The connection :meth:`_open_early` announced was not accepted: say it is down."""
        self._open = False
        if opened:
            self._handlers.on_down()

    def _refused_before_connack(self, why: str) -> UplinkError:
        where = self._where
        if _rejects_certificate(why):
            return CertificateRejectedError(
                f"the broker at {where} rejected this box's certificate ({why}); the box may "
                "be revoked or need re-enrolment"
            )
        # TLS 1.3 checks the client certificate after the client's side of the handshake is
        # done, so a refusal may also look like this. So may a flaky link, and only the TLS
        # alert tells them apart: do not tell a technician to re-enrol on a guess.
        return BrokerUnreachableError(
            f"the broker at {where} closed the connection before accepting it ({why})"
        )

    async def _stay_connected(self) -> str:
        assert self._dropped is not None
        dropped = self._dropped
        self.state = LinkState.CONNECTED
        self.connects += 1
        self.connected_since = time.monotonic()
        self.last_error = None
        self._fast_attempt = True  # the attempt after losing this one needs no probe
        resumed = " (TLS session resumed)" if self._client.last_resumed else ""
        fastopen = " (TCP Fast Open)" if self._client.last_fastopen else ""
        self.reason = f"connected to {self._where}{resumed}{fastopen}"
        self._connected.set()
        _LOG.info("uplink %s: %s", self.cfg.box_id, self.reason)
        self._publish_online()
        self._handlers.on_up()
        stable = False
        stable_at = self.connected_since + self.cfg.stable_after_s
        try:
            while not dropped.done():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):  # cancel-safe, unlike wait_for on 3.11
                        await asyncio.shield(dropped)
                if dropped.done():
                    break
                self._keepalive(time.monotonic())
                if not stable and time.monotonic() >= stable_at:
                    stable = True
                    self.policy.stable()
            return dropped.result()
        finally:
            self._connected.clear()
            self._open = False
            self.connected_since = None
            if not dropped.done():  # cancelled: leave cleanly, say so first
                self._online_held = False
                with contextlib.suppress(Exception):
                    if self.cfg.will_topic is not None:
                        self._client.publish(
                            self.cfg.will_topic, self.cfg.will_payload, qos=0, retain=True
                        )
                    self._client.disconnect()
                    self._client.loop_write()
            self._close_socket()
            self._handlers.on_down()

    def _keepalive(self, now: float) -> None:
        """The MQTT keep-alive (the link's; paho's ``loop_misc``, which would send PINGREQ,
        is not called): a keep-alive when nothing was sent for ``keepalive_s`` (the broker
        closes a connection that stays silent 1.5 times that and publishes the will), and
        the connection dropped when a PINGREQ has no answer within ``keepalive_s``.
        """
        k = self.cfg.keepalive_s
        if k <= 0:
            return
        if self._ping_sent_at is not None:
            if self._heard_at is not None and self._heard_at >= self._ping_sent_at:
                self._ping_sent_at = None  # PINGRESP, or anything else from the broker
            elif now - self._ping_sent_at >= k:
                self._ping_sent_at = None
                self._on_drop(f"no answer to a keep-alive PINGREQ within {k} s")
                return
            else:
                return
        # paho's time of its last write (paho 2.x takes time.monotonic, as this module)
        last_out = float(getattr(self._client, "_last_msg_out", 0.0))
        if now - last_out >= k or self._silent(now):
            self.keepalive_now(now)

    def _silent(self, now: float) -> bool:
        """Nothing came from the broker for ``ping_after`` keep-alives (busy or idle)."""
        heard = self._heard_at
        return heard is None or now - heard >= self.cfg.keepalive_s * self.cfg.ping_after

    def keepalive_now(self, now: float | None = None) -> str:
        """Send one keep-alive now; returns which: ``"light"`` or ``"ping"``.

        *Light*: an empty QoS 0 PUBLISH on :attr:`LinkConfig.keepalive_topic` (topic alias
        1 after the first on a connection, 8 bytes of MQTT). Any packet from the client
        restarts the broker's keep-alive timer (MQTT 5.0, section 3.1.2.10), QoS 0 has no
        answer, and the broker's TCP acknowledgement is answer enough for the path: data
        that TCP cannot deliver within ``user_timeout_s`` drops the connection. A PINGREQ
        costs its PINGRESP and the box's TCP acknowledgement of it on top (about 150 of
        the 312 bytes a ping takes on the bench's link).

        *Ping*: a PINGREQ, when there is no keep-alive topic, or when nothing came from the
        broker for ``ping_after`` keep-alives (while idle, and while sending into a broker
        that does not answer): its PINGRESP tells a broker that still reads from one whose
        TCP stack alone is alive (a hung broker process), within ``keepalive_s`` of the
        ping; :meth:`_keepalive` drops the connection otherwise. An idle box's keep-alives
        are so two light ones and a ping in turn (``ping_after`` 3).
        """
        now = time.monotonic() if now is None else now
        client = self._client
        topic = self.cfg.keepalive_topic
        if topic is None or self._silent(now):
            client._send_pingreq()  # paho's PINGREQ (paho has no public one)
            self._ping_sent_at = now
            self.keepalives_ping += 1
            return "ping"
        props = None
        if self._alias_max >= 1:
            props = _connect_properties(PacketTypes.PUBLISH)
            props.TopicAlias = 1
            topic = "" if self._alias_set else topic
            self._alias_set = True
        client.publish(topic, b"", qos=0, retain=False, properties=props)
        self.keepalives_light += 1
        return "light"

    def status_kept(self, now: float) -> bool:
        """Whether a connection accepted at ``now`` (its CONNACK just read) needs no
        ``online``: the broker kept this process's session, the will of the connection
        before cannot have been published since the broker acknowledged ``online``, and the
        broker had saved that ``online`` to disk before it can have crashed.

        *The will.* With a Will Delay Interval of W seconds the broker publishes the will W
        seconds after it closed the connection, and not at all when the session is resumed
        before (MQTT 5.0, section 3.1.3.2.2). It cannot have closed the old connection
        before it last sent bytes on it, which the box read at :attr:`_heard_at`; the new
        connection took the session over before its CONNACK came. So when the CONNACK says
        *session present* and at most W/2 passed since the box last heard the broker (the
        other half is the margin for bytes long in transit and for the two clocks' rates),
        the will was still waiting and is cancelled now, and the retained status is still
        the ``online`` the broker acknowledged. Not so when the last connection ended with
        the broker's DISCONNECT (a broker that shuts down publishes the wills at once,
        whatever their delay), or when this process has no acknowledged ``online`` in the
        session (none yet, or one sent and not acknowledged, or the clean stop's
        ``offline``). A will published while the box was away, with no ``online`` since,
        therefore always gets one: it needs the box away for W after its last bytes.

        *The broker's disk.* A broker that is killed (``kill -9``, a crash, a power cut)
        restores the state it last saved, session included, and its saved state lags its
        memory by up to an autosave interval A (:attr:`LinkConfig.broker_autosave_s`).
        Killed after it published a will and got the ``online`` that corrected it, but
        before it saved that ``online``, it restores ``offline`` retained and the box's
        session, and no rule above sees it: the old connection ended without a DISCONNECT,
        and the box is back at once. So the ``online`` must also be on the broker's disk:
        Mosquitto saves in its main loop when more than A whole seconds passed since the
        last save (at most A + 1.1 s apart: its 2.0 loop wakes at least every 100 ms), and
        the loop that sends bytes after a save has finished writing it. The box therefore
        skips ``online`` only when it heard the broker at least 2A + :data:`SAVE_MARGIN_S`
        after it read the acknowledgement: the loop sends nothing while it writes, so a
        broker that sent bytes more than A + 1.1 s after the acknowledgement had the
        ``online`` on disk, and the rest (A + 3.9 s) is the margin for those bytes' time in
        transit. That is 125 s with Mosquitto's 60 s. The evidence can only come on the
        connection that carried the acknowledgement: a reconnect before it sends ``online``
        again, which starts the count anew. Cost: after each ``online`` that is sent, each
        reconnect sends it again until a connection on which the broker was heard that long
        after its acknowledgement (a batch's PUBACK or acknowledgement, or an idle box's
        ping after three keep-alives); from then on reconnects skip it as before.
        """
        return self._will_cancelled(now) and self._online_saved()

    def _will_cancelled(self, now: float) -> bool:
        """The will rules of :meth:`status_kept`: the broker's memory still holds ``online``."""
        return (
            self.cfg.online_payload is not None
            and self.cfg.will_topic is not None
            and self.cfg.will_delay_s > 0
            and self._online_held
            and self._session_present
            and not self._server_disconnected
            and self._heard_at is not None
            and now - self._heard_at <= self.cfg.will_delay_s / 2
        )

    def _online_saved(self) -> bool:
        """The disk rule of :meth:`status_kept`: the broker was heard at least two autosave
        intervals and :data:`SAVE_MARGIN_S` after it acknowledged ``online``."""
        heard, acked = self._heard_at, self._online_acked_at
        lag = 2 * self.cfg.broker_autosave_s + SAVE_MARGIN_S
        return heard is not None and acked is not None and heard - acked >= lag

    def _publish_online(self) -> None:
        """Say ``online`` (retained) unless the broker still holds it (:meth:`status_kept`)."""
        self._server_disconnected = False
        topic, payload = self.cfg.will_topic, self.cfg.online_payload
        if topic is None or payload is None:
            return
        if not self._send_online:
            self.online_skipped += 1
            _LOG.info(
                "uplink %s: status still online (session kept, no will, saved)", self.cfg.box_id
            )
            return
        if self._online_unsaved:
            self.online_unsaved += 1
            _LOG.info(
                "uplink %s: status online again (the broker may not have saved the last one)",
                self.cfg.box_id,
            )
        self._online_held = False
        try:
            fut = self.publish(topic, payload, qos=1, retain=True)
        except UplinkError:
            return
        self.online_sent += 1

        def held(f: asyncio.Future[bool | None]) -> None:
            if not f.cancelled() and f.exception() is None and f.result():
                self._online_held = True
                self._online_acked_at = time.monotonic()

        fut.add_done_callback(held)

    def _close_socket(self) -> None:
        """Stop watching paho's socket and close it (paho opens a new one to reconnect)."""
        if self._loop is not None:
            self._unwatch()
        sock = self._client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _drop_probe(self) -> None:
        """Close a probe's TCP connection that no attempt took."""
        unused = self._client.take_probed()
        if unused is not None:
            with contextlib.suppress(OSError):
                unused.close()

    def _shutdown(self) -> None:
        self._connected.clear()
        self._open = False
        self._drop_probe()
        with contextlib.suppress(Exception):
            self._close_socket()
        for fut in self._pubacks.values():
            if not fut.done():
                fut.set_result(None)
        self._pubacks.clear()
