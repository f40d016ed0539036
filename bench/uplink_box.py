"""One box for the networked uplink benchmark (:mod:`bench.uplink_net`), run as a child process.

``python -m bench.uplink_box CONFIG.json``, usually inside the bench's home namespace. It opens
the buffer the bench filled, runs the real :class:`~agent.uplink.sender.Uplink` with the real
:class:`~agent.uplink.link.MqttLink` (the daemon's defaults unless the config says otherwise),
and prints one JSON line per event on stdout, times from ``time.monotonic()`` (the same clock
in every namespace of this machine):

* ``{"event": "waiting", "t": ...}``: the link is backing off (the outage state, below);
* ``{"event": "open", "t": ...}``: CONNECT is queued and the uplink may send right behind it,
  before CONNACK (:attr:`~agent.uplink.link.LinkHandlers.on_open`; only on a connection that
  subscribes, such as a process's first);
* ``{"event": "up", "t": ...}``: the broker accepted the connection (CONNACK);
* ``{"event": "done", ...}``: the first acknowledged batch (``"until": "first"``) or the last
  (``"until": "empty"``, nothing pending nor claimed any more), with the counters and times
  (``tcp_started``: just before paho's first TCP connect, its ``on_pre_connect``).

``"outage_s"`` puts the reconnect policy where that long an outage leaves it (the outage
started that many seconds ago, ``outage_failures`` failed attempts counted), so a 10-minute
outage need not be waited for: see :func:`aged_policy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

import dho_protocol as protocol
from agent.backoff import Attempts, Backoff
from agent.buffer import AsyncBuffer, BufferConfig, FileKeySource
from agent.uplink.link import LinkConfig, LinkHandlers, LinkState, MqttLink, TlsClient
from agent.uplink.policy import ReconnectPolicy
from agent.uplink.sender import Uplink, UplinkConfig


def _say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def aged_policy(cfg: UplinkConfig, outage_s: float, failures: int) -> ReconnectPolicy:
    """The daemon's reconnect policy as an outage of ``outage_s`` seconds leaves it.

    In an outage the link fails one full attempt, then waits for a bare TCP probe to
    succeed; the probes fail as long as the outage lasts, so the policy's memory of an
    outage is when it started (which picks the probe interval) and how many full attempts
    failed (which picks the back-off ceiling). Both are set here: the outage started
    ``outage_s`` ago, ``failures`` attempts failed (enough for the 60 s cap).
    """
    policy = ReconnectPolicy(
        network=Attempts(Backoff(cfg.backoff_base_s, cfg.backoff_cap_s), failures=failures)
    )
    policy.outage_since = time.monotonic() - outage_s
    return policy


class _TimedLink(MqttLink):
    """The real link, telling the bench when CONNECT was queued, when the broker accepted it
    and when the first batch went out. Every handler of the uplink is passed on, so the box
    sends before CONNACK as the daemon does."""

    first_publish: float | None = None
    tcp_started: float | None = None
    """When paho began its first TCP connect (its ``on_pre_connect``, just before it)."""

    def _make_client(self) -> TlsClient:
        client = super()._make_client()

        def pre_connect(client: object, userdata: object) -> None:  # on paho's thread
            if self.tcp_started is None:
                self.tcp_started = time.monotonic()

        client.on_pre_connect = pre_connect
        return client

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[bool | None]:
        fut = super().publish(topic, payload, qos=qos, retain=retain)
        if self.first_publish is None and topic == protocol.batch_topic(self.cfg.box_id):
            self.first_publish = time.monotonic()
        return fut

    def bind(self, handlers: LinkHandlers) -> None:
        def on_up() -> None:
            _say(event="up", t=time.monotonic())
            handlers.on_up()

        def on_open() -> None:
            _say(event="open", t=time.monotonic())
            handlers.on_open()

        # Every handler is passed on: on_open lets the uplink send right behind CONNECT,
        # before CONNACK, as in the daemon (agent.uplink.link.MqttLink._open_early).
        super().bind(LinkHandlers(handlers.on_message, on_up, handlers.on_down, on_open))


class _CountingBuffer:
    """The buffer as the uplink sees it, counting acknowledged readings."""

    def __init__(self, buffer: AsyncBuffer) -> None:
        self._buffer = buffer
        self.acked = 0
        self.first_ack: float | None = None
        self.last_ack: float | None = None
        self.first_claim: float | None = None
        self.changed = asyncio.Event()

    async def claim_rows(self, max_readings: int = 500, max_bytes: int | None = None) -> Any:
        claim = await self._buffer.claim_rows(max_readings, max_bytes)
        if claim is not None and self.first_claim is None:
            self.first_claim = time.monotonic()
        return claim

    async def ack(self, batch_id: int) -> int:
        n = await self._buffer.ack(batch_id)
        now = time.monotonic()
        self.acked += n
        self.first_ack = self.first_ack or now
        self.last_ack = now
        self.changed.set()
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._buffer, name)


async def main(cfg: dict[str, Any]) -> int:
    started = time.monotonic()
    state = Path(cfg["state_dir"])
    # As the daemon opens it: integrity_check deferred until after the first publish
    # (agent.daemon.StoreCheck); "defer_check": false checks during the open instead.
    buf = await AsyncBuffer.open(
        state / "buffer.db",
        FileKeySource(state / "buffer.kek"),
        config=BufferConfig(defer_integrity_check=bool(cfg.get("defer_check", True))),
    )
    opened = time.monotonic()
    pending = (await buf.stats()).pending
    pem = await asyncio.to_thread(Path(cfg["signing_key"]).read_bytes)
    key = serialization.load_pem_private_key(pem, None)
    assert isinstance(key, Ed25519PrivateKey)
    box_id = str(cfg["box_id"])
    link_cfg = LinkConfig(
        host=str(cfg["host"]),
        port=int(cfg["port"]),
        box_id=box_id,
        ca_file=Path(cfg["ca_file"]),
        cert_file=Path(cfg["cert_file"]),
        key_file=Path(cfg["key_file"]),
        will_topic=protocol.status_topic(box_id),
        subscriptions=(protocol.ack_topic(box_id), protocol.command_topic(box_id)),
        tcp_fastopen=bool(cfg.get("tcp_fastopen", True)),
    )
    ucfg = UplinkConfig(
        link=link_cfg,
        signing_key=key,
        service_key=Ed25519PublicKey.from_public_bytes(bytes.fromhex(cfg["service_pub"])),
        state_dir=state,
        **cfg.get("uplink", {}),
    )
    policy = (
        aged_policy(ucfg, float(cfg["outage_s"]), int(cfg.get("outage_failures", 10)))
        if cfg.get("outage_s")
        else ReconnectPolicy(network=Attempts(Backoff(ucfg.backoff_base_s, ucfg.backoff_cap_s)))
    )
    link = _TimedLink(replace(link_cfg), policy=policy)
    counting = _CountingBuffer(buf)
    uplink = Uplink(ucfg, counting, link=link)
    until = cfg.get("until", "empty")
    task = asyncio.create_task(uplink.run())
    checked: list[float] = []

    async def check() -> None:
        if buf.integrity_owed:
            await uplink.published.wait()
            await buf.verify_integrity()
            checked.append(time.monotonic())

    checker = asyncio.create_task(check())
    try:
        said_waiting = False
        while True:
            if not said_waiting and link.state is LinkState.BACKING_OFF:
                _say(event="waiting", t=time.monotonic())
                said_waiting = True
            done = counting.acked > 0 if until == "first" else counting.acked >= pending
            if done:
                break
            counting.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(counting.changed.wait(), 0.02)
        _say(
            event="done",
            until=until,
            started=started,
            opened=opened,
            first_publish=link.first_publish,
            tcp_started=link.tcp_started,
            first_claim=counting.first_claim,
            first_ack=counting.first_ack,
            last_ack=counting.last_ack,
            readings=counting.acked,
            pending_at_start=pending,
            batches=uplink.batches_acked,
            batch_size=uplink.sizer.size,
            window=uplink.session.window,
            connects=link.connects,
            handshakes=link.tls.handshakes,
            resumed=link.tls.resumed,
            bytes_sent=link.bytes_sent,
            store_checked=checked[0] if checked else None,
        )
        return 0
    finally:
        checker.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await buf.close()


if __name__ == "__main__":
    logging.basicConfig(
        level=os.environ.get("BENCH_BOX_LOG", "WARNING"),
        stream=sys.stderr,
        format="%(relativeCreated)8.0f ms %(name)s: %(message)s",
    )
    sys.exit(asyncio.run(main(json.loads(Path(sys.argv[1]).read_text()))))
