"""Fixtures for uplink tests: a test PKI made with `cryptography`, a real Mosquitto with TLS
on a free loopback port (using the project's ACL file), receiver processes, and agents."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hw_mocks.pipeline import awaiting

from agent.uplink.link import LinkConfig
from receiver import brokerplugin
from receiver.localstack import (
    MOSQUITTO,
    PKI,
    Broker,
    ReceiverProcess,
    make_pki,
)
from tests.uplink.pg_fixtures import pg_dsn, postgres_server  # noqa: F401 - fixtures

HANG_LIMIT_S = 60.0
"""How long a test that uses :func:`hang_guard` may run, its fixtures' set-up and tear-down
included."""


def where_tasks_wait() -> list[str]:
    """Every task of the running event loop (none outside one), with the chain of awaits it
    is suspended in, outermost first."""
    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:  # no running loop
        return []
    out = [f"{task.get_name()}: {awaiting(task)}" for task in tasks]
    return sorted(out)


@pytest.fixture
def hang_guard() -> Iterator[None]:
    """Fail the test after :data:`HANG_LIMIT_S`, saying where every asyncio task waits.

    The suite has no pytest-timeout, and ``faulthandler_timeout`` (``pyproject.toml``) only
    dumps the threads after 5 minutes: for a hung event loop that shows ``select()`` and
    nothing of the tasks, and the run stays hung. A ``SIGALRM`` in the main thread interrupts
    the loop's ``select()``; its handler fails the test from there, and the event loop's
    tear-down cancels what is left. (A cancellation a task swallowed is not repeated by
    ``await task`` or by an ``asyncio.timeout`` around it, so no asyncio-level timeout in
    the test could end such a hang.) Use it with ``pytest.mark.usefixtures("hang_guard")``;
    outside the main thread, or without ``setitimer``, it guards nothing.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(
        signal, "setitimer"
    ):
        yield
        return

    def expired(signum: int, frame: object) -> None:
        tasks = where_tasks_wait()
        print(f"hang_guard: over {HANG_LIMIT_S:g} s; tasks:", *tasks, sep="\n  ", file=sys.stderr)
        pytest.fail(
            f"still running after {HANG_LIMIT_S:g} s (hang_guard); tasks:\n" + "\n".join(tasks),
            pytrace=True,
        )

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, HANG_LIMIT_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker(pki: PKI, tmp_path: Path) -> Iterator[Broker]:
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (make test installs it when run as root)")
    reason = brokerplugin.unavailable_reason()
    if reason is not None:
        pytest.skip(f"{reason} (make test installs it when run as root)")
    b = Broker(pki, tmp_path / "broker")
    b.start()
    yield b
    b.stop()


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


async def wait_until(pred: Callable[[], object], limit_s: float, what: str = "condition") -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def link_config(
    broker: Broker,
    cn: str,
    *,
    cert: tuple[Path, Path] | None = None,
    ca_file: Path | None = None,
) -> LinkConfig:
    """The box side's settings for reaching ``broker`` as ``cn`` (short timeouts for tests)."""
    files = broker.client_files(cn, cert=cert, ca_file=ca_file)
    return LinkConfig(
        host="127.0.0.1",
        port=broker.port,
        box_id=cn,
        ca_file=files.ca_file,
        cert_file=files.cert_file,
        key_file=files.key_file,
        keepalive_s=5,
        connect_timeout_s=5,
        session_expiry_s=600,
        stable_after_s=2,
        broker_autosave_s=1,  # receiver.localstack's autosave_interval
    )


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
    link = overrides.pop("link", None) or link_config(broker, box_id)
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
        self.accepted = 0
        self.refuse = False
        """Close every connection at once (the broker out of reach behind the proxy)."""
        self.swallow = False
        """Pass nothing from the broker on to the box (to the box, a broker whose TCP stack
        answers while the broker does not)."""
        """TCP connections accepted (probes and MQTT connections alike)."""
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, down: bool = False
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if down and self.swallow:
                    continue
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refuse:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer, down=True)
            )
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
