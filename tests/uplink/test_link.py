"""The MQTT link: the one paho internal it relies on, TLS resumption, the network watcher, and
a cancel that always stops it."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import queue
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

import dho_protocol as protocol
from agent.errors import BrokerUnreachableError, CertificateRejectedError
from agent.uplink import link as link_module
from agent.uplink import netwatch
from agent.uplink.link import LinkConfig, LinkHandlers, MqttLink, TlsClient
from agent.uplink.policy import Attempts, Backoff, ReconnectPolicy
from tests.uplink.conftest import FlakyProxy, RawClient, link_config, wait_until


def test_paho_still_calls_the_tls_hook_the_link_overrides():
    """Fails loudly if a paho upgrade renames or stops calling ``_ssl_wrap_socket``.

    :class:`TlsClient` overrides it to offer the previous TLS session and to close the socket
    of a failed handshake; paho must still call it from ``_create_socket`` with the TCP
    socket as its only argument.
    """
    assert "_ssl_wrap_socket" in vars(mqtt.Client), "paho no longer has _ssl_wrap_socket"
    params = list(inspect.signature(mqtt.Client._ssl_wrap_socket).parameters)
    assert len(params) == 2, f"paho's _ssl_wrap_socket takes {params} now"
    assert "self._ssl_wrap_socket(" in inspect.getsource(mqtt.Client._create_socket)
    assert TlsClient._ssl_wrap_socket is not mqtt.Client._ssl_wrap_socket
    # the rest of what the link uses of paho is public API
    for name in ("loop_read", "loop_write", "loop_misc", "socket", "want_write"):
        assert callable(getattr(mqtt.Client, name))
    for name in ("on_socket_open", "on_socket_close", "on_socket_register_write"):
        assert isinstance(getattr(mqtt.Client, name), property)


@contextlib.asynccontextmanager
async def _running_link(broker, box_id: str, **cfg):
    """A running :class:`MqttLink` through a :class:`FlakyProxy`, with the reason of each up."""
    proxy = FlakyProxy(broker.port)
    await proxy.start()
    link = MqttLink(replace(link_config(broker, box_id), port=proxy.port, **cfg))
    ups: list[str | None] = []
    link.bind(LinkHandlers(lambda t, p: None, lambda: ups.append(link.reason), lambda: None))
    task = asyncio.create_task(link.run())
    try:
        yield link, proxy, ups
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await proxy.close()


async def test_reconnect_resumes_the_tls_session_and_keeps_going(broker):
    async with _running_link(broker, "box-0001") as (link, proxy, ups):
        await wait_until(lambda: len(ups) == 1, 10, "connected")
        await asyncio.sleep(0.3)  # the session ticket arrives after the handshake
        proxy.cut()
        await wait_until(lambda: len(ups) == 2, 15, "reconnected")
        assert link.tls.handshakes == 2  # our hook did both handshakes
        # Mosquitto 2.0 with OpenSSL 3 accepts TLS 1.3 resumption with client certificates
        assert link.tls.resumed == 1, "the second handshake did not resume the session"
        assert ups[1] is not None
        assert "resumed" in ups[1]
        assert link.connects == 2
    assert link.state == "stopped"


def _check_socket_options(link: MqttLink) -> None:
    sock = link.tls.tcp_socket
    assert link.tls.socket() is sock  # the socket that owns the connection's descriptor
    assert isinstance(sock, socket.socket)
    assert sock.fileno() >= 0
    tcp = socket.IPPROTO_TCP
    assert sock.getsockopt(tcp, socket.TCP_USER_TIMEOUT) == int(link.cfg.user_timeout_s * 1000)
    assert sock.getsockopt(tcp, socket.TCP_NODELAY) == 1
    assert sock.getsockopt(tcp, socket.TCP_CORK) == 0  # the handshake's cork is lifted


async def test_the_link_s_tcp_options_are_on_the_connection(broker):
    """``wrap_socket`` detaches the TCP socket: options set on it after wrapping never
    reached the connection (``TCP_USER_TIMEOUT`` was not set, the cork around writes was not
    applied; found 4 December 2026). The link now sets them where the descriptor is, and the
    cork that holds the TLS Finished for CONNECT (``TlsClient._handshake``) is lifted once
    CONNECT is written, on a first connection and on a resumed one."""
    async with _running_link(broker, "box-0009") as (link, proxy, ups):
        await wait_until(lambda: len(ups) == 1, 10, "connected")
        _check_socket_options(link)
        await asyncio.sleep(0.3)  # the session ticket
        proxy.cut()
        await wait_until(lambda: len(ups) == 2, 15, "reconnected")
        assert link.tls.resumed == 1
        _check_socket_options(link)


def test_paho_still_opens_tcp_where_the_link_hands_it_the_probe():
    """Fails loudly if a paho upgrade renames or stops calling ``_create_socket_connection``.

    :class:`TlsClient` overrides it so that a probe's TCP connection is the connection's
    (one handshake per reconnect, not two).
    """
    assert "_create_socket_connection" in vars(mqtt.Client)
    assert list(inspect.signature(mqtt.Client._create_socket_connection).parameters) == ["self"]
    assert "self._create_socket_connection()" in inspect.getsource(mqtt.Client._create_socket)
    assert TlsClient._create_socket_connection is not mqtt.Client._create_socket_connection
    assert callable(mqtt.Client._get_proxy)  # TCP Fast Open only without a proxy


async def test_a_reconnect_uses_the_probes_tcp_connection(broker):
    """Without TCP Fast Open (off, or refused by the kernel) a reconnect probes first."""
    async with _running_link(broker, "box-0002", tcp_fastopen=False) as (link, proxy, ups):
        await wait_until(lambda: len(ups) == 1, 10, "connected")
        assert proxy.accepted == 1
        proxy.cut()
        await wait_until(lambda: len(ups) == 2, 15, "reconnected")
        # the probe found the broker and its connection carried TLS and MQTT: two TCP
        # connections in all, not three
        assert link.tls.probes_used == 1
        assert proxy.accepted == 2
        assert link.tls.probed is None
    assert link.tls.probed is None


async def test_with_fast_open_the_first_attempt_after_a_loss_is_the_probe(broker):
    """With TCP Fast Open the attempt's SYN is the probe (and carries the ClientHello when
    the kernel holds the broker's cookie, ``test_a_reconnect_to_a_fast_open_broker_...``)."""
    async with _running_link(broker, "box-0012") as (link, proxy, ups):
        await wait_until(lambda: len(ups) == 1, 10, "connected")
        proxy.cut()
        await wait_until(lambda: len(ups) == 2, 15, "reconnected")
        assert link.tls.probes_used == 0
        assert proxy.accepted == 2  # one TCP connection per connect, as with a probe
        assert not link.tls.fastopen_refused


def _fastopen_child(tmp_path: Path, sysctl: int) -> dict[str, object]:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare (util-linux) for a network namespace")
    out = subprocess.run(
        [
            "unshare",
            "--net",
            sys.executable,
            "-m",
            "tests.uplink.fastopen_child",
            str(tmp_path),
            str(sysctl),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[2],
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got: dict[str, object] = json.loads(out.stdout.splitlines()[-1])
    return got


def test_a_reconnect_to_a_fast_open_broker_sends_the_client_hello_in_the_syn(tmp_path):
    """A real Mosquitto in a network namespace of its own whose ``net.ipv4.tcp_fastopen`` is
    1027 (0x403, ``docs/operations.md``): the first connection gets the broker's cookie, the
    reconnect's SYN carries the ClientHello, and the kernel's counters (this namespace's)
    say both ends did Fast Open."""
    got = _fastopen_child(tmp_path, 1027)
    before, after = got["before"], got["after"]
    assert isinstance(before, dict)
    assert isinstance(after, dict)
    assert before["TCPFastOpenCookieReqd"] >= 1  # the first SYN asked for a cookie
    assert not got["first_fastopen"]
    assert got["second_fastopen"]
    assert got["fastopen_sent"] == 1
    assert after["TCPFastOpenActive"] - before["TCPFastOpenActive"] == 1
    assert after["TCPFastOpenPassive"] - before["TCPFastOpenPassive"] == 1
    assert after["TCPFastOpenActiveFail"] == before["TCPFastOpenActiveFail"]
    assert got["probes_used"] == 0
    assert "TCP Fast Open" in str(got["reason"])


def test_a_broker_without_fast_open_gets_ordinary_connections(tmp_path):
    """The server bits off (``net.ipv4.tcp_fastopen`` 1, the kernel's default): the SYN asks
    for a cookie, none comes, and the reconnect is an ordinary one that works."""
    got = _fastopen_child(tmp_path, 1)
    before, after = got["before"], got["after"]
    assert isinstance(before, dict)
    assert isinstance(after, dict)
    assert not got["first_fastopen"]
    assert not got["second_fastopen"]
    assert got["fastopen_sent"] == 0
    assert not got["fastopen_refused"]
    assert after["TCPFastOpenActive"] == before["TCPFastOpenActive"] == 0
    assert after["TCPFastOpenCookieReqd"] - before["TCPFastOpenCookieReqd"] == 1


async def test_a_kernel_that_refuses_fast_open_connects_as_before(broker, monkeypatch):
    """``TCP_FASTOPEN_CONNECT`` refused (a kernel before 4.11 answers ENOPROTOOPT; an option
    number no kernel has stands in for it): paho's own connect, and probes on a reconnect."""
    monkeypatch.setattr(link_module, "_FASTOPEN_CONNECT", 0x7FFF)
    async with _running_link(broker, "box-0013") as (link, proxy, ups):
        await wait_until(lambda: len(ups) == 1, 10, "connected")
        assert link.tls.fastopen_refused
        _check_socket_options(link)
        proxy.cut()
        await wait_until(lambda: len(ups) == 2, 15, "reconnected")
        assert link.tls.probes_used == 1
        assert link.tls.fastopen_sent == 0


async def test_a_probe_not_used_is_closed(tmp_path):
    accepted: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    cfg = LinkConfig("127.0.0.1", port, "box-0003", tmp_path / "ca", tmp_path / "c", tmp_path / "k")
    link = MqttLink(cfg)
    try:
        assert await link._probe()
        held = link.tls.probed
        assert held is not None
        assert held[:2] == ("127.0.0.1", port)
        assert await link._probe()  # a second probe replaces the first, which is closed
        assert held[2].fileno() == -1
        link._shutdown()
        assert link.tls.probed is None
    finally:
        for w in accepted:
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()
        server.close()
        await server.wait_closed()


def test_refused_before_connack_needs_the_alert_to_blame_the_certificate(tmp_path):
    cfg = LinkConfig("h", 1, "box-0001", tmp_path / "ca", tmp_path / "c", tmp_path / "k")
    link = MqttLink(cfg)
    flaky = link._refused_before_connack(
        "Unspecified error; failed to receive on socket: EOF occurred in violation of protocol"
    )
    assert isinstance(flaky, BrokerUnreachableError)
    assert "re-enrol" not in str(flaky)
    refused = link._refused_before_connack(
        "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca (_ssl.c:2580)"
    )
    assert isinstance(refused, CertificateRejectedError)


def _nlmsg(kind: int, payload: bytes = b"\0" * 4) -> bytes:
    return struct.pack("=IHHII", 16 + len(payload), kind, 0, 0, 0) + payload


def test_netlink_messages_new_ones_count_deletes_do_not():
    assert netwatch.new_events(_nlmsg(24))  # RTM_NEWROUTE
    assert netwatch.new_events(_nlmsg(21) + _nlmsg(20))  # a delete, then RTM_NEWADDR
    assert not netwatch.new_events(_nlmsg(25) + _nlmsg(17))  # RTM_DELROUTE, RTM_DELLINK
    assert not netwatch.new_events(b"\x01\x00")


def test_default_route_from_procfs(tmp_path: Path):
    head = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
    route = tmp_path / "route"
    route.write_text(head + "eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n")
    v6 = tmp_path / "ipv6_route"
    v6.write_text("")
    assert not netwatch.default_route_present((route, v6))
    route.write_text(head + "wwan0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n")
    assert netwatch.default_route_present((route, v6))
    assert netwatch.default_route_present((tmp_path / "missing",))  # unknown: assume yes


async def test_the_watcher_uses_netlink_here():
    watch = netwatch.KernelNetworkWatch()
    task = asyncio.create_task(watch.run())
    try:
        await wait_until(lambda: watch.mode != "idle", 5, "started")
        assert watch.mode == "netlink"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- the status: the will's delay and the `online` a reconnect need not send ------------------


def _status_link(broker, box_id: str, port: int, will_delay_s: int) -> MqttLink:
    cfg = replace(
        link_config(broker, box_id),
        port=port,
        will_topic=protocol.status_topic(box_id),
        will_delay_s=will_delay_s,
        online_payload=b"online",
    )
    return MqttLink(cfg)


@contextlib.asynccontextmanager
async def _running_status_link(broker, box_id: str, will_delay_s: int):
    """A running link that says ``online`` itself, through a proxy, and a service watching
    the box's status (``dho-service``, as the real one)."""
    proxy = FlakyProxy(broker.port)
    await proxy.start()
    watcher = await asyncio.to_thread(
        RawClient, broker, "dho-service", subscribe=(protocol.status_topic(box_id),)
    )
    link = _status_link(broker, box_id, proxy.port, will_delay_s)
    ups: list[str | None] = []
    link.bind(LinkHandlers(lambda t, p: None, lambda: ups.append(link.reason), lambda: None))
    task = asyncio.create_task(link.run())
    try:
        yield link, proxy, ups, watcher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await proxy.close()
        watcher.close()


def _status_now(broker, box_id: str) -> bytes:
    """The retained status a service sees when it subscribes now."""
    c = RawClient(broker, "dho-service", subscribe=(protocol.status_topic(box_id),))
    try:
        return c.get(5)[1]
    finally:
        c.close()


def _status_told(watcher: RawClient, payload: bytes, within_s: float) -> None:
    """Wait until the service is told ``payload`` (other statuses before it are skipped)."""
    deadline = time.monotonic() + within_s
    while watcher.get(max(0.1, deadline - time.monotonic()))[1] != payload:
        pass


def _no_status(watcher: RawClient, within_s: float) -> None:
    with contextlib.suppress(queue.Empty):
        got = watcher.get(within_s)
        raise AssertionError(f"the service was told {got[1]!r}")


async def test_a_quick_reconnect_into_the_kept_session_sends_no_online(broker):
    async with _running_status_link(broker, "box-0011", 60) as (link, proxy, ups, watcher):
        await wait_until(lambda: len(ups) == 1, 10, "connected")
        got = await asyncio.to_thread(watcher.get)
        assert got == (protocol.status_topic("box-0011"), b"online")
        await wait_until(lambda: link._online_held, 5, "online acknowledged")
        # the broker has saved it: heard (a PINGRESP) 2 autosave intervals + 5 s after
        await wait_until(link._online_saved, 15, "the broker heard 7 s after its ack")
        proxy.cut()
        await wait_until(lambda: len(ups) == 2, 15, "reconnected")
        # the reconnect resumed the MQTT session (paho's MQTT_CLEAN_START_FIRST_ONLY alone
        # would have started a clean one, publishing the will at once) ...
        assert link._session_present
        # ... so the broker held the will back (delay 60 s) and dropped it at the reconnect:
        # the status stayed `online` and the box did not say it again
        assert (link.online_sent, link.online_skipped) == (1, 1)
        await asyncio.to_thread(_no_status, watcher, 1.5)
        assert await asyncio.to_thread(_status_now, broker, "box-0011") == b"online"


async def test_a_box_away_longer_than_the_will_delay_is_offline_then_online(broker):
    box = "box-0012"
    async with _running_status_link(broker, box, 2) as (link, proxy, ups, watcher):
        await wait_until(lambda: len(ups) == 1, 10, "connected")
        assert (await asyncio.to_thread(watcher.get))[1] == b"online"
        await wait_until(lambda: link._online_held, 5, "online acknowledged")
        proxy.refuse = True
        cut_at = time.monotonic()
        proxy.cut()
        # the service hears `offline` when the will's delay (2 s) is over, not before
        _, payload = await asyncio.to_thread(watcher.get, 10)
        assert payload == b"offline"
        assert time.monotonic() - cut_at >= 1.5
        assert link.connects == 1
        proxy.refuse = False
        await wait_until(lambda: len(ups) == 2, 20, "reconnected")
        # away longer than half the delay: the will may have been published, so `online`
        assert (await asyncio.to_thread(watcher.get, 5))[1] == b"online"
        assert (link.online_sent, link.online_skipped) == (2, 0)
    # a clean stop still says offline at once
    assert await asyncio.to_thread(_status_now, broker, box) == b"offline"


async def test_after_a_broker_restart_the_box_says_online_again(broker):
    """A broker that stops publishes the wills at once, whatever their delay, and its
    DISCONNECT tells the box so: the next connection says `online` even if it is quick."""
    box = "box-0013"
    async with _running_status_link(broker, box, 600) as (link, _proxy, ups, _watcher):
        await wait_until(lambda: len(ups) == 1, 10, "connected")
        await wait_until(lambda: link._online_held, 5, "online acknowledged")
        await asyncio.to_thread(broker.restart)
        await wait_until(lambda: len(ups) == 2, 20, "reconnected")
        await wait_until(lambda: link.online_sent == 2, 5, "online again")
        await wait_until(lambda: link._online_held, 5, "online acknowledged")
        assert await asyncio.to_thread(_status_now, broker, box) == b"online"


async def test_a_broker_killed_and_restarted_sees_the_box_online(broker):
    """kill -9: no DISCONNECT, no wills; the broker restores its saved state."""
    box = "box-0014"
    async with _running_status_link(broker, box, 600) as (link, _proxy, ups, _watcher):
        await wait_until(lambda: len(ups) == 1, 10, "connected")
        await wait_until(lambda: link._online_held, 5, "online acknowledged")
        await asyncio.sleep(1.5)  # the broker saves every second (autosave_interval 1)
        await asyncio.to_thread(broker.stop, signal.SIGKILL)
        await asyncio.to_thread(broker.start)
        await wait_until(lambda: len(ups) == 2, 20, "reconnected")
        await asyncio.sleep(1.0)
        assert await asyncio.to_thread(_status_now, broker, box) == b"online"


async def test_a_broker_killed_after_it_saved_the_online_restores_it_and_the_box_skips(broker):
    """kill -9 of a broker that had saved the box's `online` and its session: it restores
    both, and the box's quick reconnect needs no `online` (the status is the one saved)."""
    box = "box-0016"
    async with _running_status_link(broker, box, 600) as (link, proxy, ups, _watcher):
        await wait_until(lambda: len(ups) == 1, 10, "connected")
        await wait_until(lambda: link._online_held, 5, "online acknowledged")
        await wait_until(link._online_saved, 15, "the broker heard 7 s after its ack")
        # Mosquitto saves only sessions whose connection did not start clean (a process's
        # first one does): a quick reconnect (no `online`), and a save of that session
        proxy.cut()
        await wait_until(lambda: len(ups) == 2, 15, "reconnected")
        assert (link.online_sent, link.online_skipped) == (1, 1)
        await asyncio.sleep(2.5)  # autosave_interval 1: the broker saves every ~2 s
        await asyncio.to_thread(broker.stop, signal.SIGKILL)
        await asyncio.to_thread(broker.start)
        await wait_until(lambda: len(ups) == 3, 20, "reconnected")
        assert link._session_present  # restored from the broker's disk
        assert (link.online_sent, link.online_skipped, link.online_unsaved) == (1, 2, 0)
        await asyncio.sleep(0.5)
        assert await asyncio.to_thread(_status_now, broker, box) == b"online"


async def test_a_broker_killed_before_it_saved_the_correcting_online_hears_it_again(broker):
    """The broker published the will (`offline`) and saved it, then got the box's `online`
    and was killed (kill -9) before its next autosave: it restores `offline` and the box's
    session. The box's quick reconnect into that session says `online` again, because its
    `online` was acknowledged less than two autosave intervals (+5 s) before it last heard
    the broker (``LinkConfig.broker_autosave_s``; 1 s on the tests' broker)."""
    box = "box-0015"
    # a will delay long enough for the reconnect after the kill to be quick (within half
    # of it, 6 s), short enough to wait for the will
    async with _running_status_link(broker, box, 12) as (link, proxy, ups, watcher):
        await wait_until(lambda: len(ups) == 1, 10, "connected")
        assert (await asyncio.to_thread(watcher.get))[1] == b"online"
        await wait_until(lambda: link._online_held, 5, "online acknowledged")
        # Mosquitto saves only sessions whose connection did not start clean (a process's
        # first one does): a quick reconnect, and a save of that session
        proxy.cut()
        await wait_until(lambda: len(ups) == 2, 15, "reconnected")
        assert link._session_present
        await asyncio.sleep(2.5)  # autosave_interval 1: the broker saves every ~2 s
        proxy.refuse = True
        proxy.cut()
        await asyncio.to_thread(_status_told, watcher, b"offline", 30)  # the will
        await asyncio.sleep(2.5)  # the broker saves `offline`
        proxy.refuse = False
        await wait_until(lambda: len(ups) == 3, 20, "back")
        # away longer than half the delay: `online` corrects the will
        assert link._session_present
        sent, unsaved = link.online_sent, link.online_unsaved
        await wait_until(lambda: link._online_held, 5, "online acknowledged")
        assert link.online_sent == sent  # (sent at the connect)
        assert broker.proc is not None
        broker.proc.kill()  # at once: the broker has not saved the `online` yet
        await asyncio.to_thread(broker.stop, signal.SIGKILL)
        await asyncio.to_thread(broker.start)
        await wait_until(lambda: len(ups) == 4, 20, "reconnected")
        assert link._session_present  # the broker restored the session it had saved
        await wait_until(lambda: link._online_held, 5, "online acknowledged")
        await asyncio.sleep(0.5)
        assert await asyncio.to_thread(_status_now, broker, box) == b"online"
        # sent again: the will rules alone would have skipped it
        assert (link.online_sent, link.online_unsaved) == (sent + 1, unsaved + 1)


# -- the keep-alive: light (an empty QoS 0 publish) and, when the broker is silent, a ping ----


@contextlib.asynccontextmanager
async def _running_keepalive_link(broker, box_id: str, keepalive_s: int, ping_after: int):
    proxy = FlakyProxy(broker.port)
    await proxy.start()
    cfg = replace(
        link_config(broker, box_id),
        port=proxy.port,
        keepalive_s=keepalive_s,
        keepalive_topic=protocol.alive_topic(box_id),
        ping_after=ping_after,
    )
    link = MqttLink(cfg)
    ups: list[str | None] = []
    link.bind(LinkHandlers(lambda t, p: None, lambda: ups.append(link.reason), lambda: None))
    task = asyncio.create_task(link.run())
    try:
        yield link, proxy, ups
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await proxy.close()


async def test_light_keepalives_keep_the_connection_and_a_ping_follows_silence(broker):
    async with _running_keepalive_link(broker, "box-0021", 2, 3) as (link, _proxy, ups):
        await wait_until(lambda: len(ups) == 1, 10, "connected")
        # idle for 4 keep-alives: the broker would close a connection silent for 3 s (1.5
        # keep-alives) and publish the will; empty QoS 0 publishes keep it, and after three
        # keep-alives without a word from the broker one is a PINGREQ
        await asyncio.sleep(8.5)
        assert link.connects == 1
        assert link.state == "connected"
        assert link.keepalives_light >= 2
        assert link.keepalives_ping >= 1
        assert link._ping_sent_at is None  # the PINGRESP came


async def test_a_broker_that_answers_nothing_is_left_after_an_unanswered_ping(broker):
    async with _running_keepalive_link(broker, "box-0022", 2, 2) as (link, proxy, ups):
        await wait_until(lambda: len(ups) == 1, 10, "connected")
        proxy.swallow = True  # TCP still acknowledges, the box hears nothing from the broker
        await wait_until(lambda: link.keepalives_ping >= 1, 10, "a ping")
        # no PINGRESP within a keep-alive (2 s): the link gives the connection up
        await wait_until(lambda: link.state != "connected", 5, "the connection given up")
        assert link.last_error is not None
        assert "no answer to a keep-alive" in str(link.last_error)
        proxy.swallow = False
        await wait_until(lambda: len(ups) == 2, 20, "reconnected")


def test_paho_still_has_what_the_keepalive_uses():
    """Fails loudly if a paho upgrade renames what :meth:`MqttLink._keepalive` relies on:
    the time of paho's last write and its PINGREQ (the link does not call ``loop_misc``)."""
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    assert isinstance(c._last_msg_out, float)
    assert callable(c._send_pingreq)
    assert "self._last_msg_out = time_func()" in inspect.getsource(mqtt.Client._packet_write)
    assert mqtt.time_func is time.monotonic


# -- a cancelled link stops (Python 3.11's wait_for drops a cancellation) ------------------
#
# On 3.11, ``asyncio.wait_for`` returns the inner result (or raises its exception) when the
# task is cancelled after the inner await completed and before the task resumed; the
# cancellation is then lost, and a link cancelled right then keeps reconnecting for ever
# (tests/uplink/test_early_publish.py's refused-connection test hung so once in a full run:
# its cancel came as the probe after the refusal connected). Each test below cancels at
# every step of the loop's first iterations, and a cancel that was accepted
# (``Task.cancel()`` True) must end the task as cancelled.


class _StillNetwork:
    """A network that never changes (no netlink in these tests)."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def changed(self) -> asyncio.Event:
        return self._changed

    def has_default_route(self) -> bool:
        return True

    async def run(self) -> None:
        await asyncio.Future()


async def _cancel_after(coro_fn, yields: int, within_s: float = 2.0):
    """Run ``coro_fn()``, let the loop turn ``yields`` times, cancel it: the task, and
    whether the cancel was accepted (False: it had finished already)."""
    task = asyncio.create_task(coro_fn())
    for _ in range(yields):
        await asyncio.sleep(0)
    accepted = task.cancel()
    await asyncio.wait({task}, timeout=within_s)
    if not task.done():
        # Do not leave it running. Cancelling ``task`` again does not reach a child task that
        # lost its cancel (its task group cancels children once): cancel every task but this
        # one, until they are all gone.
        for _ in range(100):
            others = asyncio.all_tasks() - {asyncio.current_task()}
            for t in others:
                t.cancel()
            await asyncio.wait(others, timeout=0.05)
            if all(t.done() for t in others):
                break
        raise AssertionError(f"cancelled after {yields} loop turns, still running {within_s} s on")
    return task, accepted


def _outcome(task: asyncio.Task[object]) -> str:
    if task.cancelled():
        return "cancelled"
    err = task.exception()
    return f"returned {task.result()!r}" if err is None else f"raised {err!r}"


@contextlib.asynccontextmanager
async def _loopback_server():
    """A TCP server on loopback that accepts and closes (the probes' far end)."""

    def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(close, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.usefixtures("hang_guard")
async def test_a_probe_cancelled_as_its_connection_completes_is_cancelled(tmp_path):
    async with _loopback_server() as port:
        cfg = LinkConfig(
            "127.0.0.1", port, "box-0004", tmp_path / "ca", tmp_path / "c", tmp_path / "k"
        )
        link = MqttLink(cfg, network=_StillNetwork())
        lost = []
        try:
            for k in range(12):
                task, accepted = await _cancel_after(link._probe, k)
                if accepted and not task.cancelled():
                    lost.append(f"{k}: {_outcome(task)}")
                link._drop_probe()
        finally:
            link._shutdown()
        assert not lost, f"cancellations lost (loop turns: outcome): {lost}"


@pytest.mark.parametrize("answer", ["refused", "accepted"])
@pytest.mark.usefixtures("hang_guard")
async def test_a_connect_cancelled_as_connack_or_the_drop_comes_is_cancelled(tmp_path, answer):
    cfg = LinkConfig("127.0.0.1", 1, "box-0005", tmp_path / "ca", tmp_path / "c", tmp_path / "k")
    lost = []
    for k in range(6):
        link = MqttLink(cfg, network=_StillNetwork(), clock_check=lambda path: None)
        link._loop = asyncio.get_running_loop()
        link._tls_ready = True  # no TLS files here; paho's connect is replaced as well
        link._client.connect = lambda *a, **kw: mqtt.MQTT_ERR_SUCCESS  # type: ignore[method-assign]
        waiting = asyncio.Event()
        open_early = link._open_early

        def at_the_wait(open_early=open_early, waiting=waiting):
            waiting.set()  # CONNECT is out; the attempt waits for CONNACK once this returns
            return open_early()

        link._open_early = at_the_wait  # type: ignore[method-assign]

        async def attempt(link=link, waiting=waiting, k=k) -> None:
            inner = asyncio.create_task(link._connect_once())
            await waiting.wait()
            await asyncio.sleep(0)  # the attempt now waits in its CONNACK wait
            if answer == "refused":
                link._on_drop("the broker closed the connection")
            else:
                link._on_connack(ReasonCode(PacketTypes.CONNACK, "Success"))
            for _ in range(k):
                await asyncio.sleep(0)
            accepted = inner.cancel()
            await asyncio.wait({inner}, timeout=2)
            assert inner.done()
            if accepted and not inner.cancelled():
                lost.append(f"{k}: {_outcome(inner)}")

        await attempt()
        link._shutdown()
    assert not lost, f"cancellations lost (loop turns after the {answer}: outcome): {lost}"


@pytest.mark.usefixtures("hang_guard")
async def test_a_link_that_keeps_failing_and_probing_stops_when_cancelled(tmp_path):
    """The loop of the refused-connection test, without a broker: every attempt fails as
    unreachable, every probe reaches a loopback server at once, no back-off; a cancel at
    any point of it ends :meth:`MqttLink.run`."""
    async with _loopback_server() as port:
        cfg = LinkConfig(
            "127.0.0.1", port, "box-0006", tmp_path / "ca", tmp_path / "c", tmp_path / "k"
        )
        policy = ReconnectPolicy(network=Attempts(Backoff(0.0, 0.0)), settle_max_s=0.0)
        for k in range(40):
            link = MqttLink(cfg, policy=policy, network=_StillNetwork())

            async def refused() -> None:
                await asyncio.sleep(0)
                raise BrokerUnreachableError("the broker closed the connection before accepting it")

            link._connect_once = refused  # type: ignore[method-assign]
            task, _ = await _cancel_after(link.run, k)
            assert task.cancelled(), f"cancelled after {k} loop turns: {_outcome(task)}"
            assert link.state == ("idle" if k == 0 else "stopped")  # k 0: cancelled unstarted


def _sockets_to(port: int) -> int:
    """This process's open TCP sockets whose far end is ``port`` on loopback."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == port:
            inodes.add(fields[9])
    ours = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:[") and target[8:-1] in inodes:
                ours += 1
    return ours


async def test_a_connect_cancelled_in_its_thread_leaves_no_socket_open(broker):
    """paho's connect (TCP, TLS) runs in a worker thread that a cancel cannot stop: the
    connection it completes after the link stopped must be closed, not left open (and
    watched by the event loop) with nobody to close it."""
    from bench.relay import Relay

    slow = Relay(("127.0.0.1", broker.port), 300.0)  # the handshake takes 0.6 s
    await slow.start()
    try:
        port = slow.address[1]
        link = MqttLink(replace(link_config(broker, "box-0014"), port=port))
        task = asyncio.create_task(link.run())
        await wait_until(lambda: slow.connections == 1, 10, "the connect's TCP connection")
        await asyncio.sleep(0.1)  # the thread waits in the TLS handshake
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert link.state == "stopped"
        await asyncio.sleep(2.0)  # the thread finishes its handshake and CONNECT
        assert _sockets_to(port) == 0
        assert link._watched == set()
    finally:
        await slow.aclose()


async def test_a_fast_open_connect_that_fails_at_tcp_keeps_the_tls_session(broker):
    """With Fast Open the TCP connect runs inside the TLS hook: a path that is down must not
    cost the session (the reconnect after an outage would send the certificate chain)."""
    async with _running_link(broker, "box-0015") as (link, _proxy, ups):
        await wait_until(lambda: len(ups) == 1, 10, "connected")
        await wait_until(lambda: link.tls.tls_session is not None, 5, "a session ticket")
    client = link.tls
    session = client.tls_session
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    client._port = closed
    with pytest.raises(ConnectionRefusedError):
        await asyncio.to_thread(client._create_socket)
    assert client.tls_session is session
