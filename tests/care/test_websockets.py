"""The WebSocket path (issue 11): MQTT over WebSockets with TLS reaches the real Mosquitto
with the box's own certificate while its MQTT port is blocked by nftables, and the endpoint
policy that chooses it after failures on 8883 (pure).

The nftables table has a random name and is always deleted. The box's link does not use the
policy yet: that waits for the uplink's link rework (docs/care.md, "Limits").
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import dho_protocol as protocol
from agent.uplink.endpoints import Endpoint, EndpointChooser
from receiver.localstack import MOSQUITTO, PKI, Broker


@contextlib.contextmanager
def blocked(port: int) -> Iterator[str]:
    """Refuse TCP connections to 127.0.0.1:``port`` (nftables, a table of our own)."""
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
            "reject",
            "with",
            "tcp",
            "reset",
        )
        yield table
    finally:
        subprocess.run([nft, "delete", "table", "inet", table], check=False, timeout=30)


@pytest.fixture
def ws_broker(pki: PKI, tmp_path: Path) -> Iterator[Broker]:
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed")
    b = Broker(pki, tmp_path / "broker", websockets=True)
    b.start()
    yield b
    b.stop()


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
