"""The WebSocket path (issue 11): MQTT over WebSockets with TLS on the broker's second port when
its MQTT port is blocked by nftables.

* the real agent (``run_agent`` with ``[uplink]`` as a box has it) finds 8883 refused, switches
  to MQTT over WebSockets with TLS by itself, delivers through the real Mosquitto to the real
  receiver exactly once, and says ``wss:`` in its status; then, with the WebSocket port
  blocked and 8883 open again, goes back to 8883 and delivers the rest, once;
* paho over WebSockets reaches the broker with the box's certificate, and is refused without;
* the endpoint policy (pure).

The nftables tables have random names and are always deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from hw_mocks.synthetic import PATIENT
from paho.mqtt.enums import CallbackAPIVersion

import dho_protocol as protocol
from agent.config import AgentConfig, BufferSettings, UplinkSettings
from agent.daemon import default_factories, run_agent
from agent.status import status_line
from agent.uplink.endpoints import Endpoint, EndpointChooser
from receiver import brokerplugin
from receiver.localstack import MOSQUITTO, PKI, Broker, enrol
from receiver.store import SqliteStore
from tests.care.helpers import spot
from tests.uplink.conftest import wait_until


@contextlib.contextmanager
def blocked(port: int, *, new_only: bool = False) -> Iterator[str]:
    """Refuse TCP to 127.0.0.1:``port`` (nftables, a table of our own).

    ``new_only``: refuse new connections only (SYN), so the receivers' connections to the
    broker, made before and standing for the service's side of the network, stay up.
    """
    nft = shutil.which("nft")
    if nft is None:
        pytest.skip("nftables (nft) is not installed")
    table = f"dho_care_{secrets.token_hex(4)}"
    run = lambda *a: subprocess.run([nft, *a], check=True, capture_output=True, timeout=30)  # noqa: E731
    try:
        run("add", "table", "inet", table)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot use nftables here ({exc.stderr.decode().strip()})")
    try:
        run(
            "add",
            "chain",
            "inet",
            table,
            "out",
            "{ type filter hook output priority 0; policy accept; }",
        )
        run(
            "add",
            "rule",
            "inet",
            table,
            "out",
            "ip",
            "daddr",
            "127.0.0.1",
            "tcp",
            "dport",
            str(port),
            *(("tcp", "flags", "&", "(syn|ack)", "==", "syn") if new_only else ()),
            "reject",
            "with",
            "tcp",
            "reset",
        )
        yield table
    finally:
        subprocess.run([nft, "delete", "table", "inet", table], check=False, timeout=30)


@pytest.fixture
def broker(pki: PKI, tmp_path: Path) -> Iterator[Broker]:
    """The real broker with its websockets listener (``receivers`` use it too)."""
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed")
    reason = brokerplugin.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    b = Broker(pki, tmp_path / "broker", websockets=True)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def ws_broker(broker: Broker) -> Broker:
    return broker


def connect(broker: Broker, port: int, transport: str) -> str:
    files = broker.client_files("box-0001")
    ctx = ssl.create_default_context(cafile=str(files.ca_file))
    ctx.load_cert_chain(str(files.cert_file), str(files.key_file))
    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="box-0001",
        protocol=mqtt.MQTTv5,
        transport=transport,  # type: ignore[arg-type]
    )
    c.tls_set_context(ctx)
    if transport == "websockets":
        c.ws_set_options(path="/mqtt")
    got: dict[str, str] = {}
    done = threading.Event()

    def on_connect(
        client: object, userdata: object, flags: object, rc: object, props: object
    ) -> None:
        got.setdefault("rc", str(rc))
        done.set()

    c.on_connect = on_connect
    try:
        c.connect("127.0.0.1", port, 30)
    except OSError as exc:
        return type(exc).__name__
    c.loop_start()
    try:
        done.wait(15)
        if got.get("rc") == "Success":
            info = c.publish(protocol.status_topic("box-0001"), b"online", qos=1)
            info.wait_for_publish(10)
            got["published"] = str(info.is_published())
    finally:
        c.disconnect()
        c.loop_stop()
    return f"{got.get('rc')}/{got.get('published')}"


def test_websockets_reach_the_broker_while_8883_is_blocked(ws_broker: Broker) -> None:
    assert ws_broker.ws_port is not None
    with blocked(ws_broker.port):
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", ws_broker.port))
        assert connect(ws_broker, ws_broker.port, "tcp") == "ConnectionRefusedError"
        assert connect(ws_broker, ws_broker.ws_port, "websockets") == "Success/True"
    assert "as box-0001" in ws_broker.log()  # the certificate's CN is the MQTT identity
    assert connect(ws_broker, ws_broker.port, "tcp") == "Success/True"  # and unblocked again


def test_no_client_certificate_is_refused_on_websockets_too(ws_broker: Broker) -> None:
    assert ws_broker.ws_port is not None
    files = ws_broker.client_files("box-0001")
    ctx = ssl.create_default_context(cafile=str(files.ca_file))  # no client certificate
    with (
        socket.create_connection(("127.0.0.1", ws_broker.ws_port), 10) as raw,
        pytest.raises((ssl.SSLError, ConnectionError)),
    ):
        tls_refused(ctx, raw)


def tls_refused(ctx: ssl.SSLContext, raw: socket.socket) -> None:
    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n")
        if not tls.recv(1):
            raise ConnectionError("closed")


def test_the_endpoint_policy() -> None:
    primary, fallback = Endpoint(8883), Endpoint(443, "websockets")
    c = EndpointChooser(primary, fallback, after_failures=3)
    assert c.current == primary
    assert [c.failed() for _ in range(3)] == [primary, primary, fallback]
    c.connected()  # stays on 443 while it works
    assert c.failed() == fallback
    assert c.failed() == fallback
    assert c.failed() == primary  # 443 failing too: back to 8883
    assert c.switches == 2
    alone = EndpointChooser(primary)
    assert [alone.failed() for _ in range(5)] == [primary] * 5


def test_the_endpoint_policy_does_not_switch_when_nothing_answers_and_returns_by_itself() -> None:
    primary, fallback = Endpoint(8883), Endpoint(443, "websockets")
    c = EndpointChooser(primary, fallback, after_failures=3, retry_primary_s=3600)
    # the network is down (the fallback does not answer either): the box stays on 8883
    assert [c.failed(other_reachable=False, now=t) for t in range(10)] == [primary] * 10
    assert c.switch_due
    assert c.failed(other_reachable=True, now=100) == fallback  # 8883 blocked, 443 answers
    c.connected()
    assert not c.prefer_primary(now=100 + 3599)
    assert c.current == fallback
    assert c.prefer_primary(now=100 + 3600)  # an hour on 443: the next attempt tries 8883
    assert c.current == primary
    assert c.other == fallback
    assert not c.prefer_primary(now=10_000)  # already there
    assert c.switches == 2


# -- the real agent ---------------------------------------------------------------------------


def agent_config(broker: Broker, root: Path, key: Ed25519PrivateKey) -> AgentConfig:
    """``[uplink]`` as a provisioned box has it, with the broker's ports (no ``[care]`` pins)."""
    files = broker.client_files("box-0001")
    signing, service = root / "box-signing.pem", root / "service.pub"
    root.mkdir(parents=True, exist_ok=True)
    signing.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    service.write_bytes(
        broker.pki.service_key.public_key().public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert broker.ws_port is not None
    return AgentConfig(
        state_dir=root / "state",
        buffer=BufferSettings(reserve_mb=0),
        uplink=UplinkSettings(
            host="127.0.0.1",
            port=broker.port,
            box_id="box-0001",
            ca_file=files.ca_file,
            cert_file=files.cert_file,
            key_file=files.key_file,
            signing_key_file=signing,
            service_key_file=service,
            ws_port=broker.ws_port,
        ),
    )


def delivered(db: Path) -> list[str]:
    store = SqliteStore(db)
    try:
        return [str(r.reading.id) for r in store.readings("box-0001")]
    finally:
        store.close()


def uplink_report(cfg: AgentConfig) -> dict[str, Any]:
    try:
        report = json.loads((cfg.state_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    up = report.get("uplink")
    return up if isinstance(up, dict) else {}


async def test_the_agent_switches_to_websockets_when_8883_is_blocked_and_back(
    broker: Broker, receivers: Any, tmp_path: Path
) -> None:
    key = Ed25519PrivateKey.generate()
    db = tmp_path / "receiver.db"
    enrol(db, "box-0001", key, [PATIENT])
    receivers(1, db=db)  # connected before the block: the service's side of the network
    cfg = agent_config(broker, tmp_path / "box", key)
    assert broker.ws_port is not None
    wss = f"wss:{broker.ws_port}/mqtt"
    buffers: list[Any] = []

    def capture(_cfg: AgentConfig, buf: Any) -> list[Any]:
        buffers.append(buf)
        return []

    started, stop = asyncio.Event(), asyncio.Event()
    t0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    first = [spot(t0 + timedelta(minutes=i), 95) for i in range(5)]
    then = [spot(t0 + timedelta(hours=1, minutes=i), 96) for i in range(5)]
    agent = asyncio.create_task(
        run_agent(
            cfg, [*default_factories(), capture], started=started, stop=stop, status_interval=0.2
        )
    )
    try:
        with blocked(broker.port, new_only=True):
            await asyncio.wait_for(started.wait(), 60)
            await buffers[0].append(first)
            await wait_until(lambda: len(delivered(db)) >= 5, 90, "delivery over WebSockets")
            await wait_until(
                lambda: uplink_report(cfg).get("link") == "connected", 30, "status written"
            )
            up = uplink_report(cfg)
            assert up["link_path"] == wss
            assert f":{broker.ws_port} (MQTT over WebSockets)" in up["link_reason"]
            assert status_line({"uplink": up}).startswith(f"ok: uplink connected via {wss}")
        # 8883 open again; block the WebSocket port, its live connection too: back to 8883.
        with blocked(broker.ws_port):
            await buffers[0].append(then)
            await wait_until(lambda: len(delivered(db)) >= 10, 120, "delivery back on 8883")
            await wait_until(
                lambda: uplink_report(cfg).get("link_path") == f"mqtts:{broker.port}",
                30,
                "status back on 8883",
            )
        await asyncio.sleep(1.0)  # nothing more comes
        ids = delivered(db)
        assert len(ids) == 10
        assert len(set(ids)) == 10
        assert set(ids) == {str(r.id) for r in first + then}
    finally:
        stop.set()
        await asyncio.wait_for(agent, 60)


def test_the_fallback_comes_from_the_uplink_table(tmp_path: Path) -> None:
    from agent.daemon import _load_uplink
    from agent.uplink.link import MqttLink

    key = Ed25519PrivateKey.generate()
    signing, service = tmp_path / "box-signing.pem", tmp_path / "service.pub"
    signing.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    service.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    table: dict[str, Any] = {
        "host": "mqtt.dho.example",
        "box_id": "box-0001",
        "ca_file": tmp_path / "ca.pem",
        "cert_file": tmp_path / "box.crt",
        "key_file": tmp_path / "box.key",
        "signing_key_file": signing,
        "service_key_file": service,
    }

    def link_of(**extra: Any) -> MqttLink:
        cfg = AgentConfig(state_dir=tmp_path, uplink=UplinkSettings(**table, **extra))
        link = _load_uplink(cfg, buffer=None).link
        assert isinstance(link, MqttLink)
        return link

    default = link_of()
    assert default.path == "mqtts:8883"
    assert default.endpoints.fallback == Endpoint(443, "websockets", "/mqtt")
    assert default.endpoints.after_failures == 3
    assert link_of(ws_port=8443, ws_path="/ws").endpoints.fallback == Endpoint(
        8443, "websockets", "/ws"
    )
    assert link_of(websockets=False).endpoints.fallback is None
    with pytest.raises(ValueError, match="ws_path"):
        UplinkSettings(**table, ws_path="mqtt")


def test_the_link_can_switch_transport_after_a_failed_attempt() -> None:
    """paho's ``transport`` setter refuses after a failed connect; ``use_transport`` does not
    (it sets ``_transport``, which paho's ``_create_socket`` reads: fails loudly if a paho
    upgrade changes that)."""
    import inspect

    from agent.uplink.link import TlsClient
    from receiver.localstack import free_port

    c = TlsClient(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    with pytest.raises(ConnectionRefusedError):
        c.connect("127.0.0.1", free_port(), 5)  # nobody listens: the attempt fails
    with pytest.raises(RuntimeError):
        c.transport = "websockets"
    c.use_transport(Endpoint(443, "websockets", "/ws"))
    assert c.transport == "websockets"
    c.use_transport(Endpoint(8883))
    assert str(c.transport) == "tcp"
    src = inspect.getsource(mqtt.Client._create_socket)
    assert 'self._transport == "websockets"' in src
    assert "self._websocket_path" in src
